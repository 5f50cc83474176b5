"""The README a newcomer reads (issue 25 §3): short, and every command, option, path and link in it exists.

Checks, on the README's fenced code blocks: every `liser SUBCOMMAND` is one
`liser --help` lists, every option it is given is one that subcommand's
`--help` shows (a hidden, deprecated name does not count), every YAML key is
a run-config field, every repository path (configs/, scripts/, docs/, src/,
bench/, tests/, examples/, .ci/) exists, every `runs/` or `work/` path is
one that `liser quickstart` or a README command makes, and every
`../shared/data` path exists where that folder does. On the README and the
docs pages: every relative link resolves, anchors included. The README
opens with the two commands and stays within 260 lines. The last tests feed
a broken README through the same checks and expect them to fail.
"""

from __future__ import annotations

import re
import shlex
from functools import lru_cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
SHARED_DATA = REPO.parent / "shared" / "data"
MAX_LINES = 260
OPENING = [
    "bash scripts/setup.sh && .venv/bin/liser quickstart",
    "bash scripts/setup.sh && .venv/bin/python -m pytest -q",
]
# pages whose relative links are checked: the README, the docs index and every page under docs/ (grid reports
# in docs/results/<grid>/ are written by `liser experiment` and left out)
LINKED_PAGES = [README, *sorted((REPO / "docs").glob("*.md")), *sorted((REPO / "docs" / "results").glob("*.md"))]
REPO_PATH = re.compile(r"(?<![\w./-])((?:configs|scripts|docs|src|bench|tests|examples|\.ci)/[\w./+-]*)")
MADE_PATH = re.compile(r"(?<![\w./-])((?:runs|work)/[\w./{}<>+-]*)")
SHARED_PATH = re.compile(r"(?<![\w.-])(\.\./shared/data/[\w./-]*)")
OUTPUT_OPTIONS = {"-o", "--out", "--onnx", "--json", "--docs", "--int8"}
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


