"""CREMA-D on the real release (a few actors) and on its quirks; the shipped CREMA-D folds.

The real files are read from `../shared/data/cremad` (Ogg Opus, see its
README); the tests link a few actors' files into `tmp_path` so that each
test prepares a small tree, and skip when the data is absent.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from liser.corpora import base
from liser.errors import LiserError

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
LFS_TEXT = ("version https://git-lfs.github.com/spec/v1\n"
            "oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\nsize 12345\n")


def write_noise(path: Path, seconds: float = 0.5, sr: int = 16_000) -> Path:
    x = 0.1 * np.random.default_rng(len(path.name)).standard_normal(int(seconds * sr))
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), x.astype(np.float32), sr)
    return path


def test_lfs_pointer_is_rejected_by_every_adapter_with_the_reason(tmp_path):
    # The check lives in corpora.base.probe, so every adapter gets it.
    f = tmp_path / "03a01Fa.wav"
    f.write_text(LFS_TEXT)
    with pytest.raises(LiserError, match="^" + re.escape(str(f)) + r": a Git LFS pointer, not audio .*git lfs pull"):
        base.probe(f)
    write_noise(tmp_path / "03a01Wa.wav")
    from liser.corpora.emodb import prepare_emodb

    m = prepare_emodb(tmp_path, progress=False)
    assert [it.path for it in m.items] == ["03a01Wa.wav"]
    assert m.rejected == [{"path": "03a01Fa.wav", "reason": "a Git LFS pointer, not audio (fetch the file itself, e.g. `git lfs pull`)"}]
