"""faces.py --face-select: the largest face vs the active speaker, on two real talking faces side by side.

The input is built at test time from two interview clips of ../shared/data/av:
one person's face shrunk, with that person's own audio (the speaker), and
another talking person's face at full size whose audio is dropped (moving
lips, no voice). `largest` must keep the larger face, `active` the speaker.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import cv2  # noqa: E402

from liser.core.errors import LiserError  # noqa: E402
from liser.data.faces import (  # noqa: E402
    Detections,
    FaceDetector,
    FaceTrack,
    audio_change,
    extract_faces,
    extract_faces_manifest,
    link_candidates,
    similarity_transform,
    template,
)
from liser.data.video import iter_frames, read_audio_track  # noqa: E402
from test_faces import _manifest, need_yunet  # noqa: E402
from test_video import AV, make_video, need  # noqa: E402

cv2.setNumThreads(1)

SPEAKER = AV / "interviews" / "id04" / "047.mp4"  # 11.8 s, one person talking throughout
SILENT = AV / "interviews" / "id16" / "050.mp4"  # 11.6 s, another person talking; audio dropped


def compose_pair(speaker: Path, silent: Path, out: Path, small: int = 150, seconds: float = 10.0,
                 speaker_small: bool = True) -> Path:
    """Two talking faces side by side with only the speaker's audio (16 kHz mono, as the interviews have).

    The silent person is on the left at full size, the speaker on the right
    shrunk to `small` px (`speaker_small=False` swaps the sizes: the speaker
    large on the left, the silent one small on the right). Written lossless,
    so the same clips make the same pixels on every run (the sources are
    compressed already).
    """
    a = [img for _, img in iter_frames(need(speaker))]
    b = [img for _, img in iter_frames(need(silent))]
    n = min(len(a), len(b), int(seconds * 25))
    audio, sr = read_audio_track(speaker)
    assert sr == 16000, f"{speaker}: expected 16 kHz audio"
    big, little = (b, a) if speaker_small else (a, b)
    h, w = big[0].shape[:2]
    width = -(-(w + 16 + small) // 32) * 32  # PyAV's RGB -> YUV of a 390 px wide frame changed between calls
    frames = []
    for i in range(n):
        canvas = np.full((h, width, 3), 40, np.uint8)
        canvas[:, :w] = big[i]
        y = (h - small) // 2
        canvas[y : y + small, w + 16 : w + 16 + small] = cv2.resize(little[i], (small, small),
                                                                   interpolation=cv2.INTER_AREA)
        frames.append(canvas)
    return make_video(out, frames=frames, fps=25, audio_samples=audio.mean(axis=1)[: int(n / 25 * sr)], lossless=True)


def side(track: FaceTrack, width: int = 224) -> float:
    """Fraction of the track's face frames on the right-hand (small) picture."""
    centres = (track.boxes[track.valid, 0] + track.boxes[track.valid, 2]) / 2
    return float(np.mean(centres > width))


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector(need_yunet())


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> Path:
    return compose_pair(SPEAKER, SILENT, tmp_path_factory.mktemp("pair") / "pair.mp4")


def test_largest_keeps_the_larger_face_active_the_speaker(pair, detector, tmp_path):
    largest = extract_faces(pair, tmp_path / "largest.npz", detector=detector, progress=False)
    active = extract_faces(pair, tmp_path / "active.npz", detector=detector, progress=False, face_select="active")
    assert largest.valid.mean() > 0.9 and active.valid.mean() > 0.9
    assert side(largest) < 0.05  # the larger, silent face on the left
    assert side(active) > 0.95  # the smaller face whose voice is the audio
    assert largest.selection == "largest" and active.selection == "active"
    assert active.selection_note.count("r=") == 2  # both faces were scored
    back = FaceTrack.load(tmp_path / "active.npz")
    assert (back.selection, back.selection_note) == (active.selection, active.selection_note)
    assert np.array_equal(back.crops, active.crops) and np.array_equal(back.times, largest.times)
    both = active.valid & largest.valid
    assert np.abs(active.crops[both].astype(int) - largest.crops[both].astype(int)).mean() > 10  # another face
    again = extract_faces(pair, None, detector=detector, progress=False, face_select="active")
    assert again.selection_note == active.selection_note  # the same verdict and figures, whatever ran before


