"""URDU emotional speech corpus (Latif et al. 2018).

Layout: `{Angry,Happy,Neutral,Sad}/SXn_Fm_Ekk.{wav,...}`, e.g.
`SM1_F01_A012`: S + gender letter (M/F) + speaker number, then the file
number, then the emotion initial and a number. The label is the folder; the
initial in the name must agree with it (a disagreement means a misplaced
file). Speaker ids are the first field ("SM1"), gender from its letter.
Folder names are matched case-insensitively and may sit at any depth.
"""

from __future__ import annotations

import re
from pathlib import Path

from liser.core.errors import LiserError
from liser.data.corpora.base import Candidate, Manifest, check_root, prepare_parsed

FOLDERS = {"angry": "angry", "happy": "happy", "neutral": "neutral", "sad": "sad"}
NAME = re.compile(r"^(S([MF])\d+)_F\d+_([A-Z])\d+$", re.IGNORECASE)


def parse_name(path: Path) -> Candidate | None:
    """Speaker, label and gender of a file in an URDU emotion folder; None outside those folders."""
    label = FOLDERS.get(path.parent.name.lower())
    if label is None:
        return None
    m = NAME.match(path.stem)
    if not m:
        raise LiserError(f"{path}: not an URDU file name (expected SXn_Fm_Ekk such as SM1_F01_A012); cannot tell the speaker")
    speaker, gender, initial = m.group(1).upper(), m.group(2).upper(), m.group(3).upper()
    if initial != label[0].upper():
        raise LiserError(f"{path}: emotion initial {initial!r} in the name disagrees with the folder {path.parent.name!r}")
    return Candidate(path="", speaker=speaker, label=label, gender=gender)


def prepare_urdu(root: str | Path, progress: bool = True) -> Manifest:
    root = check_root(root, "URDU")

    def parse(p):
        c = parse_name(p)
        return None if c is None else (c.speaker, c.label, c.gender)

    return prepare_parsed("urdu", root, parse, "an URDU tree (no Angry/, Happy/, Neutral/ or Sad/ folders with audio "
                          "files found)", progress=progress)
