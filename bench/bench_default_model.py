"""The default model's leave-one-corpus-out table: trained on four corpora, tested on the fifth.

    scripts/train_default_model.sh          # the five LOCO runs, then the shipped (pooled) run
    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_default_model.py \
        [--loco runs/default-model-loco] [--pooled runs/default-model-pooled/fold0] [--onnx PATH] \
        [--teachers configs/default-model-distill.yaml]

Reads each finished LOCO run's metrics.json (`configs/default-model.yaml`,
`folds: loco`: fold k tests on every file of the k-th corpus of `labeled`,
trains and validates on speakers of the other four; the best epoch is
chosen on their validation speakers, never on the held-out corpus) and
reports per held-out corpus:

- `uar`: recall averaged over the classes the held-out corpus has (URDU
  has 4 of the 6; the others all 6), arg-max over all six outputs: what a
  user of the model gets; `chance` = 1 / those classes;
- `uar_shared_only`: arg-max over the held-out corpus's classes only (the
  usual cross-corpus protocol, liser.experiments.cross.score); equal to `uar` where the
  corpus has all six classes;
- `war`, files, the best epoch, per-class recall.

With `--teachers CONFIG` (configs/default-model-distill.yaml, trained by
scripts/train_default_model_distill.sh), the distilled LOCO runs beside the
no-dstl ones: `loco_distill` {held-out corpus: uar} (the same protocol,
from <out>/<name>/fold<k> of that config; full figures in
`loco_distill_runs`), and the LOCO speech teachers' own test UARs on the
held-out corpus (`teachers_loco`, from each fold's eval.json: whole files
and 0.5 s pieces averaged per file, arg-max over the six classes): what the
students were taught from. Without the no-dstl runs the distilled table
stands alone.

With `--pooled`, the shipped run's in-corpus figures too (its test speakers,
drawn per corpus: in-corpus, so not a transfer figure), per corpus. With
`--onnx`, the packaged int8 model scored on those same test files (the
figures the card quotes for what ships).

Writes bench/results/default_model.json (with --teachers default_model_distill.json; or --json)
and prints the tables.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from liser.core.errors import LiserError  # noqa: E402


def run_figures(run: Path) -> dict:
    """A finished run's test figures, with UAR over the test corpus's classes (both arg-max rules)."""
    from liser.experiments.cross import class_mapping, score

    p = run / "metrics.json"
    if not p.is_file():
        raise LiserError(f"{run}: no metrics.json (not finished; scripts/train_default_model.sh resumes it)")
    m = json.loads(p.read_text())
    classes = m["classes"]
    with open(run / "epochs.csv", newline="") as f:
        epochs_s = [float(r["epoch_s"]) for r in csv.DictReader(f)]
    labels = [classes[y] for y in m["test_y"]]
    present = [c for c in classes if c in set(labels)]
    s = score(np.array(m["test_logits"]), labels, classes, class_mapping(present, classes))
    return {"run": str(run), "files": m["n_test"], "classes_tested": present, "chance": round(1 / len(present), 4),
            "uar": round(m["test"]["uar"], 4), "war": round(m["test"]["war"], 4),
            "uar_shared_only": round(s["uar"], 4), "best_epoch": m["best_epoch"],
            "val_uar": round(m["val"]["uar"], 4), "n_train": m["n_train"], "n_val": m["n_val"],
            "epochs": len(epochs_s), "train_wall_s": round(sum(epochs_s)),
            "per_class_recall": {c: (None if r is None else round(r, 4)) for c, r in m["test"]["per_class_recall"].items()}}


def loco_table(loco: Path) -> dict:
    """{held-out corpus: run_figures} for every fold<k> of the LOCO runs, in the config's corpus order.

    Raises LiserError when `loco` holds no run, an unfinished one, or one that is not leave-one-corpus-out.
    """
    from liser.core.config import Config
    from liser.data.workspace import labeled_corpora

    out = {}
    for run in sorted(loco.glob("fold*"), key=lambda d: int(d.name[4:])):
        cfg = Config.load(run / "config.yaml")
        if cfg.folds != "loco":
            raise LiserError(f"{run}: not a leave-one-corpus-out run (folds: {cfg.folds!r})")
        held = labeled_corpora(cfg)[cfg.fold]
        out[held] = {"fold": cfg.fold, **run_figures(run)}
    if not out:
        raise LiserError(f"{loco}: no fold<k>/ runs")
    return out


def teachers_loco(cfg) -> dict:
    """{held-out corpus: {uar, uar_pieces, n_test, teacher}} from each LOCO fold's teacher eval.json (absent folds left out)."""
    from liser.data.workspace import labeled_corpora, teacher_dir

    if cfg.folds not in ("loco", ""):
        raise LiserError(f"--teachers: {cfg.name} is not a leave-one-corpus-out config (folds: {cfg.folds!r})")
    out = {}
    for k, held in enumerate(labeled_corpora(cfg)):
        ev = teacher_dir(cfg, k) / "eval.json"
        if ev.is_file():
            e = json.loads(ev.read_text())
            out[held] = {"fold": k, "uar": round(e["uar"], 4), "uar_pieces": round(e["uar_pieces"], 4),
                         "n_test": e["n_test"], "teacher": str(ev.parent)}
    return out


