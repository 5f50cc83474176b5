"""The paper's open question 3: does the video teacher's 7-class taxonomy add noise to the student?

    liser teacher label video configs/vid-sp-dstl.yaml          # faces and FER labels of the AV pool (once)
    liser experiment configs/grid-ravdess-oq3.yaml --set threads=1
    OMP_NUM_THREADS=1 python bench/bench_oq3.py [--json bench/results/oq3.json]

RAVDESS, the paper's recipe and pool, five folds, paired by fold on the same
test files (issue 27):

- `no-dstl`: no teacher (the ledger of configs/grid-ravdess-distill-cpu.yaml,
  the same recipe, seed and budget);
- `vid-dstl`: the video teacher through its own head g_vd, over its 7 FER
  classes (the paper's);
- `vid-dstl-sup`: the same teacher through g_sup: its classes matched to
  RAVDESS's by name, the ones RAVDESS lacks dropped (calm gets no target).

Beside the UARs: per-class recall, what g_vd learned per labeled class (the
mean g_vd softmax on the test windows of each class, from the runs' metrics),
and where the two heads' gradients disagree: on each fold's vid-dstl student,
the cosine between the gradient of the shared layers (conv blocks and LSTM)
under cross-entropy on the labeled crops of class c and under the g_vd
distillation term on the pool crops whose teacher target peaks at FER class
j, for every pair (c, j). A negative cosine is a pair whose two losses pull
the shared layers apart.
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

GRID = ROOT / "configs" / "grid-ravdess-oq3.yaml"
LEDGER = ROOT / "bench" / "ledger" / "grid-ravdess-oq3"
BASELINE = ROOT / "bench" / "ledger" / "grid-ravdess-distill-cpu" / "no-dstl" / "default"
ROWS = ("vid-dstl", "vid-dstl-sup")
OUT = ROOT / "bench" / "results" / "oq3.json"
CROPS_PER_CLASS = 64  # labeled crops per class for its gradient (fewer when the fold has fewer)
POOL_CROPS = 2000  # pool windows drawn (items with replacement, random places) for the teacher-class gradients
MIN_CROPS = 16  # a teacher class peaking in fewer pool crops gets no gradient (too noisy to compare)


def finished(row_dir: Path, fold: int) -> dict | None:
    """metrics.json of a row's fold under its run folder or ledger folder, None when not finished."""
    p = row_dir / f"fold{fold}" / "metrics.json"
    return json.loads(p.read_text()) if p.is_file() else None


def row_runs(grid: dict) -> dict[str, dict[int, tuple]]:
    """{row: {fold: (config, metrics)}} of the grid's finished runs (run folder first, then the grid's ledger)."""
    ledger = ROOT / grid["ledger"] if grid.get("ledger") else LEDGER
    out: dict[str, dict[int, tuple]] = {r: {} for r in ROWS}
    for r in grid["runs"]:
        cfg = r["cfg"]
        row = cfg.name.split("/")[0]
        if row in out:
            m = finished(Path(cfg.out) / cfg.name, cfg.fold) or finished(ledger / cfg.name, cfg.fold)
            if m is not None:
                out[row][cfg.fold] = (cfg, m)
    return out


def uar_table(runs: dict, base_dir: Path) -> dict:
    """Per fold: test UAR of no-dstl, vid-dstl and vid-dstl-sup, on the same files; with per-class recall."""
    folds = sorted(set.intersection(*(set(runs[r]) for r in ROWS))) if all(runs.values()) else []
    table = {}
    for k in folds:
        base = finished(base_dir, k)
        if base is None:
            continue
        ms = {"no-dstl": base, **{r: runs[r][k][1] for r in ROWS}}
        ids = {name: m["test_ids"] for name, m in ms.items()}
        if any(v != ids["no-dstl"] for v in ids.values()):
            raise LiserError(f"fold {k}: the rows were tested on different files")
        table[k] = {name: {"uar": round(m["test"]["uar"], 4), "recall": recalls(m)} for name, m in ms.items()}
    return table


def recalls(m: dict) -> list[float]:
    """A run's test recall per class, in its classes' order (metrics.json keeps them by class name; NaN for a
    class without test files)."""
    r = m["test"]["per_class_recall"]
    return [float("nan") if r.get(c) is None else round(float(r[c]), 4) for c in m["classes"]]


def summary(table: dict, classes: list[str]) -> dict:
    """Means over folds: UAR per row, paired deltas against no-dstl and between the two heads, per-class recall."""
    if not table:
        return {}
    rows = ("no-dstl", *ROWS)
    uar = {r: float(np.mean([t[r]["uar"] for t in table.values()])) for r in rows}
    d = lambda a, b: [100 * (t[a]["uar"] - t[b]["uar"]) for t in table.values()]  # noqa: E731
    recall = {r: dict(zip(classes, np.nanmean([t[r]["recall"] for t in table.values()], axis=0).round(4).tolist()))
              for r in rows}
    return {"folds": len(table), "uar_mean": {r: round(v, 4) for r, v in uar.items()},
            "vid_dstl_minus_no_dstl_points": round(float(np.mean(d("vid-dstl", "no-dstl"))), 2),
            "sup_minus_no_dstl_points": round(float(np.mean(d("vid-dstl-sup", "no-dstl"))), 2),
            "sup_minus_vid_dstl_points": round(float(np.mean(d("vid-dstl-sup", "vid-dstl"))), 2),
            "sup_better_folds": int(sum(x > 0 for x in d("vid-dstl-sup", "vid-dstl"))),
            "recall_mean": recall}


