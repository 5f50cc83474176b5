"""The default model's leave-one-corpus-out table: trained on four corpora, tested on the fifth.

    scripts/train_default_model.sh          # the five LOCO runs, then the shipped (pooled) run
    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_default_model.py \
        [--loco runs/default-model-loco] [--pooled runs/default-model-pooled/fold0] [--onnx PATH]

Reads each finished LOCO run's metrics.json (`configs/default-model.yaml`,
`folds: loco`: fold k tests on every file of the k-th corpus of `labeled`,
trains and validates on speakers of the other four; the best epoch is
chosen on their validation speakers, never on the held-out corpus) and
reports per held-out corpus:

- `uar`: recall averaged over the classes the held-out corpus has (URDU
  has 4 of the 6; the others all 6), arg-max over all six outputs: what a
  user of the model gets; `chance` = 1 / those classes;
- `uar_shared_only`: arg-max over the held-out corpus's classes only (the
  usual cross-corpus protocol, liser.cross.score); equal to `uar` where the
  corpus has all six classes;
- `war`, files, the best epoch, per-class recall.

With `--pooled`, the shipped run's in-corpus figures too (its test speakers,
drawn per corpus: in-corpus, so not a transfer figure), per corpus. With
`--onnx`, the packaged int8 model scored on those same test files (the
figures the card quotes for what ships).

Writes bench/results/default_model.json (or --json) and prints the tables.
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

from liser.errors import LiserError  # noqa: E402


def run_figures(run: Path) -> dict:
    """A finished run's test figures, with UAR over the test corpus's classes (both arg-max rules)."""
    from liser.cross import class_mapping, score

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
    """{held-out corpus: run_figures} for every fold<k> of the LOCO runs, in the config's corpus order."""
    from liser.config import Config
    from liser.workspace import labeled_corpora

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


def per_corpus(ids: list[str], y: list[int], pred: list[int], classes: list[str]) -> dict:
    """{corpus: {uar, war, files}} from test ids ("corpus/..."), true and predicted class indices."""
    from liser.evaluate import metrics

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
    from liser.config import Config
    from liser.evaluate import metrics
    from liser.features import build_features
    from liser.workspace import labeled_manifest

    model = liser.load(onnx, threads=1)
    if list(model.classes) != list(classes):
        raise LiserError(f"{onnx}: classes {model.classes} differ from the run's {classes}")
    cfg = Config.load(run / "config.yaml")
    cache = build_features(labeled_manifest(cfg), cfg.work, threads=1, progress=False)
    pred = [int(np.argmax(model.frames_logits(cache.frames(i), stride)[0].mean(0))) for i in ids]
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--loco", default="runs/default-model-loco", help="folder of the LOCO fold<k>/ runs")
    ap.add_argument("--pooled", default="runs/default-model-pooled/fold0", help="the shipped run ('' = skip)")
    ap.add_argument("--onnx", default="", help="ONNX model to score on the pooled run's test files ('' = skip)")
    ap.add_argument("--stride", type=float, default=0.1, help="--onnx: window stride in seconds (0.1, as the runs' test)")
    ap.add_argument("--json", default=str(ROOT / "bench" / "results" / "default_model.json"))
    args = ap.parse_args(argv)
    t0 = time.time()
    loco = loco_table(Path(args.loco))
    res = {"what": "default model, leave-one-corpus-out: trained on four corpora, tested on every file of the fifth",
           "command": "OMP_NUM_THREADS=1 python bench/bench_default_model.py " + " ".join(argv or sys.argv[1:]),
           "trained_by": "scripts/train_default_model.sh (configs/default-model.yaml)",
           "machine": f"{platform.machine()}, {os.cpu_count()} cores; each run trained alone on 1 thread, the LOCO runs "
                      "while a background experiment grid shared the cores (train_wall_s is pessimistic)",
           "date": time.strftime("%Y-%m-%d"),
           "loco": loco, "loco_uar_mean": round(float(np.mean([r["uar"] for r in loco.values()])), 4)}
    if args.pooled and (Path(args.pooled) / "metrics.json").is_file():
        res["pooled"] = pooled_figures(Path(args.pooled), Path(args.onnx) if args.onnx else None, args.stride)
    res["seconds"] = round(time.time() - t0, 1)
    from liser.util import atomic_write_text

    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(args.json), json.dumps(res, indent=1) + "\n")
    print(markdown(loco))
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
