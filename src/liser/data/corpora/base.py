"""The manifest: one row per utterance (or video), the file every later stage reads.

An adapter (`prepare_<corpus>(root)`) lists the corpus's files with their
speaker, label and gender as `Candidate`s; `build_manifest` opens every file
once, records its duration, sample rate and channel count, and moves files
that are unreadable, empty, too short, non-finite or silent to `rejected`
with the reason, instead of dropping them silently. Duplicate ids are an
error.

On disk a manifest is a directory: `manifest.csv` (the rows, paths relative
to the corpus root), `rejected.csv`, and `meta.json` (corpus, absolute root,
class names, counts, liser version). Everything is written to a temporary
directory and renamed at the end; an existing manifest folder has only those
three files replaced, and any other non-empty folder, or one that is or holds
the corpus root, is refused (liser.core.outputs).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path


from liser.core.errors import LiserError
from liser.core.atomic import temp_folder

# Canonical emotion vocabulary, in this order everywhere. Each corpus maps its
# own codes onto these names; RAVDESS's `calm` stays its own class (the 8-class
# RAVDESS task is the benchmark) unless a config merges it.
EMOTIONS = ("neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised", "boredom")
# other spellings of those names in teachers' and datasets' class lists (FER2013: fear, surprise)
EMOTION_ALIASES = {"fear": "fearful", "surprise": "surprised", "anger": "angry", "happiness": "happy",
                   "sadness": "sad", "disgusted": "disgust", "bored": "boredom"}


def canonical_emotion(name: str) -> str:
    """The EMOTIONS spelling of a class name ("fear" -> "fearful"); other names unchanged, lower-cased."""
    n = name.strip().lower()
    return EMOTION_ALIASES.get(n, n)

ROW_FIELDS = ("id", "path", "speaker", "label", "duration", "sample_rate", "channels", "corpus", "gender")
# manifest.csv and rejected.csv are UTF-8; a file name that is not (Latin-1 bytes on Linux, which Python holds
# as lone surrogates) is written as its own bytes and read back to the same name, so the file still opens
CSV_ERRORS = "surrogateescape"


@dataclass(frozen=True)
class Candidate:
    """What an adapter knows about a file before it is opened."""

    path: str  # relative to the corpus root, with forward slashes
    speaker: str  # speaker id, unique within the corpus
    label: str = ""  # canonical emotion, or "" for unlabeled data
    gender: str = ""  # "M", "F" or "" when the corpus does not say
    key: str = ""  # id suffix when the file stem is not unique per speaker (nested trees); "" = stem


@dataclass(frozen=True)
class Item:
    """One manifest row."""

    id: str  # stable id: corpus/speaker/file-stem
    path: str  # relative to the manifest's root
    speaker: str  # speaker id
    label: str  # canonical emotion; "" = unlabeled
    duration: float  # seconds
    sample_rate: int  # of the file as stored
    channels: int  # of the file as stored
    corpus: str  # corpus name
    gender: str = ""  # "M", "F" or ""


@dataclass
class Manifest:
    corpus: str
    root: Path
    items: list[Item]
    rejected: list[dict] = field(default_factory=list)  # {"path", "reason"}

    @property
    def classes(self) -> list[str]:
        """Labels present, in canonical order (unknown names after, sorted)."""
        present = {it.label for it in self.items if it.label}
        known = [e for e in EMOTIONS if e in present]
        return known + sorted(present - set(EMOTIONS))

    @property
    def speakers(self) -> list[str]:
        return sorted({it.speaker for it in self.items})

    def abspath(self, item: Item) -> Path:
        return self.root / item.path

    def by_speakers(self, speakers) -> list[Item]:
        keep = set(speakers)
        return [it for it in self.items if it.speaker in keep]

    def fingerprint(self) -> str:
        """Hash of the rows and root: caches keyed on it are redone when the corpus changes."""
        h = hashlib.sha256(str(self.root).encode("utf-8", CSV_ERRORS))
        for it in self.items:
            h.update(f"{it.id}|{it.path}|{it.duration:.4f}|{it.label}\n".encode("utf-8", CSV_ERRORS))
        return h.hexdigest()[:16]

    # ---- disk ----
    def save(self, out_dir: str | Path) -> Path:
        """Write the manifest folder `out_dir` (manifest.csv, rejected.csv, meta.json); returns it.

        A new folder is written under a temporary name and renamed; an
        existing manifest folder has only those three files replaced (anything
        else in it stays). LiserError (liser.core.outputs) for a non-empty folder
        that is not a manifest, the corpus root or a folder holding it, and
        for a place that cannot be written (read-only, full, ...).
        """
        from liser.core.outputs import MANIFEST, check_out_dir, writing

        out_dir = check_out_dir(out_dir, MANIFEST, [(self.root, f"{self.corpus} corpus root")])
        with writing(out_dir):
            if out_dir.is_dir():
                self._replace_files(out_dir)
            else:
                self._write_new(out_dir)
        return out_dir

    def _write_new(self, out_dir: Path) -> None:
        """The folder written under a temporary name beside it, renamed when complete."""
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_folder(out_dir.parent, f".{out_dir.absolute().name}.")
        try:
            self._write_files(tmp)
            os.replace(tmp, out_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _replace_files(self, out_dir: Path) -> None:
        """An existing manifest folder: the three files written in a temporary folder inside it, then moved
        over the old ones (meta.json last); nothing else in the folder is touched."""
        tmp = temp_folder(out_dir, ".manifest-tmp-")
        try:
            self._write_files(tmp)
            for name in ("manifest.csv", "rejected.csv", "meta.json"):
                os.replace(tmp / name, out_dir / name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _write_files(self, d: Path) -> None:
        """manifest.csv, rejected.csv and meta.json into the folder `d`."""
        with open(d / "manifest.csv", "w", newline="", encoding="utf-8", errors=CSV_ERRORS) as f:
            w = csv.DictWriter(f, fieldnames=ROW_FIELDS)
            w.writeheader()
            for it in self.items:
                w.writerow(asdict(it))
        with open(d / "rejected.csv", "w", newline="", encoding="utf-8", errors=CSV_ERRORS) as f:
            w = csv.DictWriter(f, fieldnames=("path", "reason"))
            w.writeheader()
            w.writerows(self.rejected)
        from liser import __version__

        meta = {
            "corpus": self.corpus,
            "root": str(self.root),
            "classes": self.classes,
            "items": len(self.items),
            "speakers": len(self.speakers),
            "rejected": len(self.rejected),
            "hours": round(sum(it.duration for it in self.items) / 3600, 4),
            "fingerprint": self.fingerprint(),
            "liser_version": __version__,
        }
        (d / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "Manifest":
        path = Path(path)
        d = path.parent if path.name in ("manifest.csv", "meta.json") else path
        if not (d / "meta.json").is_file() or not (d / "manifest.csv").is_file():
            raise LiserError(f"{d}: not a manifest directory (no meta.json / manifest.csv; run `liser prepare`)")
        meta = json.loads((d / "meta.json").read_text())
        types = {f.name: f.type for f in fields(Item)}
        items = []
        with open(d / "manifest.csv", newline="", encoding="utf-8", errors=CSV_ERRORS) as f:
            for row in csv.DictReader(f):
                items.append(
                    Item(
                        **{
                            k: (float(v) if types[k] == "float" else int(v) if types[k] == "int" else v)
                            for k, v in row.items()
                            if k in types
                        }
                    )
                )
        rejected = []
        if (d / "rejected.csv").is_file():
            with open(d / "rejected.csv", newline="", encoding="utf-8", errors=CSV_ERRORS) as f:
                rejected = list(csv.DictReader(f))
        return cls(corpus=meta["corpus"], root=Path(meta["root"]), items=items, rejected=rejected)


LFS_POINTER = b"version https://git-lfs.github.com/spec/v1"


def check_not_lfs_pointer(path: Path) -> None:
    """Raise LiserError when `path` is a Git LFS pointer (a ~130-byte text file) instead of its content.

    A corpus cloned without `git lfs pull` has these in place of its audio;
    a decoder would only say "unreadable", which hides the fix.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(len(LFS_POINTER))
    except OSError:
        return  # the decoder below reports an unreadable file with its own reason
    if head == LFS_POINTER:
        raise LiserError(f"{path}: a Git LFS pointer, not audio (fetch the file itself, e.g. `git lfs pull`)")


