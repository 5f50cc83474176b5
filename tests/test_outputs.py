"""Outputs (liser.core.outputs): liser never deletes or overwrites what it did not write, and says in one line
when an output cannot be written (read-only, full disk, a closed or full stdout).

Every case runs the `liser` command as a subprocess on real audio (symbolic links to
../shared/data in tmp_path; skipped without it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import real_root

LISER = Path(sys.executable).parent / "liser"
ACTORS = ("Actor_01", "Actor_02", "Actor_03")


def liser(*args, cwd=None, stdout=subprocess.PIPE, timeout=300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([str(LISER), *map(str, args)], stdout=stdout, stderr=subprocess.PIPE, text=True, cwd=cwd,
                          env=env, timeout=timeout)


def one_line_error(p: subprocess.CompletedProcess) -> str:
    """The one `liser: ...` line of a refused command (exit 2, no traceback)."""
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert "Traceback" not in p.stderr, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("liser: "), p.stderr
    return lines[0]


def tree(d: Path) -> list[str]:
    """Every path under d (links not followed), sorted: what must not change."""
    return sorted(str(p.relative_to(d)) for p in d.rglob("*"))


@pytest.fixture
def project(tmp_path) -> Path:
    """project/ravdess (3 actors x 3 real files, symbolic links) and project/notes.txt: the reported layout."""
    src = real_root("ravdess")
    root = tmp_path / "project" / "ravdess"
    for actor in ACTORS:
        (root / actor).mkdir(parents=True)
        for f in sorted((src / actor).glob("*.flac"))[:3]:
            (root / actor / f.name).symlink_to(f)
    (tmp_path / "project" / "notes.txt").write_text("my notes\n")
    return tmp_path / "project"


# ---------------------------------------------------------------- the three reported cases of `prepare -o`
def test_prepare_into_the_folder_holding_the_corpus_is_refused(project):
    before = tree(project)
    line = one_line_error(liser("prepare", "ravdess", project / "ravdess", "-o", project))
    assert f"{project}: holds the ravdess corpus root" in line
    assert tree(project) == before and (project / "notes.txt").read_text() == "my notes\n"


def test_prepare_into_the_corpus_root_is_refused(project):
    before = tree(project)
    line = one_line_error(liser("prepare", "ravdess", project / "ravdess", "-o", project / "ravdess"))
    assert f"{project / 'ravdess'}: is the ravdess corpus root" in line
    assert tree(project) == before


def test_prepare_into_dot(project, tmp_path):
    # `-o .` inside the project: refused in one line (it holds the corpus), never a traceback
    before = tree(project)
    line = one_line_error(liser("prepare", "ravdess", "ravdess", "-o", ".", cwd=project))
    assert line.startswith("liser: .: holds the ravdess corpus root")
    assert tree(project) == before
    # `-o .` in a folder of someone else's files: refused, the files stay
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("x")
    line = one_line_error(liser("prepare", "ravdess", project / "ravdess", "-o", ".", cwd=other))
    assert "not empty and not a liser manifest folder (it holds notes.txt)" in line
    assert tree(other) == ["notes.txt"]
    # `-o .` in an empty folder: the manifest is written there
    empty = tmp_path / "empty"
    empty.mkdir()
    p = liser("prepare", "ravdess", project / "ravdess", "-o", ".", cwd=empty)
    assert p.returncode == 0, p.stderr
    assert tree(empty) == ["manifest.csv", "meta.json", "rejected.csv"]


def test_prepare_replaces_only_a_manifests_own_files(project, tmp_path):
    from liser.data.corpora import Manifest

    out = tmp_path / "manifest"
    assert liser("prepare", "ravdess", project / "ravdess", "-o", out).returncode == 0
    (out / "notes.txt").write_text("mine\n")
    shutil.rmtree(project / "ravdess" / "Actor_03")  # the corpus changed: the manifest is redone
    p = liser("prepare", "ravdess", project / "ravdess", "-o", out)
    assert p.returncode == 0, p.stderr
    assert tree(out) == ["manifest.csv", "meta.json", "notes.txt", "rejected.csv"]
    assert (out / "notes.txt").read_text() == "mine\n"
    assert len(Manifest.load(out).items) == 6


# ---------------------------------------------------------------- the other commands that write
def test_folds_out_replaces_only_a_fold_file(project, tmp_path):
    m = tmp_path / "m"
    assert liser("prepare", "ravdess", project / "ravdess", "-o", m).returncode == 0
    line = one_line_error(liser("folds", m, "-k", "3", "-o", project / "notes.txt"))
    assert f"{project / 'notes.txt'}: exists and is not a liser fold file" in line
    assert (project / "notes.txt").read_text() == "my notes\n"
    line = one_line_error(liser("folds", m, "-k", "3", "-o", m))
    assert f"{m}: a folder, not a file" in line
    out = tmp_path / "f.json"
    assert liser("folds", m, "-k", "3", "-o", out).returncode == 0
    p = liser("folds", m, "-k", "3", "--seed", "1", "-o", out)  # its own file: replaced
    assert p.returncode == 0, p.stderr


def test_faces_out_must_be_a_face_track_folder(tmp_path):
    # another command that writes a folder: `liser faces -o`, on a manifest of a real video
    from liser.data.corpora import Item, Manifest

    demo = real_root("av") / "demo"
    video = sorted(demo.glob("*.mp4"))[0]
    m = Manifest("videos", demo, [Item(f"videos/x/{video.stem}", video.name, "x", "", 5.0, 16000, 1, "videos")])
    mdir = m.save(tmp_path / "m")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "rejected.csv").write_text("my table\n")
    (mine / "notes.txt").write_text("x")
    line = one_line_error(liser("faces", mdir, "-o", mine))
    assert f"{mine}: not empty and not a liser face-track folder" in line
    assert (mine / "rejected.csv").read_text() == "my table\n"
    line = one_line_error(liser("faces", mdir, "-o", demo.parent))
    assert f"{demo.parent}: holds the videos root" in line
    line = one_line_error(liser("faces", mdir, "-o", mdir))  # a manifest folder is not a face-track folder
    assert "not a liser face-track folder" in line


def test_export_train_experiment_and_cross_outputs_refuse_other_files(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "model.onnx").write_bytes(b"someone else's model")
    (mine / "result.json").write_text('{"a": 1}')
    line = one_line_error(liser("export", tmp_path / "run", "--onnx", mine / "model.onnx"))
    assert f"{mine / 'model.onnx'}: exists and is not a liser ONNX student" in line
    line = one_line_error(liser("export", tmp_path / "run", "--onnx", tmp_path / "a.onnx", "--int8", tmp_path / "a.onnx"))
    assert "--int8 names the --onnx file" in line
    line = one_line_error(liser("train", "--set", f"out={mine}", f"work={tmp_path / 'work'}"))
    assert f"{mine}: not empty and not a liser runs folder" in line
    grid = tmp_path / "grid.yaml"
    grid.write_text(f"out: {mine}\nruns:\n  plain: {{}}\n")
    line = one_line_error(liser("experiment", grid, "--set", f"work={tmp_path / 'work'}"))
    assert f"{mine}: not empty and not a liser runs folder" in line
    run = tmp_path / "run"
    run.mkdir()
    (run / "best.pt").write_bytes(b"")
    (run / "config.yaml").write_text("{}\n")
    line = one_line_error(liser("evaluate", run, "--on", "emodb:x", "--json", mine / "result.json"))
    assert f"{mine / 'result.json'}: exists and is not a liser cross-corpus result" in line
    assert sorted(p.name for p in mine.iterdir()) == ["model.onnx", "result.json"]
    assert not (tmp_path / "work").exists()


# ---------------------------------------------------------------- outputs that cannot be written
def test_prepare_into_a_path_under_a_file(project):
    line = one_line_error(liser("prepare", "ravdess", project / "ravdess", "-o", project / "notes.txt" / "m"))
    assert f"{project / 'notes.txt' / 'm'}: cannot write: {project / 'notes.txt'} is a file, not a folder" in line


def test_prepare_and_folds_into_proc_and_sys(project, tmp_path):
    # places even root cannot write to
    line = one_line_error(liser("prepare", "ravdess", project / "ravdess", "-o", "/proc/1/liser-test-manifest"))
    assert line.startswith("liser: /proc/1/liser-test-manifest: cannot write: ")
    m = tmp_path / "m"
    assert liser("prepare", "ravdess", project / "ravdess", "-o", m).returncode == 0
    line = one_line_error(liser("folds", m, "-k", "3", "-o", "/proc/1/liser-test-folds/f.json"))
    assert "/proc/1/liser-test-folds: cannot write: " in line
    if Path("/sys/kernel").is_dir():
        line = one_line_error(liser("prepare", "ravdess", project / "ravdess", "-o", "/sys/liser-test-manifest"))
        assert line.startswith("liser: /sys/liser-test-manifest: cannot write: ")


def _unshare_ok() -> bool:
    try:
        return subprocess.run(["unshare", "-m", "true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _in_mount(setup: str, command: list) -> subprocess.CompletedProcess:
    """`command` in a private mount namespace after the shell `setup` (mount a read-only or tiny folder)."""
    import shlex

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    script = f"{setup} && exec {' '.join(shlex.quote(str(c)) for c in command)}"
    return subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.skipif(not _unshare_ok(), reason="needs `unshare -m` (a private mount namespace) to mount a test folder")
def test_read_only_mount_and_full_disk(project, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    p = _in_mount(f"mount --bind {ro} {ro} && mount -o remount,bind,ro {ro}",
                  [LISER, "prepare", "ravdess", project / "ravdess", "-o", ro / "m"])
    assert f"{ro / 'm'}: cannot write: Read-only file system" in one_line_error(p)
    full = tmp_path / "full"
    full.mkdir()
    p = _in_mount(f"mount -t tmpfs -o size=4k tmpfs {full}",
                  [LISER, "prepare", "ravdess", project / "ravdess", "-o", full / "m"])
    assert f"{full / 'm'}: cannot write: No space left on device" in one_line_error(p)
    assert list(full.iterdir()) == []


@pytest.fixture
def audio_folder(tmp_path) -> Path:
    """24 real RAVDESS files (symbolic links) in one folder."""
    d = tmp_path / "audio"
    d.mkdir()
    for f in sorted((real_root("ravdess") / "Actor_05").glob("*.flac"))[:24]:
        (d / f.name).symlink_to(f)
    return d


def test_predict_to_dev_full_is_one_line(audio_folder):
    f = sorted(audio_folder.iterdir())[0]
    for args in ([f], ["--csv", audio_folder], ["--stream", f]):
        with open("/dev/full", "w") as full:
            p = liser("predict", "--threads", "1", "--stride", "3", *args, stdout=full)
        assert one_line_error(p) == "liser: stdout: cannot write: No space left on device"


def test_prepare_summary_to_dev_full_is_one_line(project, tmp_path):
    # a command whose few lines are still buffered when it ends
    with open("/dev/full", "w") as full:
        p = liser("prepare", "ravdess", project / "ravdess", "-o", tmp_path / "m", stdout=full)
    assert one_line_error(p) == "liser: stdout: cannot write: No space left on device"


@pytest.mark.parametrize("fmt", [[], ["--json"]])
def test_predict_into_a_closed_pipe_stops_quietly(audio_folder, fmt):
    # `liser predict FOLDER | head -1`: the reader leaves after one line
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen([str(LISER), "predict", "--threads", "1", "--stride", "3", *fmt, str(audio_folder)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    first = p.stdout.readline()
    p.stdout.close()
    err = p.stderr.read().decode()
    rc = p.wait(timeout=300)
    assert first and b".flac" in first
    assert err == "" and rc == 141, (rc, err)


def test_predict_pipe_to_head_in_a_shell(audio_folder):
    p = subprocess.run(["bash", "-c", f"'{LISER}' predict --threads 1 --stride 3 '{audio_folder}' | head -1; "
                                      "echo \"status ${PIPESTATUS[0]}\""],
                       capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    lines = p.stdout.strip().splitlines()
    assert len(lines) == 2 and ".flac" in lines[0] and lines[1] == "status 141", p.stdout
    assert p.stderr == ""


# ---------------------------------------------------------------- the rule itself (no command)
def test_runs_out_may_hold_its_work_cache_and_runs(tmp_path):
    from liser.core.config import Config
    from liser.core.errors import LiserError
    from liser.core.outputs import check_runs_out

    out = tmp_path / "bench"
    (out / "work" / "manifests").mkdir(parents=True)  # an interrupted `cv` whose work cache is inside `out`
    cfg = Config(out=str(out), work=str(out / "work"))
    assert check_runs_out(cfg) == out
    (out / "todo.txt").write_text("x")
    with pytest.raises(LiserError, match=r"not a liser runs folder \(it holds todo\.txt\)"):
        check_runs_out(cfg)
    (out / "no-dstl" / "fold0").mkdir(parents=True)
    (out / "no-dstl" / "fold0" / "config.yaml").write_text("name: no-dstl\n")  # a run: a runs folder
    assert check_runs_out(cfg) == out
    with pytest.raises(LiserError, match=r"holds the corpus root"):
        check_runs_out(Config(out=str(tmp_path), root=str(tmp_path / "corpus")))


def test_store_writer_refuses_a_folder_that_is_not_a_store(tmp_path):
    from liser.core.errors import LiserError
    from liser.teachers.store import StoreWriter

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "meta.json").write_text("{}")
    with pytest.raises(LiserError, match=r"mine: not empty and not a liser soft-label store"):
        StoreWriter(tmp_path / "mine", "t", ["a", "b"], "h")
    w = StoreWriter(tmp_path / "store", "t", ["a", "b"], "h")  # a new one, then the same one again (a resume)
    assert StoreWriter(w.path, "t", ["a", "b"], "h").path == w.path


@pytest.mark.skipif(not _unshare_ok(), reason="needs `unshare -m` (a private mount namespace) to mount a test folder")
def test_export_to_a_read_only_or_full_place_is_one_line(trained_run, tmp_path):
    """`liser export` names the output and the reason in one line, exit 2, and leaves no file behind."""
    check = sorted((real_root("ravdess") / "Actor_05").glob("*.flac"))[0]
    ro = tmp_path / "ro"
    ro.mkdir()
    p = _in_mount(f"mount --bind {ro} {ro} && mount -o remount,bind,ro {ro}",
                  [LISER, "export", trained_run, "--onnx", ro / "s.onnx", "--check-files", check])
    assert p.returncode == 2 and f"{ro / 's.onnx'}: cannot write: Read-only file system" in one_line_error(p)
    full = tmp_path / "full"
    full.mkdir()
    p = _in_mount(f"mount -t tmpfs -o size=100k tmpfs {full}",
                  [LISER, "export", trained_run, "--onnx", full / "s.onnx", "--check-files", check])
    assert p.returncode == 2 and f"{full / 's.onnx'}: cannot write: No space left on device" in one_line_error(p)
    assert list(full.iterdir()) == [] and list(ro.iterdir()) == []


def test_train_into_a_folder_of_other_files_is_refused(small_config, tmp_path):
    """train(cfg, run_dir) called from Python never writes over a user's files: a folder holding anything but a
    run's own files is refused in one line, and nothing in it changes."""
    from liser.core.errors import LiserError
    from liser.student.train import train

    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "config.yaml").write_text("my own settings\n")
    with pytest.raises(LiserError, match="not empty and not a liser run folder"):
        train(small_config, run_dir=mine, progress=False)
    assert [p.name for p in mine.iterdir()] == ["config.yaml"]
    assert (mine / "config.yaml").read_text() == "my own settings\n"
