"""Every command is registered explicitly, and a command whose optional import fails says so in one line."""

from __future__ import annotations

import sys

import pytest

from liser import cli

COMMANDS = {"quickstart", "prepare", "folds", "train", "cv", "evaluate", "experiment", "teacher", "faces",
            "predict", "export", "adapt", "serve"}


def _commands() -> set[str]:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return set(sub.choices)


def test_every_command_is_registered():
    assert _commands() == COMMANDS


def test_commands_stay_registered_when_an_optional_dependency_is_broken(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` now raises ImportError
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    monkeypatch.delitem(sys.modules, "liser.inference.export", raising=False)
    assert _commands() == COMMANDS


def test_a_missing_optional_module_is_a_clear_one_line_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "onnx", None)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    (tmp_path / "best.pt").write_bytes(b"")

    def broken_export(*a, **kw):
        import onnx  # noqa: F401  (what export_onnx imports first)

    import liser.inference.export

    monkeypatch.setattr(liser.inference.export, "export_onnx", broken_export)
    rc = cli.main(["export", str(tmp_path), "--onnx", str(tmp_path / "m.onnx")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith("liser: ") and "export" in err[0] and "onnx" in err[0]


def test_predict_stride_has_one_name_and_hop_is_its_alias():
    p = cli.build_parser()
    assert p.parse_args(["predict", "m", "a.wav", "--stride", "1"]).stride == 1.0
    assert p.parse_args(["predict", "m", "a.wav", "--hop", "2"]).stride == 2.0


def test_help_is_fast_and_lists_everything(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert all(c in out for c in COMMANDS)
