"""`liser export`: a trained student as ONNX (fp32, optionally int8) with a parity check.

The graph is the student's inference path, `liser.student.model.Classifier`:
log-Mel windows `logmel` [B, 64, 94] (dB, float32) -> `logits` [B, K] of
`g_sup`, with a dynamic batch axis. The per-band standardisation buffers are
inside the graph.

The log-Mel front end is NOT in the graph, on purpose: its 64 x 1025 Mel
matrix alone is 262 KB in fp32 (more than the whole int8 student's < 200 KB
budget), and ONNX STFT support differs across runtimes. It stays the
documented separate step, `liser.data.audio.log_mel` (STFT with a 2048-sample Hann
window, hop 512, centred with reflect padding; power through the Slaney Mel
filterbank `liser.data.audio.mel_filters()`; 10*log10 with a 1e-10 floor), then
3 s windows of 94 frames every 0.1 s (`liser.data.audio.window_starts`), mean of
the logits over the windows. `liser.load("model.onnx")` does all of this
around an onnxruntime session, with the numpy implementation of the same
front end (`liser.data.frontend.features_numpy`), so it never imports torch.

The file's metadata_props hold `format` (liser-student-onnx), `classes` and
`video_classes` (JSON lists), `front_end` (JSON), `liser_version`,
`input_frames`, `eval_stride_s`, `quantization` and the source checkpoint's
epoch and validation UAR.

Parity: the export is checked on real files (the run's validation fold, rebuilt
from the checkpoint's config, or `--check-files`): max abs logit difference
between PyTorch and onnxruntime over every window, and file-label agreement.
An fp32 export with a difference above 1e-3 or any disagreeing label fails
and leaves no file (everything is written under a temporary name and renamed
on success).

`--waveform` wraps each exported model (fp32 and int8) in one graph from
16 kHz samples to the file's probabilities, the front end and the windowing
inside (liser.inference.waveform_onnx, docs/onnx.md), checked against `liser predict`
on real files; RUN may then also be an exported log-Mel .onnx (the packaged
default model), which is wrapped as it is.

`--int8` tries two onnxruntime quantisations: dynamic (int8 weights,
activations quantised on the fly; Conv, Gemm, LSTM) and static QDQ
(convolutions and the head with activation ranges calibrated on real training
windows) plus dynamic int8 for the LSTM, which QDQ leaves in fp32. Each is
scored on the check data (validation UAR, label agreement with fp32, size) and
timed: median CPU ms per window on 1 thread (`TIMING_*`). Which one is kept
(`choose_int8`): those under the size budget; of them, those whose validation UAR
is within `INT8_UAR_TOLERANCE` of fp32's (none: the best UAR); of those, the
fastest, where "faster" needs a clear `SPEED_MARGIN` (dynamic int8
re-quantises the activations on every call: its convolutions ran ~5x slower
per window than static QDQ's or fp32's on an x86 CPU); a tie within the
margin goes to higher UAR, then agreement, then size. The report and the
printed line say each candidate's figures and why the kept one was chosen.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import warnings
from pathlib import Path

import numpy as np

from liser.core.atomic import commit
from liser.data import audio
from liser.core.errors import LiserError

FP32_TOLERANCE = 1e-3  # max abs logit difference torch vs onnxruntime for an fp32 export
INT8_BUDGET = 200_000  # bytes: the int8 model's size target
INT8_UAR_TOLERANCE = 0.01  # validation UAR an int8 model may lose against fp32 and still count as good (1 point)
SPEED_MARGIN = 1.5  # one candidate beats another on speed only when this many times faster (see choose_int8)
TIMING_WINDOWS = 64  # check windows each model is timed on (the first files' windows)
TIMING_BATCH = 8  # windows per onnxruntime call while timing
TIMING_REPEATS = 5  # timed passes over the windows after one warm-up pass; the median is kept
INPUT, OUTPUT = "logmel", "logits"
CALIBRATION_WINDOWS = 200  # real training windows for static quantisation


def _say(msg: str) -> None:
    print(msg, flush=True)


# ---------------------------------------------------------------- model and graph
def _checkpoint_path(run: str | Path) -> Path:
    run = Path(run)
    if run.is_dir():
        if not (run / "best.pt").is_file():
            raise LiserError(f"{run}: no best.pt (not a finished run directory)")
        return run / "best.pt"
    if not run.is_file():
        raise LiserError(f"{run}: no such run directory or checkpoint")
    return run


def metadata(ck: dict, quantization: str = "none") -> dict[str, str]:
    """The metadata_props an exported student carries (strings only)."""
    speech = (ck.get("front_end") or {}).get("windowing") == "speech"
    frames = "frames: 16-94, the speech span's (liser.data.windowing)" if speech else str(audio.CLIP_FRAMES)
    return {
        "format": "liser-student-onnx",
        "liser_version": str(ck["liser_version"]),
        "classes": json.dumps(list(ck["classes"])),
        "video_classes": json.dumps(list(ck.get("video_classes") or [])),
        "front_end": json.dumps(ck.get("front_end") or {}),
        "input": f"{INPUT} [batch, {audio.N_MELS}, {frames}] log-Mel dB (liser.data.audio.log_mel)",
        "output": f"{OUTPUT} [batch, {len(ck['classes'])}] g_sup logits; "
                  + ("speech-weighted mean over windows, then softmax" if speech else "mean over windows, then softmax"),
        "input_frames": "dynamic" if speech else str(audio.CLIP_FRAMES),
        "eval_stride_s": str(audio.EVAL_STRIDE_S),
        "quantization": quantization,
        "epoch": str(ck.get("epoch")),
        "val_uar": str((ck.get("val") or {}).get("uar")),
    }


def _set_metadata(path: Path, meta: dict[str, str]) -> None:
    import onnx

    m = onnx.load(str(path))
    del m.metadata_props[:]
    for k, v in meta.items():
        p = m.metadata_props.add()
        p.key, p.value = k, v
    onnx.save(m, str(path))


def _place_error(e: BaseException) -> OSError | None:
    """The OSError of the place (read-only, full, ...; liser.core.outputs.PLACE_ERRNOS) behind `e`, if any."""
    from liser.core.outputs import PLACE_ERRNOS

    while e is not None:
        if isinstance(e, OSError) and e.errno in PLACE_ERRNOS:
            return e
        e = e.__cause__ or e.__context__
    return None


def _torch_export(classifier, path: Path, opset: int, dynamic_frames: bool = False) -> None:
    """Classifier -> ONNX with a dynamic batch axis, and a dynamic frame axis for the "speech" windowing
    (its windows are as long as the speech span, 0.5-3 s) (TorchScript exporter; dynamo as the fallback)."""
    import torch

    x = torch.zeros(2, audio.N_MELS, audio.CLIP_FRAMES)
    axes = {0: "batch", 2: "frames"} if dynamic_frames else {0: "batch"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(classifier, (x,), str(path), input_names=[INPUT], output_names=[OUTPUT],
                              opset_version=opset, dynamic_axes={INPUT: axes, OUTPUT: {0: "batch"}},
                              dynamo=False)
        except Exception as first:  # the legacy exporter may be gone in a later torch
            place = _place_error(first)
            if place is not None:  # the disk, not the exporter: no fallback would write it either
                raise place from None
            try:
                batch = torch.export.Dim("batch", min=1, max=65536)
                torch.onnx.export(classifier, (x,), str(path), input_names=[INPUT], output_names=[OUTPUT],
                                  opset_version=opset, dynamic_shapes=({0: batch},), dynamo=True, external_data=False)
            except Exception as e:
                raise LiserError(f"ONNX export failed ({str(first).splitlines()[0][:120]}; dynamo: {str(e).splitlines()[0][:120]})") from None


def _session(path: Path, threads: int = 1):
    from liser.core.onnxrt import session

    return session(path, threads)


# ---------------------------------------------------------------- real data
class CheckData:
    """Real files for the checks: per-file windows [W, 64, 94], true labels (or None), calibration windows."""

    def __init__(self, names, wins, labels, calib, source: str, classes, stride_s: float, weights=None, paths=None):
        self.names, self.wins, self.labels, self.calib = names, wins, labels, calib
        self.paths = list(paths or [])  # the files' paths (strings), for checks that read them again
        self.source, self.classes, self.stride_s = source, classes, stride_s
        self.weights = weights  # per file, its windows' weights [W] (liser.data.windowing); None = equal


def _fold_data(ck: dict, max_calib: int = CALIBRATION_WINDOWS) -> CheckData | None:
    """The run's validation fold (and training windows for calibration), from the checkpoint's config.

    Validation, not test: the int8 method is chosen on these files
    (`choose_int8`), and a choice is never made on a test set.
    """
    from liser.core.config import Config
    from liser.data.features import build_features
    from liser.data.frontend import windows as windows_of
    from liser.data.windowing import gather, plan
    from liser.data.workspace import fold_items, labeled_manifest

    if not ck.get("config"):
        return None
    cfg = Config.from_dict(ck["config"], source="checkpoint config")
    manifest = labeled_manifest(cfg)
    train_items, check_items, _, classes = fold_items(cfg, manifest)
    if list(classes) != list(ck["classes"]):
        raise LiserError(f"the rebuilt fold's classes {classes} differ from the checkpoint's {ck['classes']}")
    cache = build_features(manifest, cfg.work, threads=cfg.threads or 2, progress=sys.stderr.isatty())
    stride = cfg.test_stride_s
    plans = [plan(cache.frames(it.id), stride, cfg.windowing, strict=False) for it in check_items]
    wins = [gather(cache.frames(it.id), p) for it, p in zip(check_items, plans)]
    labels = [classes.index(it.label) for it in check_items]
    rng = np.random.default_rng(0)
    calib = []
    for i in rng.permutation(len(train_items))[:max_calib]:
        w = windows_of(cache.frames(train_items[i].id), 0.5)
        calib.append(w[rng.integers(len(w))])
    return CheckData([it.id for it in check_items], wins, labels, np.stack(calib) if calib else None,
                     f"validation fold {cfg.fold} of {cfg.name} ({len(check_items)} files)", classes, stride,
                     [p.weights for p in plans] if cfg.windowing != "pad" else None,
                     [str(manifest.abspath(it)) for it in check_items])


def _files_data(files: list[str], classes) -> CheckData:
    """Check data from user-given files or folders (no labels; they also calibrate int8)."""
    from liser.inference.predict import expand_inputs
    from liser.inference.decode import features, read_input, windows

    paths, problems = expand_inputs(files)
    if problems:
        raise LiserError(problems[0])
    wins = [windows(features(read_input(p)), audio.EVAL_STRIDE_S)[0] for p in paths]
    calib = np.concatenate([w[:: max(1, len(w) // 4)] for w in wins])[:CALIBRATION_WINDOWS]
    return CheckData(paths, wins, None, calib, f"{len(paths)} given files", classes, audio.EVAL_STRIDE_S,
                     paths=[str(p) for p in paths])


def _logits(fn, wins: list[np.ndarray]) -> list[np.ndarray]:
    return [np.concatenate([fn(w[a : a + 512]) for a in range(0, len(w), 512)]) for w in wins]


def _uar(file_logits: list[np.ndarray], labels, classes, weights=None) -> float | None:
    """UAR of per-file window logits, each file's windows averaged (with `weights` [W] per file when given)."""
    from liser.core.metrics import metrics

    if labels is None:
        return None
    if weights is None:
        return metrics(labels, [int(z.mean(0).argmax()) for z in file_logits], classes)["uar"]
    return metrics(labels, [int((z * w[:, None]).sum(0).argmax()) for z, w in zip(file_logits, weights)], classes)["uar"]


