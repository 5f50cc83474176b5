"""Issue 11, inputs from the field: each row's *kind* of input, built from ../shared/data at test time.

Nothing here is committed media: every variant (an AAC .m4a, a DC offset, a
constant signal, integer PCM, a Windows-1252 labels.csv, 5.1 audio, broken
symbolic links, umask-dependent permissions, 0-byte files, long files) is
written into tmp_path from real RAVDESS files.
"""

from __future__ import annotations

import io
import os
import stat
import sys
from pathlib import Path

import numpy as np
import pytest

sf = pytest.importorskip("soundfile")

import liser  # noqa: E402
from liser.data import audio  # noqa: E402
from liser.cli import main  # noqa: E402
from liser.core.errors import LiserError  # noqa: E402

from conftest import real_root  # noqa: E402


def ravdess_files(n: int, actor: str = "Actor_05") -> list[Path]:
    """n real RAVDESS files of one actor (not in the trained run's 4 actors), spread over the emotions."""
    files = sorted((real_root("ravdess") / actor).glob("*.flac"))
    return files[:: max(1, len(files) // n)][:n]


@pytest.fixture(scope="module")
def model(trained_run):
    return liser.load(trained_run)


def encode(sig: np.ndarray, sr: int, path: Path, codec: str, fmt: str | None = None, rate: int | None = None,
           bit_rate: int | None = None) -> Path:
    """Write a mono float signal with PyAV (AAC in .m4a, MP3, Opus in Ogg, FLAC in Matroska...); `bit_rate` in
    bits/s for encoders that want one (WMA)."""
    import av

    with av.open(str(path), "w", format=fmt) as c:
        st = c.add_stream(codec, rate=rate or sr)
        st.layout = "mono"
        if bit_rate:
            st.bit_rate = bit_rate
        pcm = (np.clip(sig, -1, 1) * 32767).astype(np.int16)
        step = 1024
        for a in range(0, len(pcm), step):
            fr = av.AudioFrame.from_ndarray(pcm[None, a : a + step], format="s16", layout="mono")
            fr.sample_rate, fr.pts = sr, a
            for pkt in st.encode(fr):
                c.mux(pkt)
        for pkt in st.encode(None):
            c.mux(pkt)
    return path


def stdin_bytes(monkeypatch, data: bytes) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))


def one_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ---------------------------------------------------------------- row 1: stdin is recognised, never guessed
@pytest.mark.parametrize("kind", ["m4a-aac", "mp3", "ogg-opus", "flac", "wav", "mkv-flac"])
def test_stdin_same_label_as_the_path(trained_run, tmp_path, monkeypatch, capsys, kind):
    src = ravdess_files(1)[0]
    sig, sr = sf.read(src, dtype="float32")
    path = {
        "m4a-aac": lambda: encode(sig, sr, tmp_path / "speech.m4a", "aac", "ipod"),
        "mp3": lambda: encode(sig, sr, tmp_path / "speech.mp3", "mp3"),
        "ogg-opus": lambda: (sf.write(tmp_path / "speech.opus", sig, sr, format="OGG", subtype="OPUS"),
                             tmp_path / "speech.opus")[1],
        "flac": lambda: (sf.write(tmp_path / "speech.flac", sig, sr), tmp_path / "speech.flac")[1],
        "wav": lambda: (sf.write(tmp_path / "speech.wav", sig, sr, subtype="PCM_24"), tmp_path / "speech.wav")[1],
        "mkv-flac": lambda: encode(sig, sr, tmp_path / "speech.mkv", "flac", "matroska"),
    }[kind]()
    assert main(["predict", str(trained_run), str(path)]) == 0
    by_path = capsys.readouterr().out.strip().split("\t")
    stdin_bytes(monkeypatch, path.read_bytes())
    assert main(["predict", str(trained_run), "-"]) == 0
    by_stdin = capsys.readouterr().out.strip().split("\t")
    assert by_stdin[0] == "-" and by_stdin[1:] == by_path[1:]  # same label, same probability


