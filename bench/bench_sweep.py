"""Sweep scaling: one sweep on the local executor and on Ray with 1 and 2 workers (1 torch thread each), in
one run, printed as ratios: Ray with 2 workers against 1 (the scaling ratio; 2.0x is ideal on 2 cores) and
against the local executor, and Ray's overhead per shard (a sweep of shards that do no model work).

The workload is a sweep over ``--model`` x one analysis whose shards each patch ``--rows`` rows of a prompt
pass (``prompt_pass`` with a ``replace`` at every layer); every run's tables are checked equal.

    python bench/bench_sweep.py                  # the default model, 16 shards per model
    python bench/bench_sweep.py --quick          # tiny models, small sizes: to check the script runs

Needs the Ray extra (``pip install "hopscope[ray]"``). Run it alone on the machine: with two cores a parallel
job halves every number; the load average is printed.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import torch

from hopscope.engine import Site, prompt_pass, replace
from hopscope.pipeline import Analysis, Context, Stage
from hopscope.report import RunFolder
from hopscope.results import Result
from hopscope.sweep import ExecutorOptions, SweepSpec, run_sweep

PROMPT = "The Eiffel Tower is located in the city of Paris, which is the capital of"


@dataclass
class BenchSettings:
    shards: int = 16
    rows: int = 64       # patched rows per shard
    work: bool = True    # False: shards return at once (Ray's per-shard overhead)
    seed: int = 0

    @classmethod
    def quick(cls) -> "BenchSettings":
        return cls(shards=4, rows=8)

    def to_dict(self) -> dict:
        return asdict(self)


def _plan(ctx: Context) -> list[int]:
    return list(range(ctx.settings.shards))


def _work(lm, ctx: Context, shard) -> dict[str, pd.DataFrame]:
    s = ctx.settings
    if not s.work:
        return {"rows": pd.DataFrame({"shard": [shard.index], "top": [0]})}
    g = torch.Generator().manual_seed(shard.seed)
    rows = [[replace(Site(r % lm.n_layers, "resid_post", -1), torch.randn(lm.d_model, generator=g))]
            for r in range(s.rows)]
    top = prompt_pass(lm, PROMPT, rows).logits.argmax(-1)
    return {"rows": pd.DataFrame({"shard": shard.index, "row": range(s.rows), "top": top.tolist()})}


def _finish(ctx: Context) -> Result:
    return Result("bench_patch", ctx.settings.to_dict(), dict(ctx.tables))


BENCH = Analysis("bench_patch", BenchSettings, [Stage("patch", _plan, _work)], _finish)


def sweep(models: list[str], settings: BenchSettings, options: ExecutorOptions, root: Path, label: str):
    """(wall time of the jobs, wall time of the whole call, the tables) of one sweep."""
    spec = SweepSpec(models=models, analyses=[BENCH], settings={"bench_patch": settings.to_dict()})
    t = time.perf_counter()
    run = run_sweep(spec, executor=options, out=root / label, progress=False)
    total = time.perf_counter() - t
    jobs = run.load_table("jobs")
    tables = {r.model: RunFolder.open(run.path / r.folder).load_table("rows") for r in jobs.itertuples()}
    return float(jobs["seconds"].sum()), total, tables


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", default=None,
                    help="model (repeatable; default: the embedded SmolLM2-135M-Instruct)")
    ap.add_argument("--shards", type=int, default=16, help="shards per model")
    ap.add_argument("--rows", type=int, default=64, help="patched rows per shard")
    ap.add_argument("--empty-shards", type=int, default=200, help="shards of the overhead sweep")
    ap.add_argument("--quick", action="store_true", help="tiny models, small sizes")
    args = ap.parse_args()
    import ray

    models = args.model or (["tiny-llama", "tiny-gpt2"] if args.quick else ["smollm2-135m"])
    work = BenchSettings(shards=4 if args.quick else args.shards, rows=8 if args.quick else args.rows)
    empty = BenchSettings(shards=20 if args.quick else args.empty_shards, work=False)
    torch.set_num_threads(1)
    print(f"models {', '.join(models)}; torch {torch.__version__}, 1 thread per worker, {os.cpu_count()} CPUs, "
          f"{platform.machine()}, load average {os.getloadavg()}")
    local = ExecutorOptions("local", threads=1)
    ray1, ray2 = ExecutorOptions("ray", workers=1, threads=1), ExecutorOptions("ray", workers=2, threads=1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        ray.init(num_cpus=max(2, os.cpu_count() or 1), include_dashboard=False, logging_level="ERROR",
                 log_to_driver=False)
        t_ray = time.perf_counter() - t
        try:
            results = {}
            for label, opts in (("local", local), ("ray-1", ray1), ("ray-2", ray2)):
                results[label] = sweep(models, work, opts, root, label)
            same = all(results[k][2][m].equals(results["local"][2][m]) for k in results for m in models)
            n = len(models) * work.shards
            print(f"\n[sweep] {len(models)} models x {work.shards} shards, each a prompt pass of {work.rows} "
                  f"patched rows ({n} shards); identical tables on every executor: {'yes' if same else 'NO'}")
            base = results["local"][0]
            for label, name in (("local", "local executor (1 thread)"), ("ray-1", "Ray, 1 worker (1 thread)"),
                                ("ray-2", "Ray, 2 workers (1 thread each)")):
                jobs, total, _ = results[label]
                print(f"  {name:<36} {jobs:8.2f} s  {base / jobs:6.2f}x vs local   (startup + model loads "
                      f"{total - jobs:5.2f} s)")
            print(f"  scaling 1 -> 2 workers: {results['ray-1'][0] / results['ray-2'][0]:.2f}x (ideal 2.00x); "
                  f"Ray itself started in {t_ray:.2f} s")
            t_local, _, _ = sweep(models, empty, local, root, "empty-local")
            t_one, _, _ = sweep(models, empty, ray1, root, "empty-ray-1")
            m = len(models) * empty.shards
            print(f"\n[per-shard overhead] {m} shards that do no model work")
            print(f"  local: {t_local / m * 1e3:.1f} ms/shard (planning, writing the part); Ray, 1 worker: "
                  f"{t_one / m * 1e3:.1f} ms/shard: Ray adds {(t_one - t_local) / m * 1e3:.1f} ms per shard")
        finally:
            ray.shutdown()
    print(f"\nload average at the end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
