"""`liser predict` over many files on several cores: the same output, byte for byte, as one file at a time.

Real RAVDESS files (and a stereo 44.1 kHz WAV and bad files made from
them) through the packaged default model (ONNX) in fresh
processes, `--threads 1` against `--threads 3`: stdout and stderr merged,
so the order of results and of error lines is compared too. Also: the
one-open decoding path equals the general reader's features bit for bit,
the windows cut as views equal the front end's definition, which threads
the files run on, the ordered map's order, errors and early close, and
that numpy's BLAS is kept on one thread and torch and scipy stay unimported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

sf = pytest.importorskip("soundfile")
pytest.importorskip("onnxruntime")

from liser.data import audio  # noqa: E402
from liser.data import frontend
from liser.inference import predict as lp  # noqa: E402
import liser
from liser.inference import decode
from liser.core.errors import LiserError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
RAVDESS = DATA / "ravdess"


def _ravdess(n: int) -> list[Path]:
    if not RAVDESS.is_dir():
        pytest.skip(f"{RAVDESS} not found")
    files = sorted(RAVDESS.glob("Actor_*/*.flac"))
    return files[:: max(1, len(files) // n)][:n]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict:
    """10 RAVDESS files and a stereo 44.1 kHz int16 WAV made from them, a 3-channel WAV, and three bad files."""
    d = tmp_path_factory.mktemp("parallel")
    rav = _ravdess(10)
    x, sr = sf.read(rav[3], dtype="float32")
    y, _ = sf.read(rav[9], dtype="float32")
    n = min(len(x), len(y))
    stereo = audio.resample(np.stack([x[:n], 0.5 * y[:n]], 1), sr, 44100)
    sf.write(d / "stereo-44k.wav", stereo, 44100, subtype="PCM_16")
    sf.write(d / "three-channels.wav", np.stack([0.05 * y[:n], x[:n], 0.05 * y[:n]], 1), sr)
    (d / "empty.wav").write_bytes(b"")
    (d / "text.wav").write_text("not audio\n")
    sf.write(d / "silent.flac", np.zeros(sr * 2, np.float32), sr)
    good = [*rav[:6], d / "stereo-44k.wav", *rav[6:]]
    bad = [d / "empty.wav", d / "text.wav", d / "silent.flac"]
    order = good[:4] + [bad[0]] + good[4:8] + [bad[1]] + good[8:] + [bad[2]]  # bad files among the good ones
    # the 3-channel file is read, not predicted by the CLI tests: its down-mix imports scipy (a second of CPU here)
    return {"good": good, "bad": bad, "order": [str(p) for p in order], "dir": d, "three": d / "three-channels.wav"}


def _cli(args: list[str]) -> subprocess.CompletedProcess:
    """`python -m liser.cli ARGS` in a fresh process, stderr merged into stdout (both are flushed line by line)."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    return subprocess.run([sys.executable, "-m", "liser.cli", *args], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, env=env, timeout=600)


@pytest.mark.parametrize("fmt", [["--json", "--stride", "0.1"], ["--csv", "--timeline"]])
def test_parallel_output_equals_sequential(inputs, fmt):
    missing = str(inputs["dir"] / "missing.flac")
    args = ["predict", *inputs["order"], missing, *fmt]
    one, three = _cli(args + ["--threads", "1"]), _cli(args + ["--threads", "3"])
    assert one.returncode == three.returncode == 1, one.stdout[-2000:]
    assert three.stdout == one.stdout
    lines = one.stdout.splitlines()
    # the missing path is said first (before any file is read), then every input in its turn, a bad one in one line
    assert lines[0].startswith(f"liser: {missing}: ")
    errors = [x for x in lines if x.startswith("liser: ")]
    assert len(errors) == 1 + len(inputs["bad"])
    if fmt[0] == "--json":
        records = [json.loads(x) for x in lines if x.startswith("{")]
        rows = [r for r in records if "label" in r]
        assert [r["path"] for r in rows] == [str(p) for p in inputs["good"]]
        assert sorted(r["path"] for r in records if "error" in r) == sorted(str(p) for p in inputs["bad"])
        assert all(set(r["probabilities"]) and abs(sum(r["probabilities"].values()) - 1) < 1e-4 for r in rows)
        turns = [x[len("liser: "):].split(": ")[0] if x.startswith("liser: ") else json.loads(x)["path"]
                 for x in lines[1:] if not (x.startswith("{") and "error" in json.loads(x))]
        assert turns == inputs["order"]


