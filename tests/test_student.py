"""The student of SPEC Table 1: parameter count, shapes, normalisation buffers, FLOPs."""

from __future__ import annotations

import torch
from torch import nn

from liser.student.model import Classifier, Student, count_parameters, flops_per_sample


def _expected_parameters(k_s: int, k_v: int, c: int = 64, h: int = 64, mel_out: int = 2) -> int:
    conv = lambda c_in, kf, kt: c_in * c * kf * kt + c  # noqa: E731  weights + biases
    bn = 2 * c  # BatchNorm affine (gamma, beta); running stats are buffers
    lstm_in = c * mel_out  # 64 channels x 2 Mel bins
    lstm = 4 * h * (lstm_in + h) + 8 * h  # 4 gates: W_ih, W_hh and two bias vectors
    g_sup = h * k_s + k_s
    g_sd = (h * 32 + 32) + (32 * k_s + k_s)
    g_vd = (h * 32 + 32) + (32 * k_v + k_v)
    return conv(1, 3, 3) + bn + conv(c, 3, 3) + bn + conv(c, 3, 1) + bn + lstm + g_sup + g_sd + g_vd


def test_parameter_count_is_the_papers_105k():
    m = Student(8, 7)
    n = count_parameters(m)
    assert n == _expected_parameters(8, 7)
    assert abs(n - 105_000) / 105_000 <= 0.02


def test_parameter_count_other_class_counts():
    assert count_parameters(Student(6, 7)) == _expected_parameters(6, 7)
    assert count_parameters(Student(7, 3)) == _expected_parameters(7, 3)


def test_output_shapes_of_the_three_heads():
    torch.manual_seed(0)
    m = Student(8, 7).eval()
    x = torch.randn(3, 64, 94) * 10 - 40
    sup, heads = m(x)
    assert list(heads) == ["sd", "vd"]  # the paper's two teachers when none are named
    assert sup.shape == (3, 8) and heads["sd"].shape == (3, 8) and heads["vd"].shape == (3, 7)
    assert torch.equal(m.classify(x), sup)
    assert torch.equal(Classifier(m)(x), sup)
    # [B, 1, 64, 94] is accepted too
    assert torch.equal(m.classify(x[:, None]), sup)
    assert m.embed(x).shape == (3, 64)


def test_named_teachers_grow_one_head_each():
    m = Student(6, heads={"speech2": 6, "face": 7, "text": 4})
    assert [n for n, _ in m.named_children() if n.startswith("g_")] == ["g_sup", "g_speech2", "g_face", "g_text"]
    sup, heads = m.eval()(torch.randn(2, 64, 94))
    assert {n: h.shape[1] for n, h in heads.items()} == {"speech2": 6, "face": 7, "text": 4}
    # the paper's default is the same module, weight for weight, as naming sd and vd explicitly
    torch.manual_seed(1)
    a = Student(8, 7)
    torch.manual_seed(1)
    b = Student(8, heads={"sd": 8, "vd": 7})
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_batch_items_are_independent_in_eval_mode():
    torch.manual_seed(0)
    m = Student(8, 7).eval()
    x = torch.randn(3, 64, 94)
    torch.testing.assert_close(m.classify(x[1:2]), m.classify(x)[1:2], atol=1e-5, rtol=1e-5)


def test_normalisation_buffers_are_state_but_not_parameters():
    m = Student(8, 7)
    names = {n for n, _ in m.named_parameters()}
    assert "feat_mean" not in names and "feat_std" not in names
    sd = m.state_dict()
    assert sd["feat_mean"].shape == (64,) and sd["feat_std"].shape == (64,)
    mean, std = torch.linspace(-50, -20, 64), torch.full((64,), 7.0)
    std[0] = 0.0  # clamped, never a division by zero
    m.set_normalisation(mean, std)
    assert torch.equal(m.state_dict()["feat_mean"], mean)
    assert m.feat_std[0] == 1e-3 and m.feat_std[1] == 7.0
    m2 = Student(8, 7)
    m2.load_state_dict(m.state_dict())
    assert torch.equal(m2.feat_mean, mean)