# ---------------------------------------------------------------- int8
def _quantize(fp32: Path, out: Path, method: str, calib: np.ndarray | None) -> None:
    """One int8 candidate: 'dynamic' or 'static-qdq' (QDQ for Conv/Gemm + dynamic LSTM)."""
    import logging

    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = out.with_name(out.name + ".pre.onnx")
    mid = out.with_name(out.name + ".qdq.onnx")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantiser logs every tensor it skips
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
            if method == "dynamic":
                quantize_dynamic(str(pre), str(out), weight_type=QuantType.QInt8, per_channel=True,
                                 op_types_to_quantize=["Conv", "MatMul", "Gemm", "LSTM"])
            elif method == "static-qdq":
                if calib is None or not len(calib):
                    raise LiserError("static quantisation needs real windows to calibrate")

                class Reader(CalibrationDataReader):
                    def __init__(self):
                        self.i = 0

                    def get_next(self):
                        if self.i >= len(calib):
                            return None
                        self.i += 1
                        return {INPUT: np.ascontiguousarray(calib[self.i - 1 : self.i], dtype=np.float32)}

                quantize_static(str(pre), str(mid), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                                op_types_to_quantize=["Conv", "Gemm", "MatMul"])
                quantize_dynamic(str(mid), str(out), weight_type=QuantType.QInt8, op_types_to_quantize=["LSTM"])
            else:
                raise ValueError(method)
    finally:
        root.setLevel(level)
        for p in (pre, mid):
            p.unlink(missing_ok=True)


