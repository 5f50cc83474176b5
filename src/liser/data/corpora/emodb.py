"""Berlin Emotional Speech Database, EmoDB (Burkhardt et al. 2005).

Layout: `wav/SSTTTEV.{wav,flac}`, e.g. `03a01Fa`: speaker (2 digits), text
code (3 chars), emotion letter (German initial: W Wut = anger, L Langeweile
= boredom, E Ekel = disgust, A Angst = fear, F Freude = happiness, T Trauer
= sadness, N neutral), version letter. The root may be the corpus root
(holding `wav/`) or `wav` itself. Gender is not in the name; the corpus
documentation lists the ten speakers, below.
"""

from __future__ import annotations

import re
from pathlib import Path

from liser.core.errors import LiserError
from liser.data.corpora.base import Manifest, check_root, prepare_parsed

EMOTION_CODES = {
    "W": "angry",
    "L": "boredom",
    "E": "disgust",
    "A": "fearful",
    "F": "happy",
    "T": "sad",
    "N": "neutral",
}
GENDERS = {"03": "M", "10": "M", "11": "M", "12": "M", "15": "M", "08": "F", "09": "F", "13": "F", "14": "F", "16": "F"}
NAME = re.compile(r"^(\d\d)([a-z]\d\d)([A-Z])([a-z])$")


def parse_name(path: Path) -> tuple[str, str] | None:
    """(speaker, emotion) of an EmoDB file name, or None when the name is not EmoDB-shaped."""
    m = NAME.match(path.stem)
    if not m:
        return None
    speaker, _text, emotion, _version = m.groups()
    if emotion not in EMOTION_CODES:
        raise LiserError(f"{path}: unknown EmoDB emotion letter {emotion!r} (expected one of {''.join(EMOTION_CODES)})")
    return speaker, EMOTION_CODES[emotion]


def prepare_emodb(root: str | Path, progress: bool = True) -> Manifest:
    root = check_root(root, "EmoDB")
    audio_dir = root / "wav" if (root / "wav").is_dir() else root

    def parse(p):
        parsed = parse_name(p)
        return None if parsed is None else (*parsed, GENDERS.get(parsed[0], ""))

    return prepare_parsed("emodb", root, parse, "an EmoDB tree (no wav/SSTTTEV audio files such as 03a01Fa.wav found)",
                          audio_dir, progress)
