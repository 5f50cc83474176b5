"""The student: the CNN-LSTM of SPEC Table 1 (about 105K parameters).

Input: log-Mel [B, 64, 94] (dB) of a 3 s window. Three conv blocks (64
filters, BatchNorm, ReLU, max-pool (2,2), (4,2), (4,1) on (Mel, time)) turn
64 Mel bins into 2, the LSTM (hidden 64) reads 64 channels x 2 bins = 128
features per frame for 23 frames, and its last hidden state feeds `g_sup`
(K_S, the only head used at inference) and one distillation head per named
teacher (`heads`): the paper's `g_sd` (32, K_S: speech distillation) and
`g_vd` (32, K_V: video distillation) unless a config names others.

The input is standardised per Mel band by fixed buffers (`feat_mean`,
`feat_std`) set from the training features: not parameters, so the count
stays the paper's, but they travel with the weights and the ONNX graph.

With `level_norm` (the `liser` recipe; off in the paper's) each window's mean
log-Mel level is subtracted first. Scaling a waveform by g adds 20 log10 g dB
to every cell above the log floor, so the label no longer depends on the
recording level. The flag is a buffer too: checkpoints and the ONNX graph
carry it, and checkpoints written before it existed load with it off.
`input_range_db` R (an option, measured in configs/grid-default-model-range.yaml)
first raises every cell to at least the window's loudest cell minus R dB, so
a hiss, room tone or a codec's dropped detail further below the speech cannot
change a label (Whisper clamps its log-Mel to 80 dB below the maximum).
`channel_norm` (an option, measured in configs/grid-ravdess-field.yaml)
subtracts each window's mean per Mel band instead (cepstral mean
normalisation in the log-Mel domain): a fixed microphone or channel
colouring is a constant per band, so it goes too, and so does the level.
`level_band` (an option, measured in configs/grid-default-model-level-band.yaml)
takes the level `level_norm` subtracts over the Mel bands inside a pass band
only (the phone band): a channel that removes what lies outside it (a
telephone line cuts the bands above 4 kHz by about 90 dB and the ones under
300 Hz by 3-16 dB) then leaves the level of every band inside it unchanged.

Two changes to the way through the conv blocks give the same numbers bit
for bit as the plain `conv -> BN -> ReLU -> pool` Sequential, for less memory
traffic on the CPU (tests/test_train_speed.py checks both on real crops):

- each block runs conv -> BN -> pool -> ReLU: max-pooling and ReLU commute
  (both monotone: the max picks the same element, and their gradients reach
  the same elements with the same values), and the ReLU and its backward
  then touch a quarter (block 1) or an eighth (block 2) of the elements;
- evaluation without autograd runs each conv on the whole batch, as given,
  and BN, pool and ReLU on `EVAL_CHUNK` windows at a time: those three work
  per window, while oneDNN's convolutions round differently for another
  batch size (measured: a window's logits differ in the last bit between
  batches of 512 and 59), so the batch a caller chose still decides the
  result. A 512-window batch then holds one 800 MB activation instead of
  two, which glibc no longer hands back and faults in again per batch.
The exported ONNX graph keeps the plain order (`torch.jit.is_tracing`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from liser.data.audio import CLIP_FRAMES, N_MELS, band_mask  # band_mask: the input_band / level_band masks

EVAL_CHUNK = 32  # windows per BN / pool / ReLU call in evaluation: 48 MB of block-1 activations, not 770 MB
TIME_POOL = 4  # log-Mel frames per LSTM step: the conv blocks pool time by 2, 2 and 1


def _block(c_in: int, c_out: int, kernel: tuple[int, int], pool: tuple[int, int]) -> nn.Sequential:
    pad = (kernel[0] // 2, kernel[1] // 2)
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, padding=pad),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(pool),
    )


def range_floor(x: torch.Tensor, range_db: float | torch.Tensor) -> torch.Tensor:
    """[B, n_mels, T] log-Mel (dB) with every cell raised to at least its window's loudest cell minus range_db dB
    (`input_range_db`; Whisper clamps its log-Mel 80 dB below the maximum the same way)."""
    return torch.maximum(x, x.amax(dim=(1, 2), keepdim=True) - range_db)


class Student(nn.Module):
    def __init__(self, n_classes: int, n_video_classes: int = 7, channels: int = 64, hidden: int = 64,
                 n_mels: int = N_MELS, level_norm: bool = False, channel_norm: bool = False,
                 heads: dict[str, int] | None = None, band_hz: tuple[float, float] | None = None,
                 range_db: float = 0.0, level_hz: tuple[float, float] | None = None):
        """`heads`: one distillation head per named teacher, {name: its classes}, in order (g_<name>, each
        Linear(hidden, 32), ReLU, Linear(32, K)); None = the paper's two, {"sd": n_classes, "vd": n_video_classes}.
        `band_hz`: (low, high) = the student reads only the Mel bands inside it (`input_band`; None = all).
        `range_db` > 0: each window's cells are raised to at least its loudest cell minus range_db dB
        (`input_range_db`; 0 = off).
        `level_hz`: (low, high) = level_norm's level is the mean of the Mel bands inside it (`level_band`;
        None = of all the bands the student reads)."""
        super().__init__()
        heads = {"sd": n_classes, "vd": n_video_classes} if heads is None else dict(heads)
        self.n_classes, self.heads = n_classes, heads
        self.register_buffer("feat_mean", torch.zeros(n_mels))
        self.register_buffer("feat_std", torch.ones(n_mels))
        self.register_buffer("level_norm", torch.tensor(float(level_norm)))
        self.register_buffer("channel_norm", torch.tensor(float(channel_norm)))
        self.register_buffer("band_keep", torch.from_numpy(band_mask(band_hz, n_mels)))
        self.register_buffer("range_db", torch.tensor(float(range_db)))
        self.register_buffer("level_keep", torch.from_numpy(band_mask(level_hz, n_mels)))
        self.conv = nn.Sequential(
            _block(1, channels, (3, 3), (2, 2)),
            _block(channels, channels, (3, 3), (4, 2)),
            _block(channels, channels, (3, 1), (4, 1)),
        )
        mel_out = n_mels // 2 // 4 // 4
        self.lstm = nn.LSTM(channels * mel_out, hidden, batch_first=True)
        self.g_sup = nn.Linear(hidden, n_classes)
        for name, k in heads.items():  # created in order: the same initial weights for the same heads
            self.add_module(f"g_{name}", nn.Sequential(nn.Linear(hidden, 32), nn.ReLU(inplace=True), nn.Linear(32, k)))

    def set_normalisation(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.feat_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.feat_std.copy_(torch.clamp(torch.as_tensor(std, dtype=torch.float32), min=1e-3))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # checkpoints from before level_norm existed: the flag is off, as they were trained
        state_dict.setdefault(prefix + "level_norm", torch.tensor(0.0))
        state_dict.setdefault(prefix + "channel_norm", torch.tensor(0.0))
        state_dict.setdefault(prefix + "band_keep", torch.ones(self.band_keep.shape))  # before input_band: all bands
        state_dict.setdefault(prefix + "range_db", torch.tensor(0.0))  # before input_range_db: no clamp
        state_dict.setdefault(prefix + "level_keep", torch.ones(self.level_keep.shape))  # before level_band: all
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def embed(self, x: torch.Tensor, keep_steps: bool = False):
        """[B, 64, T] log-Mel -> [B, hidden] (the LSTM's last hidden state); with `keep_steps` also the LSTM's
        output at every step, [B, T // TIME_POOL, hidden] (step s reads frames up to TIME_POOL x (s + 1))."""
        if x.dim() == 4:
            x = x[:, 0]
        banded = not bool(self.band_keep.all())  # a constant when traced, as the flags below
        if float(self.range_db) > 0:  # a dynamic range below the window's loudest cell: quieter cells read as its floor
            x = range_floor(x, self.range_db)
        if bool(self.channel_norm):  # per Mel band over the window's frames (CMN); includes the level
            x = x - x.mean(dim=2, keepdim=True)
        elif bool(self.level_norm) and not bool(self.level_bands().all()):  # the level of the bands it reads
            keep = self.level_bands()[:, None]  # (input_band), or of a pass band (level_band), not of the others
            x = x - (x * keep).sum(dim=(1, 2), keepdim=True) / (keep.sum() * x.shape[2])
        elif bool(self.level_norm):  # a constant when traced for ONNX: the exported graph keeps the flag's path
            x = x - x.mean(dim=(1, 2), keepdim=True)
        x = (x - self.feat_mean[:, None]) / self.feat_std[:, None]
        if banded:  # the dropped bands read as the training mean: what a phone line removed cannot count
            x = x * self.band_keep[:, None]
        h = self.conv_blocks(x.unsqueeze(1).contiguous(memory_format=torch.channels_last))
        b, c, f, t = h.shape
        h = h.permute(0, 3, 1, 2).reshape(b, t, c * f)
        out, (h_n, _) = self.lstm(h)
        if keep_steps:
            return h_n[-1], out
        return h_n[-1]

    def level_bands(self) -> torch.Tensor:
        """float32 [n_mels]: 1 for the bands level_norm's level is taken over (read by the student, inside level_band)."""
        return self.band_keep * self.level_keep

    def conv_blocks(self, h: torch.Tensor) -> torch.Tensor:
        """[B, 1, 64, T] -> [B, 64, 2, T / 4]: `self.conv`, in the order that is cheapest here (module docstring)."""
        if torch.jit.is_tracing() or torch.compiler.is_compiling():
            return self.conv(h)  # the exported graph: the paper's order
        # BN in training needs the whole batch's statistics; autograd gains nothing from chunks
        chunk = EVAL_CHUNK if not (self.training or torch.is_grad_enabled()) else len(h)
        for conv, bn, relu, pool in self.conv:
            y = conv(h)
            if len(y) <= chunk:
                h = relu(pool(bn(y)))
            else:
                h = torch.cat([relu(pool(bn(y[a : a + chunk]))) for a in range(0, len(y), chunk)])
            del y  # before the next conv allocates its output
        return h

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Logits of every head: (g_sup [B, K], {teacher name: g_<name> [B, K_teacher]})."""
        z = self.embed(x)
        return self.g_sup(z), {name: getattr(self, f"g_{name}")(z) for name in self.heads}

    def forward_steps(self, x: torch.Tensor, names) -> tuple[torch.Tensor, dict, dict]:
        """As `forward`, plus the heads `names` on every LSTM step: {name: [B, T // TIME_POOL, K_name]} logits.
        A head's last step is its window output (the LSTM's last output is its last hidden state)."""
        z, steps = self.embed(x, keep_steps=True)
        heads = {name: getattr(self, f"g_{name}")(z) for name in self.heads}
        return self.g_sup(z), heads, {name: getattr(self, f"g_{name}")(steps) for name in names}

    def step_probs(self, x: torch.Tensor, name: str = "sd") -> torch.Tensor:
        """Head g_<name>'s probabilities at every LSTM step: [B, 64, T] log-Mel -> [B, T // TIME_POOL, K].
        What a student trained with `piece_targets` follows inside a window (`step_times` gives each step's time)."""
        _, steps = self.embed(x, keep_steps=True)
        return torch.softmax(getattr(self, f"g_{name}")(steps), dim=-1)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """Supervised logits only: what inference and export use."""
        return self.g_sup(self.embed(x))


class Classifier(nn.Module):
    """The inference graph: log-Mel windows [B, 64, 94] -> g_sup logits [B, K] (exported to ONNX)."""

    def __init__(self, student: Student):
        super().__init__()
        self.student = student

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.student.classify(x)


def step_times(n_steps: int) -> np.ndarray:
    """Seconds from a window's first frame to the centre of the frames each LSTM step reads last: [n_steps].

    Step s pools frames TIME_POOL x s ... TIME_POOL x (s + 1) - 1 (one hop, liser.data.audio.HOP_S, apart);
    its output has heard everything before them too (the LSTM runs forward).
    """
    from liser.data.audio import HOP_S

    return (TIME_POOL * np.arange(n_steps) + (TIME_POOL - 1) / 2) * HOP_S


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def flops_per_sample(n_classes: int = 8, n_video_classes: int = 7) -> int:
    """Multiply-adds x 2 of one forward pass on a 3 s window (conv, LSTM, heads)."""
    f, t, flops, c_in = N_MELS, CLIP_FRAMES, 0, 1
    for (kf, kt), (pf, pt) in (((3, 3), (2, 2)), ((3, 3), (4, 2)), ((3, 1), (4, 1))):
        flops += 2 * c_in * 64 * kf * kt * f * t
        f, t, c_in = f // pf, t // pt, 64
    flops += 2 * 4 * 64 * (64 * f + 64) * t  # LSTM gates over t steps
    flops += 2 * (64 * n_classes + 64 * 32 + 32 * n_classes + 64 * 32 + 32 * n_video_classes)
    return flops
