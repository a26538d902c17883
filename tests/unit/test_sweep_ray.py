"""The Ray executor on a local Ray (one per module: Ray takes seconds to start): the same tables as a
single-process run, a worker that dies mid-shard costs only that shard, a killed driver's sweep resumes."""

from __future__ import annotations

import pytest
import torch

ray = pytest.importorskip("ray", reason='the Ray executor is an optional extra: pip install "hopscope[ray]"')

from test_sweep import FAMILIES, TOYS, all_shards, assert_same, calls, check_resumed, reference_tables  # noqa: E402
from test_sweep import killed_spec, run_killed_then_resumed, sweep_tables  # noqa: E402

from hopscope.report import RunFolder  # noqa: E402
from hopscope.sweep import CRASH_ENV, ExecutorOptions, SweepSpec, run_sweep  # noqa: E402

RAY2 = ExecutorOptions("ray", workers=2)


@pytest.fixture(scope="module")
def cluster():
    """A local Ray for this module (the sweep joins it instead of starting its own); yields its address."""
    ray.init(num_cpus=4, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def reference():
    torch.set_num_threads(1)  # the workers run one torch thread each: the same float reductions
    return reference_tables()


def toy_spec(log) -> SweepSpec:
    return SweepSpec(models=[f"tiny-{f}" for f in FAMILIES], analyses=list(TOYS),
                     settings={t.name: {"log": str(log)} for t in TOYS})


def test_ray_sweep_with_two_workers_gives_the_tables_of_a_local_run(cluster, reference, tmp_path):
    log = tmp_path / "calls.log"
    folder = run_sweep(toy_spec(log), executor=RAY2, out=tmp_path / "sw", progress=False).path
    assert_same(sweep_tables(folder), reference)
    lines = log.read_text().splitlines()
    assert sorted(calls(log)) == sorted(all_shards())  # every shard once
    assert len({line.split()[-1] for line in lines}) == 2  # spread over both workers, none in this process
    jobs = RunFolder.open(folder).load_table("jobs")
    assert (jobs["status"] == "done").all() and jobs["retries"].sum() == 0
    assert RunFolder.open(folder).config["sweep"]["executor"]["kind"] == "ray"


def test_a_worker_that_dies_loses_only_its_shard(cluster, reference, tmp_path, monkeypatch):
    marker = tmp_path / "crashed"
    monkeypatch.setenv(CRASH_ENV, f"toy_scores/score/1={marker}")  # its first attempt exits the worker process
    log = tmp_path / "calls.log"
    folder = run_sweep(toy_spec(log), executor=RAY2, out=tmp_path / "sw", progress=False).path
    assert marker.exists()  # the worker did die
    assert_same(sweep_tables(folder), reference)
    assert sorted(calls(log)) == sorted(all_shards())  # the crashed attempt computed nothing; no shard ran twice
    jobs = RunFolder.open(folder).load_table("jobs").set_index("folder")
    assert jobs.loc["tiny-llama__toy_scores", "retries"] == 1 and jobs["retries"].sum() == 1


def test_a_shard_that_keeps_killing_its_worker_ends_the_sweep(cluster, tmp_path, monkeypatch):
    from hopscope.sweep import ShardLost

    monkeypatch.setenv(CRASH_ENV, f"toy_patch/patch/0={tmp_path / 'crashed'}")  # max_retries=0: no second try
    spec = SweepSpec(models=["tiny-llama"], analyses=[TOYS[1]])
    with pytest.raises(ShardLost, match="shard 0 of stage 'patch' lost its worker 1 times"):
        run_sweep(spec, executor=ExecutorOptions("ray", workers=1, max_retries=0), out=tmp_path / "sw",
                  progress=False)
    assert RunFolder.open(tmp_path / "sw").status == "failed"


def test_killed_ray_driver_resumes_without_recomputing_finished_parts(cluster, reference, tmp_path):
    """The CLI's driver (joining this cluster, two workers busy) is killed; the sweep is finished from Python."""
    def rerun(folder):
        run_sweep(killed_spec(tmp_path), executor=RAY2, out=folder, progress=False)

    folder, _, after, finished = run_killed_then_resumed(tmp_path, "--executor", "ray", "--workers", "2",
                                                         "--ray-address", cluster, rerun=rerun)
    check_resumed(folder, after, finished, reference)
