"""Issue 12, reading audio from the field: each *kind* of input, built from ../shared/data at test time.

Joined files (MP3, Ogg, FLAC, WAV written with `cat`) are read whole; a
folder of voice notes (.oga, .3gp, .wma beside .flac, .m4a) is read whole
and what it skips is named; a video with two audio tracks is read from the
one with speech; an unfinalised WAV header is read with a warning; bytes of
no format say so; a Latin-1 file name survives the manifest. Nothing here
is committed media: every variant is written into tmp_path from real
RAVDESS files (soundfile and PyAV; ffmpeg is not needed).
"""

from __future__ import annotations

import io
import os
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest

sf = pytest.importorskip("soundfile")
av = pytest.importorskip("av")

from liser.data import audio  # noqa: E402
from liser.inference import predict
from liser.inference import decode
from liser.cli import main  # noqa: E402
from liser.data.corpora import Manifest, prepare  # noqa: E402
from liser.core.errors import LiserError  # noqa: E402

from conftest import real_root  # noqa: E402
from test_inputs_field import encode, one_line  # noqa: E402


def speech(n: int = 2) -> list[tuple[np.ndarray, int]]:
    """n real RAVDESS files of Actor_05 (mono 16 kHz float32), other emotions each."""
    files = sorted((real_root("ravdess") / "Actor_05").glob("*.flac"))[::9][:n]
    return [sf.read(f, dtype="float32") for f in files]


def joined(tmp_path: Path, kind: str) -> tuple[Path, float]:
    """Two real utterances written as `kind` and joined byte for byte (`cat a b > joined`); the total seconds."""
    (a, sr), (b, _) = speech(2)
    parts = []
    for i, sig in enumerate((a, b)):
        p = tmp_path / f"part{i}.{kind}"
        if kind == "mp3":
            encode(sig, sr, p, "mp3")
        else:
            fmt, sub = {"opus": ("OGG", "OPUS"), "ogg": ("OGG", "VORBIS"), "flac": ("FLAC", "PCM_16"),
                        "wav": ("WAV", "PCM_16")}[kind]
            sf.write(p, sig, sr, format=fmt, subtype=sub)
        parts.append(p.read_bytes())
    out = tmp_path / f"joined.{kind}"
    out.write_bytes(b"".join(parts))
    return out, (len(a) + len(b)) / sr


def read_warned(path: Path) -> tuple[np.ndarray, int, list[str]]:
    """liser.data.audio.read_file with the warnings it gave."""
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        x, sr = audio.read_file(path)
    return x, sr, [str(m.message) for m in w]


# ---------------------------------------------------------------- 1: joined files are read whole
@pytest.mark.parametrize("kind", ["mp3", "opus", "ogg", "flac", "wav"])
def test_joined_files_are_read_whole(tmp_path, kind):
    path, total = joined(tmp_path, kind)
    first = sf.info(str(tmp_path / f"part0.{kind}")).duration
    x, sr, said = read_warned(path)
    assert len(x) / sr == pytest.approx(total, abs=0.2), (len(x) / sr, total, first)  # not the first part alone
    frames, duration = decode.file_frames(path)  # predict's own libsndfile path takes the same reader
    assert duration == pytest.approx(len(x) / sr, abs=0.01)
    if kind == "mp3":  # the second file's ID3 tag is one packet that does not decode: skipped and said
        assert any("undecodable" in s and "read the rest" in s for s in said), said


def test_single_mp3_reads_as_libsndfile_reads_it(tmp_path):
    (sig, sr), = speech(1)
    path = encode(sig, sr, tmp_path / "one.mp3", "mp3")
    x, _, said = read_warned(path)
    ref, _ = sf.read(str(path), dtype="float32", always_2d=True)
    assert x.shape == ref.shape and not said
    np.testing.assert_allclose(x, ref, atol=1e-6)


