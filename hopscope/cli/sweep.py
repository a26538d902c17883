"""``hopscope sweep``: models x analyses x datasets into one run folder, locally or on Ray."""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional

import typer

from hopscope.cli.common import OutOpt, ProgressOpt, QuickOpt, ResumeOpt, ThreadsOpt, configure, fail, user_errors


def sweep(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="A sweep TOML file: the grid, and "
                                          "settings.<analysis>, placement and executor tables; flags override it."),
    models: List[str] = typer.Option([], "--model", "-m", help="A model (repeatable): embedded name, local folder, "
                                     "hub id, or tiny-<family> (a tiny random model, for smoke tests)."),
    analyses: List[str] = typer.Option([], "--analysis", "-a", help="An analysis (repeatable): a registered name "
                                       "(hopping, injection, recall, probe, ...) or module:ATTRIBUTE."),
    datasets: List[str] = typer.Option([], "--dataset", "-d", help="A dataset file (repeatable); 'default' (the "
                                       "default): each analysis's own data."),
    size: Optional[str] = typer.Option(None, "--size", help="full (the paper's protocol, the default), study or "
                                       "quick."),
    quick: bool = QuickOpt,
    overrides: List[str] = typer.Option([], "--set", help="ANALYSIS.SETTING=VALUE (repeatable), e.g. "
                                        "recall.n_queries=200."),
    executor: Optional[str] = typer.Option(None, "--executor", help="local (in this process, the default) or ray."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Ray workers, each holding one copy of the model."),
    gpus_per_worker: Optional[float] = typer.Option(None, "--gpus-per-worker", help="GPUs per Ray worker "
                                                    "(fractions share a GPU; default 1 with --device cuda, else 0)."),
    cpus_per_worker: Optional[float] = typer.Option(None, "--cpus-per-worker", help="CPUs per Ray worker "
                                                    "(default 1; also its torch threads unless --threads)."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="A Ray cluster to join (default: "
                                              "$RAY_ADDRESS; none: a local Ray is started)."),
    max_retries: Optional[int] = typer.Option(None, "--max-retries", help="Times a shard whose worker died is run "
                                              "again (default 2)."),
    device: Optional[str] = typer.Option(None, "--device", help="torch device: cpu (default) or cuda."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="float32 (default), bfloat16 or float16; scores are "
                                        "computed in float32."),
    device_map: Optional[str] = typer.Option(None, "--device-map", help="Spread each model over the devices "
                                             "(accelerate): auto, balanced or sequential."),
    max_memory: Optional[str] = typer.Option(None, "--max-memory", help="Memory per device for --device-map, e.g. "
                                             "0=70GiB,1=70GiB,cpu=200GiB."),
    offload_folder: Optional[str] = typer.Option(None, "--offload-folder", help="Where --device-map offloads what "
                                                 "fits no device."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed (default 0)."),
    threads: Optional[int] = ThreadsOpt,
    out: Optional[str] = OutOpt,
    resume: Optional[str] = ResumeOpt,
    progress: bool = ProgressOpt,
) -> None:
    """Run a grid of models x analyses x datasets into one run folder with one report (a child folder per
    job, the claims across models on top). Every finished shard is kept: run the same command again, or
    --resume the folder, to finish an interrupted sweep.

    Example: hopscope sweep -m smollm2-135m -m Qwen/Qwen2.5-0.5B -a hopping -a recall --executor ray --workers 2
    """
    from hopscope.sweep import (ExecutorOptions, Placement, ShardLost, SweepSpec, parse_override, read_sweep_file,
                                recorded_spec, run_sweep)

    configure(threads)
    with user_errors():
        grid: dict[str, Any] = {}
        placement_d: dict[str, Any] = {}
        executor_d: dict[str, Any] = {}
        if config is not None:
            grid, placement, options = read_sweep_file(config)
            placement_d, executor_d = placement.to_dict(), options.to_dict()
        elif resume is not None and not (models or analyses or datasets or size or quick or overrides):
            grid = recorded_spec(resume).to_dict()
        flags = {"models": list(models), "analyses": list(analyses), "datasets": list(datasets),
                 "size": "quick" if quick else size, "seed": seed, "device": device, "dtype": dtype}
        grid.update({k: v for k, v in flags.items() if v not in (None, [])})
        settings = {k: dict(v) for k, v in dict(grid.get("settings", {})).items()}
        for text in overrides:
            analysis, key, value = parse_override(text)
            settings.setdefault(analysis, {})[key] = value
        grid["settings"] = settings
        spec = SweepSpec.from_dict(grid)
        placement_d.update({k: v for k, v in {"device_map": device_map, "max_memory": max_memory,
                                              "offload_folder": offload_folder}.items() if v is not None})
        executor_d.update({k: v for k, v in {"kind": executor, "workers": workers, "gpus_per_worker": gpus_per_worker,
                                             "cpus_per_worker": cpus_per_worker, "address": ray_address,
                                             "max_retries": max_retries, "threads": threads}.items() if v is not None})
        options = ExecutorOptions(**executor_d)
        if options.kind == "local" and spec.device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                fail(f"--device {spec.device}: no CUDA device is visible to this process")
        try:
            run = run_sweep(spec, placement=Placement(**placement_d), executor=options, out=out, resume=resume,
                            progress=progress)
        except (ModuleNotFoundError, ShardLost) as err:
            fail(str(err))
    typer.echo(f"report: {run.report_path}")


def register(app: typer.Typer) -> None:
    app.command()(sweep)
