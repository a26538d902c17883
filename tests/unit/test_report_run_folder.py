"""RunFolder: folder naming, config.json, provenance checks, statuses, sections and studies."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

import pandas as pd
import pytest

from hopscope.report import RunFolder, figures


@dataclass
class FakeModel:
    name: str = "tiny-llama"
    source: str = "/models/tiny"
    family: str = "llama"
    n_layers: int = 2
    n_heads: int = 4


def read_config(run: RunFolder) -> dict:
    return json.loads((run.path / "config.json").read_text())


def test_default_folder_is_command_and_timestamp_under_root(tmp_path, monkeypatch):
    from hopscope.report import provenance

    fixed = datetime(2025, 3, 4, 5, 6, 7).astimezone()
    monkeypatch.setattr(provenance, "now", lambda: fixed)
    a = RunFolder.create("backpatch", root=tmp_path)
    b = RunFolder.create("backpatch", root=tmp_path)  # same second: a suffix keeps them apart
    assert a.path == tmp_path / "backpatch-20250304-050607"
    assert b.path == tmp_path / "backpatch-20250304-050607-2"


def test_out_must_not_hold_a_run(tmp_path):
    RunFolder.create("demo", out=tmp_path / "x")
    with pytest.raises(FileExistsError, match="--resume"):
        RunFolder.create("demo", out=tmp_path / "x")


def test_config_records_what_ran(tmp_path):
    run = RunFolder.create("backpatch", args={"limit": 3, "path": tmp_path, "layers": (1, 2)},
                           out=tmp_path / "run", seed=7, argv=["hopscope", "backpatch"])
    run.set_model(FakeModel())
    records = [{"id": 1, "prompt": "a"}, {"id": 2, "prompt": "b"}]
    digest = run.set_dataset("two_hop", records)
    config = read_config(run)
    assert config["status"] == "running" and config["end_time"] is None
    run.finish()
    config = read_config(run)
    assert config["command"] == "backpatch"
    assert config["args"] == {"limit": 3, "path": str(tmp_path), "layers": [1, 2]}
    assert config["argv"] == ["hopscope", "backpatch"]
    assert config["seed"] == 7
    assert config["model"] == {"name": "tiny-llama", "source": "/models/tiny", "family": "llama",
                               "n_layers": 2, "n_heads": 4}
    assert config["dataset"] == {"name": "two_hop", "hash": digest, "n_records": 2}
    assert digest.startswith("sha256:") and len(digest) == 7 + 64
    assert {"hopscope", "torch", "transformers", "python"} <= set(config["versions"])
    assert config["status"] == "done"
    start, end = datetime.fromisoformat(config["start_time"]), datetime.fromisoformat(config["end_time"])
    assert start.tzinfo is not None and start <= end
    assert config["elapsed_s"] >= 0 and config["sessions"][-1]["status"] == "done"


def test_model_given_by_name(tmp_path):
    run = RunFolder.create("demo", out=tmp_path / "run")
    run.set_model("gpt2", "hub")
    assert read_config(run)["model"] == {"name": "gpt2", "source": "hub"}


def test_dataset_hash_depends_on_content_only(tmp_path):
    records = [{"id": 1, "prompt": "a"}, {"id": 2, "prompt": "b"}]
    run = RunFolder.create("demo", out=tmp_path / "run")
    h_list = run.set_dataset("d", records)
    h_frame = run.set_dataset("d", pd.DataFrame(records))
    assert h_list == h_frame
    other = RunFolder.create("demo", out=tmp_path / "other")
    assert other.set_dataset("d", [{"id": 1, "prompt": "A"}]) != h_list
    path = tmp_path / "data.jsonl"
    path.write_text('{"id": 1}\n')
    file_run = RunFolder.create("demo", out=tmp_path / "f")
    h_file = file_run.set_dataset("file", path)
    assert h_file.startswith("sha256:") and h_file != h_list
    assert read_config(file_run)["dataset"]["path"] == str(path.resolve())
    with pytest.raises(FileNotFoundError):
        RunFolder.create("demo", out=tmp_path / "g").set_dataset("nope", tmp_path / "missing.jsonl")


def test_resume_refuses_changed_data_model_or_args(tmp_path):
    run = RunFolder.create("demo", args={"limit": 3, "out": "a"}, out=tmp_path / "run")
    run.set_model("gpt2")
    run.set_dataset("d", [{"id": 1}])
    run.fail(KeyboardInterrupt())
    with pytest.raises(ValueError, match="limit"):
        RunFolder.resume(run.path, args={"limit": 4})
    with pytest.raises(ValueError, match="not 'other'"):
        RunFolder.resume(run.path, command="other")
    resumed = RunFolder.start("demo", {"limit": 3, "out": "b", "resume": str(run.path)}, resume=run.path)
    with pytest.raises(ValueError, match="data changed"):
        resumed.set_dataset("d", [{"id": 2}])
    with pytest.raises(ValueError, match="model"):
        resumed.set_model("llama")
    resumed.set_dataset("d", [{"id": 1}])  # same data: fine
    assert len(read_config(resumed)["sessions"]) == 2


def test_context_manager_records_failure_and_interruption(tmp_path):
    with pytest.raises(ValueError):
        with RunFolder.create("demo", out=tmp_path / "a") as run:
            raise ValueError("bad input")
    config = read_config(run)
    assert config["status"] == "failed" and config["error"] == "ValueError: bad input"
    assert config["end_time"] is not None and (run.path / "report.html").exists()
    with pytest.raises(KeyboardInterrupt):
        with RunFolder.create("demo", out=tmp_path / "b") as run:
            raise KeyboardInterrupt
    assert read_config(run)["status"] == "interrupted"
    with RunFolder.create("demo", out=tmp_path / "c") as run:
        pass
    assert read_config(run)["status"] == "done"


def test_read_only_open(tmp_path):
    run = RunFolder.create("demo", out=tmp_path / "run")
    run.finish()
    opened = RunFolder.open(run.path)
    with pytest.raises(PermissionError):
        opened.write_table("t", pd.DataFrame({"a": [1]}))
    assert opened.status == "done"


def test_sections_are_stored_and_replaced_by_title(tmp_path):
    run = RunFolder.create("demo", out=tmp_path / "run")
    run.save_figure("curve", figures.line_curves({"a": [1.0, 2.0]}))
    assert (run.path / "figures" / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    run.write_table("pairs", pd.DataFrame({"query_id": [1, 2]}))
    run.add_section("Result", text="first", figures=["curve"], tables={"per query": "pairs"}, headline={"rate": 0.5})
    run.add_section("Result", text="second", figures=[figures.bar_chart({"x": 1.0})],
                    tables={"head": pd.DataFrame({"v": range(80)})}, headline={"rate": 0.25}, max_rows=20)
    sections = run.sections()
    assert len(sections) == 1 and sections[0]["text"] == "second"
    assert sections[0]["figures"] == ["result-0"] and (run.path / "figures" / "result-0.png").exists()
    table = sections[0]["tables"][0]
    assert table["n_rows"] == 80 and len(table["rows"]) == 20
    assert run.headline == {"rate": 0.25}
    with pytest.raises(FileNotFoundError):
        run.add_section("X", figures=["nope"])
    with pytest.raises(KeyError):
        run.add_section("Y", tables={"t": "not_stored"})


def test_study_children_share_one_page(tmp_path):
    study = RunFolder.create("study", out=tmp_path / "study", seed=3)
    study.set_model("gpt2")
    study.add_section("Overview", text="two analyses")
    child = study.child("backpatch", args={"k": 1})
    assert child.path == study.path / "backpatch"
    assert read_config(child)["model"]["name"] == "gpt2" and child.seed == 3
    child.write_table("pairs", pd.DataFrame({"query_id": [1]}))
    child.add_section("Fix rate", headline={"fix rate": 0.4})
    child.finish()
    assert study.child("backpatch").path == child.path  # reopened, not duplicated
    study.finish()
    assert read_config(study)["children"] == ["backpatch"]
    page = (study.path / "report.html").read_text()
    assert "Overview" in page and "Fix rate" in page and "backpatch/tables/pairs.parquet" in page
    assert 'id="backpatch--s-fix-rate"' in page and 'href="#backpatch--s-fix-rate"' in page
    assert (child.path / "report.html").exists()


def test_dead_running_run_reads_stopped_and_live_one_cannot_be_resumed(tmp_path):
    import os
    import subprocess
    import sys

    from hopscope.report.runs_index import list_runs

    run = RunFolder.create("demo", root=tmp_path)
    config = read_config(run)
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    config["pid"] = int(child.stdout)  # that process has exited: the run was killed without notice
    (run.path / "config.json").write_text(json.dumps(config))
    assert list(list_runs(tmp_path)["status"]) == ["stopped"]
    RunFolder.resume(run.path).finish()  # a stopped run resumes like an interrupted one

    config = read_config(run)
    config.update(status="running", pid=os.getppid())  # a live process other than ours
    (run.path / "config.json").write_text(json.dumps(config))
    with pytest.raises(RuntimeError, match="in use"):
        RunFolder.resume(run.path)
