"""Benchmark: does a student's label depend on the recording level? (issue 13, section 3)

For each run given, 20 fixed RAVDESS test files of the run's fold (the first
20 test items in manifest order) are predicted as recorded and scaled by
0.5, 0.25 and 2 (clipped to [-1, 1]); `label_changes` counts, per gain, the
files whose label differs from the unscaled one. Writes --json.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_level_invariance.py \\
        --run runs/grid-ravdess-distill-cpu/liser-sp-dstl/default/fold0 \\
        --run runs/grid-ravdess-distill-cpu/sp-dstl/default/fold0 --json bench/results/level_invariance.json
"""

from __future__ import annotations

import argparse
import json
import platform
from datetime import date
from pathlib import Path

import numpy as np

GAINS = (0.5, 0.25, 2.0)
N_FILES = 20


def label_changes(run: Path) -> dict:
    """{gain: files whose label changed} over the run's first 20 test files, and which files."""
    import liser
    from liser.data.audio import load_audio
    from liser.core.config import Config
    from liser.data.workspace import fold_items, labeled_manifest

    cfg = Config.load(run / "config.yaml")
    manifest = labeled_manifest(cfg)
    test = fold_items(cfg, manifest)[2][:N_FILES]
    model = liser.load(run)
    changes = {str(g): 0 for g in GAINS}
    for it in test:
        wave = load_audio(manifest.abspath(it))
        ref = model.predict(wave, 16000).label
        for g in GAINS:
            changes[str(g)] += model.predict(np.clip(wave * g, -1.0, 1.0), 16000).label != ref
    return {"run": str(run), "level_norm": cfg.level_norm, "files": [it.id for it in test], "label_changes": changes}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", action="append", required=True, help="a run directory (repeatable)")
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    rows = [label_changes(Path(r)) for r in args.run]
    for r in rows:
        print(f"{r['run']}: level_norm={r['level_norm']} label changes over {N_FILES} files: {r['label_changes']}")
    out = {"date": str(date.today()), "machine": f"{platform.machine()}, Python {platform.python_version()}",
           "command": "python bench/bench_level_invariance.py " + " ".join(f"--run {r}" for r in args.run),
           "gains": list(GAINS), "n_files": N_FILES, "runs": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
