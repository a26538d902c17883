"""``hopscope sweep`` with the local executor: the grid, one run folder per sweep, tables equal to a single
``execute`` per job, reruns and driver kills that never recompute a finished shard.

Two toy analyses (below) run the model through the engine, so a job's tables depend on the model it ran on;
test_sweep_ray.py imports them to compare the Ray executor with these results.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from hopscope.cli import app
from hopscope.engine import Site, prompt_pass, run, score_tokens, zero_ablate
from hopscope.models import tiny
from hopscope.pipeline import Analysis, Context, FolderStore, Stage, execute
from hopscope.report import RunFolder
from hopscope.results import Headline, Result
from hopscope.stats import mean_vs_zero
from hopscope.sweep import ExecutorOptions, Placement, SweepSpec, parse_max_memory, read_sweep_file, run_sweep
from hopscope.sweep.spec import build_settings

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
PROMPTS = ["The capital of France is", "Water boils at one hundred", "The Eiffel Tower stands in",
           "Two plus two equals", "On a clear day the sky is", "Every morning the dog likes to", "A small cat says"]
FAMILIES = ("llama", "gpt2")


# ---- toy analyses: engine work in pure seeded shards ----------------------------------------------------------
@dataclass
class ToySettings:
    n: int = 7            # prompts (or layers x 2 for the patch toy)
    per_shard: int = 2
    seed: int = 0
    log: str = ""         # a file each shard appends "<model> <analysis> <stage> <index> <pid>" to
    block_at: int = -1    # this shard of the first stage waits for the file `release` (a driver can be killed)
    release: str = ""

    @classmethod
    def quick(cls) -> "ToySettings":
        return cls(n=3)

    def to_dict(self) -> dict:
        return asdict(self)


def _note(name: str, ctx: Context, shard) -> None:
    s = ctx.settings
    if s.log:
        with open(s.log, "a") as f:
            f.write(f"{ctx.model['name']} {name} {shard.stage} {shard.index} {os.getpid()}\n")
    if shard.index == s.block_at and shard.stage == "score" and s.release:
        while not os.path.exists(s.release):
            time.sleep(0.05)


def _chunks(ctx: Context) -> list[list[int]]:
    s = ctx.settings
    return [list(range(i, min(i + s.per_shard, s.n))) for i in range(0, s.n, s.per_shard)]


def _score(lm, ctx: Context, shard) -> dict[str, pd.DataFrame]:
    _note("toy_scores", ctx, shard)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in shard.payload]
    logits = run(lm, prompts, last_only=True).logits
    top = logits.argmax(-1)
    sc = score_tokens(logits, top)
    noise = np.random.default_rng(shard.seed).normal(size=len(prompts))
    return {"scores": pd.DataFrame({"qid": [f"q{i}" for i in shard.payload], "top": top.tolist(),
                                    "logprob": sc["logprob"].tolist(), "noise": noise})}


def _summary(lm, ctx: Context, shard) -> dict[str, pd.DataFrame]:
    _note("toy_scores", ctx, shard)
    t = ctx.tables["scores"]
    return {"summary": pd.DataFrame({"n": [len(t)], "mean_logprob": [float(t["logprob"].mean())]})}


def _finish_scores(ctx: Context) -> Result:
    t = ctx.tables["scores"]
    claim = mean_vs_zero("toy.logprob", t["logprob"].to_numpy(), analysis="toy_scores", direction="less",
                         statement="the top token's log-probability is below zero", n_resamples=200)
    from hopscope.stats import claims_frame

    return Result("toy_scores", ctx.settings.to_dict(), dict(ctx.tables), claims=claims_frame([claim]),
                  headline=[Headline("mean logprob", float(t["logprob"].mean()), n=len(t))])


def _layers(ctx: Context) -> list[int]:
    return list(range(ctx.model["n_layers"]))


def _patch(lm, ctx: Context, shard) -> dict[str, pd.DataFrame]:
    _note("toy_patch", ctx, shard)
    layer = shard.payload
    prompt = PROMPTS[0]
    res = prompt_pass(lm, prompt, [[], [zero_ablate(Site(layer, "resid_post", -1))],
                                   [zero_ablate(Site(layer, "mlp_out", -1))]])
    clean_top = res.logits[0].argmax()
    lp = score_tokens(res.logits, torch.stack([clean_top] * 3))["logprob"]
    return {"patch": pd.DataFrame({"qid": "p0", "layer": layer, "condition": ["clean", "zero_resid", "zero_mlp"],
                                   "logprob": lp.tolist()})}


def _finish_patch(ctx: Context) -> Result:
    t = ctx.tables["patch"]
    clean = t[t.condition == "clean"].set_index("layer")["logprob"]
    drop = (clean - t[t.condition == "zero_resid"].set_index("layer")["logprob"]).to_numpy()
    claim = mean_vs_zero("toy.drop", drop, analysis="toy_patch", statement="zeroing the residual lowers the "
                         "clean top token's log-probability", n_resamples=200)
    from hopscope.stats import claims_frame

    return Result("toy_patch", ctx.settings.to_dict(), dict(ctx.tables), claims=claims_frame([claim]))


TOY_SCORES = Analysis("toy_scores", ToySettings, [Stage("score", _chunks, _score), Stage("summary", lambda c: [0],
                                                                                         _summary)], _finish_scores)
TOY_PATCH = Analysis("toy_patch", ToySettings, [Stage("patch", _layers, _patch)], _finish_patch)
TOYS = [TOY_SCORES, TOY_PATCH]
TABLES = {"toy_scores": ("scores", "summary"), "toy_patch": ("patch",)}


def reference_tables(settings: ToySettings | None = None) -> dict[tuple[str, str], dict[str, pd.DataFrame]]:
    """Each (model, analysis)'s tables from one plain ``execute`` in this process."""
    out = {}
    for family in FAMILIES:
        lm = tiny(family)
        for toy in TOYS:
            res = execute(toy, lm, settings=settings or ToySettings(), progress=False)
            out[f"tiny-{family}", toy.name] = res.tables
    return out


