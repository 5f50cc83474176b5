"""What distillation buys the default model: the unseen-domain and adapted tables of issue 24 §2.

    scripts/run_distill_protocols.sh        # teachers, stores, then the runs of configs/grid-distill-protocols.yaml
    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_distill_protocols.py [--json bench/results/distill_protocols.json]

Leave one corpus out over the five labeled corpora (fold k holds out the k-th
corpus of `labeled`). Per held-out corpus, on the SAME test files:

- unseen domain: `unseen-dstl` (folds loco: nothing of the held-out corpus
  anywhere) against the same recipe without distillation (the baseline
  ledger, `speech-views-cons1` of configs/grid-default-model-consistency.yaml:
  same recipe, seed and budget), on every file of the held-out corpus;
- adapted: `adapted-dstl` (folds loco-adapt: the unlabeled audio of half of
  the held-out corpus's speakers joined the pool) against the baseline, on
  the other half (the baseline is re-scored there from its stored test logits);
- the fold's speech teacher on the same files (`--teachers`: its eval.json
  for the unseen table; the adapted half re-scored from the teacher's cached
  encoder features): what the student was taught from.

UAR is over the classes the held-out corpus has (URDU has 4 of the 6),
arg-max over all six outputs, as bench_default_model.py. Targets (the
issue's): unseen mean gain >= 3 points, better on >= 4 of 5, mean UAR >=
0.45 and every corpus >= 0.35; adapted >= the unseen no-dstl + 8 points,
better on 5 of 5, and at least half way from the student to its teacher.
Runs are read from their run folders or, on a fresh clone, the ledgers.

The `*-views4` rows (teach_views 4: the teacher's labels on 4 waveform views
of each pool item as well; issue 24 section 1) are set beside the row with
the clean audio's labels, fold for fold ("views" in the JSON), once any of
their folds has finished; "view_labels" says per fold how often the teacher's
top class on a view's piece is its top class on the clean piece.

Rows whose pool targets are made another way (TARGET_GRIDS: the teacher's mean
over 6 s around each crop, target_context_s; with distribution alignment,
target_prior uniform; with the pool's crops inside its speech spans,
pool_crops speech) are set beside `adapted-dstl` on the same test halves,
with the adapted targets recomputed for each ("target_rows"; in its tables
"clean_labels" is adapted-dstl's student). "pool_priors" says, per fold, how
the teacher's file labels fall on each source of the adapted pool (the
interviews, the held-out half): no label is read.

A second training seed (configs/grid-distill-seeds.yaml: seed 1 of no-dstl,
`unseen-dstl-views4` and `adapted-dstl`, everything else as seed 0) is paired
with seed 0 fold by fold on the same files: "seeds" (unseen domain, view
labels) and "seeds_adapted" (the adapted test halves, clean-audio labels).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from liser.core.errors import LiserError  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from machine import describe, env_command  # noqa: E402

GRID = ROOT / "configs" / "grid-distill-protocols.yaml"
LEDGER = ROOT / "bench" / "ledger" / "grid-distill-protocols"
BASELINE = ROOT / "bench" / "ledger" / "grid-default-model-consistency" / "speech-views-cons1" / "default"
ROWS = ("unseen-dstl", "adapted-dstl")
VIEW_ROWS = {"unseen-dstl-views4": "unseen-dstl", "adapted-dstl-views4": "adapted-dstl",  # teach_views -> its clean row
             "unseen-dstl-views2": "unseen-dstl", "unseen-dstl-views8": "unseen-dstl"}
OUT = ROOT / "bench" / "results" / "distill_protocols.json"
SEED_GRID = ROOT / "configs" / "grid-distill-seeds.yaml"  # seed 1 of no-dstl, unseen-dstl-views4, adapted-dstl
TARGET_GRIDS = {"adapted-dstl-ctx6": ROOT / "configs" / "grid-distill-context.yaml",  # target_context_s 6
                "adapted-dstl-ctx6-align": ROOT / "configs" / "grid-distill-align.yaml",  # + target_prior uniform
                "adapted-dstl-ctx6-speech": ROOT / "configs" / "grid-distill-speech-crops.yaml"}  # + pool_crops speech


def finished(row_dir: Path, fold: int) -> dict | None:
    """metrics.json of fold `fold` under a row's folder (runs/ or the ledger), or None when not finished."""
    p = row_dir / f"fold{fold}" / "metrics.json"
    return json.loads(p.read_text()) if p.is_file() else None