# ---------------------------------------------------------------- the export
def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def export_onnx(run: str | Path, out: str | Path, int8: str | Path | bool | None = None, opset: int = 17,
                check_files: list[str] | None = None, threads: int = 1, say=_say, waveform: bool = False,
                dft: str = "matmul") -> dict:
    """Export a run's student to `out` (fp32) and, with `int8`, an int8 model; returns a report dict.

    `int8` is a path, or True for `<out stem>.int8.onnx`. Raises LiserError
    (and leaves no output file) when the fp32 parity check fails. Torch runs
    on `threads` threads during the call; the process's setting is restored after it.
    `waveform`: both models are waveform-in graphs instead (`export_waveform`; `dft` as liser.inference.waveform_onnx.build's).
    """
    if waveform:
        return export_waveform(run, out, int8, opset, check_files, threads, say, dft)
    from liser.core.outputs import writing
    from liser.student.checkpoint import read_checkpoint, student_from_checkpoint
    from liser.student.model import Classifier
    from liser.core.util import torch_threads

    ck_path = _checkpoint_path(run)
    ck = read_checkpoint(ck_path)
    classifier = Classifier(student_from_checkpoint(ck, str(ck_path))).eval()
    out = Path(out)
    int8_path = _output_paths(out, int8)
    data = _check_data(ck, ck_path, check_files, say)
    report = {"checkpoint": str(ck_path), "onnx": str(out), "opset": opset, "classes": list(ck["classes"]),
              "check_data": data.source, "check_paths": data.paths}
    tmp = _tmp_name(out)
    tmp_int8 = _tmp_name(int8_path) if int8_path else None
    try:
        with writing(out):  # a read-only or full place: "<out>: cannot write: <reason>", one line
            with torch_threads(max(1, threads)):
                ref_lab, uar32 = _fp32(classifier, tmp, out, ck, data, opset, threads, say, report)
        if int8_path:
            with writing(int8_path):
                report.update(_int8(tmp, tmp_int8, ck, data, ref_lab, uar32, threads, say))
        with writing(out):
            commit(tmp, out)
        if int8_path:
            with writing(int8_path):
                commit(tmp_int8, int8_path)
            report["int8"] = str(int8_path)
    finally:  # our temporaries only; on a read-only place even a missing one's unlink fails: that must not mask why
        for t in [tmp, *([tmp_int8, *tmp_int8.parent.glob(f"{tmp_int8.name}.cand-*")] if tmp_int8 else [])]:
            with contextlib.suppress(OSError):
                t.unlink(missing_ok=True)
    say(f"wrote {out} ({report['fp32_bytes'] / 1000:.0f} KB, fp32" +
        (f", validation UAR {uar32:.3f})" if uar32 is not None else ")"))
    if int8_path:
        say(f"wrote {int8_path} ({report['int8_bytes'] / 1000:.0f} KB, int8 {report['int8_method']}, "
            f"{report['int8_ms_per_window']:.2f} ms/window" +
            (f", validation UAR {report['int8_uar']:.3f} vs fp32 {uar32:.3f}, delta {report['int8_uar_delta']:+.3f}"
             if uar32 is not None else f", label agreement with fp32 {report['int8_agreement']:.1%}") +
            f"; chosen: {report['int8_chosen_because']})")
    return report


