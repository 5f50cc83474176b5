"""MSP-Face (Vidal, Salman, Lin & Busso, ICMI 2020), used as unlabeled audio-visual data.

The corpus is not reachable from the development machines, so this adapter
is written against its published description and is tolerant about the
details. Assumptions (check them against your copy):

- Clips: single-speaker segments of online videos (3-10 s, about 27k of
  them, 491 speakers), as .mp4 files under `<root>/Videos/` or
  `<root>/Clips/` (any letter case; searched recursively). Without either
  folder, every .mp4 under the root is taken.
- Speakers: from metadata files at the top of the tree (the root and its
  non-clip subfolders such as `Labels/`, `Partitions/`, `Metadata/`):
  * CSV files with a header naming a file column (FileName / file / name /
    video / clip) and a speaker column (SpkrID / speaker / speaker_id ...);
    a gender column (Gender: Male/Female/M/F) is used when present;
  * `;`-, `,`- or tab-separated lines without such a header, in files
    whose name says speaker/spk/partition/split/meta (`Partitions.txt`,
    `Speaker_ids.txt` in the MSP-Podcast style): a line with one clip name
    and exactly one other field that is neither a partition name (Train,
    Development, Validation, Test, Test1, ...) nor an emotion word/code
    gives that field as the speaker.
  Clips the metadata does not cover take the file-name prefix: a leading
  `MSP-FACE_` / `MSP_Face-` tag is dropped and the text before the next
  `_` or `-` is the speaker (`MSP-FACE_0123_0004.mp4` -> `0123`, the
  source-video number, one speaker per source video).
- Emotion annotations (primary/secondary categories, arousal, valence,
  dominance) are ignored: every label is "", as in the LiSER paper, which
  uses MSP-Face only as unlabeled data.
"""

from __future__ import annotations

import csv
import re
import warnings
from pathlib import Path

from liser.core.errors import LiserError
from liser.data.corpora.base import Candidate, Manifest, audio_files, build_manifest, check_root, rel

CLIP_DIRS = ("videos", "clips")
PARTITION_WORDS = {"train", "training", "development", "dev", "validation", "valid", "val", "test", "test1", "test2", "test3"}
FILE_COLS = ("filename", "file_name", "file", "name", "video", "videoname", "video_name", "clip", "clipname", "clip_name", "path")
SPEAKER_COLS = ("spkrid", "spkr_id", "speakerid", "speaker_id", "speaker", "spkid", "spk_id", "subject", "subjectid")
GENDER_COLS = ("gender", "sex", "spkrgender")
EMOTION_WORDS = {
    "angry", "anger", "sad", "sadness", "happy", "happiness", "surprise", "surprised", "fear", "fearful",
    "disgust", "disgusted", "contempt", "neutral", "other", "no agreement", "a", "s", "h", "u", "f", "d", "c", "n", "o", "x",
}
LIST_FILE = re.compile(r"speaker|spk|partition|split|meta", re.IGNORECASE)
TAG = re.compile(r"^msp[-_]?face[-_]", re.IGNORECASE)


def clip_files(root: Path) -> list[Path]:
    """The .mp4 clips: under Videos/ or Clips/ (any case) when present, else the whole tree."""
    dirs = [d for d in sorted(root.iterdir()) if d.is_dir() and d.name.lower() in CLIP_DIRS]
    files = []
    for d in dirs or [root]:
        files += audio_files(d, suffixes=(".mp4",))
    return sorted({p for p in files if not p.name.startswith(".")})


def speaker_from_name(stem: str) -> str:
    """Speaker from a clip name: drop a leading MSP-FACE tag, keep the text before the next '_' or '-'."""
    rest = TAG.sub("", stem)
    head = re.split(r"[_-]", rest, maxsplit=1)[0]
    return head or stem


def _gender(value: str) -> str:
    v = value.strip().lower()
    return "M" if v in ("m", "male", "man") else "F" if v in ("f", "female", "woman") else ""


def _metadata_files(root: Path) -> list[Path]:
    """CSV/TXT files in the root and its non-clip subfolders (one level down)."""
    out = [p for p in root.iterdir() if p.is_file()]
    for d in root.iterdir():
        if d.is_dir() and d.name.lower() not in CLIP_DIRS:
            out += [p for p in d.iterdir() if p.is_file()]
    return sorted(p for p in out if p.suffix.lower() in (".csv", ".txt") and not p.name.startswith("."))


def _col(header: list[str], names: tuple[str, ...]) -> int | None:
    norm = [re.sub(r"[\s.]", "", h.strip().lower()) for h in header]
    for n in names:
        if n in norm:
            return norm.index(n)
    return None


def read_speakers(root: Path, stems: set[str]) -> dict[str, tuple[str, str]]:
    """clip stem -> (speaker, gender) from whatever metadata files the tree holds."""
    found: dict[str, tuple[str, str]] = {}
    for path in _metadata_files(root):
        try:
            text = path.read_text(encoding="utf-8-sig", errors="replace")
        except OSError as e:  # metadata that cannot be read would silently change every speaker it names
            raise LiserError(f"{path}: unreadable metadata file ({e.strerror or e})") from None
        lines = [ln for ln in text.splitlines() if ln.strip()]
        if not lines:
            continue
        delim = max(";,\t", key=lines[0].count)
        rows = [[c.strip() for c in r] for r in csv.reader(lines, delimiter=delim)]
        header = rows[0]
        fcol, scol, gcol = _col(header, FILE_COLS), _col(header, SPEAKER_COLS), _col(header, GENDER_COLS)
        if fcol is not None and scol is not None:  # a table with named columns
            short = [i + 2 for i, r in enumerate(rows[1:]) if len(r) <= max(fcol, scol)]
            if short:
                warnings.warn(f"{path}: {len(short)} row(s) without a file and speaker column, ignored "
                              f"(lines {', '.join(map(str, short[:5]))}{', ...' if len(short) > 5 else ''})", stacklevel=2)
            for r in rows[1:]:
                if len(r) > max(fcol, scol):
                    stem = Path(r[fcol]).stem
                    if stem in stems and r[scol]:
                        g = _gender(r[gcol]) if gcol is not None and len(r) > gcol else ""
                        found[stem] = (r[scol], g)
            continue
        if not LIST_FILE.search(path.stem):
            continue
        for r in rows:  # plain lines: a clip name and (maybe) a speaker
            names = [i for i, c in enumerate(r) if Path(c).stem in stems]
            others = [
                c for i, c in enumerate(r)
                if i not in names and c and c.lower() not in PARTITION_WORDS and c.lower() not in EMOTION_WORDS and ":" not in c
            ]
            if len(names) == 1 and len(others) == 1:
                stem = Path(r[names[0]]).stem
                found[stem] = (others[0], found.get(stem, ("", ""))[1])
    return found


def prepare_mspface(root: str | Path, progress: bool = True) -> Manifest:
    root = check_root(root, "MSP-Face")
    files = clip_files(root)
    if not files:
        raise LiserError(f"{root}: not an MSP-Face tree (no .mp4 clips under Videos/, Clips/ or the root)")
    meta = read_speakers(root, {p.stem for p in files})
    cands = []
    for p in files:
        speaker, gender = meta.get(p.stem, ("", ""))
        cands.append(Candidate(rel(p, root), speaker or speaker_from_name(p.stem), "", gender))
    return build_manifest("mspface", root, cands, progress)
