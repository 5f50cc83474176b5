"""Where torch runs: `device: auto | cpu | cuda | cuda:N` for the student and the speech teacher.

"auto" is CUDA when torch sees a GPU, else the CPU. Results on CUDA equal the
CPU's within floating-point tolerance, not bit for bit (cuDNN's kernels sum
in another order); a run is reproducible on the same device and threads.
"""

from __future__ import annotations

from .errors import LiserError


def resolve_device(name: str = "auto"):
    """A torch.device from "auto", "cpu", "cuda" or "cuda:N".

    Raises LiserError naming the setting when CUDA is asked for and torch
    sees no GPU (or not that many), or when the name is not a device.
    """
    import torch

    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise LiserError(f"device: {name!r} is not auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise LiserError(f"device: {name!r} asked for, but torch sees no CUDA GPU (torch {torch.__version__})")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise LiserError(f"device: {name!r} asked for, but torch sees {torch.cuda.device_count()} GPU(s)")
    elif dev.type != "cpu":
        raise LiserError(f"device: {name!r} is not auto, cpu, cuda or cuda:N")
    return dev


def autocast(device, enabled: bool = True):
    """bf16 autocast on CUDA (for the teachers' encoders); a no-op context on the CPU."""
    import contextlib

    import torch

    if enabled and torch.device(device).type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
