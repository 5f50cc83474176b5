"""bench/bench_distill_protocols.py: the two protocol tables, scored on the same test files."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import bench_distill_protocols as bench  # noqa: E402

from liser.core.errors import LiserError  # noqa: E402


def _baseline(k: int) -> dict:
    return json.loads((bench.BASELINE / f"fold{k}" / "metrics.json").read_text())


def _protocol_grid(tmp_path, monkeypatch) -> dict:
    """The protocol grid expanded over 5 folds, its runs under tmp_path/runs and no ledger to fall back on."""
    from liser.experiments.grid import expand_grid, load_grid

    grid = load_grid(str(bench.GRID))
    grid["runs"] = expand_grid(grid, 5)
    for r in grid["runs"]:
        r["cfg"] = r["cfg"].replace(out=str(tmp_path / "runs"))
    monkeypatch.setattr(bench, "LEDGER", tmp_path / "no-ledger")
    return grid


def _seed_grid(tmp_path) -> Path:
    """The seed grid with its runs under tmp_path/seeds and no ledger."""
    seeds = tmp_path / "grid-seeds.yaml"
    seeds.write_text(bench.SEED_GRID.read_text().replace("out: runs/grid-distill-seeds", f"out: {tmp_path}/seeds")
                     .replace("ledger: bench/ledger/grid-distill-seeds", f"ledger: {tmp_path}/no-ledger")
                     .replace("base: default-model.yaml", f"base: {ROOT / 'configs' / 'default-model.yaml'}"))
    return seeds


def _half(m: dict) -> dict:
    """A run's metrics on every other test file (what an adapted run's test half looks like)."""
    keep = list(range(0, m["n_test"], 2))
    return {**m, **{k: [m[k][i] for i in keep] for k in ("test_ids", "test_y", "test_logits")}, "n_test": len(keep)}


def _write_runs(*runs) -> None:
    """(run folder, metrics) pairs as finished runs."""
    for path, metrics in runs:
        path.mkdir(parents=True)
        (path / "metrics.json").write_text(json.dumps(metrics))


def test_uar_on_the_stored_predictions_is_the_run_s_own_and_a_subset_is_rescored():
    m = _baseline(1)
    u, n = bench.uar_on(m)
    assert n == m["n_test"] and u == pytest.approx(m["test"]["uar"], abs=1e-9)
    half = set(m["test_ids"][::2])
    u_half, n_half = bench.uar_on(m, half)
    assert n_half == len(half) and 0 < u_half < 1 and u_half != u
    with pytest.raises(LiserError, match="none of the requested"):
        bench.uar_on(m, {"nowhere/x"})


def test_rows_pair_a_run_with_the_baseline_on_its_test_files(tmp_path, monkeypatch):
    """A 'distilled' run that is the baseline itself on half the files: gain 0 on exactly those files."""
    grid = _protocol_grid(tmp_path, monkeypatch)
    half = _half(_baseline(2))
    _write_runs((tmp_path / "runs" / "adapted-dstl" / "default" / "fold2", half))
    rows = bench.protocol_rows(grid, "adapted-dstl", bench.BASELINE, teachers=False)
    assert list(rows) == ["emodb"] and rows["emodb"]["files"] == len(half["test_ids"])
    assert rows["emodb"]["gain_points"] == 0 and rows["emodb"]["student"] == rows["emodb"]["no_dstl"]
    assert bench.targets({}, rows) == {}  # incomplete tables decide nothing


def test_targets_follow_the_issue():
    row = lambda s, b, t=None: {"student": s, "no_dstl": b, "gain_points": round(100 * (s - b), 2), "teacher": t}
    unseen = {c: row(0.46, 0.42) for c in "abcde"}
    adapted = {c: row(0.52, 0.42, 0.60) for c in "abcde"}
    t = bench.targets(unseen, adapted)
    assert t["unseen_gain_ge_3"] and t["unseen_mean_ge_0.45"] and t["adapted_ge_unseen_no_dstl_plus_8"]
    assert t["adapted_half_way_to_teacher"]  # 0.10 of the 0.18 between student and teacher
    adapted["a"] = row(0.45, 0.42, 0.60)
    assert not bench.targets(unseen, adapted)["adapted_half_way_to_teacher"]
    unseen["a"] = row(0.30, 0.42)
    assert not bench.targets(unseen, adapted)["unseen_every_ge_0.35"]


def test_view_labels_compare_the_teacher_on_views_with_the_clean_audio(tmp_path):
    """A store whose first view repeats the clean labels agrees on every piece; a view of other labels does
    not; a store without views (or none at all) gives no figure."""
    import numpy as np

    from liser.core.config import Config
    from liser.teachers.store import StoreWriter

    clean = np.tile([0.7, 0.2, 0.1], (6, 1))
    other = np.tile([0.1, 0.2, 0.7], (6, 1))
    w = StoreWriter(tmp_path / "s", "t", ["a", "b", "c"], "h", views=2, views_key="k")
    w.add("x", clean, np.ones(6, bool), 3.0, np.stack([clean, other]))
    w.finalize(["x"])
    cfg = Config(speech_store=str(tmp_path / "s"), lambda_sd=1.0, unlabeled=("u:x",), teach_views=2)
    got = bench.view_labels(cfg)
    assert got["pieces"] == 6 and got["top1_agreement"] == [1.0, 0.0]
    assert got["total_variation"] == [0.0, pytest.approx(0.6, abs=1e-3)]
    assert bench.view_labels(cfg.replace(speech_store=str(tmp_path / "none"))) is None


def test_seed_rows_pair_both_seeds_of_both_rows_on_the_same_files(tmp_path, monkeypatch):
    """Seed 1 of each row is read beside its seed-0 run (no-dstl: the baseline; views: the protocol grid's row);
    a fold counts only when all four finished, and a seed-1 run tested on other files is refused."""
    grid, seeds = _protocol_grid(tmp_path, monkeypatch), _seed_grid(tmp_path)
    m = _baseline(3)
    flipped = {**m, "test_logits": [[-x for x in row] for row in m["test_logits"]]}  # another model, same files
    _write_runs((tmp_path / "runs" / "unseen-dstl-views4" / "default" / "fold3", flipped),
                (tmp_path / "seeds" / "no-dstl-s1" / "default" / "fold3", m),
                (tmp_path / "seeds" / "unseen-dstl-views4-s1" / "default" / "fold3", flipped))
    rows = bench.seed_rows(grid, bench.BASELINE, seeds)
    u, u_flipped = bench.uar_on(m)[0], bench.uar_on(flipped)[0]
    assert list(rows) == ["tess"]  # fold 3 only: the others have no seed-1 runs
    assert rows["tess"]["no_dstl"] == [round(u, 4)] * 2 and rows["tess"]["views4"] == [round(u_flipped, 4)] * 2
    assert rows["tess"]["gain_points"] == pytest.approx(100 * (u_flipped - u), abs=0.01)
    assert "tess" in bench.seeds_table(rows)
    other = {**m, "test_ids": m["test_ids"][1:] + m["test_ids"][:1]}
    (tmp_path / "seeds" / "no-dstl-s1" / "default" / "fold3" / "metrics.json").write_text(json.dumps(other))
    with pytest.raises(LiserError, match="other files"):
        bench.seed_rows(grid, bench.BASELINE, seeds)


def test_adapted_seed_rows_score_both_no_dstl_seeds_on_the_distilled_run_s_test_half(tmp_path, monkeypatch):
    """Adapted seeds: the no-dstl runs (tested on the whole held-out corpus) are re-scored on the adapted run's
    test half, and each seed-1 distilled run must have been tested on its seed-0 run's half."""
    grid, seeds = _protocol_grid(tmp_path, monkeypatch), _seed_grid(tmp_path)
    m = _baseline(2)
    half = _half(m)
    flipped = {**half, "test_logits": [[-x for x in row] for row in half["test_logits"]]}
    _write_runs((tmp_path / "runs" / "adapted-dstl" / "default" / "fold2", half),
                (tmp_path / "seeds" / "no-dstl-s1" / "default" / "fold2", m),
                (tmp_path / "seeds" / "adapted-dstl-s1" / "default" / "fold2", flipped))
    rows = bench.seed_rows(grid, bench.BASELINE, seeds, "adapted-dstl", "dstl")
    assert list(rows) == ["emodb"]
    u_half = bench.uar_on(m, set(half["test_ids"]))[0]
    assert u_half != bench.uar_on(m)[0]  # re-scored on the half, not the whole corpus
    assert rows["emodb"]["no_dstl"] == [round(u_half, 4)] * 2
    assert rows["emodb"]["dstl"] == [round(bench.uar_on(half)[0], 4), round(bench.uar_on(flipped)[0], 4)]
    assert "emodb" in bench.seeds_table(rows, "dstl", "adapted", "distilled")
    assert bench.seed_rows(grid, bench.BASELINE, seeds) == {}  # no unseen-dstl-views4 runs: the unseen table is empty
    (tmp_path / "seeds" / "adapted-dstl-s1" / "default" / "fold2" / "metrics.json").write_text(json.dumps(m))
    with pytest.raises(LiserError, match="other files"):
        bench.seed_rows(grid, bench.BASELINE, seeds, "adapted-dstl", "dstl")


def test_target_rows_set_a_row_beside_adapted_dstl_on_the_same_half(tmp_path, monkeypatch):
    """A row of TARGET_GRIDS (pool targets made another way) is read from its own grid and ledger and paired with
    adapted-dstl's student on the same test half; one tested on another number of files is refused."""
    grid = _protocol_grid(tmp_path, monkeypatch)
    ctx = tmp_path / "grid-context.yaml"
    ctx.write_text(bench.TARGET_GRIDS["adapted-dstl-ctx6"].read_text()
                   .replace("out: runs/grid-distill-context", f"out: {tmp_path}/ctx")
                   .replace("ledger: bench/ledger/grid-distill-context", f"ledger: {tmp_path}/no-ledger")
                   .replace("base: default-model-distill.yaml",
                            f"base: {ROOT / 'configs' / 'default-model-distill.yaml'}"))
    monkeypatch.setattr(bench, "TARGET_GRIDS", {"adapted-dstl-ctx6": ctx, "missing-row": tmp_path / "none.yaml"})
    half = _half(_baseline(2))
    flipped = {**half, "test_logits": [[-x for x in row] for row in half["test_logits"]]}
    _write_runs((tmp_path / "runs" / "adapted-dstl" / "default" / "fold2", half),
                (tmp_path / "ctx" / "adapted-dstl-ctx6" / "default" / "fold2", flipped))
    adapted = bench.protocol_rows(grid, "adapted-dstl", bench.BASELINE, teachers=False)
    rows = bench.target_rows(bench.BASELINE, adapted, {}, teachers=False)
    assert list(rows) == ["adapted-dstl-ctx6"] and rows["adapted-dstl-ctx6"]["targets"] == {}  # one fold decides nothing
    r = rows["adapted-dstl-ctx6"]["corpora"]["emodb"]
    u, u_flipped = bench.uar_on(half)[0], bench.uar_on(flipped)[0]
    assert r["clean_labels"] == round(u, 4) and r["student"] == round(u_flipped, 4)
    assert r["gain_over_clean_points"] == pytest.approx(100 * (r["student"] - r["clean_labels"]), abs=0.01)
    other = _half(half)  # a quarter of the corpus: not adapted-dstl's test half
    (tmp_path / "ctx" / "adapted-dstl-ctx6" / "default" / "fold2" / "metrics.json").write_text(json.dumps(other))
    with pytest.raises(LiserError):
        bench.target_rows(bench.BASELINE, adapted, {}, teachers=False)


def test_pool_priors_count_the_teacher_s_file_labels_per_source(tmp_path):
    """Files of the held-out corpus and the rest (interviews) are counted apart, each file by the arg-max of its
    valid pieces' mean; a config without a store gives None."""
    import numpy as np

    from liser.core.config import Config
    from liser.teachers.store import StoreWriter

    classes = ["neutral", "happy", "sad", "angry", "fearful", "disgust"]
    eye = np.eye(6)
    w = StoreWriter(tmp_path / "s", "t", classes, "h")
    w.add("emodb/a", eye[[2, 2, 0]], np.array([True, True, False]), 1.5)  # sad (the neutral piece is not valid)
    w.add("emodb/b", eye[[1, 1]], np.ones(2, bool), 1.0)
    w.add("videos/x", eye[[5, 5]], np.ones(2, bool), 1.0)
    w.finalize(["emodb/a", "emodb/b", "videos/x"])
    labeled = ("ravdess:r", "cremad:c", "emodb:e", "tess:t", "urdu:u")
    cfg = Config(speech_store=str(tmp_path / "s"), lambda_sd=0.5, unlabeled=("u:x",), labeled=labeled,
                 folds="loco-adapt", classes=tuple(classes))
    got = bench.pool_priors(cfg, 2)
    assert got["emodb"]["files"] == 2 and got["emodb"]["label_share"]["sad"] == 0.5
    assert got["emodb"]["label_share"]["happy"] == 0.5 and got["emodb"]["label_share"]["neutral"] == 0
    assert got["interviews"]["label_share"]["disgust"] == 1.0
    assert bench.pool_priors(cfg.replace(speech_store=str(tmp_path / "none")), 2) is None
