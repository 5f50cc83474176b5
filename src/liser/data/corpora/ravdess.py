"""RAVDESS, speech part (Livingstone & Russo 2018).

Layout: `Actor_XX/MM-VC-EE-II-SS-RR-AA.{wav,flac}`. The seven fields are
modality (01 full-AV, 02 video-only, 03 audio-only), vocal channel (01
speech, 02 song), emotion (01..08), intensity, statement, repetition, actor
(odd = male). Only audio-only speech (03-01) is the speech set; a song or
video code in the tree is an error, since it means the root is not the
speech part.
"""

from __future__ import annotations

import re
from pathlib import Path

from liser.core.errors import LiserError
from liser.data.corpora.base import Candidate, Manifest, check_root, prepare_parsed

EMOTION_CODES = {
    "01": "neutral",
    "02": "calm",
    "03": "happy",
    "04": "sad",
    "05": "angry",
    "06": "fearful",
    "07": "disgust",
    "08": "surprised",
}
NAME = re.compile(r"^(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)$")


def parse_name(path: Path) -> Candidate | None:
    """Fields of a RAVDESS file name, or None when the name is not RAVDESS-shaped."""
    m = NAME.match(path.stem)
    if not m:
        return None
    modality, channel, emotion, _intensity, _statement, _rep, actor = m.groups()
    if modality != "03" or channel != "01":
        kind = {"01": "audio-video", "02": "video-only"}.get(modality, "audio-only")
        what = "song" if channel == "02" else "speech"
        raise LiserError(f"{path}: {kind} {what} file (modality {modality}, vocal channel {channel}); expected the speech audio part (03-01)")
    if emotion not in EMOTION_CODES:
        raise LiserError(f"{path}: unknown RAVDESS emotion code {emotion!r}")
    return Candidate(path="", speaker=f"Actor_{actor}", label=EMOTION_CODES[emotion], gender="M" if int(actor) % 2 else "F")


def prepare_ravdess(root: str | Path, progress: bool = True) -> Manifest:
    root = check_root(root, "RAVDESS")

    def parse(p):
        c = parse_name(p)
        return None if c is None else (c.speaker, c.label, c.gender)

    return prepare_parsed("ravdess", root, parse, "a RAVDESS speech tree (no MM-VC-EE-II-SS-RR-AA audio files found)",
                          progress=progress)
