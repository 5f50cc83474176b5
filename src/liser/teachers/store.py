"""The soft-label store: a teacher's probabilities for every 0.5 s piece of every item.

One store per (teacher, corpus). On disk, a directory:

    meta.json    teacher name, class names, teacher hash, piece length, counts
    index.csv    item id, first row, number of pieces, duration
    probs.npy    float16 [total pieces, K]   (memory-mapped on open)
    views.npy    float16 [V, total pieces, K] the teacher on V waveform views of each item, piece for piece
                                              (format 2 with "views" > 0 in meta.json; teach_views)
    valid.npy    bool    [total pieces]      (False = the teacher had nothing to say:
                                              e.g. no face in that piece of video)
    rejected.csv item id, reason
    parts/       what a labeling job has written so far (one .npz per flush and shard)

Labeling appends to `parts/` as it goes, so an interrupted job resumes by
skipping the items already there, and `--shard I/N` jobs write their own
parts; `StoreWriter.finalize()` merges every part into the two arrays. A
writer refuses a directory whose teacher hash or classes differ from its own:
a changed teacher gives a new store, never a silently mixed one.

Reading the pieces of a 3 s window is O(window): the index gives the row
range of the item, and the window's pieces are a slice of it.

Format 2 adds the views: `views` (V) and `views_key` (which chains:
liser.data.views.ViewSpec.tag) in meta.json and head.json. A view keeps its
item's length, so its pieces share the item's rows and valid mask (the
speech is where it was). A format-1 store (no views) still reads as V = 0.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from liser.data.audio import CLIP_S, PIECE_S
from liser.core.errors import LiserError
from liser.core.atomic import atomic_path, atomic_write_text, temp_folder

STORE_FORMAT = 2  # 2: meta.json may name views (views.npy); stores without "format" are format 1 (no views)


def sha256_file(path: Path, h=None):
    """Feed a file's bytes to a sha256 (a new one unless given): teachers' identities hash their weights."""
    import hashlib

    h = h or hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h


def n_pieces(duration: float, piece_s: float = PIECE_S) -> int:
    """Pieces of an item: whole pieces, plus a last partial one when it holds at least half a piece."""
    whole = int(math.floor(duration / piece_s + 1e-9))
    rest = duration - whole * piece_s
    return max(1, whole + (1 if rest >= piece_s / 2 else 0))


def window_pieces(start_s: float, piece_s: float = PIECE_S, length_s: float = CLIP_S) -> tuple[int, int]:
    """Pieces [a, b) whose centre lies inside the window [start_s, start_s + length_s)."""
    a = int(math.ceil((start_s / piece_s) - 0.5 - 1e-9))
    b = int(math.ceil(((start_s + length_s) / piece_s) - 0.5 - 1e-9))
    return max(a, 0), b


@dataclass
class _Entry:
    row: int
    n: int
    duration: float


class SoftLabelStore:
    """Read side: open a finalized store (memory-mapped) and look up pieces and windows."""

    def __init__(self, path: str | Path):
        path = Path(path)
        meta_file = path / "meta.json"
        if not meta_file.is_file() or not (path / "probs.npy").is_file():
            raise LiserError(f"{path}: not a finalized soft-label store (no meta.json / probs.npy)")
        self.path = path
        self.meta = json.loads(meta_file.read_text())
        self.classes: list[str] = list(self.meta["classes"])
        self.piece_s: float = float(self.meta["piece_s"])
        self.teacher: str = self.meta["teacher"]
        self.teacher_hash: str = self.meta["teacher_hash"]
        self.probs = np.load(path / "probs.npy", mmap_mode="r")
        self.valid = np.load(path / "valid.npy", mmap_mode="r")
        self.views: int = int(self.meta.get("views", 0))  # teacher labels on this many views (0: clean only)
        self.views_key: str = self.meta.get("views_key", "")
        self.view_probs = np.load(path / "views.npy", mmap_mode="r") if self.views else None
        if self.views and self.view_probs.shape != (self.views, *self.probs.shape):
            raise LiserError(f"{path}: views.npy is {self.view_probs.shape}, meta.json names {self.views} views "
                             f"of {self.probs.shape}")
        if self.probs.shape[1] != len(self.classes):
            raise LiserError(f"{path}: probs have {self.probs.shape[1]} classes but meta.json names {len(self.classes)}")
        self.index: dict[str, _Entry] = {}
        with open(path / "index.csv", newline="") as f:
            for row in csv.DictReader(f):
                self.index[row["id"]] = _Entry(int(row["row"]), int(row["n"]), float(row["duration"]))

    def __contains__(self, item_id: str) -> bool:
        return item_id in self.index

    def __len__(self) -> int:
        return len(self.index)

    @property
    def ids(self) -> list[str]:
        return list(self.index)

    def pieces(self, item_id: str) -> tuple[np.ndarray, np.ndarray]:
        """All pieces of an item: (probs [P, K] float16 view, valid [P] bool view)."""
        e = self.index[item_id]
        return self.probs[e.row : e.row + e.n], self.valid[e.row : e.row + e.n]

    def file_probs(self, item_id: str) -> np.ndarray:
        """The teacher's answer for a whole item: the mean of its valid pieces (of all, when none is valid),
        [K] float32."""
        probs, valid = self.pieces(item_id)
        return np.asarray(probs[valid] if valid.any() else probs, np.float32).mean(0)

    def window(self, item_id: str, start_s: float, length_s: float = CLIP_S, view: int = 0) -> tuple[np.ndarray, int]:
        """Mean probabilities of the valid pieces inside a window, and how many there were.

        Returns (probs [K] float32, n_valid). With n_valid == 0 the window has
        no target (the caller gives it no distillation loss). `view`: 0 the
        clean recording, 1..views the teacher on that view (IndexError beyond).
        """
        e = self.index[item_id]
        a, b = window_pieces(start_s, self.piece_s, length_s)
        a, b = min(a, e.n), min(b, e.n)
        if b <= a:  # window past the end (padding): use the last piece(s)
            a, b = max(e.n - 1, 0), e.n
        if not 0 <= view <= self.views:
            raise IndexError(f"{self.path}: view {view} of a store with {self.views} views")
        src = self.probs if view == 0 else self.view_probs[view - 1]
        p = np.asarray(src[e.row + a : e.row + b], dtype=np.float32)
        v = np.asarray(self.valid[e.row + a : e.row + b])
        if not v.any():
            return np.zeros(len(self.classes), np.float32), 0
        return p[v].mean(axis=0), int(v.sum())

    def context(self, item_id: str, start_s: float, length_s: float, context_s: float) -> tuple[float, float]:
        """The window of at least `context_s` seconds around [start_s, start_s + length_s), inside the item:
        (start, length) in seconds. A shorter item gives the whole item; `context_s` <= length_s the window itself."""
        if context_s <= length_s:
            return start_s, length_s
        duration = self.index[item_id].duration
        start = min(max(start_s + length_s / 2 - context_s / 2, 0.0), max(duration - context_s, 0.0))
        return start, min(context_s, max(duration - start, length_s))

    def at_times(self, item_id: str, times_s: np.ndarray, view: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """The teacher's piece under each instant: (probs [T, K] float32, valid [T] bool).

        `times_s` [T] are seconds from the recording's start; an instant past
        the last piece, or on a piece without speech, is not valid (zeros).
        `view` as in `window`. For per-step targets (Config.piece_targets).
        """
        e = self.index[item_id]
        if not 0 <= view <= self.views:
            raise IndexError(f"{self.path}: view {view} of a store with {self.views} views")
        src = self.probs if view == 0 else self.view_probs[view - 1]
        j = np.floor(np.asarray(times_s, np.float64) / self.piece_s).astype(np.int64)
        inside = (j >= 0) & (j < e.n)
        rows = e.row + np.clip(j, 0, max(e.n - 1, 0))
        p = np.asarray(src[rows], dtype=np.float32)
        valid = inside & np.asarray(self.valid[rows], dtype=bool)
        p[~valid] = 0.0
        return p, valid


class StoreWriter:
    """Write side: resumable, shardable labeling into a store directory."""

    def __init__(self, path: str | Path, teacher: str, classes: list[str], teacher_hash: str,
                 piece_s: float = PIECE_S, shard: tuple[int, int] = (0, 1), extra: dict | None = None,
                 flush_every: int = 64, views: int = 0, views_key: str = ""):
        from liser.core.outputs import STORE, check_out_dir

        self.path = check_out_dir(path, STORE)
        self.meta = {"format": STORE_FORMAT, "teacher": teacher, "classes": list(classes),
                     "teacher_hash": teacher_hash, "piece_s": float(piece_s), **(extra or {})}
        self.views = int(views)
        if self.views:
            self.meta.update(views=self.views, views_key=views_key)
        self.shard = shard
        self.flush_every = flush_every
        (self.path / "parts").mkdir(parents=True, exist_ok=True)
        head = self.path / "head.json"  # the identity of the store, fixed at creation
        ident = {k: self.meta[k] for k in ("teacher", "classes", "teacher_hash", "piece_s", "views", "views_key")
                 if k in self.meta}
        if head.is_file():
            old = json.loads(head.read_text())
            for k in [*ident, *(k for k in old if k not in ident)]:  # a key either side lacks differs too
                if old.get(k) != ident.get(k):
                    raise LiserError(f"{self.path}: store was made by another teacher or on other views ({k}: "
                                     f"{old.get(k)!r} != {ident.get(k)!r}); use a new store directory")
        else:
            atomic_write_text(head, json.dumps(ident, indent=2) + "\n")
        self.done: set[str] = set()
        for part in self._parts():
            with np.load(part) as z:
                self.done.update(str(i) for i in z["ids"])
        self.rejected = self._read_rejected()
        self.done.update(self.rejected)
        self._rej_file = self.path / "parts" / f"rejected-{shard[0]}of{shard[1]}.csv"
        self._buf: list[tuple[str, np.ndarray, np.ndarray, float, np.ndarray | None]] = []

    def _parts(self) -> list[Path]:
        """Every shard's finished parts. Only `part-*.npz`: a part being written has a hidden
        temporary name until its rename, so another shard (or a job that died mid-write and left
        one behind) never reads it half-written."""
        return sorted((self.path / "parts").glob("part-*.npz"))

    def _read_rejected(self) -> dict[str, str]:
        """Rejections of every shard, as on disk now (other shards may have added some)."""
        out = {}
        for f in sorted((self.path / "parts").glob("rejected-*.csv")):
            with open(f, newline="") as fh:
                for row in csv.DictReader(fh):
                    out[row["id"]] = row["reason"]
        return out

    def add(self, item_id: str, probs: np.ndarray, valid: np.ndarray, duration: float,
            views: np.ndarray | None = None) -> None:
        """One item's pieces: probs [P, K], valid [P], and for a store with V views their probs [V, P, K]."""
        probs = np.asarray(probs, dtype=np.float32)
        valid = np.asarray(valid, dtype=bool)
        if self.views and (views is None or np.shape(views) != (self.views, *probs.shape)):
            raise ValueError(f"{self.path}: {item_id} needs its {self.views} views' probs {(self.views, *probs.shape)}, "
                             f"got {None if views is None else np.shape(views)}")
        if probs.ndim != 2 or probs.shape[1] != len(self.meta["classes"]):
            raise LiserError(f"{self.path}: teacher gave {probs.shape[-1]} classes for {item_id}, "
                             f"the store holds {len(self.meta['classes'])}")
        if valid.shape != (probs.shape[0],):
            raise ValueError(f"valid mask shape {valid.shape} != ({probs.shape[0]},)")
        self._buf.append((item_id, probs, valid, float(duration), None if views is None else np.asarray(views)))
        self.done.add(item_id)
        if len(self._buf) >= self.flush_every:
            self.flush()

    def reject(self, item_id: str, reason: str) -> None:
        self.rejected[item_id] = reason
        self.done.add(item_id)
        new = not self._rej_file.exists()
        with open(self._rej_file, "a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(["id", "reason"])
            w.writerow([item_id, reason])

    def flush(self) -> None:
        if not self._buf:
            return
        ids = np.array([b[0] for b in self._buf])
        lens = np.array([len(b[1]) for b in self._buf], dtype=np.int64)
        durs = np.array([b[3] for b in self._buf], dtype=np.float64)
        probs = np.concatenate([b[1] for b in self._buf]).astype(np.float16)
        valid = np.concatenate([b[2] for b in self._buf])
        extra = {"views": np.concatenate([b[4] for b in self._buf], axis=1).astype(np.float16)} if self.views else {}
        i, n = self.shard
        k = len(list((self.path / "parts").glob(f"part-{i}of{n}-*.npz")))
        # the pid keeps two processes on the same shard from overwriting each other's part
        final = self.path / "parts" / f"part-{i}of{n}-{k:05d}-{os.getpid()}.npz"
        with atomic_path(final, suffix=".npz") as tmp:  # a dot name, never a part- one: see _parts
            np.savez(tmp, ids=ids, lens=lens, durs=durs, probs=probs, valid=valid, **extra)
        self._buf.clear()

    def _read_rows(self) -> dict[str, tuple[np.ndarray, np.ndarray, float, np.ndarray | None]]:
        """{item id: (probs [P, K], valid [P], duration, view probs [V, P, K] or None)} of every shard's parts."""
        rows = {}
        for part in self._parts():
            # each z[...] access decompresses the whole member again: read every array once, and
            # copy the slices so that no row keeps a whole part alive (a 50 h store needed > 24 GB)
            with np.load(part) as z:
                ids, lens, durs, probs_p, valid_p = z["ids"], z["lens"], z["durs"], z["probs"], z["valid"]
                views_p = z["views"] if self.views else None
            off = 0
            for item_id, n, d in zip(ids, lens, durs):
                v = None if views_p is None else views_p[:, off : off + n].copy()
                rows[str(item_id)] = (probs_p[off : off + n].copy(), valid_p[off : off + n].copy(), float(d), v)
                off += n
        return rows

    def finalize(self, expected_ids: list[str] | None = None) -> SoftLabelStore:
        """Merge every part (all shards) into probs.npy / valid.npy / index.csv.

        With `expected_ids`, refuses to finalize while some are neither labeled
        nor rejected (e.g. another shard still running), and orders rows by it.
        """
        self.flush()
        self.rejected = self._read_rejected()
        rows = self._read_rows()
        order = list(rows)
        if expected_ids is not None:
            missing = [i for i in expected_ids if i not in rows and i not in self.rejected]
            if missing:
                raise LiserError(f"{self.path}: {len(missing)} items not labeled yet (e.g. {missing[0]}); "
                                 "finish the other shards first")
            order = [i for i in expected_ids if i in rows]
        k = len(self.meta["classes"])
        total = sum(len(rows[i][0]) for i in order)
        probs = np.zeros((total, k), np.float16)
        valid = np.zeros(total, bool)
        views = np.zeros((self.views, total, k), np.float16) if self.views else None
        index, r = [], 0
        for i in order:
            p, v, d, vp = rows[i]
            probs[r : r + len(p)] = p
            valid[r : r + len(p)] = v
            if views is not None:
                views[:, r : r + len(p)] = vp
            index.append((i, r, len(p), d))
            r += len(p)
        tmp = temp_folder(self.path, ".final.")
        try:
            np.save(tmp / "probs.npy", probs)
            np.save(tmp / "valid.npy", valid)
            arrays = ("probs.npy", "valid.npy", "index.csv", "rejected.csv")
            if views is not None:
                np.save(tmp / "views.npy", views)
                arrays += ("views.npy",)
            with open(tmp / "index.csv", "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["id", "row", "n", "duration"])
                w.writerows(index)
            with open(tmp / "rejected.csv", "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["id", "reason"])
                w.writerows(sorted(self.rejected.items()))
            from liser import __version__

            meta = {**self.meta, "items": len(order), "pieces": int(total), "valid_pieces": int(valid.sum()),
                    "rejected": len(self.rejected), "liser_version": __version__}
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
            # meta.json last: a store is readable only once all its arrays are in place
            for name in (*arrays, "meta.json"):
                os.replace(tmp / name, self.path / name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return SoftLabelStore(self.path)


def store_complete(path: str | Path, ids, teacher_hash: str, views: int = 0, views_key: str = "") -> bool:
    """True when `path` is a finalized store of this teacher (and these views) covering every id (labeled or
    rejected)."""
    path = Path(path)
    if not (path / "meta.json").is_file():
        return False
    meta = json.loads((path / "meta.json").read_text())
    if meta.get("teacher_hash") != teacher_hash or (meta.get("views", 0), meta.get("views_key", "")) != (views, views_key):
        return False
    done = set()
    for name in ("index.csv", "rejected.csv"):
        if (path / name).is_file():
            with open(path / name, newline="") as f:
                done.update(row["id"] for row in csv.DictReader(f))
    return set(ids) <= done
