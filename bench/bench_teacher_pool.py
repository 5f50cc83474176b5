"""How right, and how well calibrated, is each fold's speech teacher on the unlabeled pool it labels?

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_teacher_pool.py configs/grid-ravdess-distill-cpu.yaml \
        configs/grid-cremad-cpu.yaml configs/grid-emodb.yaml --as unlabeled=cremad --map calm=neutral

The paper's open question 1 asks whether confidence weighting (eq. 5) hurt
CREMA-D because its teachers are miscalibrated. A teacher's ECE on its own
corpus's validation speakers (bench_distill's `speech_teachers`) is not where
eq. 5 acts: the weights are the teacher's confidence on the *unlabeled pool*,
out of its domain. Much of the pool here is labeled corpora whose labels
training ignores (RAVDESS, TESS, URDU, EmoDB, CREMA-D), so this reads each
fold's speech store and scores it against those labels:

- piece level (what eq. 5 weighs): accuracy, mean confidence, ECE, and the
  AUROC of confidence for "this piece's arg-max is right" (0.5: the weights
  carry no information; eq. 5 can only help above it);
- file level (valid pieces' mean): UAR over the classes the teacher and the
  corpus share, and ECE.

`files` counts the files scored: those of a class the teacher cannot output
(EmoDB's boredom, RAVDESS's surprised for a 6-class teacher) are left out
and counted in `dropped`.

Pool entries are matched to labels by file path, so an entry prepared with a
generic adapter (`unlabeled:ROOT`) is scored by naming its corpus with
`--as unlabeled=cremad`. Test classes the teacher cannot output are left out
and counted (`dropped`); `--map calm=neutral` maps one onto another. Video
(interviews) has no emotion labels and is not scored. Reads stores only: a
few seconds per fold. `GRID:ROW` scores the stores of one row of the grid
(a row with a teacher of its own). Writes `--json` (default
bench/results/teacher_pool.json): {grid: {pool corpus: {figure: mean over
folds, "per_fold": [...]}}}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import date
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from liser.core.errors import LiserError  # noqa: E402


def pool_labels(cfg, corpus_of: dict[str, str], work: str) -> tuple[dict[str, tuple[str, str]], list[str]]:
    """({pool item id: (corpus, emotion label)}, [skipped pool entries, each with its reason]).

    An `adapter:root` entry is read with the corpus adapter `corpus_of.get(adapter, adapter)` and
    matched to the pool by file path. An entry without labels (the interview videos, a generic
    `unlabeled:` entry not named with --as) is skipped and listed. Raises LiserError when an --as
    entry's corpus cannot be read from its root, or none of its files is a labeled one.
    """
    from liser.experiments.cross import scored_manifest
    from liser.data.workspace import unlabeled_manifests

    by_path, skipped = {}, []
    for spec, m in zip(cfg.unlabeled, unlabeled_manifests(cfg)):
        adapter, _, root = spec.partition(":")
        corpus = corpus_of.get(adapter, adapter)
        try:
            labeled = scored_manifest(f"{corpus}:{root}", work)
        except LiserError as e:  # no such corpus adapter, or no labels (the interview videos)
            if adapter in corpus_of:
                raise LiserError(f"--as {adapter}={corpus}: {e}") from None
            skipped.append(f"{spec}: {e} (if it is a labeled corpus, name it with --as {adapter}=CORPUS)")
            continue
        paths = {str(labeled.abspath(it).resolve()): it.label for it in labeled.items if it.label}
        matched = 0
        for it in m.items:
            lab = paths.get(str(m.abspath(it).resolve()))
            if lab:
                by_path[it.id] = (corpus, lab)
                matched += 1
        if not matched:
            if adapter in corpus_of:
                raise LiserError(f"--as {adapter}={corpus}: none of the {len(m.items)} files of {spec} is a labeled "
                                 f"{corpus} file")
            skipped.append(f"{spec}: none of its files is a labeled {corpus} file")
    return by_path, skipped


def score_store(store, labels: dict[str, tuple[str, str]], maps: dict) -> dict[str, dict]:
    """Per pool corpus: piece and file accuracy/ECE/confidence of one fold's store (module docstring)."""
    from sklearn.metrics import roc_auc_score

    from liser.teachers.calibration import ece
    from liser.experiments.cross import class_mapping
    from liser.core.metrics import uar

    classes = list(store.classes)
    by_corpus: dict[str, list] = {}
    for item_id in store.ids:
        if item_id in labels:
            by_corpus.setdefault(labels[item_id][0], []).append(item_id)
    out = {}
    for corpus, ids in by_corpus.items():
        names = sorted({labels[i][1] for i in ids})
        mapping = class_mapping(names, classes, maps, strict=False)
        piece_p, piece_y, file_p, file_y = [], [], [], []
        dropped: dict[str, int] = {}
        for i in ids:
            target = mapping[labels[i][1]]
            if not target:
                dropped[labels[i][1]] = dropped.get(labels[i][1], 0) + 1
                continue
            probs, valid = store.pieces(i)
            p = np.asarray(probs, np.float64)[np.asarray(valid, bool)]
            if not len(p):
                continue
            piece_p.append(p)
            piece_y += [classes.index(target)] * len(p)
            file_p.append(p.mean(0))
            file_y.append(classes.index(target))
        if not file_p:
            continue
        pp, py = np.concatenate(piece_p), np.array(piece_y)
        fp, fy = np.array(file_p), np.array(file_y)
        right = pp.argmax(1) == py
        out[corpus] = {"piece_accuracy": float(right.mean()), "piece_mean_confidence": float(pp.max(1).mean()),
                       "piece_ece": ece(pp, py),
                       "piece_confidence_auroc": float(roc_auc_score(right, pp.max(1))) if 0 < right.mean() < 1 else None,
                       "file_uar": uar(fy, fp.argmax(1), len(classes)), "file_ece": ece(fp, fy),
                       "files": len(fy), "pieces": len(py), "classes": sorted({classes[k] for k in fy}),
                       "dropped": dropped}
    return out


