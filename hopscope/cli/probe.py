"""CLI: ``hopscope train kth-smallest`` (train a small GPT-2 on the k-th smallest task) and ``hopscope probe``
(MechanisticProbe into a run folder)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Optional

import typer

from hopscope.cli.common import (
    DeviceOpt, DtypeOpt, ModelOpt, OutOpt, ProgressOpt, QuickOpt, ResumeOpt, SeedOpt, ThreadsOpt, configure, fail,
    load, user_errors,
)


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
    steps: int = typer.Option(3000, help="Optimizer steps."),
    batch_size: int = typer.Option(128),
    lr: float = typer.Option(1e-3, help="Peak learning rate (AdamW, warmup then cosine decay)."),
    layers: int = typer.Option(4, help="GPT-2 layers (from scratch)."),
    heads: int = typer.Option(4, help="Attention heads per layer."),
    width: int = typer.Option(128, help="Model width d_model."),
    tokenizer: str = typer.Option("numbers", help="From scratch: numbers (one token per value, fast) | gpt2 (BPE)."),
    base: Optional[str] = typer.Option(None, help="Fine-tune this model (hub id / folder) instead of a new GPT-2."),
    threads: Optional[int] = ThreadsOpt,
    seed: int = SeedOpt,
) -> None:
    """Train a GPT-2 (4 layers, width 128 by default) from scratch on the k-th smallest task.

    Example: hopscope train kth-smallest --out models/kth --steps 3000
    """
    from hopscope.data.kth_smallest import KthSmallestConfig
    from hopscope.train.kth_smallest import GPT2Arch, train_kth_smallest
    from hopscope.train.last_token import TrainConfig

    configure(threads)
    with user_errors():
        task = KthSmallestConfig(n=n, k=k, pool_size=pool_size, n_train=n_train, seed=seed)
        cfg = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, seed=seed, eval_every=max(1, min(250, steps)))
        arch = GPT2Arch(n_layers=layers, n_heads=heads, d_model=width, n_positions=max(64, n + 8))
    model = load(base) if base is not None else None

    def show(row: dict) -> None:
        acc = row.get("val_accuracy", float("nan"))
        typer.echo(f"step {row['step']:>6}  loss {row['train_loss']:.4f}  val acc {acc:.3f}"
                   f"  ({row['seconds']:.0f}s)")

    with user_errors():
        result = train_kth_smallest(task, cfg, model=model, arch=arch, tokenizer=tokenizer, out=out, progress=show)
    typer.echo(f"test accuracy {result.metrics['test_accuracy']:.4f} (chance {result.metrics['chance_accuracy']:.4f}); "
               f"model saved to {result.folder}")


def probe_cmd(
    model: Optional[str] = ModelOpt,
    proofwriter: Optional[Path] = typer.Option(None, "--proofwriter", help="Probe the model on this ProofWriter "
                                               "jsonl file (default: the k-th smallest task)."),
    study: bool = typer.Option(False, "--study", help="The size `hopscope study` uses."),
    n_probe: Optional[int] = typer.Option(None, help="k-th smallest lists the probes are fit on."),
    n_eval: Optional[int] = typer.Option(None, help="k-th smallest lists for accuracy and masking."),
    steps: Optional[int] = typer.Option(None, help="Training steps of the model trained in the run."),
    limit: Optional[int] = typer.Option(None, help="At most this many ProofWriter questions."),
    shots: Optional[int] = typer.Option(None, help="In-context examples of ProofWriter prompts (paper: 4)."),
    max_depth: Optional[int] = typer.Option(None, help="Largest ProofWriter proof depth probed (paper: 1)."),
    shared_examples: bool = typer.Option(False, help="One set of in-context examples for every ProofWriter "
                                         "question (a shared prefix: faster; the paper draws them per question)."),
    token_pool: Optional[str] = typer.Option(None, help="Pooling of a statement's tokens: mean (paper) | sum."),
    per_head: bool = typer.Option(False, help="One feature per head instead of the head mean."),
    distance: Optional[str] = typer.Option(None, help="kNN distance: auto (paper) | manhattan | euclidean."),
    random_inits: Optional[int] = typer.Option(None, help="Random initialisations the score S is taken against."),
    permutations: Optional[int] = typer.Option(None, help="Label permutations of the claims' test."),
    corruption: bool = typer.Option(True, help="Run the corruption experiment."),
    masking: bool = typer.Option(True, help="Run head masking (k-th smallest)."),
    device: str = DeviceOpt,
    dtype: str = DtypeOpt,
    out: Optional[Path] = OutOpt,
    resume: Optional[Path] = ResumeOpt,
    seed: int = SeedOpt,
    threads: Optional[int] = ThreadsOpt,
    quick: bool = QuickOpt,
    progress: bool = ProgressOpt,
) -> None:
    """MechanisticProbe (Hou et al. 2023): kNN probes on attention for which statements a model uses and at
    which depth of the reasoning tree, scored against random initialisations (S), with head entropy, head
    masking and corruption. Without --model the k-th smallest GPT-2 is trained in the run; a folder from
    `hopscope train kth-smallest` is probed as it is; --proofwriter probes the model (default: the embedded
    one) on ProofWriter questions.

    Example: hopscope probe --quick --out runs/probe-quick
    """
    from hopscope.methods.probe import Settings, run
    from hopscope.report import RunFolder

    configure(threads)
    with user_errors():
        base = Settings.quick() if quick else Settings.study() if study else Settings()
        overrides = dict(n_probe=n_probe, n_eval=n_eval, train_steps=steps, n_questions=limit, shots=shots,
                         max_depth=max_depth, token_pool=token_pool, distance=distance, n_random_init=random_inits,
                         n_permutations=permutations)
        settings = replace(base, seed=seed, per_head=per_head, corruption=corruption, masking=masking,
                           shared_examples=shared_examples,
                           **{k: v for k, v in overrides.items() if v is not None})
        lm = None
        if proofwriter is not None:
            if not proofwriter.is_file():
                fail(f"--proofwriter {proofwriter}: no such file")
            settings = replace(settings, task="proofwriter")
            lm = load(model, device, dtype)
        elif model is not None:
            lm = load(model, device, dtype)
            settings = replace(settings, **_task_of(model, lm, settings))
        folder = RunFolder.start("probe", settings.to_dict(), out=out, resume=resume, seed=seed, quick=quick)
        with folder:
            result = run(lm, proofwriter, settings, run_folder=folder, progress=progress)
    for line in result.headline:
        typer.echo(f"{line.label}: {line.text()}")
    for c in result.claims.itertuples():
        typer.echo(f"{c.id}: {c.verdict} (S = {c.value:.3f} [{c.low:.3f}, {c.high:.3f}], n = {c.n})")
    typer.echo(f"report: {folder.path / 'report.html'}")


def _task_of(model: str, lm, settings) -> dict:
    """Settings of a given k-th smallest model: its folder's task (n, k, pool) or the tokenizer's one-token values."""
    from hopscope.data.kth_smallest import KthSmallestConfig, resolve_pool
    from hopscope.train.kth_smallest import load_task_info

    info = load_task_info(model) if Path(model).is_dir() else None
    if info is not None:
        task = KthSmallestConfig.from_dict(info["task_config"])
        return dict(train=False, n=task.n, k=task.k, pool=task.pool, pool_size=len(task.pool))
    task = resolve_pool(KthSmallestConfig(n=settings.n, k=settings.k, pool_size=settings.pool_size), lm.tokenizer)
    return dict(train=False, pool=task.pool)


def register(app: typer.Typer) -> None:
    """Add ``train kth-smallest`` and ``probe`` to the hopscope CLI."""
    _train_app(app).command("kth-smallest")(train_kth_smallest_cmd)
    app.command("probe")(probe_cmd)