def _output_paths(out: Path, int8) -> Path | None:
    """Check the fp32 path and return the int8 one (None without --int8); LiserError for a bad path."""
    if out.suffix.lower() != ".onnx":
        raise LiserError(f"{out}: the output must end in .onnx")
    if not out.parent.is_dir():
        raise LiserError(f"{out}: the folder {out.parent} does not exist")
    if not int8:
        return None
    int8_path = Path(int8) if not isinstance(int8, bool) else out.with_name(out.stem + ".int8.onnx")
    if not int8_path.parent.is_dir():
        raise LiserError(f"{int8_path}: the folder {int8_path.parent} does not exist")
    if int8_path.resolve() == out.resolve():
        raise LiserError(f"{int8_path}: the int8 model needs its own path (not --onnx's)")
    return int8_path


def _check_data(ck: dict, ck_path: Path, check_files, say) -> CheckData:
    """Real data for the checks: --check-files, else the run's validation fold; LiserError when neither is there."""
    if check_files:
        return _files_data(check_files, ck["classes"])
    data = None
    try:
        data = _fold_data(ck)
    except (LiserError, OSError) as e:
        say(f"note: the run's validation fold is not reachable ({e}); pass --check-files")
    if data is None:
        raise LiserError(f"{ck_path}: no real files to check the export on (pass --check-files FILES)")
    return data