# ---------------------------------------------------------------- reading the README
def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every ``` block."""
    return [(m.group(1).strip(), m.group(2)) for m in re.finditer(r"^```([^\n]*)\n(.*?)^```", text, re.S | re.M)]


def shell_commands(body: str) -> list[list[str]]:
    """The simple commands of a shell block: comments dropped, continuations joined, split at && || ; |,
    leading VAR=value assignments removed."""
    out = []
    for line in body.replace("\\\n", " ").splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split, lexer.commenters = True, "#"
        cmd = []
        for tok in [*lexer, ";"]:
            if tok and set(tok) <= set(";&|"):
                while cmd and re.match(r"^[A-Za-z_]\w*=", cmd[0]):
                    cmd.pop(0)
                if cmd:
                    out.append(cmd)
                cmd = []
            else:
                cmd.append(tok)
    return out


@lru_cache(maxsize=1)
def cli():
    """{subcommand path: (parser, {visible option strings})}, e.g. ("teacher", "fit") -> ..."""
    import argparse

    from liser.cli import build_parser

    table = {}

    def walk(parser, path):
        opts = {s for a in parser._actions if a.help != argparse.SUPPRESS for s in a.option_strings}
        table[path] = opts
        for a in parser._actions:
            if isinstance(a, argparse._SubParsersAction):
                for name, sub in a.choices.items():
                    walk(sub, path + (name,))

    walk(build_parser(), ())
    return table


def check_liser_command(cmd: list[str]) -> list[str]:
    """Problems with one `liser ...` command line (tokens after the program)."""
    table, path, i = cli(), (), 0
    while i < len(cmd) and path + (cmd[i],) in table:
        path, i = path + (cmd[i],), i + 1
    if not path:
        first = cmd[0] if cmd else ""
        if first.startswith("-"):
            return [] if first in table[()] else [f"liser {first}: no such option of liser"]
        subs = sorted(p[0] for p in table if len(p) == 1)
        return [f"liser {first}: no such subcommand (liser --help lists {', '.join(subs)})"]
    problems = []
    for tok in cmd[i:]:
        if tok.startswith("-") and tok != "-" and not re.match(r"^-\d", tok):
            opt = tok.split("=", 1)[0]
            if opt not in table[path]:
                problems.append(f"liser {' '.join(path)}: no option {opt} in its --help")
    return problems


def made_paths(text: str) -> set[str]:
    """runs/ and work/ paths that a reader has after the README's commands: what `liser quickstart` makes and
    what a README command or config writes."""
    import yaml

    grid = yaml.safe_load((REPO / "configs" / "grid-quickstart.yaml").read_text())
    out = grid["out"]
    made = {f"{out}/report.md", f"{out}/student.onnx", grid["set"]["work"]}
    made |= {f"{out}/{row}/default/fold{k}" for row in grid["runs"] for k in grid["folds"]}
    for lang, body in fenced_blocks(text):
        if lang == "yaml":
            cfg = yaml.safe_load(body) or {}
            made |= {f"{cfg.get('out', 'runs')}/{cfg['name']}/fold{k}" for k in range(10)} if "name" in cfg else set()
            made |= {str(cfg[k]) for k in ("manifest", "folds", "work") if k in cfg}
        if lang in ("bash", "sh", "shell"):
            for cmd in shell_commands(body):
                made |= {cmd[j + 1] for j, tok in enumerate(cmd[:-1]) if tok in OUTPUT_OPTIONS}
    return made


def readme_problems(text: str) -> list[str]:
    """Everything wrong with a README text (empty = fine)."""
    from liser.core.config import Config

    problems = []
    n = text.count("\n")
    if n > MAX_LINES:
        problems.append(f"README: {n} lines, more than {MAX_LINES}")
    blocks = fenced_blocks(text)
    if not blocks or [re.sub(r"\s+#.*", "", l).strip() for l in blocks[0][1].strip().splitlines()] != OPENING:
        problems.append("README: the first code block is not the two commands (setup + quickstart, setup + tests)")
    fields = set(Config.__dataclass_fields__)
    made = made_paths(text)
    for lang, body in blocks:
        if lang in ("bash", "sh", "shell"):
            for cmd in shell_commands(body):
                prog = cmd[0]
                if prog in ("liser", ".venv/bin/liser"):
                    problems += check_liser_command(cmd[1:])
                elif prog in ("python", ".venv/bin/python") and len(cmd) > 1 and cmd[1].endswith(".py"):
                    if not (REPO / cmd[1]).is_file():
                        problems.append(f"{' '.join(cmd[:2])}: no such script")
        if lang == "yaml":
            import yaml

            for key in yaml.safe_load(body) or {}:
                if key not in fields:
                    problems.append(f"yaml block: {key!r} is not a run-config key (liser.core.config.Config)")
        for p in MADE_PATH.findall(body):
            p = p.rstrip("./")
            if not any(c in p for c in "<{") and not any(p == m or p.startswith(m.rstrip("/") + "/") for m in made):
                problems.append(f"{p}: neither `liser quickstart` nor a README command makes it")
        if SHARED_DATA.is_dir():
            problems += [f"{p}: no such file under ../shared/data" for p in SHARED_PATH.findall(body)
                         if not (REPO / p).exists()]
    for p in set(REPO_PATH.findall(text)):
        p = p.rstrip(".")
        if not any(c in p for c in "<{*") and not (REPO / p).exists():
            problems.append(f"{p}: no such path in the repository")
    return problems + link_problems(text, README)


# ---------------------------------------------------------------- links
def slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    s = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", s).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", text, re.M)}


def link_problems(text: str, page: Path) -> list[str]:
    """Relative links of `text` (the content of `page`) that do not resolve, anchors included."""
    problems = []
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    for target in LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):
            continue
        path, _, frag = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        where = f"{page.relative_to(REPO)}: link {target}"
        if not dest.exists():
            problems.append(f"{where}: no such file")
        elif frag and dest.suffix == ".md" and frag not in anchors(dest):
            problems.append(f"{where}: no heading #{frag} in {dest.relative_to(REPO)}")
    return problems


# ---------------------------------------------------------------- the tests
def test_readme_commands_paths_and_links_exist():
    problems = readme_problems(README.read_text(encoding="utf-8"))
    assert not problems, "\n".join(problems)


def test_readme_is_short():
    assert README.read_text(encoding="utf-8").count("\n") <= MAX_LINES


def test_ci_runs_the_readme_test_command():
    assert "bash scripts/setup.sh && .venv/bin/python -m pytest -q" in (REPO / ".ci" / "run").read_text()


@pytest.mark.parametrize("page", [p for p in LINKED_PAGES if p != README], ids=lambda p: str(p.relative_to(REPO)))
def test_docs_links_resolve(page):
    problems = link_problems(page.read_text(encoding="utf-8"), page)
    assert not problems, "\n".join(problems)


def test_docs_index_links_every_docs_page():
    index = (REPO / "docs" / "README.md").read_text(encoding="utf-8")
    linked = {(REPO / "docs" / t.partition("#")[0]).resolve() for t in LINK.findall(index)}
    missing = [p.name for p in sorted((REPO / "docs").glob("*.md")) if p.name != "README.md" and p.resolve() not in linked]
    assert not missing, f"docs/README.md does not link {missing}"


# ---- the checks can fail: a README naming things that do not exist
GOOD = README.read_text(encoding="utf-8")


@pytest.mark.parametrize("bad, expected", [
    ("liser predictt FILE", "no such subcommand"),
    ("liser predict --hop 0.5 FILE", "no option --hop"),  # predict's hidden old name; --stride is the option
    ("liser teacher fit speech configs/sp-dstl.yaml --sett a=1", "no option --sett"),
    ("liser cv configs/no-such.yaml", "configs/no-such.yaml: no such path"),
    ("python bench/bench_nothing.py", "no such script"),
    ("liser predict runs/no-dstl/fold0 FILE", "runs/no-dstl/fold0: neither"),
])
def test_a_wrong_command_is_caught(bad, expected):
    broken = GOOD.replace("## Install", f"```bash\n{bad}\n```\n\n## Install", 1)
    problems = readme_problems(broken)
    assert any(expected in p for p in problems), problems


def test_a_wrong_yaml_key_a_dead_link_and_a_long_readme_are_caught():
    assert any("'epoch' is not a run-config key" in p
               for p in readme_problems(GOOD.replace("\nepochs: 100", "\nepoch: 100", 1)))
    assert any("no such file" in p for p in readme_problems(GOOD + "\n[gone](docs/gone.md)\n"))
    assert any("no heading #nowhere" in p for p in readme_problems(GOOD + "\n[x](docs/guide.md#nowhere)\n"))
    assert any("more than 260" in p for p in readme_problems(GOOD + "\n" * 40))
    assert any("two commands" in p for p in readme_problems(GOOD.replace(".venv/bin/liser quickstart", "liser quickstart", 1)))
