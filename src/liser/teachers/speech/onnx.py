"""The speech teacher's encoder on onnxruntime: exported once, cached, used to label the pool.

Labeling the unlabeled pool is the speech teacher's encoder (Whisper) run
on every pool file, once per teacher; in PyTorch on two CPU cores it is the
slowest part of the teacher side. Here the encoder is exported to ONNX (all
hidden states, any even number of Mel frames up to 3000, the positional
embeddings sliced to the input length exactly as `whisper_encoder_states`
does), LoRA adapters merged into the q/v weights, and run in onnxruntime,
optionally with most of its projections quantised to int8 (dynamic
quantisation: int8 weights per output channel, activations per call;
`quantize_int8` says which and why).

Only the encoder is exported. The Mel front end (transformers'
WhisperFeatureExtractor), the chunking of long items, the pooling of frames
into 0.5 s pieces and the head stay the PyTorch path's own code
(`Backbone`, `SpeechTeacher.probs_from_features`), so the two runtimes
differ in the encoder's arithmetic alone.

The export is cached under `<cache_dir>/onnx/<key>/` (cache_dir: the
teacher's feature cache, `speech.default_cache_dir()` by default). The key
is the encoder's identity: the backbone's fingerprint, plus the teacher hash
for a LoRA teacher (its adapter is in the weights), plus this module's
export version and the torch / transformers / onnx versions that traced it.
The folds of a frozen teacher share one export; a changed adapter or
backbone gets a new one. A folder is written under a temporary name and
renamed when complete; a folder at the key's place that liser did not write
is refused, never replaced.

Parity (the bound every runtime must hold against PyTorch on real pool
audio; `bench/bench_teacher_speed.py`): top-1 agreement of the piece soft
labels >= TOP1_BOUND and mean |dp| <= MEAN_DP_BOUND. The int8 export is
checked at export time on the audio it is about to label, with the
exporting teacher's head; when it misses the bound, "auto" uses the fp32
export and an explicit "onnx-int8" is a LiserError.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np

from liser.core.atomic import temp_folder
from liser.core.errors import LiserError
from liser.teachers.speech.teacher import RUNTIMES, Backbone  # a plain class: importing it loads no torch

EXPORT_FORMAT = "liser-speech-onnx"
EXPORT_VERSION = 1  # bump when the exported graph's definition changes
OPSET = 17
TRACE_FRAMES = 200  # Mel frames of the example input traced at export (2 s); the time axis stays dynamic
FP32_FILE, INT8_FILE, META_FILE = "encoder.onnx", "encoder.int8.onnx", "export.json"
TOP1_BOUND = 0.98  # parity: share of pieces whose arg-max class is PyTorch's
MEAN_DP_BOUND = 0.01  # parity: mean over pieces and classes of |p_onnx - p_torch|
INT8_PROJECTIONS = ("q_proj", "k_proj", "out_proj", "fc1")  # quantised in onnx-int8; v_proj and fc2 stay fp32
CHECK_S = 60.0  # audio-seconds of the pool the int8 export is checked on (the first items, in order)


# ---------------------------------------------------------------- which runtime


def resolve_runtime(runtime: str, kind: str, device: str) -> str:
    """The runtime that labels: "torch", "onnx" or "onnx-int8" (int8 may still fall back, see `OnnxEncoder.open`).

    "auto" is onnx-int8 for a Whisper backbone on the CPU and torch
    otherwise (CUDA, or a waveform backbone such as HuBERT, which has no
    export here). Raises LiserError for an unknown name, or onnx on a
    backbone that cannot be exported.
    """
    if runtime not in RUNTIMES:
        raise LiserError(f"speech teacher: runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    if runtime == "auto":
        return "onnx-int8" if kind == "whisper" and not str(device).startswith("cuda") else "torch"
    if runtime != "torch" and kind != "whisper":
        raise LiserError(f"speech teacher: runtime {runtime!r} exports Whisper encoders only; "
                         "this backbone runs with runtime: torch")
    return runtime


def onnx_dir(cache_dir) -> Path:
    """Where exports are cached: <feature cache>/onnx (the default feature cache when cache_dir is None)."""
    from liser.teachers.speech.teacher import default_cache_dir

    return Path(cache_dir or default_cache_dir()) / "onnx"


def export_key(teacher) -> str:
    """Identity of a teacher's exported encoder (hex sha256): backbone, LoRA adapter, versions."""
    import onnx
    import torch
    import transformers

    parts = [EXPORT_FORMAT, str(EXPORT_VERSION), str(OPSET), teacher.fingerprint,
             teacher.hash if teacher.mode == "lora" else "frozen",
             torch.__version__, transformers.__version__, onnx.__version__]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