def test_active_without_audio_is_the_largest_track_with_the_reason(pair, detector, tmp_path):
    frames = [img for _, img in iter_frames(pair)][:50]
    mute = make_video(tmp_path / "mute.mp4", frames=frames, fps=25, audio=False)
    largest = extract_faces(mute, None, detector=detector, progress=False)
    active = extract_faces(mute, None, detector=detector, progress=False, face_select="active")
    assert active.selection == "largest" and "no audio track" in active.selection_note
    for name in ("crops", "valid", "boxes", "landmarks"):
        assert np.array_equal(getattr(active, name), getattr(largest, name)), name


def test_active_with_a_silent_track_or_one_face_falls_back(pair, detector, tmp_path):
    frames = [img for _, img in iter_frames(pair)][:50]
    silent = make_video(tmp_path / "silent.mp4", frames=frames, fps=25, audio_samples=np.zeros(32000, np.float32))
    assert audio_energy_is_none(silent)
    tr = extract_faces(silent, None, detector=detector, progress=False, face_select="active")
    assert tr.selection == "largest" and "silent audio track" in tr.selection_note
    one = extract_faces(need(SPEAKER), None, fps=5, detector=detector, progress=False, face_select="active")
    assert one.selection == "largest" and "fewer than two" in one.selection_note
    ref = extract_faces(need(SPEAKER), None, fps=5, detector=detector, progress=False)
    assert np.array_equal(one.crops, ref.crops)


def audio_energy_is_none(path: Path) -> bool:
    change, why = audio_change(path, np.arange(0, 2, 0.04))
    return change is None and why == "silent audio track"


def test_candidates_follow_each_face_and_end_after_a_long_miss():
    def dets(*boxes):
        b = np.array(boxes, np.float32).reshape(-1, 4)
        return Detections(b, np.zeros((len(b), 5, 2), np.float32), np.ones(len(b), np.float32))

    left, right = [0, 0, 100, 100], [200, 0, 260, 60]
    frames = [dets(left, right), dets(right, [5, 0, 105, 100]), dets([10, 0, 110, 100]), dets(), dets(left)]
    times = [0.0, 0.04, 0.08, 0.5, 1.5]  # the last frame comes 1.42 s after the left face was last seen
    cands = link_candidates(frames, times)
    assert cands.tolist() == [[0, 1, 0, -1, -1], [1, 0, -1, -1, -1], [-1, -1, -1, -1, 0]]
    assert link_candidates([dets()], [0.0]).shape == (0, 1)


def test_manifest_records_the_rule_and_refuses_to_mix(pair, detector, tmp_path):
    m = _manifest(pair.parent, [pair.name])
    out = tmp_path / "faces"
    s = extract_faces_manifest(m, out, detector=detector, progress=False, face_select="active")
    assert s["face_select"] == "active" and s["selections"] == {"active": 1} and s["videos"] == 1
    with pytest.raises(LiserError, match="active face.*largest face"):
        extract_faces_manifest(m, out, detector=detector, progress=False)
    with pytest.raises(LiserError, match="face_select 'loudest'"):
        extract_faces_manifest(m, tmp_path / "other", detector=detector, progress=False, face_select="loudest")


def test_cli_passes_face_select(pair, tmp_path, monkeypatch):
    from liser import cli

    m = _manifest(pair.parent, [pair.name])
    m.save(tmp_path / "manifest")
    monkeypatch.setenv("LISER_YUNET", str(need_yunet()))
    assert cli.main(["faces", str(tmp_path / "manifest"), "-o", str(tmp_path / "f"), "--face-select", "active"]) == 0
    track = FaceTrack.load(next((tmp_path / "f").glob("*.npz")))
    assert track.selection == "active"


def test_similarity_transform_recovers_a_rotation_scale_and_shift():
    dst = template(64).astype(np.float64)
    angle, scale, shift = 0.3, 1.7, np.array([30.0, -12.0])
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    src = (dst - shift) @ rot / scale  # so that scale * rot @ src + shift == dst
    m = similarity_transform(src, dst)
    np.testing.assert_allclose(np.hstack([src, np.ones((5, 1))]) @ m.T, dst, atol=1e-3)
    assert np.linalg.det(m[:, :2]) > 0  # mirrored points still give a rotation, never a reflection
    mirrored = similarity_transform(src * [-1, 1], dst)
    assert mirrored is not None and np.linalg.det(mirrored[:, :2]) > 0
    assert similarity_transform(np.ones((5, 2)), dst) is None
    assert similarity_transform(np.full((5, 2), np.nan), dst) is None
