"""Faces out of talking-face video: detect, follow one face, align, crop.

The video teacher needs, for every frame, an aligned crop of the speaker's
face (the paper used DeepFace; here OpenCV does the same three steps):

1. Detection: YuNet (`cv2.FaceDetectorYN`, boxes + 5 landmarks) on a copy of
   the frame shrunk to `coarse_side` px (longer side) first, and again at up
   to `detect_side` px only when the coarse pass does not find the tracked
   face (detection dominates the cost; halving the side doubles the speed
   while talking faces are large). OpenCV's Haar cascade when the YuNet
   ONNX file is not available (eye cascade for the eyes, the other
   landmarks estimated from the box).
2. Main face: the largest, most central face starts the track; in later
   frames the detection overlapping the previous box most (IoU), or failing
   that the nearest one, continues it. A face is re-acquired from scratch
   only after the track has been lost for `REACQUIRE_S` seconds, so the
   identity stays the same through short misses. With two people in the
   frame this (`face_select="largest"`, the default) follows the larger
   (more central) face, even while the voice is the other person's.
   `face_select="active"` looks at the audio as well: every face of every
   frame is linked into candidate tracks (IoU, as above), each candidate's
   mouth motion (the frame-to-frame change of the vertical profile of the
   mouth region of its aligned face: lips opening and closing) is
   correlated with the audio's short-time spectral change (how much the
   40 ms log spectrum moves from one frame to the next), and in each frame
   the present candidate with the highest correlation is the one kept.
   The spectral change rather than the energy level: the energy level was
   tried first and did not tell a face's own audio from another's on the
   shared interview clips. It falls back to the largest face, with the
   reason logged and stored in the track (`selection`, `selection_note`),
   when the file has no audio or a silent one, or when fewer than two faces
   were seen long enough (`ACTIVE_MIN_S`) to be scored; frames where fewer
   than two scored candidates are present keep the largest face's choice.
   The signal is weak (YuNet's 5 landmarks have no upper or lower lip, so
   the mouth's opening is not measured directly, and compression blurs
   small mouths): bench/bench_face_select.py measures how often it keeps the
   speaker. It decodes the video a second time for the frames it changes.
3. Alignment: a similarity transform (rotation, scale, shift) of the 5
   landmarks onto the ArcFace 112x112 template scaled to `size`, applied to
   the full-resolution frame with `cv2.warpAffine`.

Frames without the face keep a zero crop and valid=False: nothing is
invented or interpolated. Landmark order everywhere is YuNet's: right eye,
left eye, nose tip, right mouth corner, left mouth corner (the person's
right, i.e. the image's left for a frontal face). Boxes are (x1, y1, x2, y2)
in pixels of the upright frame.

cv2 is imported inside functions so that importing liser stays fast.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from liser.core.errors import LiserError
from liser.core.atomic import atomic_path, atomic_write_text
from liser.core.util import check_shard, models_dir, safe_id  # safe_id: the face-track file names

log = logging.getLogger(__name__)  # active-speaker fallbacks are said here (and stored in the track)

DEFAULT_YUNET = models_dir() / "face-detection" / "face_detection_yunet_2023mar.onnx"  # $LISER_MODELS or ../shared/models
YUNET_ENV = "LISER_YUNET"  # environment variable naming the YuNet .onnx file
SCORE_THRESHOLD = 0.6  # YuNet detection score threshold
DETECT_SIDE = 640  # frames are shrunk to this longer side for detection only ...
COARSE_SIDE = 320  # ... and to this one for the first, cheaper try
REACQUIRE_S = 1.0  # after this long without the tracked face, pick the main face anew
MATCH_IOU = 0.1  # a detection overlapping the previous box at least this much continues the track
FACE_SELECT = ("largest", "active")  # which face a track follows when there are several (module docstring)
ACTIVE_MIN_S = 1.0  # active: a candidate needs this many seconds of mouth motion to be scored
ACTIVE_SMOOTH = 5  # active: frames of the centred moving average applied to both signals before correlating (0.2 s)
MOUTH_SIDE = 64  # active: the face is aligned at this size for its mouth patch ...
MOUTH_ROWS, MOUTH_COLS = slice(44, 62), slice(18, 46)  # ... and this is the patch: around the template's mouth corners
AUDIO_WINDOW_S = 0.04  # active: the audio spectrum of a frame is taken over this long a Hann window at its time ...
AUDIO_BAND_HZ = (100.0, 4000.0)  # ... between these frequencies (voice, not rumble or hiss)

# ArcFace 5-point template for a 112x112 crop (insightface), YuNet's order.
ARCFACE_112 = np.array(
    [
        [38.2946, 51.6963],  # right eye (image left)
        [73.5318, 51.5014],  # left eye
        [56.0252, 71.7366],  # nose tip
        [41.5493, 92.3655],  # right mouth corner
        [70.7299, 92.2041],  # left mouth corner
    ],
    dtype=np.float32,
)

# Landmarks as fractions of a Haar face box (x, y), used when the eye cascade finds no eye pair.
HAAR_LANDMARKS = np.array([[0.32, 0.40], [0.68, 0.40], [0.50, 0.60], [0.35, 0.78], [0.65, 0.78]], dtype=np.float32)


def template(size: int = 112) -> np.ndarray:
    """The ArcFace template scaled to a size x size crop, [5, 2] float32."""
    return ARCFACE_112 * (size / 112.0)


@dataclass
class Detections:
    """Faces found in one frame: boxes [K,4] (x1,y1,x2,y2), landmarks [K,5,2], scores [K]."""

    boxes: np.ndarray
    landmarks: np.ndarray
    scores: np.ndarray

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    @staticmethod
    def empty() -> "Detections":
        return Detections(np.zeros((0, 4), np.float32), np.zeros((0, 5, 2), np.float32), np.zeros(0, np.float32))

    def scaled(self, factor: float) -> "Detections":
        """Coordinates multiplied by `factor` (detection-size frame -> full frame)."""
        return Detections(self.boxes * factor, self.landmarks * factor, self.scores)


def _resolve_yunet(model_path: str | Path | None) -> Path | None:
    """The YuNet file to use: the argument, else $LISER_YUNET, else the shared copy; None if missing."""
    if model_path is not None:
        p = Path(model_path)
        if not p.is_file():
            raise LiserError(f"{p}: YuNet model file not found")
        return p
    for cand in (os.environ.get(YUNET_ENV), DEFAULT_YUNET):
        if cand and Path(cand).is_file():
            return Path(cand)
    return None


class FaceDetector:
    """YuNet face detector with 5 landmarks, or the Haar cascade fallback.

    `backend`: "auto" (YuNet when its file is found, else Haar), "yunet" or
    "haar". `detect(rgb)` takes an RGB uint8 frame and returns Detections in
    that frame's pixel coordinates. The frame is shrunk to `detect_side`
    (longer side), or to `coarse_side` with `coarse=True`, for detection;
    coordinates are scaled back.
    """

    def __init__(
        self,
        model_path: str | Path | None = None,
        backend: str = "auto",
        score_threshold: float = SCORE_THRESHOLD,
        detect_side: int = DETECT_SIDE,
        coarse_side: int = COARSE_SIDE,
    ):
        import cv2

        if backend not in ("auto", "yunet", "haar"):
            raise LiserError(f"face detector backend {backend!r}: expected auto, yunet or haar")
        self.detect_side = int(detect_side)
        self.coarse_side = min(int(coarse_side), self.detect_side)
        self.score_threshold = float(score_threshold)
        path = _resolve_yunet(model_path) if backend != "haar" else None
        if backend == "yunet" and path is None:
            raise LiserError(f"YuNet model not found (pass model_path or set ${YUNET_ENV}; default {DEFAULT_YUNET})")
        self._input_size = None
        if path is not None:
            self.name = "yunet"
            self.model_path = str(path)
            try:
                self._net = cv2.FaceDetectorYN.create(str(path), "", (320, 320), score_threshold=self.score_threshold)
            except cv2.error as e:
                raise LiserError(f"{path}: cannot load the YuNet model ({str(e).strip().splitlines()[-1][:200]})") from None
        else:
            self.name = "haar"
            self.model_path = cv2.data.haarcascades + "haarcascade_frontalface_default.xml"
            self._face = cv2.CascadeClassifier(self.model_path)
            self._eyes = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_eye.xml")
            if self._face.empty():
                raise LiserError(f"{self.model_path}: cannot load the Haar face cascade")

    def has_finer(self, shape: tuple[int, ...]) -> bool:
        """Whether a full detect() sees more pixels than a coarse one for frames of this shape."""
        return max(shape[:2]) > self.coarse_side

    def detect(self, rgb: np.ndarray, coarse: bool = False) -> Detections:
        """Faces in an RGB uint8 HxWx3 frame, best score first."""
        import cv2

        h, w = rgb.shape[:2]
        scale = min(1.0, (self.coarse_side if coarse else self.detect_side) / max(h, w))
        small = rgb
        if scale < 1.0:
            small = cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
        bgr = cv2.cvtColor(small, cv2.COLOR_RGB2BGR)
        dets = self._yunet(bgr) if self.name == "yunet" else self._haar(bgr)
        return dets.scaled(1.0 / scale) if scale < 1.0 else dets

    def _yunet(self, bgr: np.ndarray) -> Detections:
        size = (bgr.shape[1], bgr.shape[0])
        if size != self._input_size:
            self._net.setInputSize(size)
            self._input_size = size
        _, faces = self._net.detect(bgr)
        if faces is None or len(faces) == 0:
            return Detections.empty()
        faces = np.asarray(faces, dtype=np.float32)
        faces = faces[np.isfinite(faces).all(axis=1)]  # YuNet can return NaN rows on tiny/noisy inputs
        faces = faces[_plausible(faces[:, 0:4], size)]  # ... and, now and then, boxes 1e8 px wide (score 0.9999)
        if len(faces) == 0:
            return Detections.empty()
        boxes = faces[:, 0:4].copy()
        boxes[:, 2:4] += boxes[:, 0:2]  # x, y, w, h -> x1, y1, x2, y2
        order = np.argsort(-faces[:, 14])
        return Detections(boxes[order], faces[order, 4:14].reshape(-1, 5, 2), faces[order, 14])

    def _haar(self, bgr: np.ndarray) -> Detections:
        import cv2

        gray = cv2.equalizeHist(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))
        min_side = max(20, int(0.08 * min(gray.shape)))
        rects = self._face.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(min_side, min_side))
        if len(rects) == 0:
            return Detections.empty()
        boxes, marks = [], []
        for x, y, w, h in np.asarray(rects, dtype=np.float32):
            lm = HAAR_LANDMARKS * np.array([w, h], np.float32) + np.array([x, y], np.float32)
            eyes = self._eye_pair(gray, int(x), int(y), int(w), int(h))
            if eyes is not None:
                lm[0:2] = eyes
            boxes.append([x, y, x + w, y + h])
            marks.append(lm)
        boxes = np.asarray(boxes, np.float32)
        order = np.argsort(-(boxes[:, 2] - boxes[:, 0]))  # no scores from Haar: largest first
        return Detections(boxes[order], np.asarray(marks, np.float32)[order], np.ones(len(boxes), np.float32))

    def _eye_pair(self, gray: np.ndarray, x: int, y: int, w: int, h: int) -> np.ndarray | None:
        """Centres of two eyes in the upper half of a face box, image-left first; None unless plausible."""
        roi = gray[y : y + h // 2, x : x + w]
        eyes = self._eyes.detectMultiScale(roi, scaleFactor=1.1, minNeighbors=5, minSize=(max(5, w // 10), max(5, w // 10)))
        if len(eyes) < 2:
            return None
        eyes = sorted(eyes, key=lambda e: -e[2] * e[3])[:2]
        centres = np.array([[x + ex + ew / 2, y + ey + eh / 2] for ex, ey, ew, eh in eyes], np.float32)
        centres = centres[np.argsort(centres[:, 0])]
        dx, dy = centres[1] - centres[0]
        if dx < 0.2 * w or abs(dy) > 0.5 * dx:  # the same eye twice, or an eyebrow/nostril pair
            return None
        return centres


def iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Intersection over union of one (x1,y1,x2,y2) box with each of `boxes` [K,4]."""
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2])
    y2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda b: np.clip(b[..., 2] - b[..., 0], 0, None) * np.clip(b[..., 3] - b[..., 1], 0, None)  # noqa: E731
    return inter / np.maximum(area(box) + area(boxes) - inter, 1e-9)