def test_one_open_read_equals_the_general_reader(inputs, monkeypatch):
    files = [*inputs["good"][:3], inputs["good"][6], inputs["three"]]  # mono 16 kHz FLAC, stereo 44.1 kHz, 3 channels
    for corpus, pattern in (("emodb", "*.flac"), ("tess", "*.opus"), ("cremad", "*.opus")):
        files += sorted((DATA / corpus).rglob(pattern))[:2] if (DATA / corpus).is_dir() else []
    for f in files:
        assert decode._read_short(Path(f)) is not None, f
        got, duration = decode.file_frames(f)
        sig = decode.read_input(f)  # liser.data.audio.load_audio: soundfile's always-2-D read, then the down-mix
        assert got.dtype == np.float32 and np.array_equal(got, decode.features(sig)), f
        assert duration == len(sig) / audio.SAMPLE_RATE
    for f in inputs["bad"][:2]:  # what soundfile cannot read goes to the general reader, which says why
        assert decode._read_short(f) is None
        with pytest.raises(LiserError, match=str(f)):
            decode.file_frames(f)
    monkeypatch.setattr(decode, "LONG_FILE_S", 2.0)  # a "long" file: read in blocks, not whole
    assert decode._read_short(inputs["good"][0]) is None
    assert decode.file_frames(inputs["good"][0])[0].dtype == np.float16


def test_windows_as_views_equal_the_front_end_windows(inputs):
    model = liser.load(None, threads=1)  # the packaged default model
    for f in inputs["good"][:3]:
        frames, _ = decode.file_frames(f)
        for stride in (0.1, 0.5, 3.0):
            logits, starts = model.frames_logits(frames, stride)
            ref = model.window_logits(np.ascontiguousarray(frontend.windows(frames, stride)))
            assert np.array_equal(logits, ref), (f, stride)
            assert np.array_equal(starts, audio.window_starts(len(frames), stride))
            half, _ = model.frames_logits(frames.astype(np.float16), stride)  # a long file's float16 frames
            assert np.array_equal(half, logits)


def test_plan_threads(monkeypatch):
    monkeypatch.setattr(lp, "cores", lambda: 8)
    assert lp.plan_threads(None, 100) == (8, 1)  # every core, one file each
    assert lp.plan_threads(None, 2) == (2, 4)  # fewer files than cores: the rest within each file
    assert lp.plan_threads(None, 1) == (1, 8)
    assert lp.plan_threads(1, 100) == (1, 1)
    assert lp.plan_threads(3, 100) == (3, 1)
    assert lp.plan_threads(4, 0) == (1, 4)
    assert lp.plan_threads(None, 5, stream_input=True) == (1, 8)
    with pytest.raises(LiserError, match="--threads 0"):
        lp.plan_threads(0, 3)
    assert lp.cores() >= 1


def test_in_order_keeps_order_errors_and_stops(inputs):
    files = [str(p) for p in inputs["good"][:8]] + [str(inputs["bad"][0])]

    def slow_first(f):  # the first items finish last
        time.sleep(0.05 * (len(files) - files.index(f)) / len(files))
        return decode.file_frames(f)[1]

    got = list(lp.in_order(slow_first, files, 4))
    assert [g[0] for g in got] == files
    assert all(err is None and res > 0 for _, res, err in got[:-1])
    assert got[-1][1] is None and isinstance(got[-1][2], LiserError)
    seq = list(lp.in_order(slow_first, files, 1))
    assert [(f, r, type(e)) for f, r, e in seq] == [(f, r, type(e)) for f, r, e in got]
    started = []

    def record(f):
        started.append(f)
        time.sleep(0.02)
        return f

    items = [str(i) for i in range(200)]
    gen = lp.in_order(record, items, 3)
    assert [next(gen)[0] for _ in range(5)] == items[:5]
    gen.close()  # a broken pipe: what has not started is cancelled
    assert len(started) <= 5 + 2 * 3 + 3