def test_stdin_unknown_bytes_are_refused_not_guessed(trained_run, tmp_path, monkeypatch, capsys):
    sig, _ = sf.read(ravdess_files(1)[0], dtype="int16")
    for data in (sig.tobytes(), b"\x00\x01garbage" * 500, b"<html>not audio</html>" * 100):
        stdin_bytes(monkeypatch, data)
        assert main(["predict", str(trained_run), "-"]) == 1
        out, err = capsys.readouterr()
        assert out == "" and "not recognised" in one_line(err) and "liser-stdin" not in err
    stdin_bytes(monkeypatch, b"")
    assert main(["predict", str(trained_run), "-"]) == 1
    assert "empty input (0 bytes)" in one_line(capsys.readouterr().err)
    stdin_bytes(monkeypatch, sig.tobytes())  # said explicitly: raw 16 kHz mono 16-bit PCM
    assert main(["predict", str(trained_run), "-", "--raw"]) == 0


# ---------------------------------------------------------------- row 2: DC offset, at predict level
def test_dc_offset_keeps_the_labels(model, tmp_path):
    files = ravdess_files(10)
    for f in files:
        sig, sr = sf.read(f, dtype="float32")
        sf.write(tmp_path / f"{f.stem}-dc.wav", sig + 0.005, sr, subtype="FLOAT")
    plain = [model.predict_file(f) for f in files]
    offset = [model.predict_file(tmp_path / f"{f.stem}-dc.wav") for f in files]
    assert [p.label for p in plain] == [p.label for p in offset]
    np.testing.assert_allclose([p.logits for p in plain], [p.logits for p in offset], atol=0.05)


# ---------------------------------------------------------------- row 3: a constant is silent
def test_constant_signal_is_silent(model, trained_run, tmp_path, capsys):
    from liser.data.corpora import prepare

    actor = tmp_path / "corpus" / "Actor_05"
    actor.mkdir(parents=True)
    good = ravdess_files(1)[0]
    (actor / good.name).symlink_to(good)
    const = actor / "03-01-05-01-01-01-05.wav"
    sf.write(const, np.full(3 * 16000, 0.3, np.float32), 16000, subtype="FLOAT")
    m = prepare("ravdess", tmp_path / "corpus", progress=False)
    assert [it.path for it in m.items] == [f"Actor_05/{good.name}"]
    out = m.save(tmp_path / "manifest")
    rejected = (out / "rejected.csv").read_text()
    assert "Actor_05/03-01-05-01-01-01-05.wav" in rejected and "silent" in rejected
    for x in (np.full(48000, 0.3, np.float32), np.full(48000, -0.7, np.float32)):
        with pytest.raises(LiserError, match="silent"):
            model.predict(x, 16000)
    assert main(["predict", str(trained_run), str(const)]) == 1
    assert "silent" in one_line(capsys.readouterr().err)


# ---------------------------------------------------------------- row 4: integer PCM
def test_integer_pcm_is_scaled(model):
    sig, sr = sf.read(ravdess_files(1)[0], dtype="float32")
    ref = model.predict(sig, sr)
    as_int16, _ = sf.read(ravdess_files(1)[0], dtype="int16")  # what scipy.io.wavfile.read returns
    p16 = model.predict(as_int16, sr)
    assert p16.label == ref.label
    np.testing.assert_allclose(p16.logits, ref.logits, atol=0.05)
    p32 = model.predict(as_int16.astype(np.int32) << 16, sr)
    np.testing.assert_allclose(p32.logits, p16.logits, atol=1e-4)
    u8 = (np.clip(np.round(sig * 128) + 128, 0, 255)).astype(np.uint8)  # 8-bit WAV: centred on 128
    assert model.predict(u8, sr).label == ref.label
    np.testing.assert_allclose(audio.pcm_to_float32(np.array([0, 128, 255], np.uint8)), [-1.0, 0.0, 127 / 128])
    for bad in (sig > 0, sig.astype(object), sig.astype(np.complex64), as_int16.astype(np.uint16)):
        with pytest.raises(TypeError, match=str(bad.dtype)):
            model.predict(bad, sr)


