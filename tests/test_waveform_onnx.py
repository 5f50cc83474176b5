"""Waveform-in ONNX graphs (liser.inference.waveform_onnx, `liser export --waveform`): parity with `liser predict` on real
files, short and long clips, refusals, size, the fp32 front end of int8 graphs, and the Node example (slow)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from conftest import real_root  # noqa: E402


import liser

from liser.inference import decode
from liser.inference import waveform_onnx
from liser.inference.default_model import DEFAULT_DIR, DEFAULT_ONNX  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = DEFAULT_DIR / "liser-default-waveform-int8.onnx"
SIZE_BUDGET = 300_000  # bytes: an int8 graph with its front end
# The int8 student quantises its logits (steps of ~0.023): a log-Mel cell one float16 step off `liser predict`'s
# (a few cells in a file; the two FFTs round differently) can move one logit by one step: |dp| up to ~6e-3 measured
INT8_DP = 0.02


def _real_files() -> list[Path]:
    """Seven real files: two each of RAVDESS and EmoDB, one each of CREMA-D, TESS and URDU."""
    files = sorted((real_root("ravdess") / "Actor_07").glob("*.flac"))[::23][:2]
    files += sorted((real_root("emodb") / "wav").glob("*.flac"))[::97][:2]
    files += sorted((real_root("cremad") / "AudioWAV").glob("*"))[1234:1235]
    files += sorted(real_root("tess").glob("*/*"))[777:778]
    files += sorted(real_root("urdu").glob("*/*"))[55:56]
    return files


@pytest.fixture(scope="module")
def files() -> list[Path]:
    return _real_files()


@pytest.fixture(scope="module")
def signals(files) -> list[np.ndarray]:
    return [decode.read_input(f) for f in files]


def _with_windowing(src: Path, dst: Path, mode: str) -> Path:
    """A copy of a log-Mel student .onnx whose metadata says another windowing (the same weights)."""
    m = onnx.load(str(src))
    for p in m.metadata_props:
        if p.key == "front_end":
            fe = json.loads(p.value)
            fe["windowing"] = mode
            p.value = json.dumps(fe)
    onnx.save(m, str(dst))
    return dst


@pytest.fixture(scope="module")
def graphs(tmp_path_factory) -> dict:
    """The default int8 student wrapped as it ships ("speech"), and the same weights under "pad" windowing."""
    d = tmp_path_factory.mktemp("waveform")
    pad = _with_windowing(DEFAULT_ONNX, d / "pad-student.onnx", "pad")
    out = {}
    for name, student in (("speech", DEFAULT_ONNX), ("pad", pad)):
        path = waveform_onnx.write(student, d / f"{name}.onnx")
        out[name] = (path, waveform_onnx.session(path), liser.load(student, threads=1))
    return out


def _compare(graph, model, sig: np.ndarray) -> tuple[bool, float, dict]:
    out = waveform_onnx.run(graph, sig)
    p = model.predict(sig, 16000)
    ref = np.array([p.probabilities[c] for c in model.classes])
    return p.label == model.classes[int(out["probabilities"].argmax())], float(np.abs(ref - out["probabilities"]).max()), out


@pytest.mark.parametrize("mode", ["speech", "pad"])
def test_same_label_and_probabilities_as_predict_on_real_files(graphs, signals, mode):
    _, sess, model = graphs[mode]
    for sig in signals:
        same, dp, out = _compare(sess, model, sig)
        assert same and dp < INT8_DP, (mode, dp)
        assert abs(float(out["window_weight"].sum()) - 1.0) < 1e-5
        np.testing.assert_allclose(out["probabilities"], np.exp(out["logits"]) / np.exp(out["logits"]).sum(), atol=1e-6)


@pytest.mark.parametrize("mode", ["speech", "pad"])
def test_short_and_long_clips(graphs, signals, mode):
    _, sess, model = graphs[mode]
    long = np.concatenate(signals * 6)[: 16000 * 62]  # real speech, longer than a minute
    for sig in (signals[0][:16000], signals[2][: 16000 * 2], long):
        same, dp, out = _compare(sess, model, sig)
        assert same and dp < INT8_DP, (mode, len(sig), dp)
    assert len(out["window_logits"]) > 500 and out["window_start_s"][-1] > 58.0


def test_no_speech_is_said_by_speech_s(graphs, signals):
    from liser.core.errors import LiserError

    _, sess, model = graphs["speech"]
    cut = signals[2][int(0.8 * 16000) : int(1.1 * 16000)]  # 0.3 s of a real file
    noise = np.random.default_rng(0).normal(0, 1e-3, 16000 * 4).astype(np.float32)  # steady noise: no speech
    for sig in (cut, noise):
        with pytest.raises(LiserError, match="no speech"):
            model.predict(sig, 16000)
        out = waveform_onnx.run(sess, sig)
        assert float(out["speech_s"]) < waveform_onnx.MIN_SPEECH_S
        assert np.isfinite(out["probabilities"]).all()  # still defined: the whole file, for the caller to refuse
    assert float(waveform_onnx.run(sess, signals[0])["speech_s"]) >= waveform_onnx.MIN_SPEECH_S
    assert "speech_s" not in waveform_onnx.run(graphs["pad"][1], signals[0])


def test_fp32_student_within_1e3_and_stft_op_alike(tmp_path, signals):
    """A randomly initialised fp32 student (real feature statistics): graph vs predict, both DFTs."""
    import torch

    from liser import __version__
    from liser.inference import export
    from liser.student.model import Classifier, Student

    torch.manual_seed(0)
    student = Student(6, level_norm=True)
    feats = np.concatenate([decode.features(s) for s in signals])
    student.set_normalisation(torch.from_numpy(feats.mean(0)), torch.from_numpy(feats.std(0)))
    path = tmp_path / "fp32.onnx"
    export._torch_export(Classifier(student).eval(), path, 17, dynamic_frames=True)
    ck = {"liser_version": __version__, "classes": list("abcdef"),
          "front_end": {"sample_rate": 16000, "windowing": "speech"}}
    export._set_metadata(path, export.metadata(ck))
    model = liser.load(path, threads=1)
    for dft in waveform_onnx.DFTS:
        sess = waveform_onnx.session(waveform_onnx.write(path, tmp_path / f"w-{dft}.onnx", dft))
        for sig in signals[:4]:
            same, dp, _ = _compare(sess, model, sig)
            assert same and dp <= waveform_onnx.PARITY_TOLERANCE, (dft, dp)


def test_int8_graph_small_and_its_front_end_float(graphs):
    path = graphs["speech"][0]
    assert path.stat().st_size <= SIZE_BUDGET
    m = onnx.load(str(path))
    outer = {n.op_type for n in m.graph.node}
    assert not {o for o in outer if "Quant" in o or "Integer" in o}  # quantised ops only inside the student (the Loop)
    assert {"MatMul", "Loop", "MaxPool", "TopK"} <= outer
    meta = {p.key: p.value for p in m.metadata_props}
    assert meta["format"] == waveform_onnx.FORMAT and "16 kHz" in meta["input"] and "mono" in meta["input"]
    assert m.opset_import[0].version <= 17 or all(o.version <= 17 for o in m.opset_import if o.domain == "")


def test_shipped_waveform_default(signals):
    if not SHIPPED.is_file():
        pytest.skip(f"{SHIPPED} not shipped")
    assert SHIPPED.stat().st_size <= SIZE_BUDGET
    sess, model = waveform_onnx.session(SHIPPED), liser.load(DEFAULT_ONNX, threads=1)
    for sig in signals[:3]:
        same, dp, _ = _compare(sess, model, sig)
        assert same and dp < INT8_DP
    assert waveform_onnx.CONTRACT in (DEFAULT_DIR / "MODEL_CARD.md").read_text()


def test_cli_export_waveform_wraps_an_onnx_and_refuses_a_graph(tmp_path, files, capsys):
    from liser.cli import main
    from liser.core.errors import LiserError

    out = tmp_path / "wave.onnx"
    assert main(["export", str(DEFAULT_ONNX), "--onnx", str(out), "--waveform",
                 "--check-files", str(files[0]), str(files[2])]) == 0
    said = capsys.readouterr().out
    assert "2/2 labels as `liser predict`" in said and f"wrote {out}" in said
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    again = tmp_path / "again.onnx"
    assert main(["export", str(out), "--onnx", str(again), "--waveform", "--check-files", str(files[0])]) != 0
    assert "already a waveform graph" in capsys.readouterr().err and not again.exists()
    with pytest.raises(LiserError, match="waveform-in graph"):
        liser.load(out)


# ---------------------------------------------------------------- Node (examples/node)
NODE_DIR = ROOT / "examples" / "node"


def _node_example(tmp_path_factory) -> Path:
    """examples/node with its node_modules: the checkout's own, else `npm ci` into a temporary copy."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are needed (Node 18+)")
    if (NODE_DIR / "node_modules" / "onnxruntime-node").is_dir():
        return NODE_DIR
    d = tmp_path_factory.mktemp("node") / "node"
    shutil.copytree(NODE_DIR, d, ignore=shutil.ignore_patterns("node_modules"))
    r = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=d, capture_output=True, text=True, timeout=600)
    if r.returncode:
        pytest.skip(f"npm ci failed (no registry?): {r.stderr.strip()[-300:]}")
    return d


