"""Corpus adapters: `prepare_<corpus>(root) -> Manifest`, one module each.

`prepare(name, root)` dispatches by name; `CORPORA` lists what is known.
"""

from __future__ import annotations

from importlib import import_module
from pathlib import Path

from liser.core.errors import LiserError
from liser.data.corpora.base import EMOTIONS, Candidate, canonical_emotion, Item, Manifest, build_manifest, merge_manifests

# name -> module that defines prepare_<name>; imported on demand.
CORPORA = {
    "ravdess": "ravdess",
    "cremad": "cremad",
    "emodb": "emodb",
    "tess": "tess",
    "urdu": "urdu",
    "generic": "generic",
    "unlabeled": "generic",
    "videos": "videos",
    "mspface": "mspface",
}


def prepare(corpus: str, root: str | Path, progress: bool = True, **kwargs) -> Manifest:
    """Build the manifest of `corpus` at `root` (see each adapter for its layout)."""
    key = corpus.lower().replace("-", "").replace("_", "")
    if key not in CORPORA:
        raise LiserError(f"unknown corpus {corpus!r}; known: {', '.join(sorted(CORPORA))}")
    module = import_module(f".{CORPORA[key]}", __name__)
    return getattr(module, f"prepare_{key}")(root, progress=progress, **kwargs)


__all__ = ["CORPORA", "EMOTIONS", "Candidate", "canonical_emotion", "Item", "Manifest", "build_manifest", "merge_manifests", "prepare"]
