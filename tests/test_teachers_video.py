"""Video teacher: Keras HDF5 -> torch (FER2013 Xception), ONNX and S2D hooks, piece labeling, store writing."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
h5py = pytest.importorskip("h5py")
cv2 = pytest.importorskip("cv2")

from liser.data.corpora.base import Item, Manifest  # noqa: E402
from liser.core.errors import LiserError  # noqa: E402
from liser.teachers.store import SoftLabelStore, n_pieces  # noqa: E402
from liser.teachers.video.keras_layers import tf_same_padding  # noqa: E402
from liser.teachers.video.teacher import (  # noqa: E402
    FER2013_CLASSES,
    FER_FILES,
    S2D_CLASSES,
    OnnxTeacher,
    Preprocess,
    S2DTeacher,
    VideoTeacher,
    fer_teacher,
    label_track,
    label_with_video_teacher,
    load_keras_h5,
    load_video_teacher,
    safe_id,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DATA = SHARED / "data"
FER_DIR = SHARED / "models" / "fer2013-xception"
YUNET = SHARED / "models" / "face-detection" / "face_detection_yunet_2023mar.onnx"
DEMO = DATA / "av" / "demo"

needs_fer = pytest.mark.skipif(not all((FER_DIR / f).is_file() for f in FER_FILES.values()),
                               reason="FER2013 Xception weights not in ../shared/models")


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def fer():
    if not all((FER_DIR / f).is_file() for f in FER_FILES.values()):
        pytest.skip("FER2013 Xception weights not in ../shared/models")
    torch.set_num_threads(1)
    return {w: fer_teacher(w, FER_DIR.parent) for w in FER_FILES}


# ---------------------------------------------------------------- numpy references


def np_conv_valid(x, k, stride=(1, 1)):
    """Direct cross-correlation, channels-last: x [H, W, I], k [kh, kw, I, O] -> [H', W', O]."""
    kh, kw = k.shape[:2]
    oh = (x.shape[0] - kh) // stride[0] + 1
    ow = (x.shape[1] - kw) // stride[1] + 1
    out = np.zeros((oh, ow, k.shape[3]), np.float64)
    for i in range(oh):
        for j in range(ow):
            patch = x[i * stride[0] : i * stride[0] + kh, j * stride[1] : j * stride[1] + kw, :]
            out[i, j] = np.tensordot(patch, k, axes=([0, 1, 2], [0, 1, 2]))
    return out


def np_pad_same(x, kh, kw, stride, value=0.0):
    """TF 'same' padding by its definition: total = max((ceil(n/s)-1)*s + k - n, 0), extra pixel at the end."""
    pads = []
    for n, k, s in ((x.shape[0], kh, stride[0]), (x.shape[1], kw, stride[1])):
        total = max((-(-n // s) - 1) * s + k - n, 0)
        pads.append((total // 2, total - total // 2))
    return np.pad(x, (pads[0], pads[1], (0, 0)), constant_values=value)


def np_depthwise_same(x, dk):
    """Depthwise conv, 'same', stride 1: x [H, W, C], dk [kh, kw, C, 1]."""
    kh, kw = dk.shape[:2]
    xp = np_pad_same(x, kh, kw, (1, 1))
    out = np.zeros(x.shape, np.float64)
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            out[i, j] = (xp[i : i + kh, j : j + kw, :] * dk[:, :, :, 0]).sum(axis=(0, 1))
    return out


def to_nchw(x):
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)[None]).astype(np.float32))


def from_nchw(t):
    return t[0].numpy().transpose(1, 2, 0)


def h5_weights(path, layer):
    with h5py.File(path, "r") as h:
        g = h["model_weights"][layer]
        return {w.decode().split("/")[-1].split(":")[0]: np.asarray(g[w]) for w in g.attrs["weight_names"]}


# ---------------------------------------------------------------- Keras -> torch


def test_tf_same_padding_is_asymmetric():
    assert tf_same_padding(60, 3, 2) == (0, 1)  # even input, stride 2: the extra pixel goes after
    assert tf_same_padding(15, 3, 2) == (1, 1)
    assert tf_same_padding(64, 1, 2) == (0, 0)
    assert tf_same_padding(7, 3, 1) == (1, 1)
    assert tf_same_padding(8, 4, 1) == (1, 2)


@needs_fer
def test_both_h5_files_load_and_give_probabilities(fer):
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, (5, 64, 64, 3), dtype=np.uint8)
    hashes = set()
    for name, t in fer.items():
        assert t.classes == FER2013_CLASSES and t.clip_frames is None and t.name == name
        p = t.predict_frames(crops)
        assert p.shape == (5, 7) and p.dtype == np.float32
        np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)
        assert (p >= 0).all()
        # also directly on a 64x64 grayscale tensor in [-1, 1]
        model, shape = load_keras_h5(FER_DIR / FER_FILES[name])
        assert shape == (64, 64, 1)
        with torch.inference_mode():
            q = model(torch.rand(3, 1, 64, 64) * 2 - 1)
        np.testing.assert_allclose(q.sum(dim=1).numpy(), 1.0, atol=1e-5)
        hashes.add(t.hash)
    assert len(hashes) == 2
    assert fer_teacher("fer2013-mini", FER_DIR.parent).hash == fer["fer2013-mini"].hash  # stable


@needs_fer
def test_layers_match_numpy():
    """conv2d_1 (valid), separable_conv2d_1 ('same'), BN, and max-pool ('same', stride 2) against numpy."""
    path = FER_DIR / FER_FILES["fer2013-mini"]
    model, _ = load_keras_h5(path, fold_bn=False)
    rng = np.random.default_rng(1)

    x = rng.uniform(-1, 1, (64, 64, 1))
    k = h5_weights(path, "conv2d_1")["kernel"].astype(np.float64)  # (3, 3, 1, 8) HWIO
    with torch.inference_mode():
        got = from_nchw(model.layers["conv2d_1"](to_nchw(x)))
    np.testing.assert_allclose(got, np_conv_valid(x, k), atol=1e-5)

    x = rng.uniform(-1, 1, (30, 30, 8))
    w = h5_weights(path, "separable_conv2d_1")
    ref = np_conv_valid(np_depthwise_same(x, w["depthwise_kernel"].astype(np.float64)),
                        w["pointwise_kernel"].astype(np.float64))
    with torch.inference_mode():
        got = from_nchw(model.layers["separable_conv2d_1"](to_nchw(x)))
    assert got.shape == (30, 30, 16)
    np.testing.assert_allclose(got, ref, atol=1e-5)

    x = rng.uniform(-1, 1, (30, 30, 16))
    b = h5_weights(path, "batch_normalization_4")
    ref = b["gamma"] * (x - b["moving_mean"]) / np.sqrt(b["moving_variance"] + 1e-3) + b["beta"]
    with torch.inference_mode():
        got = from_nchw(model.layers["batch_normalization_4"](to_nchw(x)))
    np.testing.assert_allclose(got, ref, atol=1e-5)

    for n in (60, 15):  # max-pool 3x3 / 2 'same': padded cells never win
        x = rng.uniform(-1, 1, (n, n, 4))
        xp = np_pad_same(x, 3, 3, (2, 2), value=-np.inf)
        out = -(-n // 2)
        ref = np.array([[xp[2 * i : 2 * i + 3, 2 * j : 2 * j + 3].max(axis=(0, 1)) for j in range(out)] for i in range(out)])
        with torch.inference_mode():
            got = from_nchw(model.layers["max_pooling2d_1"](to_nchw(x)))
        np.testing.assert_allclose(got, ref, atol=1e-6)


@needs_fer
def test_folded_batchnorm_gives_the_same_numbers():
    x = torch.rand(4, 1, 64, 64) * 2 - 1
    for f in FER_FILES.values():
        a, _ = load_keras_h5(FER_DIR / f, fold_bn=False)
        b, _ = load_keras_h5(FER_DIR / f)
        n_bn = sum(type(m).__name__ == "KBatchNorm" for m in b.modules())
        assert n_bn < sum(type(m).__name__ == "KBatchNorm" for m in a.modules())
        with torch.inference_mode():
            np.testing.assert_allclose(b(x).numpy(), a(x).numpy(), atol=1e-5)


@pytest.mark.parametrize("n", [7, 8])
def test_stride2_same_conv_matches_tf_definition(n):
    """A 3x3 stride-2 'same' Conv2D: the extra padding row/column goes at the bottom/right."""
    from liser.teachers.video import keras_layers as K
    rng = np.random.default_rng(n)
    kernel = rng.normal(size=(3, 3, 2, 4)).astype(np.float32)
    bias = rng.normal(size=4).astype(np.float32)
    conv = K.KConv({"strides": [2, 2], "padding": "same", "activation": "linear"}, kernel, bias, "test")
    x = rng.normal(size=(n, n, 2))
    ref = np_conv_valid(np_pad_same(x, 3, 3, (2, 2)), kernel.astype(np.float64), (2, 2)) + bias
    with torch.inference_mode():
        got = from_nchw(conv(to_nchw(x)))
    assert got.shape == ref.shape == (-(-n // 2), -(-n // 2), 4)
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_separable_depth_multiplier_order():
    """Depthwise output channel c*mult + m is input channel c times depthwise[:, :, c, m] (Keras/TF order)."""
    from liser.teachers.video import keras_layers as K
    rng = np.random.default_rng(3)
    dk = rng.normal(size=(3, 3, 2, 2)).astype(np.float32)
    pk = rng.normal(size=(1, 1, 4, 3)).astype(np.float32)
    sep = K.KSeparable({"strides": [1, 1], "padding": "valid", "activation": "linear"}, dk, pk, None, "test")
    x = rng.normal(size=(6, 6, 2))
    mid = np.concatenate([np_conv_valid(x[:, :, c : c + 1], dk[:, :, c : c + 1, m : m + 1].astype(np.float64))
                          for c in range(2) for m in range(2)], axis=2)
    ref = np_conv_valid(mid, pk.astype(np.float64))
    with torch.inference_mode():
        got = from_nchw(sep(to_nchw(x)))
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_preprocess_fer_style():
    pre = Preprocess(size=64, color="gray", scale=2 / 255, offset=-1.0, interpolation="area")
    crops = np.zeros((2, 112, 112, 3), np.uint8)
    crops[1] = 255
    x = pre(crops)
    assert x.shape == (2, 64, 64, 1)
    np.testing.assert_allclose(x[0], -1.0)
    np.testing.assert_allclose(x[1], 1.0, atol=1e-6)
    rgb = np.random.default_rng(0).integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)
    gray = cv2.cvtColor(rgb[0], cv2.COLOR_RGB2GRAY)
    np.testing.assert_allclose(pre(rgb)[0, :, :, 0], gray / 255 * 2 - 1, atol=1e-6)
    with pytest.raises(LiserError):
        Preprocess(size=64, color="yuv")


def _demo_faces(name: str, n: int = 8) -> np.ndarray:
    """n evenly spaced frames of a demo video, the largest YuNet face cropped square and resized to 112."""
    av = pytest.importorskip("av")
    path = DEMO / name
    if not path.is_file() or not YUNET.is_file():
        pytest.skip(f"{path} or the YuNet model is not available")
    with av.open(str(path)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    crops = []
    for i in np.linspace(0, len(frames) - 1, n + 2)[1:-1].astype(int):
        img = frames[i]
        h, w = img.shape[:2]
        det = cv2.FaceDetectorYN.create(str(YUNET), "", (w, h), 0.6)
        _, faces = det.detect(cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        if faces is None:
            continue
        x, y, bw, bh = faces[np.argmax(faces[:, 2] * faces[:, 3]), :4]
        cx, cy, s = x + bw / 2, y + bh / 2, max(bw, bh)
        x0, y0 = int(max(cx - s / 2, 0)), int(max(cy - s / 2, 0))
        x1, y1 = int(min(cx + s / 2, w)), int(min(cy + s / 2, h))
        crops.append(cv2.resize(img[y0:y1, x0:x1], (112, 112), interpolation=cv2.INTER_AREA))
    assert len(crops) >= n // 2, f"{name}: too few faces found"
    return np.stack(crops)


@needs_fer
def test_real_faces_plausible(fer):
    sad = _demo_faces("mead_sad.mp4")
    surprised = _demo_faces("mead_surprised.mp4")
    for t in fer.values():
        m = t.predict_frames(sad).mean(axis=0)
        assert t.classes[int(m.argmax())] == "sad", (t.name, m)
        m = t.predict_frames(surprised).mean(axis=0)
        assert "surprise" in [t.classes[i] for i in np.argsort(-m)[:2]], (t.name, m)


# ---------------------------------------------------------------- ONNX


class TinyNet(torch.nn.Module):
    def __init__(self, k=5, channels_last=False):
        super().__init__()
        self.channels_last = channels_last
        self.conv = torch.nn.Conv2d(3, 6, 3, padding=1)
        self.fc = torch.nn.Linear(6, k)

    def forward(self, x):
        if self.channels_last:
            x = x.permute(0, 3, 1, 2)
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def _export(model, example, path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), example, str(path), input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, dynamo=False)


def test_onnx_teacher_matches_torch(tmp_path):
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    classes = ["a", "b", "c", "d", "e"]
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    crops = np.random.default_rng(0).integers(0, 256, (7, 48, 48, 3), dtype=np.uint8)

    net = TinyNet()
    _export(net, torch.zeros(1, 3, 32, 32), tmp_path / "m.onnx")
    t = OnnxTeacher(tmp_path / "m.onnx", classes, size=32, color="rgb", layout="nchw", mean=mean, std=std,
                    logits=True, batch=3)
    x = Preprocess(size=32, color="rgb", mean=mean, std=std)(crops)  # [N, 32, 32, 3]
    with torch.inference_mode():
        ref = torch.softmax(net(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())), dim=1).numpy()
    np.testing.assert_allclose(t.predict_frames(crops), ref, atol=1e-5)

    # BGR, NHWC, scale/offset; declared in a JSON sidecar and loaded through the factory
    net2 = TinyNet(channels_last=True)
    _export(net2, torch.zeros(1, 32, 32, 3), tmp_path / "m2.onnx")
    (tmp_path / "m2.json").write_text(json.dumps({"classes": classes, "size": 32, "color": "bgr", "layout": "nhwc",
                                                  "scale": 2 / 255, "offset": -1.0, "logits": True}))
    t2 = load_video_teacher(tmp_path / "m2.onnx")
    assert isinstance(t2, OnnxTeacher) and t2.classes == classes and t2.clip_frames is None
    x2 = Preprocess(size=32, color="bgr", scale=2 / 255, offset=-1.0)(crops)
    with torch.inference_mode():
        ref2 = torch.softmax(net2(torch.from_numpy(x2)), dim=1).numpy()
    np.testing.assert_allclose(t2.predict_frames(crops), ref2, atol=1e-5)
    assert t2.hash != t.hash

    (tmp_path / "m3.onnx").write_bytes((tmp_path / "m.onnx").read_bytes())
    with pytest.raises(LiserError, match="m3"):
        load_video_teacher(tmp_path / "m3.onnx")  # no sidecar: classes and size unknown
    (tmp_path / "m3.json").write_text(json.dumps({"classes": ["a", "b"], "size": 32}))
    with pytest.raises(LiserError, match="2 classes"):
        load_video_teacher(tmp_path / "m3.onnx").predict_frames(crops)


# ---------------------------------------------------------------- S2D hook


class FakeS2D(torch.nn.Module):
    """Stands in for S2D: [B, 3, 16, H, W] -> (logits [B, 7], features), like S2D's forward."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(3 * 16, 7)

    def forward(self, x):
        feat = x.mean(dim=(3, 4)).flatten(1)
        return self.fc(feat), feat


