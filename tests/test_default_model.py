"""The default model (issue 12): several labeled corpora in one config, their class map, the
leave-one-corpus-out folds, and the packaged int8 ONNX that `liser.load()` / `liser predict FILE` use.

Built from real files of the five corpora in ../shared/data, linked into tmp_path
(3 speakers per corpus, TESS's 2, a few files each).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from liser.core.config import Config
from liser.core.errors import LiserError
from liser.data.folds import check_folds, corpus_folds

from conftest import CORPORA, DEFAULT_CLASSES, _real, fake_store, link_five_corpora


@pytest.fixture(scope="module")
def five(tmp_path_factory):
    """(config, pooled manifest) over the five small corpora, with the default model's classes."""
    from liser.data.workspace import labeled_manifest

    base = tmp_path_factory.mktemp("five")
    roots = link_five_corpora(base / "data")
    cfg = Config.load(Path(__file__).parents[1] / "configs" / "default-model.yaml", extra={
        "labeled": [f"{c}:{roots[c]}" for c in CORPORA], "work": str(base / "work"), "out": str(base / "runs"),
        "epochs": 2, "threads": 1, "val_stride_s": 1.0, "test_stride_s": 1.0})
    return cfg, labeled_manifest(cfg)


# ---------------------------------------------------------------- several corpora, one class set
def test_pooled_manifest_keeps_every_corpus_and_prefixes_speakers(five):
    cfg, m = five
    assert m.corpus == "+".join(CORPORA)
    assert sorted({it.corpus for it in m.items}) == sorted(CORPORA)
    # EmoDB's speaker "03" and a RAVDESS actor can never be one speaker
    assert all(it.speaker.startswith(it.corpus + "/") for it in m.items)
    assert len(m.speakers) == 3 * 4 + 2
    assert all(Path(m.abspath(it)).is_file() for it in m.items)


def test_class_map_onto_the_default_classes(five):
    from liser.data.workspace import fold_items

    cfg, m = five
    raw = {it.id: it.label for it in m.items}
    train, val, test, classes = fold_items(cfg.replace(folds="pooled"), m)
    assert classes == DEFAULT_CLASSES
    got = {it.id: it.label for it in train + val + test}
    assert set(got.values()) == set(DEFAULT_CLASSES)
    for i, label in raw.items():
        if label == "calm":  # RAVDESS calm joins neutral
            assert got[i] == "neutral"
        elif label in ("surprised", "boredom"):  # RAVDESS/TESS surprised and EmoDB boredom are dropped
            assert i not in got
        else:
            assert got[i] == label
    assert "boredom" in raw.values() and "surprised" in raw.values() and "calm" in raw.values()
    # URDU trains only the four classes it has
    assert {got[i] for i in got if i.startswith("urdu/")} == {"neutral", "happy", "sad", "angry"}


def test_class_map_typo_is_an_error(five):
    from liser.data.workspace import fold_items

    cfg, m = five
    with pytest.raises(LiserError, match="class_map: 'clam' is not a label"):
        fold_items(cfg.replace(class_map={"clam": "neutral"}), m)
    with pytest.raises(LiserError, match=r"classes: \['calm'\] not in"):  # calm is mapped away
        fold_items(cfg.replace(classes=("neutral", "calm")), m)


# ---------------------------------------------------------------- leave-one-corpus-out folds
def test_loco_folds_hold_out_a_whole_corpus_without_speaker_leak(five):
    from liser.data.workspace import fold_indices, fold_items, resolve_folds

    cfg, m = five
    folds = resolve_folds(cfg, m)
    assert fold_indices(cfg, m) == [0, 1, 2, 3, 4]
    check_folds(folds, m)  # no speaker in two parts, every speaker used
    for k, held in enumerate(CORPORA):
        f = folds[k]
        assert set(f.test) == {s for s in m.speakers if s.startswith(held + "/")}
        assert not {s.split("/")[0] for s in f.train + f.val} & {held}
        train, val, test, _ = fold_items(cfg.replace(fold=k), m)
        assert {it.corpus for it in test} == {held}
        # every file of the held-out corpus with a default class is tested
        n_held = sum(1 for it in m.items if it.corpus == held and it.label not in ("surprised", "boredom"))
        assert len(test) == n_held
        # validation is drawn per corpus (each other corpus with >= 3 speakers), TESS's 2 speakers only train
        assert {s.split("/")[0] for s in f.val} == set(CORPORA) - {held, "tess"}
        assert {it.speaker for it in train}.isdisjoint({it.speaker for it in val + test})


