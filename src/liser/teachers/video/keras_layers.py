"""Keras layers as torch modules: what liser.teachers.video.teacher.load_keras_h5 builds a FER model from.

One small nn.Module per Keras layer type (Conv2D, SeparableConv2D,
BatchNormalization, pooling, Dense, weightless functions) and the graph
that runs them in a functional model's order, NCHW inside, with
TensorFlow's asymmetric 'same' padding. The weights are the h5 file's,
frozen. This module imports torch at its top: it is imported only when a
Keras teacher is built, so `import liser` stays fast.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from liser.core.errors import LiserError


def tf_same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TensorFlow 'same' padding of one axis: (before, after); the extra pixel, if any, goes after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def pad_same(x, kernel, stride, dilation=(1, 1), value=0.0):
    """TF 'same' padding split in two: the extra bottom/right row or column is padded here, and the
    symmetric part (top, left) is returned for the conv / pool op's own `padding` argument."""
    top, bottom = tf_same_padding(x.shape[2], kernel[0], stride[0], dilation[0])
    left, right = tf_same_padding(x.shape[3], kernel[1], stride[1], dilation[1])
    if bottom != top or right != left:
        x = F.pad(x, (0, right - left, 0, bottom - top), value=value)
    return x, (top, left)


def activation(name: str, where: str):
    """The torch function of a Keras activation name; LiserError for one not supported."""
    if name in ("linear", None):
        return lambda x: x
    if name == "relu":
        return torch.relu
    if name == "sigmoid":
        return torch.sigmoid
    if name == "tanh":
        return torch.tanh
    if name == "softmax":
        return lambda x: torch.softmax(x, dim=1)  # channels: dim 1 in NCHW, and of [N, K]
    raise LiserError(f"{where}: activation {name!r} not supported")


class KConvBase(nn.Module):
    """What Conv2D and SeparableConv2D share: strides, TF 'same' padding, bias, activation, BN folding."""

    def _geometry(self, cfg, kernel_hw):
        self.stride = tuple(cfg.get("strides", (1, 1)))
        self.dilation = tuple(cfg.get("dilation_rate", (1, 1)))
        self.same = cfg.get("padding", "valid") == "same"
        self.kernel = tuple(kernel_hw)

    def _output(self, cfg, bias, where):
        self.bias = None if bias is None else nn.Parameter(torch.from_numpy(bias), requires_grad=False)
        self.act = activation(cfg.get("activation", "linear"), where)
        self.linear = cfg.get("activation", "linear") in ("linear", None)

    def _pad(self, x):
        return pad_same(x, self.kernel, self.stride, self.dilation) if self.same else (x, (0, 0))

    def _fold_bias(self, scale, shift):
        bias = shift if self.bias is None else self.bias.data * scale + shift
        self.bias = nn.Parameter(bias.clone(), requires_grad=False)

class KConv(KConvBase):
    """Conv2D (and the pointwise part of SeparableConv2D); 'same' padded exactly as TF does."""

    def __init__(self, cfg, kernel, bias, where):
        super().__init__()
        w = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))  # HWIO -> OIHW
        self._geometry(cfg, w.shape[2:])
        self.weight = nn.Parameter(w, requires_grad=False)
        self._output(cfg, bias, where)

    def fold(self, scale, shift):
        """Absorb a following inference BatchNormalization (per output channel scale, shift)."""
        self.weight.data = self.weight.data * scale.view(-1, 1, 1, 1)
        self._fold_bias(scale, shift)

    def forward(self, x):
        x, pad = self._pad(x)
        return self.act(F.conv2d(x, self.weight, self.bias, self.stride, pad, self.dilation))