def test_normalisation_is_applied_to_the_input():
    torch.manual_seed(0)
    m = Student(8, 7).eval()
    x = torch.randn(2, 64, 94)
    before = m.classify(x)
    mean, std = torch.full((64,), 3.0), torch.full((64,), 2.0)
    m.set_normalisation(mean, std)
    # standardising with (3, 2) is the same as feeding (x - 3) / 2 to the unnormalised model
    ref = Student(8, 7).eval()
    ref.load_state_dict({**m.state_dict(), "feat_mean": torch.zeros(64), "feat_std": torch.ones(64)})
    torch.testing.assert_close(m.classify(x * 2 + 3), ref.classify(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ref.classify(x), before, atol=1e-5, rtol=1e-5)


def _conv_flops_by_hooks() -> int:
    """2 x MACs of every conv, from the actual output shapes of a forward pass."""
    m = Student(8, 7).eval()
    total = 0

    def hook(mod, inp, out):
        nonlocal total
        kf, kt = mod.kernel_size
        total += 2 * out.numel() * mod.in_channels * kf * kt

    for mod in m.modules():
        if isinstance(mod, nn.Conv2d):
            mod.register_forward_hook(hook)
    with torch.no_grad():
        m(torch.zeros(1, 64, 94))
    return total


def test_flops_per_sample_by_hand():
    # conv layers on (Mel, time): 64x94, then 32x47 after pool (2,2), then 8x23 after pool (4,2)
    conv = 2 * (1 * 64 * 3 * 3 * 64 * 94) + 2 * (64 * 64 * 3 * 3 * 32 * 47) + 2 * (64 * 64 * 3 * 1 * 8 * 23)
    assert conv == _conv_flops_by_hooks()
    lstm = 2 * 4 * 64 * (128 + 64) * 23  # 2 Mel bins x 64 channels in, 23 frames after the pools
    heads = 2 * (64 * 8 + 64 * 32 + 32 * 8 + 64 * 32 + 32 * 7)
    assert flops_per_sample(8, 7) == conv + lstm + heads
    assert abs(flops_per_sample(8, 7) - 124.6e6) / 124.6e6 < 0.001


def test_pooling_gives_23_lstm_steps_of_128_features():
    m = Student(8, 7).eval()
    with torch.no_grad():
        h = m.conv(torch.zeros(1, 1, 64, 94))
    assert h.shape == (1, 64, 2, 23)
    assert m.lstm.input_size == 128 and m.lstm.hidden_size == 64


def test_phone_band_student_reads_only_the_phone_band():
    """input_band phone: what a telephone line removes (bands outside 300-3400 Hz) cannot change the output, and
    level_norm still removes the level (the level of the bands it reads); full-band students are unchanged."""
    from liser.student.model import band_mask

    keep = torch.from_numpy(band_mask((300.0, 3400.0))) > 0
    assert 30 < int(keep.sum()) < 50 and not keep[:4].any() and not keep[-8:].any()
    torch.manual_seed(0)
    m = Student(6, level_norm=True, band_hz=(300.0, 3400.0)).eval()
    x = torch.randn(4, 64, 94) * 10 - 40
    y = x.clone()
    y[:, ~keep] = torch.randn(4, int((~keep).sum()), 94) * 30 - 90  # what a phone line does above and below
    z = x.clone()
    z[:, keep] += 12.0  # the level of what it reads
    with torch.inference_mode():
        ref = m.classify(x)
        torch.testing.assert_close(m.classify(y), ref, atol=1e-5, rtol=0)
        torch.testing.assert_close(m.classify(z), ref, atol=1e-4, rtol=0)
        full = Student(6, level_norm=True).eval()
        full.load_state_dict({k: v for k, v in m.state_dict().items() if k != "band_keep"}, strict=False)
        assert not torch.allclose(full.classify(y), full.classify(x))  # a full-band student does see them
    # a checkpoint written before the option loads as a full-band student
    state = {k: v for k, v in full.state_dict().items() if k != "band_keep"}
    again = Student(6, level_norm=True)
    again.load_state_dict(state)
    assert bool(again.band_keep.all())


def test_phone_band_student_exports_with_its_band(tmp_path):
    import numpy as np
    import onnxruntime as ort

    from liser.inference.export import _torch_export

    torch.manual_seed(0)
    m = Student(6, level_norm=True, band_hz=(300.0, 3400.0)).eval()
    x = torch.randn(3, 64, 94) * 10 - 40
    _torch_export(Classifier(m).eval(), tmp_path / "s.onnx", 17)  # what `liser export` runs
    sess = ort.InferenceSession(str(tmp_path / "s.onnx"), providers=["CPUExecutionProvider"])
    x2 = x.clone()
    x2[:, :4] -= 50.0  # below the band: the graph ignores it as the torch student does
    with torch.inference_mode():
        ref = m.classify(x).numpy()
    for inp in (x, x2):
        np.testing.assert_allclose(sess.run(None, {"logmel": inp.numpy()})[0], ref, atol=1e-4)


def test_range_student_ignores_what_lies_below_its_dynamic_range():
    """input_range_db R: cells more than R dB below a window's loudest cell cannot change the output, the
    output still depends on what lies inside the range, and a checkpoint from before the option loads with it
    off (0: no clamp)."""
    torch.manual_seed(0)
    m = Student(6, level_norm=True, range_db=35.0).eval()
    x = torch.randn(4, 64, 94) * 10 - 40
    x[:, 0, 0] = 0.0  # the loudest cell: the floor is at -35 dB
    quiet = x < -35.0
    y = x.clone()
    y[quiet] = -35.0 - torch.rand(int(quiet.sum())) * 60  # a hiss or a codec's dropped detail below the range
    z = x.clone()
    z[~quiet] -= torch.rand(int((~quiet).sum())) * 3  # what the range keeps
    z[:, 0, 0] = 0.0
    with torch.inference_mode():
        ref = m.classify(x)
        torch.testing.assert_close(m.classify(y), ref, atol=1e-5, rtol=0)
        assert not torch.allclose(m.classify(z), ref, atol=1e-3)
        plain = Student(6, level_norm=True).eval()
        plain.load_state_dict({k: v for k, v in m.state_dict().items() if k != "range_db"})
        assert float(plain.range_db) == 0.0 and not torch.allclose(plain.classify(y), plain.classify(x))


def test_range_student_holds_a_real_clip_under_a_noise_floor_and_exports_with_it(tmp_path):
    """On a real RAVDESS clip, a -60 dBFS white noise floor moves few of the cells a 35 dB range student
    reads by more than 1 dB (against most of the quiet cells without the range), and the ONNX graph
    clamps as the torch student does."""
    import numpy as np
    import onnxruntime as ort

    from liser.data import audio, frontend
    from liser.inference.export import _torch_export
    from tests.conftest import real_root

    clip = audio.load_audio(real_root("ravdess") / "Actor_01" / "03-01-05-01-01-01-01.flac")[: audio.CLIP_SAMPLES]
    hiss = np.random.default_rng(0).standard_normal(len(clip)).astype(np.float32) * 10 ** (-60 / 20)
    a, b = (torch.from_numpy(frontend.features(s).T[None].astype(np.float32)) for s in (clip, clip + hiss))
    from liser.student.model import range_floor

    moved_plain = float(((a - b).abs() > 1.0).float().mean())
    moved_range = float(((range_floor(a, 35.0) - range_floor(b, 35.0)).abs() > 1.0).float().mean())
    assert moved_range < 0.1 and moved_plain > 3 * moved_range, (moved_plain, moved_range)

    torch.manual_seed(0)
    m = Student(6, level_norm=True, range_db=35.0).eval()
    _torch_export(Classifier(m).eval(), tmp_path / "s.onnx", 17)
    sess = ort.InferenceSession(str(tmp_path / "s.onnx"), providers=["CPUExecutionProvider"])
    with torch.inference_mode():
        for inp in (a, b):
            np.testing.assert_allclose(sess.run(None, {"logmel": inp.numpy()})[0], m.classify(inp).numpy(), atol=1e-4)
        torch.testing.assert_close(m.classify(b), m.classify(a), atol=0.05, rtol=0)


def test_level_band_student_takes_the_level_of_the_phone_band_only(tmp_path):
    """level_band phone: a channel that moves only the bands outside 300-3400 Hz (a phone line's cut) leaves the
    level subtracted from every band unchanged, so the bands it keeps read as before; with the full band's level
    they all move. The level of the phone band itself is still removed; the ONNX graph does the same; a
    checkpoint from before the option loads with the full band's level."""
    import numpy as np
    import onnxruntime as ort

    from liser.inference.export import _torch_export
    from liser.student.model import band_mask

    keep = torch.from_numpy(band_mask((300.0, 3400.0))) > 0
    torch.manual_seed(0)
    m = Student(6, level_norm=True, level_hz=(300.0, 3400.0)).eval()
    inputs = []
    m.conv_blocks = lambda h, conv=m.conv_blocks: inputs.append(h[:, 0].clone()) or conv(h)  # what the convs read
    x = torch.randn(4, 64, 94) * 10 - 40
    cut = x.clone()
    cut[:, ~keep] -= 40.0  # the phone line's cut outside its band
    louder = x + 6.0
    with torch.inference_mode():
        for v in (x, cut, louder):
            m.classify(v)
    torch.testing.assert_close(inputs[1][:, keep], inputs[0][:, keep], atol=1e-4, rtol=0)
    torch.testing.assert_close(inputs[2], inputs[0], atol=1e-4, rtol=0)
    full = Student(6, level_norm=True).eval()
    full.load_state_dict({k: v for k, v in m.state_dict().items() if k != "level_keep"})
    assert bool(full.level_keep.all())
    seen = []
    full.conv_blocks = lambda h, conv=full.conv_blocks: seen.append(h[:, 0].clone()) or conv(h)
    with torch.inference_mode():
        full.classify(x), full.classify(cut)
    assert (seen[1][:, keep] - seen[0][:, keep]).abs().min() > 0.1  # the full band's level moved every band

    del m.conv_blocks  # the class's own method again, for the export
    _torch_export(Classifier(m).eval(), tmp_path / "s.onnx", 17)
    sess = ort.InferenceSession(str(tmp_path / "s.onnx"), providers=["CPUExecutionProvider"])
    with torch.inference_mode():
        for v in (x, cut):
            np.testing.assert_allclose(sess.run(None, {"logmel": v.numpy()})[0], m.classify(v).numpy(), atol=1e-4)
