"""`ema_decay`: the student that is validated and kept is a moving average of the trained weights.

On the small real RAVDESS set (tests/conftest.py: 2 training actors, 5 steps an epoch): the weights of best.pt
are the exponential moving average of the weights after every step, computed here independently; a run
interrupted and resumed keeps the same average; 0 leaves training as it was.
"""

from __future__ import annotations

import csv
import json

import pytest
import torch

from liser.core.config import Config
from liser.core.errors import LiserError
from liser.student import train as tr

from conftest import interrupt_at_second_validation

DECAY = 0.8  # short enough that 10 steps of 2 epochs move the average well away from the first step's weights


def _rows(run):
    with open(run / "epochs.csv", newline="") as f:
        return [{k: v for k, v in r.items() if k not in ("train_s", "epoch_s", "samples_per_s")}
                for r in csv.DictReader(f)]


def _recording(monkeypatch):
    """Patch build_model so that every optimiser step records the trained weights (float tensors only)."""
    real, steps = tr.build_model, []

    def build(cfg, data):
        model, opt = real(cfg, data)
        step = opt.step

        def recorded(*a, **kw):
            out = step(*a, **kw)
            steps.append({k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()})
            return out

        opt.step = recorded
        return model, opt

    monkeypatch.setattr(tr, "build_model", build)
    return steps


def test_best_student_is_the_moving_average_of_the_steps(small_config, tmp_path, monkeypatch):
    steps = _recording(monkeypatch)
    run = tr.train(small_config.replace(ema_decay=DECAY), run_dir=tmp_path / "ema", progress=False)
    m = json.loads((run / "metrics.json").read_text())
    per_epoch = len(steps) // small_config.epochs
    assert per_epoch * small_config.epochs == len(steps) and per_epoch > 1
    # W_ema = the first step's weights, then decay x W_ema + (1 - decay) x W after each later step
    ema = dict(steps[0])
    for w in steps[1 : (m["best_epoch"] + 1) * per_epoch]:
        ema = {k: DECAY * ema[k] + (1 - DECAY) * w[k] for k in ema}
    kept = torch.load(run / "best.pt", weights_only=True)["state_dict"]
    for k, v in ema.items():
        torch.testing.assert_close(kept[k], v, rtol=1e-5, atol=1e-6, msg=k)
    # ... and it is not simply the last step's weights of that epoch
    last = steps[(m["best_epoch"] + 1) * per_epoch - 1]
    assert max(float((kept[k] - last[k]).abs().max()) for k in ema) > 1e-3


def test_resumed_run_keeps_the_average(small_config, tmp_path, monkeypatch):
    cfg = small_config.replace(ema_decay=DECAY)
    whole = tr.train(cfg, run_dir=tmp_path / "whole", progress=False)
    restore = interrupt_at_second_validation(monkeypatch)  # Ctrl-C during the validation of epoch 1
    with pytest.raises(KeyboardInterrupt):
        tr.train(cfg, run_dir=tmp_path / "resumed", progress=False)
    restore()
    resumed = tr.train(cfg, run_dir=tmp_path / "resumed", progress=False)
    assert _rows(resumed) == _rows(whole)
    a = torch.load(whole / "best.pt", weights_only=True)["state_dict"]
    b = torch.load(resumed / "best.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_off_trains_as_before(small_config, trained_run, tmp_path):
    # ema_decay 0 is the default: the shared 2-epoch run is the run without an average, row for row
    run = tr.train(small_config.replace(ema_decay=0.0), run_dir=tmp_path / "off", progress=False)
    assert _rows(run) == _rows(trained_run)


@pytest.mark.parametrize("decay", [-0.1, 1.0, 1.5])
def test_decay_outside_0_1_is_refused(decay):
    with pytest.raises(LiserError, match="ema_decay"):
        Config(ema_decay=decay).check_choices()