def _fp32(classifier, tmp: Path, out: Path, ck: dict, data: CheckData, opset: int, threads: int, say, report: dict):
    """Export the fp32 graph to `tmp` (renamed to `out` by the caller) and check it against torch; returns (torch labels per file, fp32 UAR)."""
    import torch

    _torch_export(classifier, tmp, opset, (ck.get("front_end") or {}).get("windowing") == "speech")
    _set_metadata(tmp, metadata(ck))

    def torch_fn(x):
        with torch.inference_mode():
            return classifier(torch.from_numpy(x)).numpy()

    ref = _logits(torch_fn, data.wins)
    sess = _session(tmp, threads)
    got = _logits(lambda x: sess.run(None, {INPUT: x})[0], data.wins)
    diff = max(float(np.abs(a - b).max()) for a, b in zip(ref, got))
    ref_lab = np.array([int(z.mean(0).argmax()) for z in ref])
    agree = float((ref_lab == np.array([int(z.mean(0).argmax()) for z in got])).mean())
    n_win = sum(len(w) for w in data.wins)
    say(f"parity on {data.source}, {n_win} windows: max |logit torch - onnxruntime| = {diff:.2e}, "
        f"label agreement {agree:.1%}")
    report.update(max_abs_diff=diff, agreement=agree, n_files=len(data.wins), n_windows=n_win)
    if not diff <= FP32_TOLERANCE or agree < 1.0:
        raise LiserError(f"{out}: parity check failed (max abs logit difference {diff:.2e}, limit "
                         f"{FP32_TOLERANCE:.0e}; label agreement {agree:.1%}, needed 100%); nothing written")
    uar32 = _uar(ref, data.labels, data.classes, data.weights)
    report.update(fp32_bytes=tmp.stat().st_size, fp32_uar=uar32)
    return ref_lab, uar32


def _ms_per_window(path: Path, wins: list[np.ndarray]) -> float:
    """Median CPU milliseconds per window of the model at `path` on 1 onnxruntime thread.

    The first TIMING_WINDOWS check windows of the longest length (float32 [n, 64, 94]), in calls of
    TIMING_BATCH, TIMING_REPEATS passes after one warm-up pass. CPU time of
    this process (time.process_time), not wall time: on a shared machine other
    processes' load stretches wall time but hardly the CPU one session spends.
    """
    import time

    longest = max(w.shape[2] for w in wins)  # "speech" windowing: windows of many lengths; time the longest
    parts, n = [], 0
    for w in (w for w in wins if w.shape[2] == longest):
        if n >= TIMING_WINDOWS:
            break
        parts.append(w[: TIMING_WINDOWS - n])
        n += len(parts[-1])
    x = np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)
    batches = [x[a : a + TIMING_BATCH] for a in range(0, len(x), TIMING_BATCH)]
    sess = _session(path, 1)
    times = []
    for rep in range(TIMING_REPEATS + 1):
        t0 = time.process_time()
        for b in batches:
            sess.run(None, {INPUT: b})
        if rep:  # pass 0 warms the session up (first-run allocations)
            times.append(time.process_time() - t0)
    return 1000.0 * float(np.median(times)) / len(x)


