"""Losses of SPEC "Losses", checked against numbers worked out by hand with plain `math`."""

from __future__ import annotations

import math

import pytest
import torch

from liser.student.losses import Distill, LossOptions, distill_term, item_weights, joint_loss, temper

LN3, LN2 = math.log(3.0), math.log(2.0)


def t(x):
    return torch.tensor(x, dtype=torch.float32)


# ---------------------------------------------------------------- per-item terms
def test_distill_mae_two_classes():
    # softmax([0, ln 3]) = [1/4, 3/4]; target [1, 0]: (|1/4 - 1| + |3/4 - 0|) / 2 = 0.75
    # softmax([0, 0]) = [1/2, 1/2]; target [0.8, 0.2]: (0.3 + 0.3) / 2 = 0.3
    out = distill_term(t([[0.0, LN3], [0.0, 0.0]]), t([[1.0, 0.0], [0.8, 0.2]]), "mae")
    assert out.shape == (2,)
    assert out.tolist() == pytest.approx([0.75, 0.3], abs=1e-6)


def test_distill_mae_is_zero_on_a_perfect_match():
    assert float(distill_term(t([[0.0, LN3]]), t([[0.25, 0.75]]))[0]) == pytest.approx(0.0, abs=1e-7)


def test_distill_ce_two_classes():
    # -sum t log p: target [1, 0] -> -log(1/4) = ln 4; target [0.5, 0.5] -> -(0.5 ln 1/4 + 0.5 ln 3/4)
    out = distill_term(t([[0.0, LN3], [0.0, LN3]]), t([[1.0, 0.0], [0.5, 0.5]]), "ce")
    assert out.tolist() == pytest.approx([math.log(4), -(0.5 * math.log(0.25) + 0.5 * math.log(0.75))], abs=1e-6)


def test_distill_unknown_kind():
    with pytest.raises(ValueError, match="kl"):
        distill_term(t([[0.0, 0.0]]), t([[0.5, 0.5]]), "kl")


def test_item_weights():
    target = t([[0.7, 0.2, 0.1], [1 / 3, 1 / 3, 1 / 3], [0.0, 1.0, 0.0]])
    assert item_weights(target, "none").tolist() == [1.0, 1.0, 1.0]
    assert item_weights(target, "confidence").tolist() == pytest.approx([0.7, 1 / 3, 1.0], abs=1e-6)
    ent = item_weights(target, "entropy").tolist()
    h0 = -(0.7 * math.log(0.7) + 0.2 * math.log(0.2) + 0.1 * math.log(0.1))
    assert ent == pytest.approx([1 - h0 / math.log(3), 0.0, 1.0], abs=1e-5)  # uniform 0, one-hot 1
    # [0.5, 0.5, 0, 0]: H = ln 2, log K = ln 4 -> 1 - 1/2
    assert float(item_weights(t([[0.5, 0.5, 0.0, 0.0]]), "entropy")[0]) == pytest.approx(0.5, abs=1e-6)
    with pytest.raises(ValueError):
        item_weights(target, "bogus")


def test_temper():
    p = t([[0.8, 0.2]])
    assert temper(p, 1.0) is p
    # T = 2: p^(1/2) renormalised: sqrt(.8) / (sqrt(.8) + sqrt(.2)) = 2/3
    assert temper(p, 2.0).tolist()[0] == pytest.approx([2 / 3, 1 / 3], abs=1e-6)
    # T -> small sharpens: T = 0.5 squares: .64 / (.64 + .04)
    assert temper(p, 0.5).tolist()[0][0] == pytest.approx(0.64 / 0.68, abs=1e-6)