def distill_figures(config: Path) -> dict:
    """The distilled LOCO table of a config (its runs under <out>/<name>) and its teachers' LOCO UARs.

    Raises LiserError when neither a finished run nor a fitted teacher exists yet.
    """
    from liser.core.config import Config

    cfg = Config.load(config)
    runs = Path(cfg.out) / cfg.name
    table = loco_table(runs) if any(runs.glob("fold*/metrics.json")) else {}
    teachers = teachers_loco(cfg)
    if not table and not teachers:
        raise LiserError(f"{config}: no finished run in {runs} and no fitted teacher yet "
                         "(scripts/train_default_model_distill.sh)")
    res = {"config": str(config), "loco_distill": {c: r["uar"] for c, r in table.items()},
           "loco_distill_runs": table, "teachers_loco": teachers}
    if table:
        res["loco_distill_uar_mean"] = round(float(np.mean([r["uar"] for r in table.values()])), 4)
    return res


def per_corpus(ids: list[str], y: list[int], pred: list[int], classes: list[str]) -> dict:
    """{corpus: {uar, war, files}} from test ids ("corpus/..."), true and predicted class indices."""
    from liser.core.metrics import metrics

    out = {}
    for c in sorted({i.split("/")[0] for i in ids}):
        k = [j for j, i in enumerate(ids) if i.split("/")[0] == c]
        m = metrics(np.array(y)[k], np.array(pred)[k], classes)
        out[c] = {"uar": round(m["uar"], 4), "war": round(m["war"], 4), "files": len(k)}
    return out


def pooled_figures(run: Path, onnx: Path | None, stride: float) -> dict:
    """The shipped run's in-corpus test figures per corpus (PyTorch best.pt), and the int8 ONNX's on the same files."""
    m = json.loads((run / "metrics.json").read_text())
    classes, ids, y = m["classes"], m["test_ids"], m["test_y"]
    res = {"run": str(run), "best_epoch": m["best_epoch"], "val_uar": round(m["val"]["uar"], 4),
           "n_train": m["n_train"], "n_val": m["n_val"],
           "pytorch": {"uar": round(m["test"]["uar"], 4), "war": round(m["test"]["war"], 4), "files": m["n_test"],
                       "per_corpus": per_corpus(ids, y, list(np.argmax(m["test_logits"], 1)), classes)}}
    if onnx is not None:
        res["onnx"] = onnx_figures(run, onnx, ids, y, classes, stride)
    return res


def onnx_figures(run: Path, onnx: Path, ids, y, classes, stride: float) -> dict:
    """The ONNX model on the run's test files (features from the run's cache): UAR, WAR, per corpus, size."""
    import liser
    from liser.core.config import Config
    from liser.core.metrics import metrics
    from liser.data.features import build_features
    from liser.data.workspace import labeled_manifest

    model = liser.load(onnx, threads=1)
    if list(model.classes) != list(classes):
        raise LiserError(f"{onnx}: classes {model.classes} differ from the run's {classes}")
    cfg = Config.load(run / "config.yaml")
    cache = build_features(labeled_manifest(cfg), cfg.work, threads=1, progress=False)
    model.stride_s = stride
    pred = [int(np.argmax(model.file_logits(cache.frames(i), i, strict=False))) for i in ids]  # the model's windowing
    m = metrics(np.array(y), np.array(pred), classes)
    return {"path": str(onnx), "bytes": onnx.stat().st_size, "quantization": model.info.get("quantization"),
            "stride_s": stride, "uar": round(m["uar"], 4), "war": round(m["war"], 4), "files": len(ids),
            "per_corpus": per_corpus(ids, y, pred, classes)}


def markdown(loco: dict) -> str:
    lines = ["| held-out corpus | files | classes | chance | UAR | UAR (shared classes only) | WAR | best epoch |",
             "|---|---|---|---|---|---|---|---|"]
    for c, r in loco.items():
        lines.append(f"| {c} | {r['files']} | {len(r['classes_tested'])} | {r['chance']:.3f} | {r['uar']:.3f} | "
                     f"{r['uar_shared_only']:.3f} | {r['war']:.3f} | {r['best_epoch']} |")
    mean = np.mean([r["uar"] for r in loco.values()])
    lines.append(f"| **mean** | | | | **{mean:.3f}** | | | |")
    return "\n".join(lines)


