"""Default model paths from any working directory and from an installed wheel (util.models_dir, util.model_path).

Each check runs Python in a fresh process whose working directory is not the
checkout, so nothing relative to the checkout can be found by accident.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

CHECKOUT = Path(__file__).resolve().parents[1]
SHARED_MODELS = CHECKOUT.parent / "shared" / "models"
YUNET = Path("face-detection") / "face_detection_yunet_2023mar.onnx"

PROBE = """
import json, liser
from liser.core import util
from liser.data import faces
from liser.teachers.video import teacher as video
print(json.dumps({"liser": liser.__file__, "models": str(util.models_dir()), "yunet": str(faces.DEFAULT_YUNET),
                  "fer_root": str(video.DEFAULT_MODELS), "detector": faces.FaceDetector().name,
                  "whisper": util.model_path("../shared/models/whisper-base-encoder"),
                  "bare": util.model_path("whisper-base-encoder"), "hub": util.model_path("facebook/hubert-base-ls960")}))
"""


def probe(cwd: Path, **env) -> dict:
    """PROBE's answers in a fresh interpreter started in `cwd`, with $LISER_* replaced by `env`."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LISER_")}
    clean.update(env)
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=cwd, env=clean, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_from_another_directory_the_checkout_finds_the_shared_models(tmp_path):
    if not (SHARED_MODELS / YUNET).is_file():
        pytest.skip(f"{SHARED_MODELS / YUNET}: shared models absent")
    got = probe(tmp_path)
    assert Path(got["models"]) == SHARED_MODELS and Path(got["yunet"]) == SHARED_MODELS / YUNET
    assert got["detector"] == "yunet"
    if (SHARED_MODELS / "whisper-base-encoder").is_dir():
        assert Path(got["whisper"]) == Path(got["bare"]) == SHARED_MODELS / "whisper-base-encoder"
    assert got["hub"] == "facebook/hubert-base-ls960"  # not a folder anywhere: a hub id, unchanged


def test_liser_models_names_the_folder(tmp_path):
    models = tmp_path / "my-models"
    (models / "whisper-base-encoder").mkdir(parents=True)
    work = tmp_path / "work"
    work.mkdir()
    got = probe(work, LISER_MODELS=str(models))
    assert Path(got["models"]) == models and Path(got["fer_root"]) == models
    assert Path(got["whisper"]) == Path(got["bare"]) == models / "whisper-base-encoder"
    assert got["detector"] == "haar"  # no face-detection/ in that folder: the fallback, said by the name


@pytest.fixture(scope="module")
def wheel_site(tmp_path_factory) -> Path:
    """liser built as a wheel (from a copy of pyproject.toml, README.md and src/) and unpacked: an installed liser."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src-copy"
    shutil.copytree(CHECKOUT / "src" / "liser", src / "src" / "liser", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(CHECKOUT / name, src / name)
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(root / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        pytest.skip(f"cannot build a wheel here: {out.stderr.strip().splitlines()[-1:]}")
    site = root / "site"
    with zipfile.ZipFile(next((root / "dist").glob("liser-*.whl"))) as z:
        z.extractall(site)
    return site


def test_installed_wheel_finds_models_from_the_project_folder_or_liser_models(wheel_site, tmp_path):
    if not (SHARED_MODELS / YUNET).is_file():
        pytest.skip(f"{SHARED_MODELS / YUNET}: shared models absent")
    assert (wheel_site / "liser" / "data" / "corpora" / "folds" / "ravdess.json").is_file()  # package data travels
    project = tmp_path / "project"
    project.mkdir()
    # no $LISER_MODELS and nothing beside: ../shared/models of the working directory, which is not there
    got = probe(project, PYTHONPATH=str(wheel_site))
    assert Path(got["liser"]).is_relative_to(wheel_site)
    assert Path(got["models"]) == tmp_path / "shared" / "models" and got["detector"] == "haar"
    # the same layout as this checkout's: ../shared/models beside the project folder
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "models").symlink_to(SHARED_MODELS, target_is_directory=True)
    got = probe(project, PYTHONPATH=str(wheel_site))
    assert got["detector"] == "yunet" and Path(got["yunet"]) == tmp_path / "shared" / "models" / YUNET
    # or $LISER_MODELS, from anywhere
    elsewhere = tmp_path / "deep" / "elsewhere"  # no ../shared here
    elsewhere.mkdir(parents=True)
    got = probe(elsewhere, PYTHONPATH=str(wheel_site), LISER_MODELS=str(SHARED_MODELS))
    assert got["detector"] == "yunet" and Path(got["models"]) == SHARED_MODELS
    if (SHARED_MODELS / "whisper-base-encoder").is_dir():
        assert Path(got["whisper"]) == SHARED_MODELS / "whisper-base-encoder"
