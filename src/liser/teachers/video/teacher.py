"""The video teacher: facial-expression probabilities for every 0.5 s piece of a talking-face video.

A `VideoTeacher` turns aligned face crops (uint8 [N, S, S, 3] RGB, from
`liser.data.faces`) into softmax probabilities over its classes. Two kinds:

- per-frame models (`clip_frames is None`): `predict_frames(crops) -> [N, K]`;
  a clip's output is the mean over its frames.
- clip models (`clip_frames = T`, 16 for S2D): `predict_clips(clips [C, T, S, S, 3]) -> [C, K]`.

Implementations here:

1. `KerasTeacher`: a Keras 2 HDF5 image classifier read with h5py alone (no
   TensorFlow) into an equivalent torch module by interpreting the file's
   `model_config` graph. `fer2013-big` / `fer2013-mini` are the FER2013
   Xception nets of Arriaga et al. (64x64 grayscale, x/255*2-1).
2. `OnnxTeacher`: any ONNX image (or clip) classifier with declared input
   size, colour order, layout, normalisation and class names.
3. `S2DTeacher`: a hook for S2D (Chen et al., TAFFC 2024), the paper's video
   teacher, around a user-supplied torch module / TorchScript / ONNX file.

`label_track` maps a face track onto the audio's piece grid (SPEC "Teachers":
16-frame clips, window and stride 16; pieces of 0.5 s), and
`label_with_video_teacher` labels a whole manifest into a soft-label store.
Pieces without enough face frames are marked invalid (no video-distillation
loss there).

torch, h5py, onnxruntime and cv2 are imported inside functions so that
importing liser stays fast.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from liser.data.audio import PIECE_S
from liser.core.errors import LiserError
from liser.core.util import check_shard, models_dir, safe_id, softmax
from liser.teachers.store import SoftLabelStore, StoreWriter, n_pieces, sha256_file

FER2013_CLASSES = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]  # the h5 files' output order
S2D_CLASSES = ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]  # FERV39k label_index order
S2D_CLIP_FRAMES = 16  # SPEC: 16-frame clips, window and stride 16
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FER_FILES = {
    "fer2013-big": "fer2013_big_XCEPTION.54-0.66.hdf5",
    "fer2013-mini": "fer2013_mini_XCEPTION.102-0.66.hdf5",
}
MODELS_ENV = "LISER_MODELS"  # environment variable: folder holding fer2013-xception/ (or the .hdf5 files)
DEFAULT_MODELS = models_dir()  # $LISER_MODELS, else ../shared/models (liser.core.util.models_dir)
MIN_FACE_FRAC = 0.5  # a piece (or clip) needs faces in at least this fraction of its frames


def _softmax(x: np.ndarray) -> np.ndarray:
    """float32 probabilities from logits (computed in float64)."""
    return softmax(np.asarray(x, dtype=np.float64)).astype(np.float32)


# ---------------------------------------------------------------- preprocessing


@dataclass
class Preprocess:
    """How crops become model input: resize, colour, then x * scale + offset, then (x - mean) / std.

    `color` is the model's channel order ("rgb", "bgr" or "gray"); `interpolation`
    "auto" uses INTER_AREA when shrinking and INTER_LINEAR when enlarging.
    The output is float32 channels-last [N, size, size, C].
    """

    size: int
    color: str = "rgb"
    scale: float = 1.0 / 255.0
    offset: float = 0.0
    mean: tuple | None = None
    std: tuple | None = None
    interpolation: str = "auto"

    def __post_init__(self):
        if self.color not in ("rgb", "bgr", "gray"):
            raise LiserError(f"color {self.color!r}: expected rgb, bgr or gray")
        if self.interpolation not in ("auto", "area", "linear", "cubic"):
            raise LiserError(f"interpolation {self.interpolation!r}: expected auto, area, linear or cubic")
        if (self.mean is None) != (self.std is None):
            raise LiserError("normalisation: give both mean and std, or neither")
        self.size = int(self.size)
        self.mean = None if self.mean is None else tuple(float(v) for v in np.atleast_1d(self.mean))
        self.std = None if self.std is None else tuple(float(v) for v in np.atleast_1d(self.std))

    @property
    def channels(self) -> int:
        return 1 if self.color == "gray" else 3

    def identity(self) -> dict:
        return asdict(self)

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        import cv2

        crops = np.asarray(crops)
        if crops.ndim != 4 or crops.shape[-1] != 3:
            raise ValueError(f"crops must be [N, H, W, 3] RGB, got {crops.shape}")
        n, h, w = crops.shape[:3]
        out = np.empty((n, self.size, self.size, self.channels), np.float32)
        if self.interpolation == "auto":
            flag = cv2.INTER_AREA if self.size <= min(h, w) else cv2.INTER_LINEAR
        else:
            flag = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC}[self.interpolation]
        for i in range(n):
            img = np.ascontiguousarray(crops[i], dtype=np.uint8)
            if self.color == "gray":
                img = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
            elif self.color == "bgr":
                img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
            if (h, w) != (self.size, self.size):
                img = cv2.resize(img, (self.size, self.size), interpolation=flag)
            out[i] = img.reshape(self.size, self.size, self.channels)
        out = out * np.float32(self.scale) + np.float32(self.offset)
        if self.mean is not None:
            out = (out - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return out


# ---------------------------------------------------------------- the interface


class VideoTeacher:
    """A frozen facial-expression model: face crops in, class probabilities out.

    Attributes: `name` (short, goes into the store's teacher name), `classes`,
    `clip_frames` (None = per-frame model, else frames per clip), `hash`
    (sha256 of the weights and the preprocessing: a changed teacher gives a new
    store), `batch` (frames or clips per forward pass).
    """

    name: str = "video"
    classes: list[str] = []
    clip_frames: int | None = None
    hash: str = ""
    batch: int = 256

    def predict_frames(self, crops: np.ndarray) -> np.ndarray:
        """Per-frame probabilities [N, K] for uint8 RGB crops [N, S, S, 3] (per-frame models only)."""
        raise LiserError(f"video teacher {self.name}: a clip model ({self.clip_frames} frames) has no per-frame output")

    def predict_clips(self, clips: np.ndarray) -> np.ndarray:
        """Per-clip probabilities [C, K] for uint8 RGB clips [C, T, S, S, 3]; per-frame models average their frames."""
        clips = np.asarray(clips)
        if clips.ndim != 5:
            raise ValueError(f"clips must be [C, T, H, W, 3], got {clips.shape}")
        c, t = clips.shape[:2]
        probs = self.predict_frames(clips.reshape(c * t, *clips.shape[2:]))
        return probs.reshape(c, t, -1).mean(axis=1)

    def describe(self) -> dict:
        return {"name": self.name, "classes": list(self.classes), "clip_frames": self.clip_frames, "hash": self.hash}


def _hash_parts(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else json.dumps(p, sort_keys=True).encode())
    return h.hexdigest()


# ---------------------------------------------------------------- Keras HDF5 -> torch


def _layer_weights(group, path: Path, name: str) -> dict:
    """A layer's arrays by short name (kernel, bias, gamma, ...), from the h5 group's weight_names."""
    if name not in group:
        return {}
    g = group[name]
    out = {}
    for w in g.attrs.get("weight_names", []):
        w = w.decode() if isinstance(w, bytes) else str(w)
        short = w.split("/")[-1].split(":")[0]
        out[short] = np.asarray(g[w], dtype=np.float32)
    return out


def load_keras_h5(path: str | Path, fold_bn: bool = True):
    """A torch nn.Module equivalent to a Keras 2 HDF5 model, and its input shape (H, W, C).

    Reads `model_config` (a Functional `Model` or `Sequential`) and the weights
    under `model_weights` with h5py; supported layers: InputLayer, Conv2D,
    SeparableConv2D, BatchNormalization, Activation, MaxPooling2D,
    AveragePooling2D (valid), Add, GlobalAveragePooling2D, GlobalMaxPooling2D,
    Dense, Flatten, Dropout. The module takes NCHW float input and returns
    the last layer's output (probabilities for the FER nets). With `fold_bn`,
    a BatchNormalization that is the only consumer of a linear Conv2D /
    SeparableConv2D is folded into its kernel and bias (same numbers, faster);
    `fold_bn=False` keeps every layer as in the file (for layer-by-layer checks).
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise LiserError(f"{path}: no such Keras model file")
    import torch

    from liser.teachers.video import keras_layers as K
    try:
        h5 = h5py.File(path, "r")
    except OSError as e:
        raise LiserError(f"{path}: not an HDF5 file ({str(e).strip()[:120]})") from None
    with h5:
        if "model_config" not in h5.attrs:
            raise LiserError(f"{path}: no model_config (a weights-only file); save the whole model with model.save()")
        raw = h5.attrs["model_config"]
        cfg = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
        group = h5["model_weights"] if "model_weights" in h5 else h5
        layers, inputs, outputs, shape = _graph_layout(cfg, path)
        modules, order = {}, []
        for lc in layers:
            if lc["class_name"] == "InputLayer":
                continue
            modules[lc["name"]], inbound = _keras_layer(K, lc, group, path)
            order.append((lc["name"], inbound))
    if fold_bn:
        _fold_batchnorms(K, modules, order, outputs)
    model = K.KerasGraph(modules, order, inputs, outputs).eval()
    for p in model.parameters():
        p.requires_grad_(False)
        if p.dim() == 4:  # channels-last kernels: depthwise convs run about 1.7x faster on CPU
            p.data = p.data.contiguous(memory_format=torch.channels_last)
    return model, (int(shape[1]), int(shape[2]), int(shape[3]))


def _graph_layout(cfg: dict, path: Path) -> tuple[list, list, list, list]:
    """(layer configs with their inbound nodes, input names, output names, input shape) of a Keras 2 model config."""
    if cfg.get("class_name") == "Sequential":
        layer_cfgs = cfg["config"]["layers"] if isinstance(cfg["config"], dict) else cfg["config"]
        first = layer_cfgs[0]["config"]
        shape = first.get("batch_input_shape")
        layers, prev = [], "input"
        for lc in layer_cfgs:
            name = lc["config"]["name"]
            layers.append({**lc, "name": name, "inbound_nodes": [[[prev, 0, 0, {}]]]})
            prev = name
        inputs, outputs = ["input"], [prev]
    elif cfg.get("class_name") in ("Model", "Functional"):
        layers = cfg["config"]["layers"]
        inputs = [i[0] for i in cfg["config"]["input_layers"]]
        outputs = [o[0] for o in cfg["config"]["output_layers"]]
        shape = None
        for lc in layers:
            if lc["class_name"] == "InputLayer":
                shape = lc["config"].get("batch_input_shape") or lc["config"].get("batch_shape")
    else:
        raise LiserError(f"{path}: model class {cfg.get('class_name')!r} not supported (Model or Sequential)")
    if len(inputs) != 1 or len(outputs) != 1:
        raise LiserError(f"{path}: {len(inputs)} inputs / {len(outputs)} outputs; one of each supported")
    if not shape or len(shape) != 4:
        raise LiserError(f"{path}: input shape {shape} is not [batch, H, W, C]")
    return layers, inputs, outputs, shape


def _keras_layer(K, lc: dict, group, path: Path):
    """(torch module, inbound layer names) of one Keras layer config; LiserError for what is not supported."""
    kind, name, c = lc["class_name"], lc["name"], lc["config"]
    where = f"{path}: layer {name}"
    if c.get("data_format", "channels_last") != "channels_last":
        raise LiserError(f"{where}: data_format {c.get('data_format')} not supported")
    nodes = lc.get("inbound_nodes") or []
    if len(nodes) != 1 or any(not isinstance(n, (list, tuple)) for n in nodes[0]):
        raise LiserError(f"{where}: shared layers / this config format are not supported (Keras 2 files only)")
    inbound = [n[0] for n in nodes[0]]
    w = _layer_weights(group, path, name)
    bias = w.get("bias") if c.get("use_bias", True) else None
    if kind == "Conv2D":
        return K.KConv(c, w["kernel"], bias, where), inbound
    if kind == "SeparableConv2D":
        return K.KSeparable(c, w["depthwise_kernel"], w["pointwise_kernel"], bias, where), inbound
    if kind == "BatchNormalization":
        if c.get("axis", -1) not in (-1, 3, [3], [-1]):
            raise LiserError(f"{where}: BatchNormalization axis {c.get('axis')} not supported")
        return K.KBatchNorm(c, w.get("gamma"), w.get("beta"), w["moving_mean"], w["moving_variance"]), inbound
    if kind == "Dense":
        return K.KDense(c, w["kernel"], bias, where), inbound
    if kind == "MaxPooling2D":
        return K.KMaxPool(c), inbound
    if kind == "AveragePooling2D":
        return K.KAvgPool(c, where), inbound
    functions = {
        "Add": lambda *xs: sum(xs[1:], xs[0]),
        "GlobalAveragePooling2D": lambda x: x.mean(dim=(2, 3)),
        "GlobalMaxPooling2D": lambda x: x.amax(dim=(2, 3)),
        "Flatten": K.flatten,
        "Dropout": lambda x: x,
    }
    if kind == "Activation":
        return K.KFn(K.activation(c["activation"], where)), inbound
    if kind in functions:
        return K.KFn(functions[kind]), inbound
    raise LiserError(f"{where}: layer type {kind} not supported")


def _fold_batchnorms(K, modules: dict, order: list, outputs: list) -> None:
    """Fold each BatchNormalization that alone follows a linear conv into that conv (same numbers, faster)."""
    uses: dict[str, int] = {}
    for _, inbound in order:
        for src in inbound:
            uses[src] = uses.get(src, 0) + 1
    for name, inbound in order:
        m = modules[name]
        if isinstance(m, K.KBatchNorm) and len(inbound) == 1 and uses.get(inbound[0]) == 1 \
                and inbound[0] not in outputs and isinstance(modules.get(inbound[0]), (K.KConv, K.KSeparable)) \
                and modules[inbound[0]].linear:
            modules[inbound[0]].fold(m.scale, m.shift)
            modules[name] = K.KFn(lambda x: x)


class KerasTeacher(VideoTeacher):
    """A per-frame Keras 2 HDF5 image classifier run in torch (e.g. the FER2013 Xception nets)."""

    clip_frames = None

    def __init__(self, path: str | Path, classes: list[str] | None = None, name: str | None = None,
                 preprocess: Preprocess | None = None, batch: int = 256, device: str = "cpu"):
        self.path = Path(path)
        self.model, (h, w, c) = load_keras_h5(self.path)
        if h != w:
            raise LiserError(f"{self.path}: input {h}x{w} is not square")
        self.preprocess = preprocess or Preprocess(size=h, color="gray" if c == 1 else "rgb",
                                                   scale=2.0 / 255.0, offset=-1.0, interpolation="area")
        if self.preprocess.channels != c or self.preprocess.size != h:
            raise LiserError(f"{self.path}: model takes {h}x{h}x{c}, preprocessing gives "
                             f"{self.preprocess.size}x{self.preprocess.size}x{self.preprocess.channels}")
        self.classes = list(classes or FER2013_CLASSES)
        self.name = name or self.path.stem
        self.batch = int(batch)
        self.device = device
        self.model.to(device)
        self.hash = _hash_parts(sha256_file(self.path).digest(), {"preprocess": self.preprocess.identity(),
                                                                   "classes": self.classes, "kind": "keras-h5"})
        n_out = self._forward(np.zeros((1, h, h, c), np.float32)).shape[1]
        if n_out != len(self.classes):
            raise LiserError(f"{self.path}: model gives {n_out} outputs but {len(self.classes)} class names were given")

    def _forward(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            t = torch.from_numpy(np.ascontiguousarray(x)).to(self.device).permute(0, 3, 1, 2)  # NCHW view, NHWC memory
            return self.model(t.contiguous(memory_format=torch.channels_last)).float().cpu().numpy()

    def predict_frames(self, crops: np.ndarray) -> np.ndarray:
        crops = np.asarray(crops)
        out = [self._forward(self.preprocess(crops[i : i + self.batch])) for i in range(0, len(crops), self.batch)]
        if not out:
            return np.zeros((0, len(self.classes)), np.float32)
        return np.concatenate(out).astype(np.float32)


def fer_model_path(which: str = "fer2013-big", models_dir: str | Path | None = None) -> Path:
    """The .hdf5 of 'fer2013-big' / 'fer2013-mini' in `models_dir`, $LISER_MODELS or the shared models folder."""
    if which not in FER_FILES:
        raise LiserError(f"video teacher {which!r}: expected one of {sorted(FER_FILES)}")
    roots = [Path(models_dir)] if models_dir else []
    if not roots and os.environ.get(MODELS_ENV):
        roots = [Path(os.environ[MODELS_ENV])]
    roots = roots or [DEFAULT_MODELS]
    for root in roots:
        for cand in (root / "fer2013-xception" / FER_FILES[which], root / FER_FILES[which]):
            if cand.is_file():
                return cand
    raise LiserError(f"{roots[0]}: no {FER_FILES[which]} (set ${MODELS_ENV} or pass the models folder)")


def fer_teacher(which: str = "fer2013-big", models_dir: str | Path | None = None, **kw) -> KerasTeacher:
    """The FER2013 big or mini Xception teacher (7 classes: angry, disgust, fear, happy, sad, surprise, neutral)."""
    return KerasTeacher(fer_model_path(which, models_dir), classes=FER2013_CLASSES, name=which, **kw)


# ---------------------------------------------------------------- ONNX


LAYOUTS_FRAME = ("nchw", "nhwc")
LAYOUTS_CLIP = ("ncthw", "ntchw", "nthwc")


def _to_layout(x: np.ndarray, layout: str) -> np.ndarray:
    """Channels-last batch [N, H, W, C] (or clips [N, T, H, W, C]) to the model's layout."""
    perm = {"nhwc": (0, 1, 2, 3), "nchw": (0, 3, 1, 2), "nthwc": (0, 1, 2, 3, 4),
            "ntchw": (0, 1, 4, 2, 3), "ncthw": (0, 4, 1, 2, 3)}[layout]
    return np.ascontiguousarray(x.transpose(perm))


class OnnxTeacher(VideoTeacher):
    """Any ONNX classifier of face crops (per frame, or clips with `clip_frames`), run with onnxruntime.

    Declared: input `size`, `color` (rgb/bgr/gray), `layout` (nchw/nhwc for
    frames; ncthw/ntchw/nthwc for clips), normalisation (`scale`/`offset`
    and/or `mean`/`std`, see `Preprocess`) and `classes`. `logits=True`
    applies a softmax to the output (first output of the graph).
    """

    def __init__(self, path: str | Path, classes: list[str], size: int, color: str = "rgb", layout: str = "nchw",
                 scale: float = 1.0 / 255.0, offset: float = 0.0, mean=None, std=None, logits: bool = False,
                 clip_frames: int | None = None, name: str | None = None, batch: int = 64,
                 interpolation: str = "auto", threads: int | None = None):
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise LiserError(f"{self.path}: no such ONNX file")
        allowed = LAYOUTS_CLIP if clip_frames else LAYOUTS_FRAME
        if layout not in allowed:
            raise LiserError(f"{self.path}: layout {layout!r} not one of {allowed}")
        self.preprocess = Preprocess(size=size, color=color, scale=scale, offset=offset, mean=mean, std=std,
                                     interpolation=interpolation)
        self.classes = list(classes)
        self.layout = layout
        self.logits = bool(logits)
        self.clip_frames = int(clip_frames) if clip_frames else None
        self.name = name or self.path.stem
        self.batch = int(batch)
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = int(threads)
            opts.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types
            raise LiserError(f"{self.path}: onnxruntime cannot load it ({str(e).strip()[:160]})") from None
        self.input_name = self.session.get_inputs()[0].name
        ident = {"preprocess": self.preprocess.identity(), "classes": self.classes, "layout": layout,
                 "logits": self.logits, "clip_frames": self.clip_frames, "kind": "onnx"}
        self.hash = _hash_parts(sha256_file(self.path).digest(), ident)

    def _run(self, x: np.ndarray) -> np.ndarray:
        out = self.session.run(None, {self.input_name: _to_layout(x, self.layout).astype(np.float32)})[0]
        out = np.asarray(out, np.float32).reshape(len(x), -1)
        if out.shape[1] != len(self.classes):
            raise LiserError(f"{self.path}: model gives {out.shape[1]} outputs, {len(self.classes)} classes declared")
        return _softmax(out) if self.logits else out

    def predict_frames(self, crops: np.ndarray) -> np.ndarray:
        if self.clip_frames:
            return super().predict_frames(crops)
        crops = np.asarray(crops)
        out = [self._run(self.preprocess(crops[i : i + self.batch])) for i in range(0, len(crops), self.batch)]
        return np.concatenate(out) if out else np.zeros((0, len(self.classes)), np.float32)

    def predict_clips(self, clips: np.ndarray) -> np.ndarray:
        if not self.clip_frames:
            return super().predict_clips(clips)
        clips = np.asarray(clips)
        c, t = clips.shape[:2]
        if t != self.clip_frames:
            raise ValueError(f"{self.name}: clips of {t} frames, the model takes {self.clip_frames}")
        out = []
        for i in range(0, c, self.batch):
            part = clips[i : i + self.batch]
            x = self.preprocess(part.reshape(-1, *part.shape[2:])).reshape(len(part), t, self.preprocess.size,
                                                                            self.preprocess.size, -1)
            out.append(self._run(x))
        return np.concatenate(out) if out else np.zeros((0, len(self.classes)), np.float32)


def _sidecar(path: Path) -> Path | None:
    for cand in (path.with_suffix(".json"), path.with_name(path.name + ".json")):
        if cand.is_file():
            return cand
    return None


def load_onnx_teacher(path: str | Path, **overrides) -> OnnxTeacher:
    """An OnnxTeacher whose declaration is read from the JSON sidecar (model.json or model.onnx.json).

    Sidecar keys: classes, size (required); color, layout, scale, offset, mean,
    std, logits, clip_frames, name, interpolation (optional). Keyword
    arguments override the sidecar.
    """
    path = Path(path)
    side = _sidecar(path)
    decl = {}
    if side is not None:
        try:
            decl = json.loads(side.read_text())
        except json.JSONDecodeError as e:
            raise LiserError(f"{side}: not valid JSON ({e.msg} at line {e.lineno})") from None
    decl.update(overrides)
    allowed = {"classes", "size", "color", "layout", "scale", "offset", "mean", "std", "logits", "clip_frames",
               "name", "interpolation", "batch", "threads"}
    unknown = sorted(set(decl) - allowed)
    if unknown:
        raise LiserError(f"{side or path}: unknown keys {unknown} (allowed: {sorted(allowed)})")
    missing = [k for k in ("classes", "size") if k not in decl]
    if missing:
        raise LiserError(f"{side or path.with_suffix('.json')}: the ONNX declaration needs {missing}")
    return OnnxTeacher(path, **decl)


# ---------------------------------------------------------------- S2D


class S2DTeacher(VideoTeacher):
    """Hook for S2D ("From Static to Dynamic", Chen et al., IEEE TAFFC 2024), the paper's video teacher.

    S2D is a ViT-B/16 with landmark-aware prompts (features of a frozen
    MobileFaceNet landmark net) and temporal adapters, fine-tuned on FERV39k:
    7 classes in the order angry, disgust, fear, happy, neutral, sad, surprise;
    input 16 consecutive 224x224 RGB face frames, ImageNet mean/std, tensor
    [B, 3, 16, 224, 224] (layout "ncthw"); output logits (softmax applied here).
    Its code and weights are not shipped with liser. To plug in the official
    checkpoint (github.com/MSA-LMC/S2D, fine-tuned FERV39k weights from its
    README, plus `landmark/mobilefacenet_model_best.pth.tar`):

        # inside a checkout of MSA-LMC/S2D, with its requirements (timm==0.6.12, einops)
        import torch
        from timm.models import create_model
        import model_finetuning                      # registers s2d_base_patch16_224
        from landmark import Landmark

        class S2DFull(torch.nn.Module):
            def __init__(self, ckpt):
                super().__init__()
                self.vit = create_model("s2d_base_patch16_224", num_classes=7, num_frames=16,
                                        in_chans_l=128, head_dropout_ratio=0.0)
                state = torch.load(ckpt, map_location="cpu")
                self.vit.load_state_dict(state.get("model", state.get("module", state)))
                self.landmark = Landmark("MobileFaceNet")
            def forward(self, x):                    # x [B, 3, 16, 224, 224]
                return self.vit(x, self.landmark(x))[0]   # logits [B, 7]

        model = S2DFull("ckpts/<FERV39k checkpoint>.pth").eval()
        teacher = S2DTeacher.from_module(model)      # defaults match the above
        # or export once and use the CLI / factory spec "s2d:/path/s2d.pt":
        torch.jit.trace(model, torch.zeros(1, 3, 16, 224, 224)).save("s2d.pt")

    `load_video_teacher("s2d:PATH")` takes a TorchScript file (.pt/.ts) or an
    ONNX file (.onnx); a JSON sidecar (PATH with .json, same keys as for
    OnnxTeacher) may override classes, size, mean/std, layout, logits.
    Check the class order of your checkpoint: the defaults are FERV39k's.
    """

    clip_frames = S2D_CLIP_FRAMES

    def __init__(self, fn, identity: str, classes: list[str] | None = None, size: int = 224,
                 mean=IMAGENET_MEAN, std=IMAGENET_STD, layout: str = "ncthw", logits: bool = True,
                 clip_frames: int = S2D_CLIP_FRAMES, name: str = "s2d", batch: int = 4, device: str = "cpu"):
        if layout not in LAYOUTS_CLIP:
            raise LiserError(f"S2D teacher: layout {layout!r} not one of {LAYOUTS_CLIP}")
        self.fn = fn
        self.classes = list(classes or S2D_CLASSES)
        self.preprocess = Preprocess(size=size, color="rgb", scale=1.0 / 255.0, offset=0.0, mean=mean, std=std,
                                     interpolation="linear")
        self.layout = layout
        self.logits = bool(logits)
        self.clip_frames = int(clip_frames)
        self.name = name
        self.batch = int(batch)
        self.device = device
        ident = {"preprocess": self.preprocess.identity(), "classes": self.classes, "layout": layout,
                 "logits": self.logits, "clip_frames": self.clip_frames, "kind": "s2d"}
        self.hash = _hash_parts(identity.encode(), ident)

    @classmethod
    def from_module(cls, model, classes: list[str] | None = None, size: int = 224, mean=IMAGENET_MEAN,
                    std=IMAGENET_STD, identity: str | None = None, **kw) -> "S2DTeacher":
        """Wrap a torch module (or any callable: then `identity`, a string naming its weights, is required).

        The module gets float32 [B, 3, T, size, size] (layout "ncthw") and returns
        logits [B, K] (or a tuple whose first element is that, as S2D's own
        forward does). Its weights are hashed into the teacher hash.
        """
        if identity is None:
            if not hasattr(model, "state_dict"):
                raise LiserError("S2D teacher: a plain callable needs identity='...' (names its weights, for the store hash)")
            h = hashlib.sha256()
            for key, t in sorted(model.state_dict().items()):
                h.update(key.encode())
                h.update(t.detach().cpu().contiguous().numpy().tobytes())
            identity = h.hexdigest()
        if hasattr(model, "eval"):
            model.eval()
        return cls(model, identity, classes=classes, size=size, mean=mean, std=std, **kw)

    @classmethod
    def load(cls, path: str | Path, **overrides) -> "VideoTeacher":
        """An S2D model exported to TorchScript (.pt/.ts/.pth via torch.jit.save) or ONNX (.onnx)."""
        path = Path(path)
        if not path.is_file():
            raise LiserError(f"{path}: no such S2D model file")
        side = _sidecar(path)
        decl = json.loads(side.read_text()) if side is not None else {}
        decl.update(overrides)
        if path.suffix.lower() == ".onnx":
            args = {"classes": S2D_CLASSES, "size": 224, "mean": IMAGENET_MEAN, "std": IMAGENET_STD,
                    "layout": "ncthw", "logits": True, "clip_frames": S2D_CLIP_FRAMES, "name": "s2d", "batch": 4,
                    "interpolation": "linear"}
            args.update(decl)
            return OnnxTeacher(path, **args)
        import torch

        try:
            model = torch.jit.load(str(path), map_location="cpu")
        except Exception as e:  # torch raises RuntimeError or others for non-TorchScript files
            raise LiserError(f"{path}: not a TorchScript file ({str(e).strip().splitlines()[0][:160]})") from None
        identity = sha256_file(path).hexdigest()
        return cls.from_module(model, identity=identity, **decl)

    def predict_clips(self, clips: np.ndarray) -> np.ndarray:
        import torch

        clips = np.asarray(clips)
        if clips.ndim != 5:
            raise ValueError(f"clips must be [C, T, H, W, 3], got {clips.shape}")
        c, t = clips.shape[:2]
        if t != self.clip_frames:
            raise ValueError(f"{self.name}: clips of {t} frames, the model takes {self.clip_frames}")
        s = self.preprocess.size
        out = []
        for i in range(0, c, self.batch):
            part = clips[i : i + self.batch]
            x = self.preprocess(part.reshape(-1, *part.shape[2:])).reshape(len(part), t, s, s, 3)
            x = torch.from_numpy(_to_layout(x, self.layout)).to(self.device)
            with torch.inference_mode():
                y = self.fn(x)
            if isinstance(y, (tuple, list)):
                y = y[0]
            y = y.float().cpu().numpy().reshape(len(part), -1)
            if y.shape[1] != len(self.classes):
                raise LiserError(f"S2D teacher {self.name}: model gives {y.shape[1]} outputs, {len(self.classes)} classes declared")
            out.append(_softmax(y) if self.logits else y)
        return np.concatenate(out) if out else np.zeros((0, len(self.classes)), np.float32)


# ---------------------------------------------------------------- factory


def load_video_teacher(spec: str | Path, models_dir: str | Path | None = None, **kw) -> VideoTeacher:
    """A video teacher from a spec string.

    'fer2013-big' / 'fer2013-mini' (from `models_dir`, $LISER_MODELS or the
    shared models folder); a path to a Keras .hdf5/.h5 (FER-style 7 classes
    unless `classes=` is given); a path to an .onnx with its JSON sidecar;
    's2d:PATH' for an exported S2D model (see S2DTeacher).
    """
    spec = str(spec)
    if spec in FER_FILES:
        return fer_teacher(spec, models_dir, **kw)
    if spec.startswith("s2d:"):
        return S2DTeacher.load(spec[4:], **kw)
    path = Path(spec)
    suffix = path.suffix.lower()
    if suffix in (".hdf5", ".h5"):
        return KerasTeacher(path, **kw)
    if suffix == ".onnx":
        if not path.is_file():
            raise LiserError(f"{path}: no such ONNX file")
        return load_onnx_teacher(path, **kw)
    raise LiserError(f"video teacher {spec!r}: expected fer2013-big, fer2013-mini, a .hdf5, an .onnx or s2d:PATH")


# ---------------------------------------------------------------- pieces


def _track_arrays(track):
    crops = np.asarray(track.crops)
    times = np.asarray(track.times, dtype=np.float64)
    valid = np.asarray(track.valid, dtype=bool)
    if not (len(crops) == len(times) == len(valid)):
        raise ValueError(f"track arrays disagree: crops {len(crops)}, times {len(times)}, valid {len(valid)}")
    fps = float(getattr(track, "fps", 0.0) or 0.0)
    if fps <= 0:
        d = np.diff(times)
        d = d[d > 0]
        fps = float(1.0 / np.median(d)) if len(d) else 25.0
    return crops, times, valid, fps


def label_track(track, teacher: VideoTeacher, duration: float, piece_s: float = PIECE_S,
                min_face_frac: float = MIN_FACE_FRAC) -> tuple[np.ndarray, np.ndarray]:
    """Teacher probabilities for each piece of the audio timeline: (probs [P, K] float32, valid [P] bool).

    P = n_pieces(duration). `track` is a FaceTrack (or anything with crops,
    times, valid and optionally fps). Piece p covers [p*piece_s, (p+1)*piece_s)
    and "expects" fps times the part of it inside [0, duration) in frames.

    Per-frame teachers: a piece's probs are the mean over the face frames
    (valid) whose timestamps fall in the piece; the piece is valid when it has
    at least min_face_frac of its expected frames.

    Clip teachers (T = clip_frames): the frame sequence is cut into
    consecutive T-frame clips (stride T; a last shorter clip is padded with
    its last frame). A clip is used when at least min_face_frac * T of its
    frames have a face; its face-less frames are filled with the nearest face
    frame of the clip. A clip spans [time of its first frame, time of its last
    + 1/fps); a piece takes the plain mean of the used clips overlapping it
    and is valid when there is at least one.

    Invalid pieces hold zeros.
    """
    crops, times, valid, fps = _track_arrays(track)
    n_p = n_pieces(duration, piece_s)
    if len(times) == 0:
        return np.zeros((n_p, len(teacher.classes)), np.float32), np.zeros(n_p, bool)
    if teacher.clip_frames is None:
        probs, ok = _label_frames(teacher, crops, times, valid, fps, duration, n_p, piece_s, min_face_frac)
    else:
        probs, ok = _label_clips(teacher, crops, times, valid, fps, n_p, piece_s, min_face_frac)
    return probs.astype(np.float32), ok


def _label_frames(teacher, crops, times, valid, fps, duration, n_p, piece_s, min_face_frac):
    """label_track for a per-frame teacher: (probs [P, K] float64, valid [P]); see label_track."""
    probs = np.zeros((n_p, len(teacher.classes)), np.float64)
    starts = np.arange(n_p) * piece_s
    inside = np.clip(np.minimum(starts + piece_s, duration) - starts, 0.0, piece_s)
    expected = fps * inside
    piece = np.floor(times / piece_s + 1e-9).astype(np.int64)
    use = valid & (times >= 0) & (piece < n_p)
    idx = np.flatnonzero(use)
    counts = np.bincount(piece[idx], minlength=n_p)[:n_p]
    ok = (counts > 0) & (counts >= min_face_frac * expected - 1e-9)
    if not ok.any():
        return probs, ok
    keep = idx[ok[piece[idx]]]  # only frames of pieces that will be valid go through the model
    frame_probs = np.asarray(teacher.predict_frames(crops[keep]), np.float64)
    np.add.at(probs, piece[keep], frame_probs)
    probs[ok] /= counts[ok][:, None]
    return probs, ok


def _label_clips(teacher, crops, times, valid, fps, n_p, piece_s, min_face_frac):
    """label_track for a clip teacher (T = clip_frames): (probs [P, K] float64, valid [P]); see label_track."""
    probs = np.zeros((n_p, len(teacher.classes)), np.float64)
    t = int(teacher.clip_frames)
    n = len(times)
    clip_idx, spans = [], []
    for a in range(0, n, t):
        b = min(a + t, n)
        faces = np.flatnonzero(valid[a:b]) + a
        if len(faces) < min_face_frac * t - 1e-9:
            continue
        start, end = times[a], times[b - 1] + 1.0 / fps
        if start >= n_p * piece_s or end <= 0:
            continue
        frames = np.arange(a, a + t).clip(max=b - 1)  # pad a short last clip with its last frame
        # each face-less frame takes the nearest face frame of the clip
        nearest = faces[np.abs(frames[:, None] - faces[None, :]).argmin(axis=1)]
        frames = np.where(valid[frames], frames, nearest)
        clip_idx.append(frames)
        spans.append((start, end))
    if not clip_idx:
        return probs, np.zeros(n_p, bool)
    clip_probs = np.zeros((len(clip_idx), len(teacher.classes)), np.float64)
    for i in range(0, len(clip_idx), max(teacher.batch, 1)):
        sel = np.stack(clip_idx[i : i + teacher.batch])
        clip_probs[i : i + len(sel)] = teacher.predict_clips(crops[sel])
    counts = np.zeros(n_p, np.int64)
    for (start, end), cp in zip(np.asarray(spans), clip_probs):
        first = max(int(math.floor(start / piece_s + 1e-9)), 0)
        last = min(int(math.ceil(end / piece_s - 1e-9)), n_p)  # pieces [first, last) overlap [start, end)
        probs[first:last] += cp
        counts[first:last] += 1
    ok = counts > 0
    probs[ok] /= counts[ok][:, None]
    return probs, ok


def label_with_video_teacher(teacher: VideoTeacher, manifest, faces_dir: str | Path, store_dir: str | Path,
                             shard: tuple[int, int] = (0, 1), progress: bool = True, piece_s: float = PIECE_S,
                             min_face_frac: float = MIN_FACE_FRAC) -> SoftLabelStore | None:
    """Label every item of an audio-visual manifest (this shard's share) from its face track into a store.

    Reads `faces_dir/<safe_id(item id)>.npz` (liser.data.faces). Items with no track
    file, an unreadable one, or no face at all are rejected with the reason.
    The store is `video:<teacher name>`; a store made by another teacher (hash
    or classes) is refused by StoreWriter. Resumable; shard i of n takes items
    i, i+n, ...; finalized (and returned) only when every item of the manifest
    is done, else None.
    """
    from tqdm import tqdm

    i, n = check_shard(shard)
    faces_dir = Path(faces_dir)
    args = dict(teacher=f"video:{teacher.name}", classes=teacher.classes, teacher_hash=teacher.hash,
                piece_s=piece_s, shard=(i, n),
                extra={"clip_frames": teacher.clip_frames, "min_face_frac": min_face_frac,
                       "corpus": getattr(manifest, "corpus", "")})
    writer = StoreWriter(store_dir, **args)
    todo = [it for j, it in enumerate(manifest.items) if j % n == i and it.id not in writer.done]
    frames, t0 = 0, time.time()
    bar = tqdm(todo, desc=f"label video {i}/{n}", unit="video", disable=not progress)
    for it in bar:
        path = faces_dir / f"{safe_id(it.id)}.npz"
        if not path.is_file():
            writer.reject(it.id, f"{path}: no face track file")
            continue
        try:
            track = _load_track(path)
        except LiserError as e:
            writer.reject(it.id, str(e))
            continue
        if not np.asarray(track.valid).any():
            writer.reject(it.id, f"{path}: no face in any frame")
            continue
        probs, ok = label_track(track, teacher, it.duration, piece_s, min_face_frac)
        writer.add(it.id, probs, ok, it.duration)
        frames += len(track.times)
        bar.set_postfix(frames_per_s=f"{frames / max(time.time() - t0, 1e-9):.1f}")
    bar.close()
    writer.flush()
    check = StoreWriter(store_dir, **args)  # re-read every shard's parts: finalize only when all are done
    ids = [it.id for it in manifest.items]
    if all(x in check.done for x in ids):
        return check.finalize(expected_ids=ids)
    return None


@dataclass
class _Track:
    crops: np.ndarray
    times: np.ndarray
    valid: np.ndarray
    fps: float


def _load_track(path: Path):
    """A face track from .npz: liser.data.faces.FaceTrack when available, else its crops/times/valid/fps arrays."""
    try:
        from liser.data.faces import FaceTrack
    except ImportError:
        FaceTrack = None
    if FaceTrack is not None and hasattr(FaceTrack, "load"):
        return FaceTrack.load(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            return _Track(z["crops"], z["times"], z["valid"], float(z["fps"]) if "fps" in z.files else 0.0)
    except (KeyError, ValueError, OSError) as e:
        raise LiserError(f"{path}: not a liser face track ({str(e).strip()[:200]})") from None
