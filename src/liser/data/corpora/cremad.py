"""CREMA-D (Cao et al. 2014), audio part.

Layout: `AudioWAV/AAAA_SSS_EEE_LL.<ext>`: actor 1001..1091, sentence code (3
letters), emotion ANG/DIS/FEA/HAP/NEU/SAD, level LO/MD/HI or XX
(unspecified); `<ext>` is any audio suffix libsndfile reads (the release
has WAV; ../shared/data has Ogg Opus). The root may be the corpus root
(holding `AudioWAV/`) or the `AudioWAV` folder itself. Gender is not in the
file name: it comes from `VideoDemographics.csv` ("ActorID", "Age", "Sex",
"Race", "Ethnicity"; Sex is Male/Female) at the corpus root when present,
else it is left "". The speaker is the actor id.

The release's quirks, each handled without stopping the rest:
- `1076_MTI_SAD_XX` is digital silence (0 bytes in some copies, ~1e-34
  samples once decoded from Opus): rejected as silent or empty by the shared
  check in `corpora.base.probe`, with the reason in `rejected.csv`;
- an older release names one file `1040_ITH_SAD_X` (one-letter level):
  accepted, like `_XX`;
- a Git LFS pointer in place of the audio: rejected as such (`probe`);
- an unknown emotion code (`1001_DFA_XYZ_XX`): a `rejected.csv` row naming
  the code; the other files are prepared.
A corpus root without `AudioWAV/` and without CREMA-D files is one error.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

from liser.core.errors import LiserError
from liser.core.util import AUDIO_SUFFIXES
from liser.data.corpora.base import Candidate, Manifest, audio_files, build_manifest, check_root, rel

EMOTION_CODES = {
    "ANG": "angry",
    "DIS": "disgust",
    "FEA": "fearful",
    "HAP": "happy",
    "NEU": "neutral",
    "SAD": "sad",
}
# actor _ sentence _ emotion _ level; the level has 1 letter in the old misnamed 1040_ITH_SAD_X
NAME = re.compile(r"^(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{1,2})$")
DEMOGRAPHICS = "VideoDemographics.csv"


def parse_name(path: Path) -> tuple[str, str] | None:
    """(actor, emotion) of a CREMA-D file name, or None when the name is not CREMA-D-shaped.

    Raises LiserError naming the file for a CREMA-D-shaped name whose emotion
    code is unknown (prepare_cremad turns it into a rejected row).
    """
    m = NAME.match(path.stem)
    if not m:
        return None
    actor, _sentence, emotion, _level = m.groups()
    if emotion not in EMOTION_CODES:
        raise LiserError(f"{path}: unknown CREMA-D emotion code {emotion!r} (expected one of {', '.join(EMOTION_CODES)})")
    return actor, EMOTION_CODES[emotion]


def read_genders(csv_path: Path) -> dict[str, str]:
    """Actor id -> "M"/"F" from VideoDemographics.csv (columns ActorID and Sex; quoted or not).

    Raises LiserError naming the file (and line) when a column is missing or
    Sex is not Male/Female.
    """
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


def audio_dir_of(root: Path) -> Path:
    """The folder holding the clips: root/AudioWAV, else root itself when it holds CREMA-D-named audio.

    Raises LiserError (one line) when neither is the case: the usual cause is
    a corpus folder whose AudioWAV/ is missing (e.g. only the CSVs copied).
    """
    if (root / "AudioWAV").is_dir():
        return root / "AudioWAV"
    if any(NAME.match(p.stem) for p in audio_files(root, AUDIO_SUFFIXES)):
        return root
    what = "no AudioWAV/ folder and no AAAA_SSS_EEE_LL audio files in it"
    if (root / DEMOGRAPHICS).is_file():
        what = f"it holds {DEMOGRAPHICS} but no AudioWAV/ folder"
    raise LiserError(f"{root}: not a CREMA-D tree ({what})")


def prepare_cremad(root: str | Path, progress: bool = True) -> Manifest:
    """The manifest of a CREMA-D tree: 6 classes, speaker = actor id, gender from the demographics.

    Unusable files (silent, LFS pointer, unknown emotion code, ...) are rows
    of `rejected` with the reason. Raises LiserError for a missing root, a
    tree without AudioWAV/, a malformed VideoDemographics.csv or no usable file.
    """
    root = check_root(root, "CREMA-D")
    audio_dir = audio_dir_of(root)
    genders = {}
    for csv_path in (audio_dir.parent / DEMOGRAPHICS, audio_dir / DEMOGRAPHICS):
        if csv_path.is_file():
            genders = read_genders(csv_path)
            break
    cands, refused = [], []
    for p in audio_files(audio_dir, AUDIO_SUFFIXES):
        try:
            parsed = parse_name(p)
        except LiserError as e:
            refused.append({"path": rel(p, root), "reason": str(e)[len(f"{p}: "):]})
            continue
        if parsed is not None:
            actor, label = parsed
            cands.append(Candidate(rel(p, root), actor, label, genders.get(actor, "")))
    if not cands:
        raise LiserError(f"{root}: not a CREMA-D tree (no usable AAAA_SSS_EEE_LL audio files; "
                         f"{len(refused)} with an unknown emotion code)")
    m = build_manifest("cremad", root, cands, progress)
    m.rejected = sorted(m.rejected + refused, key=lambda r: r["path"])
    return m
