"""The CPU shortcuts of training and evaluation give the plain path's numbers bit for bit (issue 14 §1).

liser.student.model runs the conv blocks as conv -> BN -> pool -> ReLU in training
and BN / ReLU / pool per EVAL_CHUNK windows in evaluation, and
liser.student.train.torch_settings turns off deterministic mode's NaN fill of new
tensors. Each is checked here against the plain `conv -> BN -> ReLU -> pool`
Sequential (and the fill) on crops of real RAVDESS files.
"""

from __future__ import annotations

import copy
import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from liser.student.model import EVAL_CHUNK, Classifier, Student


@pytest.fixture(scope="module")
def real(small_ravdess):
    """The small RAVDESS set's features cache (in memory), its item ids and labels."""
    from liser.data.features import build_features

    m = small_ravdess.manifest
    cache = build_features(m, small_ravdess.work, threads=1, progress=False).load_into_memory()
    ids = [it.id for it in m.items]
    y = np.array([m.classes.index(it.label) for it in m.items])
    return cache, ids, y


def _students(cache, ids):
    """A normalised student and a copy that runs the plain Sequential blocks."""
    from liser.data.features import normalisation_stats

    torch.manual_seed(0)
    a = Student(8, 7)
    mean, std = normalisation_stats(cache, ids)
    a.set_normalisation(torch.from_numpy(mean), torch.from_numpy(std))
    a = a.to(memory_format=torch.channels_last)
    b = copy.deepcopy(a)
    b.conv_blocks = lambda h: b.conv(h)  # the paper's order, in one Sequential per block
    return a, b


def _crops(cache, ids, y, rng, n=25):
    """n random 3 s crops of real files, [n, 64, 94] float32, and their labels."""
    from liser.student.train import random_crop

    idx = rng.choice(len(ids), n, replace=False)
    x = np.stack([random_crop(cache.frames(ids[i]), rng)[0] for i in idx])
    return torch.from_numpy(x), torch.from_numpy(y[idx])


def _steps(models, cache, ids, y, n_steps=3):
    """Train each model for the same steps (CE on g_sup, MAE-like on g_sd); returns the per-step grads."""
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-3) for m in models]
    rng = np.random.default_rng(0)
    grads = [[] for _ in models]
    for _ in range(n_steps):
        x, labels = _crops(cache, ids, y, rng)
        for k, (m, opt) in enumerate(zip(models, opts)):
            m.train()
            sup, heads = m(x)
            sd = heads["sd"]
            loss = F.cross_entropy(sup, labels) + (F.softmax(sd, 1) - 1 / 8).abs().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grads[k].append({n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None})
            opt.step()
    return grads


def _assert_same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_training_order_gives_the_plain_blocks_weights_bit_for_bit(real):
    cache, ids, y = real
    a, b = _students(cache, ids)
    ga, gb = _steps([a, b], cache, ids, y)
    for step_a, step_b in zip(ga, gb):
        assert step_a.keys() == step_b.keys() and "conv.0.0.weight" in step_a
        for name in step_a:
            assert torch.equal(step_a[name], step_b[name]), name
    _assert_same(a, b)  # weights, and BatchNorm's running statistics
    assert not torch.equal(a.conv[0][1].running_mean, torch.zeros(64))  # the steps did train


def test_evaluation_in_chunks_equals_the_whole_batch(real):
    from liser.student.evaluate import file_logits
    from liser.data.frontend import windows

    cache, ids, y = real
    a, b = _students(cache, ids)
    _steps([a, b], cache, ids, y, n_steps=2)
    frames = [cache.frames(i) for i in ids]
    x = torch.from_numpy(np.concatenate([windows(f, 0.1) for f in frames]))
    assert len(x) > 2 * EVAL_CHUNK and len(x) % EVAL_CHUNK  # several chunks and a partial one
    a.eval(), b.eval()
    with torch.inference_mode():
        (sup_a, heads_a), (sup_b, heads_b) = a(x), b(x)
        assert torch.equal(sup_a, sup_b) and heads_a.keys() == heads_b.keys()
        assert all(torch.equal(heads_a[n], heads_b[n]) for n in heads_a)
    # what validation and the test run: batches of 512 windows and the remainder
    assert np.array_equal(file_logits(a, frames, 0.1), file_logits(b, frames, 0.1))
    assert np.array_equal(file_logits(a, frames, 0.5, head="vd"), file_logits(b, frames, 0.5, head="vd"))


