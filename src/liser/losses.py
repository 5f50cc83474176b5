"""Losses of SPEC "Losses": CE, MAE distillation, confidence weights, eq. 4 / eq. 5.

For a mini-batch of N_l labeled and N_u unlabeled items (eq. 4):

    L = ( sum_i CE(g_sup(s_i), y_i)
          + sum_j ( lam_sd * w_sd_j * L_sd_j + lam_vd * w_vd_j * L_vd_j ) ) / (N_l + N_u)

with L_sd_j = MAE(softmax(g_sd(s_j)), t_s(s_j)) (mean over classes of the
absolute differences), w = 1 (eq. 4) or the teacher's max probability on
that window (eq. 5), and terms of items without a valid target masked out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def distill_term(logits: torch.Tensor, target: torch.Tensor, kind: str = "mae") -> torch.Tensor:
    """Per-item distillation loss [B]: `mae` (the paper's) or `ce` (Table 3's distill-ce)."""
    if kind == "mae":
        return (F.softmax(logits, dim=1) - target).abs().mean(dim=1)
    if kind == "ce":
        return -(target * F.log_softmax(logits, dim=1)).sum(dim=1)
    raise ValueError(f"unknown distillation loss {kind!r} (mae or ce)")


def temper(probs: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Temperature-scale probabilities (= logits / T, since log p = logits + const)."""
    if temperature == 1.0:
        return probs
    logp = torch.log(torch.clamp(probs, min=1e-8)) / temperature
    return F.softmax(logp, dim=-1)


def item_weights(target: torch.Tensor, weighting: str = "none") -> torch.Tensor:
    """Per-item weights [B]: none = 1; confidence = max_k t_k (eq. 5); entropy = 1 - H(t)/log K."""
    if weighting == "none":
        return torch.ones(target.shape[0], dtype=target.dtype)
    if weighting == "confidence":
        return target.max(dim=1).values
    if weighting == "entropy":
        h = -(target * torch.log(torch.clamp(target, min=1e-8))).sum(dim=1)
        return 1.0 - h / torch.log(torch.tensor(float(target.shape[1])))
    raise ValueError(f"unknown weighting {weighting!r} (none, confidence, entropy)")


def joint_loss(
    sup_logits: torch.Tensor | None,
    labels: torch.Tensor | None,
    sd_logits: torch.Tensor | None = None,
    sd_target: torch.Tensor | None = None,
    sd_mask: torch.Tensor | None = None,
    vd_logits: torch.Tensor | None = None,
    vd_target: torch.Tensor | None = None,
    vd_mask: torch.Tensor | None = None,
    lambda_sd: float = 0.0,
    lambda_vd: float = 0.0,
    weighting: str = "none",
    kind: str = "mae",
    temperature_sd: float = 1.0,
    temperature_vd: float = 1.0,
) -> tuple[torch.Tensor, dict]:
    """Eq. 4 (weighting='none') or eq. 5 (weighting='confidence'); returns (loss, parts for logging).

    Temperatures change only the weights (the teacher's confidence), not the
    targets the student matches.
    """
    n_l = 0 if labels is None else int(labels.shape[0])
    n_u = 0
    for t in (sd_target, vd_target):
        if t is not None:
            n_u = max(n_u, int(t.shape[0]))
    total = torch.zeros(())
    parts = {}
    if n_l:
        ce = F.cross_entropy(sup_logits, labels, reduction="sum")
        total = total + ce
        parts["ce"] = float(ce.detach()) / n_l
    for name, logits, target, mask, lam, temp in (
        ("sd", sd_logits, sd_target, sd_mask, lambda_sd, temperature_sd),
        ("vd", vd_logits, vd_target, vd_mask, lambda_vd, temperature_vd),
    ):
        if logits is None or target is None or lam == 0:
            continue
        m = torch.ones(target.shape[0]) if mask is None else mask.to(target.dtype)
        w = item_weights(temper(target, temp), weighting) * m
        term = distill_term(logits, target, kind)
        total = total + lam * (w * term).sum()
        parts[name] = float((term.detach() * m).sum() / torch.clamp(m.sum(), min=1))
    denom = max(n_l + n_u, 1)
    return total / denom, parts
