"""Past one machine: a grid's runs and a teacher's labeling as Ray tasks (the optional extra `liser[ray]`).

Why Ray and not a scheduler of our own: it places tasks by the resources they
declare (CPUs, fractions of a GPU), retries a task whose node died, and comes
with the cluster tooling (`ray start`, autoscaling launchers). liser only
says what one task is; that task is the same function the local runner calls
(`experiment._train_one` for a run, handed in by experiment, `teachers.pipeline.label_speech` /
`label_video` with `shard=(i, n)` for labeling), so `--ray` and `--jobs N`
give the same run directories and the same stores.

What a cluster must provide (docs/scale.md):
- every node sees the driver's working directory at the same absolute path
  (shared storage): configs, `work/`, `runs/`, and the data and models the
  configs name. A task changes into that directory before it starts, so
  relative paths in configs mean the same thing on every node;
- every node runs Ray from a Python environment with liser installed
  (`.venv/bin/ray start ...`);
- `LISER_*` environment variables of the driver are passed to every task.

Resume: a finished run (metrics.json) is never submitted; an interrupted run
resumes from its last.pt on whichever node gets it; labeling skips the items
already in a store's parts. Ray is imported lazily; without it `--ray` is one
line that says how to install it.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from liser.core.errors import LiserError
from liser.core.extras import for_import_error

RUN_GPU_FRACTION = 0.125  # a student run takes 1/8 of a GPU: the H200 ran 8-15 runs at a time (docs/scale.md)
LABEL_GPU_FRACTION = 0.25  # a labeling shard: its encoder is per-file-overhead bound, 4 share a GPU
MAX_RETRIES = 2  # retries of a task whose worker or node died (never of an exception the task raised)


def import_ray():
    """The `ray` module, or LiserError saying how to install it (`pip install "liser[ray]"`)."""
    try:
        import ray
    except ImportError as e:  # the extra's one line (liser.core.extras); a dependency of Ray missing: that, said
        raise LiserError(for_import_error(e, "--ray") or f"--ray: Ray cannot be imported ({e})") from None
    return ray


@contextlib.contextmanager
def ray_session(address: str | None):
    """Connect to Ray for the duration of a command, and disconnect after.

    `address`: None or "local" starts a Ray instance on this machine (or joins
    the one $RAY_ADDRESS names); "auto" joins the cluster this machine is a
    node of (`ray start`); "HOST:PORT" or "ray://HOST:PORT" a given one. When
    Ray is already initialised (a test, a notebook) it is used as it is and
    left running.
    """
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    env = {k: v for k, v in os.environ.items() if k.startswith("LISER_")}
    kw = {"runtime_env": {"env_vars": env}} if env else {}
    if address in (None, "", "local"):
        ray.init(include_dashboard=False, **kw)
    else:
        ray.init(address=address, **kw)
    try:
        yield ray
    finally:
        ray.shutdown()


def _enter(cwd: str) -> None:
    """Start of every task: the driver's working directory and the allocator setting of liser's processes."""
    from liser.core.device import tune_malloc

    if not Path(cwd).is_dir():
        import socket

        raise LiserError(f"{socket.gethostname()}: {cwd} does not exist on this node; every Ray node must see "
                         "the project folder at the same path (shared storage, docs/scale.md)")
    os.chdir(cwd)
    tune_malloc()  # as the local pool's initializer does: large training temporaries stay in the heap


def gpu_share(device: str, fraction: float, ray) -> float:
    """GPUs a task declares: `fraction` when `device` may use CUDA and the cluster has a GPU, else 0.

    LiserError when the config asks for CUDA explicitly and no node has a GPU.
    """
    dev = (device or "auto").strip().lower()
    if dev == "cpu":
        return 0.0
    if ray.cluster_resources().get("GPU", 0) > 0:
        return float(fraction)
    if dev.startswith("cuda"):
        raise LiserError(f"device: {device!r}, but no node of the Ray cluster has a GPU")
    return 0.0


def _gather(ray, refs: dict, what: str) -> list:
    """Wait for every task (printing each as it ends); results in submission order.

    One failed task does not stop the others (each is a resumable unit of
    work, kept when finished). Afterwards the first failure is raised: a
    LiserError as one line with the count, anything else with its traceback.
    """
    from ray.exceptions import RayTaskError

    order = list(refs)
    results, failed = {}, []
    pending, n, t0 = list(order), len(order), time.time()
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        ref = done[0]
        try:
            results[ref] = ray.get(ref)
            print(f"[{len(results) + len(failed)}/{n}] {what} {refs[ref]} done ({time.time() - t0:.0f} s)", flush=True)
        except RayTaskError as e:
            failed.append((refs[ref], e))
            print(f"[{len(results) + len(failed)}/{n}] {what} {refs[ref]} FAILED", flush=True)
    if failed:
        name, e = failed[0]
        cause = getattr(e, "cause", None)
        if isinstance(cause, LiserError):
            raise LiserError(f"{len(failed)} of {n} Ray tasks failed (the others are finished and kept); "
                             f"{name}: {cause}") from None
        raise e
    return [results[r] for r in order]


# ---------------------------------------------------------------- grid runs
def _train_task(train_one, cfg_dict: dict, threads: int, cwd: str) -> str:
    """One run on a Ray worker: `train_one(cfg_dict, threads, progress=False)`; returns the run directory."""
    _enter(cwd)
    if str(cfg_dict.get("device", "")).startswith("cuda:"):
        cfg_dict = {**cfg_dict, "device": "cuda"}  # Ray shows a task only the GPU it assigned, as cuda:0
    return train_one(cfg_dict, threads, False)  # as the local runner returns it: relative to the shared folder


def ray_train(train_one, cfg_dicts: list[dict], threads: int, address: str | None,
              gpu_fraction: float = RUN_GPU_FRACTION) -> list[str]:
    """Train every config as a Ray task running `train_one` (experiment._train_one, the local runner's
    function, passed in so that this module never imports experiment); returns the run directories, in order.

    Each task declares `threads` CPUs (its torch threads) and, when its device
    is auto or cuda and the cluster has a GPU, `gpu_fraction` of one.
    LiserError when a run directory is not visible here afterwards (out/ is not
    on storage shared with the workers).
    """
    if not cfg_dicts:
        return []
    threads = max(1, int(threads))
    cwd = os.getcwd()
    with ray_session(address) as ray:
        task = ray.remote(_train_task)
        refs = {}
        for d in cfg_dicts:
            opts = dict(num_cpus=threads, num_gpus=gpu_share(d.get("device", "auto"), gpu_fraction, ray),
                        max_retries=MAX_RETRIES, retry_exceptions=False)
            refs[task.options(**opts).remote(train_one, d, threads, cwd)] = f"{d['name']}/fold{d['fold']}"
        runs = _gather(ray, refs, "run")
    for r in runs:
        if not (Path(r) / "metrics.json").is_file():
            raise LiserError(f"{r}/metrics.json: written by a Ray worker but not visible here; "
                             "the grid's out/ must be on storage every node shares")
    return runs


# ---------------------------------------------------------------- labeling
def _label_task(teacher: str, cfg_dict: dict, folds, shard: tuple[int, int], overrides: list, cwd: str) -> str:
    """One shard of a labeling job on a Ray worker: the local command's own function with shard=(i, n)."""
    _enter(cwd)
    from liser.core.config import Config
    from liser.teachers.pipeline import label_speech, label_video

    cfg = Config.from_dict(cfg_dict)
    if teacher == "speech":
        label_speech(cfg, folds, shard, overrides, progress=False)
    else:
        label_video(cfg, shard, progress=False)
    return f"{teacher} shard {shard[0]}/{shard[1]}"