def sweep_tables(folder: Path) -> dict[tuple[str, str], dict[str, pd.DataFrame]]:
    """Each job's tables as its child run folder stores them."""
    jobs = RunFolder.open(folder).load_table("jobs")
    out = {}
    for r in jobs.itertuples():
        child = RunFolder.open(folder / r.folder)
        out[r.model, r.analysis] = {n: child.load_table(n) for n in TABLES[r.analysis]}
    return out


def assert_same(got: dict, ref: dict) -> None:
    assert set(got) == set(ref)
    for key, tables in ref.items():
        for name in TABLES[key[1]]:
            pd.testing.assert_frame_equal(got[key][name].reset_index(drop=True), tables[name].reset_index(drop=True),
                                          check_exact=True, check_dtype=False)


def spec(**kw) -> SweepSpec:
    return SweepSpec(models=[f"tiny-{f}" for f in FAMILIES], analyses=list(TOYS), **kw)


@pytest.fixture(scope="module")
def reference():
    torch.set_num_threads(1)
    return reference_tables()


# ---- the grid ---------------------------------------------------------------------------------------------------
def test_sweep_file_and_flags_parse(tmp_path):
    f = tmp_path / "sweep.toml"
    f.write_text('models = ["tiny-llama", "tiny-gpt2"]\nanalyses = ["test_sweep:TOY_PATCH"]\nsize = "quick"\n'
                 '[settings.toy_patch]\nper_shard = 3\n[placement]\ndevice_map = "auto"\n'
                 'max_memory = { 0 = "20GiB", cpu = "60GiB" }\n[executor]\nkind = "ray"\nworkers = 3\n')
    grid, placement, options = read_sweep_file(f)
    s = SweepSpec.from_dict(grid)
    assert placement.max_memory == {0: "20GiB", "cpu": "60GiB"}  # GPU indices as ints, as accelerate wants
    assert (options.kind, options.workers) == ("ray", 3)
    jobs = s.jobs()
    assert [j.folder for j in jobs] == ["tiny-llama__toy_patch", "tiny-gpt2__toy_patch"]
    assert jobs[0].settings == ToySettings(n=3, per_shard=3)  # quick() + the override, the sweep's seed
    assert parse_max_memory("0=20GiB, 1=20GiB,cpu=60GiB") == {0: "20GiB", 1: "20GiB", "cpu": "60GiB"}
    f.write_text('models = ["tiny-llama"]\nanalyses = ["toy"]\nworkers = 2\n')
    with pytest.raises(ValueError, match=r"sweep.toml: unknown key 'workers'"):
        read_sweep_file(f)


def test_settings_come_from_the_size_the_overrides_and_the_seed():
    assert build_settings(TOY_SCORES, "full", 5, {}) == ToySettings(seed=5)
    assert build_settings(TOY_SCORES, "quick", 0, {"per_shard": 1}) == ToySettings(n=3, per_shard=1)
    assert build_settings(TOY_SCORES, "study", 0, {}) == ToySettings()  # no study(): the defaults
    with pytest.raises(ValueError, match="has no setting 'nope'"):
        build_settings(TOY_SCORES, "full", 0, {"nope": 1})
    with pytest.raises(ValueError, match="unknown analysis 'nope'"):
        SweepSpec(models=["tiny-llama"], analyses=["nope"]).jobs()
    with pytest.raises(ValueError, match="settings given for 'other'"):
        SweepSpec(models=["tiny-llama"], analyses=[TOY_PATCH], settings={"other": {"n": 1}}).jobs()
    with pytest.raises(ValueError, match="listed twice"):
        SweepSpec(models=["tiny-llama", "tiny-llama"], analyses=[TOY_PATCH])


