"""The built wheel in a fresh venv without torch: `liser predict` works with the shipped default model (slow).

bench/bench_install.py's functions, as `pip install liser` does it: the wheel
built from this tree, installed with its base dependencies from the package
registry into a new venv (no torch there), `liser predict --json` on real
FLAC, Ogg Opus, MP4, MP3, M4A and 3-channel WAV files (labels among the
model's classes, equal to this venv's `liser predict`), `liser train` and
`liser serve` naming their extra in one line, exit 2. Measured with
bench/bench_install.py on 2026-12-06 (bench/results/install.json): the fresh
venv is 440 MB (du -sb; 23 MB of it the empty venv's pip and setuptools),
against the 2.2 GB the issue measured when torch and every training library
were in the base (the development venv, CPU torch and every extra: 2.23 GB).
Needs the package registry and ../shared/data; about a minute.
"""

from __future__ import annotations

import pytest

from conftest import load_bench, real_root

pytestmark = pytest.mark.slow


def test_wheel_in_a_fresh_venv_without_torch(tmp_path):
    real_root("ravdess"), real_root("tess"), real_root("av")
    bench = load_bench("bench_install")
    r = bench.measure(tmp_path)
    assert r["torch_import_fails"], "torch is importable in the fresh venv: a base dependency pulled it"
    assert not any(name.lower().startswith(("torch", "transformers", "pyyaml", "tqdm", "opencv", "pedalboard"))
                   for name in r["installed"]), r["installed"]
    assert len(r["predict"]) == 6
    for name, p in r["predict"].items():
        assert p["label"] in r["classes"], (name, p)
        assert p["label"] == p["dev_label"] and abs(p["p"] - p["dev_p"]) < 1e-3, (name, p)
    need = "needs the '{0}' extra: pip install 'liser[{0}]' (no module named {1!r})"
    assert r["train"] == {"rc": 2, "stdout": [], "stderr": ["liser: liser train " + need.format("train", "torch")]}
    assert r["serve"] == {"rc": 2, "stdout": [], "stderr": ["liser: liser serve " + need.format("serve", "fastapi")]}
    assert r["venv_bytes"] < 600e6, f"the base install grew to {r['venv_bytes'] / 1e6:.0f} MB (440 MB measured)"
