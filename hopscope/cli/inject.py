"""``hopscope inject`` (memory injection, Sakarvadia et al. 2023) and ``hopscope attn-lens train|show``.

The attention-lens commands live under ``attn-lens`` because ``hopscope lens`` is the logit lens.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from hopscope.cli.common import (
    DeviceOpt, DtypeOpt, ModelOpt, OutOpt, ProgressOpt, QuickOpt, ResumeOpt, SeedOpt, ThreadsOpt, configure, fail,
    load, user_errors,
)


def _floats(text: str, name: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        fail(f"{name} must be comma-separated numbers, got {text!r}")
        raise


def inject(
    data: Optional[str] = typer.Option(None, "--data", help="'handwritten' (the seed's 106 pairs, from the shared "
                                       "data folder), a seed memory-injection CSV, or a two-hop dataset file "
                                       "(JSONL/CSV/Parquet). Default: the world-facts two-hop queries."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Use N pairs (a seeded sample)."),
    search: Optional[int] = typer.Option(None, "--search", help="Search pairs that choose the best cell and heads; "
                                         "the rest are held out for the claims (0: every pair, in-sample)."),
    source: Optional[str] = typer.Option(None, "--source", help="Memory vectors: unembed_processed (the seed's, "
                                         "default), unembed, embed or attn."),
    memory_space: Optional[bool] = typer.Option(None, "--memory-space/--memory-as-written",
                                                help="Tokenize memories with a leading space (default: as written, "
                                                "the seed)."),
    prompt_bos: Optional[bool] = typer.Option(None, "--prompt-bos/--no-prompt-bos",
                                              help="A BOS token before every prompt (default on, the seed)."),
    taus: Optional[str] = typer.Option(None, "--taus", help="Tau grid, e.g. '1,2,3' (default 1..15, the seed)."),
    rel: Optional[str] = typer.Option(None, "--rel", help="Norm-scaled steps: injected / residual norm, e.g. "
                                      "'0.1,0.4' (an extension; default none)."),
    layer_stride: Optional[int] = typer.Option(None, "--layer-stride", help="Grid over every k-th layer (default 1)."),
    positions: Optional[str] = typer.Option(None, "--positions", help="Inject at 'all' prompt positions (the seed), "
                                            "the 'query' after a few-shot prefix, or the 'last' one."),
    criterion: Optional[str] = typer.Option(None, "--criterion", help="How the best cell is chosen: "
                                            "trimmed_mean_pct (the seed), mean_pct, median_pct, share_improved, "
                                            "mean_dlogp, median_dlogp."),
    random_memories: Optional[int] = typer.Option(None, "--random", help="Random-word memories per prompt at the "
                                                  "best cell."),
    pos_words: Optional[int] = typer.Option(None, "--pos-words", help="First N words of each part-of-speech list "
                                            "(default 40)."),
    top_heads: Optional[int] = typer.Option(None, "--top-heads", help="Heads in the few-heads claim (default 2)."),
    lens: Optional[bool] = typer.Option(None, "--lens/--no-lens", help="Train an attention lens for the best layer."),
    lens_layer: Optional[int] = typer.Option(None, "--lens-layer", help="Lens layer (default: the best layer)."),
    lens_rank: Optional[int] = typer.Option(None, "--lens-rank", help="Lens rank (0: full rank, the paper)."),
    lens_steps: Optional[int] = typer.Option(None, "--lens-steps", help="Lens training steps."),
    lens_corpus: Optional[str] = typer.Option(None, "--lens-corpus", help="boolq, world-facts or a text file."),
    study_size: bool = typer.Option(False, "--study-size", help="The size `hopscope study` uses (~3 CPU minutes)."),
    quick: bool = QuickOpt,
    model: Optional[str] = ModelOpt,
    device: str = DeviceOpt,
    dtype: str = DtypeOpt,
    threads: Optional[int] = ThreadsOpt,
    out: Optional[str] = OutOpt,
    resume: Optional[str] = ResumeOpt,
    seed: int = SeedOpt,
    progress: bool = ProgressOpt,
) -> None:
    """Memory injection: per-layer and per-head projections, the (layer x tau) grid, the best cell against random
    and part-of-speech memories on held-out prompts, the heads that carry the memory, and an attention lens.

    Defaults are the seed's protocol (processed unembedding, tau 1..15 at every layer and position, BOS before
    prompts, full-rank lens); --study-size and --quick are smaller fixed sizes.

    Example: hopscope inject --model gpt2 --data handwritten --lens-rank 8
    """
    from hopscope.methods.injection import Settings, load_pairs, run
    from hopscope.report import RunFolder

    configure(threads)
    with user_errors():
        if resume is not None:
            stored = RunFolder.open(resume).args
            label = stored.pop("data", None)
            settings = Settings(**stored)
        else:
            over = {k: v for k, v in dict(
                n_pairs=limit, source=source, memory_space=memory_space, prompt_bos=prompt_bos,
                layer_stride=layer_stride, positions=positions, criterion=criterion, random_memories=random_memories,
                pos_words=pos_words, top_heads=top_heads, lens=lens, lens_layer=lens_layer, lens_steps=lens_steps,
                lens_corpus=lens_corpus).items() if v is not None}
            if search is not None:
                over["search_prompts"] = search or None
            if taus is not None:
                over["taus"] = _floats(taus, "--taus")
            if rel is not None:
                over["rel"] = _floats(rel, "--rel")
            if lens_rank is not None:
                over["lens_rank"] = lens_rank or None
            size = Settings.quick if quick else Settings.study if study_size else Settings
            settings = size(**over, seed=seed)
            label = data
        pairs = load_pairs(label) if label is not None else None
    lm = load(model, device, dtype)
    with user_errors():
        run_folder = RunFolder.start("inject", {**settings.to_dict(), "data": label}, out=out, resume=resume,
                                     seed=settings.seed, quick=quick)
        with run_folder:
            result = run(lm, pairs, settings, run_folder=run_folder, progress=progress)
    for h in result.headline:
        typer.echo(f"{h.label:>40}: {h.text()}")
    for c in result.claims.itertuples():
        typer.echo(f"{c.id:>40}: {c.verdict} ({c.value:.3g} [{c.low:.3g}, {c.high:.3g}], n={c.n})")
    typer.echo(f"\nwrote {run_folder.report_path}")


lens_app = typer.Typer(help="Attention lenses: one trainable lens per head (Sakarvadia et al. 2023). "
                       "(`hopscope lens` is the logit lens.)", no_args_is_help=True)


@lens_app.command("train")
def lens_train(
    layer: List[int] = typer.Option(..., "--layer", "-l", help="Layer(s) to train a lens for (repeatable)."),
    rank: int = typer.Option(0, "--rank", help="0: full rank (the paper; heavy on a CPU); r: a rank-r update."),
    steps: int = typer.Option(2000, "--steps"),
    batch_size: int = typer.Option(64, "--batch-size"),
    lr: float = typer.Option(1e-3, "--lr", help="Adam learning rate of the lens matrices (the paper's 1e-3)."),
    corpus: str = typer.Option("boolq", "--corpus", help="boolq, world-facts or a text file path."),
    train_texts: int = typer.Option(1000, "--train-texts"),
    held_texts: int = typer.Option(100, "--held-texts"),
    max_tokens: int = typer.Option(64, "--max-tokens", help="Tokens kept per text."),
    model: Optional[str] = ModelOpt,
    device: str = DeviceOpt,
    dtype: str = DtypeOpt,
    threads: Optional[int] = ThreadsOpt,
    out: Optional[str] = OutOpt,
    seed: int = SeedOpt,
    progress: bool = ProgressOpt,
) -> None:
    """Train attention lenses (the heads of each layer jointly) and save them with their config; held-out KL
    is printed beside the untrained lens, the logit lens of the summed head outputs and a unigram guess.

    Example: hopscope attn-lens train --layer 12 --rank 8 --steps 300
    """
    from hopscope.progress import bar
    from hopscope.report import RunFolder, line_curves
    from hopscope.train.lens import train_from_corpus

    configure(threads)
    lm = load(model, device, dtype)
    args = dict(layer=layer, rank=rank, steps=steps, batch_size=batch_size, lr=lr, corpus=corpus,
                train_texts=train_texts, held_texts=held_texts, max_tokens=max_tokens)
    with user_errors():
        run = RunFolder.create("attn-lens", args, out=out, seed=seed)
    with user_errors(), run, bar(total=steps, desc="attention lens", enabled=progress, unit="step") as pb:
        run.set_model(lm)
        res = train_from_corpus(lm, layer, corpus, n_train=train_texts, n_held=held_texts, max_tokens=max_tokens,
                                rank=rank or None, steps=steps, batch_size=batch_size, lr=lr, seed=seed,
                                progress=lambda rec: pb.update(1))
        table = res.table()
        for l, lens_ in res.lenses.items():
            typer.echo(f"saved {lens_.save(run.path / f'lens_l{l}')}")
        run.write_table("lens_kl", table)
        run.write_table("lens_history", res.history)
        curves = {f"layer {l}": res.history[f"kl_l{l}"].to_numpy() for l in res.lenses}
        fig = line_curves(curves, x=res.history["step"].tolist(), title="attention lens training", xlabel="step",
                          ylabel="KL(model || lens)", markers=False)
        run.add_section("Attention lens training", text=(
            f"Corpus {corpus}; rank {rank or 'full'}; held-out KL of the trained lens beside the untrained lens "
            "(linear projection), the logit lens of the summed head outputs and the unigram guess."),
            figures=[run.save_figure("lens-training", fig).stem], tables={"held-out KL": table})
    typer.echo(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    for r in table.itertuples():
        if r.kl_lens >= min(r.kl_logit_lens, r.kl_unigram):
            typer.echo(f"layer {r.layer}: lens not better than baseline (held-out KL {r.kl_lens:.3f} vs logit lens "
                       f"{r.kl_logit_lens:.3f}, unigram {r.kl_unigram:.3f})")
    typer.echo(f"\nwrote {run.report_path}")


@lens_app.command("show")
def lens_show(
    prompt: str = typer.Argument(..., help="Prompt whose last position is read."),
    layer: Optional[int] = typer.Option(None, "--layer", "-l", help="Layer (untrained lens, i.e. the linear "
                                        "projection, unless --lens is given)."),
    lens_dir: Optional[Path] = typer.Option(None, "--lens", help="Folder of a saved lens (lens_config.json)."),
    k: int = typer.Option(5, "--k", help="Top-k tokens per head."),
    model: Optional[str] = ModelOpt,
    device: str = DeviceOpt,
    dtype: str = DtypeOpt,
) -> None:
    """Each head's top-k tokens through its lens, next to the linear projection of the head's raw output.

    Example: hopscope attn-lens show "The capital of France is" --layer 12
    """
    from hopscope.lenses.attention_lens import AttentionLens, show_lens

    if layer is None and lens_dir is None:
        fail("give --layer or --lens")
    lm = load(model, device, dtype)
    with user_errors():
        lens_ = AttentionLens.load(lens_dir, lm) if lens_dir else AttentionLens(lm, layer, rank=1)
        if layer is not None and layer % lm.n_layers != lens_.config.layer:
            fail(f"the lens in {lens_dir} is for layer {lens_.config.layer}, not {layer}")
        df = show_lens(lm, lens_, prompt, k)
    kind = f"trained lens ({lens_dir})" if lens_dir else "untrained lens = linear projection"
    typer.echo(f"layer {lens_.config.layer}, {kind}")
    width = max(len(" | ".join(map(repr, t))) for t in df["lens_top"])
    typer.echo(f"{'head':>4}  {'lens top-' + str(k):<{width}}  projection top-{k}")
    for r in df.itertuples():
        lens_top, plain_top = " | ".join(map(repr, r.lens_top)), " | ".join(map(repr, r.projection_top))
        typer.echo(f"{r.head:>4}  {lens_top:<{width}}  {plain_top}")


def register(app: typer.Typer) -> None:
    app.command("inject")(inject)
    app.add_typer(lens_app, name="attn-lens")
