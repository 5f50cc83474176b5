"""Where liser writes: which existing folders and files it may replace, and write errors as one line.

The rule, for every output a user names (`-o`, `--out`, `--onnx`, `--json`,
a config's `out:`): liser replaces a folder only when it is a liser output
of the same kind, recognised by the files liser writes there, and then only
its own files; a non-empty folder that is not one is refused with one line
naming it (LiserError, exit 2). A file is replaced only when it is liser's
own output of that kind. An output equal to an input, or a folder holding
one (a corpus root, a manifest), is refused too.

Writing errors (read-only mount, full disk, a parent that is a file) become
one line naming the path and the reason (`writing`); on stdout, `StdoutGuard`
turns them into `StdoutError`, and a closed pipe into `StdoutClosed`, which
the CLI ends quietly.
"""

from __future__ import annotations

import contextlib
import errno
import json
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import Callable

from liser.core.errors import LiserError

# errors of the place written to (or read from), not of liser: said in one line, never as a traceback
PLACE_ERRNOS = frozenset({errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.ENOTDIR,
                          errno.EISDIR, errno.EFBIG, errno.ENAMETOOLONG, errno.ELOOP, errno.EIO, errno.ENOENT,
                          errno.EEXIST, errno.ENOTEMPTY, errno.ENXIO, errno.ENODEV})


# ---------------------------------------------------------------- kinds of output folder
def _json_has(path: Path, *keys: str, max_bytes: int = 64 << 20) -> bool:
    """True when `path` is a JSON object (of at most max_bytes) holding every key."""
    try:
        if not path.is_file() or path.stat().st_size > max_bytes:
            return False
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(d, dict) and all(k in d for k in keys)


def is_manifest_dir(d: Path) -> bool:
    """A folder `Manifest.save` wrote: manifest.csv and a meta.json with the corpus, root and fingerprint."""
    return (d / "manifest.csv").is_file() and _json_has(d / "meta.json", "corpus", "root", "fingerprint")


def is_faces_dir(d: Path) -> bool:
    """A face-track folder `liser faces` finished once: its faces.json (faces.shard-K-of-N.json) summary."""
    return any(_json_has(p, "corpus", "frames", "size") for p in d.glob("faces*.json"))


# what a runs folder holds, a level or two down (a grid's out may sit in another's: runs/quickstart/grid.json)
RUNS_MARKERS = ("grid.json", "*/grid.json", "*/summary.json", "*/*/summary.json", "*/fold*/config.yaml",
                "*/*/fold*/config.yaml", "*/*/*/fold*/config.yaml")


def is_runs_dir(d: Path) -> bool:
    """A folder of student runs (`out:`): a grid.json, a cv summary.json or a run's <name>/fold<k>/config.yaml,
    at its top or a level or two down (RUNS_MARKERS)."""
    return any(any(d.glob(pattern)) for pattern in RUNS_MARKERS)


@dataclass(frozen=True)
class Kind:
    """A kind of output folder: its name in messages, how one is recognised, the files liser writes in it."""

    name: str  # "manifest folder"
    recognise: Callable[[Path], bool]  # True for a folder of this kind (its marker files)
    own: tuple[str, ...] = ()  # glob patterns of the names liser writes there
    resumable: bool = False  # a folder holding only `own` names is one too (an interrupted first run)


MANIFEST = Kind("manifest folder", is_manifest_dir, ("manifest.csv", "rejected.csv", "meta.json", ".manifest-tmp-*"))
FACES = Kind("face-track folder", is_faces_dir, ("*.npz", "rejected*.csv", "faces*.json", ".*.tmp"), resumable=True)
RUNS = Kind("runs folder", is_runs_dir)
def is_run_dir(d: Path) -> bool:
    """One run's folder (liser.student.train): its config.yaml is a liser run config (a mapping with name, fold and
    epochs), which train writes first, so an interrupted run is one too."""
    import yaml

    try:
        cfg = yaml.safe_load((d / "config.yaml").read_text(errors="replace")[: 1 << 20])
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(cfg, dict) and {"name", "fold", "epochs"} <= set(cfg)


