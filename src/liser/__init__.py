"""liser: tiny speech-emotion students distilled from speech and face teachers (LiSER)."""

__version__ = "0.1.0"

from liser.core.errors import LiserError  # noqa: E402,F401  (what predict raises for unusable input, e.g. "no speech found")


def load(path=None, **kwargs):
    """Load a trained student for inference: a run directory, its best.pt, or an exported .onnx;
    no path = the default model that ships with the package (liser.inference.default_model).

    Keyword arguments go to `liser.inference.model.load` (e.g. `threads=1`). The model's `predict*` methods raise
    `liser.LiserError` (one line naming the input) for input they cannot score: unreadable, silent, or,
    for a speech-windowing model such as the default one, holding less than 0.5 s of speech.
    """
    from liser.inference.model import load as _load

    return _load(path, **kwargs)
