"""`pip install liser` is inference; each other command names its extra in one line when the extra is missing.

A fresh process with every extra's modules blocked (an import hook: what a
base install lacks) runs the `liser` command's main: `liser predict` on the
default model works and imports none of them; `liser train`, `liser serve`
and `liser predict` on a torch checkpoint each print one line naming the
extra and exit 2. liser.core.extras's module lists against pyproject.toml's extras,
and the command table against the registered commands. The real thing (a
built wheel in a fresh venv without torch) is tests/test_wheel.py (slow).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from liser import cli
from liser.core import extras

ROOT = Path(__file__).resolve().parents[1]

# distribution name (pyproject.toml) -> import name, where they differ
IMPORT_NAME = {"pyyaml": "yaml", "scikit-learn": "sklearn", "opencv-python-headless": "cv2",
               "silero-vad": "silero_vad", "python-multipart": "python_multipart"}


def _dist_name(requirement: str) -> str:
    for sep in "<>=!~;[ ":
        requirement = requirement.split(sep)[0]
    return requirement.strip().lower()


def test_extras_mirror_pyproject():
    tomllib = pytest.importorskip("tomllib", reason="Python 3.11's TOML reader")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    optional = project["optional-dependencies"]
    for extra, modules in extras.EXTRAS.items():
        declared = {IMPORT_NAME.get(d, d) for d in map(_dist_name, optional[extra])}
        assert declared == set(modules), (extra, declared ^ set(modules))
    base = {_dist_name(d) for d in project["dependencies"]}
    assert "torch" not in base and base.isdisjoint({d for e in extras.EXTRAS for d in map(_dist_name, optional[e])})
    assert not any("==" in d for e in optional.values() for d in e), "an exact pin in an extra conflicts with users' own"


def test_every_command_has_its_extra_declared():
    sub = next(a for a in cli.build_parser()._actions if a.dest == "command")
    assert set(sub.choices) == set(cli.COMMAND_EXTRAS)
    assert set(cli.COMMAND_EXTRAS.values()) <= set(extras.EXTRAS) | {None}
    assert cli.COMMAND_EXTRAS["predict"] is None


BLOCKED = sorted({m for mods in extras.EXTRAS.values() for m in mods})

CHILD = r"""
import contextlib, importlib.abc, io, json, sys
BLOCKED = set(json.loads(sys.argv[1]))

class Base(importlib.abc.MetaPathFinder):  # a base install: no module of any extra can be found
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, Base())
from liser.cli import main

def run(*argv):
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        rc = main(list(argv))
    return {"rc": rc, "err": err.getvalue().splitlines(), "out": out.getvalue().splitlines()}

wav, pt, config = sys.argv[2:5]
res = {"predict": run("predict", wav, "--json", "--threads", "1")}
res["modules"] = sorted({k.split(".")[0] for k in sys.modules} & (BLOCKED | {"torchaudio"}))
res["train"] = run("train", config)
res["serve"] = run("serve", "--port", "0")
res["predict_pt"] = run("predict", pt, wav)
print("RESULT " + json.dumps(res))
"""


def test_base_install_predicts_and_names_the_extra_of_every_other_command(tmp_path):
    import numpy as np
    import soundfile as sf

    rng = np.random.default_rng(0)  # 4 s of voiced-like syllables (harmonics of a wandering pitch) over faint noise
    t = np.arange(4 * 16000) / 16000
    f0 = 140 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / 16000
    syllables = np.clip(np.sin(2 * np.pi * 2.5 * t), 0, None) ** 2
    sig = sum(np.sin(k * phase) / k for k in range(1, 12)) * syllables
    sig = (0.1 * sig + 0.001 * rng.standard_normal(len(t))).astype(np.float32)
    wav = tmp_path / "voice.wav"
    sf.write(wav, sig, 16000, subtype="PCM_16")
    (tmp_path / "run").mkdir()
    pt = tmp_path / "run" / "best.pt"
    pt.write_bytes(b"not read: torch is missing first")
    r = subprocess.run([sys.executable, "-c", CHILD, json.dumps(BLOCKED), str(wav), str(pt),
                        str(ROOT / "configs" / "default-model.yaml")],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    line = [x for x in r.stdout.splitlines() if x.startswith("RESULT ")]
    assert r.returncode == 0 and line, r.stderr[-3000:]
    res = json.loads(line[-1][len("RESULT "):])

    p = res["predict"]
    assert p["rc"] == 0, p
    from liser import load

    classes = load(None).classes
    assert [json.loads(x)["label"] in classes for x in p["out"]] == [True]
    assert res["modules"] == [], f"liser predict on the default model imported {res['modules']}"

    need = "needs the '{0}' extra: pip install 'liser[{0}]' (no module named {1!r})"
    assert res["train"] == {"rc": 2, "out": [], "err": ["liser: liser train " + need.format("train", "torch")]}
    assert res["serve"] == {"rc": 2, "out": [], "err": ["liser: liser serve " + need.format("serve", "fastapi")]}
    # a torch checkpoint: found out when predict imports torch, said the same way
    assert res["predict_pt"] == {"rc": 2, "out": [], "err": ["liser: liser predict " + need.format("train", "torch")]}


def test_message_and_import_error_mapping():
    assert extras.message("liser train", "train") == "liser train needs the 'train' extra: pip install 'liser[train]'"
    e = ModuleNotFoundError("No module named 'transformers.models'", name="transformers.models")
    assert extras.for_import_error(e, "liser teacher") == (
        "liser teacher needs the 'train' extra: pip install 'liser[train]' (no module named 'transformers')")
    assert extras.for_import_error(ModuleNotFoundError("x", name="numpy"), "liser predict") is None  # base: not an extra