# what train writes in a run folder, and nothing else, makes one resumable
RUN = Kind("run folder", is_run_dir, ("epochs.csv", "last.pt", "best.pt", "metrics.json", "confusion.png", ".*tmp*"),
           resumable=True)
# a store writes head.json as it starts (liser.teachers.store.StoreWriter): before that, only parts/ can be there
STORE = Kind("soft-label store", lambda d: (d / "head.json").is_file(), ("parts", ".head.json.*"), resumable=True)


def _listing(entries: list[Path], n: int = 3) -> str:
    names = sorted(p.name for p in entries)
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def check_not_input(out: str | Path, inputs=(), what: str = "output") -> None:
    """LiserError when `out` is one of `inputs` ((path, description) pairs) or a folder holding one."""
    o = Path(out).resolve()
    for inp, desc in inputs:
        i = Path(inp).resolve()
        if o == i:
            raise LiserError(f"{out}: is the {desc} ({inp}), an input; write the {what} elsewhere")
        if o in i.parents:
            raise LiserError(f"{out}: holds the {desc} ({inp}), an input; write the {what} elsewhere")


def check_parent_is_folder(out: Path) -> None:
    """LiserError when the nearest existing folder above `out` is not a folder (a file in the way)."""
    for parent in out.absolute().parents:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                raise LiserError(f"{out}: cannot write: {parent} is a file, not a folder")
            return


def check_out_dir(out: str | Path, kind: Kind, inputs=(), also_own=()) -> Path:
    """`out` as a Path when liser may write a `kind` folder there; LiserError (one line) when not.

    Allowed: a path that does not exist yet, an empty folder, a folder of
    this kind (its marker files), or, for a resumable kind, one holding only
    names liser writes there. Refused: a file, any other non-empty folder,
    an input (`inputs`: (path, description) pairs) or a folder holding one.
    `also_own`: other liser folders that may sit inside `out` (a config's
    `work` cache), not counted as content.
    """
    out = Path(out)
    check_not_input(out, inputs, kind.name)
    check_parent_is_folder(out)
    if out.exists() and not out.is_dir():
        raise LiserError(f"{out}: not a folder (the {kind.name} to write)")
    if not out.is_dir():
        return out
    skip = {Path(p).resolve() for p in also_own if p}
    entries = [p for p in out.iterdir() if p.resolve() not in skip]
    if not entries or kind.recognise(out):
        return out
    if kind.resumable and all(any(fnmatch(p.name, pat) for pat in kind.own) for p in entries):
        return out
    raise LiserError(f"{out}: not empty and not a liser {kind.name} (it holds {_listing(entries)}); liser replaces "
                     "only its own output: choose a new or empty folder")


# ---------------------------------------------------------------- single output files
def is_folds_file(p: Path) -> bool:
    """A fold file `liser folds` wrote (corpus, k, folds)."""
    return _json_has(p, "corpus", "k", "folds")


def is_cross_json(p: Path) -> bool:
    """A cross-corpus result `liser evaluate --on` wrote."""
    return _json_has(p, "run", "test_corpus", "mapping")


def is_liser_onnx(p: Path, marker: bytes = b"liser-student-onnx") -> bool:
    """An ONNX student `liser export` wrote: its metadata's format value is in the file's bytes."""
    try:
        with open(p, "rb") as f:
            tail = b""
            for block in iter(lambda: f.read(1 << 20), b""):
                if marker in tail + block:
                    return True
                tail = block[-len(marker):]
    except OSError:
        return False
    return False


