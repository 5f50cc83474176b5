"""The one configuration loader: types, unknown keys, --set forms, null, grid `set:` types, --teacher-set."""

from __future__ import annotations

import dataclasses

import pytest

from liser.cli import build_parser, main
from liser.core.config import Config, Grid, from_dict, load_dataclass, parse_overrides
from liser.core.errors import LiserError


def test_types_are_checked_per_field():
    c = Config.from_dict({"epochs": "3", "lr": 1, "classes": ["sad"], "name": 7})
    assert (c.epochs, c.lr, c.classes, c.name) == (3, 1.0, ("sad",), "7")
    for bad in ({"epochs": "many"}, {"lr": True}, {"name": ["a"]}, {"seed": 1.5}):
        with pytest.raises(LiserError, match=next(iter(bad))):
            Config.from_dict(bad)


def test_unknown_keys_name_the_key_and_the_source(tmp_path):
    p = tmp_path / "g.yaml"
    p.write_text("runs: {a: {}}\nbogus: 1\n")
    with pytest.raises(LiserError, match=r"g\.yaml.*bogus"):
        from liser.experiments.grid import load_grid

        load_grid(p)
    with pytest.raises(LiserError, match="unknown config key 'nope'"):
        Config.load(None, ["nope=1"])
    with pytest.raises(LiserError, match="did you mean 'teach_views'"):
        Config.load(None, ["teach_view=4"])
    with pytest.raises(LiserError, match="grid file's key"):
        Config.load(None, ["base=no-dstl.yaml"])


def test_set_several_pairs_in_one_flag_and_repeated():
    parser = build_parser()
    one = parser.parse_args(["train", "c.yaml", "--set", "epochs=2", "lr=0.5"])
    rep = parser.parse_args(["train", "c.yaml", "--set", "epochs=2", "--set", "lr=0.5"])
    assert one.set == rep.set == ["epochs=2", "lr=0.5"]
    c = Config.load(None, one.set)
    assert (c.epochs, c.lr) == (2, 0.5)


def test_override_parser_keeps_yaml_types_and_empty_strings():
    assert parse_overrides(["a=1", "b=x", "c=", "d=null", "e=[1, 2]", "a=2"]) == \
        {"a": 2, "b": "x", "c": "", "d": None, "e": [1, 2]}
    with pytest.raises(LiserError, match="--teacher-set 'epochs'"):
        parse_overrides(["epochs"], flag="--teacher-set")


def test_null_stays_none_for_optional_fields():
    @dataclasses.dataclass(frozen=True)
    class S:
        lr: float | None = 0.1  # optional float
        name: str = "x"  # a str field reads null as "" (its "none"), never "None"

    s = from_dict(S, {"lr": None, "name": None})
    assert s.lr is None and s.name == ""
    assert load_dataclass(S, None, ["lr=null"]).lr is None


def test_grid_set_values_keep_their_yaml_types(tmp_path):
    from liser.experiments.grid import load_grid

    (tmp_path / "base.yaml").write_text("name: b\n")
    p = tmp_path / "g.yaml"
    p.write_text("base: base.yaml\nset:\n  epochs: 3\n  lr: 0.01\n  speech_store: null\n"
                 "  classes: [happy, sad]\n  name: '007'\nruns:\n  a: {}\nfolds: [0]\nfractions: [0.5, 1]\n")
    g = load_grid(p)
    base = g["base"]
    assert base.epochs == 3 and base.lr == 0.01
    assert base.speech_store == ""  # null is "no store", not the string "None"
    assert base.classes == ("happy", "sad") and base.name == "007"
    assert g["folds"] == [0] and g["fractions"] == [0.5, 1.0]
    assert load_grid(p, ["epochs=4"])["base"].epochs == 4  # --set wins over the grid's set:


def test_grid_row_with_a_list_valued_key_is_fixed_unless_given_a_list_of_lists(tmp_path):
    from liser.experiments.grid import expand_grid, load_grid

    (tmp_path / "base.yaml").write_text("name: b\n")
    p = tmp_path / "g.yaml"
    p.write_text("base: base.yaml\nfolds: [0]\nruns:\n"
                 "  av: {unlabeled: ['videos:av'], lambda_sd: [0.5, 5]}\n"
                 "  pools: {unlabeled: [['videos:av'], ['tess:t', 'urdu:u']]}\n")
    runs = expand_grid(load_grid(p), 1)
    av = [r for r in runs if r["config"] == "av"]
    assert [r["variant"] for r in av] == ["lsd0.5", "lsd5"]  # only lambda_sd is searched
    assert {r["cfg"].unlabeled for r in av} == {("videos:av",)}
    pools = [r for r in runs if r["config"] == "pools"]
    assert [r["cfg"].unlabeled for r in pools] == [("videos:av",), ("tess:t", "urdu:u")]
    assert len({r["variant"] for r in pools}) == 2 and all("/" not in r["variant"] for r in pools)


def test_grid_schema_is_a_frozen_dataclass():
    g = Grid()
    with pytest.raises(dataclasses.FrozenInstanceError):
        g.jobs = 2  # type: ignore[misc]
    with pytest.raises(LiserError, match="jobs"):
        from_dict(Grid, {"jobs": "two"})


def test_teacher_set_wrong_type_fails_at_once_in_one_line(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"work: {tmp_path / 'w'}\nroot: {tmp_path / 'nothing-here'}\n")
    rc = main(["teacher", "fit", "speech", str(cfg), "--teacher-set", "epochs=many"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "epochs" in err[0] and "many" in err[0]
    assert not (tmp_path / "w").exists()  # nothing was read or written before the error
    rc = main(["teacher", "fit", "speech", str(cfg), "--teacher-set", "nosuch=1"])
    assert rc == 2 and "nosuch" in capsys.readouterr().err


def test_no_auto_store_value_documented():
    import inspect

    import liser.core.config

    store_lines = [ln for ln in inspect.getsource(liser.core.config).splitlines() if ln.strip().startswith("speech_store:")]
    assert store_lines and not any("auto" in ln for ln in store_lines)  # there is no "auto" store value


def test_every_shipped_grid_loads(monkeypatch):
    from pathlib import Path

    from liser.experiments.grid import load_grid

    repo = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(repo)  # grids name their base and teacher configs relative to the repository
    grids = sorted((repo / "configs").glob("grid-*.yaml"))
    assert any(p.name == "grid-quickstart.yaml" for p in grids)
    for p in grids:
        g = load_grid(p)
        assert g["runs"] and isinstance(g["base"], Config), p
