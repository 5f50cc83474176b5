"""Small helpers every stage shares: atomic writes, softmax, file-name-safe ids, shards, suffix lists.

Each exists once here so that a fix reaches every caller.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path

import numpy as np

from .errors import LiserError

# what libsndfile (liser.audio.load_audio) reads; video containers are liser.audio.VIDEO_SUFFIXES
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".opus", ".mp3", ".aiff", ".aif", ".au", ".caf", ".w64")


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `text` to `path` through a temporary file in the same folder, renamed when complete.

    A reader never sees a half-written file; an interrupted write leaves no temporary behind.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_save(obj, path: str | Path) -> None:
    """torch.save through a temporary file, renamed when complete."""
    import torch

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax along `axis`, in the input's float dtype (float64 for other input)."""
    z = np.asarray(z)
    if not np.issubdtype(z.dtype, np.floating):
        z = z.astype(np.float64)
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def safe_id(item_id: str) -> str:
    """A file name for a manifest id: '/' -> '__', anything outside [A-Za-z0-9._-] -> '_'.

    Face tracks are written and read under this name (liser.faces, liser.teachers.video).
    """
    return re.sub(r"[^A-Za-z0-9._-]", "_", item_id.replace("/", "__")).lstrip(".") or "_"


def check_shard(shard) -> tuple[int, int]:
    """(i, n) as ints, or LiserError unless 0 <= i < n: shard i of n takes items i, i+n, ..."""
    i, n = int(shard[0]), int(shard[1])
    if n < 1 or not 0 <= i < n:
        raise LiserError(f"shard {i}/{n}: need 0 <= i < n")
    return i, n


def parse_shard(text: str | None) -> tuple[int, int]:
    """`--shard I/N` as (i, n); (0, 1) when not given. LiserError names the bad text."""
    if not text:
        return (0, 1)
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise LiserError(f"--shard {text!r}: expected I/N, e.g. 0/4") from None
    if n < 1 or not 0 <= i < n:
        raise LiserError(f"--shard {text!r}: need 0 <= I < N")
    return (i, n)


def new_figure(figsize: tuple[float, float]):
    """(figure, axes) on an Agg canvas of its own: no pyplot, no global backend switch, no figure registry."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def save_figure(fig, path: str | Path, dpi: int = 110) -> None:
    """Tight layout, then the PNG through a temporary file renamed when complete."""
    path = Path(path)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=dpi)
    os.replace(tmp, path)


@contextlib.contextmanager
def torch_threads(n: int | None):
    """torch's intra-op thread count set to `n` (None or 0: unchanged) inside the block, restored after it."""
    import torch

    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def models_dir() -> Path:
    """The shared models folder: $LISER_MODELS, else ../shared/models beside a source checkout,
    else ../shared/models from the working directory (an installed wheel has no checkout to be beside).

    Holds fer2013-xception/, face-detection/ and whisper-base-encoder/ (see the README).
    """
    env = os.environ.get("LISER_MODELS")
    if env:
        return Path(env)
    beside_checkout = Path(__file__).resolve().parents[3] / "shared" / "models"  # src/liser/util.py -> repo/..
    if beside_checkout.is_dir():
        return beside_checkout
    return Path.cwd().parent / "shared" / "models"