def run_metrics(cfg, ledger: Path | None) -> dict | None:
    """metrics.json of a grid run (a Config of expand_grid): from its run folder, else from the grid's ledger
    (a fresh clone), else None."""
    return finished(Path(cfg.out) / cfg.name, cfg.fold) or (finished(ledger / cfg.name, cfg.fold) if ledger else None)


def uar_on(m: dict, ids: set[str] | None = None) -> tuple[float, int]:
    """(UAR over the classes present, files) of a run's stored test predictions, restricted to `ids` if given."""
    from liser.core.metrics import uar

    keep = [i for i, t in enumerate(m["test_ids"]) if ids is None or t in ids]
    if not keep:
        raise LiserError(f"{m['config']} fold {m['fold']}: none of the requested test files among its test ids")
    y = np.array(m["test_y"])[keep]
    pred = np.array(m["test_logits"])[keep].argmax(1)
    return uar(y, pred, len(m["classes"])), len(keep)


def teacher_uar(cfg, fold: int, ids: list[str]) -> float | None:
    """The fold's speech teacher's UAR (whole files) on `ids`; None when the teacher is not fitted here."""
    from liser.data.workspace import class_mapped_manifest, labeled_manifest, teacher_dir
    from liser.teachers.speech.teacher import SpeechTeacher, evaluate_speech_teacher

    out = teacher_dir(cfg, fold)
    if not (out / "teacher.json").is_file():
        return None
    manifest = class_mapped_manifest(cfg, labeled_manifest(cfg), list(cfg.classes))
    return float(evaluate_speech_teacher(SpeechTeacher.load(out), manifest, ids, progress=False)["uar"])


def protocol_rows(grid: dict, row: str, base_dir: Path, teachers: bool, ledger: Path | None = None) -> dict:
    """{held-out corpus: {student, no_dstl, gain_points, teacher, files}} of one row, folds that finished
    (read from their run folders or `ledger`, by default the protocol grid's)."""
    from liser.data.workspace import labeled_corpora

    cfgs = {r["cfg"].fold: r["cfg"] for r in grid["runs"] if r["cfg"].name.split("/")[0] == row}
    out = {}
    for k, cfg in sorted(cfgs.items()):
        m = run_metrics(cfg, LEDGER if ledger is None else ledger)
        base = finished(base_dir, k)
        if m is None or base is None:
            continue
        ids = set(m["test_ids"])
        student, n = uar_on(m)
        no_dstl, n_base = uar_on(base, ids)
        if n_base != n:
            raise LiserError(f"{row} fold {k}: the baseline holds {n_base} of the {n} test files")
        t = teacher_uar(cfg, k, sorted(ids)) if teachers else None
        out[labeled_corpora(cfg)[k]] = {"fold": k, "files": n, "student": round(student, 4),
                                       "no_dstl": round(no_dstl, 4),
                                       "gain_points": round(100 * (student - no_dstl), 2),
                                       "teacher": None if t is None else round(t, 4)}
    return out


def targets(unseen: dict, adapted: dict) -> dict:
    """The issue's targets, each True/False, or None while a table is incomplete (fewer than 5 corpora)."""
    res = {}
    if len(unseen) == 5:
        g = [r["gain_points"] for r in unseen.values()]
        s = [r["student"] for r in unseen.values()]
        res["unseen_gain_ge_3"] = bool(np.mean(g) >= 3)
        res["unseen_better_ge_4_of_5"] = sum(x > 0 for x in g) >= 4
        res["unseen_mean_ge_0.45"] = bool(np.mean(s) >= 0.45)
        res["unseen_every_ge_0.35"] = min(s) >= 0.35
    if len(adapted) == 5 and len(unseen) == 5:
        res["adapted_ge_unseen_no_dstl_plus_8"] = bool(
            np.mean([adapted[c]["student"] for c in adapted]) >= np.mean([unseen[c]["no_dstl"] for c in unseen]) + 0.08)
        res["adapted_better_5_of_5"] = all(r["gain_points"] > 0 for r in adapted.values())
        if all(r["teacher"] is not None for r in adapted.values()):
            res["adapted_half_way_to_teacher"] = all(
                r["student"] - r["no_dstl"] >= 0.5 * (r["teacher"] - r["no_dstl"]) for r in adapted.values())
    return res


