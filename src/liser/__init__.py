"""liser: tiny speech-emotion students distilled from speech and face teachers (LiSER)."""

__version__ = "0.1.0"


def load(path):
    """Load a trained student (a run directory or a .pt checkpoint) for inference."""
    from .predict import load as _load

    return _load(path)