def test_loco_adapt_halves_the_held_out_corpus_and_keeps_its_labels_out(five):
    """Issue 24's adapted protocol: the held-out corpus's speakers split in two; one half's audio joins the
    pool without its labels, the other half is the test; the training corpora's parts are loco's."""
    from liser.data.workspace import adapt_manifest, fold_items, fold_pool, resolve_folds, teacher_set

    cfg, m = five
    adapt_cfg = cfg.replace(folds="loco-adapt")
    loco, adapt = resolve_folds(cfg, m), resolve_folds(adapt_cfg, m)
    check_folds(adapt, m)  # no speaker in two parts (adapt included), every speaker used
    assert teacher_set(adapt_cfg) == teacher_set(cfg)  # same training speakers: the same teachers
    for k, held in enumerate(CORPORA):
        a, b = adapt[k], loco[k]
        assert (a.train, a.val) == (b.train, b.val)
        assert set(a.adapt) | set(a.test) == set(b.test) and not set(a.adapt) & set(a.test)
        assert len(a.adapt) == len(b.test) // 2 and a.test
        pool = adapt_manifest(adapt_cfg, k, m)
        assert {it.speaker for it in pool.items} == set(a.adapt)
        assert all(it.label == "" and Path(it.path).is_file() for it in pool.items)
        _, _, test, _ = fold_items(adapt_cfg.replace(fold=k), m)
        assert {it.speaker for it in test} == set(a.test)  # the adapted half is never scored
        assert adapt_manifest(cfg, k, m) is None  # plain loco adapts to nothing
    assert len(fold_pool(adapt_cfg.replace(unlabeled=()), 0).items) == len(adapt_manifest(adapt_cfg, 0, m).items)


def test_loco_adapt_student_distils_on_the_unlabeled_half(five, tmp_path):
    """A loco-adapt run reads the teacher's soft labels of the held-out corpus's adapted half (and only them,
    besides the pool) and is tested on the other half."""
    from liser.data.workspace import adapt_manifest
    from liser.student.train import train
    cfg, m = five
    acfg = cfg.replace(folds="loco-adapt", fold=4, unlabeled=(), lambda_sd=1.0, epochs=1,
                       speech_store=str(tmp_path / "store-fold{fold}"), name="adapt")
    pool = adapt_manifest(acfg, 4, m)
    fake_store(tmp_path / "store-fold4", pool.items, DEFAULT_CLASSES, np.random.default_rng(0))
    run = train(acfg, run_dir=tmp_path / "run", progress=False)
    res = json.loads((run / "metrics.json").read_text())
    assert res["n_unlabeled"] == len(pool.items) > 0
    adapted = {it.id for it in pool.items}
    assert res["test_ids"] and not adapted & set(res["test_ids"])
    assert {i.split("/")[0] for i in res["test_ids"]} == {"urdu"}


def test_pooled_fold_tests_speakers_of_every_corpus(five):
    from liser.data.workspace import resolve_folds

    cfg, m = five
    folds = resolve_folds(cfg.replace(folds="pooled"), m)
    assert len(folds) == 1
    f = folds[0]
    assert {s.split("/")[0] for s in f.test} == set(CORPORA) - {"tess"}
    assert {s.split("/")[0] for s in f.val} == set(CORPORA) - {"tess"}
    assert set(f.test).isdisjoint(f.val) and set(f.test).isdisjoint(f.train)
    # the validation speakers are the same draw in the LOCO folds and the pooled fold
    loco = resolve_folds(cfg, m)
    assert set(loco[0].val) <= set(f.val)


def test_split_seed_keeps_the_test_speakers_when_the_run_seed_changes(five):
    """split_seed: the pooled split is drawn with it, not with the run's seed (None: the seed, as before)."""
    from liser.data.workspace import resolve_folds, split_seed

    cfg, m = five
    pooled = cfg.replace(folds="pooled")
    assert resolve_folds(pooled.replace(seed=1, split_seed=0), m) == resolve_folds(pooled, m)
    assert split_seed(pooled.replace(seed=3)) == 3 and split_seed(pooled.replace(seed=3, split_seed=0)) == 0
    speakers = {f"{c}/s{i}": c for c in ("a", "b") for i in range(40)}  # enough speakers for draws to differ
    assert corpus_folds(speakers, ["a", "b"], "pooled", seed=0) != corpus_folds(speakers, ["a", "b"], "pooled", seed=1)


def test_corpus_folds_errors():
    with pytest.raises(LiserError, match="folds 'lopo'"):
        corpus_folds({"a/1": "a"}, ["a"], "lopo")
    with pytest.raises(LiserError, match="corpus 'b' has no speakers"):
        corpus_folds({"a/1": "a", "a/2": "a", "a/3": "a"}, ["a", "b"])
    with pytest.raises(LiserError, match="needs `labeled`"):
        from liser.data.workspace import resolve_folds

        resolve_folds(Config(folds="loco"), None)
    with pytest.raises(LiserError, match="not adapter:root"):
        from liser.data.workspace import labeled_specs

        labeled_specs(Config(labeled=("ravdess",)))


