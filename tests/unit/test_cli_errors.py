"""The CLI's errors are one line everywhere, and every command's --help shows an example.

Every registered command (walked from the Typer app, so a new command is covered the day it is added) runs
through the real entry point, ``hopscope.cli.main``, with bad input: an unknown model where it takes
``--model``, a malformed data file where it takes ``--data``, an out-of-range layer where it takes a layer,
and the cases below for the others. Each must end with exit status 2 and exactly one line ``error: ...``
that names the bad input, with no traceback and no framed usage box.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from hopscope.cli import app, error_line, main
from hopscope.data import build_world_facts

UNKNOWN_MODEL = "no/such-model"
TINY = ["--model", "tiny:llama"]
# a layer option -> an out-of-range value of its kind (an index, or a list: "6" alone may mean 6 evenly spaced layers)
LAYER_OPTIONS = {"--layers": "0,99", "--layer": "99", "--lens-layer": "99", "--patchscope-layers": "0,99"}

# what a command needs besides the bad input (required arguments and options)
REQUIRED: dict[str, list[str]] = {
    "lens": ["The capital of France is"],
    "attn-lens show": ["The capital of France is", "--layer", "0"],
    "attn-lens train": ["--layer", "0", "--steps", "1"],
    "sweep": ["--analysis", "recall", "--size", "quick"],
    # these check their layer grids only after the knowledge filter has run: keep that small
    "backpatch": ["--quick"],
    "resolve": ["--quick"],
}


def _commands():
    """(command path, click command) for every leaf command of the app."""
    def walk(cmd, path):
        if hasattr(cmd, "commands"):
            for name, sub in sorted(cmd.commands.items()):
                yield from walk(sub, path + [name])
        else:
            yield " ".join(path), cmd
    return list(walk(typer.main.get_command(app), []))


COMMANDS = _commands()


def _options(cmd) -> set[str]:
    return {opt for p in cmd.params for opt in p.opts if opt.startswith("--")}


def _cases(tmp: Path) -> dict[str, list[tuple[list[str], str]]]:
    """command -> [(arguments after the command, a fragment the error line must contain)]."""
    bad_rows = tmp / "bad.jsonl"
    bad_rows.write_text('{"qid": "q1", "prompt": 5}\nthis row is not JSON\n')
    not_a_run = tmp / "not-a-run"
    not_a_run.mkdir()
    good_rows = build_world_facts(n=2, relations=(), compositions=("capital_country_continent",)).save(tmp / "ok.jsonl")
    required = {**REQUIRED, "data filter": ["--data", str(good_rows)], "data hygiene": ["--data", str(good_rows)]}
    manual = {
        "compare": [([str(tmp / "missing-run")], "missing-run")],
        "runs show": [([str(not_a_run)], "is not a run folder")],
        "runs report": [([str(not_a_run)], "is not a run folder")],
        "runs list": [(["--root", str(bad_rows)], "is a file, not a folder")],
        "data show": [([str(bad_rows)], "row")],
        "data load": [(["no-such-source", str(bad_rows), "--out", str(tmp / "o.jsonl")], "no-such-source")],
        "data build world-facts": [(["--out", str(tmp / "o.jsonl"), "--compositions", "no_such_composition"],
                                    "no_such_composition")],
        "train kth-smallest": [(["--out", str(tmp / "m"), "--n", "0"], "n must be at least")],
        "attn-lens show": [(TINY + ["--lens", str(tmp / "no-lens")], "no-lens")],
        "lens": [(TINY + ["--component", "no_such_component"], "no_such_component")],
    }
    out: dict[str, list[tuple[list[str], str]]] = {}
    for name, cmd in COMMANDS:
        opts = _options(cmd)
        need = required.get(name, [])
        cases = [(need + args, fragment) for args, fragment in manual.get(name, [])]
        if "--model" in opts:
            cases.append((need + ["--model", UNKNOWN_MODEL], UNKNOWN_MODEL))
        if "--data" in opts:
            cases.append((need + (TINY if "--model" in opts else []) + ["--data", str(bad_rows)], "row 2"))
        for opt, value in LAYER_OPTIONS.items():
            if opt in opts and "--model" in opts:
                cases.append((need + TINY + [opt, value], "99"))
                break
        out[name] = cases
    return out


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    return _cases(tmp_path_factory.mktemp("cli-errors"))


def _run(argv: list[str], capsys) -> tuple[object, str, str]:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    captured = capsys.readouterr()
    return exit_.value.code, captured.out, captured.err


def test_every_command_has_a_bad_input_case(cases):
    missing = [name for name, c in cases.items() if not c]
    assert not missing, f"add a bad-input case to tests/unit/test_cli_errors.py for: {', '.join(missing)}"


@pytest.mark.parametrize("name", [n for n, _ in COMMANDS])
def test_bad_input_is_one_line_and_status_2(name, cases, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # run folders a command opens before failing land here
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the unknown model fails at once instead of retrying the hub
    monkeypatch.delenv("HOPSCOPE_DEBUG", raising=False)
    for args, fragment in cases[name]:
        argv = name.split() + args
        code, _, err = _run(argv, capsys)
        lines = [l for l in err.splitlines() if l.strip()]
        shown = f"hopscope {' '.join(argv)}\n{err}"
        assert "Traceback" not in err and "╭" not in err, f"not one line:\n{shown}"
        errors = [l for l in lines if l.startswith("error: ")]
        assert code == 2 and len(errors) == 1 and lines[-1] == errors[0], f"exit {code}:\n{shown}"
        assert fragment in errors[0], f"the error does not name the bad input ({fragment!r}):\n{shown}"


def test_hopscope_debug_shows_the_traceback(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HOPSCOPE_DEBUG", "1")
    from hopscope.models import ModelLoadError

    with pytest.raises(ModelLoadError, match="unknown model 'no/such-model'"):
        main(["info", "--model", UNKNOWN_MODEL])


def test_a_bug_keeps_its_traceback(monkeypatch):
    import hopscope

    def broken(*args, **kwargs):
        raise RuntimeError("a bug, not bad input")

    monkeypatch.setattr(hopscope, "load_model", broken)
    monkeypatch.delenv("HOPSCOPE_DEBUG", raising=False)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["info"])


def test_error_line_is_the_message_on_one_line():
    assert error_line(KeyError("no column 'qid'")) == "no column 'qid'"  # not repr-quoted twice
    assert error_line(FileNotFoundError(2, "No such file or directory", "data/x.jsonl")) == \
        "No such file or directory: data/x.jsonl"
    assert error_line(ValueError("first line\n  second   line")) == "first line second line"
    assert error_line(ValueError()) == "ValueError"


def test_the_issues_example_through_the_installed_entry_point(tmp_path):
    """``hopscope backpatch --data bad.jsonl`` printed a framed traceback; now one line (a real process)."""
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("HOPSCOPE_DEBUG", None)
    code = "import sys; sys.argv[0] = 'hopscope'; from hopscope.cli import main; main()"
    proc = subprocess.run([sys.executable, "-c", code, "backpatch", "--model", "tiny:llama", "--data", str(bad)],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert proc.returncode == 2 and lines[-1].startswith("error: ") and "bad.jsonl" in lines[-1], proc.stderr
    assert "Traceback" not in proc.stderr and "╭" not in proc.stderr


@pytest.mark.parametrize("name", [n for n, _ in COMMANDS])
def test_every_commands_help_shows_an_example(name, capsys):
    code, out, _ = _run(name.split() + ["--help"], capsys)
    assert code == 0 and "Example: hopscope " in out, (
        f"`hopscope {name} --help` shows no 'Example: hopscope ...' line: add one to the command's docstring")
