"""faces.py: detection, main-face tracking, alignment, face tracks and the manifest job."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import cv2  # noqa: E402

from liser.data import faces  # noqa: E402
from liser.data.corpora.base import Item, Manifest  # noqa: E402
from liser.core.errors import LiserError  # noqa: E402
from liser.data.faces import (  # noqa: E402
    Detections,
    FaceDetector,
    FaceTrack,
    extract_faces,
    extract_faces_manifest,
    pick_main_face,
    safe_id,
    template,
)
from test_video import INTERVIEW, make_video, need  # noqa: E402

cv2.setNumThreads(1)

YUNET = Path(__file__).resolve().parents[1].parent / "shared" / "models" / "face-detection" / "face_detection_yunet_2023mar.onnx"


def faceless_frames(n: int, size: int = 64, seed: int = 0) -> list[np.ndarray]:
    """n frames with no face: smooth colour gradients. Not pixel noise: YuNet found a "face" in a noise video
    now and then, even losslessly encoded and with cv2 on one thread (cause not found; a flaky CI)."""
    ramp = np.linspace(0, 1, size, dtype=np.float32)
    rgb = np.stack([np.add.outer(ramp, ramp) / 2, np.outer(ramp, 1 - ramp), np.full((size, size), 0.5)], -1)
    return [np.clip(255 * (rgb + 0.05 * ((seed + k) % 5)), 0, 255).astype(np.uint8) for k in range(n)]


def need_yunet() -> Path:
    if not YUNET.is_file():
        pytest.skip(f"YuNet model not found: {YUNET} (see ../shared/models/README.md)")
    return YUNET


@pytest.fixture(scope="module")
def interview_track():
    """Faces of a real 10 s interview clip, resampled to 5 fps (51 frames) to stay fast."""
    path = need(INTERVIEW)
    return extract_faces(path, None, size=112, fps=5, detector=FaceDetector(need_yunet()), progress=False)


def test_yunet_finds_the_face_in_most_frames_of_an_interview(interview_track):
    tr = interview_track
    assert tr.detector == "yunet" and tr.fps == 5.0
    assert tr.crops.shape == (len(tr), 112, 112, 3) and tr.crops.dtype == np.uint8
    assert np.allclose(np.diff(tr.times), 0.2)
    assert tr.valid.mean() > 0.9
    assert np.all(tr.scores[tr.valid] >= 0.6)
    w = tr.boxes[tr.valid, 2] - tr.boxes[tr.valid, 0]
    assert np.all(w > 30)  # a face, not a speck, in a 224 px frame
    assert not tr.crops[~tr.valid].any()  # missing faces stay zero, never invented


def test_aligned_crops_have_the_eyes_on_the_template(interview_track):
    """Re-detect the face in aligned crops (pasted into a grey canvas) and compare the eyes."""
    det = FaceDetector(need_yunet())
    tmpl = template(112)
    errors = []
    for crop in interview_track.crops[interview_track.valid][::5]:
        canvas = np.full((224, 224, 3), 128, np.uint8)
        canvas[56:168, 56:168] = crop
        d = det.detect(canvas)
        if len(d):
            errors.append(np.linalg.norm(d.landmarks[0, :2] - 56 - tmpl[:2], axis=1).max())
    assert len(errors) >= 5
    assert np.median(errors) < 6.0  # pixels in a 112 px crop


def test_noise_video_has_no_face(tmp_path):
    path = make_video(tmp_path / "noise.mp4", frames=faceless_frames(8), audio=False)
    tr = extract_faces(path, tmp_path / "noise.npz", detector=FaceDetector(need_yunet()), progress=False)
    assert len(tr) == 8 and not tr.valid.any() and not tr.crops.any()
    back = FaceTrack.load(tmp_path / "noise.npz")
    assert back.source == str(path) and len(back) == 8 and back.crops.shape == (8, 112, 112, 3)


def test_face_track_round_trip_and_size(tmp_path):
    path = need(INTERVIEW)
    tr = extract_faces(path, tmp_path / "t.npz", size=64, fps=2, detector=FaceDetector(need_yunet()), progress=False)
    back = FaceTrack.load(tmp_path / "t.npz")
    assert back.size == 64 and back.crops.shape[1:] == (64, 64, 3)
    for name in ("crops", "times", "valid", "boxes", "landmarks", "scores"):
        assert np.array_equal(getattr(back, name), getattr(tr, name)), name
    assert back.fps == 2.0 and back.detector == "yunet"
    assert not list(tmp_path.glob(".*tmp"))  # no temporary left behind
    with pytest.raises(LiserError, match="missing.npz"):
        FaceTrack.load(tmp_path / "missing.npz")


def test_haar_fallback_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(faces, "DEFAULT_YUNET", tmp_path / "absent.onnx")
    monkeypatch.delenv(faces.YUNET_ENV, raising=False)
    det = FaceDetector()  # no YuNet file anywhere: Haar
    assert det.name == "haar"
    tr = extract_faces(need(INTERVIEW), None, fps=2, detector=det, progress=False)
    assert tr.detector == "haar" and tr.valid.mean() > 0.6
    with pytest.raises(LiserError, match="YuNet model not found"):
        FaceDetector(backend="yunet")
    with pytest.raises(LiserError, match="absent.onnx: YuNet model file not found"):
        FaceDetector(tmp_path / "absent.onnx")


def test_main_face_is_the_large_central_one_then_the_tracked_one():
    def dets(*boxes):
        b = np.array(boxes, np.float32)
        return Detections(b, np.zeros((len(b), 5, 2), np.float32), np.ones(len(b), np.float32))

    shape = (200, 200, 3)
    small_corner, big_centre = [0, 0, 30, 30], [60, 60, 140, 140]
    assert pick_main_face(dets(small_corner, big_centre), shape, None) == 1
    # later: the face overlapping the previous box wins even when a bigger one appears elsewhere
    prev = np.array([10, 10, 50, 50], np.float32)
    assert pick_main_face(dets([100, 100, 200, 200], [12, 12, 52, 52]), shape, prev) == 1
    # no overlap: nearest centre within one box width, else nobody
    assert pick_main_face(dets([45, 10, 85, 50]), shape, prev) == 0  # IoU 0.07, centre 35 px away
    assert pick_main_face(dets([150, 150, 190, 190]), shape, prev) is None
    assert pick_main_face(Detections.empty(), shape, prev) is None


def _manifest(root: Path, paths: list[str]) -> Manifest:
    items = [Item(f"videos/s{i}/{Path(p).stem}", p, f"s{i}", "", 1.0, 16000, 1, "videos") for i, p in enumerate(paths)]
    return Manifest(corpus="videos", root=root, items=items)


def test_manifest_job_rejects_and_goes_on_then_resumes(tmp_path):
    need(INTERVIEW)
    need_yunet()
    root = tmp_path / "corpus"
    root.mkdir()
    make_video(root / "noise.mp4", frames=faceless_frames(6), audio=False)
    (root / "talk.mp4").symlink_to(INTERVIEW)
    import soundfile as sf

    sf.write(str(root / "voice.flac"), np.zeros(800, np.float32), 16000)
    man = _manifest(root, ["noise.mp4", "talk.mp4", "voice.flac"])
    out = tmp_path / "faces"
    summary = extract_faces_manifest(man, out, size=48, fps=4, progress=False)

    rejected = {r.split(",")[0]: r for r in (out / "rejected.csv").read_text().splitlines()[1:]}
    assert set(rejected) == {"videos/s0/noise", "videos/s2/voice"}
    assert "no face" in rejected["videos/s0/noise"]
    assert "audio-only" in rejected["videos/s2/voice"]
    done = out / f"{safe_id('videos/s1/talk')}.npz"
    assert done.is_file() and FaceTrack.load(done).valid.mean() > 0.9
    meta = json.loads((out / "faces.json").read_text())
    assert meta == summary
    assert meta["videos"] == 1 and meta["rejected"] == 2 and meta["detector"] == "yunet" and meta["size"] == 48
    assert meta["frames"] == 41 and meta["frames_with_face"] > 36 and meta["fps_achieved"] > 0

    stamp = done.stat().st_mtime_ns
    again = extract_faces_manifest(man, out, size=48, fps=4, progress=False)
    assert again["frames_this_run"] == 0 and done.stat().st_mtime_ns == stamp  # resumed: nothing redone
    assert again["videos"] == 1 and again["frames"] == 41 and again["rejected"] == 2
    with pytest.raises(LiserError, match="size 48"):
        extract_faces_manifest(man, out, size=112, fps=4, progress=False)


def test_manifest_shards_split_the_items(tmp_path):
    need_yunet()
    root = tmp_path / "c"
    root.mkdir()
    for i in range(3):
        make_video(root / f"n{i}.mp4", frames=faceless_frames(2, size=32, seed=i), audio=False)
    man = _manifest(root, [f"n{i}.mp4" for i in range(3)])
    s0 = extract_faces_manifest(man, tmp_path / "o", shard=(0, 2), progress=False)
    s1 = extract_faces_manifest(man, tmp_path / "o", shard=(1, 2), progress=False)
    assert s0["rejected"] == 2 and s1["rejected"] == 1
    assert (tmp_path / "o" / "rejected.shard-0-of-2.csv").is_file() and (tmp_path / "o" / "faces.shard-1-of-2.json").is_file()
    with pytest.raises(LiserError, match="shard"):
        extract_faces_manifest(man, tmp_path / "o", shard=(2, 2), progress=False)


def test_safe_id():
    assert safe_id("videos/id01/014") == "videos__id01__014"
    assert safe_id("x/a b:c") == "x__a_b_c"
    assert safe_id("../etc") == "__etc"  # no leading dot, no slash


def test_implausible_yunet_boxes_are_dropped():
    """YuNet now and then returns a box 1e8 px wide with score 0.9999 (seen on 32 px frames, as in
    test_manifest_shards_split_the_items, which then failed 3 runs in 8): such rows are not faces."""
    from liser.data.faces import _plausible

    boxes = np.array([[10, 8, 20, 24], [-1.2e8, -150, 2.4e8, 0.5], [70, 10, 5, 5], [-3, -3, 10, 10]], np.float32)
    assert _plausible(boxes, (64, 48)).tolist() == [True, False, False, True]