def probe(path: Path) -> tuple[float, int, int]:
    """Open a file and check it: returns (duration_s, sample_rate, channels).

    Raises LiserError with the reason for files the student cannot use:
    a broken symbolic link (naming its target), empty (0 bytes),
    unreadable, 0 samples, shorter than one STFT window, NaN/inf, silent
    (RMS after removing the mean below -100 dBFS: a constant signal is
    silent). Reads through liser.data.audio.read_file, as training and predict do.
    """
    from liser.data.audio import MIN_SAMPLES, check_not_silent, check_waveform, read_file

    check_not_lfs_pointer(path)  # before decoding: a decoder would only say "unreadable"
    audio, sr = read_file(path)
    channels = audio.shape[1] if audio.ndim == 2 else 1
    check_waveform(audio, str(path))
    n = audio.shape[0]
    if n * 16_000 / sr < MIN_SAMPLES:
        raise LiserError(f"{path}: too short ({n / sr:.3f} s; at least one 128 ms STFT window is needed)")
    check_not_silent(audio, str(path))
    return n / sr, int(sr), int(channels)


def build_manifest(corpus: str, root: Path, candidates: list[Candidate], progress: bool = True) -> Manifest:
    """Open every candidate, keep the usable ones, list the others with the reason."""
    from tqdm import tqdm

    items, rejected, seen = [], [], {}
    for c in tqdm(candidates, desc=f"prepare {corpus}", unit="file", disable=None if progress else True, leave=False):
        item_id = f"{corpus}/{c.speaker}/{c.key or Path(c.path).stem}"
        if item_id in seen:
            raise LiserError(f"{root / c.path}: duplicate id {item_id} (also {root / seen[item_id]})")
        seen[item_id] = c.path
        try:
            dur, sr, ch = probe(root / c.path)
        except LiserError as e:
            msg, prefix = str(e), f"{root / c.path}: "
            rejected.append({"path": c.path, "reason": msg[len(prefix):] if msg.startswith(prefix) else msg})
            continue
        items.append(Item(item_id, c.path, c.speaker, c.label, round(dur, 4), sr, ch, corpus, c.gender))
    if not items:
        raise LiserError(f"{root}: no usable {corpus} files ({len(rejected)} rejected)")
    return Manifest(corpus=corpus, root=root.resolve(), items=items, rejected=rejected)


