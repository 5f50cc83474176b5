"""Any tree of talking-face videos, unlabeled (the audio-visual pool).

Layout: `<root>/<speaker>/.../<clip>.<ext>`, ext one of
liser.data.audio.MOVIE_SUFFIXES (mp4, mkv, webm, avi, mov, 3gp, ...); any other
file is listed in `rejected` as skipped. The speaker is
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

from liser.data.audio import MOVIE_SUFFIXES, folder_files, skipped_reason
from liser.core.errors import LiserError
from liser.data.corpora.base import Candidate, Manifest, build_manifest, check_root, rel

VIDEO_EXTS = tuple(sorted(MOVIE_SUFFIXES))  # the shared list (liser.data.audio), under its old name


def speaker_of(relpath: str) -> str:
    """First directory component of a root-relative path, or the file stem at top level."""
    parts = Path(relpath).parts
    return parts[0] if len(parts) > 1 else Path(relpath).stem


def key_of(relpath: str) -> str:
    """Id suffix: the path below the speaker folder without its suffix (unique in nested trees)."""
    parts = Path(relpath).parts
    return Path(*parts[1:]).with_suffix("").as_posix() if len(parts) > 1 else Path(relpath).stem


def prepare_videos(root: str | Path, progress: bool = True) -> Manifest:
    """Every video under the root (liser.data.audio.MOVIE_SUFFIXES); any other file is listed in `rejected` as skipped."""
    root = check_root(root, "video")
    files, skipped = folder_files(root, MOVIE_SUFFIXES, by_content=False)
    if not files:
        raise LiserError(f"{root}: no video files ({' '.join(sorted(MOVIE_SUFFIXES))}) found")
    cands = [Candidate(rel(p, root), speaker_of(rel(p, root)), key=key_of(rel(p, root))) for p in files]
    m = build_manifest("videos", root, cands, progress)
    m.rejected += [{"path": rel(p, root), "reason": skipped_reason(p, "a video")} for p in skipped]
    return m