# ---------------------------------------------------------------- row 5: labels.csv encodings
def _generic_corpus(tmp_path: Path, text: str, encoding: str) -> Path:
    root = tmp_path / f"generic-{encoding}"
    root.mkdir()
    for i, f in enumerate(ravdess_files(2)):
        (root / f"clip{i}.flac").symlink_to(f)
    (root / "labels.csv").write_bytes(text.encode(encoding))
    return root


def test_labels_csv_encodings(tmp_path, capsys):
    from liser.data.corpora import prepare

    text = "path,speaker,label\nclip0.flac,Jäger,angry\nclip1.flac,Jäger,sad\n"
    root = _generic_corpus(tmp_path, text, "cp1252")
    with pytest.warns(UserWarning, match=r"labels\.csv.*cp1252"):
        m = prepare("generic", root, progress=False)
    assert {it.speaker for it in m.items} == {"Jäger"}
    for enc in ("utf-8", "utf-8-sig", "utf-16", "utf-32"):
        m = prepare("generic", _generic_corpus(tmp_path, text, enc), progress=False)
        assert {it.speaker for it in m.items} == {"Jäger"}, enc
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "labels.csv").write_bytes(b"path,speaker,label\nclip0.flac,J\x81ger,angry\n")  # 0x81: not cp1252 either
    assert main(["prepare", "generic", str(bad), "-o", str(tmp_path / "m")]) == 2
    line = one_line(capsys.readouterr().err)
    assert f"{bad / 'labels.csv'}:2:" in line and "0x81" in line


# ---------------------------------------------------------------- row 6: 5.1 audio, voice in the centre
def test_voice_in_one_of_six_channels_is_not_buried(model, tmp_path):
    from liser.data.audio import resample

    files = ravdess_files(4)
    rng = np.random.default_rng(0)
    for f in files:
        voice16, _ = sf.read(f, dtype="float32")
        voice = resample(voice16, 16000, 48000)
        six = np.zeros((len(voice), 6), np.float32)
        six[:, 2] = voice  # C of L R C LFE Ls Rs
        six[:, [0, 1, 4, 5]] = rng.normal(scale=1e-3, size=(len(voice), 4))  # room tone in the others (-60 dBFS)
        sf.write(tmp_path / "film.wav", six, 48000, subtype="FLOAT")
        sf.write(tmp_path / "voice.wav", voice, 48000, subtype="FLOAT")
        alone, mixed = model.predict_file(tmp_path / "voice.wav"), model.predict_file(tmp_path / "film.wav")
        assert mixed.label == alone.label
        np.testing.assert_allclose(mixed.logits, alone.logits, atol=1e-4)
        assert model.predict(six, 48000).label == alone.label  # arrays go through the same down-mix
    stereo = np.stack([voice16, 0.5 * voice16], 1)  # mono and stereo stay the plain mean (caches unchanged)
    np.testing.assert_array_equal(audio.downmix(stereo), stereo.mean(axis=1))


# ---------------------------------------------------------------- row 7: broken symbolic links
def test_broken_symlink_is_rejected_and_said(trained_run, tmp_path, capsys):
    from liser.data.corpora import prepare

    actor = tmp_path / "corpus" / "Actor_05"
    actor.mkdir(parents=True)
    good = ravdess_files(1)[0]
    (actor / good.name).symlink_to(good)
    target = tmp_path / "moved-away" / "03-01-04-01-01-01-05.flac"
    (actor / target.name).symlink_to(target)
    m = prepare("ravdess", tmp_path / "corpus", progress=False)
    assert len(m.items) == 1
    out = m.save(tmp_path / "manifest")
    rows = (out / "rejected.csv").read_text()
    assert f"Actor_05/{target.name},broken symbolic link -> {target}" in rows
    assert main(["predict", str(trained_run), str(tmp_path / "corpus")]) == 1
    out, err = capsys.readouterr()
    assert len(out.strip().splitlines()) == 1  # the good file is still predicted
    assert f"{actor / target.name}: broken symbolic link -> {target}" in one_line(err)