def test_samples_after_the_wav_data_chunk_are_said(tmp_path):
    (a, sr), (b, _) = speech(2)
    sf.write(tmp_path / "a.wav", a, sr, subtype="PCM_16")
    path = tmp_path / "appended.wav"  # headerless samples appended after the declared data
    path.write_bytes((tmp_path / "a.wav").read_bytes() + (b * 32767).astype("<i2").tobytes())
    x, _, said = read_warned(path)
    assert len(x) == len(a)
    assert len(said) == 1 and "audio may continue past the 3." in said[0] and "appended.wav" in said[0]
    tagged = tmp_path / "tagged.wav"  # a well-formed chunk after the data (metadata) is not a warning
    info = b"INFOISFT" + struct.pack("<I", 6) + b"liser\0"
    tagged.write_bytes((tmp_path / "a.wav").read_bytes() + b"LIST" + struct.pack("<I", len(info)) + info)
    assert read_warned(tagged)[2] == []


# ---------------------------------------------------------------- 2: a folder of voice notes
AMR_MR122 = (7, 31)  # AMR-NB 12.2 kbit/s: frame type and payload bytes per 20 ms frame (3GPP TS 26.101)


def amr_nb_3gp(sig8k: np.ndarray, path: Path, seed: int = 0) -> Path:
    """An Android voice note: AMR-NB in a .3gp, from 8 kHz speech where PyAV's wheel has an AMR-NB encoder.

    PyAV 18.1.1's wheels dropped libopencore-amrnb (the encoder); FFmpeg's own AMR-NB decoder, which is all
    liser needs, is still in them. Without the encoder the note holds as many 12.2 kbit/s frames as the speech
    would have, with seeded random codec parameters (RFC 4867 storage format, remuxed into 3GP): the same
    container and decoder path, but a noise-like signal instead of the voice.
    """
    try:
        return encode(sig8k, 8000, path, "libopencore_amrnb", "3gp")
    except av.codec.codec.UnknownCodecError:
        pass
    ft, size = AMR_MR122
    rng = np.random.default_rng(seed)
    frames = [bytes([ft << 3 | 0x04]) + rng.bytes(size) for _ in range(len(sig8k) // 160)]
    raw = io.BytesIO(b"#!AMR\n" + b"".join(frames))
    with av.open(raw, format="amr") as src, av.open(str(path), "w", format="3gp") as out:
        stream = out.add_stream_from_template(src.streams.audio[0])
        for pkt in src.demux(src.streams.audio[0]):
            if pkt.dts is not None:
                pkt.stream = stream
                out.mux(pkt)
    return path


def voice_notes(folder: Path) -> list[str]:
    """.oga, .3gp (AMR-NB), .wma, .flac, .m4a and a suffix-less Ogg of real speech, and a notes.txt; the audio names."""
    folder.mkdir()
    clips = speech(6)
    (s0, sr) = clips[0]
    sf.write(folder / "telegram.oga", s0, sr, format="OGG", subtype="OPUS")
    s8 = audio.resample(clips[1][0], sr, 8000)
    amr_nb_3gp(s8, folder / "android.3gp")
    encode(clips[2][0], sr, folder / "windows.wma", "wmav2", "asf", bit_rate=32_000)
    sf.write(folder / "studio.flac", clips[3][0], sr)
    encode(clips[4][0], sr, folder / "iphone.m4a", "aac", "ipod")
    sf.write(folder / "voice-note", clips[5][0], sr, format="OGG", subtype="OPUS")  # saved without a suffix
    (folder / "notes.txt").write_text("what was said, typed\n")
    (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")  # hidden: neither taken nor named
    return ["android.3gp", "iphone.m4a", "studio.flac", "telegram.oga", "voice-note", "windows.wma"]


SKIPPED_TXT = "skipped (a .txt file; not an audio or video file that liser reads)"


def test_every_voice_note_is_read_when_named(tmp_path):
    names = voice_notes(tmp_path / "notes")
    for name in names:
        sig = audio.load_audio(tmp_path / "notes" / name)
        assert len(sig) / audio.SAMPLE_RATE > 1.0, name


def test_predict_folder_reads_every_voice_note_and_names_what_it_skips(tmp_path, capsys):
    folder = tmp_path / "notes"
    names = voice_notes(folder)
    files, problems = predict.expand_inputs([str(folder)])
    assert [Path(f).name for f in files] == names and problems == []
    err = capsys.readouterr().err
    assert err.strip() == f"liser: {folder / 'notes.txt'}: {SKIPPED_TXT}"
    assert main(["predict", str(folder)]) == 0  # the packaged default model
    out, err = capsys.readouterr()
    assert [line.split("\t")[0] for line in out.strip().splitlines()] == [str(folder / n) for n in names]
    assert "notes.txt: skipped" in err and ".DS_Store" not in err


def test_prepare_unlabeled_takes_voice_notes_and_rejects_what_it_skips(tmp_path, capsys):
    folder = tmp_path / "notes"
    names = voice_notes(folder)
    m = prepare("unlabeled", folder, progress=False)
    assert sorted(Path(it.path).name for it in m.items) == names
    assert m.rejected == [{"path": "notes.txt", "reason": SKIPPED_TXT}]
    assert main(["prepare", "unlabeled", str(folder), "-o", str(tmp_path / "manifest")]) == 0
    out = capsys.readouterr().out
    assert "6 items" in out and "1 rejected" in out and "rejected notes.txt: skipped" in out


def test_prepare_videos_names_what_is_not_a_video(tmp_path):
    from test_video import make_video

    (tmp_path / "spk1").mkdir()
    make_video(tmp_path / "spk1" / "a.mp4", seed=1)
    make_video(tmp_path / "spk1" / "b.3gp", seed=2)  # a phone's video: now a video suffix
    (s, sr), = speech(1)
    encode(s, sr, tmp_path / "spk1" / "voice.m4a", "aac", "ipod")
    m = prepare("videos", tmp_path, progress=False)
    assert [it.path for it in m.items] == ["spk1/a.mp4", "spk1/b.3gp"]
    assert m.rejected == [{"path": "spk1/voice.m4a",
                           "reason": "skipped (a .m4a file; not a video file that liser reads)"}]


# ---------------------------------------------------------------- 3: two audio tracks
def with_tracks(path: Path, tracks: list[np.ndarray], sr: int) -> Path:
    """A video (64x64 MPEG-4, 5 fps) with one AAC track per signal, in order (a screen recorder's layout)."""
    n = min(len(t) for t in tracks)
    with av.open(str(path), "w") as c:
        vs = c.add_stream("mpeg4", rate=5)
        vs.width = vs.height = 64
        vs.pix_fmt = "yuv420p"
        streams = [c.add_stream("aac", rate=sr) for _ in tracks]
        for st in streams:
            st.layout = "mono"
        for i in range(int(n / sr * 5)):
            frame = av.VideoFrame.from_ndarray(np.full((64, 64, 3), 40 * (i % 5), np.uint8), format="rgb24")
            frame.pts = i
            for pkt in vs.encode(frame):
                c.mux(pkt)
        for st, sig in zip(streams, tracks):
            pcm = (np.clip(sig[:n], -1, 1) * 32767).astype(np.int16)
            for a in range(0, n, 1024):
                fr = av.AudioFrame.from_ndarray(pcm[None, a : a + 1024], format="s16", layout="mono")
                fr.sample_rate, fr.pts = sr, a
                for pkt in st.encode(fr):
                    c.mux(pkt)
        for st in [vs, *streams]:
            for pkt in st.encode(None):
                c.mux(pkt)
    return path


@pytest.mark.parametrize("desktop", ["muted", "quiet voice"])
@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_the_track_with_speech_is_read_and_said(tmp_path, desktop, suffix):
    (mic, sr), (other, _) = speech(2)
    n = min(len(mic), len(other))
    first = np.zeros(n, np.float32) if desktop == "muted" else 0.03 * other[:n]  # -30 dB: someone in the background
    path = with_tracks(tmp_path / f"screen{suffix}", [first, mic[:n]], sr)
    x, got_sr, said = read_warned(path)
    mono = audio.downmix(x, got_sr)
    lag = int(np.argmax(np.correlate(mono[:4000], mic[:2000], "valid")))  # AAC's priming delay
    assert np.corrcoef(mono[lag : lag + n - 4000], mic[: n - 4000])[0, 1] > 0.99
    assert len(said) == 1 and "2 audio tracks; using track 2" in said[0] and "track 1:" in said[0], said
    from liser.data.corpora.base import probe

    probe(path)  # not 'silent': the muted desktop track is not the one read


def test_one_track_says_nothing_and_speech_channel_is_unchanged(tmp_path):
    (mic, sr), = speech(1)
    path = with_tracks(tmp_path / "one.mp4", [mic], sr)
    assert read_warned(path)[2] == []
    six = np.stack([0.01 * mic] * 2 + [mic] + [0.01 * mic] * 3, axis=1)  # the 3+ channel path's measure
    assert audio.speech_channel(six, sr) == 2


# ---------------------------------------------------------------- 4: a WAV header never finalised
@pytest.mark.parametrize("subtype", ["PCM_16", "PCM_24", "PCM_32", "FLOAT"])
@pytest.mark.parametrize("riff", ["zero", "header only"])
def test_unfinalised_wav_is_read_with_a_warning(tmp_path, subtype, riff):
    (sig, sr), = speech(1)
    good = tmp_path / "good.wav"
    sf.write(good, sig, sr, subtype=subtype)
    data = bytearray(good.read_bytes())
    at = data.index(b"data")
    data[at + 4 : at + 8] = b"\0\0\0\0"  # what a recorder that crashed leaves: sizes never written back
    data[4:8] = struct.pack("<I", 0 if riff == "zero" else at)
    path = tmp_path / "crashed.wav"
    path.write_bytes(bytes(data))
    assert len(sf.read(str(path))[0]) == 0  # libsndfile: 0 samples, no error (the reported 'empty audio')
    x, got_sr, said = read_warned(path)
    ref, _ = sf.read(str(good), dtype="float32", always_2d=True)
    assert got_sr == sr and x.shape == ref.shape
    np.testing.assert_allclose(x, ref, atol=1e-7)
    assert len(said) == 1 and "header never finalised" in said[0] and f"{len(sig) / sr:.2f} s" in said[0]
    assert decode.file_frames(path)[1] == pytest.approx(len(sig) / sr, abs=1e-3)


def test_an_empty_wav_is_still_empty_audio(tmp_path):
    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros(0, np.float32), 16000, subtype="PCM_16")
    with pytest.raises(LiserError, match=r"empty\.wav: empty audio \(0 samples\)"):
        audio.load_audio(path)


# ---------------------------------------------------------------- 5: bytes of no format
@pytest.mark.parametrize("suffix", [".flac", ".wav", ".ogg", ".m4a", ""])
def test_bytes_of_no_format_say_so(tmp_path, suffix, capsys):
    real = sorted((real_root("ravdess") / "Actor_05").glob("*.flac"))[0].read_bytes()
    noise = np.random.default_rng(7).bytes(len(real))
    for name, data in (("frames", real[8192:]), ("random", noise)):  # FLAC frames without their header; random
        path = tmp_path / f"{name}{suffix}"
        path.write_bytes(data)
        with pytest.raises(LiserError, match="not a recognised audio or video format") as e:
            audio.load_audio(path)
        assert "empty audio" not in str(e.value) and str(e.value).startswith(str(path))
        assert main(["predict", str(path)]) == 1
        assert "not a recognised audio or video format" in one_line(capsys.readouterr().err)


# ---------------------------------------------------------------- 6: a file name that is not UTF-8
def test_latin1_file_name_survives_the_manifest(tmp_path, capsys):
    (sig, sr), = speech(1)
    root = tmp_path / "pool"
    (root / "spk").mkdir(parents=True)
    name = os.path.join(os.fsencode(root / "spk"), b"r\xe9union-\xe9t\xe9.flac")  # Latin-1, not UTF-8
    sf.write(name, sig, sr)  # soundfile takes a bytes name as it is
    with open(os.path.join(os.fsencode(root / "spk"), b"l\xe9gende.txt"), "w") as f:
        f.write("skipped, named in rejected.csv")
    m = prepare("unlabeled", root, progress=False)
    out = m.save(tmp_path / "manifest")
    back = Manifest.load(out)
    assert [it.path for it in back.items] == [it.path for it in m.items] == [os.fsdecode(name)[len(str(root)) + 1 :]]
    assert os.fsencode(back.root / back.items[0].path) == name
    assert back.rejected == [{"path": "spk/" + os.fsdecode(b"l\xe9gende.txt"), "reason": audio.skipped_reason("x.txt")}]
    assert back.fingerprint() == m.fingerprint()
    assert len(audio.load_audio(back.abspath(back.items[0]))) == len(sig)
    os.remove(os.path.join(os.fsencode(root / "spk"), b"l\xe9gende.txt"))  # the CLI prints rejected names (not here)
    assert main(["prepare", "unlabeled", str(root), "-o", str(tmp_path / "again")]) == 0
    assert Manifest.load(tmp_path / "again").items == back.items


def test_cli_prints_a_latin1_name_it_rejects(tmp_path):
    """`liser prepare` lists what it skipped: a non-UTF-8 name comes out as its own bytes, no traceback."""
    import subprocess
    import sys

    (sig, sr), = speech(1)
    root = tmp_path / "pool"
    (root / "spk").mkdir(parents=True)
    sf.write(root / "spk" / "a.flac", sig, sr)
    txt = os.path.join(os.fsencode(root / "spk"), b"l\xe9gende.txt")
    with open(txt, "w") as f:
        f.write("not audio")
    liser_bin = Path(sys.executable).parent / "liser"
    env = {**os.environ, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}  # a UTF-8 terminal: strict encoding by default
    p = subprocess.run([str(liser_bin), "prepare", "unlabeled", str(root), "-o", str(tmp_path / "m")],
                       capture_output=True, timeout=120, env=env)
    assert p.returncode == 0, p.stderr.decode("utf-8", "replace")
    assert b"Traceback" not in p.stderr
    assert b"l\xe9gende.txt" in p.stdout + p.stderr


# ---------------------------------------------------------------- samples that are not audio at any gain
@pytest.mark.parametrize("seconds", [4.0, decode.LONG_FILE_S + 5])  # read whole, and read in blocks
def test_absurd_amplitudes_are_one_clear_line(trained_run, tmp_path, capsys, seconds):
    """A float WAV scaled x1e30 (or as int16, x32768) gets one line naming it and the problem, never a label."""
    import soundfile as sf

    src = real_root("ravdess") / "Actor_01" / "03-01-05-01-01-01-01.flac"
    sig, sr = sf.read(src, dtype="float32")
    sig = np.tile(sig, int(np.ceil(seconds * sr / len(sig))))[: int(seconds * sr)]
    for scale in (1e30, 32768.0):
        path = tmp_path / f"scaled-{scale:g}.wav"
        sf.write(path, sig * np.float32(scale), sr, subtype="FLOAT")
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no overflow RuntimeWarning on the way to the refusal
            assert main(["predict", str(trained_run), str(path)]) == 1
        out, err = capsys.readouterr()
        assert out == "" and f"{path}: samples reach" in one_line(err) and "full scale" in err


@pytest.mark.parametrize("claimed", [1, 2_000, 1_000_000])
def test_a_header_sample_rate_no_speech_can_have_is_one_clear_line(trained_run, tmp_path, capsys, claimed):
    """A real WAV's header rewritten to claim 1 Hz (an 8 KB file that would be resampled 16,000-fold), 2 kHz or
    1 MHz: one line naming the file and the rate, for predict, --stream and the Python API alike."""
    import soundfile as sf

    import liser

    src = real_root("ravdess") / "Actor_02" / "03-01-03-01-01-01-02.flac"
    sig, sr = sf.read(src, dtype="int16")
    path = tmp_path / f"claims-{claimed}.wav"
    sf.write(path, sig[:4000], claimed, subtype="PCM_16")
    for extra in ([], ["--stream"]):
        assert main(["predict", str(trained_run), str(path), *extra]) == 1
        out, err = capsys.readouterr()
        assert out == "" and f"sample rate {claimed} Hz is outside" in one_line(err)
    with pytest.raises(LiserError, match=f"sample rate {claimed} Hz"):
        liser.load(trained_run).predict(sig.astype(np.float32) / 32768, claimed)


def test_cli_says_a_warning_in_one_line(trained_run, tmp_path, capsys):
    """liser's own warnings reach the CLI user as one `liser: warning:` line naming the file, then the label."""
    (sig, sr), = speech(1)
    good = tmp_path / "good.wav"
    sf.write(good, sig, sr, subtype="PCM_16")
    data = bytearray(good.read_bytes())
    at = data.index(b"data")
    data[at + 4 : at + 8] = b"\0\0\0\0"  # a header never finalised
    path = tmp_path / "crashed.wav"
    path.write_bytes(bytes(data))
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert main(["predict", str(trained_run), str(path)]) == 0
    out, err = capsys.readouterr()
    assert one_line(err).startswith(f"liser: warning: {path}: WAV header never finalised")
    assert out.startswith(str(path))
