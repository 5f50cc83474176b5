"""Metrics and the sliding-window evaluation (SPEC "Protocol").

A file is scored by sliding a 3 s window every 0.1 s over its whole
log-Mel spectrogram, averaging the `g_sup` logits of the windows, and taking
the arg-max: one prediction per file. UAR is the unweighted mean of the
per-class recalls (macro recall), WAR the accuracy.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from liser.data.audio import EVAL_STRIDE_S
from liser.data.frontend import windows as windows_of  # noqa: F401  (the one front end's windows [W, 64, 94], a public name)
from liser.core.metrics import metrics, uar, war
from liser.core.util import softmax


def bootstrap_ci(y_true, y_pred, n_classes: int, n: int = 1000, seed: int = 0) -> dict:
    """95% percentile intervals of UAR and WAR by resampling files with replacement (fold_mean_ci of one fold)."""
    return fold_mean_ci([(y_true, y_pred)], n_classes, n, seed)


def fold_mean_ci(folds, n_classes: int, n: int = 1000, seed: int = 0) -> dict:
    """95% percentile intervals of the mean over folds of UAR and WAR, resampling files within each fold.

    folds: one (y_true [N_f], y_pred [N_f] or [seeds, N_f]) per fold; a fold's value is the mean over its
    seeds' predictions of the same files. A grid table reports the mean of per-fold UARs, so its interval
    resamples each fold's own test files: a bootstrap over the pooled files would weight folds by their size
    (on leave-one-corpus-out grids CREMA-D's 7,441 files outweigh the other four corpora) and bracket another
    statistic than the mean beside it. The interval covers test-file sampling only, not training seeds.
    """
    rng = np.random.default_rng(seed)
    data = [(np.asarray(t), np.atleast_2d(np.asarray(p))) for t, p in folds]
    u, w = [], []
    for _ in range(n):
        fu, fw = [], []
        for t, preds in data:
            idx = rng.integers(0, len(t), len(t))
            fu.append(np.mean([uar(t[idx], p[idx], n_classes) for p in preds]))
            fw.append(np.mean([war(t[idx], p[idx]) for p in preds]))
        u.append(np.mean(fu))
        w.append(np.mean(fw))
    return {"uar": [float(np.percentile(u, 2.5)), float(np.percentile(u, 97.5))],
            "war": [float(np.percentile(w, 2.5)), float(np.percentile(w, 97.5))]}


def file_logits(model, frames_list, stride_s: float = EVAL_STRIDE_S, batch: int = 512, head: str = "sup",
                windowing: str = "pad") -> np.ndarray:
    """Weighted mean logits of one head ("sup", or a teacher entry's name: sd, vd, ...) over each item's windows: [items, K].

    The windows and weights are liser.data.windowing's plan for `windowing`
    ("pad": every 3 s window, equal weights; "speech": the speech span's, a
    file without detected speech scored whole). Windows of one length are
    batched together.
    """
    from liser.data.windowing import gather, plan

    plans = [plan(fr, stride_s, windowing, strict=False) for fr in frames_list]
    sums = None
    for length in sorted({p.length for p in plans}):
        owners = [i for i, p in enumerate(plans) if p.length == length]
        wins = np.concatenate([gather(frames_list[i], plans[i]) for i in owners])
        weights = np.concatenate([plans[i].weights for i in owners])
        owner = np.concatenate([np.full(len(plans[i].starts), i) for i in owners])
        logits = _window_logits(model, wins, batch, head)
        if sums is None:
            sums = np.zeros((len(frames_list), logits.shape[1]), np.float64)
        np.add.at(sums, owner, logits if windowing == "pad" else logits * weights[:, None])
    if windowing == "pad":  # equal weights: the plain mean, summed then divided as it always was
        sums /= np.array([len(p.starts) for p in plans])[:, None]
    return sums.astype(np.float32)


def _window_logits(model, wins: np.ndarray, batch: int, head: str) -> np.ndarray:
    """Logits [W, K] of one head for windows [W, 64, L], `batch` at a time, in eval mode (restored after)."""
    import torch

    was_training = model.training
    model.eval()
    device = next((p.device for p in model.parameters()), None)  # None: a parameter-free model (tests), CPU
    out = []
    with torch.inference_mode():
        for a in range(0, len(wins), batch):
            x = torch.from_numpy(wins[a : a + batch])
            x = x if device is None else x.to(device)
            y = model.classify(x) if head == "sup" else model(x)[1][head]
            out.append(y.float().cpu().numpy())
    if was_training:
        model.train()
    return np.concatenate(out)


def evaluate_items(model, cache, items, classes: list[str], stride_s: float = EVAL_STRIDE_S,
                   windowing: str = "pad") -> tuple[dict, np.ndarray]:
    """Metrics of a model on manifest items (labels by name), and the per-file logits (`file_logits`)."""
    cls = {c: i for i, c in enumerate(classes)}
    logits = file_logits(model, [cache.frames(it.id) for it in items], stride_s, windowing=windowing)
    y_true = np.array([cls[it.label] for it in items])
    y_pred = logits.argmax(1)
    return metrics(y_true, y_pred, classes), logits


def head_by_class(model, cache, items, classes: list[str], head: str = "vd", stride_s: float = 0.5) -> list[list[float]]:
    """Mean softmax of a distillation head per true class: [K_S, K_head].

    For g_vd this is the correspondence the student learned between the
    video teacher's classes and the labeled set's (the taxonomies differ).
    """
    logits = file_logits(model, [cache.frames(it.id) for it in items], stride_s, head=head)
    p = softmax(logits, axis=1)
    y = np.array([classes.index(it.label) for it in items])
    return [p[y == k].mean(0).round(4).tolist() if (y == k).any() else [] for k in range(len(classes))]


def plot_confusion(cm, classes: list[str], path: str | Path, title: str = "") -> None:
    """Row-normalised confusion matrix as a PNG (counts in the cells)."""
    from liser.core.util import new_figure, save_figure

    cm = np.asarray(cm)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig, ax = new_figure((1 + 0.7 * len(classes), 0.8 + 0.6 * len(classes)))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, int(cm[i, j]), ha="center", va="center", color="white" if norm[i, j] > 0.5 else "black", fontsize=8)
    if title:
        ax.set_title(title)
    save_figure(fig, path)


def summarize(run_dirs: list[str | Path]) -> dict:
    """Mean and std of test UAR/WAR over runs (folds) that have a metrics.json."""
    rows = []
    for d in run_dirs:
        p = Path(d) / "metrics.json"
        if p.is_file():
            m = json.loads(p.read_text())
            rows.append((m["test"]["uar"], m["test"]["war"]))
    if not rows:
        return {"folds": 0}
    a = np.array(rows)
    return {"folds": len(rows), "uar_mean": float(a[:, 0].mean()), "uar_std": float(a[:, 0].std()),
            "war_mean": float(a[:, 1].mean()), "war_std": float(a[:, 1].std()),
            "uar": a[:, 0].tolist(), "war": a[:, 1].tolist()}
