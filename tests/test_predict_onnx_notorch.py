"""Inference without torch: the numpy front end equals the torch one, and an .onnx model never imports torch.

`liser.data.frontend.features_numpy` (what `liser.load` and `liser predict`
use) against `liser.data.frontend.features` (torch: the features cache that
training and `liser evaluate` read) on real files of several corpora and
sample rates; the long-file block path against the whole-signal one; a
fresh process that loads an exported student and predicts through the
library and through `liser predict` with `torch` absent from sys.modules
at the end; the ONNX export and its run directory giving the same labels.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from liser.data import audio
from liser.data import frontend

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _real_files() -> list[Path]:
    """RAVDESS files of 8 actors (16 kHz FLAC) and, where present, EmoDB, TESS and CREMA-D files (other recordings, levels, codecs)."""
    rav = DATA / "ravdess"
    if not rav.is_dir():
        pytest.skip(f"{rav} not found")
    files = [sorted((rav / f"Actor_{a:02d}").glob("*.flac"))[7 * a % 60] for a in range(1, 24, 3)]
    for corpus, pattern in (("emodb", "*.flac"), ("tess", "*.opus"), ("cremad", "*.opus")):
        found = sorted((DATA / corpus).rglob(pattern))[:400:100] if (DATA / corpus).is_dir() else []
        files += found
    return files


def _within_float16_rounding(ref: np.ndarray, got: np.ndarray) -> np.ndarray:
    """Cells where two float16 feature arrays differ by more than one float16 step of the reference (or 1e-3 dB)."""
    ref32, got32 = ref.astype(np.float32), got.astype(np.float32)
    step = np.spacing(np.abs(ref).astype(np.float16)).astype(np.float32)
    return np.abs(ref32 - got32) > np.maximum(step, 1e-3)


def test_numpy_front_end_equals_torch_on_real_files():
    pytest.importorskip("torch")
    files = _real_files()
    cells = differing = 0
    for f in files:
        x = audio.load_audio(f)
        ref, got = frontend.features(x), frontend.features_numpy(x)
        assert got.dtype == np.float16 and got.shape == ref.shape, f
        bad = _within_float16_rounding(ref, got)
        assert not bad.any(), f"{f}: {bad.sum()} cells beyond one float16 step, e.g. {ref[bad][:3]} vs {got[bad][:3]}"
        cells += ref.size
        differing += int((ref != got).sum())
    # float32 FFTs of two libraries round differently: a cell on a float16 rounding boundary may land on either side
    assert differing <= 1e-3 * cells, (differing, cells)


def test_numpy_front_end_edge_cases_match_torch():
    pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    for x in (np.zeros(16000, np.float32),  # shorter than 3 s: zero-padded; silence: the -100 dB floor
              (0.3 + 0.01 * rng.standard_normal(3 * 16000 + 511)).astype(np.float32),  # DC, a hop short of a frame
              (0.5 * np.sin(2 * np.pi * 440 * np.arange(5 * 16000) / 16000)).astype(np.float32)):
        ref, got = frontend.features(x), frontend.features_numpy(x)
        assert got.shape == ref.shape == (audio.n_frames(len(x)), audio.N_MELS)
        bad = _within_float16_rounding(ref, got)
        # a pure tone leaves bands 130 dB below its peak: there torch's float32 FFT round-off (numpy's is
        # float64) moves the value by a few tenths of a dB; everything within 100 dB of its frame's peak agrees
        deep = ref.astype(np.float32) < ref.astype(np.float32).max(axis=1, keepdims=True) - 100.0
        assert not (bad & ~deep).any()
        assert np.abs(ref.astype(np.float32) - got.astype(np.float32))[deep].max(initial=0.0) < 1.0
    with pytest.raises(ValueError, match="1-D"):
        frontend.log_mel_numpy(np.zeros((2, 48000), np.float32))


def test_block_path_equals_the_whole_signal(tmp_path):
    files = _real_files()[:8]
    x = np.concatenate([audio.load_audio(f) for f in files]) + np.float32(0.01)  # about 30 s, with a DC offset
    whole = frontend.features_numpy(x)
    mean = float(x.mean(dtype=np.float64))
    for block in (1500, 7777, 16000 * 30):
        got = frontend.features_from_blocks((x[a : a + block] for a in range(0, len(x), block)), mean, len(x))
        assert got.shape == whole.shape
        assert not _within_float16_rounding(whole, got).any(), block
    with pytest.raises(ValueError, match="expected"):
        frontend.features_from_blocks(iter([x[:60000]]), mean, len(x))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The session's tiny trained run (tests/test_predict.py) and its fp32 ONNX export."""
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    from liser.inference.export import export_onnx
    from test_predict import RAVDESS, build_run  # tests/ is on sys.path

    if not RAVDESS.is_dir():
        pytest.skip(f"{RAVDESS} not found")
    tiny = build_run(tmp_path_factory.getbasetemp() / "liser-tiny-run")  # shared with test_predict / test_export
    out = tmp_path_factory.mktemp("notorch") / "student.onnx"
    files = [str(tiny["manifest"].abspath(it)) for it in tiny["test"][:6]]
    export_onnx(tiny["run"], out, check_files=files, threads=1, say=lambda m: None)
    return tiny, out


