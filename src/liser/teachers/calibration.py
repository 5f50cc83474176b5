"""Teacher calibration (the paper's open question 1): ECE, reliability diagrams, temperature scaling.

Confidence weighting (eq. 5) trusts a teacher's max probability; that is
only meaningful if the teacher is calibrated. These measure it on labeled
validation data and fit the temperature that makes it so (Guo et al. 2017),
which a config can then apply before the weights are computed
(`temperature_sd` / `temperature_vd`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def ece(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """Expected calibration error: sum over confidence bins of |accuracy - confidence| x bin share."""
    probs, labels = np.asarray(probs, np.float64), np.asarray(labels)
    conf = probs.max(1)
    correct = probs.argmax(1) == labels
    edges = np.linspace(0, 1, n_bins + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            total += inside.mean() * abs(correct[inside].mean() - conf[inside].mean())
    return float(total)


def reliability(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> dict:
    """Per-bin confidence, accuracy and count (what the diagram plots)."""
    probs, labels = np.asarray(probs, np.float64), np.asarray(labels)
    conf = probs.max(1)
    correct = probs.argmax(1) == labels
    edges = np.linspace(0, 1, n_bins + 1)
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (conf > lo) & (conf <= hi)
        rows.append({"lo": float(lo), "hi": float(hi), "n": int(inside.sum()),
                     "confidence": float(conf[inside].mean()) if inside.any() else None,
                     "accuracy": float(correct[inside].mean()) if inside.any() else None})
    return {"bins": rows, "ece": ece(probs, labels, n_bins)}


def temper(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Probabilities with their logits divided by T (log p = logits + const)."""
    z = np.log(np.clip(np.asarray(probs, np.float64), 1e-8, 1)) / temperature
    z -= z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def fit_temperature(probs: np.ndarray, labels: np.ndarray, grid: np.ndarray | None = None) -> float:
    """The T minimising the negative log-likelihood of the labels (a 1-D search, robust and exact enough)."""
    labels = np.asarray(labels)
    grid = np.exp(np.linspace(np.log(0.05), np.log(20), 400)) if grid is None else grid
    best_t, best_nll = 1.0, np.inf
    for t in grid:
        p = temper(probs, t)
        nll = -np.log(np.clip(p[np.arange(len(labels)), labels], 1e-12, 1)).mean()
        if nll < best_nll:
            best_t, best_nll = float(t), nll
    return best_t


def plot_reliability(probs: np.ndarray, labels: np.ndarray, path: str | Path, title: str = "", n_bins: int = 15) -> None:
    """The reliability diagram (accuracy per confidence bin, the diagonal, ECE in the title) as a PNG."""
    from liser.core.util import new_figure, save_figure

    r = reliability(probs, labels, n_bins)
    fig, ax = new_figure((4, 4))
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1)
    mids = [(b["lo"] + b["hi"]) / 2 for b in r["bins"]]
    acc = [b["accuracy"] if b["accuracy"] is not None else 0 for b in r["bins"]]
    ax.bar(mids, acc, width=1 / n_bins, edgecolor="black", alpha=0.7, label="accuracy")
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(f"{title} ECE {r['ece']:.3f}".strip())
    save_figure(fig, path)
