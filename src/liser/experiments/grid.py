"""Many runs: all folds of a configuration (in parallel processes), and re-evaluation of a run.

Every run is resumable and a finished run (one with metrics.json) is skipped,
so an interrupted grid is continued by re-running the same command.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from liser.core.config import Config
from liser.core.device import tune_malloc  # worker processes start with it, as the `liser` command does
from liser.core.errors import LiserError
from liser.core.outputs import check_runs_out
from liser.core.atomic import atomic_write_text
from liser.core.util import safe_id
from liser.data.workspace import fold_indices, fold_items, labeled_manifest, run_dir, unlabeled_manifests


def _train_one(cfg_dict: dict, threads: int, progress: bool, ledger: str = "") -> str:
    """One training run in this process, a local worker's or a Ray worker's (liser.experiments.distributed): the one code
    path for "run one job", and the only use this module makes of liser.student.train. With a `ledger` folder, the
    finished run's small files are kept there at once (liser.experiments.ledger), so a stop loses at most the runs in flight."""
    from liser.student.train import train

    cfg = Config.from_dict({**cfg_dict, "threads": threads})
    run = train(cfg, progress=progress)
    if ledger:
        from liser.experiments.ledger import entry, keep

        keep(run, entry(ledger, cfg))
    return str(run)


