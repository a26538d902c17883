"""Every ```python block of every docs/*.md page runs, as written, on a tiny model (or the default model).

Blocks of one page run in order in one fresh namespace (a page reads like one notebook), in a temporary
working folder. A block whose first line is ``# needs: default-model`` (or every block of a page whose first
line is ``<!-- needs: default-model -->`` or ``# needs: default-model``) needs the embedded default model:
the page's plain test runs its other blocks only (so later blocks must not depend on such a block), and a
second test marked ``default_model`` (skipped with ``-m "not default_model"``) runs every block in order. A
failing block is reported as ``docs/<page>.md:<line>`` and its traceback points into the page.

Also: every ``hopscope ...`` line of a ```bash block parses with the real CLI (no stale command or option),
docs/index.md links every page, and docs/quickstart.ipynb holds the quick start's code with its outputs.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
import traceback
import types
from dataclasses import dataclass
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs"
NEEDS_DEFAULT = "# needs: default-model"
INTERNAL = {"CONTRACT.md"}  # the contributors' interface sketch: its blocks are signatures, not examples
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.S | re.M)


@dataclass
class Block:
    path: Path
    line: int  # 1-based line of the block's first code line in the page
    code: str
    default_model: bool


def pages() -> list[Path]:
    return sorted(p for p in DOCS.glob("*.md") if p.name not in INTERNAL)


def blocks(page: Path, language: str = "python") -> list[Block]:
    text = page.read_text(encoding="utf-8")
    first = text.lstrip().splitlines()[0].strip() if text.strip() else ""
    whole_page = first in (NEEDS_DEFAULT, "<!-- needs: default-model -->")
    out = []
    for m in FENCE.finditer(text):
        if m.group(1) != language:
            continue
        code = m.group(2)
        line = text.count("\n", 0, m.start(2)) + 1
        marked = code.lstrip().startswith(NEEDS_DEFAULT)
        out.append(Block(page, line, code, whole_page or marked))
    return out


def run_blocks(selected: list[Block], namespace: dict) -> None:
    for b in selected:
        # pad with blank lines so that tracebacks give the line in the .md page
        code = compile("\n" * (b.line - 1) + b.code, str(b.path), "exec", dont_inherit=True)  # no __future__ of ours
        try:
            exec(code, namespace)  # noqa: S102 - the documentation's own examples
        except Exception as err:  # noqa: BLE001 - reported with page and line
            tb = "".join(traceback.format_exception(type(err), err, err.__traceback__))
            pytest.fail(f"docs/{b.path.name}:{b.line}: the block starting here failed: {type(err).__name__}: {err}\n{tb}",
                        pytrace=False)


def _params():
    out = []
    for page in pages():
        bs = blocks(page)
        if any(not b.default_model for b in bs):
            out.append(pytest.param(page.name, False, id=page.name))
        if any(b.default_model for b in bs):
            out.append(pytest.param(page.name, True, id=f"{page.name}[default-model]",
                                    marks=pytest.mark.default_model))
    return out


@pytest.fixture
def docs_workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    import matplotlib

    matplotlib.use("Agg")
    yield tmp_path
    import matplotlib.pyplot as plt

    plt.close("all")


@pytest.fixture
def page_module():
    """A fresh module for a page's blocks, importable while they run (as a notebook's ``__main__`` is)."""
    made = []

    def make(page: str):
        module = types.ModuleType("hopscope_docs_" + re.sub(r"\W", "_", page))
        sys.modules[module.__name__] = module
        made.append(module.__name__)
        return module.__dict__
    yield make
    for name in made:
        sys.modules.pop(name, None)


@pytest.mark.parametrize("page, with_default_model", _params())
def test_the_pages_python_blocks_run(page, with_default_model, docs_workdir, page_module):
    bs = blocks(DOCS / page)
    selected = bs if with_default_model else [b for b in bs if not b.default_model]
    run_blocks(selected, page_module(page))


def test_the_docs_test_reports_the_page_and_line(tmp_path):
    page = tmp_path / "broken.md"
    page.write_text("# A page\n\n```python\nx = 1\n```\n\ntext\n\n```python\ny = x + 1\nraise ValueError('no')\n```\n")
    bs = blocks(page)
    assert [(b.line, b.default_model) for b in bs] == [(4, False), (10, False)]
    with pytest.raises(pytest.fail.Exception) as err:
        run_blocks(bs, {})
    assert "docs/broken.md:10: the block starting here failed: ValueError: no" in str(err.value)
    assert f'File "{page}", line 11' in str(err.value)  # the traceback's line is the page's line


def test_a_default_model_block_is_marked(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("intro\n```python\na = 1\n```\n```python\n# needs: default-model\nb = 2\n```\n```bash\nls\n```\n")
    assert [b.default_model for b in blocks(page)] == [False, True]
    page.write_text("<!-- needs: default-model -->\n```python\na = 1\n```\n")
    assert [b.default_model for b in blocks(page)] == [True]


def _cli_lines() -> list[tuple[str, int, str]]:
    out = []
    for page in pages():
        for b in blocks(page, "bash"):
            logical: list[tuple[int, str]] = []  # (line, text) with backslash continuations joined
            for i, text in enumerate(b.code.splitlines()):
                if logical and logical[-1][1].endswith("\\"):
                    logical[-1] = (logical[-1][0], logical[-1][1][:-1] + " " + text)
                else:
                    logical.append((i, text))
            for i, text in logical:
                for line in re.split(r"&&|;|\|\|", text.split(" #")[0]):
                    line = line.strip()
                    if line.startswith("hopscope ") and "<" not in line:
                        out.append((page.name, b.line + i, line))
    return out


@pytest.mark.parametrize("page, line, command", _cli_lines(), ids=lambda x: str(x)[:60] if isinstance(x, str) else None)
def test_every_documented_command_parses(page, line, command):
    import typer

    from hopscope.cli import app

    args = shlex.split(command)[1:]
    cmd, path = typer.main.get_command(app), ["hopscope"]
    while hasattr(cmd, "commands") and args and args[0] in cmd.commands:
        path.append(args[0])
        cmd = cmd.commands[args.pop(0)]
    assert not hasattr(cmd, "commands"), f"docs/{page}:{line}: {command!r} names no command"
    try:
        cmd.make_context(" ".join(path), list(args))  # parses the options without running the command
    except Exception as err:  # noqa: BLE001 - click's usage errors
        pytest.fail(f"docs/{page}:{line}: {command!r} does not parse: {err}", pytrace=False)


def test_the_index_links_every_page():
    index = (DOCS / "index.md").read_text(encoding="utf-8")
    links = set(re.findall(r"\]\(([^)#]+)", index))
    missing = [p.name for p in sorted(DOCS.glob("*.md")) if p.name != "index.md" and p.name not in links]
    assert not missing, f"docs/index.md does not link {missing}"
    broken = [link for link in links if "://" not in link and not (DOCS / link).exists()]
    assert not broken, f"docs/index.md links pages that do not exist: {broken}"


def test_the_notebook_is_the_quickstart_executed():
    nb = json.loads((DOCS / "quickstart.ipynb").read_text(encoding="utf-8"))
    assert nb["nbformat"] == 4
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    sources = ["".join(c["source"]).strip() for c in code]
    assert sources == [b.code.strip() for b in blocks(DOCS / "quickstart.md")]
    assert all(c.get("execution_count") for c in code), "every cell executed"
    errors = [o for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, errors
    assert sum(bool(c.get("outputs")) for c in code) >= len(code) // 2  # it shows what the cells compute