# ---------------------------------------------------------------- row 8: permissions follow the umask
@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_outputs_follow_the_umask(tmp_path, umask):
    from liser.data.corpora import prepare
    from liser.data.faces import FaceTrack
    from liser.teachers.store import StoreWriter
    from liser.core.atomic import atomic_write_text, current_umask

    root = tmp_path / "corpus" / "Actor_05"
    root.mkdir(parents=True)
    for f in ravdess_files(2):
        (root / f.name).symlink_to(f)
    old = os.umask(umask)
    try:
        assert current_umask() == umask
        out = prepare("ravdess", tmp_path / "corpus", progress=False).save(tmp_path / "manifests" / "ravdess")
        atomic_write_text(tmp_path / "summary.json", "{}\n")
        n = 3
        track = FaceTrack(np.zeros((n, 16, 16, 3), np.uint8), np.arange(n, dtype=np.float64), np.ones(n, bool),
                          np.zeros((n, 4), np.float32), np.zeros((n, 5, 2), np.float32), 25.0, "v.mp4")
        track.save(tmp_path / "faces" / "v.npz")
        w = StoreWriter(tmp_path / "store", "speech", ["a", "b"], "x")
        w.add("item", np.full((2, 2), 0.5, np.float32), np.ones(2, bool), 1.0)
        w.finalize()
    finally:
        os.umask(old)
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(out) == 0o777 & ~umask
    for name in ("manifest.csv", "rejected.csv", "meta.json"):
        assert mode(out / name) == 0o666 & ~umask, name
    assert mode(tmp_path / "summary.json") == 0o666 & ~umask
    assert mode(tmp_path / "faces" / "v.npz") == 0o666 & ~umask
    store = tmp_path / "store"
    for p in [*store.glob("*.*"), *(store / "parts").glob("*.npz")]:
        assert mode(p) == 0o666 & ~umask, p


# ---------------------------------------------------------------- also seen
def test_empty_file_is_named(model, trained_run, tmp_path, capsys):
    from liser.data.corpora.base import probe

    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(LiserError, match=r"empty file \(0 bytes\)"):
        probe(empty)
    assert main(["predict", str(trained_run), str(empty)]) == 1
    line = one_line(capsys.readouterr().err)
    assert "empty file (0 bytes)" in line and "Errno" not in line


def test_interrupt_does_not_promise_a_resume(trained_run, monkeypatch, capsys):
    import liser.inference.predict

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(liser.inference.predict, "run_predict", interrupted)
    assert main(["predict", str(trained_run), "x.wav"]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "resume" not in err


def test_long_files_take_the_bounded_path_with_the_same_result(model, tmp_path, monkeypatch):
    from liser.inference import decode as lp

    sig = np.concatenate([sf.read(f, dtype="float32")[0] for f in ravdess_files(6)])  # about 22 s
    f = tmp_path / "long.flac"
    sf.write(f, np.stack([sig, 0.5 * sig], 1), 16000)
    whole = model.predict_file(f)
    frames_whole, _ = lp.file_frames(f)
    monkeypatch.setattr(lp, "LONG_FILE_S", 5.0)
    monkeypatch.setattr(lp, "READ_BLOCK_S", 2.5)
    called, original = [], lp.frontend.features_from_blocks
    monkeypatch.setattr(lp.frontend, "features_from_blocks", lambda *a, **k: called.append(1) or original(*a, **k))
    frames_blocks, duration = lp.file_frames(f)
    assert called and abs(duration - len(sig) / 16000) < 1e-9
    assert frames_blocks.shape == frames_whole.shape
    assert np.abs(frames_blocks.astype(np.float32) - frames_whole).max() <= 0.07  # one float16 step at most, in a few cells
    blocks = model.predict_file(f)
    assert blocks.label == whole.label
    np.testing.assert_allclose(blocks.logits, whole.logits, atol=1e-3)
    sf.write(tmp_path / "const.flac", np.full(8 * 16000, 0.3, np.float32), 16000)
    with pytest.raises(LiserError, match="silent"):
        lp.file_frames(tmp_path / "const.flac")