class KSeparable(KConvBase):
    """SeparableConv2D: depthwise (H, W, in, mult) with stride and padding, then pointwise 1x1, bias, activation."""

    def __init__(self, cfg, depthwise, pointwise, bias, where):
        super().__init__()
        kh, kw, cin, mult = depthwise.shape
        self.groups = cin
        self._geometry(cfg, (kh, kw))
        # output channel c*mult + m of the depthwise step is input channel c times depthwise[:, :, c, m]
        dw = depthwise.transpose(2, 3, 0, 1).reshape(cin * mult, 1, kh, kw)
        self.depthwise = nn.Parameter(torch.from_numpy(np.ascontiguousarray(dw)), requires_grad=False)
        pw = pointwise.transpose(3, 2, 0, 1)  # (1, 1, in*mult, out) -> (out, in*mult, 1, 1)
        self.pointwise = nn.Parameter(torch.from_numpy(np.ascontiguousarray(pw)), requires_grad=False)
        self._output(cfg, bias, where)

    def fold(self, scale, shift):
        """Absorb a following inference BatchNormalization into the pointwise kernel and bias."""
        self.pointwise.data = self.pointwise.data * scale.view(-1, 1, 1, 1)
        self._fold_bias(scale, shift)

    def forward(self, x):
        x, pad = self._pad(x)
        x = F.conv2d(x, self.depthwise, None, self.stride, pad, self.dilation, self.groups)
        return self.act(F.conv2d(x, self.pointwise, self.bias))

class KBatchNorm(nn.Module):
    """Inference BatchNormalization on the channel axis: gamma * (x - mean) / sqrt(var + eps) + beta."""

    def __init__(self, cfg, gamma, beta, mean, var):
        super().__init__()
        eps = float(cfg.get("epsilon", 1e-3))
        scale = (gamma if gamma is not None else np.ones_like(var)) / np.sqrt(var.astype(np.float64) + eps)
        shift = (beta if beta is not None else np.zeros_like(mean)) - mean * scale
        self.register_buffer("scale", torch.from_numpy(scale.astype(np.float32)))
        self.register_buffer("shift", torch.from_numpy(shift.astype(np.float32)))

    def forward(self, x):
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return x * self.scale.view(shape) + self.shift.view(shape)

class KMaxPool(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.pool = tuple(cfg.get("pool_size", (2, 2)))
        self.stride = tuple(cfg.get("strides") or self.pool)
        self.same = cfg.get("padding", "valid") == "same"

    def forward(self, x):
        pad = (0, 0)
        if self.same:  # padded cells never win the max, as in TF
            x, pad = pad_same(x, self.pool, self.stride, value=float("-inf"))
        return F.max_pool2d(x, self.pool, self.stride, pad)

class KAvgPool(nn.Module):
    def __init__(self, cfg, where):
        super().__init__()
        self.pool = tuple(cfg.get("pool_size", (2, 2)))
        self.stride = tuple(cfg.get("strides") or self.pool)
        if cfg.get("padding", "valid") != "valid":
            raise LiserError(f"{where}: AveragePooling2D with padding 'same' not supported")

    def forward(self, x):
        return F.avg_pool2d(x, self.pool, self.stride)

class KDense(nn.Module):
    def __init__(self, cfg, kernel, bias, where):
        super().__init__()
        self.weight = nn.Parameter(torch.from_numpy(np.ascontiguousarray(kernel.T)), requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(torch.from_numpy(bias), requires_grad=False)
        self.act = activation(cfg.get("activation", "linear"), where)

    def forward(self, x):
        return self.act(F.linear(x, self.weight, self.bias))

class KFn(nn.Module):
    """A weightless layer (Activation, Add, pooling over space, Flatten, Dropout, Input)."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *xs):
        return self.fn(*xs)

class KerasGraph(nn.Module):
    """Runs the layers of a Keras functional model in config order, NCHW inside."""

    def __init__(self, layers: dict, order: list, inputs: list, outputs: list):
        super().__init__()
        self.layers = nn.ModuleDict(layers)
        self.order = order  # [(name, [inbound names])]
        self.inputs = inputs
        self.outputs = outputs

    def forward(self, x):
        values = {self.inputs[0]: x}
        for name, inbound in self.order:
            values[name] = self.layers[name](*[values[i] for i in inbound])
        return values[self.outputs[0]]

def flatten(x):  # Keras flattens channels-last (H, W, C)
    if x.dim() == 4:
        x = x.permute(0, 2, 3, 1)
    return x.reshape(x.shape[0], -1)