def _cell(v) -> str:
    return "" if v is None else f"{v:.3f}"


def markdown_distill(loco: dict, dist: dict) -> str:
    """Held-out corpus | no-dstl UAR | distilled UAR | difference | the teacher's UAR (files, pieces)."""
    lines = ["| held-out corpus | no-dstl UAR | distilled UAR | Δ (points) | teacher UAR | teacher UAR (0.5 s pieces) |",
             "|---|---|---|---|---|---|"]
    teachers = dist["teachers_loco"]
    for c in list(dict.fromkeys([*loco, *dist["loco_distill"], *teachers])):
        a, b, t = loco.get(c, {}).get("uar"), dist["loco_distill"].get(c), teachers.get(c, {})
        d = f"{100 * (b - a):+.1f}" if a is not None and b is not None else ""
        lines.append(f"| {c} | {_cell(a)} | {_cell(b)} | {d} | {_cell(t.get('uar'))} | {_cell(t.get('uar_pieces'))} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--loco", default="runs/default-model-loco", help="folder of the LOCO fold<k>/ runs")
    ap.add_argument("--pooled", default="runs/default-model-pooled/fold0", help="the shipped run ('' = skip)")
    ap.add_argument("--onnx", default="", help="ONNX model to score on the pooled run's test files ('' = skip)")
    ap.add_argument("--stride", type=float, default=0.1, help="--onnx: window stride in seconds (0.1, as the runs' test)")
    ap.add_argument("--teachers", default="", metavar="CONFIG",
                    help="the distilled config (configs/default-model-distill.yaml): its LOCO runs and teachers too")
    ap.add_argument("--model-name", default="default model", help="what the runs are, for the JSON's `what`")
    ap.add_argument("--as", dest="section", default="", metavar="KEY",
                    help="write the figures under this key of the existing JSON, keeping the figures already in it "
                         "(the earlier default model's beside a new one's)")
    ap.add_argument("--machine", default="each run trained on 1 thread, beside other jobs (train_wall_s is pessimistic)",
                    help="how the runs were trained: the load they shared the machine with (recorded in the JSON)")
    ap.add_argument("--trained-by", default="scripts/train_default_model.sh (configs/default-model.yaml)",
                    help="what trained the runs (recorded in the JSON)")
    ap.add_argument("--json", default="", help="default bench/results/default_model.json; with --teachers "
                    "default_model_distill.json (a partial distilled table never overwrites the committed no-dstl one)")
    args = ap.parse_args(argv)
    args.json = args.json or str(ROOT / "bench" / "results" /
                                 ("default_model_distill.json" if args.teachers else "default_model.json"))
    t0 = time.time()
    dist = distill_figures(Path(args.teachers)) if args.teachers else None
    # the no-dstl runs are required unless the distilled table is what was asked for
    loco = loco_table(Path(args.loco)) if dist is None or any(Path(args.loco).glob("fold*/metrics.json")) else {}
    res = {"what": f"{args.model_name}, leave-one-corpus-out: trained on four corpora, tested on every file of the fifth",
           "command": "OMP_NUM_THREADS=1 python bench/bench_default_model.py " + " ".join(argv or sys.argv[1:]),
           "trained_by": args.trained_by,
           "machine": f"{platform.machine()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} now; "
                      + args.machine,
           "date": time.strftime("%Y-%m-%d"),
           "loco": loco}
    if loco:
        res["loco_uar_mean"] = round(float(np.mean([r["uar"] for r in loco.values()])), 4)
    if dist is not None:
        res.update(dist)
        res["trained_by"] += f"; distilled: scripts/train_default_model_distill.sh ({args.teachers})"
    if args.pooled and (Path(args.pooled) / "metrics.json").is_file():
        res["pooled"] = pooled_figures(Path(args.pooled), Path(args.onnx) if args.onnx else None, args.stride)
    res["seconds"] = round(time.time() - t0, 1)
    from liser.core.atomic import atomic_write_text

    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    out = res
    if args.section:
        out = json.loads(Path(args.json).read_text()) if Path(args.json).is_file() else {}
        out[args.section] = res
    atomic_write_text(Path(args.json), json.dumps(out, indent=1) + "\n")
    if loco:
        print(markdown(loco))
    if dist is not None:
        print(markdown_distill(loco, dist))
    if "pooled" in res:
        p = res["pooled"]
        for kind in ("pytorch", "onnx"):
            if kind in p:
                per = ", ".join(f"{c} {v['uar']:.3f}" for c, v in p[kind]["per_corpus"].items())
                print(f"shipped run, in-corpus test speakers, {kind}: UAR {p[kind]['uar']:.3f} ({per})")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except LiserError as e:
        print(f"bench_default_model: {e}", file=sys.stderr)
        sys.exit(2)
