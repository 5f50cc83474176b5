"""bench/bench_teacher_pool.py: a speech store scored against the labels of the pool corpora it labeled."""

import numpy as np

from conftest import DEFAULT_CLASSES, link_five_corpora, load_bench


def test_pool_store_scored_by_path_through_two_adapters_with_dropped_classes(tmp_path):
    from liser.config import Config
    from liser.store import StoreWriter
    from liser.workspace import unlabeled_manifests

    bench = load_bench("bench_teacher_pool")
    roots = link_five_corpora(tmp_path / "data")
    # EmoDB through its own adapter; CREMA-D through the generic one, so its labels come from --as
    cfg = Config(work=str(tmp_path / "work"), unlabeled=(f"emodb:{roots['emodb']}", f"unlabeled:{roots['cremad']}"))
    labels = bench.pool_labels(cfg, {"unlabeled": "cremad"}, cfg.work)
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
