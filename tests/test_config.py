"""Config: YAML, --set overrides with type coercion, unknown keys and wrong types are errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from liser.core.config import Config
from liser.core.errors import LiserError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# run configurations (teacher-*.yaml and grid-*.yaml files have schemas of their own)
RUN_CONFIGS = sorted(p for p in CONFIGS.glob("*.yaml") if not p.name.startswith(("teacher-", "grid-")))


def test_defaults_are_the_papers_protocol():
    c = Config()
    assert (c.lr, c.batch_size, c.epochs) == (1e-4, 25, 50)
    assert c.lambda_sd == c.lambda_vd == 0.0 and c.distill_loss == "mae" and c.schedule == "joint"


def test_yaml_load(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: mine\nepochs: 7\nlr: 0.001\nclasses: [happy, sad]\nunlabeled:\n  - tess:/x\n")
    c = Config.load(p)
    assert c.name == "mine" and c.epochs == 7 and c.lr == 0.001
    assert c.classes == ("happy", "sad") and c.unlabeled == ("tess:/x",)
    assert c.batch_size == 25  # untouched keys keep their defaults


def test_set_overrides_are_coerced_and_win_over_yaml(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("epochs: 7\nlr: 0.001\n")
    c = Config.load(p, ["epochs=3", "lr=1e-3", "lambda_sd=5", "name=123", "classes=happy,sad",
                        "unlabeled=[tess:/a, urdu:/b]", "speech_store="])
    assert c.epochs == 3 and isinstance(c.epochs, int)
    assert c.lr == 0.001 and isinstance(c.lr, float)  # '1e-3' is a YAML string; still a float
    assert c.lambda_sd == 5.0 and isinstance(c.lambda_sd, float)
    assert c.name == "123" and isinstance(c.name, str)
    assert c.classes == ("happy", "sad")
    assert c.unlabeled == ("tess:/a", "urdu:/b")
    assert c.speech_store == ""


def test_later_override_wins():
    assert Config.load(None, ["epochs=3", "epochs=4"]).epochs == 4


def test_int_field_accepts_integral_float_only():
    assert Config.load(None, ["epochs=4.0"]).epochs == 4
    with pytest.raises(LiserError, match="epochs"):
        Config.load(None, ["epochs=2.5"])


@pytest.mark.parametrize("override,key", [("epochs=abc", "epochs"), ("lr=fast", "lr"), ("seed=true", "seed"),
                                          ("batch_size=[1, 2]", "batch_size")])
def test_wrong_type_is_an_error_naming_the_key(override, key):
    with pytest.raises(LiserError, match=key):
        Config.load(None, [override])


def test_unknown_key_is_an_error_naming_it(tmp_path):
    with pytest.raises(LiserError, match="nosuchkey"):
        Config.load(None, ["nosuchkey=1"])
    p = tmp_path / "typo.yaml"
    p.write_text("epcohs: 3\n")
    with pytest.raises(LiserError, match="epcohs") as e:
        Config.load(p)
    assert "typo.yaml" in str(e.value)


def test_bad_files_and_overrides(tmp_path):
    with pytest.raises(LiserError, match="missing.yaml"):
        Config.load(tmp_path / "missing.yaml")
    p = tmp_path / "list.yaml"
    p.write_text("- a\n- b\n")
    with pytest.raises(LiserError, match="mapping"):
        Config.load(p)
    p = tmp_path / "broken.yaml"
    p.write_text("a: [1, 2\n")
    with pytest.raises(LiserError, match="broken.yaml"):
        Config.load(p)
    with pytest.raises(LiserError, match="key=value"):
        Config.load(None, ["epochs"])


def test_empty_yaml_is_the_defaults(tmp_path):
    p = tmp_path / "empty.yaml"
    p.write_text("")
    assert Config.load(p) == Config()


def test_save_load_roundtrip(tmp_path):
    c = Config(name="x", classes=("happy", "sad"), unlabeled=("tess:/a",), lr=3e-4, epochs=9)
    c.save(tmp_path / "c.yaml")
    assert Config.load(tmp_path / "c.yaml") == c
    assert c.digest() == Config.load(tmp_path / "c.yaml").digest()
    assert c.digest() != c.replace(epochs=10).digest()


def test_frozen():
    with pytest.raises(Exception):
        Config().epochs = 3  # type: ignore[misc]


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    c = Config.load(path)
    assert c.name and c.corpus
    raw = __import__("yaml").safe_load(path.read_text())
    for k, v in raw.items():  # every key of the file made it into the config
        got = getattr(c, k)
        assert got == (tuple(v) if isinstance(v, list) else v), k


def test_there_are_shipped_configs():
    assert len(RUN_CONFIGS) >= 2


def test_comma_lists_are_stripped():
    from liser.core.config import Config

    assert Config.load(None, ["classes=happy, sad ,angry"]).classes == ("happy", "sad", "angry")
