"""`liser quickstart`: the whole LiSER pipeline, small enough to watch (minutes on 2 CPU cores).

What it runs, all under `work/quickstart/` and `runs/quickstart/` (configs/grid-quickstart.yaml):

    1. data      a labeled RAVDESS subset (6 actors, one statement, one repetition: 90 files;
                 fold 0 trains on 4 actors, validates on 1, tests on 1) and a small unlabeled
                 pool (48 TESS files plus 16 interview videos with faces), each prepared into a manifest
    2. teachers  the speech teacher (frozen Whisper-base + a layer-weighted head, few epochs,
                 trained on fold 0's training actors only) labels the pool's 0.5 s pieces;
                 faces are tracked in the pool's videos and FER2013 labels them
    3. students  no-dstl and vid-sp-dstl (both teachers, eq. 4) on fold 0, a few epochs
    4. report    runs/quickstart/report.md (+ confusion PNGs): the two rows side by side
    5. export    runs/quickstart/student.onnx, parity-checked against PyTorch on the test actor

Every step resumes: re-running skips what is already there. The figures of
so small a run say nothing about the method; the full tables are the
README's next commands. The data roots come from the base config's `root`
(its parent folder holds ravdess/, tess/ and av/, as ../shared/data does).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from liser.core.config import Config
from liser.core.errors import LiserError

ACTORS = {"train": ["Actor_01", "Actor_02", "Actor_03", "Actor_04"], "val": ["Actor_05"], "test": ["Actor_06"]}
KEEP = {"statement": "01", "repetition": "01"}  # RAVDESS fields 5 and 6: a quarter of the files, every emotion
POOL_AUDIO = 48  # TESS files in the unlabeled pool (spread over its emotion folders)
POOL_VIDEOS = 16  # interview clips in the unlabeled pool (about 5 s each, spread over the speakers)


def _link_tree(files: list[Path], src_root: Path, dst_root: Path) -> None:
    """Symbolic links to `files` under `dst_root`, keeping their paths relative to `src_root`."""
    for f in files:
        dst = dst_root / f.relative_to(src_root)
        dst.parent.mkdir(parents=True, exist_ok=True)
        if not dst.is_symlink():
            dst.symlink_to(f.resolve())


def _spread(files: list[Path], n: int) -> list[Path]:
    """`n` of the sorted files, evenly spaced (deterministic)."""
    files = sorted(files)
    step = max(1, len(files) // n)
    return files[::step][:n]


def prepare_data(base: Config) -> None:
    """The labeled subset (manifest + fold file) and the unlabeled pool's manifest named by `base`."""
    from liser.data.corpora import prepare
    from liser.core.atomic import atomic_write_text
    from liser.core.util import AUDIO_SUFFIXES

    data = Path(base.root).parent
    work = Path(base.work)
    if not (Path(base.manifest) / "meta.json").is_file():
        ravdess = Path(base.root)
        if not ravdess.is_dir():
            raise LiserError(f"{ravdess}: no RAVDESS here (quickstart reads ../shared/data; use --set root=...)")
        keep = [f for a in sum(ACTORS.values(), []) for f in sorted((ravdess / a).iterdir())
                if f.suffix.lower() in AUDIO_SUFFIXES and f.stem.split("-")[4:6] == [KEEP["statement"], KEEP["repetition"]]]
        _link_tree(keep, ravdess, work / "data" / "ravdess")
        prepare("ravdess", work / "data" / "ravdess", progress=False).save(base.manifest)
    folds = Path(base.folds)
    if not folds.is_file():
        folds.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folds, json.dumps({"corpus": "ravdess", "k": 1, "seed": 0, "folds": [ACTORS]}, indent=1) + "\n")
    for spec in base.unlabeled:
        if (Path(spec) / "meta.json").is_file():
            continue
        tess = [f for f in (data / "tess").rglob("*") if f.suffix.lower() in AUDIO_SUFFIXES]
        videos = list((data / "av" / "interviews").rglob("*.mp4"))
        if not tess or not videos:
            raise LiserError(f"{data}: the quickstart pool needs tess/ and av/interviews/ there")
        pool = work / "data" / "pool"
        _link_tree(_spread(tess, POOL_AUDIO), data, pool)
        _link_tree(_spread(videos, POOL_VIDEOS), data, pool)
        prepare("unlabeled", pool, progress=False).save(spec)


