"""The report's arithmetic: differences against no-dstl are paired by fold."""

from __future__ import annotations

import pytest

from liser.experiments.report import paired_delta


def _t(uars: dict) -> dict:
    return {"folds": [{"fold": k, "uar": u} for k, u in uars.items()]}


def test_paired_delta_uses_only_the_folds_both_finished():
    base = _t({0: 0.40, 1: 0.50, 2: 0.60})
    row = _t({0: 0.45, 2: 0.58})  # fold 1 not finished: it must not enter the difference
    d = paired_delta(row, base)
    assert d["folds"] == 2 and d["better"] == 1
    assert d["mean"] == pytest.approx((5.0 - 2.0) / 2)
    assert d["std"] == pytest.approx(3.5)


def test_paired_delta_without_common_folds():
    assert paired_delta(_t({3: 0.5}), _t({0: 0.4})) is None


def test_each_row_is_compared_with_its_own_recipes_no_dstl():
    from liser.experiments.report import reference_name

    names = {"no-dstl": 0, "sp-dstl": 0, "liser-no-dstl": 0, "liser-sp-dstl": 0, "liser-conf-vid-sp-dstl": 0,
             "sp-dstl-av-pool": 0}
    assert reference_name("liser-sp-dstl", names) == "liser-no-dstl"
    assert reference_name("liser-conf-vid-sp-dstl", names) == "liser-no-dstl"
    assert reference_name("sp-dstl", names) == "no-dstl"
    assert reference_name("sp-dstl-av-pool", names) == "no-dstl"
    assert reference_name("no-dstl", names) is None and reference_name("liser-no-dstl", names) is None
    assert reference_name("sp-dstl", {"sp-dstl": 0}) is None  # no reference row in the grid
    e100 = {**names, "liser-no-dstl-e100": 0, "liser-sp-distill-ce-e100": 0}
    assert reference_name("liser-sp-distill-ce-e100", e100) == "liser-no-dstl-e100"  # same schedule suffix
    assert reference_name("liser-sp-distill-ce", e100) == "liser-no-dstl"
    assert reference_name("liser-no-dstl-e100", e100) is None


def _run(tmp_path, name: str, fold: int, uar: float, **cfg) -> dict:
    """A finished run directory as collect_grid reads it: config.yaml and metrics.json."""
    import json

    from liser.core.config import Config

    c = Config.from_dict({**cfg, "name": name, "fold": fold, "out": str(tmp_path / "runs"), "work": str(tmp_path / "work")})
    d = tmp_path / "runs" / name / f"fold{fold}"
    d.mkdir(parents=True)
    c.save(d / "config.yaml")
    (d / "metrics.json").write_text(json.dumps({"val": {"uar": uar}, "test": {"uar": uar, "war": uar},
                                                "classes": ["a", "b"]}))
    return {"config": name.split("/")[0], "variant": name.split("/")[1], "fraction": 1.0, "fold": fold, "cfg": c}


def test_pool_curve_pairs_rows_that_differ_only_in_the_pool(tmp_path):
    """Two pools of real corpora (URDU; URDU + EmoDB): one curve, points sorted by hours, gains paired by fold."""
    from pathlib import Path

    from liser.experiments.grid import collect_grid
    from liser.experiments.report import pool_curves

    data = Path(__file__).resolve().parents[2] / "shared" / "data"
    if not (data / "urdu").is_dir() or not (data / "emodb").is_dir():
        pytest.skip("../shared/data/urdu and emodb are needed")
    small, big = [f"urdu:{data / 'urdu'}"], [f"urdu:{data / 'urdu'}", f"emodb:{data / 'emodb'}"]
    runs = []
    for k, (u0, u1, u2, u3) in enumerate([(0.40, 0.42, 0.45, 0.44), (0.50, 0.49, 0.53, 0.52)]):
        runs += [_run(tmp_path, "no-dstl/default", k, u0),
                 _run(tmp_path, "sp-dstl-small/default", k, u1, lambda_sd=1.0, unlabeled=small),
                 _run(tmp_path, "sp-dstl/lsd1", k, u2, lambda_sd=1.0, unlabeled=big),
                 _run(tmp_path, "sp-dstl/lsd5", k, u3, lambda_sd=5.0, unlabeled=big)]
    full = {n: t["1"] for n, t in collect_grid(runs)["configs"].items()}
    assert full["sp-dstl"]["variants"]["lsd5"]["uar_per_fold"] == [0.44, 0.52]
    curves = pool_curves(full)
    assert list(curves) == ["sp-dstl (lsd1)"]  # lsd5 has no smaller-pool partner; no-dstl distils nothing
    small_pt, big_pt = curves["sp-dstl (lsd1)"]
    assert small_pt["row"] == "sp-dstl-small" and big_pt["variant"] == "lsd1"
    assert 0.2 < small_pt["pool_hours"] < big_pt["pool_hours"] < 1.0  # URDU 0.28 h, EmoDB 0.41 h
    assert small_pt["gain_mean"] == pytest.approx(0.5) and small_pt["better"] == 1
    assert big_pt["gain_mean"] == pytest.approx(4.0) and big_pt["better"] == 2


