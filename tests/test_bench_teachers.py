"""bench/bench_teachers.py --speech-eval-only: the speech figures of the fitted teachers, nothing refitted."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_teachers.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_teachers", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def fitted(small_config, tmp_path_factory):
    """The small set's one fold fitted by the pipeline with a random tiny HuBERT (2 epochs, pieces too)."""
    from transformers import HubertConfig, HubertModel

    from liser.teachers import pipeline as tp

    base = tmp_path_factory.mktemp("bench-teachers")
    torch.manual_seed(0)
    HubertModel(HubertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                             conv_dim=(16, 16, 16), conv_stride=(5, 4, 4), conv_kernel=(10, 8, 4),
                             num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)).save_pretrained(base / "hub")
    yaml = base / "teacher.yaml"
    yaml.write_text(f"backbone: {base / 'hub'}\nmode: frozen\nepochs: 2\nbatch_size: 16\nhead: concat\n"
                    f"train_pieces: true\ncache_dir: {base / 'cache'}\n")
    cfg = small_config.replace(name="bt", work=str(base / "work"), speech_teacher=str(yaml))
    return cfg, tp.fit_speech_teachers(cfg, progress=False)


def test_figures_are_the_eval_json_ones(bench, fitted, tmp_path):
    from liser.data.workspace import teacher_dir

    cfg, evals = fitted
    stamp = {p: p.stat().st_mtime_ns for p in teacher_dir(cfg, 0).iterdir()}
    fig = bench.speech_eval_figures(cfg)
    assert {p: p.stat().st_mtime_ns for p in teacher_dir(cfg, 0).iterdir()} == stamp  # nothing refitted or rewritten
    assert fig["speech_teacher_piece_uar_mean"] == pytest.approx(evals[0]["uar_pieces"])
    assert fig["speech_teacher_uar_mean"] == pytest.approx(evals[0]["uar"])
    assert fig["speech_teacher_val_ece_tempered_mean"] == pytest.approx(evals[0]["calibration"]["ece_tempered"])
    assert fig["speech_teacher_hashes"] == [evals[0]["hash"]]

    out = tmp_path / "teachers.json"
    out.write_text(json.dumps({"date": "2026-11-23", "command": "old", "face_fps": 97.4,
                               "speech_teacher_uar_mean": 0.1}))
    bench.update_speech_figures(out, fig, "cfg.yaml", "python bench_teachers.py --speech-eval-only")
    res = json.loads(out.read_text())
    assert res["face_fps"] == 97.4 and res["date"] == "2026-11-23" and "2026-11-23" in res["note"]
    assert res["speech_teacher_uar_mean"] == fig["speech_teacher_uar_mean"]
    assert res["speech_teacher_piece_uar_mean"] == fig["speech_teacher_piece_uar_mean"]


def test_an_eval_of_another_teacher_is_refused(bench, fitted, tmp_path):
    import shutil

    cfg, _ = fitted
    other = cfg.replace(work=str(tmp_path / "work"))
    from liser.data.workspace import teacher_dir

    shutil.copytree(teacher_dir(cfg, 0), teacher_dir(other, 0))
    ev = teacher_dir(other, 0) / "eval.json"
    ev.write_text(json.dumps({**json.loads(ev.read_text()), "hash": "0" * 64}))
    with pytest.raises(SystemExit, match="teacher_hash"):
        bench.speech_eval_figures(other)
    ev.unlink()
    with pytest.raises(SystemExit, match="missing"):
        bench.speech_eval_figures(other)
