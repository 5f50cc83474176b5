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