def test_seeds_repeat_rows_and_a_fold_counts_their_mean(tmp_path):
    """`seeds` with `seed_runs`: the row's own seed keeps its run name, a fold's figure is the seeds' mean,
    the searched value is chosen on the seeds' mean validation UAR, and rows not named run once."""
    import json

    import yaml

    from liser.experiments.grid import collect_grid, expand_grid, load_grid, run_dir
    from liser.experiments.report import paired_delta

    grid = tmp_path / "g.yaml"
    grid.write_text(yaml.safe_dump({"out": str(tmp_path / "runs"), "set": {"work": str(tmp_path / "work")},
                                    "seeds": [0, 1, 2], "seed_runs": ["sp"], "folds": [0, 1],
                                    "runs": {"no-dstl": {}, "sp": {"lambda_sd": [0.5, 5]}}}))
    runs = expand_grid(load_grid(grid), 2)
    names = sorted({r["cfg"].name for r in runs})
    assert names == ["no-dstl/default", "sp/lsd0.5", "sp/lsd0.5/seed1", "sp/lsd0.5/seed2",
                     "sp/lsd5", "sp/lsd5/seed1", "sp/lsd5/seed2"]
    assert {r["cfg"].seed for r in runs if r["cfg"].name.endswith("seed2")} == {2}
    # fold 0: lsd5's seeds average higher on validation (0.6 against 0.5) though its seed 0 alone is lower
    val = {("sp/lsd0.5", 0): [0.55, 0.45, 0.50], ("sp/lsd5", 0): [0.50, 0.65, 0.65],
           ("sp/lsd0.5", 1): [0.50, 0.50, 0.50], ("sp/lsd5", 1): [0.40, 0.40, 0.40]}
    for r in runs:
        c = r["cfg"]
        key = (c.name.rsplit("/seed", 1)[0], r["fold"])
        v = val[key][r["seed"]] if key in val else 0.5
        test = 0.40 + 0.1 * r["seed"] if r["config"] == "sp" else 0.45
        d = run_dir(c)
        d.mkdir(parents=True)
        c.save(d / "config.yaml")
        (d / "metrics.json").write_text(json.dumps({"val": {"uar": v}, "test": {"uar": test, "war": test},
                                                    "classes": ["a", "b"]}))
    t = collect_grid(runs)["configs"]
    sp, base = t["sp"]["1"], t["no-dstl"]["1"]
    assert [f["variant"] for f in sp["folds"]] == ["lsd5", "lsd0.5"]
    assert [f["uar"] for f in sp["folds"]] == pytest.approx([0.50, 0.50])  # mean of 0.40, 0.50, 0.60
    assert sp["folds"][0]["seeds"] == [0, 1, 2] and sp["folds"][0]["uar_per_seed"] == pytest.approx([0.4, 0.5, 0.6])
    assert "seeds" not in base["folds"][0] and base["n_folds"] == 2  # run once: no seed keys
    assert paired_delta(sp, base)["mean"] == pytest.approx(5.0)
    (run_dir(next(r["cfg"] for r in runs if r["cfg"].name == "sp/lsd5/seed2" and r["fold"] == 0)) / "metrics.json").unlink()
    t = collect_grid(runs)["configs"]["sp"]["1"]  # a seed not finished yet: the mean of those that are
    assert t["folds"][0]["seeds"] == [0, 1] and t["folds"][0]["variant"] == "lsd5"  # (0.50+0.65)/2 > 0.50


def test_the_table_interval_is_of_the_fold_mean(tmp_path):
    """collect_grid's ci95 brackets uar_mean (the mean of the folds' UARs) when every fold kept its predictions,
    and says when it fell back to the pooled files."""
    import json

    import numpy as np

    from liser.experiments.grid import collect_grid, run_dir

    rng = np.random.default_rng(0)
    runs = [_run(tmp_path, "r/default", k, 0.0) for k in range(3)]
    for r, (n, acc) in zip(runs, [(2000, 0.35), (150, 0.9), (150, 0.9)]):
        y = rng.integers(0, 2, n)
        pred = np.where(rng.random(n) < acc, y, 1 - y)
        logits = np.eye(2)[pred].tolist()
        u = float(np.mean([(pred[y == c] == c).mean() for c in (0, 1)]))
        (run_dir(r["cfg"]) / "metrics.json").write_text(json.dumps(
            {"val": {"uar": u}, "test": {"uar": u, "war": u}, "classes": ["a", "b"],
             "test_y": y.tolist(), "test_logits": logits}))
    t = collect_grid(runs)["configs"]["r"]["1"]
    assert t["ci95_of"] == "fold mean" and t["ci95"]["uar"][0] < t["uar_mean"] < t["ci95"]["uar"][1]
    m = json.loads((run_dir(runs[2]["cfg"]) / "metrics.json").read_text())
    del m["test_logits"]  # a fold without kept predictions: the interval is over the files that have them
    (run_dir(runs[2]["cfg"]) / "metrics.json").write_text(json.dumps(m))
    assert collect_grid(runs)["configs"]["r"]["1"]["ci95_of"] == "pooled files"


def test_seed_runs_must_name_rows_of_the_grid(tmp_path):
    import yaml

    from liser.core.errors import LiserError
    from liser.experiments.grid import load_grid

    grid = tmp_path / "g.yaml"
    grid.write_text(yaml.safe_dump({"seeds": [0, 1], "seed_runs": ["no-dslt"], "runs": {"no-dstl": {}}}))
    with pytest.raises(LiserError, match="seed_runs names rows the grid does not have: no-dslt"):
        load_grid(grid)