def pick_main_face(dets: Detections, frame_shape: tuple[int, int], prev_box: np.ndarray | None) -> int | None:
    """Index of the tracked face among `dets`, or None.

    Without a previous box: the face with the best size-and-centrality score
    (sqrt(area) / frame side, minus the centre's distance / frame diagonal).
    With one: the detection with the highest IoU (>= MATCH_IOU), else the
    nearest centre within one previous box width; None when neither exists.
    """
    if len(dets) == 0:
        return None
    h, w = frame_shape[:2]
    boxes = dets.boxes
    centres = (boxes[:, 0:2] + boxes[:, 2:4]) / 2
    if prev_box is None:
        area = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
        off = np.linalg.norm(centres - np.array([w / 2, h / 2]), axis=1) / np.hypot(w, h)
        return int(np.argmax(np.sqrt(area) / min(h, w) - off))
    overlap = iou(prev_box, boxes)
    if overlap.max() >= MATCH_IOU:
        return int(np.argmax(overlap))
    prev_c = (prev_box[0:2] + prev_box[2:4]) / 2
    dist = np.linalg.norm(centres - prev_c, axis=1)
    j = int(np.argmin(dist))
    return j if dist[j] <= max(prev_box[2] - prev_box[0], 1.0) else None


def align_face(rgb: np.ndarray, landmarks: np.ndarray, size: int = 112) -> np.ndarray | None:
    """Warp a face onto the ArcFace template: size x size RGB crop, or None if no transform fits."""
    import cv2

    src = np.asarray(landmarks, np.float32).reshape(5, 2)
    dst = template(size)
    m, _ = cv2.estimateAffinePartial2D(src, dst, method=cv2.LMEDS)
    if m is None or not np.isfinite(m).all():
        return None
    return cv2.warpAffine(rgb, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


@dataclass
class FaceTrack:
    """The main face of one video, frame by frame (N frames)."""

    crops: np.ndarray  # uint8 [N, size, size, 3] RGB; zeros where valid is False
    times: np.ndarray  # float64 [N] frame timestamps, seconds
    valid: np.ndarray  # bool [N] the main face was found and aligned
    boxes: np.ndarray  # float32 [N, 4] x1, y1, x2, y2 in frame pixels (0 where invalid)
    landmarks: np.ndarray  # float32 [N, 5, 2] (0 where invalid)
    fps: float  # average frame rate of the track (requested fps, or the video's)
    source: str  # the video's path
    scores: np.ndarray | None = None  # float32 [N] detector score (0 where invalid)
    detector: str = ""  # "yunet" or "haar"
    selection: str = "largest"  # which rule made the track: "largest" or "active" (FACE_SELECT)
    selection_note: str = ""  # active: the candidates' correlations, or why it fell back to the largest face

    @property
    def size(self) -> int:
        return int(self.crops.shape[1])

    def __len__(self) -> int:
        return int(self.times.shape[0])

    def save(self, path: str | Path) -> Path:
        """Compressed .npz, written to a temporary file and renamed (never half-written; liser.core.atomic)."""
        path = Path(path)
        with atomic_path(path, mkdir=True) as tmp, open(tmp, "wb") as f:
            np.savez_compressed(
                f,
                crops=self.crops,
                times=self.times.astype(np.float64),
                valid=self.valid.astype(bool),
                boxes=self.boxes.astype(np.float32),
                landmarks=self.landmarks.astype(np.float32),
                scores=(self.scores if self.scores is not None else np.zeros(len(self), np.float32)).astype(np.float32),
                fps=np.float64(self.fps),
                source=np.str_(self.source),
                detector=np.str_(self.detector),
                selection=np.str_(self.selection),
                selection_note=np.str_(self.selection_note),
            )
        return path

    @classmethod
    def load(cls, path: str | Path) -> "FaceTrack":
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                return cls(
                    crops=z["crops"],
                    times=z["times"],
                    valid=z["valid"],
                    boxes=z["boxes"],
                    landmarks=z["landmarks"],
                    fps=float(z["fps"]),
                    source=str(z["source"]),
                    scores=z["scores"] if "scores" in z.files else None,
                    detector=str(z["detector"]) if "detector" in z.files else "",
                    selection=str(z["selection"]) if "selection" in z.files else "largest",  # files before --face-select
                    selection_note=str(z["selection_note"]) if "selection_note" in z.files else "",
                )
        except FileNotFoundError:
            raise LiserError(f"{path}: no such face track file") from None
        except (KeyError, ValueError, OSError) as e:
            raise LiserError(f"{path}: not a liser face track ({str(e).strip()[:200]})") from None


def _plausible(xywh: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Which YuNet boxes [N, 4] (x, y, w, h, pixels) can be a face in a frame of `size` (width, height): a
    positive width and height at most twice the frame's, and a centre inside the frame. [N] bool."""
    w, h = size
    cx, cy = xywh[:, 0] + xywh[:, 2] / 2, xywh[:, 1] + xywh[:, 3] / 2
    return ((xywh[:, 2] > 0) & (xywh[:, 3] > 0) & (xywh[:, 2] <= 2 * w) & (xywh[:, 3] <= 2 * h)
            & (cx >= 0) & (cx <= w) & (cy >= 0) & (cy <= h))


def track_faces(frames, detector: FaceDetector, size: int = 112, observe=None):
    """Detect, follow and align the main face over (t, rgb) frames.

    Returns lists (times, crops, valid, boxes, landmarks, scores). A frame
    object repeated by fps resampling reuses the previous frame's result.
    `observe(t, rgb, dets, j)`, when given, sees every frame with all the
    faces detected in it and the index of the main face (None when none).
    """
    times, crops, valid, boxes, marks, scores = [], [], [], [], [], []
    prev_box, last_seen = None, None
    last_img, last_result = None, None
    zero_crop = np.zeros((size, size, 3), np.uint8)
    for t, img in frames:
        if img is last_img and last_result is not None:
            result = last_result
        else:
            if prev_box is not None and last_seen is not None and t - last_seen > REACQUIRE_S:
                prev_box = None  # lost for too long: start over with the main face of this frame
            dets = detector.detect(img, coarse=True)
            j = pick_main_face(dets, img.shape, prev_box)
            if j is None and detector.has_finer(img.shape):  # not found cheaply: look closer
                dets = detector.detect(img)
                j = pick_main_face(dets, img.shape, prev_box)
            crop = align_face(img, dets.landmarks[j], size) if j is not None else None
            if crop is None:
                result = (zero_crop, False, np.zeros(4, np.float32), np.zeros((5, 2), np.float32), 0.0)
            else:
                prev_box, last_seen = dets.boxes[j], t
                result = (crop, True, dets.boxes[j], dets.landmarks[j], float(dets.scores[j]))
            last_img, last_result = img, result
        if observe is not None:
            observe(t, img, dets, j)
        times.append(t)
        crops.append(result[0])
        valid.append(result[1])
        boxes.append(result[2])
        marks.append(result[3])
        scores.append(result[4])
    return times, crops, valid, boxes, marks, scores


# ---------------------------------------------------------------- active speaker (face_select="active")


class _AllFaces:
    """What pass 1 of the active rule keeps of each frame: its faces, the main face's index, their mouth profiles."""

    def __init__(self):
        self.times, self.dets, self.main, self.profiles, self.repeat = [], [], [], [], []
        self._last = None

    def __call__(self, t: float, rgb: np.ndarray, dets: Detections, j: int | None) -> None:
        repeat = rgb is self._last  # fps resampling yields the same frame object again: no new motion
        self._last = rgb
        self.times.append(t)
        self.dets.append(dets)
        self.main.append(-1 if j is None else int(j))
        self.repeat.append(repeat)
        self.profiles.append(self.profiles[-1] if repeat else [mouth_profile(rgb, lm) for lm in dets.landmarks])


def mouth_profile(rgb: np.ndarray, landmarks: np.ndarray) -> np.ndarray | None:
    """Vertical profile of the mouth of a face aligned at MOUTH_SIDE px: float32 [18], the gray patch's row
    means minus its mean (lips parting move dark and bright rows); None when no alignment fits.

    Aligned by the least-squares similarity of all 5 landmarks (similarity_transform), not align_face's
    LMEDS: that one draws point subsets from OpenCV's process-wide random state, so the same frame could
    give another profile, and a motion signal this weak changed its verdict with it.
    """
    import cv2

    m = similarity_transform(landmarks, template(MOUTH_SIDE))
    if m is None:
        return None
    gray = cv2.cvtColor(cv2.warpAffine(rgb, m, (MOUTH_SIDE, MOUTH_SIDE), flags=cv2.INTER_LINEAR), cv2.COLOR_RGB2GRAY)
    rows = gray[MOUTH_ROWS, MOUTH_COLS].astype(np.float32).mean(axis=1)
    return rows - rows.mean()  # a change of brightness is not a moving mouth


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray | None:
    """The rotation + uniform scale + shift taking points `src` [P, 2] closest to `dst` [P, 2] in least squares
    (Umeyama 1991): float32 [2, 3] for cv2.warpAffine; None for degenerate or non-finite points."""
    src, dst = np.asarray(src, np.float64).reshape(-1, 2), np.asarray(dst, np.float64).reshape(-1, 2)
    if not (np.isfinite(src).all() and np.isfinite(dst).all()):
        return None
    s, d = src - src.mean(axis=0), dst - dst.mean(axis=0)
    var = (s**2).sum() / len(s)
    if var <= 1e-12:
        return None
    u, sv, vt = np.linalg.svd(d.T @ s / len(s))
    flip = np.diag([1.0, -1.0 if np.linalg.det(u) * np.linalg.det(vt) < 0 else 1.0])  # a rotation, not a mirror
    rot = u @ flip @ vt
    scale = float(np.trace(np.diag(sv) @ flip)) / var
    shift = dst.mean(axis=0) - scale * rot @ src.mean(axis=0)
    return np.hstack([scale * rot, shift[:, None]]).astype(np.float32)


def link_candidates(dets: list[Detections], times) -> np.ndarray:
    """Every face of every frame linked into candidate tracks: int64 [C, N], the detection index per frame or -1.

    A candidate continues with the free detection overlapping its last box
    most (IoU >= MATCH_IOU; older candidates choose first) until it has been
    missing for more than REACQUIRE_S; a detection continuing none starts a
    new candidate.
    """
    n = len(dets)
    rows, last = [], []  # last: (box, time) of each candidate
    for i, (d, t) in enumerate(zip(dets, times)):
        free = np.ones(len(d), bool)
        for c, (box, seen) in enumerate(last):
            if t - seen > REACQUIRE_S or not free.any():
                continue
            overlap = np.where(free, iou(box, d.boxes), -1.0)
            k = int(np.argmax(overlap))
            if overlap[k] >= MATCH_IOU:
                rows[c][i], last[c], free[k] = k, (d.boxes[k], t), False
        for k in np.flatnonzero(free):
            rows.append(np.full(n, -1, np.int64))
            rows[-1][i] = k
            last.append((d.boxes[k], t))
    return np.stack(rows) if rows else np.zeros((0, n), np.int64)


def mouth_motion(seen: _AllFaces, cand: np.ndarray) -> np.ndarray:
    """float64 [N]: mean absolute change of a candidate's mouth profile since the frame before; NaN where unknown."""
    out = np.full(len(cand), np.nan)
    for i in range(1, len(cand)):
        a, b = cand[i], cand[i - 1]
        if a < 0 or b < 0 or seen.repeat[i]:
            continue
        p, q = seen.profiles[i][a], seen.profiles[i - 1][b]
        if p is not None and q is not None:
            out[i] = float(np.mean(np.abs(p - q)))
    return out


def audio_change(path: str | Path, times) -> tuple[np.ndarray | None, str]:
    """Short-time spectral change of a video's audio at its frame times: (float64 [N], "") or (None, why).

    For frame i, the log magnitude spectrum (AUDIO_BAND_HZ) of an
    AUDIO_WINDOW_S Hann window centred on its time; value i is the mean
    absolute difference from frame i-1's spectrum (NaN for the first frame
    and for frames past the audio's end). Channels are averaged. None when
    there is no audio track, it cannot be decoded, or it is silent.
    """
    from liser.data.video import read_audio_track

    try:
        audio, sr = read_audio_track(path)
    except LiserError as e:
        return None, str(e).split(": ", 1)[-1]
    x = audio.astype(np.float64).mean(axis=1)
    if not np.any(x):
        return None, "silent audio track"
    win = max(16, int(round(AUDIO_WINDOW_S * sr)))
    freqs = np.fft.rfftfreq(win, 1.0 / sr)
    band = (freqs >= AUDIO_BAND_HZ[0]) & (freqs <= AUDIO_BAND_HZ[1])
    centres = np.round(np.asarray(times, np.float64) * sr).astype(np.int64)
    inside = (centres >= 0) & (centres < len(x))
    padded = np.pad(x, (win // 2, win - win // 2))
    spectra = np.full((len(centres), int(band.sum())), np.nan)
    for i in np.flatnonzero(inside):  # padded[c : c + win] is centred on sample c
        spectra[i] = np.log(np.abs(np.fft.rfft(padded[centres[i] : centres[i] + win] * np.hanning(win)))[band] + 1e-6)
    change = np.full(len(centres), np.nan)
    change[1:] = np.mean(np.abs(spectra[1:] - spectra[:-1]), axis=1)
    return change, ""


def _smooth(x: np.ndarray, k: int) -> np.ndarray:
    """Centred moving average over k frames; unknown (NaN) values count as the mean of the known ones."""
    x = np.where(np.isfinite(x), x, np.nanmean(x))
    return np.convolve(x, np.ones(k) / k, mode="same") if k > 1 else x


def motion_audio_correlation(motion: np.ndarray, audio: np.ndarray, min_frames: int) -> float:
    """Pearson correlation of the smoothed mouth motion and audio change over the frames where both are
    known (ACTIVE_SMOOTH frames); NaN when fewer than `min_frames` such frames or either is constant."""
    ok = np.isfinite(motion) & np.isfinite(audio)
    if ok.sum() < max(min_frames, 3):
        return float("nan")
    m, e = _smooth(motion, ACTIVE_SMOOTH)[ok], _smooth(audio, ACTIVE_SMOOTH)[ok]
    if m.std() == 0 or e.std() == 0:
        return float("nan")
    return float(np.corrcoef(m, e)[0, 1])


def choose_active(seen: _AllFaces, audio: np.ndarray, frame_rate: float) -> tuple[np.ndarray | None, str]:
    """Per frame the detection the active rule keeps (-1: the largest face's result stands), and a note.

    In each frame where two or more scored candidates are present, the one
    whose mouth motion correlates best with the audio change is kept. None
    (with the reason) when fewer than two candidates could be scored.
    """
    cands = link_candidates(seen.dets, seen.times)
    min_frames = max(3, int(round(ACTIVE_MIN_S * frame_rate)))
    r = np.array([motion_audio_correlation(mouth_motion(seen, c), audio, min_frames) for c in cands])
    scored = np.isfinite(r)
    if scored.sum() < 2:
        return None, (f"{len(cands)} face(s) seen, {int(scored.sum())} with {ACTIVE_MIN_S:g} s of mouth motion: "
                      "fewer than two to compare")
    present = (cands >= 0) & scored[:, None]  # [C, N]
    best = np.argmax(np.where(present, r[:, None], -np.inf), axis=0)  # [N] candidate per frame
    choice = np.where(present.sum(axis=0) >= 2, cands[best, np.arange(cands.shape[1])], -1)
    note = "; ".join(f"{_where(seen, cands[c])}: r={r[c]:+.3f} over {int((cands[c] >= 0).sum())} frames"
                     for c in np.argsort(-np.where(scored, r, -np.inf)) if scored[c])
    return choice, note


def _where(seen: _AllFaces, cand: np.ndarray) -> str:
    """A candidate in words: its mean box centre and width, in pixels."""
    boxes = np.array([seen.dets[i].boxes[k] for i, k in enumerate(cand) if k >= 0])
    x, y = (boxes[:, 0:2] + boxes[:, 2:4]).mean(axis=0) / 2
    return f"face at ({x:.0f}, {y:.0f}) px, {np.mean(boxes[:, 2] - boxes[:, 0]):.0f} px wide"


def _select_active(track: FaceTrack, seen: _AllFaces, video_path: Path, frame_rate: float, fps, max_side) -> None:
    """Re-pick the track's face per frame by the active rule, in place (second decoding pass for the changed
    frames); falls back to the largest face with the reason logged and stored in the track."""
    from contextlib import closing

    from liser.data.video import iter_frames

    audio, why = audio_change(video_path, seen.times)
    choice = None
    if audio is not None:
        choice, why = choose_active(seen, audio, frame_rate)
    if choice is None:
        track.selection, track.selection_note = "largest", f"active not possible: {why}"
        log.info("%s: --face-select active fell back to the largest face: %s", video_path, why)
        return
    track.selection, track.selection_note = "active", why
    changed = set(np.flatnonzero((choice >= 0) & (choice != np.asarray(seen.main))).tolist())
    if not changed:
        return
    with closing(iter_frames(video_path, fps=fps, max_side=max_side)) as frames:
        for i, (t, img) in enumerate(frames):
            if i >= len(track) or abs(t - track.times[i]) > 1e-6:
                raise LiserError(f"{video_path}: frames differ between two decodings (frame {i} at {t:.3f} s)")
            if i in changed:
                d, k = seen.dets[i], int(choice[i])
                crop = align_face(img, d.landmarks[k], track.size)
                track.valid[i] = crop is not None
                track.crops[i] = crop if crop is not None else 0
                track.boxes[i], track.landmarks[i] = (d.boxes[k], d.landmarks[k]) if crop is not None else (0, 0)
                if track.scores is not None:
                    track.scores[i] = float(d.scores[k]) if crop is not None else 0.0
                changed.discard(i)
            if not changed:
                break


def extract_faces(
    video_path: str | Path,
    out_path: str | Path | None,
    size: int = 112,
    fps: float | None = None,
    detector: FaceDetector | None = None,
    progress: bool = True,
    max_side: int | None = None,
    face_select: str = "largest",
) -> FaceTrack:
    """Aligned crops of the main face of every frame of a video, saved to `out_path` (.npz).

    `fps` resamples the frames to a fixed rate first (see video.iter_frames);
    `max_side` shrinks large frames before everything (faster, blurrier
    crops of small faces). `face_select`: "largest" or "active" (the face
    whose mouth moves with the audio; module docstring); the track records
    which one made it. `out_path=None` only returns the track.
    Raises LiserError for audio-only files, videos without decodable frames
    and an unknown face_select.
    """
    from tqdm import tqdm

    from liser.data.video import iter_frames, video_info

    video_path = Path(video_path)
    if size < 16:
        raise LiserError(f"{video_path}: face crop size {size} is too small (at least 16)")
    if face_select not in FACE_SELECT:
        raise LiserError(f"{video_path}: face_select {face_select!r}: expected {' or '.join(FACE_SELECT)}")
    info = video_info(video_path)
    detector = detector or FaceDetector()
    frames = iter_frames(video_path, fps=fps, max_side=max_side)
    total = int(round(info.duration * fps)) + 1 if fps else info.n_frames
    bar = tqdm(frames, total=total or None, desc=f"faces {video_path.name}", unit="frame", disable=not progress, leave=False)
    seen = _AllFaces() if face_select == "active" and info.has_audio else None
    times, crops, valid, boxes, marks, scores = track_faces(bar, detector, size, observe=seen)
    bar.close()
    track = FaceTrack(
        crops=np.stack(crops).astype(np.uint8),
        times=np.asarray(times, np.float64),
        valid=np.asarray(valid, bool),
        boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
        landmarks=np.asarray(marks, np.float32).reshape(-1, 5, 2),
        fps=float(fps) if fps else float(info.fps),
        source=str(video_path),
        scores=np.asarray(scores, np.float32),
        detector=detector.name,
    )
    if seen is not None:
        _select_active(track, seen, video_path, float(fps) if fps else float(info.fps), fps, max_side)
    elif face_select == "active":
        track.selection_note = "active not possible: no audio track"
        log.info("%s: --face-select active fell back to the largest face: no audio track", video_path)
    if out_path is not None:
        track.save(out_path)
    return track


def _rejected_text(rows: list[dict]) -> str:
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=("id", "path", "reason"))
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def extract_faces_manifest(
    manifest,
    out_dir: str | Path,
    size: int = 112,
    shard: tuple[int, int] = (0, 1),
    progress: bool = True,
    fps: float | None = None,
    detector: FaceDetector | None = None,
    max_side: int | None = None,
    face_select: str = "largest",
) -> dict:
    """Face tracks for every item of a Manifest: `out_dir/<safe id>.npz`, resumable.

    Shard (k, n) takes items k, k+n, k+2n, ... so n processes can share the
    work. Items with an .npz already, or already listed as rejected, are
    skipped. Videos that cannot be used (no video stream, no decodable
    frame, no face in any frame) go to the rejected list with the reason and
    the job goes on. Outputs: the .npz files, `rejected.csv` (id, path,
    reason) and `faces.json` (summary); with n > 1 these two are named
    `rejected.shard-K-of-N.csv` / `faces.shard-K-of-N.json`. All written
    atomically. `face_select` (extract_faces) is one per directory: the
    summary says it and counts the tracks each rule made ("selections":
    active tracks that fell back count as largest). Returns the summary.
    LiserError when resuming a directory made with another size, fps or
    face_select, and for an `out_dir` that is not empty and not a face-track
    folder, or that is or holds the videos' folder (liser.core.outputs).
    """
    from liser.core.outputs import FACES, check_out_dir, writing

    k, n = check_shard(shard)
    out_dir = check_out_dir(out_dir, FACES, _manifest_inputs(manifest))
    with writing(out_dir):
        out_dir.mkdir(parents=True, exist_ok=True)
    tag = "" if n == 1 else f".shard-{k}-of-{n}"
    rejected_path, summary_path = out_dir / f"rejected{tag}.csv", out_dir / f"faces{tag}.json"

    _check_resumed(summary_path, out_dir, size, fps, face_select)
    rejected = _read_rejected(rejected_path)
    done_rejected = {r["id"] for r in rejected}

    items = manifest.items[k::n]
    todo = [it for it in items if it.id not in done_rejected and not (out_dir / f"{safe_id(it.id)}.npz").is_file()]
    detector = detector or FaceDetector()
    settings = dict(size=size, fps=fps, max_side=max_side, face_select=face_select)
    start = time.perf_counter()
    frames_run = _extract_items(todo, manifest, out_dir, rejected, rejected_path, detector, settings, progress)
    if not rejected_path.is_file():
        atomic_write_text(rejected_path, _rejected_text(rejected))
    summary = _summary(manifest, _count_tracks(items, out_dir), len(rejected), frames_run,
                       time.perf_counter() - start, detector.name, settings, (k, n))
    atomic_write_text(summary_path, json.dumps(summary, indent=2) + "\n")
    return summary


def _manifest_inputs(manifest) -> list[tuple[Path, str]]:
    """The folders a face-track folder must not be or hold: the manifest's root and every video's folder."""
    folders = {Path(manifest.abspath(it)).parent for it in manifest.items}
    return [(manifest.root, f"{manifest.corpus} root")] + [(d, "folder of videos") for d in sorted(folders)]


def _summary(manifest, counts: dict, rejected: int, frames_run: int, elapsed: float, detector: str, settings: dict,
             shard: tuple[int, int]) -> dict:
    """What faces.json says about a face-track directory (extract_faces_manifest)."""
    frames, with_face = counts["frames"], counts["frames_with_face"]
    return {
        "corpus": manifest.corpus,
        "videos": counts["videos"],
        "rejected": rejected,
        "frames": frames,
        "frames_with_face": with_face,
        "face_fraction": round(with_face / frames, 4) if frames else 0.0,
        "fps_achieved": round(frames_run / elapsed, 2) if elapsed > 0 and frames_run else None,
        "frames_this_run": frames_run,
        "seconds_this_run": round(elapsed, 2),
        "detector": detector,
        **{key: settings[key] for key in ("size", "fps", "face_select")},
        "selections": counts["selections"],
        "shard": list(shard),
        "manifest_fingerprint": manifest.fingerprint(),
    }


def _check_resumed(summary_path: Path, out_dir: Path, size: int, fps, face_select: str) -> None:
    """LiserError for an unknown face_select, or when a resumed job would mix crop sizes, frame rates or
    face selections in one directory (a summary from before face_select means "largest")."""
    if face_select not in FACE_SELECT:
        raise LiserError(f"face_select {face_select!r}: expected {' or '.join(FACE_SELECT)}")
    if summary_path.is_file():
        old = json.loads(summary_path.read_text())
        old_select = old.get("face_select", "largest")
        if old.get("size") != size or old.get("fps") != fps or old_select != face_select:
            raise LiserError(
                f"{out_dir}: holds faces of size {old.get('size')} at fps {old.get('fps')} ({old_select} face); "
                f"asked for size {size} at fps {fps} ({face_select} face) (use another directory)"
            )


def _read_rejected(path: Path) -> list[dict]:
    """The rejected rows written so far (id, path, reason); [] when there are none."""
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _count_tracks(items, out_dir: Path) -> dict:
    """Over the items' .npz files: videos (with a track), frames, frames_with_face, selections {rule: tracks}."""
    videos, frames, with_face, selections = 0, 0, 0, {}
    for it in items:
        p = out_dir / f"{safe_id(it.id)}.npz"
        if p.is_file():
            with np.load(p, allow_pickle=False) as z:  # reads only the `valid` and `selection` members
                v = z["valid"]
                rule = str(z["selection"]) if "selection" in z.files else "largest"
            videos += 1
            frames += int(v.size)
            with_face += int(v.sum())
            selections[rule] = selections.get(rule, 0) + 1
    return {"videos": videos, "frames": frames, "frames_with_face": with_face, "selections": selections}


def _extract_items(todo, manifest, out_dir: Path, rejected: list, rejected_path: Path, detector, settings: dict,
                   progress: bool) -> int:
    """Face tracks of `todo` into out_dir; unusable videos appended to `rejected` (and its file). Returns frames read."""
    from tqdm import tqdm

    from liser.core.outputs import WriteError

    frames_run, start = 0, time.perf_counter()
    bar = tqdm(todo, desc=f"faces {manifest.corpus}", unit="video", disable=not progress)
    for it in bar:
        path = manifest.abspath(it)
        try:
            track = extract_faces(path, None, detector=detector, progress=False, **settings)
            frames_run += len(track)
            if not track.valid.any():
                raise LiserError(f"{path}: no face ({len(track)} frames, none with a face)")
            track.save(out_dir / f"{safe_id(it.id)}.npz")
        except WriteError:
            raise  # the output folder's problem, not this video's
        except LiserError as e:
            reason = str(e).split(": ", 1)[-1] if str(e).startswith(str(path)) else str(e)
            rejected.append({"id": it.id, "path": it.path, "reason": reason})
            atomic_write_text(rejected_path, _rejected_text(rejected))
        bar.set_postfix(frames_per_s=f"{frames_run / max(time.perf_counter() - start, 1e-9):.1f}")
    bar.close()
    return frames_run
