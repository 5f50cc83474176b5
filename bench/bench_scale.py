"""Benchmark: the same grid and the same labeling job as local processes, on a local Ray, on two Ray nodes.

Issue 14, "Past one machine: Ray". Measures, on this machine:

1. `grid_wall_s_local`: a grid of --runs short no-dstl runs (seeds 0..N-1,
   fold 0, --epochs epochs, 1 thread each) by `run_grid` with --jobs local
   processes;
2. `grid_wall_s_ray_local`: the same runs through `run_grid(..., ray=...)` on a
   local Ray of --jobs CPUs (the target: within 15 % of 1.);
3. `grid_wall_s_ray_two_nodes`: the same runs on a two-node cluster started on
   this machine with `ray.cluster_utils.Cluster` (each node --jobs/2 CPUs);
4. `label_audio_s_per_s_local` / `_ray`: the config-level speech labeling of
   --pool TESS files (`liser teacher label speech` in one process, torch's
   threads; then `ray_label`, one shard per CPU), each with a fresh
   frozen-encoder cache, with the Whisper-base encoder when
   ../shared/models/whisper-base-encoder is there, else a random tiny HuBERT.

Ray's start-up is timed apart (`ray_start_s`) and is not in the walls. Every
run directory, cache and store goes to a temporary folder (never work/ or
runs/). `--smoke` runs tiny sizes (4 actors x 24 files, 2 runs of 1 epoch,
8 pool files, the tiny HuBERT) to show the script works; its figures mean
nothing and it writes no bench/results file unless --json says so.

    OMP_NUM_THREADS=1 python bench/bench_scale.py --json bench/results/scale.json    # the full one (about 20 min)
    OMP_NUM_THREADS=1 python bench/bench_scale.py --smoke                            # about 2 min
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
WHISPER = REPO.parent / "shared" / "models" / "whisper-base-encoder"
SMALL_FOLD = {"train": ["Actor_01", "Actor_02"], "val": ["Actor_03"], "test": ["Actor_04"]}


def log(msg: str) -> None:
    print(msg, flush=True)


def small_ravdess(tmp: Path) -> dict:
    """Config keys of a 4-actor x 24-file RAVDESS subset (symlinks) and its 2/1/1 fold file."""
    from liser.data.corpora import prepare

    root = tmp / "ravdess-small"
    for actor in ("Actor_01", "Actor_02", "Actor_03", "Actor_04"):
        (root / actor).mkdir(parents=True)
        by_emotion: dict[str, list[Path]] = {}
        for f in sorted((DATA / "ravdess" / actor).glob("*.flac")):
            by_emotion.setdefault(f.stem.split("-")[2], []).append(f)
        for files in by_emotion.values():
            for f in files[:3]:
                (root / actor / f.name).symlink_to(f)
    m = prepare("ravdess", root, progress=False)
    (tmp / "folds.json").write_text(json.dumps({"corpus": "ravdess", "k": 1, "seed": 0, "folds": [SMALL_FOLD]}))
    return {"manifest": str(m.save(tmp / "manifest")), "folds": str(tmp / "folds.json")}


def write_grid(tmp: Path, name: str, data: dict, runs: int, epochs: int, extra: dict | None = None) -> Path:
    import yaml

    g = tmp / f"grid-{name}.yaml"
    g.write_text(yaml.safe_dump({
        "base": str(REPO / "configs" / "no-dstl.yaml"), "out": str(tmp / name), "folds": [0],
        "set": {**data, "work": str(tmp / "work"), "epochs": epochs, "threads": 1, "val_stride_s": 0.5,
                "test_stride_s": 0.5, **(extra or {})},
        "runs": {"no-dstl": {"seed": list(range(runs))}}}))
    return g


def grids(tmp: Path, data: dict, runs: int, epochs: int, jobs: int) -> dict:
    """Wall seconds of the same grid: local processes, a local Ray, two Ray nodes on this machine."""
    import ray
    from ray.cluster_utils import Cluster

    from liser.experiments.grid import run_grid

    out = {}
    log(f"grid: {runs} runs x {epochs} epochs, {jobs} local processes")
    out["grid_wall_s_local"] = run_grid(write_grid(tmp, "local", data, runs, epochs), jobs=jobs, progress=False,
                                        report=False)["wall_s"]
    t0 = time.time()
    ray.init(num_cpus=jobs, include_dashboard=False, log_to_driver=False)
    out["ray_start_s"] = round(time.time() - t0, 1)
    try:
        log(f"grid: the same on a local Ray of {jobs} CPUs")
        out["grid_wall_s_ray_local"] = run_grid(write_grid(tmp, "ray", data, runs, epochs), progress=False,
                                                report=False, ray="local")["wall_s"]
    finally:
        ray.shutdown()
    per = max(1, jobs // 2)
    t0 = time.time()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": per, "include_dashboard": False})
    cluster.add_node(num_cpus=per)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    out["ray_two_nodes_start_s"] = round(time.time() - t0, 1)
    try:
        nodes = [n for n in ray.nodes() if n["Alive"]]
        log(f"grid: the same on {len(nodes)} Ray nodes of {per} CPU(s) each")
        out["ray_two_nodes"] = len(nodes)
        out["grid_wall_s_ray_two_nodes"] = run_grid(write_grid(tmp, "ray2", data, runs, epochs), progress=False,
                                                    report=False, ray=cluster.address)["wall_s"]
    finally:
        ray.shutdown()
        cluster.shutdown()  # only the cluster this script started
    out["ray_over_local"] = round(out["grid_wall_s_ray_local"] / out["grid_wall_s_local"], 3)
    return out


def tiny_hubert(path: Path) -> str:
    import torch
    from transformers import HubertConfig, HubertModel

    torch.manual_seed(0)
    HubertModel(HubertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                             conv_dim=(16, 16, 16), conv_stride=(5, 4, 4), conv_kernel=(10, 8, 4),
                             num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)).save_pretrained(path)
    return str(path)


def labeling(tmp: Path, data: dict, pool_files: int, jobs: int, backbone: str) -> dict:
    """Audio seconds per second of the speech labeling of a TESS pool: the local command, then Ray."""
    import ray

    from liser.core.config import Config
    from liser.experiments.distributed import ray_label
    from liser.teachers.pipeline import fit_speech_teachers, label_speech
    from liser.data.workspace import unlabeled_pool

    pool = tmp / "tess"
    folders = sorted(p for p in (DATA / "tess").iterdir() if p.is_dir())
    every = [f for d in folders for f in sorted(d.glob("*.opus"))]
    files = every[:: max(1, len(every) // pool_files)][:pool_files]  # spread over speakers and emotions
    for f in files:
        (pool / f.parent.name).mkdir(parents=True, exist_ok=True)
        (pool / f.parent.name / f.name).symlink_to(f)
    cache = tmp / "speech-cache"
    teacher_yaml = tmp / "teacher.yaml"
    teacher_yaml.write_text(f"backbone: {backbone}\nmode: frozen\nepochs: 2\nbatch_size: 16\nvad: false\n"
                            f"cache_dir: {cache}\n")
    cfg = Config.from_dict({**Config().to_dict(), **data, "name": "scale-label", "work": str(tmp / "work"),
                            "out": str(tmp / "runs"), "fold": 0, "threads": 1, "unlabeled": [f"tess:{pool}"],
                            "speech_teacher": str(teacher_yaml),
                            "speech_store": str(tmp / "stores" / "local-fold{fold}")})
    log(f"labeling: fit the frozen teacher ({Path(backbone).name}) on fold 0")
    fit_speech_teachers(cfg, [0], progress=False)
    audio_s = sum(it.duration for it in unlabeled_pool(cfg).items)
    out = {"label_backbone": Path(backbone).name, "label_pool_files": len(files), "label_pool_audio_s": round(audio_s, 1)}
    shutil.rmtree(cache, ignore_errors=True)  # fresh encoder states for each measurement
    log(f"labeling: {len(files)} files, {audio_s:.0f} audio-s, the local command (one process, torch's threads)")
    t0 = time.time()
    label_speech(cfg, [0], progress=False)
    out["label_wall_s_local"] = round(time.time() - t0, 2)
    shutil.rmtree(cache, ignore_errors=True)
    ray.init(num_cpus=jobs, include_dashboard=False, log_to_driver=False)
    try:
        log(f"labeling: the same as Ray tasks, {jobs} shards of 1 CPU")
        t0 = time.time()
        ray_label(cfg.replace(speech_store=str(tmp / "stores" / "ray-fold{fold}")), "speech", [0], progress=False)
        out["label_wall_s_ray"] = round(time.time() - t0, 2)
    finally:
        ray.shutdown()
    out["label_audio_s_per_s_local"] = round(audio_s / out["label_wall_s_local"], 1)
    out["label_audio_s_per_s_ray"] = round(audio_s / out["label_wall_s_ray"], 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, to show the script works (figures mean nothing)")
    ap.add_argument("--runs", type=int, help="runs in the grid (default 10; smoke 2)")
    ap.add_argument("--epochs", type=int, help="epochs per run (default 2; smoke 1)")
    ap.add_argument("--pool", type=int, help="TESS files to label (default 400; smoke 8)")
    ap.add_argument("--jobs", type=int, default=2, help="local processes = Ray CPUs (default 2, this machine's cores)")
    ap.add_argument("--json", help="where the figures go (e.g. bench/results/scale.json; smoke: none unless given)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (its path is printed)")
    args = ap.parse_args()
    import ray
    import torch

    runs, epochs, pool = (args.runs or (2 if args.smoke else 10), args.epochs or (1 if args.smoke else 2),
                          args.pool or (8 if args.smoke else 400))
    tmp = Path(tempfile.mkdtemp(prefix="liser-scale-"))
    log(f"working in {tmp}")
    from liser.core.util import absolute_paths

    absolute_paths(args, "json")  # outputs: relative to where the script was run
    os.chdir(REPO)  # the grid's relative paths (configs/) mean the repository, here and on the Ray workers
    try:
        data = small_ravdess(tmp) if args.smoke else {"corpus": "ravdess", "root": str(DATA / "ravdess")}
        backbone = tiny_hubert(tmp / "tiny-hubert") if args.smoke or not WHISPER.is_dir() else str(WHISPER)
        res = {"date": str(date.today()), "command": " ".join([Path(sys.executable).name, *sys.argv]),
               "smoke": args.smoke, "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.node()}",
               "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
               "torch": torch.__version__, "ray": ray.__version__, "runs": runs, "epochs": epochs, "jobs": args.jobs,
               "threads_per_run": 1}
        res.update(grids(tmp, data, runs, epochs, args.jobs))
        res.update(labeling(tmp, data, pool, args.jobs, backbone))
        res["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
        log(json.dumps(res, indent=1))
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(res, indent=1) + "\n")
            log(f"wrote {args.json}")
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