def choose_int8(cands: list[dict], uar32: float | None) -> tuple[dict, str]:
    """The int8 candidate to keep, and why (a phrase for the printed line).

    Each candidate is a dict with "method", "bytes", "agreement" (label
    agreement with fp32, 0-1), "uar" (validation UAR, None without labels) and
    "ms_per_window". In turn: those under INT8_BUDGET (all, when none is);
    of them, those whose UAR is within INT8_UAR_TOLERANCE of `uar32` (none:
    those with the best UAR; without labels, agreement stands in for UAR and
    fp32's is 1.0); of those, the ones within SPEED_MARGIN of the fastest;
    then the highest UAR, agreement, smallest size. Raises ValueError on an
    empty list.
    """
    if not cands:
        raise ValueError("no int8 candidates")
    labels = uar32 is not None
    score = (lambda c: c["uar"] if c["uar"] is not None else 0.0) if labels else (lambda c: c["agreement"])
    ref, what = (uar32, "validation UAR") if labels else (1.0, "label agreement")
    why = []
    pool = [c for c in cands if c["bytes"] < INT8_BUDGET]
    if pool and len(pool) < len(cands):
        why.append(f"under the {INT8_BUDGET / 1000:.0f} KB budget")
    pool = pool or cands
    good = [c for c in pool if score(c) >= ref - INT8_UAR_TOLERANCE - 1e-9]
    if good:
        out = [c["method"] for c in pool if c not in good]
        why.append(f"{what} within {INT8_UAR_TOLERANCE * 100:.0f} point of fp32" +
                   (f" ({', '.join(out)}: not)" if out else ""))
    else:
        top = max(score(c) for c in pool)
        good = [c for c in pool if score(c) == top]
        why.append(f"best {what} (none within {INT8_UAR_TOLERANCE * 100:.0f} point of fp32)")
    # Timing noise must not decide: two candidates are told apart on speed only when one is at
    # least SPEED_MARGIN times faster (dynamic vs static QDQ differ ~5x per window on an x86 CPU;
    # repeated timings of one model on the loaded 2-core machine varied by under 30 %). Everything
    # within the margin of the fastest stays, and UAR, agreement, size (deterministic figures)
    # decide among them, so the same run exported twice writes the same model.
    fastest = min(c["ms_per_window"] for c in good)
    quick = [c for c in good if c["ms_per_window"] < SPEED_MARGIN * fastest]
    best = max(quick, key=lambda c: (score(c), c["agreement"], -c["bytes"]))
    slow = [c for c in good if c not in quick]
    if slow:
        why.append("; ".join(f"{c['ms_per_window'] / best['ms_per_window']:.1f}x faster than {c['method']} "
                             f"({c['ms_per_window']:.2f} ms/window)" for c in slow))
    elif len(quick) > 1:
        why.append(f"speeds within {SPEED_MARGIN}x of each other, so by {what}, agreement, size")
    if len(cands) == 1:
        why = ["the only candidate"]
    return best, ", ".join(why)


def _int8(fp32: Path, dest: Path, ck: dict, data: CheckData, ref_lab, uar32, threads: int, say) -> dict:
    """Quantise both ways, score and time each on the check data, keep the one choose_int8 picks as `dest`."""
    ms32 = _ms_per_window(fp32, data.wins)
    cands = []
    for method in ("dynamic", "static-qdq"):
        path = dest.with_name(f"{dest.name}.cand-{method}")
        try:
            _quantize(fp32, path, method, data.calib)
            _set_metadata(path, metadata(ck, f"int8-{method}"))
            sess = _session(path, threads)
            got = _logits(lambda x: sess.run(None, {INPUT: x})[0], data.wins)
        except LiserError as e:
            say(f"int8 {method}: skipped ({e})")
            continue
        except Exception as e:  # a quantiser failure on one method must not stop the other
            say(f"int8 {method}: failed ({type(e).__name__}: {str(e).splitlines()[0][:160]})")
            continue
        lab = np.array([int(z.mean(0).argmax()) for z in got])
        agree = float((lab == ref_lab).mean())
        u = _uar(got, data.labels, data.classes, data.weights)
        size = path.stat().st_size
        ms = _ms_per_window(path, data.wins)
        say(f"int8 {method}: {size / 1000:.0f} KB, label agreement with fp32 {agree:.1%}" +
            (f", validation UAR {u:.3f} (fp32 {uar32:.3f})" if u is not None else "") +
            f", {ms:.2f} ms/window on 1 thread (fp32 {ms32:.2f})")
        cands.append({"method": method, "path": path, "bytes": size, "agreement": agree, "uar": u,
                      "ms_per_window": ms})
    if not cands:
        raise LiserError(f"{dest.name}: int8 quantisation failed with every method; fp32 not written either")
    best, why = choose_int8(cands, uar32)
    os.replace(best["path"], dest)
    return {"int8_method": best["method"], "int8_bytes": best["bytes"], "int8_agreement": best["agreement"],
            "int8_uar": best["uar"],
            "int8_uar_delta": (best["uar"] - uar32) if best["uar"] is not None and uar32 is not None else None,
            "int8_ms_per_window": best["ms_per_window"], "int8_chosen_because": why, "fp32_ms_per_window": ms32,
            "timing": {"windows": min(TIMING_WINDOWS, sum(len(w) for w in data.wins)), "batch": TIMING_BATCH,
                       "repeats": TIMING_REPEATS, "threads": 1, "clock": "time.process_time, median"},
            "int8_candidates": [{k: v for k, v in c.items() if k != "path"} for c in cands]}


