"""Small helpers every stage shares: atomic writes, softmax, file-name-safe ids, shards, suffix lists.

Each exists once here so that a fix reaches every caller.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

import numpy as np

from liser.core.errors import LiserError

# what libsndfile (liser.data.audio.load_audio) reads; PyAV's containers are liser.data.audio.VIDEO_SUFFIXES, and
# liser.data.audio.INPUT_SUFFIXES is both: what a folder is searched for
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".opus", ".mp3", ".aiff", ".aif", ".au", ".caf", ".w64",
                  ".oga", ".aifc", ".snd", ".rf64")


def absolute_paths(namespace, *names: str) -> None:
    """Make the named path attributes of an argparse namespace absolute, against the current directory.

    For scripts that chdir into the repository (whose configs hold repository-relative paths): an
    output the user named relative to where they ran the script must still land there. None stays None.
    """
    for name in names:
        value = getattr(namespace, name, None)
        if value:
            setattr(namespace, name, str(Path(value).resolve()))


def read_text_guess(path: str | Path) -> tuple[str, str]:
    """The text of a small file (a labels CSV) and the encoding it was read in.

    A byte-order mark decides first (UTF-8, UTF-16 LE/BE, UTF-32 LE/BE);
    without one, UTF-8 is tried, then Windows-1252 (what Excel on Windows
    saves as "CSV"), with a warning naming the file and the encoding, since
    a guess may be wrong. Raises LiserError naming the file, line and byte
    when neither decodes (cp1252 leaves 0x81, 0x8D, 0x8F, 0x90, 0x9D undefined).
    """
    import codecs
    import warnings

    path = Path(path)
    data = path.read_bytes()
    boms = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
            (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))
    for bom, enc in boms:  # UTF-32 LE's BOM starts with UTF-16 LE's: test it first
        if data.startswith(bom):
            try:
                return data.decode(enc), enc
            except UnicodeDecodeError as e:
                raise LiserError(_undecodable(path, data, e, enc)) from None
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError as e:
        utf8_error = e
    try:
        text = data.decode("cp1252")
    except UnicodeDecodeError as e:
        raise LiserError(_undecodable(path, data, e, "utf-8 or cp1252 (Windows-1252)")) from None
    line = data.count(b"\n", 0, utf8_error.start) + 1
    warnings.warn(f"{path}: not UTF-8 (byte 0x{data[utf8_error.start]:02x} on line {line}); "
                  "read as cp1252 (Windows-1252); save it as UTF-8 to be sure", stacklevel=2)
    return text, "cp1252"


def _undecodable(path: Path, data: bytes, e: UnicodeDecodeError, tried: str) -> str:
    line = data.count(b"\n", 0, e.start) + 1
    column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
    return (f"{path}:{line}: byte 0x{data[e.start]:02x} (column {column}, offset {e.start}) is not valid {tried}; "
            "save the file as UTF-8")


def softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax along `axis`, in the input's float dtype (float64 for other input)."""
    z = np.asarray(z)
    if not np.issubdtype(z.dtype, np.floating):
        z = z.astype(np.float64)
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def safe_id(item_id: str) -> str:
    """A file name for a manifest id: '/' -> '__', anything outside [A-Za-z0-9._-] -> '_'.

    Face tracks are written and read under this name (liser.data.faces, liser.teachers.video.teacher).
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
    from liser.core.atomic import atomic_path

    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=dpi)


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
    checkout = Path(__file__).resolve().parents[3]  # src/liser/core/util.py -> the checkout, when this is one
    beside_checkout = checkout.parent / "shared" / "models"
    if (checkout / "pyproject.toml").is_file() and beside_checkout.is_dir():
        return beside_checkout
    return Path.cwd().parent / "shared" / "models"


def model_path(name: str) -> str:
    """Where a model named in a config is (a speech teacher's `backbone`).

    `name` itself when it exists; else a path (starting with /, ./ or ../)
    by its last component in models_dir(), and any other name (e.g.
    whisper-base-encoder) inside models_dir(), when that exists; else `name`
    unchanged: a Hugging Face hub id such as facebook/hubert-base-ls960. So
    `../shared/models/whisper-base-encoder` in a config works from any
    working directory, and from an installed wheel, wherever $LISER_MODELS
    (or the shared models folder) holds whisper-base-encoder/.
    """
    if Path(name).exists():
        return name
    is_path = name.startswith(("/", "./", "../")) or (os.sep != "/" and name.startswith(("." + os.sep, ".." + os.sep)))
    cand = models_dir() / (Path(name).name if is_path else name)
    return str(cand) if cand.exists() else name


def pcm_to_float32(x: np.ndarray) -> np.ndarray:
    """Samples of any PCM sample type as float32, integers scaled to [-1, 1).

    float32/float64/float16: values kept as they are. Signed integers
    (int8/16/32/64) are divided by their full scale (2**(bits-1), so int16
    32767 -> 0.99997); uint8 is centred on 128 (WAV's 8-bit convention):
    (x - 128) / 128. Anything else (bool, object, strings, complex,
    uint16/32/64, which no audio format stores) raises TypeError naming
    the dtype.
    """
    x = np.asarray(x)
    if x.dtype.kind == "f":
        return x.astype(np.float32, copy=False)
    if x.dtype == np.uint8:
        return ((x.astype(np.float32) - 128.0) / 128.0).astype(np.float32)
    if x.dtype.kind == "i":
        return (x.astype(np.float64) / float(2 ** (8 * x.dtype.itemsize - 1))).astype(np.float32)
    raise TypeError(f"samples of dtype {x.dtype} are not audio: pass float (in [-1, 1]), int8/16/32/64 or uint8 PCM")