# ---------------------------------------------------------------- export


class _StatesGraph:
    """What is traced: Mel [B, 80, F] -> hidden states of every layer, stacked [B, S, F/2, d]."""

    @staticmethod
    def module(encoder):
        import torch

        from liser.teachers.speech.teacher import whisper_encoder_states

        class StatesGraph(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.encoder = encoder

            def forward(self, mel):
                return torch.stack(whisper_encoder_states(self.encoder, mel), dim=1)

        return StatesGraph().eval()


def merged_encoder(model):
    """A copy of a Whisper encoder with any LoRA adapters merged into their base weights (plain nn.Linear)."""
    model = copy.deepcopy(model).cpu().float().eval()
    for name, module in list(model.named_modules()):
        if hasattr(module, "merge") and hasattr(module, "base_layer"):  # a peft LoRA layer
            module.merge()
            parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
            setattr(parent, name.rsplit(".", 1)[-1], module.get_base_layer())
    if any("lora_" in n for n, _ in model.named_parameters()):
        raise LiserError("speech teacher export: LoRA weights left after merging (unknown adapter layout)")
    return model


def export_states_graph(encoder, path: Path) -> None:
    """Trace `encoder` (a Whisper encoder module, float32, CPU) to an ONNX file at `path` (dynamic B and F)."""
    import torch

    graph = _StatesGraph.module(encoder)
    mel = torch.zeros(1, encoder.conv1.in_channels, TRACE_FRAMES)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings on the shape checks, which are trace-time constants here
        torch.onnx.export(graph, (mel,), str(path), input_names=["mel"], output_names=["states"],
                          dynamic_axes={"mel": {0: "batch", 2: "frames"}, "states": {0: "batch", 2: "positions"}},
                          opset_version=OPSET, dynamo=False)


def quantize_int8(src: Path, dst: Path) -> list[str]:
    """Dynamic int8 quantisation of the encoder's INT8_PROJECTIONS (int8 weights per output channel); the names quantised.

    Activations are quantised per call and per tensor, which the inputs of
    v_proj and fc2 (a GELU's output) do not survive: quantising those too
    moved 7-8 % of the pieces' arg-max classes on real pool audio
    (bench/bench_teacher_speed.py), so they stay fp32, as do the
    convolutions and the attention's own products.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(src), load_external_data=False)
    weights = {i.name for i in model.graph.initializer}
    nodes = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in weights
             and any(f"/{p}/" in n.name for p in INT8_PROJECTIONS)]
    if not nodes:
        raise LiserError(f"{src}: no {', '.join(INT8_PROJECTIONS)} MatMul to quantise (unknown graph layout)")
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=["MatMul"],
                     nodes_to_quantize=nodes, extra_options={"MatMulConstBOnly": True})
    return nodes


def _sha256(path: Path) -> str:
    from liser.teachers.store import sha256_file

    return sha256_file(path).hexdigest()


def _read_meta(folder: Path) -> dict | None:
    """export.json of a complete liser export in `folder`, else None."""
    try:
        meta = json.loads((folder / META_FILE).read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("format") == EXPORT_FORMAT else None


def ensure_export(teacher, check_waves=None, root: str | Path | None = None) -> tuple[Path, dict]:
    """The folder of the teacher's exported encoder, exported now if not cached: (folder, export.json as a dict).

    Export: the LoRA-merged encoder to encoder.onnx (fp32), then
    encoder.int8.onnx; with `check_waves` (16 kHz waveforms of the audio to
    be labeled, or a callable giving them, called only when exporting) the int8 graph's piece soft labels, with this teacher's
    head, are compared with PyTorch's and the figures kept in export.json
    ("int8_parity"). Raises LiserError when the key's folder exists but is
    not a complete liser export (it is left as it is).
    """
    import torch

    root = Path(root) if root else onnx_dir(teacher.cfg.cache_dir)
    key = export_key(teacher)
    final = root / key[:32]
    if final.exists():
        meta = _read_meta(final)
        if meta is None or meta.get("key") != key:
            raise LiserError(f"{final}: exists but is not liser's export of this teacher's encoder "
                             "(no matching export.json); move it away")
        return final, meta
    root.mkdir(parents=True, exist_ok=True)
    tmp = temp_folder(root, f".{key[:32]}.")
    try:
        bb = teacher.encoder
        if bb.kind != "whisper":
            raise LiserError(f"{teacher.backbone}: only Whisper encoders are exported to ONNX")
        with torch.no_grad():
            export_states_graph(merged_encoder(bb.model), tmp / FP32_FILE)
        int8_nodes = quantize_int8(tmp / FP32_FILE, tmp / INT8_FILE)
        meta = {"format": EXPORT_FORMAT, "version": EXPORT_VERSION, "key": key, "opset": OPSET,
                "backbone": teacher.backbone, "backbone_fingerprint": teacher.fingerprint, "mode": teacher.mode,
                "teacher_hash": teacher.hash, "n_states": bb.n_states, "dim": bb.dim,
                "int8_nodes": len(int8_nodes), "files": {FP32_FILE: _sha256(tmp / FP32_FILE), INT8_FILE: _sha256(tmp / INT8_FILE)}}
        waves = check_waves() if callable(check_waves) else check_waves
        if waves:
            meta["int8_parity"] = check_parity(teacher, tmp / INT8_FILE, waves)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1) + "\n")  # last: marks the folder complete
        try:
            os.rename(tmp, final)
        except OSError:  # another process (a shard) finished first: use its export
            shutil.rmtree(tmp, ignore_errors=True)
            other = _read_meta(final)
            if other is None or other.get("key") != key:
                raise LiserError(f"{final}: exists but is not liser's export of this teacher's encoder") from None
            meta = other
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final, meta


# ---------------------------------------------------------------- parity


def parity(p_ref: np.ndarray, p: np.ndarray) -> dict:
    """Soft labels [N, K] against the reference [N, K]: n, top1 agreement, mean and max |dp|, and within_bound."""
    p_ref, p = np.asarray(p_ref, np.float64), np.asarray(p, np.float64)
    if p_ref.shape != p.shape:
        raise ValueError(f"parity: shapes differ ({p_ref.shape} vs {p.shape})")
    d = np.abs(p - p_ref)
    top1 = float((p.argmax(1) == p_ref.argmax(1)).mean()) if len(p) else 1.0
    mean_dp = float(d.mean()) if d.size else 0.0
    return {"n": int(len(p)), "top1": round(top1, 5), "mean_abs_dp": round(mean_dp, 6),
            "max_abs_dp": round(float(d.max()) if d.size else 0.0, 6),
            "within_bound": bool(top1 >= TOP1_BOUND and mean_dp <= MEAN_DP_BOUND)}


def check_parity(teacher, model_file: Path, waves: list) -> dict:
    """Piece soft labels of `model_file` against the teacher's PyTorch encoder on `waves` (see `parity`)."""
    enc = OnnxEncoder(teacher.encoder, model_file, threads=0, fingerprint="check")
    ref = np.concatenate([teacher.predict_pieces(w) for w in waves])
    got = np.concatenate([teacher.predict_pieces(w, encoder=enc) for w in waves])
    return parity(ref, got)


# ---------------------------------------------------------------- the encoder on onnxruntime


def session(model_file: Path, threads: int = 0):
    """An onnxruntime CPU session on `model_file` with `threads` intra-op threads (0 = onnxruntime's default).

    Threads are set on the session, never process-wide; its threads sleep
    between calls (no spinning), so the decoding and the VAD in between
    keep the cores.
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads > 0:
        so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(model_file), so, providers=["CPUExecutionProvider"])


class OnnxEncoder(Backbone):
    """A Whisper `Backbone` whose encoder runs in onnxruntime: the same methods (pooled, pieces, context_pieces).

    Built on a loaded Backbone's front end (its feature extractor and
    sizes); only `_states_batch` differs, so chunking and pooling are the
    PyTorch path's own code. `fingerprint` names its outputs in the
    frozen-feature cache, apart from PyTorch's. Raises LiserError for a
    non-Whisper backbone.
    """

    def __init__(self, backbone: Backbone, model_file: str | Path, threads: int = 0, fingerprint: str = ""):
        if backbone.kind != "whisper":
            raise LiserError(f"{backbone.name}: only Whisper encoders run in onnxruntime here")
        self.name, self.device, self.config, self.kind = backbone.name, "cpu", backbone.config, "whisper"
        self.feature_extractor = backbone.feature_extractor
        self.n_states, self.dim = backbone.n_states, backbone.dim
        self.model_file = Path(model_file)
        self.fingerprint = fingerprint or hashlib.sha256(f"onnx|{self.model_file.resolve()}".encode()).hexdigest()
        self.session = session(self.model_file, threads)

    def _states_batch(self, waves: list[np.ndarray], grad: bool = False):
        """Hidden states of every layer: ([B, S, T, d] float32 tensor, valid frames [B]), as Backbone's."""
        import torch

        if grad:
            raise LiserError("the onnxruntime encoder is for inference only")
        mel, valid = self.whisper_mel(waves)
        states = self.session.run(None, {"mel": mel.cpu().numpy()})[0]
        return torch.from_numpy(states), valid