# ---------------------------------------------------------------- waveform in
def export_waveform(run: str | Path, out: str | Path, int8=None, opset: int = 17, check_files=None, threads: int = 1,
                    say=_say, dft: str = "matmul") -> dict:
    """`liser export --waveform`: waveform-in graphs (liser.inference.waveform_onnx) at `out` (and the int8 path).

    `run` is a run directory / best.pt (exported and checked as usual into a
    temporary folder first, then wrapped) or a log-Mel student .onnx (wrapped
    as it is; `check_files` are then required, and `int8` is not taken: the
    .onnx's own quantisation is kept). Each wrapped graph is checked against
    `liser predict` on its student over real files (`--check-files`, else
    the run's validation fold): an fp32 one within liser.inference.waveform_onnx.PARITY_TOLERANCE, an
    int8 one on labels and refusals. Raises LiserError, writing nothing at
    that path, when a check fails or no real files are at hand.
    """
    import tempfile

    from liser.inference import waveform_onnx

    out = Path(out)
    if Path(run).suffix.lower() == ".onnx":
        if int8:
            raise LiserError(f"{run}: --int8 with an .onnx model: it is wrapped as it is (its own quantisation)")
        if not check_files:
            raise LiserError(f"{run}: wrapping an .onnx model needs --check-files (real audio to check it on)")
        _output_paths(out, None)
        files = _check_paths(check_files)
        quant = waveform_onnx.student_metadata(run).get("quantization", "none")
        tol = waveform_onnx.PARITY_TOLERANCE if quant == "none" else None
        report = {"onnx": str(out), **waveform_onnx.export(run, out, files, dft, tol, threads, say)}
        say(f"wrote {out} ({report['bytes'] / 1000:.0f} KB, waveform in; {waveform_onnx.CONTRACT})")
        return report
    int8_path = _output_paths(out, int8)
    with tempfile.TemporaryDirectory(prefix=".liser-export-", dir=out.parent) as d:
        student = Path(d) / "student.onnx"
        def quiet(m: str) -> None:  # the log-Mel models are temporary: say "exported", not "wrote"
            say(m.replace("wrote ", "exported log-Mel student ", 1) if m.startswith("wrote ") else m)

        report = export_onnx(run, student, int8=Path(d) / "student.int8.onnx" if int8_path else None, opset=opset,
                             check_files=check_files, threads=threads, say=quiet)
        files = _check_paths(check_files) if check_files else report.get("check_paths") or []
        if not files:
            raise LiserError(f"{run}: no real files to check the waveform graph on (pass --check-files FILES)")
        wave = Path(d) / out.name  # both graphs pass their checks before either is moved into place
        report["waveform"] = waveform_onnx.export(student, wave, files, dft, waveform_onnx.PARITY_TOLERANCE, threads, say)
        if int8_path:
            wave8 = Path(d) / ("int8-" + int8_path.name)
            report["waveform_int8"] = waveform_onnx.export(Path(d) / "student.int8.onnx", wave8, files, dft, None,
                                                           threads, say)
            commit(wave8, int8_path)
            report["int8"] = str(int8_path)
        commit(wave, out)
        report["onnx"] = str(out)
    for path, key in ((out, "waveform"), (int8_path, "waveform_int8")):
        if path:
            say(f"wrote {path} ({report[key]['bytes'] / 1000:.0f} KB, waveform in; {waveform_onnx.CONTRACT})")
    report.pop("check_paths", None)
    return report


def _check_paths(check_files: list[str]) -> list[str]:
    """The audio files named or found in folders (`liser predict`'s rules); LiserError for the first problem."""
    from liser.inference.predict import expand_inputs

    paths, problems = expand_inputs(check_files)
    if problems:
        raise LiserError(problems[0])
    return [str(p) for p in paths]