# ---------------------------------------------------------------- eq. 4 / eq. 5 on a tiny batch
# N_l = 2 labeled items (3 classes), N_u = 2 unlabeled items (speech teacher: 2 classes, video: 3).
SUP = [[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
LABELS = [0, 2]
SD_LOGITS = [[0.0, LN3], [0.0, 0.0]]  # softmax [1/4, 3/4], [1/2, 1/2]
SD_TARGET = [[1.0, 0.0], [0.8, 0.2]]
VD_LOGITS = [[0.0, 0.0, 0.0], [LN2, 0.0, 0.0]]  # softmax [1/3]*3, [1/2, 1/4, 1/4]
VD_TARGET = [[0.5, 0.5, 0.0], [0.25, 0.25, 0.5]]
LAM_SD, LAM_VD = 0.5, 2.0

E = math.e
CE = [math.log(E**2 + 2) - 2, math.log(1 + E + 1)]  # -log softmax(SUP)[label]
MAE_SD = [0.75, 0.3]
MAE_VD = [(1 / 6 + 1 / 6 + 1 / 3) / 3, (0.25 + 0.0 + 0.25) / 3]  # 2/9, 1/6


def _loss(**kw):
    """The joint loss of the two teachers sd and vd, set as the paper's keys name them (lambda_sd, ...)."""
    args = dict(sd_logits=t(SD_LOGITS), sd_target=t(SD_TARGET), sd_mask=None, lambda_sd=LAM_SD, temperature_sd=1.0,
                vd_logits=t(VD_LOGITS), vd_target=t(VD_TARGET), vd_mask=None, lambda_vd=LAM_VD, temperature_vd=1.0)
    args.update(kw)
    terms = [Distill(n, args.pop(f"{n}_logits"), args.pop(f"{n}_target"), args.pop(f"{n}_mask"),
                     args.pop(f"lambda_{n}"), args.pop(f"temperature_{n}")) for n in ("sd", "vd")]
    loss, parts = joint_loss(t(SUP), torch.tensor(LABELS), terms, options=LossOptions(**args))
    return float(loss), parts


def test_eq4_by_hand():
    expected = (sum(CE) + LAM_SD * sum(MAE_SD) + LAM_VD * sum(MAE_VD)) / (2 + 2)
    loss, parts = _loss()
    assert loss == pytest.approx(expected, abs=1e-6)
    assert parts["ce"] == pytest.approx(sum(CE) / 2, abs=1e-6)
    assert parts["sd"] == pytest.approx(sum(MAE_SD) / 2, abs=1e-6)
    assert parts["vd"] == pytest.approx(sum(MAE_VD) / 2, abs=1e-6)


def test_eq5_confidence_weights_by_hand():
    w_sd = [1.0, 0.8]  # max of each speech target
    w_vd = [0.5, 0.5]  # max of each video target
    expected = (sum(CE) + LAM_SD * (w_sd[0] * MAE_SD[0] + w_sd[1] * MAE_SD[1])
                + LAM_VD * (w_vd[0] * MAE_VD[0] + w_vd[1] * MAE_VD[1])) / 4
    loss, _ = _loss(weighting="confidence")
    assert loss == pytest.approx(expected, abs=1e-6)


def test_distill_ce_in_the_joint_loss():
    ce_sd = [math.log(4), -(0.8 * math.log(0.5) + 0.2 * math.log(0.5))]
    ce_vd = [-(0.5 * math.log(1 / 3) * 2), -(0.25 * math.log(0.5) + 0.25 * math.log(0.25) + 0.5 * math.log(0.25))]
    expected = (sum(CE) + LAM_SD * sum(ce_sd) + LAM_VD * sum(ce_vd)) / 4
    assert _loss(kind="ce")[0] == pytest.approx(expected, abs=1e-6)


def test_masked_item_contributes_nothing_but_counts_in_n_u():
    sup = t(SUP)
    sd_logits = t(SD_LOGITS).requires_grad_()
    loss, parts = joint_loss(sup, torch.tensor(LABELS),
                             [Distill("sd", sd_logits, t(SD_TARGET), torch.tensor([True, False]), LAM_SD),
                              Distill("vd", t(VD_LOGITS), t(VD_TARGET), None, LAM_VD)])
    expected = (sum(CE) + LAM_SD * MAE_SD[0] + LAM_VD * sum(MAE_VD)) / 4  # still / (N_l + N_u) = 4
    assert float(loss.detach()) == pytest.approx(expected, abs=1e-6)
    assert parts["sd"] == pytest.approx(MAE_SD[0], abs=1e-6)  # the logged term averages valid items only
    loss.backward()
    assert torch.all(sd_logits.grad[1] == 0) and torch.any(sd_logits.grad[0] != 0)


def test_all_masked_teacher():
    loss, parts = _loss(sd_mask=torch.tensor([False, False]), vd_mask=torch.tensor([False, False]))
    assert loss == pytest.approx(sum(CE) / 4, abs=1e-6)
    assert parts["sd"] == 0.0


def test_temperature_changes_weights_only():
    # weighting none: the temperature has no effect at all
    assert _loss(temperature_sd=2.0, temperature_vd=3.0)[0] == pytest.approx(_loss()[0], abs=1e-7)
    # confidence: the weights come from the tempered targets, the terms from the raw ones
    w_sd = [1 / (1 + math.sqrt(1e-8)), 2 / 3]  # T=2 on [1, 0] (clamped at 1e-8) and on [0.8, 0.2]
    expected = (sum(CE) + LAM_SD * (w_sd[0] * MAE_SD[0] + w_sd[1] * MAE_SD[1])
                + LAM_VD * 0.5 * sum(MAE_VD)) / 4
    loss, parts = _loss(weighting="confidence", temperature_sd=2.0)
    assert loss == pytest.approx(expected, abs=1e-6)
    assert parts["sd"] == pytest.approx(sum(MAE_SD) / 2, abs=1e-6)  # targets untouched


def test_zero_lambda_ignores_a_teacher():
    loss, parts = _loss(lambda_sd=0.0)
    assert "sd" not in parts
    assert loss == pytest.approx((sum(CE) + LAM_VD * sum(MAE_VD)) / 4, abs=1e-6)


def test_labeled_only_is_mean_cross_entropy():
    loss, parts = joint_loss(t(SUP), torch.tensor(LABELS))
    assert float(loss) == pytest.approx(sum(CE) / 2, abs=1e-6)
    assert set(parts) == {"ce"}


def test_unlabeled_only_two_stage_batch():
    loss, parts = joint_loss(None, None, [Distill("sd", t(SD_LOGITS), t(SD_TARGET), None, LAM_SD)])
    assert float(loss) == pytest.approx(LAM_SD * sum(MAE_SD) / 2, abs=1e-6)
    assert "ce" not in parts


def test_entropy_weighting_in_the_joint_loss():
    # speech targets [1, 0] -> weight 1, [0.8, 0.2] -> 1 - H/ln 2
    h = -(0.8 * math.log(0.8) + 0.2 * math.log(0.2))
    w_sd = [1.0, 1 - h / math.log(2)]
    hv = [math.log(2), -(0.25 * math.log(0.25) * 2 + 0.5 * math.log(0.5))]
    w_vd = [1 - x / math.log(3) for x in hv]
    expected = (sum(CE) + LAM_SD * (w_sd[0] * MAE_SD[0] + w_sd[1] * MAE_SD[1])
                + LAM_VD * (w_vd[0] * MAE_VD[0] + w_vd[1] * MAE_VD[1])) / 4
    assert _loss(weighting="entropy")[0] == pytest.approx(expected, abs=1e-5)


def test_a_third_named_teacher_adds_its_own_term():
    """Teachers are named entries: a third term counts like the others, logged under its name."""
    third = Distill("face2", t(VD_LOGITS), t(VD_TARGET), None, 1.0)
    two = _loss()[0] * 4
    loss, parts = joint_loss(t(SUP), torch.tensor(LABELS),
                             [Distill("sd", t(SD_LOGITS), t(SD_TARGET), None, LAM_SD),
                              Distill("vd", t(VD_LOGITS), t(VD_TARGET), None, LAM_VD), third])
    assert float(loss) * 4 == pytest.approx(two + sum(MAE_VD), abs=1e-6)
    assert parts["face2"] == pytest.approx(sum(MAE_VD) / 2, abs=1e-6)