def grid_figures(grid_path: str, corpus_of: dict, maps: dict) -> dict:
    """{pool corpus: {figure: mean over folds, "per_fold": [fold figures]}} for one grid's speech stores."""
    from liser.experiments.grid import fold_count, load_grid
    from liser.teachers.store import SoftLabelStore

    grid_path, _, row = grid_path.partition(":")
    grid = load_grid(grid_path, [])
    base = grid["base"]
    n_folds = fold_count(base)  # reads the labeled manifest: once
    if row:  # GRID:ROW scores the stores that row names (a row may bring its own teacher)
        from liser.experiments.grid import expand_grid

        runs = [r for r in expand_grid(grid, n_folds) if r["config"] == row]
        if not runs:
            raise LiserError(f"{grid_path}: no row {row!r}")
        base = runs[0]["cfg"]
    if not base.speech_store:
        raise LiserError(f"{grid_path}: {'row ' + row if row else 'the grid'} has no speech_store")
    labels, skipped = pool_labels(base, corpus_of, base.work)
    from liser.data.workspace import speech_store

    paths = [Path(speech_store(base, k)) for k in range(n_folds)]  # {fold}, {teachers}, {work} filled
    folds = [k for k, p in enumerate(paths) if (p / "meta.json").is_file()]  # the folds labeled so far
    if not folds:
        raise LiserError(f"{base.speech_store}: no speech store for any fold (liser teacher label speech ...)")
    per_fold = [score_store(SoftLabelStore(paths[k]), labels, maps) for k in folds]
    out = {}
    for corpus in per_fold[0]:
        figs = [f[corpus] for f in per_fold if corpus in f]
        mean = {k: round(float(np.mean([f[k] for f in figs if f[k] is not None])), 4)
                for k, v in figs[0].items() if isinstance(v, float)}
        out[corpus] = {**mean, "files": figs[0]["files"], "classes": figs[0]["classes"],
                       "dropped": figs[0]["dropped"], "per_fold": figs}
    return {"labeled_corpus": base.corpus, "stores": base.speech_store, "folds": folds, "skipped": skipped,
            "pool_entries": list(base.unlabeled), "pool_classes": sorted({lab for _, lab in labels.values()}),
            "pool": out}


def check_options(res: dict, maps: dict, corpus_of: dict) -> None:
    """LiserError for a --map or --as that no grid could use (a typo): a map whose source is in no
    grid's pool classes, an --as whose adapter names no grid's pool entry. Each applies where it can."""
    from liser.experiments.cross import check_map_sources

    check_map_sources(maps, {c for r in res.values() for c in r["pool_classes"]})
    for adapter, corpus in corpus_of.items():
        if not any(spec.partition(":")[0] == adapter for r in res.values() for spec in r["pool_entries"]):
            raise LiserError(f"--as {adapter}={corpus}: no grid's pool has a {adapter}:ROOT entry")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("grids", nargs="+", help="grid files whose base config names the speech stores and the pool; "
                    "GRID:ROW takes them from that row's config")
    ap.add_argument("--as", dest="as_", action="extend", nargs="+", default=[], metavar="ADAPTER=CORPUS",
                    help="read the labels of an `adapter:root` pool entry with this corpus adapter (unlabeled=cremad)")
    ap.add_argument("--map", action="extend", nargs="+", default=[], metavar="TEST=TEACHER",
                    help="class mapping applied wherever both classes exist (e.g. calm=neutral)")
    ap.add_argument("--json", default=str(REPO / "bench" / "results" / "teacher_pool.json"))
    args = ap.parse_args(argv)
    from liser.core.util import absolute_paths

    absolute_paths(args, "json")  # outputs: relative to where the script was run
    os.chdir(REPO)  # the grids' relative paths are relative to the repository
    from liser.experiments.cross import parse_maps

    try:
        corpus_of = {}
        for a in args.as_:
            adapter, eq, corpus = a.partition("=")
            if not (adapter and eq and corpus):
                raise LiserError(f"--as {a!r}: expected ADAPTER=CORPUS (e.g. unlabeled=cremad)")
            corpus_of[adapter] = corpus
        maps = parse_maps(args.map)
        res = {g: grid_figures(g, corpus_of, maps) for g in args.grids}
        check_options(res, maps, corpus_of)
    except (LiserError, ValueError) as e:
        print(f"bench_teacher_pool: {e}", file=sys.stderr)
        return 2
    out = {"grids": res, "as": args.as_, "map": args.map, "date": date.today().isoformat(),
           "command": " ".join(["python", "bench/bench_teacher_pool.py"] + (argv if argv is not None else sys.argv[1:]))}
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(out, indent=1) + "\n")
    os.replace(tmp, path)
    print("| teacher (labeled) | pool corpus | files | piece acc | piece conf | piece ECE | conf AUROC | file UAR | file ECE |")
    print("|---|---|---|---|---|---|---|---|---|")
    for g, r in res.items():
        for why in r["skipped"]:
            print(f"{g}: not scored: {why}", file=sys.stderr)
        teacher = r["labeled_corpus"] + (f" ({g.partition(':')[2]})" if ":" in g else "")
        for corpus, f in r["pool"].items():
            print(f"| {teacher} | {corpus} | {f['files']} | {f['piece_accuracy']:.3f} "
                  f"| {f['piece_mean_confidence']:.3f} | {f['piece_ece']:.3f} | {f.get('piece_confidence_auroc', float('nan')):.3f} "
                  f"| {f['file_uar']:.3f} | {f['file_ece']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