@pytest.mark.slow
def test_node_example_agrees_with_predict(tmp_path_factory, tmp_path):
    import soundfile as sf

    example = _node_example(tmp_path_factory)
    model = liser.load(DEFAULT_ONNX, threads=1)
    graph = SHIPPED if SHIPPED.is_file() else waveform_onnx.write(DEFAULT_ONNX, tmp_path / "wave.onnx")
    files = _real_files() + sorted((real_root("ravdess") / "Actor_12").glob("*.flac"))[::20][:3]
    for i, f in enumerate(files):
        sig = decode.read_input(f)  # 16 kHz mono, as the example's input contract says
        wav = tmp_path / f"{i}.wav"
        sf.write(wav, sig, 16000, subtype="FLOAT" if i % 2 else "PCM_16")
        r = subprocess.run(["node", str(example / "predict.js"), str(graph), str(wav)], capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        got = json.loads(r.stdout)
        p = model.predict_file(wav)
        assert got["label"] == p.label, (f, got, p.probabilities)
        assert max(abs(got["probabilities"][c] - p.probabilities[c]) for c in model.classes) < INT8_DP


def test_timeline_window_graph_is_the_servers_window(signals):
    """build_window on the segments liser.inference.serve.LiveTimeline cuts gives its windows: the same no-speech windows,
    labels and probabilities within the int8 bound (bench/bench_device_timeline.py: 328/328 labels, |dp| <= 1.5e-3)."""
    from liser.data import audio
    from liser.inference import serve

    model = liser.load(DEFAULT_ONNX, threads=1)
    import onnxruntime

    sess = onnxruntime.InferenceSession(waveform_onnx.window_graph_bytes(DEFAULT_ONNX), providers=["CPUExecutionProvider"])
    got = []

    class Spy(serve.LiveTimeline):
        def _features(self, first, stop):
            a = self._segment_start(first)
            self.segment = (a, self.buf[a - self.buf_start : min(self.total, (stop - 1) * audio.HOP + serve.CONTEXT)
                                        - self.buf_start].copy())
            return super()._features(first, stop)

        def _window(self, f, c, frames):  # c: the window's 3 s context start, f itself for 3 s windows
            p = super()._window(f, c, frames)
            a, seg = self.segment
            got.append((p, waveform_onnx.run_window(sess, seg, f - a // audio.HOP)))
            return p

    x = np.concatenate([signals[0], np.zeros(56_000, np.float32), signals[2], signals[4]])  # 3.5 s of silence inside
    t = Spy(model, audio.SAMPLE_RATE, 0.5)
    for a in range(0, len(x), 1600):
        t.push(x[a : a + 1600])
    t.finish()
    assert len(got) >= 10 and any(p.no_speech for p, _ in got)
    for p, out in got:
        assert p.no_speech == (float(out["speech_s"]) < waveform_onnx.MIN_SPEECH_S)
        if not p.no_speech:
            assert p.label == model.classes[int(np.argmax(out["logits"]))]
            assert np.abs(np.array([p.probabilities[c] for c in model.classes]) - out["probabilities"]).max() < INT8_DP
