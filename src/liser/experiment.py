"""Many runs: all folds of a configuration (in parallel processes), and re-evaluation of a run.

Every run is resumable and a finished run (one with metrics.json) is skipped,
so an interrupted grid is continued by re-running the same command.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from .config import Config
from .errors import LiserError


def _train_one(cfg_dict: dict, threads: int, progress: bool) -> str:
    from .train import train

    cfg = Config.from_dict({**cfg_dict, "threads": threads})
    return str(train(cfg, progress=progress))


def run_folds(cfg: Config, folds: list[int] | None = None, jobs: int = 1, progress: bool = True) -> dict:
    """Train and test `cfg` on each fold; write <out>/<name>/summary.json; return the summary."""
    from .evaluate import summarize
    from .train import fold_items, labeled_manifest
    from .features import build_features

    manifest = labeled_manifest(cfg)  # prepare once, before any worker starts
    build_features(manifest, cfg.work, threads=cfg.threads or os.cpu_count() or 1, progress=progress)
    if folds is None:
        from .folds import folds_for_manifest, load_folds

        try:
            n = len(load_folds(cfg.folds or manifest.corpus))
        except LiserError:
            if cfg.folds:
                raise
            n = len(folds_for_manifest(manifest, seed=cfg.seed))
        folds = list(range(n))
    for k in folds:
        fold_items(cfg.replace(fold=k), manifest)  # bad fold / class settings fail before training
    t0 = time.time()
    cores = os.cpu_count() or 1
    jobs = max(1, min(jobs, len(folds)))
    if jobs == 1:
        runs = [_train_one(cfg.replace(fold=k).to_dict(), cfg.threads or cores, progress) for k in folds]
    else:
        import multiprocessing as mp

        per = cfg.threads or max(1, cores // jobs)
        with ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn")) as pool:
            runs = list(pool.map(_train_one, [cfg.replace(fold=k).to_dict() for k in folds],
                                 [per] * len(folds), [False] * len(folds)))
    summary = summarize(runs)
    summary.update({"config": cfg.name, "folds_run": folds, "wall_s": round(time.time() - t0, 1),
                    "runs": runs, "table": summary_table({cfg.name: summary})})
    out = Path(cfg.out) / cfg.name / "summary.json"
    tmp = out.with_name(".summary.json.tmp")
    tmp.write_text(json.dumps(summary, indent=1) + "\n")
    os.replace(tmp, out)
    return summary


def summary_table(rows: dict[str, dict]) -> str:
    """Markdown table: configuration, UAR mean +- std, WAR mean +- std, folds."""
    lines = ["| configuration | UAR | WAR | folds |", "|---|---|---|---|"]
    for name, s in rows.items():
        if not s.get("folds"):
            lines.append(f"| {name} | - | - | 0 |")
            continue
        lines.append(f"| {name} | {s['uar_mean']:.3f} ± {s['uar_std']:.3f} | {s['war_mean']:.3f} ± {s['war_std']:.3f} | {s['folds']} |")
    return "\n".join(lines)


def evaluate_run(run: str | Path, stride_s: float = 0.1, write: bool = False) -> dict:
    """Re-evaluate a run's best.pt on its fold's test speakers with the given stride."""
    import torch

    from .evaluate import evaluate_items, plot_confusion
    from .features import build_features
    from .student import Student
    from .train import fold_items, labeled_manifest

    run = Path(run)
    if not (run / "best.pt").is_file() or not (run / "config.yaml").is_file():
        raise LiserError(f"{run}: not a run directory (no best.pt / config.yaml)")
    cfg = Config.load(run / "config.yaml")
    ck = torch.load(run / "best.pt", weights_only=True, map_location="cpu")
    manifest = labeled_manifest(cfg)
    _, _, test, classes = fold_items(cfg, manifest)
    if list(ck["classes"]) != list(classes):
        raise LiserError(f"{run}/best.pt: classes {ck['classes']} differ from the config's {classes}")
    model = Student(len(classes), len(ck["video_classes"]))
    model.load_state_dict(ck["state_dict"])
    cache = build_features(manifest, cfg.work, progress=False)
    m, _ = evaluate_items(model, cache, test, classes, stride_s)
    if write:
        old = json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").is_file() else {}
        old["test"] = m
        tmp = run / ".metrics.json.tmp"
        tmp.write_text(json.dumps(old, indent=1) + "\n")
        os.replace(tmp, run / "metrics.json")
        plot_confusion(m["confusion"], classes, run / "confusion.png", f"{cfg.name} fold {cfg.fold}")
    return m
