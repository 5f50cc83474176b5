"""The `liser` command, run as a subprocess: help, one-line user errors (exit 2), folds --check, train + evaluate."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import real_root

LISER = Path(sys.executable).parent / "liser"


def liser(*args, cwd=None, timeout=300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([str(LISER), *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=timeout)


def _one_line_error(p: subprocess.CompletedProcess) -> str:
    assert p.returncode == 2, (p.returncode, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert "Traceback" not in p.stderr
    assert lines[0].startswith("liser: ")
    return lines[0]


def test_help():
    assert LISER.is_file(), f"{LISER}: the console script is not installed"
    p = liser("--help")
    assert p.returncode == 0
    for cmd in ("prepare", "folds", "train", "cv", "evaluate"):
        assert cmd in p.stdout


def test_unknown_config_key_is_one_line_exit_2(tmp_path):
    line = _one_line_error(liser("train", "--set", "nosuchkey=1", cwd=tmp_path))
    assert "nosuchkey" in line
    assert not (tmp_path / "runs").exists() and not (tmp_path / "work").exists()


def test_wrong_type_is_one_line_exit_2(tmp_path):
    line = _one_line_error(liser("train", "--set", "epochs=many", cwd=tmp_path))
    assert "epochs" in line


def test_prepare_missing_root(tmp_path):
    out = tmp_path / "X"
    line = _one_line_error(liser("prepare", "ravdess", "/nonexistent", "-o", out))
    assert "/nonexistent" in line
    assert not out.exists()


def test_prepare_unknown_corpus(tmp_path):
    line = _one_line_error(liser("prepare", "nosuchcorpus", tmp_path, "-o", tmp_path / "X"))
    assert "nosuchcorpus" in line


@pytest.fixture(scope="module")
def full_ravdess_manifest(tmp_path_factory) -> Path:
    from liser.data.corpora import prepare

    m = prepare("ravdess", real_root("ravdess"), progress=False)
    return m.save(tmp_path_factory.mktemp("full") / "ravdess")


def test_folds_check_shipped_ravdess(full_ravdess_manifest):
    p = liser("folds", "--check", "ravdess", full_ravdess_manifest)
    assert p.returncode == 0, p.stderr
    assert "5 folds" in p.stdout and "no speaker leak" in p.stdout


def test_folds_check_wrong_fold_file(full_ravdess_manifest):
    line = _one_line_error(liser("folds", "--check", "emodb", full_ravdess_manifest))
    assert "emodb" in line


def test_folds_make(full_ravdess_manifest, tmp_path):
    out = tmp_path / "f.json"
    p = liser("folds", full_ravdess_manifest, "-k", "4", "--seed", "2", "-o", out)
    assert p.returncode == 0, p.stderr
    from liser.data.folds import load_folds

    f = load_folds(out)
    assert len(f) == 4 and f.seed == 2
    assert sorted(s for fold in f for s in fold.test) == [f"Actor_{i:02d}" for i in range(1, 25)]


def test_train_then_evaluate(small_config, tmp_path):
    cfg = small_config.replace(name="cli", out=str(tmp_path / "runs"), epochs=1)
    cfg_file = tmp_path / "cli.yaml"
    cfg.save(cfg_file)
    p = liser("train", cfg_file, "--set", "seed=3")
    assert p.returncode == 0, p.stderr
    run = tmp_path / "runs" / "cli" / "fold0"
    assert "test UAR" in p.stdout and str(run) in p.stdout
    assert yaml.safe_load((run / "config.yaml").read_text())["seed"] == 3

    p = liser("evaluate", run, "--stride", "0.5")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.strip().splitlines()
    assert "test UAR" in lines[0] and "n=24" in lines[0]
    assert len(lines) == 1 + 8 and all("recall" in x for x in lines[1:])
    # at the same stride as training's test evaluation, it reproduces metrics.json
    import json

    m = json.loads((run / "metrics.json").read_text())["test"]
    assert f"UAR {m['uar']:.3f} WAR {m['war']:.3f}" in lines[0]


def test_evaluate_not_a_run(tmp_path):
    line = _one_line_error(liser("evaluate", tmp_path))
    assert str(tmp_path) in line


def test_quickstart_next_commands_run_where_liser_is_not_on_path(monkeypatch, tmp_path):
    """The quickstart's "Next:" lines name a liser that runs from the user's shell: `liser` on PATH, else the
    venv's script (scripts/setup.sh does not activate .venv)."""
    import shutil
    import sys

    from liser.cli.quickstart import _liser_command

    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.chdir(tmp_path)
    assert _liser_command() == str(Path(sys.executable).parent / "liser")
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/local/bin/liser")
    assert _liser_command() == "liser"
