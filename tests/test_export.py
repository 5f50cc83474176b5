"""`liser export`: fp32 parity, metadata, loading the ONNX back, int8 size and choice, atomic failure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import liser  # noqa: E402
from liser.inference import export  # noqa: E402
from liser.cli import main  # noqa: E402
from liser.core.errors import LiserError  # noqa: E402

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
    lines = []
    report = export.export_onnx(tiny["run"], out, int8=True, threads=1, say=lines.append)
    return out, report, lines


def test_fp32_parity_and_metadata(tiny, exported):
    out, report, _ = exported
    assert out.is_file()
    assert report["max_abs_diff"] < 1e-4 and report["agreement"] == 1.0
    assert report["n_files"] == len(tiny["test"])
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert meta["format"] == "liser-student-onnx" and meta["liser_version"] == liser.__version__
    assert '"neutral"' in meta["classes"] and "sample_rate" in meta["front_end"]
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp files left


def test_onnx_loads_and_predicts_like_torch(tiny, exported):
    out, _, _ = exported
    f = tiny["manifest"].abspath(tiny["test"][3])
    pt = liser.load(tiny["run"]).predict_file(f)
    ox = liser.load(out)
    assert ox.info["kind"] == "onnx" and ox.classes == tiny["manifest"].classes
    p = ox.predict_file(f)
    assert p.label == pt.label
    np.testing.assert_allclose(p.logits, pt.logits, atol=1e-4)
    assert len(ox.timeline(np.random.default_rng(0).normal(0, 0.1, 16000 * 5).astype(np.float32), 16000)) > 1


def test_int8_small_and_usable(tiny, exported):
    out, report, _ = exported
    q = out.with_name("student.int8.onnx")
    assert q.is_file() and q.stat().st_size < 200_000
    assert report["int8_method"] in ("dynamic", "static-qdq")
    assert report["int8_uar"] is not None and report["int8_uar_delta"] is not None
    m = liser.load(q)
    assert m.info["quantization"].startswith("int8")
    assert m.predict_file(tiny["manifest"].abspath(tiny["test"][0])).label in m.classes


def test_int8_report_carries_latency_and_why(exported):
    _, report, lines = exported
    cands = report["int8_candidates"]
    assert {c["method"] for c in cands} == {"dynamic", "static-qdq"}
    assert all(c["ms_per_window"] > 0 for c in cands) and report["fp32_ms_per_window"] > 0
    assert report["timing"]["threads"] == 1 and report["timing"]["windows"] > 0
    kept = next(c for c in cands if c["method"] == report["int8_method"])
    assert report["int8_ms_per_window"] == kept["ms_per_window"]
    # the kept model is the one the rule picks from the measured figures, and the printed line says why
    best, why = export.choose_int8(cands, report["fp32_uar"])
    assert best["method"] == report["int8_method"] and report["int8_chosen_because"] == why
    wrote = [m for m in lines if m.startswith("wrote ") and "int8" in m]
    assert len(wrote) == 1 and f"chosen: {why}" in wrote[0] and "ms/window" in wrote[0]
    assert sum("ms/window on 1 thread" in m for m in lines) == 2  # one line per candidate


def _cand(method, uar, ms, agreement=0.99, size=120_000):
    return {"method": method, "uar": uar, "ms_per_window": ms, "agreement": agreement, "bytes": size}


def test_choose_int8_within_tolerance_faster_wins_only_by_the_margin():
    fp32 = 0.500
    tol, margin = export.INT8_UAR_TOLERANCE, export.SPEED_MARGIN
    dyn = _cand("dynamic", fp32 + 0.004, 8.4)
    qdq = _cand("static-qdq", fp32 - tol / 2, 8.4 / (margin + 0.5))  # lower UAR, but clearly faster
    best, why = export.choose_int8([dyn, qdq], fp32)
    assert best is qdq and "faster than dynamic" in why
    # within the margin, timing noise must not decide: UAR does, whichever of the two timed faster
    for ms in (8.4 / (margin - 0.2), 8.4 * (margin - 0.2)):
        best, why = export.choose_int8([dyn, dict(qdq, ms_per_window=ms)], fp32)
        assert best is dyn and f"within {margin}x" in why
    # equal UAR within the margin: agreement, then size
    a, b = _cand("dynamic", fp32, 1.0, 0.98, 110_000), _cand("static-qdq", fp32, 1.2, 0.99, 120_000)
    assert export.choose_int8([a, b], fp32)[0] is b
    assert export.choose_int8([a, dict(b, agreement=0.98)], fp32)[0] is a


def test_choose_int8_out_of_tolerance_uar_wins():
    fp32 = 0.500
    tol = export.INT8_UAR_TOLERANCE
    slow_good = _cand("dynamic", fp32 - tol / 2, 8.4)
    fast_bad = _cand("static-qdq", fp32 - 3 * tol, 0.8)
    best, why = export.choose_int8([fast_bad, slow_good], fp32)
    assert best is slow_good and "static-qdq: not" in why
    # none within the tolerance: the best UAR, however slow
    worse = dict(slow_good, uar=fp32 - 2 * tol)
    best, why = export.choose_int8([fast_bad, worse], fp32)
    assert best is worse and "none within" in why
    # over the size budget: left out while another fits
    big = _cand("dynamic", fp32, 0.5, size=export.INT8_BUDGET + 1)
    assert export.choose_int8([big, slow_good], fp32)[0] is slow_good
    # without labels, agreement with fp32 stands in for UAR
    a, b = _cand("dynamic", None, 8.4, 0.995), _cand("static-qdq", None, 0.8, 0.95)
    assert export.choose_int8([a, b], None)[0] is a
    assert export.choose_int8([a, dict(b, agreement=0.992)], None)[0]["method"] == "static-qdq"
    with pytest.raises(ValueError):
        export.choose_int8([], fp32)


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
