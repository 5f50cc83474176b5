"""Any tree of talking-face videos, unlabeled (the audio-visual pool).

Layout: `<root>/<speaker>/.../<clip>.{mp4,mkv,webm,avi,mov}`. The speaker is
the first directory below the root (VoxCeleb-style `idNN/` folders); a video
directly in the root is its own speaker (its file stem). Labels are empty:
the teachers label these clips. Durations come from the audio track (read
through PyAV by `base.probe`); videos without a usable audio track are
listed in `rejected` with the reason.

Item ids are `videos/<speaker>/<file stem>`, so two clips with the same stem
under one speaker (e.g. `id01/a/001.mp4` and `id01/b/001.mp4`) are refused
as duplicate ids by `build_manifest`.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import LiserError
from .base import Candidate, Manifest, audio_files, build_manifest, check_root, rel

VIDEO_EXTS = (".mp4", ".mkv", ".webm", ".avi", ".mov")


def speaker_of(relpath: str) -> str:
    """First directory component of a root-relative path, or the file stem at top level."""
    parts = Path(relpath).parts
    return parts[0] if len(parts) > 1 else Path(relpath).stem


def key_of(relpath: str) -> str:
    """Id suffix: the path below the speaker folder without its suffix (unique in nested trees)."""
    parts = Path(relpath).parts
    return Path(*parts[1:]).with_suffix("").as_posix() if len(parts) > 1 else Path(relpath).stem


def prepare_videos(root: str | Path, progress: bool = True) -> Manifest:
    root = check_root(root, "video")
    files = [p for p in audio_files(root, suffixes=VIDEO_EXTS) if not p.name.startswith(".")]
    if not files:
        raise LiserError(f"{root}: no video files ({' '.join(VIDEO_EXTS)}) found")
    cands = [Candidate(rel(p, root), speaker_of(rel(p, root)), key=key_of(rel(p, root))) for p in files]
    return build_manifest("videos", root, cands, progress)
