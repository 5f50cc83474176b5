"""The package's folders are its layers: a module imports only from its own layer or those below.

core < data < teachers < student < experiments < inference < cli (docs/architecture.md). Every `import`
is read from the source (function-level ones too), so a lazy import that reaches upward fails here.
"""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "src" / "liser"
LAYERS = ["core", "data", "teachers", "student", "experiments", "inference", "cli"]


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module, node.lineno
        elif isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, node.lineno


def test_every_module_lives_in_a_layer_folder():
    loose = [p.name for p in PKG.glob("*.py") if p.name != "__init__.py"]
    assert loose == [], f"modules outside the layer folders: {loose}"
    assert sorted(d.name for d in PKG.iterdir() if (d / "__init__.py").is_file()) == sorted(LAYERS)


def test_no_import_reaches_a_higher_layer():
    upward = []
    for path in PKG.rglob("*.py"):
        module = "liser." + ".".join(path.relative_to(PKG).with_suffix("").parts)
        me = _layer(module)
        for target, line in _imports(path):
            there = _layer(target) if target.startswith("liser.") else None
            if me is not None and there is not None and there > me:
                upward.append(f"{path.relative_to(PKG)}:{line} imports {target}")
    assert upward == []


def test_no_relative_imports_hide_the_layer():
    relative = [f"{p.relative_to(PKG)}:{n.lineno}" for p in PKG.rglob("*.py")
                for n in ast.walk(ast.parse(p.read_text())) if isinstance(n, ast.ImportFrom) and n.level > 0]
    assert relative == []
