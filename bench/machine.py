"""What a bench result was measured on: the CPU, its cores, the load, and the commit of the code.

Imported by the bench scripts (bench/ is their folder on sys.path when run as `python bench/X.py`).
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CODE = ("src", "configs", "scripts", "bench", ":!bench/results", ":!bench/ledger")  # what decides a figure; results do not


def cpu_model() -> str:
    """/proc/cpuinfo's model name, else platform's processor or machine."""
    try:
        return next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def git(*args: str) -> str:
    """A git command's output in the checkout, "" when git or the checkout is missing."""
    try:
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def describe(threads: int = 1) -> dict:
    """{cpu, cores, threads, python, load_average, git_commit, git_dirty}: what a results JSON records beside its
    figures (the load matters for timings; the commit for re-running; dirty = code differs from it, results aside)."""
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "threads": threads, "python": platform.python_version(),
            "load_average": [round(x, 2) for x in os.getloadavg()], "git_commit": git("rev-parse", "HEAD"),
            "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no", "--", *CODE))}


def env_command(script: str, argv: list[str], env: tuple[str, ...] = ("OMP_NUM_THREADS", "LISER_CACHE")) -> str:
    """The command line that reproduces this run: the named environment variables that are set, then the script."""
    prefix = " ".join(f"{k}={os.environ[k]}" for k in env if k in os.environ)
    return " ".join(x for x in (prefix, "python", script, *argv) if x)
