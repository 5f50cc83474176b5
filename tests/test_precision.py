"""`precision: fp32 | bf16` for the student's training step (issue 14 §1), on the small real RAVDESS set.

fp32 (the default) must be the step as it was before the option, bit for
bit; bf16 runs the forward + loss under autocast: other weights, but the same
ones for the same seed; evaluation stays float32.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from liser.student import train as tr
from liser.core.config import Config
from liser.core.device import training_autocast
from liser.core.errors import LiserError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _weights(run) -> dict:
    return torch.load(run / "best.pt", weights_only=True, map_location="cpu")["state_dict"]


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _metrics(run) -> dict:
    return json.loads((run / "metrics.json").read_text())


def _plain_step_loss(model, x, labels, targets, teachers, options, precision="fp32", pairs=0):
    """The step's forward + loss as run_epoch wrote it before `precision` existed: no context, no casts
    (and no consistency pairs: the small config has no views)."""
    from liser.student.losses import Distill, joint_loss

    assert precision == "fp32" and pairs == 0
    sup, heads = model(x)
    n_l = 0 if labels is None else len(labels)
    terms = [Distill(n, (sup if head == "sup" else heads[n])[n_l:], *targets.get(n, (None, None)), w, temp)
             for n, w, temp, head in teachers]
    return joint_loss(sup[:n_l] if n_l else None, labels, terms, options=options)


def test_fp32_default_is_the_plain_step_bit_for_bit(small_config, trained_run, tmp_path, monkeypatch):
    assert Config().precision == small_config.precision == "fp32"
    calls = []

    def plain(*a, **kw):
        calls.append(1)
        return _plain_step_loss(*a, **kw)

    monkeypatch.setattr(tr, "step_loss", plain)
    run = tr.train(small_config, run_dir=tmp_path / "plain", progress=False)
    assert calls  # the run did go through the pre-option step
    assert _same(_weights(run), _weights(trained_run))  # trained_run: the default (fp32) step_loss
    assert _metrics(run) == _metrics(trained_run)


@pytest.fixture(scope="module")
def bf16_runs(small_config, tmp_path_factory):
    """Two 2-epoch bf16 runs of the small config, same seed."""
    cfg = small_config.replace(precision="bf16")
    base = tmp_path_factory.mktemp("bf16")
    return [tr.train(cfg, run_dir=base / f"run{i}", progress=False) for i in range(2)]


def test_bf16_is_deterministic_and_other_weights(bf16_runs, trained_run):
    a, b = bf16_runs
    assert _same(_weights(a), _weights(b))
    assert _metrics(a) == _metrics(b)
    assert all(v.dtype != torch.bfloat16 for v in _weights(a).values())  # master weights stay float32
    assert not _same(_weights(a), _weights(trained_run))  # fp32's run: bf16 trains other weights
    assert Config.load(a / "config.yaml").precision == "bf16"


def test_a_bf16_run_is_not_resumed_as_fp32(bf16_runs, small_config):
    with pytest.raises(LiserError, match="precision"):
        tr.train(small_config, run_dir=bf16_runs[0], progress=False)


def test_bf16_first_step_loss_is_close_to_fp32(small_config):
    with tr.torch_settings(1):
        torch.manual_seed(0)
        data = tr.load_data(small_config, progress=False)
        model, _ = tr.build_model(small_config, data)
        model.train()
        state = tr.State(np.random.default_rng(0))
        frames = [data.cache.frames(it.id) for it in data.train]
        x, labels, targets = tr.next_batch(tr.Crops([frames]), data.labels, np.arange(small_config.batch_size), None, 0, state)
        options = tr.loss_options(small_config, data)
        bn = {k: v.clone() for k, v in model.state_dict().items()}
        loss32, _ = tr.step_loss(model, x, labels, targets, [], options, "fp32")
        model.load_state_dict(bn)  # the same BatchNorm running statistics for the second forward
        loss16, parts = tr.step_loss(model, x, labels, targets, [], options, "bf16")
        loss16.backward()
    assert loss32.dtype == loss16.dtype == torch.float32  # the loss is summed in float32
    l32, l16 = float(loss32.detach()), float(loss16.detach())
    assert l16 != l32  # the autocast did run the forward in bf16 ...
    assert l16 == pytest.approx(l32, rel=2e-3)  # ... within bf16 rounding (8 bits of mantissa; seen: 2e-5)
    assert parts["ce"] == pytest.approx(l16, rel=1e-6)  # no-dstl: the loss is the mean CE
    assert all(p.grad is not None and p.grad.dtype == torch.float32 and p.dtype == torch.float32
               for p in model.conv.parameters())


def test_invalid_precision_is_refused(small_config, tmp_path):
    with pytest.raises(LiserError) as e:
        tr.train(small_config.replace(precision="fp16"), run_dir=tmp_path / "r", progress=False)
    assert str(e.value) == "precision must be fp32 or bf16, got 'fp16'"  # one line: the field and its values
    assert not (tmp_path / "r").exists()  # refused before the run directory is made
    with pytest.raises(LiserError, match="precision must be fp32 or bf16"):
        training_autocast("cpu", "float16")


def test_training_autocast_is_scoped():
    with training_autocast("cpu", "fp32"):
        assert not torch.is_autocast_enabled("cpu")
    with training_autocast("cpu", "bf16"):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    assert not torch.is_autocast_enabled("cpu")  # nothing left behind


def test_precision_through_the_config_loader(tmp_path):
    assert Config.load(None, ["precision=bf16"]).precision == "bf16"
    assert Config.load(CONFIGS / "no-dstl.yaml", ["precision=bf16"]).precision == "bf16"
    path = tmp_path / "c.yaml"
    path.write_text("name: x\nprecision: bf16\n")
    assert Config.load(path).precision == "bf16"
    assert Config.load(path, ["precision=fp32"]).precision == "fp32"  # --set wins over the file
    with pytest.raises(LiserError, match="precision"):
        Config.load(None, ["precision=fp16"]).check_choices()
