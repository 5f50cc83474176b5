"""End to end on real files: teachers -> soft-label stores -> a distilled student -> the grid report.

A tiny random HuBERT stands in for the speech teacher's backbone (the hub is
unreachable); the video teacher is the real FER2013 mini model on real
faces from one interview clip; the unlabeled pool is real TESS audio plus
that clip.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from conftest import DATA, real_root

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def setup(small_config, tmp_path_factory):
    real_root("tess")
    real_root("av")
    if not (DATA.parent / "models" / "fer2013-xception").is_dir():
        pytest.skip("../shared/models/fer2013-xception absent")
    from transformers import HubertConfig, HubertModel

    base = tmp_path_factory.mktemp("pipeline")
    torch.manual_seed(0)
    hub = base / "tiny-hubert"
    HubertModel(HubertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                             conv_dim=(16, 16, 16), conv_stride=(5, 4, 4), conv_kernel=(10, 8, 4),
                             num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)).save_pretrained(hub)
    teacher_yaml = base / "teacher.yaml"
    teacher_yaml.write_text(f"backbone: {hub}\nmode: frozen\nepochs: 2\nbatch_size: 16\ncache_dir: {base / 'cache'}\n")
    tess = base / "tess"
    for folder in ("OAF_happy", "YAF_sad"):
        (tess / folder).mkdir(parents=True)
        for f in sorted((DATA / "tess" / folder).glob("*.opus"))[:3]:
            shutil.copy(f, tess / folder / f.name)
    videos = base / "videos" / "id01"
    videos.mkdir(parents=True)
    clip = min((DATA / "av" / "interviews" / "id01").glob("*.mp4"), key=lambda p: p.stat().st_size)
    shutil.copy(clip, videos / clip.name)
    cfg = small_config.replace(
        name="pipe", out=str(base / "runs"), work=str(base / "work"), epochs=1,
        unlabeled=(f"tess:{tess}", f"videos:{base / 'videos'}"), speech_teacher=str(teacher_yaml),
        speech_store=str(base / "stores" / "speech-fold{fold}"), video_store=str(base / "stores" / "video"),
        video_teacher="fer2013-mini", lambda_sd=1.0, lambda_vd=1.0, weighting="confidence")
    return cfg, base


def test_teachers_stores_and_a_distilled_student(setup):
    from liser.teachers import pipeline as tp
    from liser.teachers.store import SoftLabelStore
    from liser.data.workspace import teacher_dir
    from liser.student.train import train

    cfg, base = setup
    evals = tp.fit_speech_teachers(cfg, progress=False)
    assert [e["fold"] for e in evals] == [0]
    e = evals[0]
    assert 0 <= e["uar"] <= 1 and 0 <= e["uar_pieces"] <= 1
    assert 0 <= e["calibration"]["ece"] <= 1 and e["calibration"]["temperature"] > 0
    assert (teacher_dir(cfg, 0) / "reliability.png").is_file()
    from liser.experiments.report import teacher_summary  # what a grid's JSON reports for the paper's open question 1

    summary = teacher_summary(cfg)
    assert summary["val_ece_per_fold"] == [round(e["calibration"]["ece"], 4)]
    assert summary["val_ece_tempered_mean"] == round(e["calibration"]["ece_tempered"], 4)
    assert summary["uar_pieces_per_fold"] == [round(e["uar_pieces"], 4)]

    tp.label_speech(cfg, progress=False)
    speech = SoftLabelStore(cfg.speech_store.format(fold=0))
    assert len(speech) == 7 and speech.classes == json.loads((teacher_dir(cfg, 0) / "teacher.json").read_text())["classes"]
    assert speech.meta["teacher_hash"] == e["hash"]
    assert speech.valid[:].all()  # audio pieces always have a speech target

    tp.label_video(cfg, progress=False)
    video = SoftLabelStore(cfg.video_store)
    assert len(video) == 1 and len(video.classes) == 7
    probs, valid = video.pieces(video.ids[0])
    assert valid.mean() > 0.5  # an interview clip: a face in most pieces
    assert abs(float(probs[valid].astype("float32").sum(1).mean()) - 1) < 1e-2

    run = train(cfg, progress=False)
    m = json.loads((run / "metrics.json").read_text())
    assert m["n_unlabeled"] == 7
    with open(run / "epochs.csv") as f:
        row = next(csv.DictReader(f))
    assert float(row["sd"]) > 0 and float(row["vd"]) > 0
    assert len(m["video_head_by_class"]) == len(m["classes"]) and len(m["video_head_by_class"][0]) == 7

    # a second labeling pass finds everything done and leaves the stores as they are
    before = (Path(cfg.speech_store.format(fold=0)) / "probs.npy").stat().st_mtime_ns
    tp.label_speech(cfg, progress=False)
    assert (Path(cfg.speech_store.format(fold=0)) / "probs.npy").stat().st_mtime_ns == before


def test_grid_report(setup):
    import yaml

    from liser.experiments.grid import run_grid

    cfg, base = setup
    cfg_file = base / "base.yaml"
    cfg.save(cfg_file)
    grid = base / "grid.yaml"
    grid.write_text(yaml.safe_dump({
        "base": str(cfg_file), "out": str(base / "grid"), "jobs": 1,
        "runs": {"no-dstl": {"lambda_sd": 0.0, "lambda_vd": 0.0},
                 "vid-sp-dstl": {"lambda_sd": [0.5, 1.0], "weighting": "none"}},
        "fractions": [0.5, 1.0], "fraction_runs": ["no-dstl"]}))
    res = run_grid(grid, progress=False)
    t2 = res["configs"]["vid-sp-dstl"]["1"]
    assert t2["n_folds"] == 1 and t2["folds"][0]["variant"] in ("lsd0.5", "lsd1")
    # the variant kept is the one with the best validation UAR, never chosen on test
    vals = {}
    for v in ("lsd0.5", "lsd1"):
        vals[v] = json.loads((base / "grid" / "vid-sp-dstl" / v / "fold0" / "metrics.json").read_text())["val"]["uar"]
    assert vals[t2["folds"][0]["variant"]] == max(vals.values())
    # each searched value is also summarised held fixed, from the same runs
    assert {v: s["val_uar_mean"] for v, s in t2["variants"].items()} == pytest.approx(vals)
    assert set(res["configs"]["no-dstl"]) == {"0.5", "1"}
    report = (base / "grid" / "report.md").read_text()
    for heading in ("Table 2 analogue", "Label fraction", "What g_vd learned", "Teachers", "Provenance",
                    "Unlabeled data in the teachers' stores", "Searched values held fixed"):
        assert heading in report, heading
    assert (base / "grid" / "label_fraction.png").is_file()
    # re-running finds every run finished and trains nothing
    assert run_grid(grid, progress=False)["runs_trained"] == 0


def test_report_of_a_multi_corpus_grid_names_its_corpora(tmp_path):
    """A grid over `labeled` corpora (the default model's) is reported under those corpora, not the single-corpus
    default, and without the paper's RAVDESS line."""
    from liser.core.config import Config
    from liser.experiments.report import write_report

    cfg = Config.load(Path(__file__).resolve().parents[1] / "configs" / "default-model-field.yaml")
    results = {"configs": {}, "runs_total": 0, "runs_trained": 0, "wall_s": 0, "jobs": 1}
    text = write_report(tmp_path, results, cfg, "configs/grid-default-model-min-steps.yaml").read_text()
    assert text.startswith("# liser experiment report: ravdess, cremad, emodb, tess, urdu\n")
    assert "- labeled data: ravdess:../shared/data/ravdess, cremad:" in text and "folds `loco`" in text
    assert "The paper's RAVDESS figures" not in text
