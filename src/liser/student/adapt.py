"""Adapting a trained student to unlabeled recordings: distillation of a teacher's soft labels into g_sup.

The method's answer to a new domain (issue 24): the teacher labels the
user's own recordings (0.5 s pieces, VAD-masked; liser.teachers.store) and
the student learns those soft labels on crops of the same recordings,
through the head users get (g_sup), starting from a trained student. A second
term keeps it near where it started: KL(start || adapted) on the same crops,
the start's prediction as a fixed target (`anchor`), so what the start knew
of emotion is not traded for the teacher's habits on a small folder.

The epoch kept is the one whose file labels agree best with the teacher's
(UAR against the teacher's arg-max labels) on held-out `check` files, epoch 0
(the start) included: with no labels, agreement with the stronger teacher on
files it did not train on is what can be measured.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np

from liser.core.errors import LiserError
from liser.core.metrics import uar
from liser.data import audio


@dataclass(frozen=True)
class AdaptOptions:
    """How a student is adapted (`liser adapt`); chosen on held-out check files, never on a test set."""

    epochs: int = 8  # passes over the folder's files
    lr: float = 3e-4  # AdamW; a third of training's 1e-3: the start is a trained student
    batch_size: int = 32  # crops per step
    anchor: float = 1.0  # weight of KL(start || adapted) on the same crops; 0 = the teacher's labels alone
    seed: int = 0  # crops and order
    context_s: float = 0.0  # a crop's target: the teacher's mean over at least this many seconds around it (the whole
    #   recording when shorter; Config.target_context_s); 0 = the teacher's pieces inside the crop
    speech_crops: bool = False  # "speech" students: crops inside each recording's speech span (Config.pool_crops)


def teacher_file_labels(store, ids: list[str]) -> np.ndarray:
    """int [N]: the teacher's label of each file, the arg-max of its valid pieces' mean (all pieces if none)."""
    return np.array([int(store.file_probs(i).argmax()) for i in ids])


def agreement(model, frames: list, teacher_labels: np.ndarray, windowing: str, n_classes: int) -> float:
    """UAR of the student's file labels against the teacher's (over the classes the teacher gives)."""
    from liser.student.evaluate import file_logits

    pred = file_logits(model, frames, 0.5, windowing=windowing).argmax(1)
    return uar(teacher_labels, pred, n_classes)


def adapt_student(model, pool, check: tuple[list, np.ndarray], windowing: str, options: AdaptOptions = AdaptOptions(),
                  say=print) -> tuple[object, list[dict]]:
    """Adapt `model` (a Student, trained) on `pool` (liser.student.train.Unlabeled, one speech store whose classes
    are the student's) and keep the epoch that agrees best with the teacher on `check` (frames, teacher labels).

    Returns (the kept model in eval mode, one row per epoch: epoch, loss, kd, anchor, agreement).
    Raises LiserError when the pool has no item.
    """
    import torch
    import torch.nn.functional as F

    from liser.data.windowing import MIN_WINDOW_FRAMES
    from liser.student.train import unlabeled_batch

    if not pool.ids:
        raise LiserError("adapt: no file of the folder has a soft label")
    if options.speech_crops and windowing == "speech" and not pool.spans:
        from dataclasses import replace

        from liser.student.train import pool_spans

        pool = replace(pool, spans=pool_spans(pool.frames))
    rng = np.random.default_rng(options.seed)
    torch.manual_seed(options.seed)
    start = copy.deepcopy(model).eval()
    n_classes = model.n_classes
    best = (agreement(model, check[0], check[1], windowing, n_classes), 0, copy.deepcopy(model.state_dict()))
    rows = [{"epoch": 0, "agreement": round(best[0], 4)}]
    say(f"adapt: start agrees with the teacher on the check files: UAR {best[0]:.3f}")
    opt = torch.optim.AdamW(model.parameters(), lr=options.lr, weight_decay=0.01)
    name = next(iter(pool.stores))
    for epoch in range(1, options.epochs + 1):
        model.train()
        order, sums, steps = rng.permutation(len(pool.ids)), {"loss": 0.0, "kd": 0.0, "anchor": 0.0}, 0
        for s in range(0, len(order), options.batch_size):
            length = audio.CLIP_FRAMES if windowing == "pad" else int(rng.integers(MIN_WINDOW_FRAMES, audio.CLIP_FRAMES + 1))
            x, targets = unlabeled_batch(pool, order[s : s + options.batch_size], rng, length,
                                         context_s=options.context_s)
            t, mask = targets[name]
            logits = model.classify(x)
            logp = F.log_softmax(logits, dim=1)
            m = mask.float()
            kd = -(t * logp).sum(1).mul(m).sum() / m.sum().clamp(min=1)
            with torch.no_grad():
                ref = F.log_softmax(start.classify(x), dim=1)
            anchor = F.kl_div(logp, ref, reduction="batchmean", log_target=True)
            loss = kd + options.anchor * anchor
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            for k, v in (("loss", loss), ("kd", kd), ("anchor", anchor)):
                sums[k] += float(v.detach())
            steps += 1
        agree = agreement(model, check[0], check[1], windowing, n_classes)
        rows.append({"epoch": epoch, **{k: round(v / max(steps, 1), 4) for k, v in sums.items()}, "agreement": round(agree, 4)})
        say(f"adapt epoch {epoch}: loss {rows[-1]['loss']:.4f}, agreement with the teacher {agree:.3f}")
        if agree > best[0]:
            best = (agree, epoch, copy.deepcopy(model.state_dict()))
    model.load_state_dict(best[2])
    return model.eval(), rows
