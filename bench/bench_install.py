"""Benchmark: what `pip install liser` weighs and does, from the wheel, in a fresh venv (issue 25 §1).

Builds the wheel from this tree (pip wheel --no-deps: setuptools from the
registry in pip's build isolation, the sources copied out first so that the
build leaves nothing in the repository), makes a fresh venv with nothing in
it (`python -m venv`: pip and setuptools only), installs the wheel with its
base dependencies from the package registry, and measures:

- the venv's size on disk (du), the empty venv's (what every venv has), and
  the largest installed packages;
- that `import torch` fails there;
- `liser predict --json` with the shipped default model on real files of
  every kind a user brings (RAVDESS FLAC, TESS Ogg Opus, an interview MP4,
  and MP3, M4A/AAC and 3-channel WAV made from a RAVDESS file here): every
  label is one of the model's classes and equals the development venv's
  `liser predict` on the same file;
- `liser train CONFIG` and `liser serve`: exit 2 and one line naming the extra.

tests/test_wheel.py (slow) runs the same functions. The issue's figure for the
old install (torch pinned, every training library in the base) is 2.2 GB;
for reference this also reports the development venv (scripts/setup.sh: CPU
torch, every extra), measured with du where it is.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_install.py      # writes bench/results/install.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
OUT = ROOT / "bench" / "results" / "install.json"


def clean_env() -> dict:
    """The environment for the fresh venv's commands: no PYTHONPATH (it would import this tree, not the wheel)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def run(cmd: list, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)


def build_wheel(out: Path) -> Path:
    """The wheel of this tree (pyproject.toml, README.md, src/ copied to a temporary folder and built there)."""
    src = out / "src-copy"
    src.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (ROOT / name).is_file():
            shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    r = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check", "-q", "-w", out, src],
            env=clean_env(), timeout=600)
    if r.returncode:
        raise RuntimeError(f"pip wheel failed: {r.stderr[-2000:]}")
    shutil.rmtree(src)
    (wheel,) = out.glob("liser-*.whl")
    return wheel


def du_bytes(path: Path) -> int:
    """Bytes on disk of a folder (du -sb: apparent sizes, so machines with other block sizes agree)."""
    return int(run(["du", "-sb", path], check=True).stdout.split()[0])


def make_venv(path: Path) -> Path:
    """A fresh venv (pip and setuptools only) from the base interpreter, not the development venv; its python."""
    base = getattr(sys, "_base_executable", sys.executable)
    run([base, "-m", "venv", path], check=True, env=clean_env(), timeout=300)
    return path / "bin" / "python"


def install(python: Path, wheel: Path) -> float:
    """pip install the wheel with its base dependencies from the registry; the seconds it took."""
    t = time.perf_counter()
    r = run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-cache-dir", wheel],
            env=clean_env(), timeout=900)
    if r.returncode:
        raise RuntimeError(f"pip install failed: {r.stderr[-2000:]}")
    return time.perf_counter() - t


def largest_packages(venv: Path, n: int = 10) -> dict:
    (site,) = venv.glob("lib/python*/site-packages")
    sizes = {p.name: du_bytes(p) for p in site.iterdir() if p.is_dir()}
    return dict(sorted(sizes.items(), key=lambda kv: -kv[1])[:n])


def real_files(folder: Path) -> list[Path]:
    """Real speech of every kind a user brings, made from ../shared/data where it is not there as such."""
    import av
    import numpy as np
    import soundfile as sf

    rav = sorted((DATA / "ravdess" / "Actor_01").glob("*.flac"))[20]
    files = [rav, sorted((DATA / "tess").rglob("*.opus"))[0], sorted((DATA / "av" / "interviews").rglob("*.mp4"))[0]]
    x, sr = sf.read(rav, dtype="float32")
    for name, codec, fmt in (("ravdess.mp3", "mp3", None), ("ravdess.m4a", "aac", "ipod")):
        with av.open(str(folder / name), "w", format=fmt) as c:
            s = c.add_stream(codec, rate=sr, layout="mono")
            frame = av.AudioFrame.from_ndarray((x[None] * 32767).astype(np.int16), format="s16", layout="mono")
            frame.sample_rate = sr
            for packet in [*s.encode(frame), *s.encode(None)]:
                c.mux(packet)
        files.append(folder / name)
    three = folder / "ravdess-3ch.wav"  # 3+ channels: the speech channel is chosen (scipy's band-pass)
    sf.write(three, np.stack([0.05 * x[::-1], x, 0.3 * x], 1), sr, subtype="PCM_16")
    return files + [three]


