"""``hopscope backpatch`` / ``hopscope resolve``: thin commands, one clear line for bad input, resumable run folders."""

from __future__ import annotations

import pandas as pd
import pytest
from typer.testing import CliRunner

from hopscope.cli import app
from hopscope.data import Dataset, TwoHopQuery

runner = CliRunner()


def queries() -> list[TwoHopQuery]:
    out = []
    for e1, e2, e3 in (("Shenzhen", "China", "Beijing"), ("Dubai", "United Arab Emirates", "Abu Dhabi")):
        prompt = f"The capital of the country where {e1} is located is"
        a = prompt.index(e1)
        out.append(TwoHopQuery(qid=e1.lower(), prompt=prompt, first_hop_prompt=f"{e1} is a city in",
                               second_hop_prompt=f"The capital of {e2} is", e1=e1, e2=e2, e3=e3, r1="city_country",
                               r2="country_capital", e1_span=(a, a + len(e1)),
                               entity_shortcut_prompt=f"The capital of {e1} is"))
    return out


@pytest.mark.parametrize("command", ["backpatch", "resolve"])
def test_help_shows_an_example(command):
    res = runner.invoke(app, [command, "--help"])
    assert res.exit_code == 0 and f"Example: hopscope {command}" in res.output


@pytest.mark.parametrize("args, message", [
    (["--model", "no-such-model-xyz"], "error:"),
    (["--layers", "abc"], "bad layer spec"),
    (["--match", "middle"], "--match must be anywhere or start"),
    (["--knockout-keys", "e1_span"], "protocol='custom'"),
])
def test_bad_input_gets_one_line(args, message, tmp_path):
    res = runner.invoke(app, ["backpatch", "--quick", "--out", str(tmp_path / "r"), *args])
    assert res.exit_code == 2, res.output
    assert message in res.output and "Traceback" not in res.output


def test_data_folder_is_one_clear_error(tmp_path):
    res = runner.invoke(app, ["resolve", "--quick", "--data", str(tmp_path), "--model", "tiny:llama"])
    assert res.exit_code == 2 and "is a folder" in res.output


def test_a_quick_run_and_its_resume(tmp_path):
    data = Dataset(queries()).save(tmp_path / "q.jsonl")
    out = tmp_path / "run"
    args = ["backpatch", "--model", "tiny:olmo2", "--data", str(data), "--quick", "--protocol", "custom",
            "--population", "all", "--layers", "3", "--no-progress", "--out", str(out)]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert (out / "report.html").is_file() and "hop.backpatch_fix" in res.output
    tables = {p.name: pd.read_parquet(p) for p in (out / "tables").glob("*.parquet")}
    res = runner.invoke(app, ["backpatch", "--model", "tiny:olmo2", "--no-progress", "--resume", str(out)])
    assert res.exit_code == 0, res.output
    for name, df in tables.items():
        pd.testing.assert_frame_equal(pd.read_parquet(out / "tables" / name), df)