def test_no_fill_of_new_tensors_gives_the_same_training(real):
    cache, ids, y = real
    det = torch.utils.deterministic
    old = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
           det.fill_uninitialized_memory)
    runs = []
    try:
        torch.use_deterministic_algorithms(True, warn_only=True)
        for fill in (True, False):
            det.fill_uninitialized_memory = fill
            a, _ = _students(cache, ids)
            _steps([a], cache, ids, y, n_steps=2)
            a.eval()
            with torch.inference_mode():
                logits = a.classify(torch.from_numpy(np.stack([cache.frames(i)[:94].T for i in ids]).astype(np.float32)))
            runs.append((a, logits))
    finally:
        torch.use_deterministic_algorithms(old[0], warn_only=old[1])
        det.fill_uninitialized_memory = old[2]
    _assert_same(runs[0][0], runs[1][0])
    assert torch.equal(runs[0][1], runs[1][1])


def test_torch_settings_turn_the_fill_off_and_restore_it():
    from liser.student.train import torch_settings

    det = torch.utils.deterministic
    before = (det.fill_uninitialized_memory, torch.are_deterministic_algorithms_enabled(), torch.get_num_threads())
    with torch_settings(1):
        assert det.fill_uninitialized_memory is False
        assert torch.are_deterministic_algorithms_enabled()
    assert (det.fill_uninitialized_memory, torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()) == before


def test_exported_graph_keeps_the_papers_block_order():
    """One conv -> ReLU -> pool per block, whatever the example's batch: int8 quantisation fuses Conv + ReLU,
    and a traced per-chunk loop would fix the batch size of the graph."""
    import onnx

    torch.manual_seed(0)
    m = Student(8, 7).to(memory_format=torch.channels_last).eval()
    buf = io.BytesIO()
    with torch.no_grad():  # an example batch larger than EVAL_CHUNK, without autograd: the chunked path's conditions
        torch.onnx.export(Classifier(m), (torch.randn(EVAL_CHUNK + 8, 64, 94),), buf, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "b"}}, dynamo=False)
    graph = onnx.load_from_string(buf.getvalue()).graph
    producer = {out: n.op_type for n in graph.node for out in n.output}
    pools = [n for n in graph.node if n.op_type == "MaxPool"]
    assert len(pools) == 3 and sum(n.op_type == "Conv" for n in graph.node) == 3
    assert all(producer[p.input[0]] == "Relu" for p in pools)


def test_evaluation_batches_stay_in_the_heap(real, tmp_path):
    """With tune_malloc's defaults, a second 512-window evaluation batch reuses the first one's memory instead of
    faulting about 1.2 GB in again (glibc returned it when its trim threshold was 1 GB)."""
    import subprocess
    import sys

    if not sys.platform.startswith("linux"):
        pytest.skip("glibc only")
    from liser.data.frontend import windows

    cache, ids, _ = real
    x = np.concatenate([windows(cache.frames(i), 0.1) for i in ids])[:512]
    assert len(x) == 512
    np.save(tmp_path / "x.npy", x)
    # in a child process: the setting is process-wide, and this test process must stay as it was
    code = ("import sys, resource, numpy as np, torch; from liser.core.device import tune_malloc; ok = tune_malloc(); "
            "from liser.student.model import Student; torch.set_num_threads(1); "
            "m = Student(8, 7).to(memory_format=torch.channels_last).eval(); x = torch.from_numpy(np.load(sys.argv[1])); "
            "flt = []\n"
            "with torch.inference_mode():\n"
            "    for _ in range(4):\n"
            "        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt; m.classify(x)\n"
            "        flt.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)\n"
            "print(ok, *flt)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "x.npy")], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    ok, *faults = out.stdout.split()
    mb = [int(f) * 4096 / 2**20 for f in faults]  # 4 KB pages
    assert ok == "True"
    assert mb[0] > 700  # the first batch maps its block-1 activation (770 MB) ...
    assert max(mb[2:]) < 100, mb  # ... later ones reuse it (the second may still place a few blocks)
