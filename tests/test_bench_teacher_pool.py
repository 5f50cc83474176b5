"""bench/bench_teacher_pool.py: a speech store scored against the labels of the pool corpora it labeled."""

import json

import numpy as np

from conftest import DEFAULT_CLASSES, link_five_corpora, load_bench


def test_pool_store_scored_by_path_through_two_adapters_with_dropped_classes(tmp_path):
    from liser.core.config import Config
    from liser.teachers.store import StoreWriter
    from liser.data.workspace import unlabeled_manifests

    bench = load_bench("bench_teacher_pool")
    roots = link_five_corpora(tmp_path / "data")
    # EmoDB through its own adapter; CREMA-D through the generic one, so its labels come from --as
    cfg = Config(work=str(tmp_path / "work"), unlabeled=(f"emodb:{roots['emodb']}", f"unlabeled:{roots['cremad']}"))
    labels, skipped = bench.pool_labels(cfg, {"unlabeled": "cremad"}, cfg.work)
    assert skipped == []
    pool = [it for m in unlabeled_manifests(cfg) for it in m.items]
    assert {c for c, _ in labels.values()} == {"emodb", "cremad"} and len(labels) == len(pool)
    assert "boredom" in {lab for c, lab in labels.values() if c == "emodb"}

    # Each item: one confident right piece (0.9) and one less confident wrong one (0.6): pieces are half
    # right at confidence 0.75, files always right, and confidence ranks right above wrong (AUROC 1).
    w = StoreWriter(tmp_path / "store", "fake", DEFAULT_CLASSES, "h")
    for it in pool:
        lab = labels[it.id][1]
        k = DEFAULT_CLASSES.index(lab) if lab in DEFAULT_CLASSES else 0
        right = np.full(6, 0.02); right[k] = 0.9
        wrong = np.full(6, 0.08); wrong[(k + 1) % 6] = 0.6
        w.add(it.id, np.stack([right, wrong]), np.array([True, True]), 1.0)
    store = w.finalize()
    res = bench.score_store(store, labels, {})
    assert set(res) == {"emodb", "cremad"}
    for corpus, r in res.items():
        assert np.isclose(r["piece_accuracy"], 0.5) and np.isclose(r["piece_mean_confidence"], 0.75)
        # bin 0.9: all right (gap 0.1); bin 0.6: all wrong (gap 0.6); half the pieces each (float16 store)
        assert np.isclose(r["piece_ece"], 0.5 * 0.1 + 0.5 * 0.6, atol=1e-3)
        assert r["piece_confidence_auroc"] == 1.0 and r["file_uar"] == 1.0
    assert res["emodb"]["dropped"] == {"boredom": 3}  # no teacher class: counted, never scored
    assert "boredom" not in res["emodb"]["classes"] and res["cremad"]["dropped"] == {}
    assert res["emodb"]["files"] == sum(1 for c, lab in labels.values() if c == "emodb" and lab != "boredom")
    mapped = bench.score_store(store, labels, {"boredom": "neutral"})  # --map boredom=neutral
    assert mapped["emodb"]["dropped"] == {} and "neutral" in mapped["emodb"]["classes"]


