"""The SER metrics every stage reports: confusion matrix, per-class recall, UAR, WAR (SPEC "Protocol").

UAR (unweighted average recall: the mean of the per-class recalls, over the
classes present) is the paper's headline figure; WAR is accuracy. Plain
numpy, so the teachers, the student and the benches score alike.
"""

from __future__ import annotations

import numpy as np


def confusion(y_true, y_pred, n_classes: int) -> np.ndarray:
    """Rows = true class, columns = predicted class."""
    cm = np.zeros((n_classes, n_classes), np.int64)
    np.add.at(cm, (np.asarray(y_true, int), np.asarray(y_pred, int)), 1)
    return cm


def recalls(cm: np.ndarray) -> np.ndarray:
    """Per-class recall; NaN for a class with no true items."""
    support = cm.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(cm) / np.maximum(support, 1), np.nan)


def uar(y_true, y_pred, n_classes: int | None = None) -> float:
    """Unweighted average recall over the classes present in y_true (NaN for no items)."""
    y_true, y_pred = np.asarray(y_true, int), np.asarray(y_pred, int)
    if y_true.size == 0:
        return float("nan")
    n = n_classes if n_classes is not None else int(max(y_true.max(), y_pred.max())) + 1
    return float(np.nanmean(recalls(confusion(y_true, y_pred, n))))


def war(y_true, y_pred) -> float:
    """Weighted average recall = accuracy."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    return float((y_true == y_pred).mean()) if len(y_true) else float("nan")


def metrics(y_true, y_pred, classes: list[str]) -> dict:
    cm = confusion(y_true, y_pred, len(classes))
    rec = recalls(cm)
    return {
        "uar": float(np.nanmean(rec)),
        "war": war(y_true, y_pred),
        "n": int(len(y_true)),
        "per_class_recall": {c: (None if np.isnan(r) else float(r)) for c, r in zip(classes, rec)},
        "confusion": cm.tolist(),
        "classes": list(classes),
    }