@pytest.fixture(scope="module")
def urdu_out(five):
    """Two epochs of LOCO fold 4 (URDU held out) on the small corpora: the run directory."""
    from liser.student.train import train

    cfg, _ = five
    return train(cfg.replace(fold=4), progress=False)


def test_loco_run_trains_and_tests_on_the_held_out_corpus(five, urdu_out):
    """The run's test files are exactly URDU's; the classes are six."""
    cfg, m = five
    res = json.loads((urdu_out / "metrics.json").read_text())
    assert res["classes"] == DEFAULT_CLASSES
    assert {i.split("/")[0] for i in res["test_ids"]} == {"urdu"}
    assert res["n_test"] == sum(1 for it in m.items if it.corpus == "urdu")
    # URDU has 4 of the 6 classes: UAR is over those (a class without files is no recall)
    rec = res["test"]["per_class_recall"]
    assert rec["fearful"] is None and rec["disgust"] is None and rec["angry"] is not None


def test_bench_loco_table_reads_the_runs(five, urdu_out):
    """bench/bench_default_model.py: the held-out corpus named from the run's config, UAR over its 4 classes."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_dm", Path(__file__).parents[1] / "bench" / "bench_default_model.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    table = bench.loco_table(urdu_out.parent)
    m = json.loads((urdu_out / "metrics.json").read_text())
    assert list(table) == ["urdu"]
    r = table["urdu"]
    assert r["fold"] == 4 and r["files"] == m["n_test"] and r["classes_tested"] == ["neutral", "happy", "sad", "angry"]
    assert r["chance"] == 0.25 and r["uar"] == round(m["test"]["uar"], 4)
    # over the 4 tested classes only, the arg-max can only gain
    assert r["uar_shared_only"] >= r["uar"] - 1e-9
    z = np.array(m["test_logits"])[:, :4].argmax(1)
    y = np.array(m["test_y"])
    assert r["uar_shared_only"] == round(float(np.mean([(z[y == k] == k).mean() for k in range(4)])), 4)
    assert "| urdu |" in bench.markdown(table)


# ---------------------------------------------------------------- the packaged model
def test_load_without_a_path_loads_the_packaged_int8_model():
    import liser
    from liser.inference.default_model import DEFAULT_ONNX, MODEL_CARD

    model = liser.load()
    assert model.source == str(DEFAULT_ONNX)
    assert model.classes == DEFAULT_CLASSES
    assert model.info["kind"] == "onnx" and model.info["quantization"] != "none"
    # static QDQ, not dynamic int8: dynamic int8 convolutions ran ~5x slower per window than static
    # ones on this CPU (MODEL_CARD.md, export); a file re-exported must stay small and fast
    from liser.inference.export import INT8_BUDGET

    assert model.info["quantization"] == "int8-static-qdq" and DEFAULT_ONNX.stat().st_size < INT8_BUDGET
    card = MODEL_CARD.read_text()
    for c in DEFAULT_CLASSES:
        assert c in card


def test_predict_without_a_model_labels_a_real_ravdess_file(capsys):
    import liser
    from liser.cli import main

    wav = _real("ravdess") / "Actor_05" / "03-01-05-02-01-01-05.flac"  # angry, strong intensity
    p = liser.load().predict_file(wav)
    assert main(["predict", str(wav), "--json"]) == 0
    out = json.loads(capsys.readouterr().out.splitlines()[0])
    assert out["path"] == str(wav) and out["label"] in DEFAULT_CLASSES
    assert list(out["probabilities"]) == DEFAULT_CLASSES
    assert abs(sum(out["probabilities"].values()) - 1) < 1e-3
    assert p.label == out["label"]  # the command and the library use the same packaged model


def test_predict_with_a_model_still_takes_it_first(trained_run, capsys):
    from liser.cli import main
    from liser.inference.default_model import model_and_inputs

    wav = _real("ravdess") / "Actor_05" / "03-01-05-02-01-01-05.flac"
    assert model_and_inputs([str(trained_run), str(wav)]) == (str(trained_run), [str(wav)])
    assert model_and_inputs([str(wav)])[1] == [str(wav)]
    with pytest.raises(LiserError, match="no audio to predict"):
        model_and_inputs([str(trained_run)])
    assert main(["predict", str(trained_run), str(wav), "--json"]) == 0
    out = json.loads(capsys.readouterr().out.splitlines()[0])
    assert out["label"] in json.loads((trained_run / "metrics.json").read_text())["classes"]
