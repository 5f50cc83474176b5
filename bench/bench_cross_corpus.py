"""The cross-corpus matrix: students trained on one corpus, tested on every other corpus here.

    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_cross_corpus.py \
        --student ravdess/no-dstl=runs/grid-ravdess-distill-cpu/liser-no-dstl/default \
        --student cremad/no-dstl=runs/grid-cremad-cpu/no-dstl/default \
        --student cremad/vid-sp-dstl=runs/grid-cremad-cpu/vid-sp-dstl/default ... \
        [--test ravdess:../shared/data/ravdess ...] [--map calm=neutral] [--stride 0.1]

A student is `TRAIN_CORPUS/CONFIGURATION=DIR`, DIR a run directory (best.pt)
or a folder of `fold<k>/` run directories (a grid's configuration): every
fold's student is tested and the UAR is the mean over folds. Tests default
to the five labeled corpora in ../shared/data (RAVDESS, CREMA-D, EmoDB,
TESS, URDU), each prepared once under `--work`.

- Off the diagonal: `liser.experiments.cross.evaluate_on`, UAR over the classes the two
  corpora share (same names, plus any `--map`, which applies wherever its
  classes exist). Test classes the student cannot output are dropped and
  counted in the details file, never silently.
- On the diagonal (a student tested on its own corpus): its fold's test
  speakers, from each run's metrics.json (the whole corpus would hold its
  training speakers).

Writes `--json` (default bench/results/cross_corpus.json), shaped
`{train_corpus: {configuration: {test_corpus: uar}}}` (null where nothing is
shared), and beside it `<name>_details.json`: per fold UAR, files scored,
classes dropped and untested, the mapping, the UAR when every student output
may be predicted. Prints the matrix as a markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from liser.core.errors import LiserError  # noqa: E402

# the figures of one fold on one test corpus that the matrix keeps
KEPT = ("uar", "war", "n", "test_files", "classes", "dropped", "untested", "mapping", "uar_any_output")
DATA = ROOT.parent / "shared" / "data"
DEFAULT_TESTS = [f"ravdess:{DATA / 'ravdess'}", f"cremad:{DATA / 'cremad'}", f"emodb:{DATA / 'emodb'}",
                 f"tess:{DATA / 'tess'}", f"urdu:{DATA / 'urdu'}"]


def parse_student(spec: str) -> tuple[str, str, Path]:
    """"cremad/no-dstl=runs/x" -> ("cremad", "no-dstl", Path("runs/x")); LiserError when malformed."""
    key, eq, path = spec.partition("=")
    train, slash, config = key.partition("/")
    if not (eq and slash and train and config and path):
        raise LiserError(f"--student {spec!r}: expected TRAIN_CORPUS/CONFIGURATION=RUN_OR_FOLDS_DIR")
    return train, config, Path(path)


def fold_runs(path: Path) -> list[Path]:
    """A run directory itself, or the fold<k>/ run directories under it (sorted); LiserError if none."""
    runs = [path] if (path / "best.pt").is_file() else sorted(d for d in path.glob("fold*") if (d / "best.pt").is_file())
    if not runs:
        raise LiserError(f"{path}: neither a run directory (best.pt) nor a folder of fold<k>/ runs")
    for run in runs:  # a run still training has a best.pt that will change: its scores would be stale
        if not (run / "metrics.json").is_file():
            raise LiserError(f"{run}: an unfinished run (best.pt but no metrics.json); let it finish or leave it out")
    return runs


def in_corpus(run: Path) -> dict:
    """The run's own test figures (its fold's test speakers) from metrics.json."""
    p = run / "metrics.json"
    if not p.is_file():
        raise LiserError(f"{run}: no metrics.json (an unfinished run?)")
    t = json.loads(p.read_text())["test"]
    return {"uar": t["uar"], "n": t["n"], "in_corpus": True, "classes": t["classes"]}


def cross_one(run: Path, test: str, maps: dict, stride: float, work: Path, out: Path) -> dict:
    """One fold's student on one test corpus: evaluate_on's figures, or {"uar": None, "why": ...}.

    A result already at `out` for the same run, stride and mapping, newer than the run's best.pt, is
    reused, so a stopped matrix resumes where it was (the whole matrix is ~40 min of one core).
    """
    from liser.experiments.cross import evaluate_on

    done = reusable(run, test, maps, stride, out)
    if done is not None:
        return done
    try:
        r = evaluate_on(run, test, maps, stride_s=stride, work=work, out=out, strict=False)
    except LiserError as e:
        if "no test file maps onto" not in str(e):
            raise
        return {"uar": None, "why": str(e)}
    return {k: r[k] for k in KEPT}


def scored_root(test: str) -> str:
    """The corpus root a test spec scores (a manifest directory's recorded root, or CORPUS:ROOT's ROOT)."""
    if Path(test, "meta.json").is_file():
        return str(json.loads(Path(test, "meta.json").read_text()).get("root"))
    return str(Path(test.split(":", 1)[1]).resolve())


def reusable(run: Path, test: str, maps: dict, stride: float, out: Path) -> dict | None:
    """The figures kept at `out` when they were scored from this run's current best.pt, on the same
    test corpus root, with the same stride and class mapping (recomputed from the classes recorded
    there); None otherwise."""
    from liser.experiments.cross import class_mapping

    try:
        r = json.loads(out.read_text())
        same = (Path(r["run"]) == run and r["stride_s"] == stride and r["test_manifest_root"] == scored_root(test)
                and out.stat().st_mtime >= (run / "best.pt").stat().st_mtime
                and {c: t or "" for c, t in r["mapping"].items()}
                == class_mapping(list(r["mapping"]), r["student_classes"], maps, strict=False))
    except (OSError, ValueError, KeyError, LiserError):
        return None
    return {k: r[k] for k in KEPT} if same else None


def matrix(students: list[str], tests: list[str], maps: dict, stride: float, work: Path) -> tuple[dict, dict]:
    """(matrix {train: {config: {test: mean uar or None}}}, details {train: {config: {test: {...}}}})."""
    import numpy as np

    out, details = {}, {}
    for spec in students:
        train, config, path = parse_student(spec)
        runs = fold_runs(path)
        for test in tests:
            test_corpus = test.split(":", 1)[0] if ":" in test else Path(test).name
            per_fold = []
            for run in runs:
                if test_corpus == train:
                    per_fold.append(in_corpus(run))
                else:
                    dest = work / "cross" / f"{train}-{config}-{run.name}" / f"{test_corpus}.json"
                    per_fold.append(cross_one(run, test, maps, stride, work, dest))
                u = per_fold[-1]["uar"]
                print(f"{train}/{config} {run.name} on {test_corpus}: UAR {'-' if u is None else f'{u:.3f}'}", flush=True)
            uars = [f["uar"] for f in per_fold if f["uar"] is not None]
            mean = float(np.mean(uars)) if uars else None
            out.setdefault(train, {}).setdefault(config, {})[test_corpus] = mean
            details.setdefault(train, {}).setdefault(config, {})[test_corpus] = {
                "uar_mean": mean, "uar_std": float(np.std(uars)) if uars else None,
                "folds": {run.name: f for run, f in zip(runs, per_fold)}, "runs": [str(r) for r in runs]}
    return out, details


def table(mat: dict, tests: list[str]) -> str:
    """Markdown: one row per student (train corpus / configuration), one column per test corpus."""
    names = [t.split(":", 1)[0] if ":" in t else Path(t).name for t in tests]
    lines = ["| trained on / configuration | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for train, by_config in mat.items():
        for config, row in by_config.items():
            cells = ["-" if row.get(n) is None else f"{row[n]:.3f}" for n in names]
            lines.append(f"| {train} / {config} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--student", action="append", required=True, metavar="TRAIN/CONFIG=DIR",
                    help="a student: TRAIN_CORPUS/CONFIGURATION=run dir or folder of fold<k>/ runs (repeat)")
    ap.add_argument("--test", action="append", metavar="CORPUS:ROOT",
                    help="a test corpus, CORPUS:ROOT or a manifest dir (repeat; default: the five in ../shared/data)")
    ap.add_argument("--map", action="extend", nargs="+", default=[], metavar="TEST=STUDENT",
                    help="class mapping applied wherever both classes exist (e.g. calm=neutral)")
    ap.add_argument("--stride", type=float, default=0.1, help="sliding-window stride in seconds (default 0.1)")
    ap.add_argument("--work", default="work", help="cache root for the test manifests and features (default work)")
    ap.add_argument("--json", default=str(ROOT / "bench" / "results" / "cross_corpus.json"))
    args = ap.parse_args(argv)
    from liser.experiments.cross import check_map_sources, parse_maps, scored_manifest

    t0 = time.time()
    tests = args.test or DEFAULT_TESTS
    try:
        maps = parse_maps(args.map)
        check_map_sources(maps, {c for t in tests for c in scored_manifest(t, args.work).classes})  # typos, up front
        mat, details = matrix(args.student, tests, maps, args.stride, Path(args.work))
    except LiserError as e:
        print(f"bench_cross_corpus: {e}", file=sys.stderr)
        return 2
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(mat, indent=1) + "\n")
    det = out.with_name(out.stem + "_details.json")
    det.write_text(json.dumps({"matrix": details, "map": args.map, "stride_s": args.stride, "tests": tests,
                               "wall_s": round(time.time() - t0, 1)}, indent=1) + "\n")
    print(table(mat, tests))
    print(f"wrote {out} and {det}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
