"""The grid ledger (liser.experiments.ledger): finished runs survive the loss of out/, and a changed row trains again."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

pytest.importorskip("torch")


def _grid(tmp_path, base_cfg, lr_b: float) -> tuple:
    cfg_file = tmp_path / "base.yaml"
    base_cfg.replace(epochs=1).save(cfg_file)
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"base": str(cfg_file), "out": str(tmp_path / "out"), "jobs": 1,
                                    "ledger": str(tmp_path / "ledger"),
                                    "runs": {"a": {}, "b": {"lr": lr_b}}}))
    return grid, tmp_path / "out", tmp_path / "ledger"


def _uars(res: dict) -> dict:
    return {name: [f["uar"] for f in by_frac["1"]["folds"]] for name, by_frac in res["configs"].items()}


def test_grid_resumes_from_ledger_on_a_fresh_clone(small_config, tmp_path):
    from liser.experiments.grid import run_grid

    grid, out, ledger = _grid(tmp_path, small_config, lr_b=3e-4)
    first = run_grid(grid, progress=False, report=False)
    assert first["runs_trained"] == 2
    for row in ("a", "b"):
        kept = ledger / row / "default" / "fold0"
        assert sorted(p.name for p in kept.iterdir()) == ["config.yaml", "epochs.csv", "metrics.json", "times.json"]
        assert json.loads((kept / "metrics.json").read_text()) == json.loads(
            (out / row / "default" / "fold0" / "metrics.json").read_text())

    run_a = out / "a" / "default" / "fold0"
    mtimes = {n: (run_a / n).stat().st_mtime for n in ("config.yaml", "metrics.json")}
    shutil.rmtree(out)  # a fresh clone: checkpoints and run directories gone, the ledger (tracked) kept
    for p in ledger.rglob("*.yaml"):
        p.touch()  # as a git checkout leaves them: file times of the checkout, not of the runs
    again = run_grid(grid, progress=False, report=False)
    assert again["runs_trained"] == 0
    assert _uars(again) == _uars(first)
    assert not (run_a / "best.pt").exists()  # restored, not retrained
    # a run's span (config.yaml at its start, metrics.json at its end) is what grid wall times are made of
    assert {n: (run_a / n).stat().st_mtime for n in mtimes} == pytest.approx(mtimes)


def test_changed_row_trains_again_and_replaces_its_entry(small_config, tmp_path, capsys):
    from liser.core.config import Config
    from liser.experiments.grid import run_grid

    grid, out, ledger = _grid(tmp_path, small_config, lr_b=3e-4)
    run_grid(grid, progress=False, report=False)
    shutil.rmtree(out)
    grid, out, ledger = _grid(tmp_path, small_config, lr_b=1e-3)  # the grid file changed row b
    res = run_grid(grid, progress=False, report=False)
    assert res["runs_trained"] == 1
    assert "b/default/fold0: differs in lr" in capsys.readouterr().out
    assert Config.load(ledger / "b" / "default" / "fold0" / "config.yaml").lr == 1e-3


def test_a_finished_run_of_other_settings_is_refused_not_reported(small_config, tmp_path):
    from liser.core.errors import LiserError
    from liser.experiments.grid import run_grid

    grid, out, ledger = _grid(tmp_path, small_config, lr_b=3e-4)
    run_grid(grid, progress=False, report=False)
    grid, out, ledger = _grid(tmp_path, small_config, lr_b=1e-3)  # row b changed, its old run still in out/
    with pytest.raises(LiserError, match=r"1 finished run\(s\) were trained with other settings.*differs in lr"):
        run_grid(grid, progress=False, report=False)
    with pytest.raises(LiserError, match="differs in precision"):
        run_grid(grid, ["precision=bf16"], progress=False, report=False)
    with pytest.raises(LiserError, match="precision must be fp32 or bf16"):
        run_grid(grid, ["precision=bf16x"], progress=False, report=False)  # refused before any run is looked at


def test_runs_finished_before_the_ledger_are_kept(small_config, tmp_path):
    from liser.experiments.grid import collect_grid, expand_grid, load_grid, restore_ledger, run_grid

    grid, out, ledger = _grid(tmp_path, small_config, lr_b=3e-4)
    text = yaml.safe_load(grid.read_text())
    grid.write_text(yaml.safe_dump({**text, "ledger": ""}))
    run_grid(grid, progress=False, report=False)
    assert not ledger.exists()
    grid.write_text(yaml.safe_dump(text))
    g = load_grid(grid)
    runs = expand_grid(g, 1)
    assert restore_ledger(g, runs)["kept"] == 2
    shutil.rmtree(out)
    assert restore_ledger(g, runs)["restored"] == 2
    assert set(collect_grid(runs)["configs"]) == {"a", "b"}


def test_stale_keys_ignore_threads_and_device(small_config, tmp_path):
    from liser.core.config import stale_keys

    small_config.save(tmp_path / "config.yaml")
    assert stale_keys(small_config.replace(threads=7, device="cpu"), tmp_path) == []
    assert stale_keys(small_config.replace(seed=1), tmp_path) == ["seed"]
    assert stale_keys(small_config, tmp_path / "missing") == ["config.yaml missing"]