def test_s2d_hook_with_random_module(tmp_path):
    torch.manual_seed(0)
    model = FakeS2D()
    t = S2DTeacher.from_module(model, size=32)
    assert t.clip_frames == 16 and t.classes == S2D_CLASSES and t.name == "s2d"
    clips = np.random.default_rng(0).integers(0, 256, (3, 16, 40, 40, 3), dtype=np.uint8)
    p = t.predict_clips(clips)
    assert p.shape == (3, 7)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)
    pre = Preprocess(size=32, color="rgb", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                     interpolation="linear")
    x = pre(clips.reshape(-1, 40, 40, 3)).reshape(3, 16, 32, 32, 3).transpose(0, 4, 1, 2, 3)
    with torch.inference_mode():
        ref = torch.softmax(model(torch.from_numpy(x.copy()))[0], dim=1).numpy()
    np.testing.assert_allclose(p, ref, atol=1e-5)
    with pytest.raises(LiserError):
        t.predict_frames(clips[0])
    with pytest.raises(LiserError, match="identity"):
        S2DTeacher.from_module(lambda x: x)

    # TorchScript file + sidecar through the factory gives the same numbers
    class Logits(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            return self.m(x)[0]

    traced = torch.jit.trace(Logits(model).eval(), torch.zeros(1, 3, 16, 32, 32))
    traced.save(str(tmp_path / "s2d.pt"))
    (tmp_path / "s2d.json").write_text(json.dumps({"size": 32}))
    t2 = load_video_teacher(f"s2d:{tmp_path / 's2d.pt'}")
    np.testing.assert_allclose(t2.predict_clips(clips), p, atol=1e-5)
    assert t2.clip_frames == 16
    with pytest.raises(LiserError):
        load_video_teacher(f"s2d:{tmp_path / 'missing.pt'}")


# ---------------------------------------------------------------- piece labeling


class FrameStub(VideoTeacher):
    """Per-frame teacher whose probabilities are a known function of the crop's first pixel."""

    clip_frames = None
    classes = ["x", "y", "z"]
    name = "stub"
    hash = "stub-hash"

    def __init__(self):
        self.seen = 0

    @staticmethod
    def f(v):
        v = np.asarray(v, np.float64) / 100.0
        p = np.stack([np.exp(v), np.ones_like(v), np.exp(-v)], axis=-1)
        return p / p.sum(axis=-1, keepdims=True)

    def predict_frames(self, crops):
        self.seen += len(crops)
        return self.f(crops[:, 0, 0, 0]).astype(np.float32)


class ClipStub(VideoTeacher):
    """Clip teacher (T=16) whose output is a known function of the mean first pixel of the clip."""

    clip_frames = 16
    classes = ["x", "y", "z"]
    name = "clipstub"
    hash = "clip-hash"
    batch = 2

    def __init__(self):
        self.clips = []

    def predict_clips(self, clips):
        self.clips.extend(np.asarray(c[:, 0, 0, 0]) for c in clips)
        return FrameStub.f(clips[:, :, 0, 0, 0].astype(np.float64).mean(axis=1)).astype(np.float32)


def make_track(n, fps, valid, size=8):
    """Crops whose first pixel is the frame index (0 where there is no face)."""
    crops = np.zeros((n, size, size, 3), np.uint8)
    crops[:, 0, 0, 0] = np.arange(n) % 256
    valid = np.asarray(valid, bool)
    crops[~valid] = 0
    return type("Track", (), {"crops": crops, "times": np.arange(n) / fps, "valid": valid, "fps": fps})()


def test_label_track_per_frame_by_hand():
    # 25 fps, 2.0 s -> 4 pieces; piece frames: 0-12, 13-24, 25-37, 38-49; 12.5 expected, 6.25 needed
    valid = np.ones(50, bool)
    valid[13:25] = False  # piece 1: no face -> invalid
    valid[25:38] = False
    valid[30:36] = True  # piece 2: 6 faces < 6.25 -> invalid
    valid[38:43] = False  # piece 3: 43..49 = 7 faces >= 6.25 -> valid
    teacher = FrameStub()
    probs, ok = label_track(make_track(50, 25.0, valid), teacher, duration=2.0)
    assert probs.shape == (n_pieces(2.0), 3) == (4, 3)
    assert ok.tolist() == [True, False, False, True]
    np.testing.assert_allclose(probs[0], FrameStub.f(np.arange(0, 13)).mean(axis=0), atol=1e-6)
    np.testing.assert_allclose(probs[3], FrameStub.f(np.arange(43, 50)).mean(axis=0), atol=1e-6)
    assert (probs[1] == 0).all() and (probs[2] == 0).all()
    assert teacher.seen == 13 + 7  # only frames of valid pieces are run

    # frames past the audio are ignored; a short video leaves the last pieces invalid
    probs, ok = label_track(make_track(50, 25.0, np.ones(50, bool)), FrameStub(), duration=3.0)
    assert ok.tolist() == [True, True, True, True, False, False]
    probs, ok = label_track(make_track(50, 25.0, np.ones(50, bool)), FrameStub(), duration=1.0)
    assert ok.tolist() == [True, True]
    np.testing.assert_allclose(probs[1], FrameStub.f(np.arange(13, 25)).mean(axis=0), atol=1e-6)

    # no fps attribute: estimated from the timestamps; min_face_frac=0.9 makes 12/12.5 frames enough
    t = make_track(50, 25.0, np.ones(50, bool))
    del_fps = type("T", (), {"crops": t.crops, "times": t.times, "valid": t.valid})()
    _, ok = label_track(del_fps, FrameStub(), duration=2.0, min_face_frac=0.9)
    assert ok.all()
    _, ok = label_track(del_fps, FrameStub(), duration=2.0, min_face_frac=1.0)
    assert ok.tolist() == [True, False, True, False]  # 13 frames >= 12.5, 12 frames < 12.5


def test_label_track_clips_by_hand():
    # 30 fps, 2.0 s, 60 frames -> clips 0-15 [0, .533), 16-31 [.533, 1.067), 32-47 [1.067, 1.6), 48-59 [1.6, 2.0)
    valid = np.ones(60, bool)
    valid[16:25] = False  # clip 1: 7 faces < 8 -> unused
    valid[34] = False  # clip 2: used, frame 34 filled from its nearest face frame (33)
    teacher = ClipStub()
    probs, ok = label_track(make_track(60, 30.0, valid), teacher, duration=2.0)
    assert ok.tolist() == [True, True, True, True]
    c0 = FrameStub.f(np.arange(0, 16).mean())
    idx2 = np.arange(32, 48)
    idx2[idx2 == 34] = 33
    c2 = FrameStub.f(idx2.mean())
    last = np.r_[np.arange(48, 60), [59] * 4]  # short last clip padded with its last frame
    c3 = FrameStub.f(last.mean())
    np.testing.assert_allclose(probs[0], c0, atol=1e-6)  # piece 0: clip 0
    np.testing.assert_allclose(probs[1], c0, atol=1e-6)  # piece 1: clip 0 (clip 1 unused)
    np.testing.assert_allclose(probs[2], c2, atol=1e-6)  # piece 2: clip 2 (clip 1 unused)
    np.testing.assert_allclose(probs[3], (c2 + c3) / 2, atol=1e-6)  # piece 3: clips 2 and 3
    assert len(teacher.clips) == 3
    np.testing.assert_array_equal(teacher.clips[1], idx2)
    np.testing.assert_array_equal(teacher.clips[2], last)

    # all clips used: piece 1 = mean(clip 0, clip 1), piece 2 = mean(clip 1, clip 2)
    probs, ok = label_track(make_track(60, 30.0, np.ones(60, bool)), ClipStub(), duration=2.0)
    c1 = FrameStub.f(np.arange(16, 32).mean())
    c2 = FrameStub.f(np.arange(32, 48).mean())
    np.testing.assert_allclose(probs[1], (c0 + c1) / 2, atol=1e-6)
    np.testing.assert_allclose(probs[2], (c1 + c2) / 2, atol=1e-6)

    # clips 1 and 2 unused -> piece 2 has no clip -> invalid
    valid = np.ones(60, bool)
    valid[16:48] = False
    probs, ok = label_track(make_track(60, 30.0, valid), ClipStub(), duration=2.0)
    assert ok.tolist() == [True, True, False, True]
    assert (probs[2] == 0).all()


# ---------------------------------------------------------------- store


def save_track(path, track):
    n = len(track.times)
    np.savez_compressed(path, crops=track.crops, times=track.times, valid=track.valid,
                        boxes=np.zeros((n, 4), np.float32), landmarks=np.zeros((n, 5, 2), np.float32),
                        scores=np.zeros(n, np.float32), fps=np.float64(track.fps), source=np.str_("fake.mp4"),
                        detector=np.str_("test"))


def test_safe_id_matches_faces():
    assert safe_id("msp/spk 1/clip:a") == "msp__spk_1__clip_a"
    faces = pytest.importorskip("liser.data.faces")
    if hasattr(faces, "safe_id"):
        for s in ("a/b/c", "x y/z.mp4", ".hidden/q", "ü/é"):
            assert safe_id(s) == faces.safe_id(s)


def test_label_with_video_teacher_store_and_resume(tmp_path):
    faces_dir = tmp_path / "faces"
    faces_dir.mkdir()
    items = [
        Item("av/s1/a", "s1/a.mp4", "s1", "", 2.0, 16000, 1, "av"),
        Item("av/s1/b", "s1/b.mp4", "s1", "", 1.2, 16000, 1, "av"),  # no track file
        Item("av/s2/c", "s2/c.mp4", "s2", "", 1.0, 16000, 1, "av"),  # no face at all
        Item("av/s2/d", "s2/d.mp4", "s2", "", 1.3, 16000, 1, "av"),
    ]
    manifest = Manifest("av", tmp_path, items)
    valid_a = np.ones(50, bool)
    valid_a[13:25] = False
    save_track(faces_dir / f"{safe_id('av/s1/a')}.npz", make_track(50, 25.0, valid_a))
    save_track(faces_dir / f"{safe_id('av/s2/c')}.npz", make_track(25, 25.0, np.zeros(25, bool)))
    save_track(faces_dir / f"{safe_id('av/s2/d')}.npz", make_track(33, 25.0, np.ones(33, bool)))
    store_dir = tmp_path / "store"

    assert label_with_video_teacher(FrameStub(), manifest, faces_dir, store_dir, shard=(0, 2), progress=False) is None
    store = label_with_video_teacher(FrameStub(), manifest, faces_dir, store_dir, shard=(1, 2), progress=False)
    assert isinstance(store, SoftLabelStore)
    assert store.teacher == "video:stub" and store.classes == ["x", "y", "z"] and store.teacher_hash == "stub-hash"
    assert store.ids == ["av/s1/a", "av/s2/d"]
    p, v = store.pieces("av/s1/a")
    assert p.shape == (4, 3) and v.tolist() == [True, False, True, True]
    np.testing.assert_allclose(p[0], FrameStub.f(np.arange(13)).mean(axis=0), atol=2e-3)  # float16 store
    p, v = store.pieces("av/s2/d")  # 1.3 s -> 3 pieces; the last (0.3 s, 8 frames of 7.5 expected) is valid
    assert len(p) == n_pieces(1.3) == 3 and v.all()
    rejected = (store_dir / "rejected.csv").read_text()
    assert "av/s1/b" in rejected and "no face track file" in rejected
    assert "av/s2/c" in rejected and "no face in any frame" in rejected

    # resume: nothing is run again, the store is finalized the same
    t = FrameStub()
    store2 = label_with_video_teacher(t, manifest, faces_dir, store_dir, progress=False)
    assert t.seen == 0 and store2.ids == store.ids

    # a teacher with other classes is refused by the store
    class Other(FrameStub):
        classes = ["x", "y"]

    with pytest.raises(LiserError, match="another teacher"):
        label_with_video_teacher(Other(), manifest, faces_dir, store_dir, progress=False)


@needs_fer
def test_fer_teacher_labels_a_track(fer):
    crops = np.random.default_rng(0).integers(0, 256, (30, 112, 112, 3), dtype=np.uint8)
    track = type("T", (), {"crops": crops, "times": np.arange(30) / 30.0, "valid": np.ones(30, bool), "fps": 30.0})()
    probs, ok = label_track(track, fer["fer2013-mini"], duration=1.0)
    assert ok.all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(probs[0], fer["fer2013-mini"].predict_frames(crops[:15]).mean(axis=0), atol=1e-5)


def test_factory_errors(tmp_path, monkeypatch):
    with pytest.raises(LiserError, match="expected"):
        load_video_teacher("nonsense")
    monkeypatch.setenv("LISER_MODELS", str(tmp_path))
    with pytest.raises(LiserError, match="LISER_MODELS"):
        load_video_teacher("fer2013-mini")
    with pytest.raises(LiserError, match="no such"):
        load_video_teacher(tmp_path / "x.hdf5")
    bad = tmp_path / "bad.hdf5"
    bad.write_bytes(b"not hdf5")
    with pytest.raises(LiserError, match="bad.hdf5"):
        load_video_teacher(bad)
