"""Toronto Emotional Speech Set, TESS (Pichora-Fuller & Dupuis 2020).

Layout: `{OAF,YAF}_<emotion>/*.{wav,...}`: two female speakers (OAF older,
YAF younger), 7 emotions. The emotion is the folder name, spelled
inconsistently across releases (`OAF_Fear`, `YAF_fear`,
`OAF_Pleasant_surprise`, `YAF_pleasant_surprised`), so it is matched
case-insensitively. Folders may sit at any depth under the root (some
releases nest them); a folder of the same name twice in the tree gives
duplicate ids, an error.
"""

from __future__ import annotations

import re
from pathlib import Path

from liser.core.errors import LiserError
from liser.data.corpora.base import Manifest, check_root, prepare_parsed

EMOTIONS = {
    "angry": "angry",
    "disgust": "disgust",
    "fear": "fearful",
    "happy": "happy",
    "neutral": "neutral",
    "sad": "sad",
    "pleasant_surprise": "surprised",
    "pleasant_surprised": "surprised",
    "ps": "surprised",
}
FOLDER = re.compile(r"^(OAF|YAF)_(.+)$", re.IGNORECASE)


def parse_folder(path: Path) -> tuple[str, str] | None:
    """(speaker, emotion) from a TESS file's folder name, or None when the folder is not TESS-shaped."""
    m = FOLDER.match(path.parent.name)
    if not m:
        return None
    speaker, emotion = m.group(1).upper(), m.group(2).lower()
    if emotion not in EMOTIONS:
        raise LiserError(f"{path}: unknown TESS emotion folder {path.parent.name!r} (expected OAF_/YAF_ + one of {', '.join(EMOTIONS)})")
    return speaker, EMOTIONS[emotion]


def prepare_tess(root: str | Path, progress: bool = True) -> Manifest:
    root = check_root(root, "TESS")

    def parse(p):
        parsed = parse_folder(p)
        return None if parsed is None else (*parsed, "F")  # both TESS speakers are women

    return prepare_parsed("tess", root, parse, "a TESS tree (no OAF_<emotion>/ or YAF_<emotion>/ folders with audio "
                          "files found)", progress=progress)
