"""Speaker-independent folds: the shipped RAVDESS / EmoDB files, make_folds, and the leak check."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from liser.data.corpora import Item, Manifest
from liser.core.errors import LiserError
from liser.data.folds import Fold, Folds, check_folds, folds_for_manifest, load_folds, make_folds

RAVDESS_SPEAKERS = {f"Actor_{i:02d}": ("M" if i % 2 else "F") for i in range(1, 25)}  # odd id = male
# Berlin EmoDB's documentation: male 03 10 11 12 15, female 08 09 13 14 16.
EMODB_SPEAKERS = {"03": "M", "10": "M", "11": "M", "12": "M", "15": "M",
                  "08": "F", "09": "F", "13": "F", "14": "F", "16": "F"}


def _manifest(speakers: dict[str, str], corpus: str = "toy") -> Manifest:
    items = [Item(f"{corpus}/{s}/u{j}", f"{s}/u{j}.wav", s, "happy", 3.0, 16000, 1, corpus, g)
             for s, g in speakers.items() for j in range(2)]
    return Manifest(corpus, Path("/nowhere"), items)


def _assert_speaker_independent(folds: Folds, speakers: dict[str, str]) -> None:
    tested = Counter()
    for i, f in enumerate(folds):
        tr, va, te = set(f.train), set(f.val), set(f.test)
        assert not (tr & va) and not (tr & te) and not (va & te), f"fold {i} leaks"
        assert tr | va | te == set(speakers), f"fold {i} does not use every speaker exactly once"
        assert len(f.train) + len(f.val) + len(f.test) == len(speakers)  # no duplicates inside a part
        tested.update(f.test)
    assert tested == Counter({s: 1 for s in speakers}), "every speaker is tested exactly once"


@pytest.mark.parametrize("name,speakers", [("ravdess", RAVDESS_SPEAKERS), ("emodb", EMODB_SPEAKERS)])
def test_shipped_folds(name, speakers):
    folds = load_folds(name)
    assert len(folds) == 5 and folds.k == 5 and folds.corpus == name
    _assert_speaker_independent(folds, speakers)
    for i, f in enumerate(folds):
        genders = {speakers[s] for s in f.test}
        assert genders == {"M", "F"}, f"fold {i} test group {f.test} is single-gender"
        assert {speakers[s] for s in f.val} == {"M", "F"}
        assert set(f.val) == set(folds[(i + 1) % 5].test)  # fold i validates on group i+1
    sizes = [len(f.test) for f in folds]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == len(speakers)


def test_shipped_ravdess_folds_are_what_make_folds_gives():
    """The shipped file is reproducible from the documented algorithm (seed 0)."""
    assert load_folds("ravdess").folds == make_folds(RAVDESS_SPEAKERS, 5, 0, "ravdess").folds


def test_ravdess_test_groups_are_gender_balanced_within_one():
    for f in load_folds("ravdess"):
        c = Counter(RAVDESS_SPEAKERS[s] for s in f.test)
        assert abs(c["M"] - c["F"]) <= 1


def test_make_folds_is_deterministic_per_seed():
    a = make_folds(RAVDESS_SPEAKERS, 5, seed=3)
    b = make_folds(dict(reversed(list(RAVDESS_SPEAKERS.items()))), 5, seed=3)  # dict order does not matter
    assert a.folds == b.folds
    c = make_folds(RAVDESS_SPEAKERS, 5, seed=4)
    assert [f.test for f in a] != [f.test for f in c]
    _assert_speaker_independent(c, RAVDESS_SPEAKERS)


def test_make_folds_without_genders_and_k_capped():
    spk = {f"s{i}": "" for i in range(4)}
    f = make_folds(spk, k=10)
    assert len(f) == 4  # k is capped at the number of speakers
    _assert_speaker_independent(f, spk)
    with pytest.raises(LiserError, match="at least 3"):
        make_folds({"a": "", "b": ""})


def test_folds_for_manifest_uses_the_manifest_genders():
    f = folds_for_manifest(_manifest(EMODB_SPEAKERS, "emodb"), k=5, seed=0)
    assert f.folds == load_folds("emodb").folds
    check_folds(f, _manifest(EMODB_SPEAKERS, "emodb"))


def test_fold_index_out_of_range():
    with pytest.raises(LiserError, match="fold 5"):
        load_folds("ravdess")[5]


def test_save_load_roundtrip(tmp_path):
    f = make_folds(EMODB_SPEAKERS, 5, seed=1, corpus="emodb")
    f.save(tmp_path / "sub" / "f.json")
    g = load_folds(tmp_path / "sub" / "f.json")
    assert g == f


def _write(tmp_path, folds: list[dict], name="f.json") -> Path:
    p = tmp_path / name
    p.write_text(json.dumps({"corpus": "toy", "k": len(folds), "seed": 0, "folds": folds}))
    return p


def test_leaky_fold_file_is_refused(tmp_path):
    p = _write(tmp_path, [{"train": ["a", "b"], "val": ["c"], "test": ["b"]}], "leaky.json")
    with pytest.raises(LiserError, match="leak") as e:
        load_folds(p)
    assert "'b'" in str(e.value) and "leaky.json" in str(e.value)
    folds = Folds("toy", 1, 0, (Fold(0, ("a",), ("a",), ("c",)),))
    with pytest.raises(LiserError, match="leak"):
        check_folds(folds)


def test_empty_part_is_refused(tmp_path):
    with pytest.raises(LiserError, match="empty"):
        load_folds(_write(tmp_path, [{"train": ["a"], "val": [], "test": ["b"]}]))


def test_malformed_and_missing_fold_files(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text("{not json")
    with pytest.raises(LiserError, match="bad.json"):
        load_folds(p)
    p.write_text(json.dumps({"folds": [{"train": ["a"]}]}))
    with pytest.raises(LiserError, match="not a fold file"):
        load_folds(p)
    with pytest.raises(LiserError, match="nosuchcorpus"):
        load_folds("nosuchcorpus")


def test_check_against_manifest_unknown_and_missing_speakers():
    folds = Folds("toy", 1, 0, (Fold(0, ("a", "b"), ("c",), ("zz",)),))
    with pytest.raises(LiserError, match="zz"):
        check_folds(folds, _manifest({"a": "", "b": "", "c": "", "d": ""}))
    folds = Folds("toy", 1, 0, (Fold(0, ("a",), ("b",), ("c",)),))
    with pytest.raises(LiserError, match="leaves speakers out.*'d'"):
        check_folds(folds, _manifest({"a": "", "b": "", "c": "", "d": ""}))
    check_folds(folds, _manifest({"a": "", "b": "", "c": ""}))  # exact match passes


def test_shipped_ravdess_folds_against_the_ravdess_speakers():
    check_folds(load_folds("ravdess"), _manifest(RAVDESS_SPEAKERS, "ravdess"))
    with pytest.raises(LiserError):
        check_folds(load_folds("emodb"), _manifest(RAVDESS_SPEAKERS, "ravdess"))
