"""Which optional extra of the package a command needs, and the one line that says so when it is missing.

`pip install liser` installs inference only (`liser predict`, `liser.load`:
numpy, onnxruntime, soundfile, soxr, PyAV, scipy; pyproject.toml says why
each). Training and its data steps need the extra `train` (torch and the
teachers' libraries), `liser serve` the extra `serve`, `--ray` the extra
`ray`. The `liser` command checks a command's extra before running it
(liser.cli._run: `require`), and turns an ImportError of a module an extra
provides, raised later (a torch checkpoint given to `liser predict`), into
the same line (`for_import_error`): one line naming the extra, exit 2,
never a traceback. The names below are the modules' import names; each
extra's packages are in pyproject.toml, whose optional-dependencies this
mirrors (tests/test_extras.py checks the two agree).
"""

from __future__ import annotations

import importlib.util
import sys

from liser.core.errors import LiserError

# extra -> the top-level modules it installs (import names: yaml is pyyaml, sklearn scikit-learn, cv2 OpenCV)
EXTRAS: dict[str, tuple[str, ...]] = {
    "train": ("torch", "yaml", "tqdm", "matplotlib", "sklearn", "cv2", "onnx", "h5py", "transformers", "peft",
              "silero_vad", "safetensors", "pedalboard"),
    "serve": ("fastapi", "uvicorn", "websockets", "python_multipart"),
    "ray": ("ray",),
}
MODULE_EXTRA: dict[str, str] = {m: extra for extra, mods in EXTRAS.items() for m in mods}


class MissingExtra(LiserError):
    """A command needs an extra that is not installed (its message is the one line to print)."""


def message(what: str, extra: str, module: str | None = None) -> str:
    """"liser train needs the 'train' extra: pip install 'liser[train]'", then which module is missing if given.

    `what`: the command as typed ("liser train", "liser cv --ray"). The
    module is said because an extra can be installed and still lack one
    (uninstalled since, or broken): then the install command alone would
    look wrong to the user.
    """
    line = f"{what} needs the '{extra}' extra: pip install 'liser[{extra}]'"
    return f"{line} (no module named {module!r})" if module else line


def missing_module(extra: str) -> str | None:
    """The first module of `extra` that cannot be found, or None: a look-up on the path, nothing is imported.

    A module already in sys.modules counts as present (a test's stand-in),
    unless it is None there (how a test blocks an import).
    """
    for name in EXTRAS[extra]:
        if name in sys.modules:
            if sys.modules[name] is None:
                return name
            continue
        try:
            if importlib.util.find_spec(name) is None:
                return name
        except (ImportError, ValueError):  # a broken parent package, or a module without a spec
            return name
    return None


def require(extra: str, what: str) -> None:
    """Raise MissingExtra (one line: `message`) if any module of `extra` is missing; `what` names the command."""
    module = missing_module(extra)
    if module is not None:
        raise MissingExtra(message(what, extra, module))


def for_import_error(e: ImportError, what: str) -> str | None:
    """The one line for an ImportError of a module an extra provides (`message`), or None for any other module."""
    name = (getattr(e, "name", None) or "").split(".")[0]
    extra = MODULE_EXTRA.get(name)
    return message(what, extra, name) if extra else None
