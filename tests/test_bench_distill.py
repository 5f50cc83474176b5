"""bench_distill.py --merge: an earlier collection's rows survive a collection that lacks their runs."""

from __future__ import annotations

from conftest import load_bench


def test_merge_keeps_earlier_rows_marked_with_where_they_came_from():
    bench = load_bench("bench_distill")
    old = {"date": "2026-11-30", "machine": "old box", "command": "c0", "wall_s": 10.0, "cpu_hours": 1.0,
           "runs_total": 4, "configs": {"no-dstl": {"uar_mean": 0.47}, "sp-dstl": {"uar_mean": 0.48, "uar_gain_points": {"mean": 1.0}}},
           "pool_curves": {"sp-dstl": [{"pool_hours": 1.0}]}}
    new = {"date": "2026-12-01", "machine": "new box", "configs": {"no-dstl": {"uar_mean": 0.51}},
           "pool_curves": {}}
    bench.merge_earlier(new, old)
    assert new["configs"]["no-dstl"] == {"uar_mean": 0.51, "collected": {"date": "2026-12-01", "machine": "new box"}}
    assert new["configs"]["sp-dstl"]["collected"] == {"date": "2026-11-30", "machine": "old box"}
    # its gain was paired with the no-dstl of its own collection, which today's no-dstl replaced in the table
    assert new["configs"]["sp-dstl"]["compared_with_collected"] == {"date": "2026-11-30", "machine": "old box"}
    # ... and that no-dstl stays in the file, under `replaced`
    assert new["replaced"] == {"no-dstl": [{"uar_mean": 0.47, "collected": {"date": "2026-11-30", "machine": "old box"}}]}
    assert new["pool_curves"] == {"sp-dstl": [{"pool_hours": 1.0}]}
    assert new["earlier"][0]["command"] == "c0"
    again = {"date": "2026-12-02", "machine": "third", "configs": {}, "pool_curves": {}}
    bench.merge_earlier(again, new)  # a row keeps the stamp of the collection that measured it
    assert again["configs"]["sp-dstl"]["collected"]["machine"] == "old box"
    assert again["configs"]["no-dstl"]["collected"]["machine"] == "new box"
    assert [e["date"] for e in again["earlier"]] == ["2026-11-30", "2026-12-01"]
    assert again["replaced"] == new["replaced"]  # nothing measured again: the replaced rows carry over
    same = {"date": "2026-12-01", "machine": "new box", "configs": {"no-dstl": {"uar_mean": 0.52}}, "pool_curves": {}}
    bench.merge_earlier(same, new)  # the same collection again (more runs finished): not a replaced row
    assert same["replaced"] == new["replaced"]


def test_merge_keeps_the_label_fraction_keys_and_teachers_this_machine_lacks():
    bench = load_bench("bench_distill")
    old = {"date": "2026-11-30", "machine": "old box", "configs": {}, "pool_curves": {},
           "fractions": {"no-dstl": {"1": {"uar_mean": 0.5}}}, "figure2_claim": {"holds": False},
           "speech_teachers": {"uar_mean": 0.7}}
    fresh = {"date": "2026-12-01", "machine": "clone", "configs": {}, "pool_curves": {}, "speech_teachers": None}
    bench.merge_earlier(fresh, old)  # a fresh clone: no teachers in its work folder, no fractions written yet
    assert fresh["fractions"] == old["fractions"] and fresh["figure2_claim"] == {"holds": False}
    assert fresh["speech_teachers"] == {"uar_mean": 0.7, "collected": {"date": "2026-11-30", "machine": "old box"}}
    here = {"date": "2026-12-01", "machine": "box", "configs": {}, "pool_curves": {}, "speech_teachers": {"uar_mean": 0.8}}
    bench.merge_earlier(here, old)  # teachers measured now win
    assert here["speech_teachers"] == {"uar_mean": 0.8}
