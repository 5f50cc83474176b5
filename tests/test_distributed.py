"""Ray runner (liser.experiments.distributed) on a local Ray: the same run directories, grid.json and stores as the local runner.

The Ray tests skip when Ray is not installed (it is the optional extra
`liser[ray]`); the error a user gets without it is tested either way.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import DATA, real_root

TIMING = ("train_s", "epoch_s", "samples_per_s", "wall_s", "seconds", "time")


class FakeRay(types.ModuleType):
    """The part of Ray's API that liser.experiments.distributed uses, over a pool of 2 spawned processes.

    It checks liser's side of the Ray runner (one job per task, declared
    resources, the change of directory, shards and their merge, the gathering)
    on machines where a real Ray cannot start: this project's 2 cores are
    often starved by a background grid, and Ray's raylet gives up after 30 s.
    The same tests then run on a real local Ray when it starts.
    """

    def __init__(self):
        super().__init__("ray")
        from concurrent.futures import ProcessPoolExecutor

        self.pool = ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn"))
        self.declared: list[dict] = []
        self.exceptions = types.ModuleType("ray.exceptions")

        class RayTaskError(Exception):
            def __init__(self, cause):
                super().__init__(str(cause))
                self.cause = cause

        self.exceptions.RayTaskError = RayTaskError

    def is_initialized(self):
        return True

    def cluster_resources(self):
        return {"CPU": 2.0}

    def remote(self, fn):
        ray = self

        class Remote:
            def options(self, **kw):
                ray.declared.append(kw)
                return self

            def remote(self, *args):
                return ray.pool.submit(fn, *args)

        return Remote()

    def wait(self, refs, num_returns=1):
        from concurrent.futures import FIRST_COMPLETED, wait

        done, _ = wait(refs, return_when=FIRST_COMPLETED)
        first = next(r for r in refs if r in done)
        return [first], [r for r in refs if r is not first]

    def get(self, ref):
        try:
            return ref.result()
        except Exception as e:
            raise self.exceptions.RayTaskError(e) from e


@pytest.fixture(scope="module", params=["fake", "real"])
def ray_api(request):
    """Ray's API for liser.experiments.distributed: the FakeRay pool, then a real local Ray of 2 CPUs (skipped when it
    cannot start or is not installed; with $RAY_ADDRESS, that cluster)."""
    if request.param == "fake":
        fake = FakeRay()
        saved = {k: sys.modules.get(k) for k in ("ray", "ray.exceptions")}
        sys.modules.update({"ray": fake, "ray.exceptions": fake.exceptions})
        yield fake
        fake.pool.shutdown()
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
        return
    ray = pytest.importorskip("ray")
    try:
        if os.environ.get("RAY_ADDRESS"):  # e.g. one started with `ray start --head --num-cpus=2`
            ray.init(log_to_driver=False)
        else:
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    except Exception as e:  # Ray gives its raylet 30 s to register: a machine starved of CPU may not make it
        ray.shutdown()
        pytest.skip(f"a local Ray did not start ({e}); the fake-Ray tests ran; free some CPU or set RAY_ADDRESS")
    yield ray
    ray.shutdown()


# ---------------------------------------------------------------- without Ray, and the resources
def test_ray_flag_without_ray_is_one_line(monkeypatch, capsys):
    from liser.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    assert main(["experiment", "configs/grid-ravdess.yaml", "--ray", "auto"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["liser: liser experiment --ray needs the 'ray' extra: pip install 'liser[ray]' (no module named 'ray')"]


def test_shard_and_ray_do_not_go_together(capsys):
    from liser.cli import main

    assert main(["teacher", "label", "video", "configs/vid-dstl.yaml", "--shard", "0/2", "--ray"]) == 2
    assert "--shard and --ray" in capsys.readouterr().err


def test_gpu_share_follows_device_and_cluster():
    from liser.experiments.distributed import gpu_share
    from liser.core.errors import LiserError

    class Fake:
        def __init__(self, gpus):
            self.gpus = gpus

        def cluster_resources(self):
            return {"CPU": 8.0, **({"GPU": self.gpus} if self.gpus else {})}

    assert gpu_share("cpu", 0.25, Fake(2)) == 0
    assert gpu_share("auto", 0.25, Fake(2)) == 0.25
    assert gpu_share("cuda:1", 0.25, Fake(1)) == 0.25
    assert gpu_share("auto", 0.25, Fake(0)) == 0
    with pytest.raises(LiserError, match="no node of the Ray cluster has a GPU"):
        gpu_share("cuda", 0.25, Fake(0))


# ---------------------------------------------------------------- a 2-run grid
def _strip(x):
    """A metrics/grid dict without wall-clock figures and absolute run paths."""
    if isinstance(x, dict):
        return {k: _strip(v) for k, v in x.items() if k not in TIMING and k != "run_dir"}
    if isinstance(x, list):
        return [_strip(v) for v in x]
    return x


def _grid(base_cfg, tmp: Path, name: str) -> Path:
    cfg_file = tmp / "base.yaml"
    if not cfg_file.is_file():
        base_cfg.save(cfg_file)
    g = tmp / f"{name}.yaml"
    g.write_text(yaml.safe_dump({"base": str(cfg_file), "out": str(tmp / name), "jobs": 2,
                                 "runs": {"no-dstl": {"seed": [0, 1]}}}))
    return g


@pytest.fixture(scope="module")
def local_grid(small_config, tmp_path_factory):
    """The 2-run grid (seeds 0 and 1, 1 epoch, 1 thread) by the local runner, 2 processes: the reference."""
    from liser.experiments.grid import run_grid

    tmp = tmp_path_factory.mktemp("local_grid")
    cfg = small_config.replace(epochs=1, threads=1)
    return cfg, tmp / "local", run_grid(_grid(cfg, tmp, "local"), progress=False, report=False)


def test_grid_through_ray_equals_local_processes(ray_api, local_grid, tmp_path):
    from liser.experiments.grid import run_grid

    cfg, local_out, local = local_grid
    ray = run_grid(_grid(cfg, tmp_path, "ray"), progress=False, report=True, ray="local")
    assert ray["runs_trained"] == local["runs_trained"] == 2 and ray["ray"] == "local"
    assert _strip(ray["configs"]) == _strip(local["configs"])
    assert _strip(json.loads((tmp_path / "ray" / "grid.json").read_text())["configs"]) == _strip(local["configs"])
    for variant in ("seed0", "seed1"):
        a, b = local_out / "no-dstl" / variant / "fold0", tmp_path / "ray" / "no-dstl" / variant / "fold0"
        assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
        ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
        assert _strip(mb) == _strip(ma)  # same seeds, 1 thread: identical numbers, logits included
        ca, cb = (yaml.safe_load((d / "config.yaml").read_text()) for d in (a, b))
        assert {**ca, "out": ""} == {**cb, "out": ""}
    assert "as Ray tasks (`--ray local`)" in (tmp_path / "ray" / "report.md").read_text()
    if isinstance(ray_api, FakeRay):  # each run declared its threads as CPUs and no GPU (none here)
        assert [(d["num_cpus"], d["num_gpus"]) for d in ray_api.declared[-2:]] == [(1, 0.0)] * 2
    # finished runs are skipped: nothing is submitted again
    assert run_grid(_grid(cfg, tmp_path, "ray"), progress=False, report=False, ray="local")["runs_trained"] == 0


# ---------------------------------------------------------------- labeling
@pytest.fixture(scope="module")
def label_setup(small_config, tiny_hubert, tmp_path_factory):  # noqa: F811
    """small_config with a frozen tiny-HuBERT speech teacher (fitted once) and 8 TESS files as the pool."""
    from liser.teachers.pipeline import fit_speech_teachers

    real_root("tess")
    base = tmp_path_factory.mktemp("ray_label")
    teacher_yaml = base / "teacher.yaml"
    teacher_yaml.write_text(f"backbone: {tiny_hubert}\nmode: frozen\nepochs: 1\nbatch_size: 16\nvad: false\n"
                            f"cache_dir: {base / 'cache'}\n")
    tess = base / "tess"
    for folder in ("OAF_happy", "YAF_sad"):
        (tess / folder).mkdir(parents=True)
        for f in sorted((DATA / "tess" / folder).glob("*.opus"))[:4]:
            (tess / folder / f.name).symlink_to(f)
    cfg = small_config.replace(name="ray-label", work=str(base / "work"), unlabeled=(f"tess:{tess}",),
                               speech_teacher=str(teacher_yaml), speech_store=str(base / "local" / "speech-fold{fold}"))
    shutil.copytree(small_config.work, base / "work", symlinks=True, dirs_exist_ok=True)
    fit_speech_teachers(cfg, progress=False)
    return cfg, base


def test_speech_labeling_through_ray_equals_local(ray_api, label_setup, tmp_path):
    from liser.experiments.distributed import ray_label
    from liser.teachers.pipeline import label_speech

    cfg, base = label_setup
    local = Path(label_speech(cfg, progress=False)[0])
    shutil.rmtree(base / "cache")  # the Ray workers encode the pool again, in their own processes
    rcfg = cfg.replace(speech_store=str(tmp_path / "ray" / "speech-fold{fold}"))
    stores = ray_label(rcfg, "speech", address="local", progress=False)
    ray = Path(stores[0])
    assert ray == tmp_path / "ray" / "speech-fold0"
    assert len(list((ray / "parts").glob("part-*of2-*.npz"))) == 2  # two shards, one per CPU, merged
    for name in ("index.csv", "rejected.csv"):
        assert (ray / name).read_text() == (local / name).read_text()
    for name in ("probs.npy", "valid.npy"):
        np.testing.assert_array_equal(np.load(ray / name), np.load(local / name))
    meta_l, meta_r = (json.loads((d / "meta.json").read_text()) for d in (local, ray))
    assert meta_r == meta_l and meta_r["items"] == 8
