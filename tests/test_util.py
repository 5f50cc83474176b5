"""liser.core.util helpers that scripts share."""

import argparse
from pathlib import Path


def test_absolute_paths_resolves_outputs_against_where_the_script_ran(tmp_path, monkeypatch):
    from liser.core.util import absolute_paths

    monkeypatch.chdir(tmp_path)
    ns = argparse.Namespace(json="out/r.json", docs=None, grid="configs/x.yaml")
    absolute_paths(ns, "json", "docs")
    monkeypatch.chdir("/")  # what the bench scripts do next (chdir into the repository)
    assert ns.json == str(tmp_path / "out" / "r.json") and Path(ns.json).is_absolute()
    assert ns.docs is None and ns.grid == "configs/x.yaml"  # unnamed attributes untouched