def view_labels(cfg) -> dict | None:
    """How the teacher's labels on the views of a teach_views store differ from its labels on the clean audio,
    over the valid pieces: top-1 agreement and total variation distance per view; None without such a store."""
    from liser.data.workspace import store_path
    from liser.teachers.store import SoftLabelStore

    entry = next((e for e in cfg.distilling() if e.kind == "speech"), None)
    path = Path(store_path(cfg, entry)) if entry is not None else None
    if path is None or not (path / "meta.json").is_file():
        return None
    st = SoftLabelStore(path)
    if not st.views:
        return None
    valid = np.asarray(st.valid)
    clean = np.asarray(st.probs, np.float32)[valid]
    views = [np.asarray(st.view_probs[v], np.float32)[valid] for v in range(st.views)]
    return {"store": str(path), "pieces": int(valid.sum()),
            "top1_agreement": [round(float((clean.argmax(1) == q.argmax(1)).mean()), 4) for q in views],
            "total_variation": [round(float(np.abs(clean - q).sum(1).mean() / 2), 4) for q in views]}


def pool_priors(cfg, fold: int) -> dict | None:
    """The teacher's class prior on each source of a fold's adapted pool (no label read): {source: {files,
    label_share: the share of files whose mean over valid pieces peaks at each class, mean: that mean averaged}};
    source = the held-out corpus's half (ids under its name) or "interviews" (the rest). None without the store."""
    from liser.data.workspace import labeled_corpora, store_path
    from liser.teachers.store import SoftLabelStore

    entry = next((e for e in cfg.distilling() if e.kind == "speech"), None)
    path = Path(store_path(cfg, entry)) if entry is not None else None
    if path is None or not (path / "meta.json").is_file():
        return None
    st, corpus = SoftLabelStore(path), labeled_corpora(cfg)[fold]
    groups: dict[str, list] = {}
    for i in st.ids:
        groups.setdefault(corpus if i.startswith(corpus + "/") else "interviews", []).append(st.file_probs(i))
    out = {}
    for name, ps in groups.items():
        ps = np.array(ps)
        share = np.bincount(ps.argmax(1), minlength=len(st.classes)) / len(ps)
        out[name] = {"files": len(ps), "label_share": dict(zip(st.classes, np.round(share, 3).tolist())),
                     "mean": dict(zip(st.classes, np.round(ps.mean(0), 3).tolist()))}
    return out


def against_clean(views: dict, clean: dict) -> dict:
    """A teach_views row's corpora with the clean-label row's student beside it (same test files)."""
    out = {}
    for c, r in views.items():
        if c in clean:
            if clean[c]["files"] != r["files"]:
                raise LiserError(f"{c}: the views row has {r['files']} test files, the clean-label row {clean[c]['files']}")
            out[c] = {**r, "clean_labels": clean[c]["student"],
                      "gain_over_clean_points": round(100 * (r["student"] - clean[c]["student"]), 2)}
    return out


def seed_rows(grid: dict, base_dir: Path, seed_grid: Path, row: str = "unseen-dstl-views4",
              key: str = "views4") -> dict:
    """{held-out corpus: {no_dstl: [seed 0, seed 1], <key>: [...], gain_points: mean over seeds}} for the folds
    where both seeds of no-dstl and of `row` (a protocol grid row; its seed 1 is `row`-s1 in the seed grid)
    finished, on `row`'s test files (the unseen domain: every file of the held-out corpus; adapted: the test half).
    LiserError when a seed-1 run was tested on other files than its seed-0 run."""
    from liser.data.workspace import labeled_corpora
    from liser.experiments.grid import expand_grid, load_grid

    if not seed_grid.is_file():
        return {}
    sg = load_grid(seed_grid)
    ledger = ROOT / sg["ledger"] if sg.get("ledger") else None
    runs = {(r["cfg"].name.split("/")[0], r["cfg"].fold): r["cfg"] for r in expand_grid(sg, 5)}
    zero = {r["cfg"].fold: r["cfg"] for r in grid["runs"] if r["cfg"].name.split("/")[0] == row}
    out = {}
    for k in sorted(zero):
        if (f"{row}-s1", k) not in runs:
            continue
        pairs = {"no_dstl": (finished(base_dir, k), run_metrics(runs[("no-dstl-s1", k)], ledger)),
                 key: (run_metrics(zero[k], LEDGER), run_metrics(runs[(f"{row}-s1", k)], ledger))}
        if any(m is None for pair in pairs.values() for m in pair):
            continue
        for name, (s0, s1) in pairs.items():
            if s0["test_ids"] != s1["test_ids"]:
                raise LiserError(f"{name} fold {k}: seed 1 was tested on other files than seed 0")
        ids = set(pairs[key][0]["test_ids"])
        got = {name: [round(uar_on(m, ids)[0], 4) for m in pair] for name, pair in pairs.items()}
        gain = 100 * (np.mean(got[key]) - np.mean(got["no_dstl"]))
        out[labeled_corpora(zero[k])[k]] = {"fold": k, **got, "gain_points": round(float(gain), 2)}
    return out


