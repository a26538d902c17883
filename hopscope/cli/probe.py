"""CLI: ``hopscope train kth-smallest`` (train a small GPT-2 on the k-th smallest task) and
``hopscope probe`` (MechanisticProbe study of a trained model into a run folder)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def _train_app(app: typer.Typer) -> typer.Typer:
    """The ``train`` sub-app, shared with other areas when one already registered it."""
    for group in app.registered_groups:
        if group.name == "train" and group.typer_instance is not None:
            return group.typer_instance
    sub = typer.Typer(help="Train or fine-tune small models on synthetic tasks.", no_args_is_help=True)
    app.add_typer(sub, name="train")
    return sub


def train_kth_smallest_cmd(
    out: Path = typer.Option(Path("models/kth-smallest"), help="Folder for the trained HF model."),
    n: int = typer.Option(16, help="Numbers per list."),
    k: int = typer.Option(2, help="Predict the k-th smallest."),
    pool_size: int = typer.Option(512, help="Distinct values (each one token for the tokenizer)."),
    n_train: int = typer.Option(50_000, help="Training lists."),
    steps: int = typer.Option(2000, help="Optimizer steps."),
    batch_size: int = typer.Option(128),
    lr: float = typer.Option(1e-3, help="Peak learning rate (AdamW, warmup then cosine decay)."),
    layers: int = typer.Option(4, help="GPT-2 layers (from scratch)."),
    heads: int = typer.Option(4, help="Attention heads per layer."),
    width: int = typer.Option(128, help="Model width d_model."),
    tokenizer: str = typer.Option("numbers", help="From scratch: numbers (one token per value, fast) | gpt2 (BPE)."),
    base: Optional[str] = typer.Option(None, help="Fine-tune this model (hub id / folder) instead of a new GPT-2."),
    threads: Optional[int] = typer.Option(None, help="torch CPU threads (1 is often fastest for small models)."),
    seed: int = typer.Option(0),
) -> None:
    """Train a GPT-2 (4 layers, width 128 by default) from scratch on the k-th smallest task."""
    from hopscope.data.kth_smallest import KthSmallestConfig
    from hopscope.train.kth_smallest import GPT2Arch, train_kth_smallest
    from hopscope.train.last_token import TrainConfig

    _set_threads(threads)
    task = KthSmallestConfig(n=n, k=k, pool_size=pool_size, n_train=n_train, seed=seed)
    cfg = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, seed=seed, eval_every=max(1, min(250, steps)))
    model = None
    if base is not None:
        from hopscope.cli.common import load as load_model

        model = load_model(base)
    arch = GPT2Arch(n_layers=layers, n_heads=heads, d_model=width, n_positions=max(64, n + 8))

    def show(row: dict) -> None:
        typer.echo(f"step {row['step']:>6}  loss {row['train_loss']:.4f}  val acc {row.get('val_accuracy', float('nan')):.3f}"
                   f"  ({row['seconds']:.0f}s)")

    result = train_kth_smallest(task, cfg, model=model, arch=arch, tokenizer=tokenizer, out=out, progress=show)
    typer.echo(f"test accuracy {result.metrics['test_accuracy']:.4f} (chance {result.metrics['chance_accuracy']:.4f}); "
               f"model saved to {result.folder}")


def probe_cmd(
    model: str = typer.Argument(..., help="A folder from `hopscope train kth-smallest` (or any model id/folder)."),
    out: Optional[Path] = typer.Option(None, help="Run folder (default: runs/probe-<timestamp>)."),
    full: bool = typer.Option(False, "--full/--quick", help="Full sizes (500 lists, 9 masking fractions) or quick."),
    n_probe: Optional[int] = typer.Option(None, help="Lists the probes are fit on."),
    n_eval: Optional[int] = typer.Option(None, help="Lists for accuracy and masking."),
    per_head: bool = typer.Option(False, help="One feature per head instead of the head mean."),
    query: str = typer.Option("last", help="Query rows: last | mean | max (over the prompt)."),
    normalize: str = typer.Option("max", help="Feature normalisation: max (per list, as the paper's code) | sum | none."),
    corruption: bool = typer.Option(True, help="Run the corruption analysis."),
    n: int = typer.Option(16, help="List length when the model folder has no task settings."),
    k: int = typer.Option(2, help="k when the model folder has no task settings."),
    proofwriter: Optional[Path] = typer.Option(None, help="Probe real-text reasoning on this ProofWriter jsonl "
                                               "file instead of the k-th smallest task."),
    limit: Optional[int] = typer.Option(None, help="At most this many ProofWriter questions."),
    threads: Optional[int] = typer.Option(None, help="torch CPU threads."),
    seed: int = typer.Option(0),
) -> None:
    """MechanisticProbe study: accuracy, probe scores vs random init, layer-wise curves, head entropy,
    head masking, corruption and attention figures, written to a run folder."""
    from hopscope.data.kth_smallest import KthSmallestConfig
    from hopscope.methods.probe.core import ProbeSettings
    from hopscope.methods.probe.study import StudyConfig, run_probe_study, write_probe_study
    from hopscope.cli.common import load as load_model
    from hopscope.report import RunFolder
    from hopscope.train.kth_smallest import load_task_info

    _set_threads(threads)
    if proofwriter is not None:
        _probe_proofwriter(model, proofwriter, out, limit, per_head, query, normalize, seed)
        return
    settings = ProbeSettings(per_head=per_head, query=query, normalize=normalize, seed=seed)
    sizes = {key: v for key, v in dict(n_probe=n_probe, n_eval=n_eval).items() if v is not None}
    config = (StudyConfig.full if full else StudyConfig.quick)(settings=settings, corruption=corruption, **sizes)
    info = load_task_info(model) if Path(model).is_dir() else None
    task = KthSmallestConfig.from_dict(info["task_config"]) if info else KthSmallestConfig(n=n, k=k, seed=seed)
    args = dict(model=model, full=full, n_probe=config.n_probe, n_eval=config.n_eval, per_head=per_head,
                query=query, normalize=normalize, corruption=corruption, n=task.n, k=task.k)
    run = RunFolder.create("probe", args, out=out, seed=seed)
    with run:
        m = load_model(model)
        run.set_model(m)
        result = run_probe_study(m, task=task, config=config, seed=seed, progress=lambda s: typer.echo(f"... {s}"))
        if info:
            result["tables"]["training_metrics"] = _training_table(info)
        write_probe_study(run, result)
    s = result["summary"]
    typer.echo(f"accuracy {s['accuracy']:.4f}; F1 useful {s['f1_useful']:.3f} (random {s['f1_random_useful']:.3f}, "
               f"S {s['S_useful']:.3f}); F1 step {s['f1_step']:.3f} (random {s['f1_random_step']:.3f}, "
               f"S {s['S_step']:.3f})")
    typer.echo(f"run folder: {run.path}")


def _probe_proofwriter(model: str, path: Path, out: Optional[Path], limit: Optional[int], per_head: bool,
                       query: str, normalize: str, seed: int) -> None:
    from hopscope.data.loaders.proofwriter import load_proofwriter
    from hopscope.methods.probe import ProbeSettings, proofwriter_items, run_text_probe_study
    from hopscope.cli.common import load as load_model
    from hopscope.report import RunFolder

    records = list(load_proofwriter(path))[:limit]
    items = proofwriter_items(records)
    if len(items) < 2:
        raise typer.BadParameter(f"{path} has {len(items)} questions with a proof; the probe needs two or more")
    query = "mean" if query == "last" else query  # statements precede the question: pool its rows by default
    settings = ProbeSettings(per_head=per_head, query=query, normalize=normalize, seed=seed)
    args = dict(model=model, proofwriter=str(path), limit=limit, per_head=per_head, query=query, normalize=normalize)
    run = RunFolder.create("probe", args, out=out, seed=seed)
    with run:
        m = load_model(model)
        run.set_model(m)
        run.set_dataset(path.stem, str(path))
        result = run_text_probe_study(m, items, settings=settings, seed=seed)
        for name, df in result["tables"].items():
            run.write_table(name, df)
        for name, fig in result["figures"].items():
            run.save_figure(name, fig)
        s = result["summary"]
        run.add_section("MechanisticProbe on ProofWriter",
                        text="Theory sentences are the statements; those the proof uses are useful, labelled with "
                             "the proof step that uses them. Features pool the question's attention rows.",
                        figures=list(result["figures"]), tables={"scores": "probe_scores", "accuracy": "accuracy"},
                        headline={k: round(v, 3) for k, v in s.items() if k.startswith(("S_", "accuracy"))})
    typer.echo(f"{s['n_items']} questions; F1 useful {s['f1_useful']:.3f} (S {s['S_useful']:.3f}); "
               f"F1 step {s['f1_step']:.3f} (S {s['S_step']:.3f}); run folder: {run.path}")


def _set_threads(threads: int | None) -> None:
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def _training_table(info: dict):
    import pandas as pd

    return pd.DataFrame([{**info.get("metrics", {}), **{f"task_{k}": v for k, v in info["task_config"].items()
                                                          if k != "pool"}}])


def register(app: typer.Typer) -> None:
    """Add ``train kth-smallest`` and ``probe`` to the hopscope CLI."""
    _train_app(app).command("kth-smallest")(train_kth_smallest_cmd)
    app.command("probe")(probe_cmd)