# ---- local sweeps -----------------------------------------------------------------------------------------------
def test_local_sweep_gives_the_tables_of_single_runs_and_one_report(tmp_path, reference):
    log = tmp_path / "calls.log"
    s = spec(settings={"toy_scores": {"log": str(log)}, "toy_patch": {"log": str(log)}})
    folder = run_sweep(s, out=tmp_path / "sw", progress=False).path
    assert_same(sweep_tables(folder), reference)
    jobs = RunFolder.open(folder).load_table("jobs")
    assert jobs["folder"].tolist() == ["tiny-llama__toy_scores", "tiny-llama__toy_patch", "tiny-gpt2__toy_scores",
                                       "tiny-gpt2__toy_patch"]
    assert (jobs["status"] == "done").all() and (jobs["computed"] == jobs["shards"]).all()
    assert jobs.set_index("folder")["shards"].to_dict()["tiny-llama__toy_scores"] == 4 + 1  # 4 chunks + summary
    assert (folder / "report.html").is_file()
    claims = RunFolder.open(folder).load_claims()
    assert len(claims) == 4 and set(claims["id"]) == {f"tiny-{f}__{t}:{c}" for f in FAMILIES for t, c in
                                                      (("toy_scores", "toy.logprob"), ("toy_patch", "toy.drop"))}
    assert (folder / "compare__toy_scores" / "report.html").is_file()  # hopscope compare across the two models
    html = (folder / "report.html").read_text()
    assert "Claims across models" in html and "tiny-gpt2" in html
    n_calls = len(log.read_text().splitlines())
    # running the same sweep again finds every job finished: nothing recomputed, the same tables
    again = run_sweep(s, out=folder, progress=False).path
    assert len(log.read_text().splitlines()) == n_calls
    jobs = RunFolder.open(again).load_table("jobs")
    assert jobs["computed"].sum() == 0 and (jobs["reused"] == jobs["shards"]).all()
    assert_same(sweep_tables(again), reference)


def test_resume_takes_the_recorded_grid_and_refuses_another(tmp_path):
    s = SweepSpec(models=["tiny-llama"], analyses=["test_sweep:TOY_PATCH"])
    run_sweep(s, out=tmp_path / "sw", progress=False)
    res = CliRunner().invoke(app, ["sweep", "--resume", str(tmp_path / "sw"), "--no-progress"])  # no grid flags
    assert res.exit_code == 0, res.output
    jobs = RunFolder.open(tmp_path / "sw").load_table("jobs")
    assert jobs["computed"].tolist() == [0] and jobs["reused"].tolist() == [3]
    with pytest.raises(ValueError, match="different arguments"):
        run_sweep(SweepSpec(models=["tiny-llama"], analyses=["test_sweep:TOY_PATCH"], seed=1), out=tmp_path / "sw",
                  progress=False)


def _toy_cli(folder: Path, log: Path, release: Path, *extra: str) -> list[str]:
    return [sys.executable, "-c", "from hopscope.cli import main; main()", "sweep", "-m", "tiny-llama",
            "-m", "tiny-gpt2", "-a", "test_sweep:TOY_SCORES", "-a", "test_sweep:TOY_PATCH", "--out", str(folder),
            "--set", f"toy_scores.log={log}", "--set", f"toy_patch.log={log}", "--set", "toy_scores.block_at=2",
            "--set", f"toy_scores.release={release}", "--no-progress", "--threads", "1", *extra]


def killed_spec(tmp_path: Path) -> SweepSpec:
    """The grid :func:`_toy_cli` gives, built in Python (a sweep started by the CLI resumes from Python)."""
    log, release = str(tmp_path / "calls.log"), str(tmp_path / "release")
    return SweepSpec(models=["tiny-llama", "tiny-gpt2"], analyses=["test_sweep:TOY_SCORES", "test_sweep:TOY_PATCH"],
                     settings={"toy_scores": {"log": log, "block_at": 2, "release": release},
                               "toy_patch": {"log": log}})


