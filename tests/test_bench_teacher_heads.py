"""bench/bench_teacher_heads.py: results of more seeds merge into a setting's row instead of replacing it."""

import json

import pytest

from conftest import load_bench

SETTING = {"head": "concat", "refit": True}


def _per(seed, fold_val, folds=(0, 1)):
    return [{"seed": seed, "fold": k, "inner_val": 0.8, "fold_val": fold_val + k / 100, "test_uar": 0.7,
             "test_uar_pieces": 0.7, "val_ece": 0.1, "val_ece_tempered": 0.05, "temperature": 1.2} for k in folds]


def _row(bench, per, wall=10.0):
    return {"settings": SETTING, **bench._means(per), "epochs": 50, "date": "today", "wall_s": wall, "per_fold": per}


def test_new_seeds_join_the_row_and_a_rerun_seed_replaces_its_results(tmp_path):
    bench = load_bench("bench_teacher_heads")
    path = tmp_path / "heads.json"
    # a file written before rows had seeds: its per-fold results are seed 0's
    old = [{k: v for k, v in p.items() if k != "seed"} for p in _per(0, 0.70)]
    path.write_text(json.dumps({"date": "before", "settings": {"s": {**_row(bench, _per(0, 0.70)), "per_fold": old}}}))

    merged = bench._merged(str(path), {"s": _row(bench, _per(10, 0.80), wall=5.0)})["settings"]["s"]
    assert merged["seeds"] == [0, 10] and merged["folds"] == [0, 1] and len(merged["per_fold"]) == 4
    assert merged["fold_val_mean"] == pytest.approx((0.70 + 0.71 + 0.80 + 0.81) / 4)
    assert merged["wall_s"] == 15.0 and "seeds [0]" in merged["note"]

    path.write_text(json.dumps({"settings": {"s": merged}}))
    again = bench._merged(str(path), {"s": _row(bench, _per(10, 0.60))})["settings"]["s"]
    assert again["seeds"] == [0, 10] and len(again["per_fold"]) == 4  # seed 10 replaced, not added twice
    assert again["fold_val_mean"] == pytest.approx((0.70 + 0.71 + 0.60 + 0.61) / 4)

    # another setting under the same name (changed GRID entry) replaces the row whole
    other = {**_row(bench, _per(10, 0.5)), "settings": {"head": "weighted"}}
    assert bench._merged(str(path), {"s": other})["settings"]["s"]["seeds"] == [10]


def test_fold_validation_picks_among_the_settings_scored_on_the_most_seeds():
    bench = load_bench("bench_teacher_heads")
    rows = {"one-seed": _row(bench, _per(0, 0.90)), "lucky": _row(bench, _per(0, 0.75) + _per(10, 0.60)),
            "steady": _row(bench, _per(0, 0.70) + _per(10, 0.70)), "unjudged": {"inner_val_mean": 0.99}}
    assert bench.choose_on_fold_validation(rows, list(rows)) == "steady"
    assert bench.choose_on_fold_validation(rows, ["one-seed", "unjudged"]) == "one-seed"
    assert bench.choose_on_fold_validation(rows, ["unjudged"]) is None
