"""Where torch runs: `device: auto | cpu | cuda | cuda:N` for the student and the speech teacher.

"auto" is CUDA when torch sees a GPU, else the CPU. Results on CUDA equal the
CPU's within floating-point tolerance, not bit for bit (cuDNN's kernels sum
in another order); a run is reproducible on the same device and threads.
"""

from __future__ import annotations

from liser.core.errors import LiserError


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


PRECISIONS = ("fp32", "bf16")  # the student's training precision (Config.precision)


def training_autocast(device, precision: str = "fp32"):
    """The context a student's training forward + loss run in, for `precision` on `device`.

    "fp32": no context at all (nullcontext), so the step is the plain float32
    one bit for bit. "bf16": torch.autocast in bfloat16 on the device's type
    (CPU or CUDA): convolutions, the LSTM and linear layers compute in bf16,
    while the parameters, their gradients and the optimiser stay float32 (no
    loss scaling: bf16 has float32's exponent range). Other weights than fp32,
    but the same ones for the same seed, device and threads. The context is
    thread-local and ends with the `with` block: nothing process-wide changes.

    Raises LiserError naming `precision` and the allowed values for another value.
    """
    import contextlib

    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "bf16":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    raise LiserError(f"precision must be {' or '.join(PRECISIONS)}, got {precision!r}")


MALLOC_THRESHOLD = 1 << 30  # bytes: allocations below this come from the heap
TRIM_THRESHOLD = (1 << 31) - 1  # bytes of free heap top kept before glibc returns it (the largest mallopt takes)


def tune_malloc(threshold: int = MALLOC_THRESHOLD, trim: int = TRIM_THRESHOLD) -> bool:
    """Keep the student's large temporaries in glibc's heap instead of fresh mmaps (Linux only).

    Why: one training batch (50 crops) makes conv activations of 50 x 64 x 64 x
    94 float32 = 77 MB each, above glibc's largest dynamic mmap threshold
    (32 MB). Each is then mmapped, page-faulted in and unmapped again on every
    batch: measured on a 2-epoch fold-0 run on one thread, 16.4 s of kernel time
    against 22.6 s of user time. With both thresholds at 1 GB the kernel time
    falls to 4.3 s, an epoch from 11.4 s to 9.4 s, and the results are identical.
    Evaluation's batches of 512 windows free about 1.2 GB at once: with the
    trim threshold at 1 GB glibc returned it and faulted it in again for the
    next batch (1 s of kernel time per batch against 1.5 s of user time on a
    loaded machine); at `TRIM_THRESHOLD` (2 GB) it is kept.

    `threshold`: allocations below it come from the heap; `trim`: free heap
    top kept (clamped to what mallopt's int takes). A process that wants its
    memory bounded passes small values for both (`liser predict`: 1 MB).
    A process-wide setting, so library calls never make it: the `liser`
    command and the grid's worker processes call it at start. Returns True
    when glibc accepted it; False elsewhere (macOS, musl), where nothing changes.
    """
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # malloc.h
        trim = min(int(trim), TRIM_THRESHOLD)
        return bool(libc.mallopt(m_mmap_threshold, int(threshold)) and libc.mallopt(m_trim_threshold, trim))
    except (OSError, AttributeError):
        return False