def g_vd_learned(runs: dict) -> dict | None:
    """The mean g_vd softmax per labeled class (rows) over the FER classes (columns), averaged over folds."""
    ms = [m for _, m in runs["vid-dstl"].values() if m.get("video_head_by_class")]
    if not ms:
        return None
    return {"labeled_classes": ms[0]["classes"], "teacher_classes": ms[0]["video_classes"],
            "mean_softmax": np.mean([m["video_head_by_class"] for m in ms], axis=0).round(4).tolist()}


def shared_gradient(model, loss):
    """The loss's gradient over the layers every head shares (all but the g_* heads), flattened: a 1-D tensor."""
    import torch

    params = [p for n, p in model.named_parameters() if not n.startswith("g_")]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)])


def gradient_cosines(cfg, run: Path, seed: int = 0) -> dict:
    """cos(grad CE on labeled class c, grad of the g_vd term on pool crops peaking at FER class j) [K_l, K_t]
    on a trained vid-dstl student's shared layers; NaN where a teacher class peaks in < MIN_CROPS crops."""
    import torch

    from liser.student.checkpoint import read_checkpoint, student_from_checkpoint
    from liser.student.losses import distill_term
    from liser.student.train import load_data, random_crop, unlabeled_batch

    data = load_data(cfg, progress=False)
    model = student_from_checkpoint(read_checkpoint(run / "best.pt"), str(run))  # eval: BN statistics stay put
    rng = np.random.default_rng(seed)
    ce = []
    for c, name in enumerate(data.classes):
        items = [it for it in data.train if it.label == name]
        pick = rng.permutation(len(items))[:CROPS_PER_CLASS]
        x = torch.from_numpy(np.stack([random_crop(data.cache.frames(items[i].id), rng)[0] for i in pick]))
        sup, _ = model(x)
        ce.append(shared_gradient(model, torch.nn.functional.cross_entropy(sup, torch.full((len(pick),), c))))
    x, targets = unlabeled_batch(data.pool, rng.integers(0, len(data.pool.ids), POOL_CROPS), rng)  # random windows
    t, mask = targets["vd"]
    peak = t.argmax(1).numpy()
    teacher_classes = list(data.pool.stores["vd"].classes)
    cos = np.full((len(ce), len(teacher_classes)), np.nan)
    counts = []
    for j in range(len(teacher_classes)):
        sel = np.flatnonzero(mask.numpy() & (peak == j))
        counts.append(int(len(sel)))
        if len(sel) < MIN_CROPS:
            continue
        _, heads = model(x[sel])
        h = shared_gradient(model, distill_term(heads["vd"], t[sel], cfg.distill_loss).mean())
        for c, g in enumerate(ce):
            cos[c, j] = float(torch.nn.functional.cosine_similarity(g, h, dim=0))
    return {"labeled_classes": list(data.classes), "teacher_classes": teacher_classes,
            "pool_crops_per_teacher_class": counts, "cosine": json_matrix(cos)}


def json_matrix(a: np.ndarray) -> list:
    """A float matrix as JSON lists, rounded, NaN as null."""
    return [[None if np.isnan(v) else round(float(v), 4) for v in row] for row in np.asarray(a, float)]


def main(argv=None) -> int:
    from liser.core.atomic import atomic_write_text
    from liser.experiments.grid import expand_grid, load_grid

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--grid", default=str(GRID))
    ap.add_argument("--baseline", default=str(BASELINE), help="folder of the no-dstl runs' fold<k>/metrics.json")
    ap.add_argument("--no-gradients", action="store_true", help="only the tables (the gradients need the runs' best.pt "
                                                                 "and the pool's features and store)")
    ap.add_argument("--json", default=str(OUT))
    args = ap.parse_args(argv)
    grid = load_grid(args.grid)
    grid["runs"] = expand_grid(grid, 5)
    runs = row_runs(grid)
    table = uar_table(runs, Path(args.baseline))
    if not table:
        raise LiserError(f"{args.grid}: no fold with both rows finished yet (liser experiment {args.grid})")
    classes = next(iter(runs["vid-dstl"].values()))[1]["classes"]
    out = {"what": __doc__.split("\n")[0], "command": env_command("bench/bench_oq3.py", list(argv or sys.argv[1:])),
           "date": time.strftime("%Y-%m-%d"), "machine": describe(),
           "load_average": [round(x, 2) for x in os.getloadavg()], "grid": args.grid, "baseline": args.baseline,
           "classes": classes, "per_fold": table, "summary": summary(table, classes), "g_vd_learned": g_vd_learned(runs)}
    if not args.no_gradients:
        cos = {}
        for k, (cfg, _) in sorted(runs["vid-dstl"].items()):
            run = Path(cfg.out) / cfg.name / f"fold{k}"
            if (run / "best.pt").is_file():
                cos[k] = gradient_cosines(cfg, run)
        if cos:
            mats = np.array([[[np.nan if v is None else v for v in row] for row in c["cosine"]] for c in cos.values()])
            with np.errstate(invalid="ignore"):
                mean = np.nanmean(np.where(np.isnan(mats).all(0, keepdims=True), 0.0, mats), axis=0)
            mean[np.isnan(mats).all(0)] = np.nan  # no fold measured the pair
            out["gradient_cosine"] = {"per_fold": cos, "mean": json_matrix(mean),
                                      "labeled_classes": classes, "teacher_classes": next(iter(cos.values()))["teacher_classes"]}
    s = out["summary"]
    print(f"folds {s['folds']}: UAR " + ", ".join(f"{r} {v:.3f}" for r, v in s["uar_mean"].items())
          + f"; sup - g_vd {s['sup_minus_vid_dstl_points']:+.1f} points ({s['sup_better_folds']} of {s['folds']} better)")
    atomic_write_text(args.json, json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except LiserError as e:
        print(f"liser: {e}", file=sys.stderr)
        sys.exit(2)
