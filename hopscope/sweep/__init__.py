"""Sweeps: many models x analyses x datasets into one run folder, on this machine or on a Ray cluster.

    from hopscope.sweep import ExecutorOptions, SweepSpec, run_sweep

    spec = SweepSpec(models=["smollm2-135m", "gpt2"], analyses=["hopping", "recall"], size="study")
    run = run_sweep(spec, executor=ExecutorOptions("ray", workers=4), out="runs/sweep-x")

Every analysis is a :class:`hopscope.pipeline.Analysis` of pure, seeded shards; a sweep runs each (model,
analysis, dataset) into a child run folder whose finished shards are Parquet parts, so an interrupted sweep
finishes by running it again, and any executor gives the tables of a single-process run. See docs/scaling.md.
"""

from .driver import recorded_spec, run_sweep
from .models import ModelSpec, RemoteModel, load
from .ray_pool import CRASH_ENV, RayExecutor, RayPool, ShardLost
from .spec import ExecutorOptions, Job, Placement, SweepSpec, parse_max_memory, parse_override, read_sweep_file

__all__ = [
    "CRASH_ENV", "ExecutorOptions", "Job", "ModelSpec", "Placement", "RayExecutor", "RayPool", "RemoteModel",
    "ShardLost", "SweepSpec", "load", "parse_max_memory", "parse_override", "read_sweep_file", "recorded_spec",
    "run_sweep",
]
