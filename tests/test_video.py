"""video.py: audio track, stream facts, timestamps, rotation, VFR, errors.

Real clips come from ../shared/data/av (skipped when absent); tiny videos are
generated with PyAV in tmp_path. `make_video` is also used by the face and
video-corpus tests.
"""

from __future__ import annotations

import fractions
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")

from liser.core.errors import LiserError  # noqa: E402
from liser.data.video import iter_frames, read_audio_track, rotate_upright, rotation_cw, video_info  # noqa: E402

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
AV = DATA / "av"
INTERVIEW = AV / "interviews" / "id01" / "014.mp4"  # 10 s, 224x224, 25 fps, AAC 16 kHz mono
VFR_DEMO = AV / "demo" / "retalking_1.mp4"  # 30 fps time base with dropped frames (avg 22.1 fps)


def need(path: Path) -> Path:
    if not path.is_file():
        pytest.skip(f"real data not found: {path} (see ../shared/data/README.md)")
    return path


def make_video(
    path: Path,
    n: int = 32,
    size: int = 64,
    fps: int = 25,
    audio: bool = True,
    rotation: int | None = None,
    pts_ms: list[int] | None = None,
    frames: list[np.ndarray] | None = None,
    seed: int = 0,
    audio_samples: np.ndarray | None = None,
    lossless: bool = False,
) -> Path:
    """Write a tiny H.264 (or MPEG-4) video of noise frames, optionally with a noise AAC track.

    `rotation`: counter-clockwise display rotation (PyAV's convention);
    `pts_ms`: explicit frame times in milliseconds (variable frame rate);
    `audio_samples`: float32 mono 16 kHz samples for the AAC track instead of noise;
    `lossless`: H.264 at qp 0, so the decoded frames are the same on every run.
    """
    import av

    rng = np.random.default_rng(seed)
    frames = frames if frames is not None else [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]
    h, w = frames[0].shape[:2]
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with av.open(str(path), "w") as c:
        # lossless: x264's lossy output differed from run to run on the same frames (its decoded pixels did too)
        vs = c.add_stream(codec, rate=fps, options={"qp": "0"} if lossless and codec == "libx264" else {})
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        tb = fractions.Fraction(1, 1000) if pts_ms is not None else fractions.Fraction(1, fps)
        vs.codec_context.time_base = tb
        if rotation:
            vs.set_display_rotation(rotation)
        if audio:
            aus = c.add_stream("aac", rate=16000, layout="mono")
        for i, img in enumerate(frames):
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts = pts_ms[i] if pts_ms is not None else i
            f.time_base = tb
            for p in vs.encode(f):
                c.mux(p)
        for p in vs.encode():
            c.mux(p)
        if audio:
            dur = (pts_ms[-1] / 1000 + 1 / fps) if pts_ms is not None else len(frames) / fps
            samples = (0.1 * rng.standard_normal(int(dur * 16000))).astype(np.float32)
            if audio_samples is not None:
                samples = np.asarray(audio_samples, np.float32)
            for start in range(0, samples.size, 1024):
                chunk = samples[start : start + 1024][None, :]
                af = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
                af.sample_rate, af.pts, af.time_base = 16000, start, fractions.Fraction(1, 16000)
                for p in aus.encode(af):
                    c.mux(p)
            for p in aus.encode():
                c.mux(p)
    return path


# ---- real clips ----


def test_real_audio_track_is_mono_16k_and_as_long_as_the_video():
    path = need(INTERVIEW)
    audio, sr = read_audio_track(path)
    info = video_info(path)
    assert audio.dtype == np.float32 and audio.ndim == 2 and audio.shape[1] == 1
    assert sr == 16000
    assert abs(audio.shape[0] / sr - info.duration) < 0.2
    assert 0.01 < float(np.abs(audio).max()) <= 1.0
    assert info.has_audio and info.width == 224 and info.height == 224
    assert info.fps == pytest.approx(25.0) and not info.variable_frame_rate and info.rotation == 0

    from liser.data.audio import load_audio  # the audio front end reads mp4 through read_audio_track

    mono = load_audio(path)
    assert mono.ndim == 1 and abs(mono.size - audio.shape[0]) <= 1


def test_real_frames_have_increasing_timestamps():
    path = need(INTERVIEW)
    frames = list(iter_frames(path))
    times = np.array([t for t, _ in frames])
    assert len(frames) == video_info(path).n_frames
    assert np.all(np.diff(times) > 0)
    assert times[0] == pytest.approx(0.0, abs=1e-6)
    assert np.allclose(np.diff(times), 0.04, atol=1e-3)
    img = frames[0][1]
    assert img.dtype == np.uint8 and img.shape == (224, 224, 3)


def test_real_vfr_clip_is_flagged_and_resampled_on_a_grid():
    path = need(VFR_DEMO)
    info = video_info(path)
    assert info.variable_frame_rate
    ticks = [t for t, _ in iter_frames(path, fps=10, max_side=128)]
    assert np.allclose(np.diff(ticks), 0.1)
    assert ticks[-1] <= info.duration + 1e-6