def target_rows(base_dir: Path, adapted: dict, unseen: dict, teachers: bool) -> dict:
    """{row: {"corpora": its table beside adapted-dstl's student (same files), "targets": the adapted targets with
    it in adapted-dstl's place}} of the rows of TARGET_GRIDS (how the teacher's labels reach the pool) with a
    finished fold."""
    from liser.experiments.grid import expand_grid, load_grid

    out = {}
    for row, path in TARGET_GRIDS.items():
        if not path.is_file():
            continue
        g = load_grid(path)
        g["runs"] = expand_grid(g, 5)
        rows = protocol_rows(g, row, base_dir, teachers, ROOT / g["ledger"])
        if rows:
            name = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
            out[row] = {"grid": name, "corpora": against_clean(rows, adapted),
                        "targets": {k: v for k, v in targets(unseen, rows).items() if k.startswith("adapted")}}
    return out


def seeds_table(rows: dict, key: str = "views4", title: str = "unseen domain, seeds 0 and 1",
                name: str = "view labels K=4") -> str:
    """The seeds comparison as a Markdown table: each row's two seeds and their mean, the gain of the means."""
    lines = [title, f"| held out | no-dstl (s0, s1) | {name} (s0, s1) | gain of the means (points) |",
             "|---|---|---|---|"]
    for c, r in rows.items():
        a, b = r["no_dstl"], r[key]
        lines.append(f"| {c} | {a[0]:.3f}, {a[1]:.3f} | {b[0]:.3f}, {b[1]:.3f} | {r['gain_points']:+.1f} |")
    means = [np.mean([r[k][i] for r in rows.values()]) for k in ("no_dstl", key) for i in (0, 1)]
    lines.append(f"| mean | {means[0]:.3f}, {means[1]:.3f} | {means[2]:.3f}, {means[3]:.3f} | "
                 f"{np.mean([r['gain_points'] for r in rows.values()]):+.1f} |")
    return "\n".join(lines)


def table(name: str, rows: dict) -> str:
    lines = [f"{name}", "| held out | files | no-dstl | distilled | gain (points) | teacher |", "|---|---|---|---|---|---|"]
    for c, r in rows.items():
        t = "-" if r["teacher"] is None else f"{r['teacher']:.3f}"
        lines.append(f"| {c} | {r['files']} | {r['no_dstl']:.3f} | {r['student']:.3f} | {r['gain_points']:+.1f} | {t} |")
    if rows:
        lines.append(f"| mean | | {np.mean([r['no_dstl'] for r in rows.values()]):.3f} | "
                     f"{np.mean([r['student'] for r in rows.values()]):.3f} | "
                     f"{np.mean([r['gain_points'] for r in rows.values()]):+.1f} | |")
    return "\n".join(lines)