def prepare_parsed(corpus: str, root: Path, parse, not_found: str, audio_dir: Path | None = None,
                   progress: bool = True) -> Manifest:
    """The loop every name-coded adapter shares.

    `parse(path)` gives (speaker, label, gender) for a file of the corpus, or
    None for a file that is not one (skipped); no file at all means the root
    is not that corpus, and `not_found` says what was expected.
    """
    cands = []
    for p in audio_files(audio_dir or root):
        parsed = parse(p)
        if parsed is not None:
            speaker, label, gender = parsed
            cands.append(Candidate(rel(p, root), speaker, label, gender))
    if not cands:
        raise LiserError(f"{root}: not {not_found}")
    return build_manifest(corpus, root, cands, progress)


def check_root(root: str | Path, corpus: str) -> Path:
    root = Path(root)
    if not root.exists():
        raise LiserError(f"{root}: no such directory (the {corpus} root)")
    if not root.is_dir():
        raise LiserError(f"{root}: not a directory (the {corpus} root)")
    return root


def audio_files(root: Path, suffixes=(".wav", ".flac", ".ogg", ".opus", ".mp3")) -> list[Path]:
    """All audio files under root, sorted, by suffix (case-insensitive).

    Broken symbolic links with such a suffix are listed too, so that
    `build_manifest` puts them in rejected.csv ("broken symbolic link ->
    target") instead of the file vanishing without a word.
    """
    return sorted(p for p in root.rglob("*")
                  if (p.is_file() or (p.is_symlink() and not p.exists()))
                  and p.suffix.lower() in suffixes and not p.name.startswith("."))


def rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def merge_manifests(manifests: list[Manifest], name: str = "pool") -> Manifest:
    """One manifest over several corpora (e.g. an unlabeled pool): paths become absolute, ids stay."""
    items, rejected, seen = [], [], set()
    for m in manifests:
        for it in m.items:
            if it.id in seen:
                raise LiserError(f"{m.root}: duplicate id {it.id} across the merged manifests")
            seen.add(it.id)
            items.append(Item(**{**it.__dict__, "path": str(m.abspath(it))}))
        rejected += [{**r, "path": str(m.root / r["path"])} for r in m.rejected]
    return Manifest(corpus=name, root=Path("/"), items=items, rejected=rejected)
