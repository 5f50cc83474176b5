"""Adapting a trained student to unlabeled recordings: its BatchNorm statistics, or a teacher's soft labels.

Without a teacher (`renormalise`): the student's BatchNorm layers take the
recordings' own statistics (AdaBN), a label-free correction for a new
microphone, room or voice that costs a forward pass over the windows per
BatchNorm layer.

With a teacher (`adapt_student`), the method's answer to a new domain (issue 24): the teacher labels the
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


def scored_windows(frames: list, windowing: str, stride_s: float = 0.5) -> list[np.ndarray]:
    """The windows the student scores, grouped by length: [[W, 64, length] float32, ...] over all files.

    liser.data.windowing's plan for each file ("speech": its speech span, the whole file where none is found)."""
    from liser.data.windowing import gather, plan

    groups: dict[int, list] = {}
    for fr in frames:
        p = plan(fr, stride_s, windowing, strict=False)
        groups.setdefault(p.length, []).append(gather(fr, p))
    return [np.concatenate(v) for _, v in sorted(groups.items())]


def renormalise(model, frames: list, windowing: str, batch: int = 256):
    """A copy of `model` (a Student) whose BatchNorm statistics are those of `frames`' windows: AdaBN.

    Li, Wang, Shi, Liu & Hou (2016), "Revisiting Batch Normalization For Practical Domain Adaptation": a
    network's BatchNorm layers hold its training domain's per-channel means and variances, and replacing
    them with a new domain's, estimated on its unlabeled data, adapts the network to that domain with no
    label and no training. Each layer's statistics are estimated in forward order, exactly over every
    position of every window, with the layers below it already adapted. The weights, the input's
    normalisation and the heads are unchanged. `frames`: [T, 64] log-Mel per file; the windows are those
    `windowing` scores (scored_windows). Returns the copy in eval mode; raises LiserError without frames.
    """
    import torch

    if not frames:
        raise LiserError("adapt: no recording to estimate statistics on")
    model = copy.deepcopy(model).eval()
    windows = scored_windows(frames, windowing)
    for bn in [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]:
        acc = {"n": 0, "sum": 0.0, "sq": 0.0}

        def take(_, inputs, acc=acc):  # the layer's input [B, C, F, T], before it normalises
            x = inputs[0].detach().double()
            acc["n"] += x.numel() // x.shape[1]
            acc["sum"] = acc["sum"] + x.sum(dim=(0, 2, 3))
            acc["sq"] = acc["sq"] + (x * x).sum(dim=(0, 2, 3))

        hook = bn.register_forward_pre_hook(take)
        with torch.no_grad():
            for w in windows:
                for a in range(0, len(w), batch):
                    model.embed(torch.from_numpy(w[a : a + batch]))
        hook.remove()
        n = acc["n"]
        mean = acc["sum"] / n
        var = (acc["sq"] / n - mean * mean).clamp(min=0) * n / max(n - 1, 1)  # unbiased, as BatchNorm keeps it
        bn.running_mean.copy_(mean.float())
        bn.running_var.copy_(var.float())
    return model


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
