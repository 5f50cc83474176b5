"""bench/gpu_distill.sh (issue 24 section 4), end to end on the CPU with tiny stand-ins: a tiny random HuBERT with
LoRA as every fold's teacher, a few real files of each of the five corpora, two interview videos as the pool, one
epoch everywhere. It must fit the five teachers, label both stores, train the grid's no-dstl, unseen-dstl and
adapted-dstl students, and write the two tables, each distilled row paired with its own grid's baseline on the same
test files. What it measures on a GPU is not asserted here: only that the prepared script runs as written.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import CORPORA, link_five_corpora, real_root

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_distill_script_runs_the_protocols_with_a_lora_teacher(tmp_path, tiny_hubert):
    roots = link_five_corpora(tmp_path / "data")
    pool = tmp_path / "pool"
    pool.mkdir()
    for f in sorted((real_root("av") / "interviews" / "id01").glob("*.mp4"))[:2]:
        (pool / f.name).symlink_to(f)
    teacher = tmp_path / "teacher.yaml"
    teacher.write_text(yaml.safe_dump({"backbone": tiny_hubert, "mode": "lora", "epochs": 1, "batch_size": 4,
                                       "max_seconds": 2.0, "device": "cpu", "threads": 1, "vad": False}))
    tiny = {"labeled": [f"{c}:{roots[c]}" for c in CORPORA], "unlabeled": [f"videos:{pool}"],
            "epochs": 1, "threads": 1, "val_stride_s": 1.0, "test_stride_s": 1.0, "aug_views": 1,
            "aug_noise_dir": "", "speech_teacher": str(teacher), "work": str(tmp_path / "work")}
    grid = yaml.safe_load((REPO / "configs" / "grid-distill-protocols-lora.yaml").read_text())
    grid.update(base=str(REPO / "configs" / "default-model-distill.yaml"), out=str(tmp_path / "runs"),
                ledger=str(tmp_path / "ledger"), set={**grid["set"], **tiny})
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump(grid))
    sets = [f"{k}={json.dumps(v) if isinstance(v, list) else v}" for k, v in tiny.items()]
    env = {**os.environ, "GRID": str(tmp_path / "grid.yaml"), "TEACHER": str(teacher), "WORK": str(tmp_path / "work"),
           "OUT": str(tmp_path), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", str(REPO / "bench" / "gpu_distill.sh"), *sets], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    res = json.loads((tmp_path / "distill_protocols_lora.json").read_text())
    assert set(res["unseen"]) == set(CORPORA) and set(res["adapted"]) == set(CORPORA)
    for table in ("unseen", "adapted"):
        for corpus, row in res[table].items():
            assert row["files"] > 0 and 0 <= row["student"] <= 1 and 0 <= row["no_dstl"] <= 1, (table, corpus, row)
            assert row["teacher"] is not None  # the fold's LoRA teacher, scored on the same files
    assert "seeds" not in res and "target_rows" not in res  # nothing read from the CPU teacher's grids
    for row, pooled in (("no-dstl", False), ("unseen-dstl", True), ("adapted-dstl", True)):
        runs = list((tmp_path / "runs" / row).glob("*/fold*/metrics.json"))
        assert len(runs) == 5, (row, runs)
        for metrics in runs:
            assert (json.loads(metrics.read_text())["n_unlabeled"] > 0) == pooled, metrics  # taught by the store or not
    teachers = list((tmp_path / "work" / "teachers").glob("*/speech-fold*/adapter.safetensors"))
    assert len(teachers) == 5, teachers
