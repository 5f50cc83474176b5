"""The default model: the int8 ONNX student that ships inside the package.

`liser predict FILE` and `liser.load()` use it when no model is named. It
was trained on four acted corpora (not TESS) pooled onto six classes
(neutral, happy, sad, angry, fearful, disgust), for recordings from the
field: speech windowing, field views and consistency across them
(docs/field.md), no distillation.
`default/MODEL_CARD.md` says on what, under which licences, how well
it transfers to a corpus it never saw and how it holds up under field
conditions. It was trained by `scripts/train_default_model_field.sh pooled`
(`configs/default-model-field.yaml`).

A second packaged model, `phone`, is the same recipe reading only the
300-3400 Hz Mel bands (`configs/default-model-phone.yaml`), for telephone
recordings that must get the labels the same speech would get in full band:
the telephone band changes about one in five of the default model's labels
and 7.5 % of the phone model's (`default/MODEL_CARD_PHONE.md`). A user names
it as a model: `liser predict phone FILE...`, `liser.load("phone")`.

A user replaces either by naming a model: a run directory, a best.pt or an
exported .onnx (`liser predict MODEL FILE...`, `liser.load(MODEL)`).
"""

from __future__ import annotations

from pathlib import Path

from liser.core.errors import LiserError

DEFAULT_DIR = Path(__file__).parent / "default"
DEFAULT_ONNX = DEFAULT_DIR / "liser-default-int8.onnx"
MODEL_CARD = DEFAULT_DIR / "MODEL_CARD.md"
DEFAULT_PT = DEFAULT_DIR / "liser-default.pt"  # its torch checkpoint (best.pt of the pooled run), where `liser adapt` starts
PHONE_ONNX = DEFAULT_DIR / "liser-phone-int8.onnx"  # the phone-call model (input_band: phone), int8
PHONE_PT = DEFAULT_DIR / "liser-phone.pt"  # its torch checkpoint
PHONE_CARD = DEFAULT_DIR / "MODEL_CARD_PHONE.md"
PACKAGED = {"default": (DEFAULT_ONNX, DEFAULT_PT), "phone": (PHONE_ONNX, PHONE_PT)}  # models named, not pathed


def default_model_path() -> Path:
    """The packaged default model's .onnx path.

    Raises LiserError when it is missing (an installation without the package
    data), naming the path and how to name a model instead.
    """
    if not DEFAULT_ONNX.is_file():
        raise LiserError(f"{DEFAULT_ONNX}: the default model is missing from this installation; "
                         "name a model instead (a run directory, best.pt or .onnx)")
    return DEFAULT_ONNX


def default_checkpoint_path() -> Path:
    """The packaged default model's torch checkpoint (the .onnx was exported from it); LiserError when missing."""
    if not DEFAULT_PT.is_file():
        raise LiserError(f"{DEFAULT_PT}: the default model's weights are missing from this installation; "
                         "name a run folder or best.pt to start from (--model)")
    return DEFAULT_PT


def packaged(name: str | Path, kind: str = "onnx") -> Path | None:
    """The file of a packaged model named `name` ("default" or "phone"; see PACKAGED): its int8 .onnx
    (`kind` "onnx") or torch checkpoint ("pt"). None when `name` is an existing path (a user's own folder
    or file always wins) or not such a name. Raises LiserError when the named model's file is missing
    from this installation."""
    if str(name) not in PACKAGED or Path(name).exists():
        return None
    path = PACKAGED[str(name)][0 if kind == "onnx" else 1]
    if not path.is_file():
        raise LiserError(f"{path}: the packaged model '{name}' is missing from this installation; "
                         "name a model instead (a run directory, best.pt or .onnx)")
    return path


def is_model(path: str | Path) -> bool:
    """True when `path` names a model rather than audio: an .onnx or .pt file, a run directory (best.pt
    or config.yaml in it), or a path that does not exist and has no audio or video suffix (a mistyped
    model is then said as such, instead of being read as a missing audio file)."""
    from liser.data.audio import VIDEO_SUFFIXES
    from liser.core.util import AUDIO_SUFFIXES

    p = Path(path)
    if str(path) == "-":
        return False
    if p.is_dir():
        return (p / "best.pt").is_file() or (p / "config.yaml").is_file()
    if p.suffix.lower() in (".onnx", ".pt"):
        return True
    return not p.exists() and p.suffix.lower() not in set(AUDIO_SUFFIXES) | VIDEO_SUFFIXES


def model_and_inputs(args: list[str]) -> tuple[str, list[str]]:
    """`liser predict`'s positional arguments -> (model path, inputs).

    `[MODEL] INPUT...`: with two or more arguments the first is the model
    when it is one (is_model); otherwise every argument is an input and the
    model is the packaged default. Raises LiserError for a lone argument
    that is an existing or packaged model (no audio after it).
    """
    if len(args) == 1 and is_model(args[0]) and (Path(args[0]).exists() or args[0] in PACKAGED):
        raise LiserError(f"{args[0]}: a model, but no audio to predict was given after it")
    if len(args) > 1 and is_model(args[0]):
        return args[0], list(args[1:])
    return str(default_model_path()), list(args)