def check_out_file(path: str | Path, what: str, recognise: Callable[[Path], bool], inputs=()) -> Path:
    """`path` as a Path when liser may write its `what` there: absent, or a file `recognise` calls its own.

    LiserError (one line) for a folder, an existing file of anything else,
    or one of `inputs` ((path, description) pairs).
    """
    path = Path(path)
    check_not_input(path, inputs, what)
    check_parent_is_folder(path)
    if path.is_dir():
        raise LiserError(f"{path}: a folder, not a file (the {what} to write)")
    if path.exists() and not recognise(path):
        raise LiserError(f"{path}: exists and is not a liser {what}; liser replaces only its own output: "
                         "choose a new name")
    return path


def check_onnx_outputs(onnx: str | Path, int8: str | bool | None = None) -> None:
    """`liser export`'s files (--onnx, and --int8's, default <stem>.int8.onnx): each absent or a liser ONNX
    student, and not the same file; LiserError (one line) before any work."""
    onnx = check_out_file(onnx, "ONNX student (--onnx)", is_liser_onnx)
    if int8 is None or int8 is False:
        return
    int8 = onnx.with_name(onnx.stem + ".int8.onnx") if int8 in ("", True) else Path(int8)
    if int8.resolve() == onnx.resolve():
        raise LiserError(f"{int8}: --int8 names the --onnx file; give the int8 model another name")
    check_out_file(int8, "ONNX student (--int8)", is_liser_onnx)


# ---------------------------------------------------------------- write errors in one line
class WriteError(LiserError):
    """An output cannot be written (read-only, full, ...): never one input's problem, so loops that set a bad
    input aside and go on (LiserError per item) must let it through."""


def place_error_line(e: OSError, path: str | Path | None = None) -> str:
    """"PATH: REASON" for an OSError of the place (read-only, full, not a folder, ...)."""
    where = path if path is not None else e.filename
    reason = e.strerror or type(e).__name__
    return f"{where}: {reason}" if where is not None else reason


@contextlib.contextmanager
def writing(path: str | Path):
    """Inside the block, an OSError of the place (PLACE_ERRNOS) becomes a WriteError "PATH: cannot write: REASON"."""
    try:
        yield
    except OSError as e:
        if e.errno not in PLACE_ERRNOS or isinstance(e, BrokenPipeError):
            raise
        raise WriteError(f"{path}: cannot write: {e.strerror or type(e).__name__}") from e


# ---------------------------------------------------------------- stdout
class StdoutError(WriteError):
    """stdout cannot be written (full disk, /dev/full, a read-only file): one line, exit 2."""


class StdoutClosed(BrokenPipeError):
    """The reader of stdout went away (`| head -1`): the command stops quietly."""


class StdoutGuard:
    """A stand-in for sys.stdout whose write errors say what happened (StdoutClosed, StdoutError).

    Everything else (isatty, fileno, encoding, ...) is the wrapped stream's.
    """

    def __init__(self, stream):
        self._stream = stream

    def _call(self, fn, *a):
        try:
            return fn(*a)
        except BrokenPipeError as e:
            raise StdoutClosed(*e.args) from None
        except OSError as e:
            raise StdoutError(f"stdout: cannot write: {e.strerror or type(e).__name__}") from None

    def write(self, text):
        return self._call(self._stream.write, text)

    def writelines(self, lines):
        return self._call(self._stream.writelines, lines)

    def flush(self):
        return self._call(self._stream.flush)

    def __getattr__(self, name):
        return getattr(self._stream, name)


# ---------------------------------------------------------------- a config's `out`
def check_runs_out(cfg, also_own=()) -> Path:
    """A config's `out` (where <out>/<name>/fold<k> runs, summary.json, grid.json and report.md go) checked
    like any output folder (RUNS): new, empty or a runs folder (its `work` cache, and `also_own` folders such
    as a grid's ledger, may sit in it), and neither the manifest nor the corpus root nor a folder holding them."""
    roots = [cfg.root] + [spec.split(":", 1)[1] for spec in cfg.labeled if ":" in spec]
    inputs = [(p, "corpus root") for p in roots if p] + ([(cfg.manifest, "manifest")] if cfg.manifest else [])
    return check_out_dir(cfg.out, RUNS, inputs, also_own=(cfg.work, *also_own))