def run_killed_then_resumed(tmp_path: Path, *extra: str, rerun=None) -> tuple[Path, list[str], list[str], set]:
    """Start the toy sweep in a subprocess, SIGKILL it while shard 2 of tiny-llama's toy_scores blocks, and run
    the same command again (or ``rerun(folder)``); returns (folder, calls before the kill, calls after, parts
    finished at the kill)."""
    folder, log, release = tmp_path / "sw", tmp_path / "calls.log", tmp_path / "release"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), str(ROOT), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    cmd = _toy_cli(folder, log, release, *extra)
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    parts = folder / "tiny-llama__toy_scores" / "parts" / "score"
    deadline = time.monotonic() + 300
    while not (log.exists() and "tiny-llama toy_scores score 2" in log.read_text()):
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "the sweep never reached the blocking shard"
        time.sleep(0.1)
    while FolderStore(parts.parent).count("score") < 2 and time.monotonic() < deadline:  # shards 0 and 1 written
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    before = calls(log)
    finished = {int(p.parent.name) for p in parts.glob("*/_done")}
    release.touch()
    if rerun is not None:
        rerun(folder)
    else:
        done = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
    after = calls(log)[len(before):]
    return folder, before, after, finished


def calls(log: Path) -> list[str]:
    """The shards a toy sweep computed, in order, as "<model> <analysis> <stage> <index>"."""
    return [" ".join(line.split()[:4]) for line in log.read_text().splitlines()]


def all_shards() -> set[str]:
    out = set()
    for f in FAMILIES:
        out |= {f"tiny-{f} toy_scores score {i}" for i in range(4)} | {f"tiny-{f} toy_scores summary 0"}
        out |= {f"tiny-{f} toy_patch patch {i}" for i in range(3)}
    return out


def check_resumed(folder: Path, after: list[str], finished: set[int], reference) -> None:
    """The rerun computed every shard not on disk at the kill, once each, and nothing that was."""
    assert {0, 1} <= finished and 2 not in finished  # written before the kill; shard 2 was blocked
    assert len(after) == len(set(after))
    assert set(after) == all_shards() - {f"tiny-llama toy_scores score {i}" for i in finished}
    jobs = RunFolder.open(folder).load_table("jobs").set_index("folder")
    assert jobs.loc["tiny-llama__toy_scores", ["computed", "reused"]].tolist() == [5 - len(finished), len(finished)]
    assert_same(sweep_tables(folder), reference)


def test_killed_driver_resumes_without_recomputing_finished_parts(tmp_path, reference):
    folder, before, after, finished = run_killed_then_resumed(tmp_path)
    assert finished == {0, 1}  # the local executor runs shards in order: it was blocked in shard 2
    assert after[:3] == ["tiny-llama toy_scores score 2", "tiny-llama toy_scores score 3",
                         "tiny-llama toy_scores summary 0"]
    check_resumed(folder, after, finished, reference)


# ---- the command line -------------------------------------------------------------------------------------------
def test_cli_bad_input_is_one_line(tmp_path, monkeypatch):
    runner = CliRunner()
    res = runner.invoke(app, ["sweep", "-m", "tiny-llama", "-a", "nope", "--out", str(tmp_path / "a")])
    assert res.exit_code == 2 and "error: unknown analysis 'nope'" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["sweep", "-m", "tiny-llama", "-a", "test_sweep:TOY_PATCH", "--set", "toy_patch.zz=1",
                              "--out", str(tmp_path / "b")])
    assert res.exit_code == 2 and "has no setting 'zz'" in res.output
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the extra were not installed
    res = runner.invoke(app, ["sweep", "-m", "tiny-llama", "-a", "test_sweep:TOY_PATCH", "--executor", "ray",
                              "--out", str(tmp_path / "c"), "--no-progress"])
    assert res.exit_code == 2 and 'pip install "hopscope[ray]"' in res.output
    res = runner.invoke(app, ["sweep", "-m", "tiny-llama", "-a", "test_sweep:TOY_PATCH", "--max-memory", "cpu=1GiB",
                              "--out", str(tmp_path / "d"), "--no-progress"])
    assert res.exit_code == 2 and "need a device_map" in res.output


def test_placement_reads_max_memory_text():
    assert Placement(device_map="auto", max_memory="0=1GiB,cpu=2GiB").max_memory == {0: "1GiB", "cpu": "2GiB"}
    with pytest.raises(ValueError, match="not DEVICE=SIZE"):
        parse_max_memory("cpu")
    with pytest.raises(ValueError, match="unknown executor"):
        ExecutorOptions(kind="dask")
    from hopscope.sweep.ray_pool import worker_gpus

    assert worker_gpus(ExecutorOptions("ray"), "cuda") == 1 and worker_gpus(ExecutorOptions("ray"), "cpu") == 0
    assert worker_gpus(ExecutorOptions("ray", gpus_per_worker=0.5), "cuda") == 0.5  # two replicas per GPU
    with pytest.raises(ValueError, match="would see no GPU"):
        worker_gpus(ExecutorOptions("ray", gpus_per_worker=0), "cuda:0")
