"""Losses of SPEC "Losses": CE, MAE distillation, confidence weights, eq. 4 / eq. 5.

For a mini-batch of N_l labeled and N_u unlabeled items (eq. 4):

    L = ( sum_i CE(g_sup(s_i), y_i)
          + sum_j sum_t lam_t * w_t,j * L_t,j ) / (N_l + N_u)

summed over the teachers t the config names (the paper's two: sd, speech, and
vd, video; liser.core.config.TeacherEntry), with L_sd_j = MAE(softmax(g_sd(s_j)), t_s(s_j)) (mean over classes of the
absolute differences), w = 1 (eq. 4) or the teacher's max probability on
that window (eq. 5), and terms of items without a valid target masked out.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def distill_term(logits: torch.Tensor, target: torch.Tensor, kind: str = "mae") -> torch.Tensor:
    """Per-item distillation loss [B]: `mae` (the paper's) or `ce` (Table 3's distill-ce)."""
    if kind == "mae":
        return (F.softmax(logits, dim=1) - target).abs().mean(dim=1)
    if kind == "ce":
        return -(target * F.log_softmax(logits, dim=1)).sum(dim=1)
    raise ValueError(f"unknown distillation loss {kind!r} (mae or ce)")


def consistency_term(clean_logits: torch.Tensor, view_logits: torch.Tensor) -> torch.Tensor:
    """Per-pair consistency loss [B]: KL(softmax(clean) || softmax(view)), no gradient through the clean side.

    The clean crop's prediction is the soft label its field view must match:
    self-distillation across augmentations (the clean-to-noisy consistency
    of UDA, Xie et al. 2020, with the clean side fixed as the teacher).
    Shapes: both [B, K] logits of the same B items.
    """
    target = F.log_softmax(clean_logits.detach(), dim=1)
    return F.kl_div(F.log_softmax(view_logits, dim=1), target, reduction="none", log_target=True).sum(dim=1)


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


@dataclass(frozen=True)
class LossOptions:
    """How the joint loss's terms are formed (SPEC "Losses"); the defaults are eq. 4."""

    weighting: str = "none"  # per-item weight of every distillation term: none (eq. 4) | confidence (eq. 5) | entropy
    kind: str = "mae"  # distillation loss: mae (the paper's) | ce (Table 3's distill-ce)
    consistency: float = 0.0  # weight of the clean-to-view consistency term (`consistency_term`); 0 = off


@dataclass
class Distill:
    """One teacher's term of a mini-batch: its head's logits and its targets on the unlabeled items."""

    name: str  # the teacher entry's name (sd, vd, ...): the key of its part in the log
    logits: torch.Tensor  # [N_u, K_teacher] the student's g_<name> logits
    target: torch.Tensor  # [N_u, K_teacher] the teacher's soft labels of the same windows
    mask: torch.Tensor | None  # [N_u] bool, False = no valid target (no loss); None = all valid
    weight: float  # lambda of the term (0 = left out)
    temperature: float = 1.0  # applied before the item weights, not to the target
    steps: tuple | None = None  # piece targets: (logits [N_u, T, K] of the head at every LSTM step, the teacher's
    #   piece under each step [N_u, T, K], valid [N_u, T] bool); the term is then `step_term`'s; None = the window's


def step_term(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, kind: str = "mae"):
    """Per-item distillation loss over LSTM steps: (term [B], has_target [B] bool).

    Each step's logits [B, T, K] are distilled towards the teacher's 0.5 s piece under it [B, T, K]
    (`distill_term`), and an item's term is the mean over its valid steps [B, T], so an item weighs as much as
    with a window target. SPEC "Questions the paper leaves open", 2: the mean over 3 s may wash out short
    expressions; these targets keep the pieces.
    """
    b, t, k = logits.shape
    per_step = distill_term(logits.reshape(b * t, k), target.reshape(b * t, k), kind).reshape(b, t)
    w = valid.to(per_step.dtype)
    n = w.sum(dim=1)
    return (per_step * w).sum(dim=1) / torch.clamp(n, min=1), n > 0


def joint_loss(sup_logits: torch.Tensor | None, labels: torch.Tensor | None, terms=(), *,
               options: LossOptions = LossOptions()) -> tuple[torch.Tensor, dict]:
    """Eq. 4 (weighting='none') or eq. 5 (weighting='confidence'), summed over the teachers' `terms` (Distill,
    in order); returns (loss, parts for logging: "ce" and each term's mean by name).

    Shapes: sup_logits [N_l, K], labels [N_l] int. Temperatures change only
    the weights (the teacher's confidence), not the targets the student
    matches. Raises ValueError for an unknown weighting or kind.
    """
    n_l = 0 if labels is None else int(labels.shape[0])
    n_u = max([int(t.target.shape[0]) for t in terms if t.target is not None] + [0])
    total = torch.zeros(())
    parts = {}
    if n_l:
        ce = F.cross_entropy(sup_logits, labels, reduction="sum")
        total = total + ce
        parts["ce"] = float(ce.detach()) / n_l
    for t in terms:
        if t.logits is None or t.target is None or t.weight == 0:
            continue
        m = torch.ones(t.target.shape[0]) if t.mask is None else t.mask.to(t.target.dtype)
        if t.steps is None:
            term = distill_term(t.logits, t.target, options.kind)
        else:
            term, has = step_term(*t.steps, options.kind)
            m = m * has.to(m.dtype)
        w = item_weights(temper(t.target, t.temperature), options.weighting) * m
        total = total + t.weight * (w * term).sum()
        parts[t.name] = float((term.detach() * m).sum() / torch.clamp(m.sum(), min=1))
    denom = max(n_l + n_u, 1)
    return total / denom, parts
