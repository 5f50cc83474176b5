"""The student checkpoint format, written and read here only.

A run's `best.pt` is a self-describing student: a dict of plain types and
tensors (`format: liser-student`, liser version, state_dict, classes, video
classes, front-end settings, the resolved config, epoch, validation UAR/WAR),
so it loads with `torch.load(weights_only=True)`, never arbitrary pickles.
`last.pt` (the resume state of liser.student.train) is not a student: reading
it as one is refused. ONNX exports carry the same version and front-end
checks (liser.inference.model). torch is imported inside the functions that
need it, so the inference layer can import this module without it.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from liser.core.errors import LiserError
from liser.data import frontend

FORMAT = "liser-student"  # the checkpoint's `format` key


def student_checkpoint(model, classes, video_classes, cfg, epoch: int, val: dict) -> dict:
    """A self-describing student: plain types and tensors only (loads with weights_only=True)."""
    from liser import __version__

    return {
        "format": FORMAT,
        "liser_version": __version__,
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "classes": list(classes),
        "video_classes": list(video_classes),
        "front_end": {**frontend.SETTINGS, "windowing": cfg.windowing},
        "config": cfg.to_dict(),
        "epoch": epoch,
        "val": {"uar": val.get("uar"), "war": val.get("war")},
    }


def check_version(made_by: str, source: str) -> None:
    from liser import __version__

    def major_minor(v: str) -> tuple[str, ...]:
        return tuple(str(v).split(".")[:2])

    if major_minor(made_by) != major_minor(__version__):
        raise LiserError(f"{source}: made by liser {made_by}, this is liser {__version__} "
                         f"(major.minor must match; use liser {'.'.join(major_minor(made_by))}.x or retrain)")


def check_front_end(fe: dict, source: str) -> None:
    for k, v in frontend.SETTINGS.items():
        if k in fe and float(fe[k]) != float(v):
            raise LiserError(f"{source}: front end {k}={fe[k]} differs from this liser's {v}")



def read_checkpoint(path: Path) -> dict:
    """The checkpoint dict (weights_only=True: tensors and plain types only), checked for format and version."""
    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pickle-protocol notes on foreign files
            ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # the weights-only unpickler raises many types (UnpicklingError, IndexError, ...)
        why = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise LiserError(f"{path}: not a liser checkpoint (cannot be read with weights_only=True: {why})") from None
    if not isinstance(ck, dict) or ck.get("format") != FORMAT:
        raise LiserError(f"{path}: not a liser student checkpoint (no format='liser-student'; "
                         "last.pt is a resume state, use best.pt or the run directory)")
    for key in ("liser_version", "state_dict", "classes"):
        if key not in ck:
            raise LiserError(f"{path}: liser checkpoint without {key!r}")
    check_version(ck["liser_version"], str(path))
    check_front_end(ck.get("front_end") or {}, str(path))
    return ck


def student_from_checkpoint(ck: dict, source: str):
    """A Student in eval mode with the checkpoint's weights (LiserError if they do not fit)."""
    from liser.student.model import Student

    classes, video = list(ck["classes"]), list(ck.get("video_classes") or [])
    n_video = len(video) or int(ck["state_dict"]["g_vd.2.weight"].shape[0])
    model = Student(len(classes), n_video)
    try:
        model.load_state_dict(ck["state_dict"])
    except (RuntimeError, KeyError) as e:
        raise LiserError(f"{source}: weights do not fit the student ({str(e).splitlines()[0][:160]})") from None
    return model.eval()
