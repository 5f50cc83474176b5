"""The one atomic writer: every file liser writes appears whole or not at all, with the user's umask.

A result is written under a temporary name in its own folder (`temp_beside`)
and renamed onto its name when complete (`commit`), so a reader never sees a
half-written file and an interrupted write leaves at most a dot-named
temporary that the writer removes. Temporaries made by `tempfile` are 0600;
`commit` gives the file the permissions the umask gives any new file
(0666 & ~umask), so a group that may read the user's results may read these.

`atomic_path` is the usual form; writers that must check two files before
either is moved into place (liser.inference.export) call `temp_beside` and
`commit` themselves. Folders that are swapped in whole (a manifest, a
features cache, a store) are made with `tempfile.mkdtemp` and chmod-ed by
`follow_umask(directory=True)`.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def current_umask() -> int:
    """The process's umask, without changing it for longer than a moment.

    Linux reports it in /proc/self/status (no change at all); elsewhere it is
    read the only portable way, os.umask(x) then os.umask(old), which leaves
    it altered for two system calls.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def follow_umask(path: str | Path, directory: bool = False) -> None:
    """chmod a file (0o666) or folder (0o777) made by tempfile to what the user's umask gives a new one."""
    os.chmod(path, (0o777 if directory else 0o666) & ~current_umask())


def temp_beside(path: str | Path, suffix: str = ".tmp") -> Path:
    """An empty, closed temporary file `.<name>.<random><suffix>` in `path`'s folder (same file system).

    `suffix` keeps a writer that goes by the extension (np.savez, onnx) happy. Raises OSError where the
    folder cannot be written (callers inside liser.core.outputs.writing turn it into one line).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    return Path(tmp)


def commit(tmp: str | Path, path: str | Path) -> None:
    """Give the complete temporary `tmp` the umask's permissions and rename it onto `path` (atomic on POSIX)."""
    follow_umask(tmp)
    os.replace(tmp, path)


def temp_folder(parent: str | Path, prefix: str) -> Path:
    """A new empty folder `<prefix><random>` in `parent`, with the umask's permissions (mkdtemp makes 0700).

    For results that are a folder of files, written inside it and then renamed (or moved file by file) into
    place by the caller, who removes it on failure.
    """
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    follow_umask(tmp, directory=True)
    return tmp


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = ".tmp", mkdir: bool = False):
    """Yield a temporary Path beside `path` to write; on success it becomes `path`, on any error it is removed.

    `mkdir` makes a missing parent folder first. A place that cannot be written (read-only, full) is a
    LiserError naming `path` (liser.core.outputs.writing).
    """
    from liser.core.outputs import writing

    path = Path(path)
    with writing(path):
        if mkdir:
            path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_beside(path, suffix)
        try:
            yield tmp
            commit(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `text` (UTF-8, newlines as given) to `path` atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        f.write(text)


def atomic_save(obj, path: str | Path) -> None:
    """torch.save `obj` to `path` atomically (checkpoints)."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def atomic_save_npy(array, path: str | Path) -> None:
    """np.save `array` to `path` atomically, making a missing parent folder."""
    import numpy as np

    with atomic_path(path, mkdir=True) as tmp, open(tmp, "wb") as f:
        np.save(f, array)
