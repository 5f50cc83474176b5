"""Inference API and `liser predict`: loading, training-path parity, bad inputs, CLI formats, stdin, streams."""

from __future__ import annotations

import io
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
sf = pytest.importorskip("soundfile")

import liser  # noqa: E402
from liser.data import audio  # noqa: E402
from liser.cli import main  # noqa: E402
from liser.core.errors import LiserError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RAVDESS = ROOT.parent / "shared" / "data" / "ravdess"
ACTORS = ("Actor_01", "Actor_02", "Actor_03")  # train / val / test of the tiny run
LISER = ROOT / ".venv" / "bin" / "liser"


def build_run(base: Path) -> dict:
    """A real 1-epoch run on 3 RAVDESS actors (1/1/1), built once per session under `base`."""
    from liser.core.config import Config
    from liser.data.corpora import Manifest, prepare
    from liser.student.train import train

    base.mkdir(parents=True, exist_ok=True)
    man = base / "manifest"
    if not (man / "meta.json").is_file():
        m = prepare("ravdess", RAVDESS, progress=False)
        m.items = [it for it in m.items if it.speaker in ACTORS]
        m.save(man)
    folds = base / "folds.json"
    folds.write_text(json.dumps({"corpus": "ravdess", "k": 1, "seed": 0, "folds": [
        {"train": [ACTORS[0]], "val": [ACTORS[1]], "test": [ACTORS[2]]}]}))
    cfg = Config(manifest=str(man), folds=str(folds), epochs=1, work=str(base / "work"), out=str(base / "runs"),
                 threads=1)
    run = train(cfg, progress=False)
    m = Manifest.load(man)
    test = [it for it in m.items if it.speaker == ACTORS[2]]
    return {"run": run, "cfg": cfg, "manifest": m, "test": test}


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    if not RAVDESS.is_dir():
        pytest.skip(f"{RAVDESS} not found")
    torch.set_num_threads(1)
    return build_run(tmp_path_factory.getbasetemp() / "liser-tiny-run")


@pytest.fixture(scope="session")
def model(tiny):
    return liser.load(tiny["run"])


def _file(tiny, i: int = 0) -> Path:
    return tiny["manifest"].abspath(tiny["test"][i])


def _signal(tiny, i: int = 0) -> np.ndarray:
    return audio.load_audio(_file(tiny, i))


# ---------------------------------------------------------------- API
def test_load_run_dir_and_checkpoint(tiny, model):
    m2 = liser.load(tiny["run"] / "best.pt")
    assert model.classes == m2.classes == tiny["manifest"].classes
    assert model.info["kind"] == "torch"
    sig = _signal(tiny)
    np.testing.assert_array_equal(model.predict(sig, 16000).logits, m2.predict(sig, 16000).logits)


def test_predict_file_equals_training_evaluation(tiny, model):
    from liser.student.evaluate import file_logits
    from liser.data.features import build_features

    cache = build_features(tiny["manifest"], tiny["cfg"].work, progress=False)
    metrics = json.loads((tiny["run"] / "metrics.json").read_text())
    for i in (0, 7):
        it = tiny["test"][i]
        p = model.predict_file(_file(tiny, i))
        assert p.label in model.classes
        assert abs(sum(p.probabilities.values()) - 1.0) < 1e-6
        assert max(p.probabilities, key=p.probabilities.get) == p.label
        ref = file_logits(model.classifier.student, [cache.frames(it.id)], 0.1)[0]
        np.testing.assert_allclose(p.logits, ref, atol=1e-4)
        assert model.classes[int(ref.argmax())] == p.label
        j = metrics["test_ids"].index(it.id)  # what `liser train` scored for this file (rounded to 1e-4)
        np.testing.assert_allclose(p.logits, metrics["test_logits"][j], atol=2e-4)


def test_stereo_44k_input(tiny, model):
    sig = _signal(tiny)
    st = audio.resample(sig, 16000, 44100)
    stereo = np.stack([st, 0.5 * st], axis=1)  # [samples, channels]
    p = model.predict(stereo, 44100)
    assert p.label in model.classes
    np.testing.assert_allclose(model.predict(stereo.T, 44100).logits, p.logits, atol=1e-6)  # [channels, samples]
    ref = model.predict(0.75 * sig, 16000)
    np.testing.assert_allclose(p.logits, ref.logits, atol=0.05)


