"""Any corpus described by a CSV, and unlabeled folders of audio or video.

`prepare_generic`: a CSV (default `root/labels.csv`; a given `csv` path is
taken as is, relative to the working directory) with columns `path`,
`speaker`, `label` and optionally `gender`; paths are relative to the root.
Its encoding: UTF-8, UTF-16/32 with a byte-order mark, or Windows-1252
with a warning naming the file (liser.core.util.read_text_guess).
Labels are the canonical names (`base.EMOTIONS`) or a common alias
(anger, fear, happiness, ...), any case; anything else is an error naming
the CSV line, since a typo would otherwise become a class of its own. A
listed file that does not exist is an error too (the CSV is wrong); a file
that exists but cannot be used, or a broken symbolic link, goes to `rejected`.
One file listed twice, by any spelling (./a.wav, a.wav, its absolute path, a
symbolic or hard link to it), is an error naming both lines (and, for one
speaker, both labels): under two speakers it could be in a fold's training
and test side at once. A path outside the root (absolute, or via ..) is an error.

`prepare_unlabeled`: every audio or video file under the root (by suffix,
liser.data.audio.INPUT_SUFFIXES, or by its first bytes), label "", speaker = the
first folder under the root (the file stem for files at the top level).
Video files are read through their audio track. Any other file is listed
in `rejected` as skipped; hidden files and folders are left out.
"""

from __future__ import annotations

import io
import os
from csv import DictReader
from pathlib import Path

from liser.data.audio import folder_files, skipped_reason
from liser.core.errors import LiserError
from liser.core.util import read_text_guess
from liser.data.corpora.base import EMOTIONS, Candidate, Manifest, build_manifest, check_root, rel

ALIASES = {
    "anger": "angry",
    "fear": "fearful",
    "happiness": "happy",
    "sadness": "sad",
    "surprise": "surprised",
    "disgusted": "disgust",
    "bored": "boredom",
}
GENDERS = {"": "", "m": "M", "male": "M", "f": "F", "female": "F"}



def canonical_label(name: str) -> str | None:
    """Canonical emotion for a label or alias (any case), or None when unknown."""
    key = name.strip().lower()
    if key in EMOTIONS:
        return key
    return ALIASES.get(key)


def prepare_generic(root: str | Path, progress: bool = True, csv: str | Path | None = None) -> Manifest:
    root = check_root(root, "generic corpus")
    csv_path = Path(csv) if csv is not None else root / "labels.csv"
    if not csv_path.is_file():
        hint = "" if csv is not None else "; pass csv=PATH, or use the 'unlabeled' corpus for a folder without labels"
        raise LiserError(f"{csv_path}: no such label CSV (columns path,speaker,label[,gender]){hint}")
    resolved_root = root.resolve()
    cands, seen = [], {}
    text, _encoding = read_text_guess(csv_path)  # BOM, else UTF-8, else cp1252 with a warning
    with io.StringIO(text, newline="") as f:
        reader = DictReader(f)
        columns = [c.strip() for c in reader.fieldnames or []]
        missing = [c for c in ("path", "speaker", "label") if c not in columns]
        if missing:
            raise LiserError(f"{csv_path}: missing column(s) {', '.join(missing)} (found {', '.join(columns) or 'none'}; need path,speaker,label[,gender])")
        for row in reader:
            where = f"{csv_path}:{reader.line_num}"
            row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
            path, speaker, label = row["path"], row["speaker"], row["label"]
            if not path or not speaker:
                raise LiserError(f"{where}: empty path or speaker")
            canon = canonical_label(label)
            if canon is None:
                raise LiserError(f"{where}: unknown label {label!r} (expected one of {', '.join(EMOTIONS)} or {', '.join(ALIASES)})")
            gender = GENDERS.get(row.get("gender", "").lower())
            if gender is None:
                raise LiserError(f"{where}: gender {row['gender']!r} is not M, F or empty")
            p = _inside_root(path, root, resolved_root, where)
            if (root / p).is_symlink() and not (root / p).exists():
                pass  # a broken link is the file's problem, not the CSV's: rejected.csv says where it points
            elif not (root / p).is_file():
                raise LiserError(f"{where}: no such file {root / p}")
            _check_once(seen, root / p, (reader.line_num, path, speaker, label), csv_path)
            cands.append(Candidate(p.as_posix(), speaker, canon, gender))
    if not cands:
        raise LiserError(f"{csv_path}: no rows")
    return build_manifest("generic", root, cands, progress)


def _inside_root(path: str, root: Path, resolved_root: Path, where: str) -> Path:
    """A CSV path as a path relative to the root; LiserError when it points outside (absolute, or via ..)."""
    p = Path(path)
    if p.is_absolute():
        try:
            return p.resolve().relative_to(resolved_root)
        except ValueError:
            raise LiserError(f"{where}: {path} is outside the root {root}") from None
    if os.path.normpath(p).split(os.sep)[0] == "..":
        raise LiserError(f"{where}: {path} is outside the root {root}")
    return p


def _file_key(path: Path):
    """What makes two spellings one file: (device, inode) of what the path leads to (a symlink followed,
    ./a.wav = a.wav = /abs/a.wav), or, for a broken link, the path with every link resolved."""
    try:
        st = path.stat()
        return (st.st_dev, st.st_ino)
    except OSError:
        return os.path.realpath(path)


def _check_once(seen: dict, path: Path, row: tuple, csv_path: Path) -> None:
    """LiserError naming both CSV lines when `path` is a file an earlier row already lists.

    `row` is (line, path as written, speaker, label); `seen` maps file keys to
    the first such row. Under two speakers one recording could sit on both
    sides of a speaker-independent fold; under one, it would count twice
    (with two labels, the message says both).
    """
    key = _file_key(path)
    first = seen.setdefault(key, row)
    if first is row:
        return
    (l0, p0, s0, lab0), (l1, p1, s1, lab1) = first, row
    same = f"{csv_path}:{l1}: {p1} is the same file as {p0} on line {l0}"
    if s0 != s1:
        raise LiserError(f"{same}, under another speaker ({s1!r} here, {s0!r} there): one recording would sit on "
                         "both sides of a speaker-independent fold; keep one row")
    if canonical_label(lab0) != canonical_label(lab1):
        raise LiserError(f"{same}, with another label ({lab1!r} here, {lab0!r} there); keep one row")
    raise LiserError(f"{same} (speaker {s1!r}, label {lab1!r} both times); keep one row")


def prepare_unlabeled(root: str | Path, progress: bool = True) -> Manifest:
    """Every file under the root that liser reads (liser.data.audio.folder_files: by suffix or first bytes), unlabeled.

    Every other file there is listed in `rejected` as skipped, so that the
    count `prepare` reports says what was left out.
    """
    root = check_root(root, "unlabeled")
    taken, skipped = folder_files(root)
    cands = []
    for p in taken:
        parts = p.relative_to(root).parts
        speaker = parts[0] if len(parts) > 1 else p.stem
        key = Path(*parts[1:]).with_suffix("").as_posix() if len(parts) > 1 else p.stem  # unique in nested trees
        cands.append(Candidate(rel(p, root), speaker, key=key))
    if not cands:
        raise LiserError(f"{root}: no audio or video files found ({len(skipped)} other files skipped)")
    m = build_manifest("unlabeled", root, cands, progress)
    m.rejected += [{"path": rel(p, root), "reason": skipped_reason(p)} for p in skipped]
    return m