def test_files_run_on_the_pool_threads(inputs, monkeypatch, capsys):
    from liser.cli import main

    names = []
    real = lp._predict_path

    def spy(*args, **kwargs):
        names.append(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(lp, "_predict_path", spy)
    files = [str(p) for p in inputs["good"][:6]]
    assert main(["predict", *files, "--json", "--threads", "1"]) == 0
    seq = capsys.readouterr().out
    assert set(names) == {threading.current_thread().name}
    names.clear()
    assert main(["predict", *files, "--json", "--threads", "3"]) == 0
    assert capsys.readouterr().out == seq
    assert len(names) == 6 and all(n.startswith("liser-predict") for n in names)


def test_one_blas_thread_for_the_command_and_restored(monkeypatch):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)

    def blas_threads() -> list[int]:
        return [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]

    if not blas_threads():
        pytest.skip("numpy's BLAS is not seen by threadpoolctl")
    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
        before = blas_threads()
        with lp.one_blas_thread():
            assert set(blas_threads()) == {1}
        assert blas_threads() == before


CHILD = r"""
import json, sys
from liser.cli import main
rc = main(sys.argv[1:])
from threadpoolctl import threadpool_info
mods = sorted({k.split(".")[0] for k in sys.modules} & {"torch", "torchaudio", "scipy", "transformers", "cv2", "av"})
blas = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
print("RESULT " + json.dumps({"rc": rc, "modules": mods, "blas": blas}), file=sys.stderr)
"""


def test_parallel_cli_imports_neither_torch_nor_scipy(inputs):
    pytest.importorskip("threadpoolctl")
    files = [str(p) for p in inputs["good"][:8]]  # 16 kHz mono and a stereo 44.1 kHz file (soxr, not scipy)
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    r = subprocess.run([sys.executable, "-c", CHILD, "predict", *files, "--json", "--threads", "2"],
                       capture_output=True, text=True, env=env, timeout=300)
    line = [x for x in r.stderr.splitlines() if x.startswith("RESULT ")]
    assert line, r.stderr[-2000:]
    out = json.loads(line[-1][len("RESULT "):])
    assert out["rc"] == 0 and len(r.stdout.splitlines()) == len(files)
    assert out["modules"] == [], f"the parallel ONNX path imported {out['modules']}"
    # numpy was loaded by the command, after liser.cli set OPENBLAS_NUM_THREADS=1: one BLAS thread, no spinning
    assert out["blas"] and set(out["blas"]) == {1}


def test_predict_runs_numpy_blas_on_one_thread(tmp_path):
    """`liser predict` in its own process: numpy's BLAS starts with one thread (files take the cores), though
    building the CLI's parser loads numpy (liser.cli._one_blas_thread_at_load runs before it)."""
    import subprocess
    import sys

    from conftest import real_root

    f = sorted((real_root("ravdess") / "Actor_01").glob("*.flac"))[0]
    child = ("import sys, contextlib, io\nsys.argv = ['liser', 'predict', sys.argv[1]]\nfrom liser.cli import main\n"
             "with contextlib.redirect_stdout(io.StringIO()):\n    rc = main()\n"
             "from threadpoolctl import threadpool_info\n"
             "print(rc, max(i['num_threads'] for i in threadpool_info() if i.get('user_api') == 'blas'))\n")
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS")}
    r = subprocess.run([sys.executable, "-c", child, str(f)], capture_output=True, text=True, env=env, timeout=300)
    assert r.stdout.split() == ["0", "1"], (r.stdout, r.stderr[-2000:])