def test_timeline_covers_the_file(tiny, model):
    sig = np.concatenate([_signal(tiny, 0), _signal(tiny, 1)])
    dur = len(sig) / 16000
    tl = model.timeline(sig, 16000, hop_s=0.5)
    assert tl[0].start == 0.0
    assert tl[-1].end >= dur - 0.04
    starts = [w.start for w in tl]
    assert starts == sorted(starts) and len(set(starts)) == len(starts)
    assert all(0 < w.end - w.start <= 3.0 + 1e-9 for w in tl)
    assert max(np.diff(starts)) <= 0.5 + 0.033
    assert all(w.label in model.classes for w in tl)
    assert len(model.timeline(sig, 16000, hop_s=1.0)) < len(tl)
    short = model.timeline(sig[:16000], 16000)  # 1 s: one window, end = the signal's end
    assert len(short) == 1 and short[0].end == pytest.approx(1.0)


def test_bad_checkpoints(tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("this is not a checkpoint\n")
    with pytest.raises(LiserError, match="not a liser checkpoint"):
        liser.load(text)

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"format": "liser-student", "x": Evil()}))
    with pytest.raises(LiserError, match="evil.pt"):
        liser.load(evil)
    assert not marker.exists()  # never unpickled

    other = tmp_path / "other.pt"
    torch.save({"model": {"w": torch.zeros(2)}}, other)  # a plain torch file (e.g. last.pt)
    with pytest.raises(LiserError, match="not a liser student checkpoint"):
        liser.load(other)

    with pytest.raises(LiserError, match="best.pt"):
        liser.load(tmp_path)  # a folder that is no run


def test_version_mismatch(tiny, tmp_path):
    ck = torch.load(tiny["run"] / "best.pt", weights_only=True)
    ck["liser_version"] = "9.9.0"
    p = tmp_path / "future.pt"
    torch.save(ck, p)
    with pytest.raises(LiserError) as e:
        liser.load(p)
    msg = str(e.value)
    assert "9.9.0" in msg and liser.__version__ in msg and "\n" not in msg


def test_bad_waveforms(model, tmp_path):
    cases = {
        "empty": (np.zeros(0, np.float32), "empty"),
        "short": (np.random.default_rng(0).normal(size=800).astype(np.float32), "too short"),
        "zeros": (np.zeros(16000, np.float32), "silent"),
        "nan": (np.full(16000, np.nan, np.float32), "NaN"),
    }
    for name, (x, why) in cases.items():
        with pytest.raises(LiserError, match=why):
            model.predict(x, 16000, name=name)
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio")
    with pytest.raises(LiserError, match="bad.wav"):
        model.predict_file(bad)


# ---------------------------------------------------------------- CLI
def _folder(tiny, tmp_path) -> Path:
    d = tmp_path / "in"
    (d / "sub").mkdir(parents=True)
    for i, dst in ((0, d / "a.flac"), (1, d / "sub" / "b.flac")):
        dst.write_bytes(_file(tiny, i).read_bytes())
    (d / "broken.wav").write_text("not audio at all")
    (d / "readme.txt").write_text("ignored: not an audio suffix")
    return d


def test_cli_folder_with_a_bad_file(tiny, tmp_path, capsys):
    d = _folder(tiny, tmp_path)
    rc = main(["predict", str(tiny["run"]), str(d)])
    out, err = capsys.readouterr()
    assert rc == 1
    lines = out.strip().splitlines()
    assert len(lines) == 2
    for line in lines:
        path, label, p = line.split("\t")
        assert label in tiny["manifest"].classes and p.startswith("p=")
    assert f"liser: {d / 'broken.wav'}:" in err and "Traceback" not in err
    assert main(["predict", str(tiny["run"]), str(d / "a.flac")]) == 0
    capsys.readouterr()
    assert main(["predict", str(tiny["run"]), str(d), "--json"]) == 1  # every input has its JSON line
    rows = {Path(r["path"]).name: r for r in map(json.loads, capsys.readouterr().out.strip().splitlines())}
    assert set(rows) == {"a.flac", "b.flac", "broken.wav"}
    assert "error" in rows["broken.wav"] and "label" not in rows["broken.wav"]
    assert all("label" in r for name, r in rows.items() if name != "broken.wav")