# ---- generated clips ----


def test_generated_video_info_frames_and_audio(tmp_path):
    path = make_video(tmp_path / "a.mp4", n=32, fps=25)
    info = video_info(path)
    assert (info.width, info.height, info.n_frames, info.rotation) == (64, 64, 32, 0)
    assert info.has_audio and not info.variable_frame_rate
    frames = list(iter_frames(path))
    assert len(frames) == 32
    assert np.allclose([t for t, _ in frames], np.arange(32) / 25, atol=1e-6)
    audio, sr = read_audio_track(path)
    assert sr == 16000 and audio.shape[1] == 1 and abs(audio.shape[0] / sr - 32 / 25) < 0.1


def test_variable_frame_rate_uses_real_timestamps(tmp_path):
    pts = [0, 40, 60, 140, 160, 200, 300, 320, 340, 420, 440, 500]
    path = make_video(tmp_path / "vfr.mp4", n=len(pts), pts_ms=pts, audio=False)
    assert video_info(path).variable_frame_rate
    times = [t for t, _ in iter_frames(path)]
    assert np.allclose(times, np.array(pts) / 1000, atol=1e-6)
    ticks = list(iter_frames(path, fps=20))  # 50 ms grid, nearest frame each
    assert np.allclose([t for t, _ in ticks], np.arange(11) * 0.05)


def test_resampling_picks_the_nearest_frame(tmp_path):
    frames = [np.full((16, 16, 3), 20 * i, np.uint8) for i in range(10)]  # frame i is gray level 20*i
    path = make_video(tmp_path / "gray.mp4", frames=frames, fps=10, audio=False)
    out = list(iter_frames(path, fps=4))  # ticks 0, .25, .5, .75: frames 0, 2 (or 3), 5, 7 (or 8)
    assert [round(t, 3) for t, _ in out] == [0.0, 0.25, 0.5, 0.75]
    levels = [int(round(float(np.median(img)) / 20)) for _, img in out]
    assert levels[0] == 0 and levels[2] == 5 and levels[1] in (2, 3) and levels[3] in (7, 8)


def test_rotation_metadata_turns_frames_upright(tmp_path):
    img = np.zeros((32, 64, 3), np.uint8)
    img[:8, :8] = 255  # white block top-left of the stored frame
    path = make_video(tmp_path / "rot.mp4", frames=[img] * 4, audio=False, rotation=90)  # 90 deg counter-clockwise
    info = video_info(path)
    assert info.rotation == 270 and (info.width, info.height) == (32, 64)
    _, up = next(iter_frames(path))
    assert up.shape == (64, 32, 3)
    assert up[-8:, :8].mean() > 200 and up[:8, :8].mean() < 50  # top-left went to bottom-left


def test_rotation_helpers():
    img = np.arange(6).reshape(2, 3, 1)
    assert rotation_cw(-90) == 90 and rotation_cw(90) == 270 and rotation_cw(180) == 180
    assert rotation_cw(0, "90") == 90 and rotation_cw(None, None) == 0 and rotation_cw(0, "junk") == 0
    cw = rotate_upright(img, 90)
    assert cw.shape == (3, 2, 1) and cw[0, :, 0].tolist() == [3, 0]  # clockwise: the left column becomes the top row
    assert rotate_upright(img, 0) is img
    assert rotate_upright(img, 180)[0, 0, 0] == 5


def test_video_without_audio_has_no_audio_track(tmp_path):
    path = make_video(tmp_path / "mute.mp4", audio=False)
    assert not video_info(path).has_audio
    with pytest.raises(LiserError, match=r"mute\.mp4: no audio track"):
        read_audio_track(path)
    from liser.data.audio import load_audio

    with pytest.raises(LiserError, match="no audio track"):
        load_audio(path)


def test_audio_only_file_refused_by_iter_frames(tmp_path):
    import soundfile as sf

    path = tmp_path / "speech.flac"
    sf.write(str(path), np.zeros(1600, np.float32), 16000)
    with pytest.raises(LiserError, match=r"speech\.flac: no video stream \(audio-only file\)"):
        list(iter_frames(path))
    with pytest.raises(LiserError, match="no video stream"):
        video_info(path)
    audio, sr = read_audio_track(path)  # PyAV reads audio-only files too
    assert sr == 16000 and audio.shape == (1600, 1)


def test_undecodable_and_missing_files_name_the_file(tmp_path):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00not a video" * 100)
    for fn in (read_audio_track, video_info, lambda p: list(iter_frames(p))):
        with pytest.raises(LiserError, match=r"junk\.mp4: "):
            fn(junk)
    with pytest.raises(LiserError, match=r"nothing\.mp4: no such file"):
        read_audio_track(tmp_path / "nothing.mp4")
