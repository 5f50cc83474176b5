"""Any corpus described by a CSV, and unlabeled folders of audio or video.

`prepare_generic`: a CSV (default `root/labels.csv`; a given `csv` path is
taken as is, relative to the working directory) with columns `path`,
`speaker`, `label` and optionally `gender`; paths are relative to the root.
Its encoding: UTF-8, UTF-16/32 with a byte-order mark, or Windows-1252
with a warning naming the file (liser.util.read_text_guess).
Labels are the canonical names (`base.EMOTIONS`) or a common alias
(anger, fear, happiness, ...), any case; anything else is an error naming
the CSV line, since a typo would otherwise become a class of its own. A
listed file that does not exist is an error too (the CSV is wrong); a file
that exists but cannot be used, or a broken symbolic link, goes to `rejected`.

`prepare_unlabeled`: every audio or video file under the root, label "",
speaker = the first folder under the root (the file stem for files at the
top level). Video files are read through their audio track.
"""

from __future__ import annotations

import io
from csv import DictReader
from pathlib import Path

from ..audio import VIDEO_SUFFIXES
from ..errors import LiserError
from ..util import AUDIO_SUFFIXES, read_text_guess
from .base import EMOTIONS, Candidate, Manifest, audio_files, build_manifest, check_root, rel

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
    cands = []
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
            p = Path(path)
            if p.is_absolute():
                try:
                    p = p.resolve().relative_to(resolved_root)
                except ValueError:
                    raise LiserError(f"{where}: {path} is outside the root {root}") from None
            if (root / p).is_symlink() and not (root / p).exists():
                pass  # a broken link is the file's problem, not the CSV's: rejected.csv says where it points
            elif not (root / p).is_file():
                raise LiserError(f"{where}: no such file {root / p}")
            cands.append(Candidate(p.as_posix(), speaker, canon, gender))
    if not cands:
        raise LiserError(f"{csv_path}: no rows")
    return build_manifest("generic", root, cands, progress)


def prepare_unlabeled(root: str | Path, progress: bool = True) -> Manifest:
    root = check_root(root, "unlabeled")
    suffixes = AUDIO_SUFFIXES + tuple(sorted(VIDEO_SUFFIXES))
    cands = []
    for p in audio_files(root, suffixes):
        parts = p.relative_to(root).parts
        if any(part.startswith(".") for part in parts):
            continue  # hidden files and folders (macOS ._ files, caches) are not data
        speaker = parts[0] if len(parts) > 1 else p.stem
        key = Path(*parts[1:]).with_suffix("").as_posix() if len(parts) > 1 else p.stem  # unique in nested trees
        cands.append(Candidate(rel(p, root), speaker, key=key))
    if not cands:
        raise LiserError(f"{root}: no audio or video files found ({', '.join(suffixes)})")
    return build_manifest("unlabeled", root, cands, progress)
