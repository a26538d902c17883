"""``hopscope repair`` end to end on a tiny model: a run folder, the ranked summary and claims, --resume from the
folder's own settings and data; bad options are one line with status 2."""

from __future__ import annotations

import pytest

from hopscope.cli import main
from hopscope.data import Dataset
from hopscope.models import tiny
from hopscope.report import RunFolder

from test_repair import tiny_queries


def _run(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    captured = capsys.readouterr()
    return exit_.value.code, captured.out, captured.err


def test_repair_command_writes_a_run_and_resumes_it(tmp_path, capsys):
    data = Dataset(tiny_queries(tiny("llama"))).save(tmp_path / "tiny.jsonl")
    out = tmp_path / "run"
    argv = ["repair", "--model", "tiny:llama", "--data", str(data), "--quick", "--families", "backpatch,injection",
            "--out", str(out), "--no-progress"]
    code, stdout, err = _run(argv, capsys)
    assert code in (0, None), err
    assert "repair.self_injection_beats_random" in stdout and f"report: {out / 'report.html'}" in stdout
    run = RunFolder.open(out)
    assert run.status == "done" and run.args["families"] == ["backpatch", "injection"]
    assert run.args["data"] == str(data)
    summary = run.load_table("summary")
    code, again, err = _run(["repair", "--model", "tiny:llama", "--resume", str(out), "--no-progress"], capsys)
    assert code in (0, None), err
    assert again.splitlines()[0] == stdout.splitlines()[0]
    assert run.load_table("summary").equals(summary)


@pytest.mark.parametrize("args, fragment", [(["--families", "magic"], "magic"), (["--heldout", "1.5"], "heldout"),
                                            (["--quick", "--study"], "--quick"),
                                            (["--data", "no-such-file.jsonl"], "no-such-file.jsonl")])
def test_bad_options_are_one_line(args, fragment, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = _run(["repair", "--model", "tiny:llama", *args], capsys)
    lines = [l for l in err.splitlines() if l.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], err
