"""Corpus adapters and the manifest.

Real corpora are read from `../shared/data` (next to the repository; see its
README) and the tests that need them skip when it is absent. CREMA-D, the
generic CSV and every bad input are tested on small look-alike trees of
generated audio in `tmp_path`.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from liser.data.corpora import EMOTIONS, Manifest, prepare
from liser.data.corpora import base
from liser.data.corpora.cremad import prepare_cremad
from liser.data.corpora.emodb import prepare_emodb
from liser.data.corpora.generic import prepare_generic, prepare_unlabeled
from liser.data.corpora.ravdess import prepare_ravdess
from liser.data.corpora.tess import prepare_tess
from liser.data.corpora.urdu import prepare_urdu
from liser.core.errors import LiserError

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SR = 16_000

ADAPTERS = {
    "ravdess": prepare_ravdess,
    "cremad": prepare_cremad,
    "emodb": prepare_emodb,
    "tess": prepare_tess,
    "urdu": prepare_urdu,
    "generic": prepare_generic,
    "unlabeled": prepare_unlabeled,
}


# ---------------------------------------------------------------- helpers


def real_root(name: str) -> Path:
    root = DATA / name
    if not root.is_dir():
        pytest.skip(f"real data not found at {root} (the tests read ../shared/data next to the repository)")
    return root


def write_audio(path: Path, seconds: float = 0.5, kind: str = "sine", channels: int = 1, sr: int = SR) -> Path:
    """A short generated file: sine, noise, zeros (silent) or nan; float32 subtype for nan."""
    n = int(round(seconds * sr))
    t = np.arange(n) / sr
    if kind == "sine":
        x = 0.3 * np.sin(2 * np.pi * 220 * t)
    elif kind == "noise":
        x = 0.1 * np.random.default_rng(len(str(path))).standard_normal(n)
    elif kind == "zeros":
        x = np.zeros(n)
    elif kind == "nan":
        x = 0.3 * np.sin(2 * np.pi * 220 * t)
        x[n // 2] = np.nan
    else:
        raise ValueError(kind)
    x = np.repeat(x[:, None], channels, axis=1).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), x, sr, subtype="FLOAT" if kind == "nan" else "PCM_16")
    return path


def cremad_tree(root: Path, demographics: bool = True) -> Path:
    """AudioWAV/ with two actors x six emotions, plus VideoDemographics.csv."""
    for actor in ("1001", "1002"):
        for i, code in enumerate(("ANG", "DIS", "FEA", "HAP", "NEU", "SAD")):
            level = ("XX", "LO", "MD", "HI", "X", "XX")[i]
            write_audio(root / "AudioWAV" / f"{actor}_DFA_{code}_{level}.wav", kind="noise")
    if demographics:
        (root / "VideoDemographics.csv").write_text(
            "ActorID,Age,Sex,Race,Ethnicity\n1001,51,Male,Caucasian,Not Hispanic\n1002,21,Female,Caucasian,Not Hispanic\n"
        )
    return root


def ravdess_name(emotion: int = 1, actor: int = 1, statement: int = 1, repetition: int = 1, modality: int = 3, channel: int = 1) -> str:
    return f"{modality:02d}-{channel:02d}-{emotion:02d}-01-{statement:02d}-{repetition:02d}-{actor:02d}.wav"


# ---------------------------------------------------------------- real corpora


@pytest.fixture(scope="module")
def ravdess_real():
    return prepare_ravdess(real_root("ravdess"), progress=False)


def test_ravdess_real(ravdess_real):
    m = ravdess_real
    assert len(m.items) == 1440 and not m.rejected
    assert len(m.speakers) == 24
    assert m.classes == list(EMOTIONS[:8])
    genders = {it.speaker: it.gender for it in m.items}
    assert Counter(genders.values()) == {"M": 12, "F": 12}
    assert genders["Actor_01"] == "M" and genders["Actor_02"] == "F"
    assert all(it.sample_rate == 16_000 and it.duration > 2 for it in m.items)
    assert len({it.id for it in m.items}) == 1440


def test_ravdess_real_stereo_files_are_kept_with_their_channel_count(ravdess_real):
    # The shared copy keeps five stereo files so that down-mixing is exercised.
    assert sum(it.channels == 2 for it in ravdess_real.items) == 5
    assert all(it.channels in (1, 2) for it in ravdess_real.items)


def test_emodb_real():
    m = prepare_emodb(real_root("emodb"), progress=False)
    assert len(m.items) == 535 and not m.rejected
    assert len(m.speakers) == 10
    assert set(m.classes) == {"angry", "boredom", "disgust", "fearful", "happy", "sad", "neutral"}
    genders = {it.speaker: it.gender for it in m.items}
    assert genders == {"03": "M", "10": "M", "11": "M", "12": "M", "15": "M", "08": "F", "09": "F", "13": "F", "14": "F", "16": "F"}
    # the root may also be the wav/ folder itself; paths are then relative to it
    assert len(prepare_emodb(real_root("emodb") / "wav", progress=False).items) == 535


def test_tess_real():
    m = prepare_tess(real_root("tess"), progress=False)
    assert len(m.items) == 980 and not m.rejected
    assert m.speakers == ["OAF", "YAF"]
    assert set(m.classes) == {"angry", "disgust", "fearful", "happy", "neutral", "sad", "surprised"}
    assert {it.gender for it in m.items} == {"F"}
    # both spellings of the surprise folder map to the same class
    assert Counter(it.label for it in m.items)["surprised"] == 140


def test_urdu_real():
    m = prepare_urdu(real_root("urdu"), progress=False)
    assert len(m.items) == 400 and not m.rejected
    assert Counter(it.label for it in m.items) == {"angry": 100, "happy": 100, "neutral": 100, "sad": 100}
    # speaker ids from the names (SM1, SF10, ...); the shared copy's names give 29 speakers
    assert len(m.speakers) == 29
    assert all(it.speaker[:2] in ("SM", "SF") and it.gender == it.speaker[1] for it in m.items)


def test_real_roots_are_not_other_corpora():
    # Each adapter refuses another corpus's tree instead of producing an empty or wrong manifest.
    ravdess = real_root("ravdess")
    for adapter in (prepare_cremad, prepare_emodb, prepare_tess, prepare_urdu):
        with pytest.raises(LiserError, match="^" + re.escape(str(ravdess)) + r": not an? "):
            adapter(ravdess, progress=False)
    with pytest.raises(LiserError, match="not a RAVDESS speech tree"):
        prepare_ravdess(real_root("emodb"), progress=False)


# ---------------------------------------------------------------- CREMA-D (look-alike)


def test_cremad_lookalike(tmp_path):
    root = cremad_tree(tmp_path / "CREMA-D")
    m = prepare_cremad(root, progress=False)
    assert len(m.items) == 12 and not m.rejected
    assert m.speakers == ["1001", "1002"]
    assert m.classes == ["neutral", "happy", "sad", "angry", "fearful", "disgust"]
    assert {(it.speaker, it.gender) for it in m.items} == {("1001", "M"), ("1002", "F")}
    assert m.items[0].path.startswith("AudioWAV/")
    assert m.items[0].id.startswith("cremad/1001/1001_DFA_")


def test_cremad_root_may_be_audiowav(tmp_path):
    root = cremad_tree(tmp_path / "CREMA-D")
    m = prepare_cremad(root / "AudioWAV", progress=False)
    assert len(m.items) == 12
    assert {it.gender for it in m.items} == {"M", "F"}  # demographics found one level up
    assert "/" not in m.items[0].path


def test_cremad_without_demographics_leaves_gender_empty(tmp_path):
    m = prepare_cremad(cremad_tree(tmp_path / "c", demographics=False), progress=False)
    assert {it.gender for it in m.items} == {""}


def test_cremad_bad_demographics(tmp_path):
    root = cremad_tree(tmp_path / "c")
    (root / "VideoDemographics.csv").write_text("ActorID,Age,Sex\n1001,51,Male\n1002,21,unknown\n")
    with pytest.raises(LiserError, match=r"VideoDemographics\.csv:3: Sex is 'unknown'"):
        prepare_cremad(root, progress=False)


def test_cremad_empty_release_file_is_rejected(tmp_path):
    # The CREMA-D release ships one 0-byte file: it is listed in rejected, not fatal.
    root = cremad_tree(tmp_path / "c")
    (root / "AudioWAV" / "1076_MTI_SAD_XX.wav").write_bytes(b"")
    m = prepare_cremad(root, progress=False)
    assert len(m.items) == 12
    assert [r["path"] for r in m.rejected] == ["AudioWAV/1076_MTI_SAD_XX.wav"]


def test_cremad_via_prepare_dispatch(tmp_path):
    root = cremad_tree(tmp_path / "c")
    assert len(prepare("CREMA-D", root, progress=False).items) == 12
    with pytest.raises(LiserError, match="unknown corpus 'nope'"):
        prepare("nope", root)


# ---------------------------------------------------------------- generic CSV and unlabeled folders


def test_generic_csv(tmp_path):
    root = tmp_path / "mine"
    for name in ("a/1.wav", "a/2.wav", "b/1.flac", "b/2.wav"):
        write_audio(root / name)
    (root / "labels.csv").write_text(
        "path,speaker,label,gender\n"
        "a/1.wav,alice,Anger,F\n"
        "a/2.wav,alice,happiness,female\n"
        "b/1.flac,bob,sad,M\n"
        f"{(root / 'b/2.wav').resolve()},bob,surprise,\n"  # absolute path inside the root
    )
    m = prepare_generic(root, progress=False)
    assert [(it.path, it.speaker, it.label, it.gender) for it in m.items] == [
        ("a/1.wav", "alice", "angry", "F"),
        ("a/2.wav", "alice", "happy", "F"),
        ("b/1.flac", "bob", "sad", "M"),
        ("b/2.wav", "bob", "surprised", ""),
    ]
    assert m.corpus == "generic" and m.items[0].id == "generic/alice/1"


def test_generic_csv_elsewhere_and_without_gender(tmp_path):
    root = tmp_path / "mine"
    write_audio(root / "x.wav")
    csv = tmp_path / "my labels.csv"
    csv.write_text("path,speaker,label\nx.wav,s1,neutral\n")
    m = prepare_generic(root, progress=False, csv=csv)
    assert [(it.label, it.gender) for it in m.items] == [("neutral", "")]
    assert len(prepare("generic", root, progress=False, csv=csv).items) == 1


@pytest.mark.parametrize(
    "rows, match",
    [
        ("path,speaker,label\nx.wav,s1,joyful\n", r"labels\.csv:2: unknown label 'joyful'"),
        ("path,speaker,label\nx.wav,s1,sad\ny.wav,s1,sad\n", r"labels\.csv:3: no such file"),
        ("path,speaker,label\nx.wav,,sad\n", r"labels\.csv:2: empty path or speaker"),
        ("path,speaker,label,gender\nx.wav,s1,sad,X\n", r"labels\.csv:2: gender 'X'"),
        ("path,label\nx.wav,sad\n", r"labels\.csv: missing column\(s\) speaker"),
        ("path,speaker,label\n/elsewhere/x.wav,s1,sad\n", r"labels\.csv:2: /elsewhere/x\.wav is outside the root"),
        ("path,speaker,label\n", r"labels\.csv: no rows"),
    ],
)
def test_generic_csv_errors_name_the_line(tmp_path, rows, match):
    root = tmp_path / "mine"
    write_audio(root / "x.wav")
    (root / "labels.csv").write_text(rows)
    with pytest.raises(LiserError, match="^" + re.escape(str(root)) + "/" + match):
        prepare_generic(root, progress=False)


def test_generic_without_csv_points_to_unlabeled(tmp_path):
    write_audio(tmp_path / "x.wav")
    with pytest.raises(LiserError, match=r"labels\.csv: no such label CSV.*'unlabeled'"):
        prepare_generic(tmp_path, progress=False)


def test_unlabeled_folder(tmp_path):
    root = tmp_path / "pool"
    write_audio(root / "spk1" / "a.wav")
    write_audio(root / "spk1" / "sub" / "b.flac")
    write_audio(root / "spk2" / "a.wav")
    write_audio(root / "top.wav")
    (root / "spk2" / "._a.wav").write_bytes(b"\x00\x05\x16\x07")  # macOS metadata, not data
    (root / "notes.txt").write_text("not audio")
    m = prepare("unlabeled", root, progress=False)
    assert [(it.path, it.speaker, it.label) for it in m.items] == [
        ("spk1/a.wav", "spk1", ""),
        ("spk1/sub/b.flac", "spk1", ""),
        ("spk2/a.wav", "spk2", ""),
        ("top.wav", "top", ""),
    ]
    assert m.classes == [] and m.rejected == [  # a skipped file is named (issue 12); hidden ._ files are not
        {"path": "notes.txt", "reason": "skipped (a .txt file; not an audio or video file that liser reads)"}]


def test_unlabeled_reads_video_audio_tracks(tmp_path):
    pytest.importorskip("liser.data.video", reason="liser.data.video (the video reader) is not written yet")
    clips = sorted((real_root("av") / "interviews").rglob("*.mp4"))[:2]
    if not clips:
        pytest.skip("no mp4 clips under ../shared/data/av/interviews")
    for clip in clips:
        (tmp_path / clip.parent.name).mkdir(exist_ok=True)
        (tmp_path / clip.parent.name / clip.name).symlink_to(clip)
    m = prepare_unlabeled(tmp_path, progress=False)
    assert len(m.items) == 2 and all(it.duration > 0.5 and it.sample_rate > 0 for it in m.items)


# ---------------------------------------------------------------- bad inputs


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_missing_root(tmp_path, name):
    missing = tmp_path / "nowhere"
    with pytest.raises(LiserError, match="^" + re.escape(str(missing)) + r": no such directory"):
        ADAPTERS[name](missing, progress=False)


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_root_is_a_file(tmp_path, name):
    f = write_audio(tmp_path / "x.wav")
    with pytest.raises(LiserError, match="^" + re.escape(str(f)) + r": not a directory"):
        ADAPTERS[name](f, progress=False)


@pytest.mark.parametrize("name", ["ravdess", "cremad", "emodb", "tess", "urdu"])
def test_root_that_is_not_the_corpus(tmp_path, name):
    write_audio(tmp_path / "speaker" / "hello.wav")
    write_audio(tmp_path / "speaker" / "03a01.wav")
    with pytest.raises(LiserError, match="^" + re.escape(str(tmp_path)) + r": not an? \S+ (speech )?tree"):
        ADAPTERS[name](tmp_path, progress=False)


def test_unlabeled_empty_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("no audio here")
    with pytest.raises(LiserError, match="^" + re.escape(str(tmp_path)) + r": no audio or video files"):
        prepare_unlabeled(tmp_path, progress=False)


def test_unusable_files_are_rejected_with_the_reason(tmp_path):
    root = tmp_path / "ravdess"
    good = root / "Actor_01" / ravdess_name(emotion=1)
    write_audio(good, seconds=1.0)
    write_audio(root / "Actor_01" / ravdess_name(emotion=2), seconds=1.0, kind="noise", channels=2)
    bad = {
        ravdess_name(emotion=3): "unreadable audio",
        ravdess_name(emotion=4): "empty audio",
        ravdess_name(emotion=5): "silent",
        ravdess_name(emotion=6): "too short",
        ravdess_name(emotion=7): "NaN",
    }
    d = root / "Actor_01"
    (d / ravdess_name(emotion=3)).write_bytes(b"this is not a wav file" * 10)
    write_audio(d / ravdess_name(emotion=4), seconds=0.0)
    write_audio(d / ravdess_name(emotion=5), seconds=1.0, kind="zeros")
    write_audio(d / ravdess_name(emotion=6), seconds=0.05)
    write_audio(d / ravdess_name(emotion=7), seconds=1.0, kind="nan")
    m = prepare_ravdess(root, progress=False)
    assert [it.path for it in m.items] == [f"Actor_01/{ravdess_name(emotion=1)}", f"Actor_01/{ravdess_name(emotion=2)}"]
    assert [it.channels for it in m.items] == [1, 2]
    assert m.items[0].duration == pytest.approx(1.0) and m.items[0].sample_rate == SR
    reasons = {Path(r["path"]).name: r["reason"] for r in m.rejected}
    assert set(reasons) == set(bad)
    for name, why in bad.items():
        assert why in reasons[name], (name, reasons[name])


def test_nothing_usable_is_an_error(tmp_path):
    write_audio(tmp_path / "Actor_01" / ravdess_name(), kind="zeros")
    with pytest.raises(LiserError, match=r"no usable ravdess files \(1 rejected\)"):
        prepare_ravdess(tmp_path, progress=False)


@pytest.mark.parametrize(
    "adapter, relpath, match",
    [
        (prepare_ravdess, "Actor_01/" + ravdess_name(emotion=9), "unknown RAVDESS emotion code '09'"),
        (prepare_emodb, "wav/03a01Qa.wav", "unknown EmoDB emotion letter 'Q'"),
        (prepare_tess, "OAF_bored/OAF_back_bored.wav", "unknown TESS emotion folder 'OAF_bored'"),
        (prepare_urdu, "Angry/SM1_F01_H012.wav", "emotion initial 'H' in the name disagrees with the folder 'Angry'"),
        (prepare_urdu, "Sad/recording.wav", "not an URDU file name"),
    ],
)
def test_unknown_emotion_is_an_error_naming_the_file(tmp_path, adapter, relpath, match):
    # CREMA-D lists an unknown code in rejected.csv instead (tests/test_cremad.py).
    f = write_audio(tmp_path / relpath)
    with pytest.raises(LiserError, match="^" + re.escape(str(f)) + ": " + match):
        adapter(tmp_path, progress=False)


@pytest.mark.parametrize(
    "name, what",
    [
        (ravdess_name(channel=2), "audio-only song"),
        (ravdess_name(modality=1), "audio-video speech"),
        (ravdess_name(modality=2), "video-only speech"),
    ],
)
def test_ravdess_song_and_video_codes_are_errors(tmp_path, name, what):
    write_audio(tmp_path / "Actor_01" / ravdess_name(emotion=1, statement=2))
    f = write_audio(tmp_path / "Actor_01" / name)
    with pytest.raises(LiserError, match="^" + re.escape(str(f)) + ": " + what + ".*expected the speech audio part"):
        prepare_ravdess(tmp_path, progress=False)


def test_duplicate_ids_are_an_error(tmp_path):
    # Some TESS releases nest a second copy of the tree inside the first.
    write_audio(tmp_path / "OAF_angry" / "OAF_back_angry.wav")
    write_audio(tmp_path / "copy" / "OAF_angry" / "OAF_back_angry.wav")
    with pytest.raises(LiserError, match=r"duplicate id tess/OAF/OAF_back_angry"):
        prepare_tess(tmp_path, progress=False)


def test_two_files_with_one_id_in_csv_are_an_error(tmp_path):
    # two different files, one speaker, one stem: their ids would collide
    write_audio(tmp_path / "a" / "x.wav")
    write_audio(tmp_path / "b" / "x.wav")
    (tmp_path / "labels.csv").write_text("path,speaker,label\na/x.wav,s1,sad\nb/x.wav,s1,happy\n")
    with pytest.raises(LiserError, match=r"x\.wav: duplicate id generic/s1/x"):
        prepare_generic(tmp_path, progress=False)


# ---------------------------------------------------------------- one file listed twice in a labels.csv (real audio)


def _real_csv_corpus(root: Path, n: int = 6) -> list[str]:
    """`root` with n real RAVDESS recordings (symbolic links, Actor_01..03); their names."""
    src = real_root("ravdess")
    files = [f for a in ("Actor_01", "Actor_02", "Actor_03") for f in sorted((src / a).glob("*.flac"))[:2]][:n]
    root.mkdir(parents=True, exist_ok=True)
    for f in files:
        (root / f.name).symlink_to(f)
    return [f.name for f in files]


def test_reported_case_one_file_under_two_speakers_is_refused(tmp_path):
    # 6 real files, one of them listed again under another speaker: was 7 items from 6 files
    root = tmp_path / "mine"
    names = _real_csv_corpus(root)
    rows = [f"{n},spk{i // 2},neutral" for i, n in enumerate(names)] + [f"{names[0]},spk2,neutral"]
    (root / "labels.csv").write_text("path,speaker,label\n" + "\n".join(rows) + "\n")
    with pytest.raises(LiserError) as e:
        prepare_generic(root, progress=False)
    msg = str(e.value)
    assert msg.startswith(f"{root / 'labels.csv'}:8: {names[0]} is the same file as {names[0]} on line 2")
    assert "'spk2' here, 'spk0' there" in msg and "speaker-independent fold" in msg
    m = prepare_generic(root, progress=False, csv=_write(tmp_path / "ok.csv", "path,speaker,label\n" +
                                                          "\n".join(rows[:-1]) + "\n"))
    assert len(m.items) == 6  # the same rows without the repeat are fine


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_same_file_same_speaker_names_both_lines_and_labels(tmp_path):
    root = tmp_path / "mine"
    a, b = _real_csv_corpus(root, 2)
    (root / "labels.csv").write_text(f"path,speaker,label\n{a},s1,sad\n{b},s1,angry\n{a},s1,happy\n")
    with pytest.raises(LiserError, match="^" + re.escape(f"{root / 'labels.csv'}:4: {a} is the same file as {a} "
                                                         "on line 2, with another label ('happy' here, 'sad' there)")):
        prepare_generic(root, progress=False)
    (root / "labels.csv").write_text(f"path,speaker,label\n{a},s1,sad\n{a},s1,sadness\n")  # an alias: same label
    with pytest.raises(LiserError, match=r"labels\.csv:3: .* on line 2 \(speaker 's1', label 'sadness' both times\)"):
        prepare_generic(root, progress=False)


@pytest.mark.parametrize("spelling", ["./{a}", "d/../{a}", "{root}/{a}", "link.flac", "hard.flac", "sub/{a}"])
def test_same_file_by_another_spelling_is_refused(tmp_path, spelling):
    # ./a, d/../a, the absolute path, a symbolic link, a hard link, a symbolic link to the folder: one recording
    root = tmp_path / "mine"
    a, b = _real_csv_corpus(root, 2)
    real = root / "copy.flac"
    real.write_bytes((root / a).read_bytes())  # a real copy in tmp_path (hard links need the same file system)
    (root / a).unlink()
    real.rename(root / a)
    (root / "link.flac").symlink_to(root / a)
    os.link(root / a, root / "hard.flac")
    (root / "sub").symlink_to(root, target_is_directory=True)
    (root / "d").mkdir()
    other = spelling.format(a=a, root=root)
    (root / "labels.csv").write_text(f"path,speaker,label\n{a},s1,sad\n{b},s1,sad\n{other},s2,sad\n")
    with pytest.raises(LiserError, match=r"labels\.csv:4: " + re.escape(f"{other} is the same file as {a} on line 2")
                       + r", under another speaker \('s2' here, 's1' there\)"):
        prepare_generic(root, progress=False)


def test_csv_path_outside_the_root_by_dotdot_is_refused(tmp_path):
    root = tmp_path / "mine"
    (a,) = _real_csv_corpus(tmp_path / "elsewhere", 1)
    root.mkdir()
    (root / "labels.csv").write_text(f"path,speaker,label\n../elsewhere/{a},s1,sad\n")
    with pytest.raises(LiserError, match=r"labels\.csv:2: \.\./elsewhere/.* is outside the root"):
        prepare_generic(root, progress=False)


# ---------------------------------------------------------------- manifest on disk


def test_manifest_save_load_roundtrip(tmp_path):
    root = cremad_tree(tmp_path / "CREMA-D")
    (root / "AudioWAV" / "1076_MTI_SAD_XX.wav").write_bytes(b"")
    m = prepare_cremad(root, progress=False)
    out = tmp_path / "manifests" / "cremad"
    assert m.save(out) == out
    loaded = Manifest.load(out)
    assert loaded.items == m.items
    assert loaded.rejected == m.rejected
    assert loaded.corpus == "cremad" and loaded.root == root.resolve()
    assert loaded.fingerprint() == m.fingerprint()
    assert Manifest.load(out / "manifest.csv").items == m.items  # the CSV path works too
    meta = json.loads((out / "meta.json").read_text())
    assert meta["corpus"] == "cremad"
    assert meta["root"] == str(root.resolve())
    assert meta["classes"] == m.classes
    assert (meta["items"], meta["speakers"], meta["rejected"]) == (12, 2, 1)
    assert meta["hours"] == pytest.approx(12 * 0.5 / 3600, abs=1e-4)
    assert meta["fingerprint"] == m.fingerprint()
    assert "liser_version" in meta
    assert sorted(p.name for p in out.iterdir()) == ["manifest.csv", "meta.json", "rejected.csv"]
    assert [p.name for p in out.parent.iterdir()] == ["cremad"]  # no temp directory left behind


def test_manifest_save_replaces_and_failed_save_leaves_old_copy(tmp_path, monkeypatch):
    m = prepare_cremad(cremad_tree(tmp_path / "c"), progress=False)
    out = tmp_path / "manifests" / "cremad"
    m.save(out)
    smaller = Manifest(m.corpus, m.root, m.items[:3], [])
    smaller.save(out)
    assert len(Manifest.load(out).items) == 3
    assert [p.name for p in out.parent.iterdir()] == ["cremad"]

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(base.json, "dumps", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        m.save(out)
    monkeypatch.undo()
    assert len(Manifest.load(out).items) == 3  # the previous manifest is intact
    assert [p.name for p in out.parent.iterdir()] == ["cremad"]


def test_manifest_load_of_a_non_manifest(tmp_path):
    with pytest.raises(LiserError, match="^" + re.escape(str(tmp_path)) + r": not a manifest directory"):
        Manifest.load(tmp_path)


def test_real_ravdess_manifest_roundtrip(tmp_path, ravdess_real):
    out = ravdess_real.save(tmp_path / "ravdess")
    loaded = Manifest.load(out)
    assert loaded.items == ravdess_real.items
    assert loaded.fingerprint() == ravdess_real.fingerprint()
    assert sum(it.channels == 2 for it in loaded.items) == 5