def test_pool_entries_without_labels_are_listed_and_bad_options_are_one_line(tmp_path, capsys):
    import pytest

    from liser.core.config import Config
    from liser.core.errors import LiserError

    bench = load_bench("bench_teacher_pool")
    roots = link_five_corpora(tmp_path / "data")
    cfg = Config(work=str(tmp_path / "work"), unlabeled=(f"tess:{roots['tess']}", f"unlabeled:{roots['cremad']}"))
    labels, skipped = bench.pool_labels(cfg, {}, cfg.work)  # CREMA-D through the generic adapter: no labels
    assert {c for c, _ in labels.values()} == {"tess"}
    assert len(skipped) == 1 and skipped[0].startswith(f"unlabeled:{roots['cremad']}") and "--as unlabeled=" in skipped[0]
    with pytest.raises(LiserError, match="--as unlabeled=emodb: .*not an EmoDB tree"):  # the wrong corpus for that root
        bench.pool_labels(cfg, {"unlabeled": "emodb"}, cfg.work)
    from liser.experiments.cross import check_map_sources

    with pytest.raises(LiserError, match="'clam' is a class of none"):
        check_map_sources({"clam": "neutral"}, {lab for _, lab in labels.values()})
    check_map_sources({"neutral": "happy"}, {"neutral"})
    out = tmp_path / "x.json"
    res = {"a.yaml": {"pool_entries": ["unlabeled:x", "tess:y"], "pool_classes": ["calm", "neutral"]},
           "b.yaml": {"pool_entries": ["ravdess:z"], "pool_classes": ["neutral"]}}
    bench.check_options(res, {"calm": "neutral"}, {"unlabeled": "cremad"})  # each used by one grid: fine
    with pytest.raises(LiserError, match="--as videos=cremad: no grid's pool has a videos:ROOT entry"):
        bench.check_options(res, {}, {"videos": "cremad"})
    with pytest.raises(LiserError, match="'clam' is a class of none"):
        bench.check_options(res, {"clam": "neutral"}, {})
    for bad, msg in ((["--as", "nonsense"], "expected ADAPTER=CORPUS"), (["--as", "unlabeled="], "expected ADAPTER=CORPUS")):
        assert bench.main(["configs/grid-cremad-cpu.yaml", *bad, "--json", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and msg in err[0], (bad, err)
    assert not out.exists()


def test_a_grid_row_with_its_own_teacher_is_scored_from_its_own_stores(tmp_path):
    import pytest

    from liser.core.config import Config
    from liser.core.errors import LiserError
    from liser.teachers.store import StoreWriter
    from liser.data.workspace import unlabeled_manifests

    bench = load_bench("bench_teacher_pool")
    roots = link_five_corpora(tmp_path / "data")
    work = tmp_path / "work"
    from liser.data.corpora import prepare

    spk = sorted(prepare("ravdess", roots["ravdess"], progress=False).speakers)  # a one-fold file for the sample
    (tmp_path / "folds.json").write_text(json.dumps({"corpus": "ravdess", "k": 1, "folds": [
        {"train": spk[:-2], "val": spk[-2:-1], "test": spk[-1:]}]}))
    (tmp_path / "base.yaml").write_text(f"corpus: ravdess\nroot: {roots['ravdess']}\nwork: {work}\n"
                                        f"folds: {tmp_path}/folds.json\n"
                                        f"unlabeled: ['tess:{roots['tess']}']\n"
                                        f"speech_store: {tmp_path}/shipped/fold{{fold}}\n")
    (tmp_path / "grid.yaml").write_text(f"base: base.yaml\nout: {tmp_path}/runs\nruns:\n  plain: {{}}\n"
                                        f"  own-teacher: {{speech_store: '{tmp_path}/own/fold{{fold}}'}}\n")
    cfg = Config(work=str(work), unlabeled=(f"tess:{roots['tess']}",))
    labels, _ = bench.pool_labels(cfg, {}, cfg.work)
    pool = [it for m in unlabeled_manifests(cfg) for it in m.items]
    for name, right in (("shipped", True), ("own", False)):  # one teacher always right, the other never
        w = StoreWriter(tmp_path / name / "fold0", "fake", DEFAULT_CLASSES, "h")
        for it in pool:
            lab = labels[it.id][1]
            k = DEFAULT_CLASSES.index(lab) if lab in DEFAULT_CLASSES else 0
            p = np.full(6, 0.04)
            p[k if right else (k + 1) % 6] = 0.8
            w.add(it.id, p[None], np.array([True]), 1.0)
        w.finalize()
    grid = str(tmp_path / "grid.yaml")
    assert bench.grid_figures(grid, {}, {})["pool"]["tess"]["piece_accuracy"] == 1.0
    own = bench.grid_figures(f"{grid}:own-teacher", {}, {})
    assert own["pool"]["tess"]["piece_accuracy"] == 0.0 and own["stores"].endswith("own/fold{fold}")
    with pytest.raises(LiserError, match="no row 'nope'"):
        bench.grid_figures(f"{grid}:nope", {}, {})
