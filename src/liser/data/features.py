"""The features cache: log-Mel of every item of a manifest, computed once, memory-mapped.

A cache is a directory `<work>/features/<corpus>-<key>/` holding
`feats.npy` (float16 [total frames, 64]: the frames of every item, one after
the other), `index.csv` (id, first row, frames) and `meta.json`. The key
hashes the manifest's fingerprint and the front-end settings, so a changed
corpus or a changed front end gives a new cache instead of stale features.
Training reads 94-frame windows from it; nothing is recomputed per epoch.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from liser.core.errors import LiserError
from liser.data.frontend import CACHE_SETTINGS as FRONT_END
from liser.data.frontend import file_features
from liser.core.atomic import temp_folder
from liser.data.workspace import features_dir


class FeatureCache:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not (self.path / "meta.json").is_file():
            raise LiserError(f"{self.path}: not a features cache")
        self.meta = json.loads((self.path / "meta.json").read_text())
        self.feats = np.load(self.path / "feats.npy", mmap_mode="r")
        self.index: dict[str, tuple[int, int]] = {}
        with open(self.path / "index.csv", newline="") as f:
            for row in csv.DictReader(f):
                self.index[row["id"]] = (int(row["row"]), int(row["n"]))

    def __contains__(self, item_id: str) -> bool:
        return item_id in self.index

    def frames(self, item_id: str) -> np.ndarray:
        """[frames, 64] float16 view of one item."""
        r, n = self.index[item_id]
        return self.feats[r : r + n]

    def n_frames(self, item_id: str) -> int:
        return self.index[item_id][1]

    def load_into_memory(self) -> "FeatureCache":
        """Read the whole array into RAM (training touches every item each epoch)."""
        self.feats = np.ascontiguousarray(self.feats)
        return self


def cache_key(manifest) -> str:
    h = hashlib.sha256(manifest.fingerprint().encode())
    h.update(json.dumps(FRONT_END, sort_keys=True).encode())
    return h.hexdigest()[:12]


def build_features(manifest, work: str | Path = "work", threads: int = 2, progress: bool = True,
                   featurize=None, key_suffix: str = "", desc: str = "log-Mel") -> FeatureCache:
    """Compute (or reuse) the features cache of a manifest; returns it opened.

    Files are decoded in a thread pool (libsndfile and soxr release the GIL)
    and the result is written under a temporary name, renamed when complete.
    The cache is all-or-nothing: an interrupted build starts again from the
    first file (it takes minutes per corpus hour, see the README's figures).
    `featurize(path, item) -> [frames, 64]` replaces `file_features` for a
    derived cache (liser.data.views: augmented copies), keyed apart by `key_suffix`.
    """
    from tqdm import tqdm

    featurize = featurize or (lambda path, item: file_features(path))
    out = features_dir(work, manifest.corpus, cache_key(manifest) + key_suffix)
    if (out / "meta.json").is_file():
        return FeatureCache(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    items = manifest.items
    chunks: list[np.ndarray] = [None] * len(items)  # type: ignore[list-item]
    bar = tqdm(total=len(items), desc=f"{desc} {manifest.corpus}", unit="file", disable=None if progress else True, leave=False)
    seconds = 0.0
    with ThreadPoolExecutor(max(1, threads)) as pool:
        futures = {pool.submit(featurize, manifest.abspath(it), it): i for i, it in enumerate(items)}
        for fut in futures:
            i = futures[fut]
            chunks[i] = fut.result()  # a LiserError names the file
            seconds += items[i].duration
            bar.update(1)
            bar.set_postfix(audio_h=f"{seconds / 3600:.2f}")
    bar.close()
    tmp = temp_folder(out.parent, f".{out.name}.")
    try:
        rows, r = [], 0
        for it, c in zip(items, chunks):
            rows.append((it.id, r, len(c)))
            r += len(c)
        np.save(tmp / "feats.npy", np.concatenate(chunks))
        with open(tmp / "index.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["id", "row", "n"])
            w.writerows(rows)
        from liser import __version__

        meta = {"corpus": manifest.corpus, "derived": key_suffix, "manifest_fingerprint": manifest.fingerprint(), "front_end": FRONT_END,
                "items": len(items), "frames": r, "audio_hours": round(seconds / 3600, 4), "liser_version": __version__}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return FeatureCache(out)


def normalisation_stats(cache: FeatureCache, ids: list[str], center: bool | str = False,
                        keep: np.ndarray | None = None, range_db: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Per-Mel-band mean and std [n_mels] over the frames of the given (training) items.

    range_db > 0 first raises each item's cells to at least its loudest cell minus range_db dB: what an
    `input_range_db` student sees (it clamps per window; the item's loudest cell stands in for each window's,
    close enough for a standardisation that BatchNorm follows).

    center=True then subtracts each item's mean level (over frames and bands; over the `keep` bands only when
    given, bool [n_mels]): the statistics of what a `level_norm` student sees after its own per-window
    centring; center="band" subtracts each item's mean per band (what a `channel_norm` student sees).
    """
    total = np.zeros(cache.feats.shape[1], np.float64)
    sq = np.zeros_like(total)
    n = 0
    for i in ids:
        x = np.asarray(cache.frames(i), dtype=np.float64)
        if range_db > 0:
            x = np.maximum(x, x.max() - range_db)
        if center == "band":
            x = x - x.mean(axis=0)
        elif center:
            x = x - (x.mean() if keep is None else x[:, keep].mean())
        total += x.sum(0)
        sq += np.square(x).sum(0)
        n += len(x)
    mean = total / max(n, 1)
    std = np.sqrt(np.maximum(sq / max(n, 1) - mean**2, 1e-12))
    return mean.astype(np.float32), std.astype(np.float32)
