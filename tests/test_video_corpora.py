"""Unlabeled audio-visual corpora: any video tree (`videos`) and MSP-Face look-alikes (`mspface`)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from liser.data.corpora import prepare  # noqa: E402
from liser.data.corpora.mspface import prepare_mspface, speaker_from_name  # noqa: E402
from liser.data.corpora.videos import prepare_videos, speaker_of  # noqa: E402
from liser.core.errors import LiserError  # noqa: E402
from test_video import AV, make_video  # noqa: E402


def test_videos_tree_speakers_labels_and_rejects(tmp_path):
    (tmp_path / "spk1").mkdir()
    (tmp_path / "spk2" / "sub").mkdir(parents=True)
    make_video(tmp_path / "spk1" / "a.mp4", seed=1)
    make_video(tmp_path / "spk1" / "mute.mp4", audio=False)
    make_video(tmp_path / "spk2" / "sub" / "b.mp4", seed=2)
    make_video(tmp_path / "solo.mp4", seed=3)
    (tmp_path / "notes.txt").write_text("not a video")
    man = prepare_videos(tmp_path, progress=False)
    by_path = {it.path: it for it in man.items}
    assert set(by_path) == {"spk1/a.mp4", "spk2/sub/b.mp4", "solo.mp4"}
    assert by_path["spk2/sub/b.mp4"].speaker == "spk2" and by_path["solo.mp4"].speaker == "solo"
    assert all(it.label == "" for it in man.items) and man.classes == []
    assert all(it.sample_rate == 16000 and it.channels == 1 and 1.0 < it.duration < 1.6 for it in man.items)
    assert man.rejected == [{"path": "spk1/mute.mp4", "reason": "no audio track"},  # skipped files are named too
                            {"path": "notes.txt", "reason": "skipped (a .txt file; not a video file that liser reads)"}]
    assert [it.id for it in prepare("videos", tmp_path, progress=False).items] == [it.id for it in man.items]


def test_videos_errors(tmp_path):
    with pytest.raises(LiserError, match="no video files"):
        prepare_videos(tmp_path, progress=False)
    with pytest.raises(LiserError, match="no such directory"):
        prepare_videos(tmp_path / "absent", progress=False)
    assert speaker_of("id01/x/1.mp4") == "id01" and speaker_of("clip.mkv") == "clip"


def test_videos_on_real_interview_clips(tmp_path):
    src = AV / "interviews"
    if not src.is_dir():
        pytest.skip(f"real data not found: {src} (see ../shared/data/README.md)")
    for spk in ("id01", "id02"):
        (tmp_path / spk).mkdir()
        for clip in sorted((src / spk).glob("*.mp4"))[:2]:
            (tmp_path / spk / clip.name).symlink_to(clip)
    man = prepare_videos(tmp_path, progress=False)
    assert len(man.items) == 4 and man.speakers == ["id01", "id02"] and not man.rejected
    assert all(it.sample_rate == 16000 and it.channels == 1 and it.duration > 1.0 for it in man.items)


def _msp_tree(root: Path, clips_dir: str = "Videos") -> None:
    vids = root / clips_dir / "part1"
    vids.mkdir(parents=True)
    for i, name in enumerate(["MSP-FACE_0001_0001", "MSP-FACE_0001_0002", "MSP-FACE_0002_0001", "MSP-FACE_0003_0001"]):
        make_video(vids / f"{name}.mp4", n=20, size=32, seed=i)


def test_mspface_speakers_from_metadata_and_names(tmp_path):
    _msp_tree(tmp_path)
    (tmp_path / "Labels").mkdir()
    (tmp_path / "Labels" / "labels_consensus.csv").write_text(
        "FileName,EmoClass,EmoAct,EmoVal,EmoDom,SpkrID,Gender\n"
        "MSP-FACE_0001_0001.mp4,H,4.2,5.0,4.0,Speaker_017,Female\n"
        "MSP-FACE_0001_0002.mp4,A,5.2,2.0,5.0,Speaker_017,Female\n"
    )
    (tmp_path / "Partitions.txt").write_text("Train; MSP-FACE_0001_0001.mp4\nTest1; MSP-FACE_0002_0001.mp4\n")
    (tmp_path / "Speaker_ids.txt").write_text("MSP-FACE_0002_0001.mp4; Speaker_042\n")
    man = prepare_mspface(tmp_path, progress=False)
    spk = {Path(it.path).stem: it.speaker for it in man.items}
    assert spk == {
        "MSP-FACE_0001_0001": "Speaker_017",
        "MSP-FACE_0001_0002": "Speaker_017",
        "MSP-FACE_0002_0001": "Speaker_042",
        "MSP-FACE_0003_0001": "0003",  # not in any metadata: the name prefix
    }
    assert all(it.label == "" for it in man.items)  # emotion annotations are ignored
    assert {it.gender for it in man.items if it.speaker == "Speaker_017"} == {"F"}
    assert man.corpus == "mspface" and man.items[0].path.startswith("Videos/part1/")
    assert len(prepare("MSP-Face", tmp_path, progress=False).items) == 4


def test_mspface_clips_folder_without_metadata(tmp_path):
    _msp_tree(tmp_path, "clips")
    man = prepare_mspface(tmp_path, progress=False)
    assert man.speakers == ["0001", "0002", "0003"] and len(man.items) == 4
    assert speaker_from_name("abc-12_3") == "abc" and speaker_from_name("MSP_Face-7_1") == "7"
    (tmp_path / "empty").mkdir()
    with pytest.raises(LiserError, match="not an MSP-Face tree"):
        prepare_mspface(tmp_path / "empty", progress=False)