CHILD = r"""
import json, sys
import numpy as np
onnx, wav, flac = sys.argv[1:4]
import liser
import liser.inference.predict
from liser.inference import decode as lp
m = liser.load(onnx, threads=1)
out = {"file": m.predict_file(wav).label, "timeline": len(m.timeline_file(wav, 0.5))}
x = np.random.default_rng(0).normal(0, 0.1, 16000 * 4).astype(np.float32)
out["array"] = m.predict((x * 32767).astype(np.int16), 16000).label
lp.LONG_FILE_S, lp.READ_BLOCK_S = 5.0, 2.0  # a file "longer than 5 min": the block path, features_from_blocks
out["long"] = m.predict_file(flac).label
from liser.cli import main
out["cli"] = main(["predict", onnx, wav, flac, "--json", "--timeline"])
out["modules"] = sorted({k.split(".")[0] for k in sys.modules} & {"torch", "torchaudio", "scipy", "transformers"})
print("RESULT " + json.dumps(out))
"""


def test_onnx_predict_never_imports_torch(exported, tmp_path):
    tiny, onnx_path = exported
    sig = np.concatenate([sf.read(tiny["manifest"].abspath(it), dtype="float32")[0] for it in tiny["test"][:4]])
    wav, flac = tmp_path / "one.wav", tmp_path / "long.flac"
    sf.write(wav, sig[: 4 * 16000], 16000, subtype="PCM_16")
    sf.write(flac, np.stack([sig, 0.5 * sig], 1), 16000)  # stereo: the blocks' down-mix
    r = subprocess.run([sys.executable, "-c", CHILD, str(onnx_path), str(wav), str(flac)], capture_output=True,
                       text=True, timeout=300)
    line = [x for x in r.stdout.splitlines() if x.startswith("RESULT ")]
    assert r.returncode == 0 and line, r.stderr[-2000:]
    out = json.loads(line[-1][len("RESULT "):])
    assert out["cli"] == 0 and out["timeline"] >= 2
    assert set(out) >= {"file", "array", "long"}
    # torch is 2 s and 218 MB of a one-file run; scipy (0.2 s of CPU) is not needed for 16 kHz mono/stereo files
    assert out["modules"] == [], f"an ONNX prediction imported {out['modules']}"
    rows = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
    assert {row["path"] for row in rows} == {str(wav), str(flac)} and all(row["timeline"] for row in rows)


def test_onnx_and_run_dir_give_the_same_labels(exported):
    import liser

    tiny, onnx_path = exported
    pt, ox = liser.load(tiny["run"], threads=1), liser.load(onnx_path, threads=1)
    assert (pt.info["kind"], ox.info["kind"]) == ("torch", "onnx")
    files = [tiny["manifest"].abspath(it) for it in tiny["test"][::2]]
    for f in files:
        a, b = pt.predict_file(f), ox.predict_file(f)
        assert a.label == b.label, f
        np.testing.assert_allclose(a.logits, b.logits, atol=1e-4)
    assert len(files) >= 10


def test_cli_labels_equal_for_onnx_and_run_dir(exported, capsys):
    from liser.cli import main

    tiny, onnx_path = exported
    files = [str(tiny["manifest"].abspath(it)) for it in tiny["test"][:12]]
    labels = {}
    for model in (str(tiny["run"]), str(onnx_path)):
        assert main(["predict", model, *files, "--json", "--threads", "1"]) == 0
        rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
        labels[model] = [(r["path"], r["label"]) for r in rows]
    assert len(labels[str(onnx_path)]) == len(files)
    assert labels[str(tiny["run"])] == labels[str(onnx_path)]
