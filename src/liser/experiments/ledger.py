"""A grid's ledger: each finished run's small files kept in a folder git tracks, so a grid survives a fresh clone.

A run directory (`<out>/<name>/fold<k>`) holds checkpoints and is not
tracked; a machine that loses it loses hours of training. The ledger keeps
what a grid's tables, report and wall-time figures read from a finished run
(config.yaml, metrics.json, epochs.csv, and times.json with their file
times: 10-200 KB a run) under
`<ledger>/<name>/fold<k>`, and puts them back into the run directory before a
grid starts or is collected: a restored run counts as finished (it is skipped
and collected), exactly as if it had been trained here. What a restored run
lacks is its weights (best.pt): commands that need them (export, evaluate
--on, the level-invariance bench) need the run trained here.

An entry whose config.yaml differs from the grid's run (the grid file changed
that row) is not restored: that run trains again and its new files replace
the entry.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from liser.core.atomic import atomic_write_text
from liser.core.config import Config, stale_keys

KEPT = ("config.yaml", "metrics.json", "epochs.csv")  # what collect_grid, the report and the benches read
TIMES = "times.json"  # the KEPT files' modification times: a run's span (config.yaml written at its start,
# metrics.json at its end) is what bench_distill's wall time is made of, and git does not keep file times


def entry(ledger: str | Path, cfg: Config) -> Path:
    """The ledger folder of one run: <ledger>/<name>/fold<k>, mirroring liser.data.workspace.run_dir under <out>."""
    return Path(ledger) / cfg.name / f"fold{cfg.fold}"


def _copy(src_dir: Path, dst_dir: Path, times: dict) -> None:
    """Copy KEPT files that exist, each under a temporary name then renamed (never half-written), with the
    modification times in `times` ({name: seconds}); metrics.json last, since it marks a run finished."""
    dst_dir.mkdir(parents=True, exist_ok=True)
    for name in sorted(KEPT, key=lambda n: n == "metrics.json"):
        if (src_dir / name).is_file():
            tmp = dst_dir / f".{name}.tmp"
            shutil.copyfile(src_dir / name, tmp)
            if name in times:
                os.utime(tmp, (times[name], times[name]))
            tmp.replace(dst_dir / name)


def _times(run: Path) -> dict:
    """{file name: modification time} of a run directory's KEPT files."""
    return {n: (run / n).stat().st_mtime for n in KEPT if (run / n).is_file()}


def keep(run: str | Path, ledger_dir: str | Path) -> bool:
    """Copy a finished run's KEPT files into its ledger folder; False (nothing copied) if it is not finished."""
    run, ledger_dir = Path(run), Path(ledger_dir)
    if not (run / "metrics.json").is_file():
        return False
    times = _times(run)
    _copy(run, ledger_dir, times)
    atomic_write_text(ledger_dir / TIMES, json.dumps(times, indent=1, sort_keys=True) + "\n")
    return True


def restore(cfgs: list[Config], ledger: str | Path, run_dir) -> dict:
    """Put ledger entries back into the run directories that lack metrics.json; keep() the finished runs
    the ledger lacks (trained before the grid had a ledger).

    `run_dir`: cfg -> its run directory (liser.data.workspace.run_dir). Returns
    {"restored": n, "kept": n, "stale": ["<name>/fold<k>: differs in a, b", ...]}.
    A run directory holding a half-trained run of the same config (last.pt) is
    left alone: it resumes, and its result replaces the entry.
    """
    out = {"restored": 0, "kept": 0, "stale": []}
    for cfg in cfgs:
        run, led = Path(run_dir(cfg)), entry(ledger, cfg)
        if (run / "metrics.json").is_file():
            if stale_keys(cfg, run):
                continue  # the run directory holds another config's run: liser.student.train refuses it, say nothing here
            if not (led / "metrics.json").is_file() or not (led / TIMES).is_file() or stale_keys(cfg, led):
                out["kept"] += keep(run, led)
            continue
        if not (led / "metrics.json").is_file() or (run / "last.pt").is_file():
            continue
        diff = stale_keys(cfg, led)
        if diff:
            out["stale"].append(f"{cfg.name}/fold{cfg.fold}: differs in {', '.join(diff)}")
            continue
        times = json.loads((led / TIMES).read_text()) if (led / TIMES).is_file() else {}
        _copy(led, run, times)
        out["restored"] += 1
    return out