def predictions(cmd: list, files: list[Path], env: dict) -> dict:
    """{path: (label, p)} from `liser predict --json --threads 1` (one JSON object per file)."""
    r = run([*cmd, "predict", *files, "--json", "--threads", "1"], env=env, timeout=600)
    if r.returncode:
        raise RuntimeError(f"{cmd} predict: exit {r.returncode}: {r.stderr[-2000:]}")
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    return {row["path"]: (row["label"], row["p"]) for row in rows}


def one_line(cmd: list, args: list, env: dict) -> dict:
    r = run([*cmd, *args], env=env, timeout=120, cwd=ROOT)
    return {"rc": r.returncode, "stderr": r.stderr.splitlines(), "stdout": r.stdout.splitlines()}


def measure(work: Path) -> dict:
    """Everything above in `work`; the results as a dict."""
    wheel = build_wheel(work / "dist")
    empty = make_venv(work / "empty-venv")
    python = make_venv(work / "venv")
    install_s = install(python, wheel)
    venv = python.parents[1]
    liser = [venv / "bin" / "liser"]
    env = clean_env()
    torch = run([python, "-c", "import torch"], env=env)
    classes = json.loads(run([python, "-c", "import json, liser; print(json.dumps(liser.load().classes))"],
                             env=env, check=True).stdout)
    files = real_files(work)
    got = predictions(liser, files, env)
    dev_env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    dev = predictions([sys.executable, "-m", "liser.cli"], files, dev_env)
    frozen = [line.split(" @ ")[0] for line in  # liser itself: its name, not the temporary wheel's path
              run([python, "-m", "pip", "freeze", "--disable-pip-version-check"], env=env).stdout.splitlines()]
    return {
        "wheel": wheel.name, "wheel_bytes": wheel.stat().st_size,
        "venv_bytes": du_bytes(venv), "empty_venv_bytes": du_bytes(empty.parents[1]),
        "largest_packages_bytes": largest_packages(venv), "installed": frozen, "install_s": round(install_s, 1),
        "torch_import_fails": torch.returncode != 0, "classes": classes,
        "predict": {Path(f).name: {"label": got[str(f)][0], "p": got[str(f)][1], "dev_label": dev[str(f)][0],
                                   "dev_p": dev[str(f)][1]} for f in files},
        "train": one_line(liser, ["train", "configs/default-model.yaml"], env),
        "serve": one_line(liser, ["serve", "--port", "0"], env),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(OUT), help=f"JSON to write (default {OUT.relative_to(ROOT)})")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="liser-install-") as tmp:
        r = measure(Path(tmp))
    dev_venv = ROOT / ".venv"
    result = {
        "command": "OMP_NUM_THREADS=1 .venv/bin/python bench/bench_install.py",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()}, Python {platform.python_version()}",
        "date": date.today().isoformat(),
        **r,
        "dev_venv_bytes": du_bytes(dev_venv.resolve()) if dev_venv.exists() else None,
        "note": "venv_bytes: the fresh venv after `pip install liser-*.whl` (base dependencies only), du -sb; "
                "empty_venv_bytes: a venv before any install (pip, setuptools); dev_venv_bytes: scripts/setup.sh's "
                "venv (CPU torch and every extra: train, serve, ray, dev); the issue measured 2.2 GB for the old "
                "base install",
    }
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    mb = 1e6
    print(f"wheel {r['wheel_bytes'] / 1e3:.0f} KB; fresh venv {r['venv_bytes'] / mb:.0f} MB (empty venv "
          f"{r['empty_venv_bytes'] / mb:.0f} MB); install {r['install_s']} s; torch absent: {r['torch_import_fails']}")
    for name, p in r["predict"].items():
        print(f"  {name}: {p['label']} p={p['p']:.3f} (dev venv: {p['dev_label']} p={p['dev_p']:.3f})")
    print(f"  train: exit {r['train']['rc']}: {r['train']['stderr']}")
    print(f"  serve: exit {r['serve']['rc']}: {r['serve']['stderr']}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