def _train_all(cfg_dicts: list[dict], jobs: int, threads: int, progress: bool, ray: str | None = None,
               ledger: str = "") -> list[str]:
    """Every config through `_train_one`: here (jobs 1), in `jobs` local processes, or as Ray tasks.

    `threads`: torch threads per run (0 = every core here, 1 on Ray). `ray`:
    None for local processes, else the Ray address (liser.experiments.distributed.ray_session).
    `ledger`: the grid's ledger folder ("" = none). Returns the run directories, in order.
    """
    import functools

    cores = os.cpu_count() or 1
    one = functools.partial(_train_one, ledger=ledger) if ledger else _train_one
    if ray is not None:
        from liser.experiments.distributed import ray_train

        return ray_train(one, cfg_dicts, threads or 1, ray)
    if jobs == 1:
        return [one(d, threads or cores, progress) for d in cfg_dicts]
    import multiprocessing as mp

    per = threads or max(1, cores // jobs)
    with ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn"), initializer=tune_malloc) as pool:
        return list(pool.map(one, cfg_dicts, [per] * len(cfg_dicts), [False] * len(cfg_dicts)))


def build_views_once(manifest, cfgs: list[Config], progress: bool) -> None:
    """The augmented views (liser.data.views) the configs train on, built once on every core before any worker starts."""
    from liser.data.views import build_views, training_views

    for spec, work in sorted({(training_views(c), c.work) for c in cfgs if c.aug_views}, key=repr):
        build_views(manifest, work, spec, os.cpu_count() or 1, progress)


def run_folds(cfg: Config, folds: list[int] | None = None, jobs: int = 1, progress: bool = True,
              ray: str | None = None) -> dict:
    """Train and test `cfg` on each fold (`jobs` local processes, or Ray tasks at the address `ray`);
    write <out>/<name>/summary.json; return the summary."""
    from liser.student.evaluate import summarize
    from liser.data.features import build_features

    if ray is not None:
        from liser.experiments.distributed import import_ray

        import_ray()  # without Ray, say so now, before the features are built
    check_runs_out(cfg)
    manifest = labeled_manifest(cfg)  # prepare once, before any worker starts
    build_features(manifest, cfg.work, threads=cfg.threads or os.cpu_count() or 1, progress=progress)
    build_views_once(manifest, [cfg], progress)
    folds = fold_indices(cfg, manifest, folds)
    for k in folds:
        fold_items(cfg.replace(fold=k), manifest)  # bad fold / class settings fail before training
    t0 = time.time()
    jobs = max(1, min(jobs, len(folds)))
    runs = _train_all([cfg.replace(fold=k).to_dict() for k in folds], jobs, cfg.threads, progress, ray)
    summary = summarize(runs)
    summary.update({"config": cfg.name, "folds_run": folds, "wall_s": round(time.time() - t0, 1),
                    "runs": runs, "table": summary_table({cfg.name: summary})})
    atomic_write_text(Path(cfg.out) / cfg.name / "summary.json", json.dumps(summary, indent=1) + "\n")
    return summary


def summary_table(rows: dict[str, dict]) -> str:
    """Markdown table: configuration, UAR mean +- std, WAR mean +- std, folds."""
    lines = ["| configuration | UAR | WAR | folds |", "|---|---|---|---|"]
    for name, s in rows.items():
        if not s.get("folds"):
            lines.append(f"| {name} | - | - | 0 |")
            continue
        lines.append(f"| {name} | {s['uar_mean']:.3f} ± {s['uar_std']:.3f} | {s['war_mean']:.3f} ± {s['war_std']:.3f} | {s['folds']} |")
    return "\n".join(lines)


def evaluate_run(run: str | Path, stride_s: float = 0.1, write: bool = False) -> dict:
    """Re-evaluate a run's best.pt on its fold's test speakers with the given stride.

    The checkpoint is read by liser.student.checkpoint.read_checkpoint (weights only,
    format and liser version checked); LiserError for a directory that is
    not a run or a checkpoint whose classes differ from the config's.
    """
    from liser.student.evaluate import evaluate_items, plot_confusion
    from liser.data.features import build_features
    from liser.student.checkpoint import read_checkpoint, student_from_checkpoint

    run = Path(run)
    if not (run / "best.pt").is_file() or not (run / "config.yaml").is_file():
        raise LiserError(f"{run}: not a run directory (no best.pt / config.yaml)")
    cfg = Config.load(run / "config.yaml")
    ck = read_checkpoint(run / "best.pt")
    manifest = labeled_manifest(cfg)
    _, _, test, classes = fold_items(cfg, manifest)
    if list(ck["classes"]) != list(classes):
        raise LiserError(f"{run}/best.pt: classes {ck['classes']} differ from the config's {classes}")
    model = student_from_checkpoint(ck, str(run / "best.pt"))
    cache = build_features(manifest, cfg.work, progress=False)
    m, _ = evaluate_items(model, cache, test, classes, stride_s)
    if write:
        old = json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").is_file() else {}
        old["test"] = m
        atomic_write_text(run / "metrics.json", json.dumps(old, indent=1) + "\n")
        plot_confusion(m["confusion"], classes, run / "confusion.png", f"{cfg.name} fold {cfg.fold}")
    return m


# ---------------------------------------------------------------- grids (Tables 2 and 3, Fig. 2)
def _fmt(x) -> str:
    """A searched value as part of a run directory's name: 0.5 -> "0.5", a list -> its items joined by "+"."""
    if not isinstance(x, (int, float)):  # bools stay 1 / 0, as run directories were named before
        return safe_id("+".join(map(str, x)) if isinstance(x, (list, tuple)) else str(x))
    return f"{x:g}"


def _searched(base: Config, spec: dict) -> dict:
    """The keys of a grid row searched on validation: a list value, except for keys whose own value is a
    list (e.g. `unlabeled`), which are searched only when given a list of lists."""
    defaults = base.to_dict()
    out = {}
    for k, v in spec.items():
        if not isinstance(v, list):
            continue
        if isinstance(defaults.get(k), (list, tuple)) and not all(isinstance(x, (list, tuple)) for x in v):
            continue  # one list-valued setting, fixed for the row
        out[k] = v
    return out


def load_grid(path: str | Path, overrides: list[str] | tuple = ()) -> dict:
    """A grid file (liser.core.config.Grid): `base` config, `runs` {name: {key: value or [values searched on
    validation]}}, optional `folds`, `fractions` with `fraction_runs`, `seeds` with `seed_runs`, `jobs`,
    `out`, `set`.

    `set:` values keep their YAML types (null stays null); `--set` overrides apply to the base after them.
    """
    from liser.core.config import Grid, from_dict, read_yaml

    path = Path(path)
    g = from_dict(Grid, read_yaml(path, "grid"), str(path))
    if not g.runs:
        raise LiserError(f"{path}: a grid needs `runs`")
    base_path = g.base or None
    if base_path and not Path(base_path).is_absolute() and (path.parent / base_path).is_file():
        base_path = str(path.parent / base_path)
    base = Config.load(base_path, overrides, extra=g.set)
    if g.out:
        base = base.replace(out=g.out)
    for name, spec in g.runs.items():
        for k in (spec or {}):
            if k not in base.to_dict():
                raise LiserError(f"{path}: run {name}: unknown config key {k!r}")
    for field in ("fraction_runs", "seed_runs"):
        if unknown := [n for n in getattr(g, field) if n not in g.runs]:
            raise LiserError(f"{path}: {field} names rows the grid does not have: {', '.join(map(str, unknown))}")
    return {"path": str(path), "base": base, "runs": g.runs, "folds": list(g.folds) if g.folds is not None else None,
            "fractions": [float(f) for f in g.fractions or (1.0,)],
            "fraction_runs": list(g.fraction_runs), "seeds": [int(x) for x in g.seeds],
            "seed_runs": list(g.seed_runs), "jobs": g.jobs or 1, "ledger": g.ledger}


def check_finished(grid_path, runs: list[dict]) -> None:
    """LiserError (one line) when a finished run's directory holds another config than its row asks for now
    (the grid file or `--set` changed a setting): skipping it would report the old setting's result as the
    new one's. threads and device are ignored (liser.core.config.stale_keys)."""
    from liser.core.config import stale_keys

    stale = []
    for r in runs:
        d = run_dir(r["cfg"])
        if (d / "metrics.json").is_file() and (diff := stale_keys(r["cfg"], d)):
            stale.append(f"{d} differs in {', '.join(diff)}")
    if stale:
        raise LiserError(f"{grid_path}: {len(stale)} finished run(s) were trained with other settings than the grid "
                         f"now asks for ({stale[0]}{'; ...' if len(stale) > 1 else ''}); remove them to train them "
                         "again, or change `out`")


def restore_ledger(grid: dict, runs: list[dict]) -> dict:
    """Before a grid runs or is collected: its ledger's finished runs put back into their run directories
    (liser.experiments.ledger.restore); one line says what was restored and which entries are stale. {} without a ledger."""
    if not grid.get("ledger"):
        return {}
    from liser.experiments.ledger import restore

    r = restore([x["cfg"] for x in runs], grid["ledger"], run_dir)
    print(f"ledger {grid['ledger']}: {r['restored']} finished runs restored, {r['kept']} newly kept"
          + (f"; {len(r['stale'])} stale (trained again): " + "; ".join(r["stale"][:3]) if r["stale"] else ""),
          flush=True)
    return r


def expand_grid(grid: dict, n_folds: int) -> list[dict]:
    """Every run of the grid: {config (name), variant, fraction, fold, seed, cfg}.

    A row in `seed_runs` runs once per seed of `seeds`; the row's own seed (the base config's, or the
    row's `seed`) keeps the plain run name, the others add /seed<k>, so a grid given seeds later
    reuses the runs it has.
    """
    import itertools

    base: Config = grid["base"]
    folds = grid["folds"] if grid["folds"] is not None else list(range(n_folds))
    out = []
    for name, spec in grid["runs"].items():
        spec = dict(spec or {})
        searched = _searched(base, spec)
        fixed = {k: v for k, v in spec.items() if k not in searched}
        fractions = grid["fractions"] if name in grid["fraction_runs"] else [1.0]
        own_seed = int(fixed.get("seed", base.seed))
        seeds = grid.get("seeds") if name in grid.get("seed_runs", ()) and grid.get("seeds") else [own_seed]
        keys = sorted(searched)
        for values in itertools.product(*(searched[k] for k in keys)):
            variant = "-".join(f"{k.replace('lambda_', 'l')}{_fmt(v)}" for k, v in zip(keys, values)) or "default"
            for frac, seed in itertools.product(fractions, seeds):
                run_name = (f"{name}/{variant}" + ("" if frac == 1.0 else f"/frac{_fmt(frac)}")
                            + ("" if seed == own_seed else f"/seed{seed}"))
                for k in folds:
                    cfg = Config.from_dict({**base.to_dict(), **fixed, **dict(zip(keys, values)), "seed": seed,
                                            "label_fraction": frac, "fold": k, "name": run_name})
                    cfg.check_choices()  # a bad value is refused now, not when (or if) its run starts
                    out.append({"config": name, "variant": variant, "fraction": frac, "fold": k, "seed": seed,
                                "cfg": cfg})
    return out


def fold_count(base: Config, manifest=None) -> int:
    """How many folds the base config's labeled corpus has (liser.data.workspace.resolve_folds decides which file)."""
    return len(fold_indices(base, manifest or labeled_manifest(base)))


def run_grid(grid_path: str | Path, overrides: list[str] | tuple = (), jobs: int | None = None,
             progress: bool = True, report: bool = True, ray: str | None = None) -> dict:
    """Run every (configuration x searched values x fraction x fold) of a grid, in parallel
    processes (or as Ray tasks at the address `ray`: liser.experiments.distributed), skipping finished runs;
    then pick each fold's values on validation and write the report."""
    from liser.data.features import build_features

    if ray is not None:
        from liser.experiments.distributed import import_ray

        import_ray()  # without Ray, say so now, before the features are built
    grid = load_grid(grid_path, overrides)
    base: Config = grid["base"]
    check_runs_out(base, also_own=[grid["ledger"]])
    manifest = labeled_manifest(base)
    build_features(manifest, base.work, threads=base.threads or os.cpu_count() or 1, progress=progress)
    runs = expand_grid(grid, fold_count(base, manifest))
    distilling = [r["cfg"] for r in runs if r["cfg"].distils()]
    for m in unlabeled_manifests(distilling[0]) if distilling else []:
        build_features(m, base.work, threads=base.threads or 2, progress=progress)  # once, before workers start
    build_views_once(manifest, [r["cfg"] for r in runs], progress)
    jobs = jobs or grid["jobs"]
    restore_ledger(grid, runs)
    check_finished(grid_path, runs)
    todo = [r for r in runs if not (run_dir(r["cfg"]) / "metrics.json").is_file()]
    t0 = time.time()
    where = f"as Ray tasks ({ray})" if ray is not None else f"{jobs} in parallel"
    print(f"grid {grid_path}: {len(runs)} runs, {len(runs) - len(todo)} already finished, {len(todo)} to go, {where}",
          flush=True)
    if todo:
        _train_all([r["cfg"].to_dict() for r in todo], jobs, base.threads, progress, ray, grid["ledger"])
    wall = time.time() - t0
    results = collect_grid(runs)
    results.update({"grid": str(grid_path), "wall_s": round(wall, 1), "jobs": jobs, "runs_trained": len(todo),
                    "runs_total": len(runs)})
    if ray is not None:
        results["ray"] = ray
    out = Path(base.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "grid.json", json.dumps(results, indent=1) + "\n")
    if report:
        from liser.experiments.report import write_report

        write_report(out, results, base, grid_path, overrides)
    return results


def collect_grid(runs: list[dict]) -> dict:
    """Per configuration and fraction: each fold's variant chosen on validation UAR, its test metrics.

    A run repeated over seeds (the grid's `seeds`) counts as one per fold and variant: validation and
    test UAR/WAR are the means over the seeds that finished (`seeds`, `uar_per_seed` say which), the
    choice is made on the mean validation UAR, and the pooled confusion holds every seed's predictions.
    """
    import numpy as np

    from liser.core.metrics import metrics
    from liser.student.evaluate import bootstrap_ci, fold_mean_ci

    seeds: dict[tuple, list] = {}  # (config, fraction, variant, fold): [metrics of each seed's finished run]
    for r in runs:
        p = run_dir(r["cfg"]) / "metrics.json"
        if p.is_file():
            m = json.loads(p.read_text())
            seeds.setdefault((r["config"], r["fraction"], r["variant"], r["fold"]), []).append(
                {**m, "seed": r.get("seed"), "run_dir": str(p.parent)})
    seeded = {name for name in {r["config"] for r in runs}  # rows repeated over seeds
              if len({r.get("seed") for r in runs if r["config"] == name}) > 1}
    chosen: dict[tuple, dict] = {}
    by_variant: dict[tuple, list] = {}
    for (name, frac, variant, fold), ms in seeds.items():
        val = float(np.mean([m["val"]["uar"] for m in ms]))
        one = {"variant": variant, "val_uar": val, "runs": ms, "uar": float(np.mean([m["test"]["uar"] for m in ms])),
               "war": float(np.mean([m["test"]["war"] for m in ms]))}
        by_variant.setdefault((name, frac, variant), []).append((fold, val, one["uar"], ms[0]["run_dir"]))
        if (name, frac, fold) not in chosen or val > chosen[(name, frac, fold)]["val_uar"]:
            chosen[(name, frac, fold)] = one
    table: dict = {}
    for (name, frac, fold), c in sorted(chosen.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2])):
        t = table.setdefault(name, {}).setdefault(_fmt(frac), {"folds": [], "y_true": [], "y_pred": [],
                                                                   "by_fold": []})
        m = c["runs"][0]
        t["folds"].append({"fold": fold, "variant": c["variant"], "uar": c["uar"], "war": c["war"],
                           "val_uar": c["val_uar"], "run_dir": m["run_dir"],
                           "video_head_by_class": m.get("video_head_by_class"), "video_classes": m.get("video_classes")})
        if name in seeded:
            t["folds"][-1].update({"seeds": [r["seed"] for r in c["runs"]],
                                   "uar_per_seed": [r["test"]["uar"] for r in c["runs"]]})
        t["classes"] = m["classes"]
        kept = [r for r in c["runs"] if r.get("test_y") and r.get("test_logits")]  # labels and predictions in pairs
        preds = [np.asarray(r["test_logits"]).argmax(1) for r in kept]
        for r, pred in zip(kept, preds):
            t["y_true"] += r["test_y"]
            t["y_pred"] += pred.tolist()
        if len(kept) == len(c["runs"]):
            t["by_fold"].append((kept[0]["test_y"], preds))
    for name, by_frac in table.items():
        for frac, t in by_frac.items():
            u = np.array([f["uar"] for f in t["folds"]])
            w = np.array([f["war"] for f in t["folds"]])
            t.update({"n_folds": len(u), "uar_mean": float(u.mean()), "uar_std": float(u.std()),
                      "war_mean": float(w.mean()), "war_std": float(w.std())})
            if t["y_true"]:
                k = len(t["classes"])
                t["pooled"] = metrics(t["y_true"], t["y_pred"], t["classes"])
                every_fold = len(t["by_fold"]) == len(t["folds"])
                t["ci95"] = fold_mean_ci(t["by_fold"], k) if every_fold else bootstrap_ci(t["y_true"], t["y_pred"], k)
                t["ci95_of"] = "fold mean" if every_fold else "pooled files"
            del t["y_true"], t["y_pred"], t["by_fold"]
    for (name, frac, variant), vt in by_variant.items():  # each searched value held fixed on every fold
        vt = sorted(vt)
        v, te = np.array([x[1] for x in vt]), np.array([x[2] for x in vt])
        table[name][_fmt(frac)].setdefault("variants", {})[variant] = {
            "val_uar_mean": float(v.mean()), "uar_mean": float(te.mean()), "uar_std": float(te.std()), "folds": len(te),
            "fold_ids": [x[0] for x in vt], "uar_per_fold": te.tolist(), "run_dir": vt[0][3]}
    return {"configs": table}
