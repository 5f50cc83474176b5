"""liser: tiny speech-emotion students distilled from speech and face teachers (LiSER)."""

__version__ = "0.1.0"


def load(path=None, **kwargs):
    """Load a trained student for inference: a run directory, its best.pt, or an exported .onnx;
    no path = the default model that ships with the package (liser.default_model).

    Keyword arguments go to `liser.predict.load` (e.g. `threads=1`).
    """
    from .predict import load as _load

    return _load(path, **kwargs)