def _slots(ray, cpus: int, gpus: float) -> int:
    """How many tasks of this size the cluster runs at once (the number of shards to cut)."""
    res = ray.cluster_resources()
    if gpus > 0:
        return max(1, int(res.get("GPU", 0) / gpus + 1e-9))
    return max(1, int(res.get("CPU", 1) // cpus))


def ray_label(cfg, teacher: str, folds=None, overrides=(), address: str | None = None, shards: int | None = None,
              gpu_fraction: float = LABEL_GPU_FRACTION, progress: bool = True) -> list[str]:
    """`liser teacher label {speech,video} CONFIG --ray`: the pool labeled by shards as Ray tasks.

    What must exist once is made here first, on the driver: the pool's
    manifests and, for speech, each fold's teacher (fitted or reused).
    Then, fold by fold (a frozen encoder's cached states serve every later
    fold), `shards` tasks label items i, i+n, ... (default: as many as the
    cluster runs at once); the last shard to finish merges the store. The
    local command then runs over the result: it finds every store complete
    and returns their paths, or finalises one whose merge was lost.
    """
    from liser.teachers.pipeline import (fit_speech_teachers, label_speech, label_video, speech_teacher_config)
    from liser.data.workspace import fold_indices, labeled_manifest, speech_store, unlabeled_pool, video_store

    if teacher not in ("speech", "video"):
        raise LiserError(f"teacher {teacher!r}: speech or video")
    overrides = list(overrides)
    cwd = os.getcwd()
    store = speech_store(cfg, 0) if teacher == "speech" else video_store(cfg)
    if not store:
        raise LiserError(f"{teacher}_store: the config names no store to write")
    tcfg = speech_teacher_config(cfg, overrides) if teacher == "speech" else None  # a bad --teacher-set fails now
    with ray_session(address) as ray:
        task = ray.remote(_label_task)
        if teacher == "speech":
            pool = unlabeled_pool(cfg)  # prepared once, here: tasks only read the manifests
            fit_speech_teachers(cfg, folds, overrides, progress)
            cpus = max(1, tcfg.threads)
            gpus = gpu_share(tcfg.device, gpu_fraction, ray)
            groups = [[k] for k in fold_indices(cfg, labeled_manifest(cfg), folds)]
        else:
            pool = unlabeled_pool(cfg, videos_only=True)
            cpus, gpus, groups = 1, 0.0, [None]  # faces and the video teacher run on CPUs
        n = max(1, min(shards or _slots(ray, cpus, gpus), len(pool.items)))
        for group in groups:
            refs = {}
            for i in range(n):
                ref = task.options(num_cpus=cpus, num_gpus=gpus, max_retries=MAX_RETRIES, retry_exceptions=False) \
                    .remote(teacher, cfg.to_dict(), group, (i, n), overrides, cwd)
                refs[ref] = f"{teacher}" + (f" fold {group[0]}" if group else "") + f" shard {i}/{n}"
            _gather(ray, refs, "label")
    if teacher == "speech":
        return label_speech(cfg, folds, (0, 1), overrides, progress)
    return [label_video(cfg, (0, 1), progress)]