def test_cli_json_csv_timeline(tiny, tmp_path, capsys):
    f = str(_file(tiny))
    assert main(["predict", str(tiny["run"]), f, "--json", "--timeline"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert len(rows) == 1 and rows[0]["path"] == f and rows[0]["label"] in rows[0]["probabilities"]
    assert rows[0]["timeline"][0]["start"] == 0.0
    assert main(["predict", str(tiny["run"]), f, "--csv"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("path,label,p,") and len(lines) == 2


def test_cli_usage_errors(tiny, capsys):
    with pytest.raises(SystemExit) as e:
        main(["predict"])
    assert e.value.code == 2
    assert main(["predict", "/no/such/run", str(_file(tiny))]) == 2
    assert "no such file" in capsys.readouterr().err


def test_cli_stdin_wav_and_raw(tiny, tmp_path, monkeypatch, capsys):
    sig = _signal(tiny)
    wav = io.BytesIO()
    sf.write(wav, np.stack([sig, sig], 1), 16000, format="WAV", subtype="PCM_16")
    r = subprocess.run([str(LISER), "predict", str(tiny["run"]), "-"], input=wav.getvalue(), capture_output=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120)
    assert r.returncode == 0, r.stderr.decode()
    path, label, _ = r.stdout.decode().strip().split("\t")
    assert path == "-" and label in tiny["manifest"].classes
    raw = (np.clip(sig, -1, 1) * 32767).astype("<i2").tobytes()  # no RIFF header: raw 16 kHz mono PCM
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(raw)))
    assert main(["predict", str(tiny["run"]), "-", "--json"]) == 1  # unknown bytes are never guessed to be PCM
    out, err = capsys.readouterr()
    assert json.loads(out)["path"] == "-" and "not recognised" in json.loads(out)["error"]
    assert "not recognised" in err and "--raw" in err and len(err.strip().splitlines()) == 1
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(raw)))
    assert main(["predict", str(tiny["run"]), "-", "--json", "--raw"]) == 0
    assert json.loads(capsys.readouterr().out)["label"] == label


def test_cli_stream(tiny, tmp_path, monkeypatch, capsys):
    sig = np.concatenate([_signal(tiny, i) for i in range(3)])[: 10 * 16000]  # 10 s
    f = tmp_path / "long.wav"
    sf.write(f, np.stack([sig, sig], 1), 16000)
    assert main(["predict", str(tiny["run"]), str(f), "--stream", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert len(rows) == 15  # at 3 s, then every 0.5 s up to 10 s
    assert rows[0]["start"] == 0.0 and rows[0]["end"] == 3.0 and rows[-1]["end"] == 10.0
    raw = (sig * 32767).astype("<i2").tobytes()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(raw)))
    assert main(["predict", str(tiny["run"]), "-", "--stream", "--hop", "1", "--raw"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 8  # 3 s .. 10 s every 1 s
    for extra in (["--window", "1.5"], ["--timeline", "--window", "1.5"]):  # 3 s only: said, not ignored
        assert main(["predict", str(tiny["run"]), str(f), "--stream", *extra]) != 0
        assert "--stream scores the last 3 s" in capsys.readouterr().err


def test_stride_setting_matches_training_evaluation(tiny, model):
    from liser.student.evaluate import file_logits
    from liser.data.features import build_features

    cache = build_features(tiny["manifest"], tiny["cfg"].work, progress=False)
    it = tiny["test"][3]
    try:
        model.stride_s = 3.0  # non-overlapping windows: the device setting
        p = model.predict_file(_file(tiny, 3))
    finally:
        model.stride_s = 0.1
    ref = file_logits(model.classifier.student, [cache.frames(it.id)], 3.0)[0]
    np.testing.assert_allclose(p.logits, ref, atol=1e-4)
    assert main(["predict", str(tiny["run"]), str(_file(tiny)), "--stride", "0"]) == 2


def test_cli_inputs_on_both_sides_of_options(tiny, capsys):
    """`liser predict MODEL --timeline FILE`: the file after the option is an input, as before it; an unknown
    option is still the usual one-line usage error."""
    f = _file(tiny, 0)
    assert main(["predict", str(tiny["run"]), "--json", str(f)]) == 0
    after = json.loads(capsys.readouterr().out)
    assert main(["predict", str(tiny["run"]), str(f), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == after
    with pytest.raises(SystemExit) as e:
        main(["predict", str(tiny["run"]), "--json", str(f), "--no-such-option"])
    assert e.value.code == 2 and "unrecognized arguments: --no-such-option" in capsys.readouterr().err
