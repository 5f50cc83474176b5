"""CREMA-D (Cao et al. 2014), audio part.

Layout: `AudioWAV/AAAA_SSS_EEE_LL.wav`: actor 1001..1091, sentence code (3
letters), emotion ANG/DIS/FEA/HAP/NEU/SAD, level LO/MD/HI or XX/X
(unspecified). The root may be the corpus root (holding `AudioWAV/`) or
`AudioWAV` itself. Gender is not in the file name: it comes from
`VideoDemographics.csv` (ActorID, Age, Sex, Race, Ethnicity) at the corpus
root when present, else it is left "". The release's one empty file
(1076_MTI_SAD_XX.wav) ends up in `rejected`, like any unusable file.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

from ..errors import LiserError
from .base import Manifest, check_root, prepare_parsed

EMOTION_CODES = {
    "ANG": "angry",
    "DIS": "disgust",
    "FEA": "fearful",
    "HAP": "happy",
    "NEU": "neutral",
    "SAD": "sad",
}
NAME = re.compile(r"^(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{1,2})$")
DEMOGRAPHICS = "VideoDemographics.csv"


def parse_name(path: Path) -> tuple[str, str] | None:
    """(actor, emotion) of a CREMA-D file name, or None when the name is not CREMA-D-shaped."""
    m = NAME.match(path.stem)
    if not m:
        return None
    actor, _sentence, emotion, _level = m.groups()
    if emotion not in EMOTION_CODES:
        raise LiserError(f"{path}: unknown CREMA-D emotion code {emotion!r} (expected one of {', '.join(EMOTION_CODES)})")
    return actor, EMOTION_CODES[emotion]


def read_genders(csv_path: Path) -> dict[str, str]:
    """Actor id -> "M"/"F" from VideoDemographics.csv."""
    genders = {}
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"ActorID", "Sex"} <= {c.strip() for c in reader.fieldnames}:
            raise LiserError(f"{csv_path}: expected columns ActorID and Sex, found {reader.fieldnames}")
        for row in reader:
            row = {k.strip(): (v or "").strip() for k, v in row.items() if k}
            sex = row["Sex"].lower()
            if sex not in ("male", "female"):
                raise LiserError(f"{csv_path}:{reader.line_num}: Sex is {row['Sex']!r}, expected Male or Female")
            genders[row["ActorID"]] = "M" if sex == "male" else "F"
    return genders


def prepare_cremad(root: str | Path, progress: bool = True) -> Manifest:
    root = check_root(root, "CREMA-D")
    audio_dir = root / "AudioWAV" if (root / "AudioWAV").is_dir() else root
    genders = {}
    for csv_path in (audio_dir.parent / DEMOGRAPHICS, audio_dir / DEMOGRAPHICS):
        if csv_path.is_file():
            genders = read_genders(csv_path)
            break

    def parse(p):
        parsed = parse_name(p)
        return None if parsed is None else (*parsed, genders.get(parsed[0], ""))

    return prepare_parsed("cremad", root, parse, "a CREMA-D tree (no AudioWAV/AAAA_SSS_EEE_LL audio files found)",
                          audio_dir, progress)
