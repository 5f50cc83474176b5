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


def student_checkpoint(model, classes, teacher_classes: dict, cfg, epoch: int, val: dict) -> dict:
    """A self-describing student (best.pt): plain types and tensors only (loads with weights_only=True).

    `teacher_classes`: {teacher name: the classes of its head g_<name>}, in head order.
    """
    from liser import __version__

    video = next((c for n, c in teacher_classes.items() if n == "vd"), [])
    return {
        "format": FORMAT,
        "liser_version": __version__,
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "classes": list(classes),
        "teacher_classes": {n: list(c) for n, c in teacher_classes.items()},
        "video_classes": list(video),  # the paper's vd head's, for readers of the two-teacher format
        "front_end": {**frontend.SETTINGS, "windowing": cfg.windowing},
        "config": cfg.to_dict(),
        "epoch": epoch,
        "val": {"uar": val.get("uar"), "war": val.get("war")},
    }


def save(obj: dict, path: str | Path) -> None:
    """A checkpoint (best.pt) or a resume state (last.pt) written atomically (liser.core.atomic)."""
    from liser.core.atomic import atomic_save

    atomic_save(obj, path)


def load(path: str | Path) -> dict:
    """A file `save` wrote, on the CPU, with weights_only=True (no pickled code runs); not checked (read_checkpoint)."""
    import torch

    return torch.load(path, weights_only=True, map_location="cpu")


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


def head_sizes(state_dict: dict) -> dict[str, int]:
    """{teacher name: classes} of a student's distillation heads, in order, read from its weights (g_<name>.2.weight)."""
    return {k[2 : -len(".2.weight")]: int(v.shape[0]) for k, v in state_dict.items()
            if k.startswith("g_") and k.endswith(".2.weight")}


def student_from_checkpoint(ck: dict, source: str):
    """A Student in eval mode with the checkpoint's weights (LiserError if they do not fit)."""
    from liser.student.model import Student

    classes = list(ck["classes"])
    model = Student(len(classes), heads=head_sizes(ck["state_dict"]))
    try:
        model.load_state_dict(ck["state_dict"])
    except (RuntimeError, KeyError) as e:
        raise LiserError(f"{source}: weights do not fit the student ({str(e).splitlines()[0][:160]})") from None
    return model.eval()