def main(argv=None) -> int:
    from liser.core.atomic import atomic_write_text
    from liser.experiments.grid import expand_grid, load_grid

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--grid", default=str(GRID))
    ap.add_argument("--baseline", default=str(BASELINE), help="folder of the no-dstl runs' fold<k>/metrics.json")
    ap.add_argument("--no-teachers", action="store_true", help="leave the teachers' column out")
    ap.add_argument("--json", default=str(OUT))
    ap.add_argument("--seed-grid", default=str(SEED_GRID), help="the grid of the seed-1 runs")
    ap.add_argument("--protocols-only", action="store_true",
                    help="only --grid's two tables (and its pool priors): no seed pairs or target rows, which "
                         "read the CPU teacher's grids (bench/gpu_distill.sh)")
    args = ap.parse_args(argv)
    grid = load_grid(args.grid)
    grid["runs"] = expand_grid(grid, 5)
    ledger = ROOT / grid["ledger"] if grid.get("ledger") else None  # --grid's own: never another grid's runs
    res = {row: protocol_rows(grid, row, Path(args.baseline), not args.no_teachers, ledger) for row in ROWS}
    if not any(res.values()):
        raise LiserError(f"{args.grid}: no finished fold of {', '.join(ROWS)} yet (scripts/run_distill_protocols.sh)")
    out = {"what": __doc__.split("\n")[0], "command": env_command("bench/bench_distill_protocols.py", list(argv or sys.argv[1:])),
           "date": time.strftime("%Y-%m-%d"), "machine": describe(),
           "load_average": [round(x, 2) for x in os.getloadavg()], "grid": args.grid, "baseline": args.baseline,
           "unseen": res["unseen-dstl"], "adapted": res["adapted-dstl"],
           "targets": targets(res["unseen-dstl"], res["adapted-dstl"])}
    views = {row: against_clean(protocol_rows(grid, row, Path(args.baseline), False, ledger), res[clean])
             for row, clean in VIEW_ROWS.items() if any(r["cfg"].name.split("/")[0] == row for r in grid["runs"])}
    if any(views.values()):
        out["views"] = views
    labels = {row: {k: view_labels(r["cfg"]) for k, r in ((r["cfg"].fold, r) for r in grid["runs"])
                    if r["cfg"].name.split("/")[0] == row} for row in VIEW_ROWS}
    labels = {row: {k: v for k, v in folds.items() if v} for row, folds in labels.items()}
    if any(labels.values()):
        out["view_labels"] = labels  # the teacher on the views against the teacher on the clean audio
    print(table("unseen domain (every file of the held-out corpus)", res["unseen-dstl"]))
    print(table("adapted (the held-out corpus's test half; the other half's audio was in the pool)", res["adapted-dstl"]))
    for row, rows in ((r, v) for r, v in out.get("views", {}).items() if v):
        print(f"{row} against {VIEW_ROWS[row]}: " + ", ".join(
            f"{c} {r['student']:.3f} vs {r['clean_labels']:.3f} ({r['gain_over_clean_points']:+.1f})" for c, r in rows.items()))
    seeds = {} if args.protocols_only else seed_rows(grid, Path(args.baseline), Path(args.seed_grid))
    if seeds:
        out["seeds"] = seeds  # unseen domain, no-dstl against view labels (K = 4), seeds 0 and 1
        print(seeds_table(seeds))
    adapted = {} if args.protocols_only else seed_rows(grid, Path(args.baseline), Path(args.seed_grid),
                                                      "adapted-dstl", "dstl")
    if adapted:
        out["seeds_adapted"] = adapted  # adapted protocol's test halves, no-dstl against clean-audio labels, seeds 0 and 1
        print(seeds_table(adapted, "dstl", "adapted, seeds 0 and 1 (the test halves)", "distilled, clean labels"))
    priors = {r["cfg"].fold: pool_priors(r["cfg"], r["cfg"].fold) for r in grid["runs"]
              if r["cfg"].name.split("/")[0] == "adapted-dstl"}
    if any(priors.values()):
        out["pool_priors"] = {k: v for k, v in priors.items() if v}  # the teacher's label shares per pool source
        for k, v in out["pool_priors"].items():
            print(f"fold {k} teacher's label shares: " + "; ".join(
                f"{src} ({r['files']} files) " + " ".join(f"{c} {x:.2f}" for c, x in r["label_share"].items())
                for src, r in v.items()))
    teaching = {} if args.protocols_only else target_rows(Path(args.baseline), res["adapted-dstl"],
                                                          res["unseen-dstl"], not args.no_teachers)
    if teaching:
        out["target_rows"] = teaching  # adapted rows whose targets are made another way, against adapted-dstl
        for row, r in teaching.items():
            print(table(f"{row} ({r['grid']})", r["corpora"]))
            print(f"{row} against adapted-dstl: " + ", ".join(
                f"{c} {x['gain_over_clean_points']:+.1f}" for c, x in r["corpora"].items()), "targets:", r["targets"])
    print("targets:", json.dumps(out["targets"]))
    atomic_write_text(args.json, json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except LiserError as e:
        print(f"liser: {e}", file=sys.stderr)
        sys.exit(2)
