"""Benchmark the distillation grid (issue: distillation and the paper's experiments).

Runs a grid with `liser.experiments.grid.run_grid` (finished runs are skipped, so
an interrupted benchmark resumes), copies its report to docs/results/<grid>/,
and writes the Table 2 figures as JSON: per configuration the mean / std of
test UAR and WAR over folds and the fold-by-fold difference to no-dstl; the
wall time of this call; the summed time of every run (from their epochs.csv)
and so the speed-up that parallel runs gave. Prints a markdown table.

The teachers' stores must exist first (see the grid file's comment).

    .venv/bin/python bench/bench_distill.py configs/grid-ravdess-cpu.yaml --json bench/results/ravdess_distill.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import sys
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_seconds(run_dir: Path) -> float:
    """Training + validation time of one run, summed from its epochs.csv (test evaluation not included)."""
    p = run_dir / "epochs.csv"
    if not p.is_file():
        return 0.0
    with open(p, newline="") as f:
        return sum(float(r["epoch_s"]) for r in csv.DictReader(f))


def grid_span(runs: list[dict]) -> float:
    """Seconds during which at least one run was training: the union of each run's [start (its config.yaml),
    end (its metrics.json)], so the gaps of a grid stopped and resumed across sessions do not count."""
    spans = []
    for r in runs:
        d = Path(r["cfg"].out) / r["cfg"].name / f"fold{r['fold']}"
        if (d / "metrics.json").is_file():
            spans.append(((d / "config.yaml").stat().st_mtime, (d / "metrics.json").stat().st_mtime))
    total, end = 0.0, float("-inf")
    for a, b in sorted(spans):
        if b > end:
            total += b - max(a, end)
            end = b
    return total


def pool_stats(cfg, n_train: int) -> dict:
    """The config's unlabeled pool (hours, items) and how much of it one run sees: each training step draws
    `unlabeled_batch` pool items (one random 3 s crop each, liser.student.train), ceil(n_train / batch_size) steps an
    epoch, so `pool_passes` = how many times each item is drawn on average."""
    import math

    from liser.experiments.report import pool_size

    hours, n_items = pool_size(cfg)
    seen = cfg.epochs * math.ceil(n_train / cfg.batch_size) * cfg.unlabeled_batch
    return {"pool_hours": hours, "pool_items": n_items,
            "pool_items_drawn": seen, "pool_passes": round(seen / max(n_items, 1), 2)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("grid", nargs="?", default=str(REPO / "configs" / "grid-ravdess-cpu.yaml"))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a key of the base config")
    ap.add_argument("--jobs", type=int, help="parallel runs (default: the grid's)")
    ap.add_argument("--json", default=None, help="default: bench/results/<corpus>_distill.json")
    ap.add_argument("--collect-only", action="store_true",
                    help="train nothing: tables and report from the runs that finished (wall = time during which a run was training)")
    ap.add_argument("--machine", default="", help="where the runs were trained, when not here (e.g. a GPU machine)")
    ap.add_argument("--merge", action="store_true",
                    help="keep the --json file's rows this collection has no runs for (each marked with the date and "
                         "machine of the collection it came from), so rows of an earlier machine are not dropped")
    ap.add_argument("--docs", default=None, help="where the report is copied (default: docs/results/<grid name>)")
    args = ap.parse_args()
    from liser.core.util import absolute_paths

    absolute_paths(args, "json", "docs")  # outputs: relative to where the script was run
    os.chdir(REPO)  # the grids' relative paths are relative to the repository

    from liser.experiments.grid import (check_finished, collect_grid, expand_grid, fold_count, load_grid, restore_ledger,
                                  run_grid)
    from liser.experiments.report import paired_delta, pool_curves, reference_name, teacher_summary

    grid = load_grid(args.grid, args.set)
    base = grid["base"]
    t0 = time.time()
    if args.collect_only:  # an interrupted grid: its finished runs, nothing trained
        from liser.experiments.report import write_report

        runs = expand_grid(grid, fold_count(base))
        restore_ledger(grid, runs)  # runs trained in earlier sessions, on other machines
        check_finished(args.grid, runs)
        if not any((Path(r["cfg"].out) / r["cfg"].name / f"fold{r['fold']}" / "metrics.json").is_file() for r in runs):
            sys.exit(f"bench_distill: {args.grid}: no finished run to collect (in {base.out} or its ledger)")
        wall = grid_span(runs)
        res = collect_grid(runs)
        res.update({"grid": args.grid, "runs_trained": 0, "runs_total": len(runs), "jobs": args.jobs or grid["jobs"],
                    "wall_s": round(wall, 1)})
        write_report(base.out, res, base, args.grid, args.set)
    else:
        res = run_grid(args.grid, args.set, args.jobs, progress=False)
        wall = time.time() - t0

    configs = {}
    rows = expand_grid(grid, fold_count(base))
    for name, by_frac in res["configs"].items():
        t = by_frac.get("1")
        if not t:
            continue
        row = {"uar_mean": round(t["uar_mean"], 4), "uar_std": round(t["uar_std"], 4),
               "war_mean": round(t["war_mean"], 4), "war_std": round(t["war_std"], 4), "folds": t["n_folds"],
               "uar_per_fold": [round(f["uar"], 4) for f in t["folds"]],
               "val_uar_mean": round(sum(f["val_uar"] for f in t["folds"]) / len(t["folds"]), 4),
               "best_values": sorted({f["variant"] for f in t["folds"]}),
               "chosen_per_fold": [f["variant"] for f in t["folds"]]}
        if any("seeds" in f for f in t["folds"]):  # a row repeated over seeds: each fold's figure is their mean
            row["seeds_per_fold"] = [f.get("seeds") for f in t["folds"]]
            row["uar_per_seed_per_fold"] = [[round(u, 4) for u in f.get("uar_per_seed", [])] for f in t["folds"]]
        if len(t.get("variants", {})) > 1:
            row["variants"] = {v: {k: round(x, 4) if isinstance(x, float) else [round(u, 4) for u in x]
                                   if k == "uar_per_fold" else x for k, x in st.items() if k != "run_dir"}
                               for v, st in t["variants"].items()}
        ref_name = reference_name(name, res["configs"])
        ref = res["configs"].get(ref_name, {}).get("1") if ref_name else None
        if ref:
            d = paired_delta(t, ref)
            if d:
                row["uar_gain_points"] = {k: round(v, 2) if isinstance(v, float) else v for k, v in d.items()}
                row["compared_with"] = ref_name
        cfg = next(r["cfg"] for r in rows if r["config"] == name)
        row["recipe"] = "liser" if cfg.level_norm else "paper"
        row["epochs"] = cfg.epochs
        if cfg.lambda_sd > 0 or cfg.lambda_vd > 0:
            m0 = json.loads((Path(t["folds"][0]["run_dir"]) / "metrics.json").read_text())
            row.update(pool_stats(cfg, m0["n_train"]))
        configs[name] = row
    full = {name: by_frac["1"] for name, by_frac in res["configs"].items() if by_frac.get("1")}
    curves = {label: [{k: round(x, 4 if k.startswith("uar") else 2) if isinstance(x, float) else x for k, x in p.items()}
                      for p in pts]
              for label, pts in pool_curves(full).items()}
    run_s = sum(run_seconds(Path(r["cfg"].out) / r["cfg"].name / f"fold{r['fold']}") for r in rows)

    out = {"configs": configs, "pool_curves": curves, "wall_s": round(wall, 1), "wall_definition": "time during which at least one run was training (union of the runs' spans)"
           if args.collect_only else "this call, training included", "runs_trained_this_call": res["runs_trained"],
           "runs_total": res["runs_total"], "jobs": res["jobs"],
           "run_s_total": round(run_s, 1), "cpu_hours": round(run_s / 3600, 2),
           "cpu_hours_definition": "summed epoch times of every run of the grid (every searched value), each run on 1 thread",
           "parallel_speedup": round(run_s / wall, 2) if (args.collect_only or res["runs_trained"] == res["runs_total"]) and wall > 0
           else None,
           "grid": args.grid, "overrides": args.set, "corpus": base.corpus,
           "epochs": base.epochs, "lr": base.lr, "patience": base.patience,
           "machine": args.machine or f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}",
           "chosen_on_validation": max(configs, key=lambda n: configs[n]["val_uar_mean"]) if configs else None,
           "date": date.today().isoformat(), "command": " ".join(["python"] + sys.argv),
           # the per-fold speech teachers' test UAR and validation ECE (raw / at the fitted temperature)
           "speech_teachers": teacher_summary(base)}

    docs = Path(args.docs or REPO / "docs" / "results" / Path(args.grid).stem)
    docs.mkdir(parents=True, exist_ok=True)
    for f in Path(base.out).iterdir():
        if f.is_file() and f.suffix in (".md", ".png", ".json"):
            shutil.copy2(f, docs / f.name)
    out["report"] = str(docs.relative_to(REPO) / "report.md") if docs.is_relative_to(REPO) else str(docs / "report.md")

    path = Path(args.json or REPO / "bench" / "results" / f"{base.corpus}_distill.json")
    if args.merge and path.is_file():
        merge_earlier(out, json.loads(path.read_text()))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(out, indent=1) + "\n")
    os.replace(tmp, path)

    print(json.dumps(out, indent=1))
    print("| configuration | UAR | WAR | Δ UAR vs no-dstl (points, paired by fold) | folds |")
    print("|---|---|---|---|---|")
    for name, r in configs.items():
        g = r.get("uar_gain_points")
        gain = f"{g['mean']:+.1f} ± {g['std']:.1f} ({g['better']}/{g['folds']} better)" if g else ""
        print(f"| {name} | {r['uar_mean']:.3f} ± {r['uar_std']:.3f} | {r['war_mean']:.3f} ± {r['war_std']:.3f} "
              f"| {gain} | {r['folds']} |")
    print(f"\nwall {wall / 60:.1f} min for {res['runs_trained']} runs with {res['jobs']} jobs; "
          f"summed run time {run_s / 60:.1f} min")


OTHER_TOOLS_KEYS = ("fractions", "figure2_claim")  # bench_label_fractions.py's keys in the same results file


def merge_earlier(out: dict, old: dict) -> None:
    """--merge: rows (and pool curves) of the earlier file that this collection lacks are kept, each row marked
    `collected` with the earlier collection's date and machine; the earlier collections' summaries go to
    `earlier`. Rows collected now are marked with today's date and this machine; the earlier rows they
    replace are kept in `replaced` ({name: [rows]}), so a kept row's reference stays in the file. Keys that
    bench_label_fractions.py wrote are kept, and so are the speech teachers' figures when this machine has
    none of the teachers (a fresh clone collecting from the ledger)."""
    stamp = {"date": out["date"], "machine": out["machine"]}
    for row in out["configs"].values():
        row["collected"] = stamp
    old_stamp = {"date": old.get("date"), "machine": old.get("machine")}
    replaced = {name: list(rows) for name, rows in old.get("replaced", {}).items()}
    for name, row in old.get("configs", {}).items():
        if name in out["configs"]:  # measured again: the earlier row stays, under `replaced` (kept rows pair with it)
            was = row.get("collected", old_stamp)
            if was != stamp:  # the same collection (date and machine) collected again: nothing to keep
                replaced.setdefault(name, []).append({**row, "collected": was})
        else:
            kept = {**row, "collected": row.get("collected", old_stamp)}
            if "uar_gain_points" in kept:  # paired with the reference row of ITS collection, not today's
                kept["compared_with_collected"] = kept.get("compared_with_collected", kept["collected"])
            out["configs"][name] = kept
    if replaced:
        out["replaced"] = replaced
    for label, pts in old.get("pool_curves", {}).items():
        out["pool_curves"].setdefault(label, pts)
    for key in OTHER_TOOLS_KEYS:  # written by bench_label_fractions.py into the same file: not ours to drop
        if key in old:
            out.setdefault(key, old[key])
    if not out.get("speech_teachers") and old.get("speech_teachers"):
        # the teachers' eval.json live in the (git-ignored) work folder: a fresh clone collecting the ledger
        # has none, and the earlier collection's figures stay, marked with where they came from
        st = old["speech_teachers"]
        out["speech_teachers"] = st if "collected" in st else {**st, "collected": old_stamp}
    summary = {k: old.get(k) for k in ("date", "machine", "command", "wall_s", "cpu_hours", "runs_total")}
    out["earlier"] = old.get("earlier", []) + [summary]


if __name__ == "__main__":
    main()
