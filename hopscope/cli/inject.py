"""``hopscope inject`` (memory-injection study) and ``hopscope attn-lens train|show`` (attention lenses).

The attention-lens commands live under ``attn-lens`` because ``hopscope lens`` is the logit lens.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from hopscope.cli.common import DeviceOpt, DtypeOpt, ModelOpt, OutOpt, ResumeOpt, SeedOpt, fail, load

ThreadsOpt = typer.Option(0, "--threads", help="torch CPU threads (0: torch's default; 1 is often fastest on a "
                          "busy machine).")


def _floats(text: str, name: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        fail(f"{name} must be comma-separated numbers, got {text!r}")
        raise


def _threads(n: int) -> None:
    if n > 0:
        import torch

        torch.set_num_threads(n)


def inject(
    data: Optional[Path] = typer.Option(None, "--data", help="Memory-injection CSV (explicit_sentence, "
                                        "obscure_sentence, explicit_entity, obscure_entity, answer) or a two-hop "
                                        "dataset file; default: the seed's 106 handwritten pairs."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Use the first N pairs."),
    quick: bool = typer.Option(False, "--quick", help="Small study (~20 pairs, coarse grid; 1-2 CPU minutes)."),
    grid_prompts: Optional[int] = typer.Option(None, "--grid-prompts", help="Search prompts of the grid "
                                               "(default 24, quick 8; 0: every pair, no held-out split)."),
    layer_stride: Optional[int] = typer.Option(None, "--layer-stride", help="Grid over every k-th layer."),
    taus: Optional[str] = typer.Option(None, "--taus", help="Seed tau grid, e.g. '1,2,3' (default 1..15)."),
    rel: Optional[str] = typer.Option(None, "--rel", help="Norm-scaled grid: injection / residual norm ratios, "
                                      "e.g. '0.25,0.5,1' ('' for none)."),
    source: str = typer.Option("unembed", "--source", help="Memory vectors: unembed, embed or attn."),
    positions: Optional[str] = typer.Option(None, "--positions", help="Inject at 'all' prompt positions (the "
                                            "seed; default), the 'last' one, or 'auto' (last if prompts are long; "
                                            "the --quick default)."),
    method: str = typer.Option("shared", "--method", help="shared (fast) or engine (reference)."),
    criterion: str = typer.Option("mean_dlogp", "--criterion", help="How the best cell is chosen: mean_dlogp, "
                                  "median_dlogp, mean_pct, median_pct or share_improved."),
    random_grid: Optional[int] = typer.Option(None, "--random", help="Random memories per prompt at every cell."),
    best_random: Optional[int] = typer.Option(None, "--best-random",
                                              help="Random memories per prompt at the best cell."),
    pos_words: Optional[int] = typer.Option(None, "--pos-words", help="Words per part-of-speech list (default 40)."),
    pos_per_prompt: Optional[int] = typer.Option(None, "--pos-per-prompt", help="Of those, per prompt (0: all)."),
    projection: bool = typer.Option(True, "--projection/--no-projection", help="Per-layer/per-head projections."),
    lens: bool = typer.Option(True, "--lens/--no-lens", help="Train an attention lens and analyse its heads."),
    lens_layer: Optional[int] = typer.Option(None, "--lens-layer", help="Lens layer (default: the best layer)."),
    lens_rank: Optional[int] = typer.Option(None, "--lens-rank", help="Lens rank (0: full rank; default 8)."),
    lens_steps: Optional[int] = typer.Option(None, "--lens-steps", help="Lens training steps."),
    lens_corpus: Optional[str] = typer.Option(None, "--lens-corpus", help="boolq, world-facts or a text file."),
    threads: int = ThreadsOpt,
    model: Optional[str] = ModelOpt,
    device: str = DeviceOpt,
    dtype: str = DtypeOpt,
    out: Optional[str] = OutOpt,
    resume: Optional[str] = ResumeOpt,
    seed: int = SeedOpt,
) -> None:
    """Memory injection: per-layer projections, the (layer x tau) grid with random and part-of-speech
    controls, the best cell on held-out prompts, an attention lens and the heads it points to."""
    from hopscope.methods.injection_controls import load_pairs_any
    from hopscope.methods.injection_study import InjectionSettings, injection_study
    from hopscope.report import RunFolder

    _threads(threads)
    over = {k: v for k, v in dict(
        grid_prompts=grid_prompts, layer_stride=layer_stride, grid_random=random_grid, best_random=best_random,
        pos_words=pos_words, lens_layer=lens_layer, lens_steps=lens_steps, lens_corpus=lens_corpus).items()
        if v is not None}
    if taus is not None:
        over["taus"] = tuple(_floats(taus, "--taus"))
    if rel is not None:
        over["rel"] = tuple(_floats(rel, "--rel"))
    if pos_per_prompt is not None:
        over["pos_per_prompt"] = pos_per_prompt or None
    if lens_rank is not None:
        over["lens_rank"] = lens_rank or None
    if over.get("grid_prompts") == 0:
        over["grid_prompts"] = None
    if positions is not None:
        over["positions"] = positions
    over.update(source=source, method=method, criterion=criterion, projection=projection,
                lens=lens, seed=seed)
    if limit is not None:
        over["n_pairs"] = limit
    settings = InjectionSettings.quick(**over) if quick else InjectionSettings(**over)
    try:
        pairs = load_pairs_any(data)
    except (FileNotFoundError, ValueError, TypeError) as err:
        fail(str(err))
    lm = load(model, device, dtype)
    args = {**settings.to_dict(), "data": str(data) if data else "handwritten", "quick": quick}
    run = RunFolder.start("inject", args, out=out, resume=resume, seed=seed)
    with run:
        if run.config.get("dataset") is None:
            run.set_dataset(str(data) if data else "memory_injections/handwritten", [vars(p) for p in pairs])
        try:
            headline = injection_study(lm, pairs, run, settings=settings, log=typer.echo)
        except ValueError as err:
            fail(str(err))
    for k, v in headline.items():
        typer.echo(f"{k:>42}: {v:.4g}" if isinstance(v, float) else f"{k:>42}: {v}")
    typer.echo(f"\nwrote {run.report_path}")


lens_app = typer.Typer(help="Attention lenses: one trainable lens per head (Sakarvadia et al. 2023). "
                       "(`hopscope lens` is the logit lens.)", no_args_is_help=True)


@lens_app.command("train")
def lens_train(
    layer: List[int] = typer.Option(..., "--layer", "-l", help="Layer(s) to train a lens for (repeatable)."),
    rank: int = typer.Option(8, "--rank", help="Low-rank update rank (0: full-rank lens, the seed's design)."),
    steps: int = typer.Option(200, "--steps"),
    batch_size: int = typer.Option(128, "--batch-size"),
    lr: float = typer.Option(3e-3, "--lr"),
    corpus: str = typer.Option("boolq", "--corpus", help="boolq, world-facts or a text file path."),
    train_texts: int = typer.Option(200, "--train-texts"),
    held_texts: int = typer.Option(50, "--held-texts"),
    max_tokens: int = typer.Option(48, "--max-tokens", help="Tokens kept per text."),
    threads: int = ThreadsOpt,
    model: Optional[str] = ModelOpt,
    device: str = DeviceOpt,
    dtype: str = DtypeOpt,
    out: Optional[str] = OutOpt,
    seed: int = SeedOpt,
) -> None:
    """Train attention lenses (the heads of each layer jointly) and save them with their config."""
    from hopscope.report import RunFolder, line_curves
    from hopscope.train.lens import train_from_corpus

    _threads(threads)
    lm = load(model, device, dtype)
    run = RunFolder.create("attn-lens", dict(layer=layer, rank=rank, steps=steps, corpus=corpus,
                                             train_texts=train_texts, held_texts=held_texts), out=out, seed=seed)
    with run:
        run.set_model(lm)
        try:
            res = train_from_corpus(lm, layer, corpus, n_train=train_texts, n_held=held_texts, max_tokens=max_tokens,
                                    rank=rank or None, steps=steps, batch_size=batch_size, lr=lr, seed=seed,
                                    progress=_every(max(1, steps // 10)))
        except (FileNotFoundError, ValueError) as err:
            fail(str(err))
        table = res.table()
        for l, lens_ in res.lenses.items():
            typer.echo(f"saved {lens_.save(run.path / f'lens_l{l}')}")
        run.write_table("lens_kl", table)
        run.write_table("lens_history", res.history)
        curves = {f"layer {l}": res.history[f"kl_l{l}"].to_numpy() for l in res.lenses}
        fig = line_curves(curves, x=res.history.step.tolist(), title="attention lens training", xlabel="step",
                          ylabel="KL(model || lens)", markers=False)
        run.add_section("Attention lens training", text=f"Corpus {corpus}; rank {rank or 'full'}.",
                        figures=[run.save_figure("lens-training", fig).stem], tables={"held-out KL": table},
                        headline={f"layer {r.layer}: KL before -> after": f"{r.kl_before:.3f} -> {r.kl_after:.3f}"
                                  for r in table.itertuples()})
    typer.echo(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    typer.echo(f"\nwrote {run.report_path}")


def _every(n: int):
    def show(rec: dict) -> None:
        if rec["step"] % n == 0:
            kls = " ".join(f"{k}={v:.4f}" for k, v in rec.items() if k.startswith("kl_"))
            typer.echo(f"step {rec['step']:>5}  {kls}  ({rec['seconds']:.0f}s)")
    return show


@lens_app.command("show")
def lens_show(
    prompt: str = typer.Argument(..., help="Prompt whose last position is read."),
    layer: Optional[int] = typer.Option(None, "--layer", "-l", help="Layer (untrained lens, i.e. the plain "
                                        "projection, unless --lens is given)."),
    lens_dir: Optional[Path] = typer.Option(None, "--lens", help="Folder of a saved lens (lens_config.json)."),
    k: int = typer.Option(5, "--k", help="Top-k tokens per head."),
    model: Optional[str] = ModelOpt,
    device: str = DeviceOpt,
    dtype: str = DtypeOpt,
) -> None:
    """Each head's top-k tokens through its lens, next to the plain projection of the head's output."""
    from hopscope.lenses.attention_lens import AttentionLens, show_lens

    if layer is None and lens_dir is None:
        fail("give --layer or --lens")
    lm = load(model, device, dtype)
    try:
        lens_ = AttentionLens.load(lens_dir, lm) if lens_dir else AttentionLens(lm, layer)
    except (FileNotFoundError, ValueError) as err:
        fail(str(err))
    if layer is not None and layer != lens_.config.layer:
        fail(f"the lens in {lens_dir} is for layer {lens_.config.layer}, not {layer}")
    df = show_lens(lm, lens_, prompt, k)
    kind = f"trained lens ({lens_dir})" if lens_dir else "untrained lens = plain projection"
    typer.echo(f"layer {lens_.config.layer}, {kind}")
    width = max(len(" | ".join(map(repr, t))) for t in df.lens_top)
    typer.echo(f"{'head':>4}  {'lens top-' + str(k):<{width}}  projection top-{k}")
    for r in df.itertuples():
        lens_top, plain_top = " | ".join(map(repr, r.lens_top)), " | ".join(map(repr, r.projection_top))
        typer.echo(f"{r.head:>4}  {lens_top:<{width}}  {plain_top}")


def register(app: typer.Typer) -> None:
    app.command("inject")(inject)
    app.add_typer(lens_app, name="attn-lens")