def quickstart(grid_path: str | Path = "configs/grid-quickstart.yaml", overrides=(), progress: bool = True) -> dict:
    """Run the five steps above; returns {step: seconds} plus the paths made. LiserError on missing data."""
    from liser.experiments.grid import load_grid, run_grid
    from liser.inference.export import export_onnx
    from liser.teachers.pipeline import fit_speech_teachers, label_speech, label_video
    from liser.data.workspace import run_dir, speech_store, video_store

    t0, times = time.time(), {}

    def step(name: str, fn, *a, **kw):
        t = time.time()
        print(f"== {name}", flush=True)
        out = fn(*a, **kw)
        times[name] = round(time.time() - t, 1)
        return out

    from liser.core.outputs import check_onnx_outputs, check_runs_out

    grid = load_grid(grid_path, overrides)
    base: Config = grid["base"]
    check_runs_out(base)  # before any step: an `out` that is not liser's is refused now, not after the teachers
    check_onnx_outputs(Path(base.out) / "student.onnx")
    step("data: a labeled subset and an unlabeled pool", prepare_data, base)
    step("speech teacher fit: on fold 0's training actors", fit_speech_teachers, base, [0], (), progress)
    step("speech teacher labels: the pool's 0.5 s pieces", label_speech, base, [0], (0, 1), (), progress)
    step("faces + video teacher: the pool's videos", label_video, base, (0, 1), progress)
    results = step("students and report", run_grid, grid_path, overrides, None, progress)
    run = run_dir(base.replace(name="vid-sp-dstl/default", fold=0))
    onnx = Path(base.out) / "student.onnx"
    step("export", export_onnx, run, onnx)
    times["total"] = round(time.time() - t0, 1)
    made = {"report": str(Path(base.out) / "report.md"), "student run": str(run), "onnx": str(onnx),
            "speech store": speech_store(base, 0), "video store": video_store(base)}
    _say_done(results, times, made, onnx)
    return {**made, "seconds": times}


def _say_done(results: dict, times: dict, made: dict, onnx: Path) -> None:
    """The two rows, the time of each step, what was made and the next commands."""
    from liser.experiments.grid import summary_table

    rows = {name: {**by_frac["1"], "folds": by_frac["1"]["n_folds"]} for name, by_frac in results["configs"].items()}
    print(f"\n{summary_table(rows)}\n(one test actor, a few epochs: the pipeline works; the figures mean little)")
    steps = ", ".join(f"{k.split(':')[0]} {v:.0f} s" for k, v in times.items() if k != "total")
    print(f"\nquickstart finished in {times['total'] / 60:.1f} min ({steps}). It made:")
    for k, v in made.items():
        print(f"  {k:<13} {v}")
    cmd = _liser_command()
    print("\nNext" + ("" if cmd == "liser" else f" (`liser` is not on PATH here: `source {Path(cmd).parent}/activate`"
                                                 f" puts it there; until then it is {cmd})") + ":\n"
          f"  {cmd} predict {onnx} some.wav                     # a label from the exported student\n"
          f"  {cmd} cv configs/no-dstl.yaml --jobs 2                       # the 5-fold RAVDESS no-dstl table (~2 h)\n"
          f"  {cmd} teacher label speech configs/vid-sp-dstl.yaml          # the full teachers' stores, then\n"
          f"  {cmd} teacher label video configs/vid-sp-dstl.yaml\n"
          f"  {cmd} experiment configs/grid-ravdess-cpu.yaml               # the Table 2 grid and its report")


def _liser_command() -> str:
    """How the user can run liser from this shell: `liser` when it is on PATH, else this interpreter's script
    (.venv/bin/liser after scripts/setup.sh), relative to the working folder when it lies under it."""
    import shutil
    import sys

    if shutil.which("liser"):
        return "liser"
    script = Path(sys.executable).parent / "liser"
    try:
        return str(script.relative_to(Path.cwd()))
    except ValueError:
        return str(script)
