"""`liser export`: fp32 parity, metadata, loading the ONNX back, int8 size, atomic failure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import liser  # noqa: E402
from liser import export  # noqa: E402
from liser.cli import main  # noqa: E402
from liser.errors import LiserError  # noqa: E402

from test_predict import RAVDESS, build_run  # noqa: E402  (tests/ is on sys.path)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    if not RAVDESS.is_dir():
        pytest.skip(f"{RAVDESS} not found")
    torch.set_num_threads(1)
    return build_run(tmp_path_factory.getbasetemp() / "liser-tiny-run")  # shared with test_predict


@pytest.fixture(scope="module")
def exported(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "student.onnx"
    report = export.export_onnx(tiny["run"], out, int8=True, threads=1, say=lambda m: None)
    return out, report


def test_fp32_parity_and_metadata(tiny, exported):
    out, report = exported
    assert out.is_file()
    assert report["max_abs_diff"] < 1e-4 and report["agreement"] == 1.0
    assert report["n_files"] == len(tiny["test"])
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert meta["format"] == "liser-student-onnx" and meta["liser_version"] == liser.__version__
    assert '"neutral"' in meta["classes"] and "sample_rate" in meta["front_end"]
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp files left


def test_onnx_loads_and_predicts_like_torch(tiny, exported):
    out, _ = exported
    f = tiny["manifest"].abspath(tiny["test"][3])
    pt = liser.load(tiny["run"]).predict_file(f)
    ox = liser.load(out)
    assert ox.info["kind"] == "onnx" and ox.classes == tiny["manifest"].classes
    p = ox.predict_file(f)
    assert p.label == pt.label
    np.testing.assert_allclose(p.logits, pt.logits, atol=1e-4)
    assert len(ox.timeline(np.random.default_rng(0).normal(0, 0.1, 16000 * 5).astype(np.float32), 16000)) > 1


def test_int8_small_and_usable(tiny, exported):
    out, report = exported
    q = out.with_name("student.int8.onnx")
    assert q.is_file() and q.stat().st_size < 200_000
    assert report["int8_method"] in ("dynamic", "static-qdq")
    assert report["int8_uar"] is not None and report["int8_uar_delta"] is not None
    m = liser.load(q)
    assert m.info["quantization"].startswith("int8")
    assert m.predict_file(tiny["manifest"].abspath(tiny["test"][0])).label in m.classes


def test_failed_export_leaves_no_file(tiny, tmp_path, monkeypatch):
    files = [str(tiny["manifest"].abspath(it)) for it in tiny["test"][:2]]
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(LiserError, match="does not exist"):
        export.export_onnx(tiny["run"], blocker / "m.onnx", check_files=files, say=lambda m: None)

    out = tmp_path / "m.onnx"
    monkeypatch.setattr(export, "FP32_TOLERANCE", -1.0)  # any difference now fails the parity check
    with pytest.raises(LiserError, match="parity check failed"):
        export.export_onnx(tiny["run"], out, int8=True, check_files=files, say=lambda m: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]

    monkeypatch.setattr(export, "FP32_TOLERANCE", 1e-3)

    def broken_save(*a, **k):  # a crash while writing (disk full, read-only, ...)
        Path(a[1]).write_bytes(b"partial")
        raise OSError("No space left on device")

    monkeypatch.setattr(onnx, "save", broken_save)
    with pytest.raises(OSError):
        export.export_onnx(tiny["run"], out, check_files=files, say=lambda m: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_cli_export_with_check_files(tiny, tmp_path, capsys):
    f = str(tiny["manifest"].abspath(tiny["test"][0]))
    out = tmp_path / "cli.onnx"
    assert main(["export", str(tiny["run"] / "best.pt"), "--onnx", str(out), "--check-files", f]) == 0
    text = capsys.readouterr().out
    assert "max |logit torch - onnxruntime|" in text and "label agreement 100.0%" in text and out.is_file()
    assert main(["export", str(tiny["run"]), "--onnx", str(tmp_path / "x.txt")]) == 2
