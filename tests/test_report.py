"""The report's arithmetic: differences against no-dstl are paired by fold."""

from __future__ import annotations

import pytest

from liser.report import paired_delta


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
    from liser.report import reference_name

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

    from liser.config import Config

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

    from liser.experiment import collect_grid
    from liser.report import pool_curves

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
