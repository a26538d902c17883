"""``hopscope info`` and ``hopscope lens``: a model's summary and a per-layer logit-lens table."""

from __future__ import annotations

from typing import List, Optional

import typer

from hopscope.cli.common import DeviceOpt, DtypeOpt, ModelOpt, OutOpt, fail, load


def info(model: Optional[str] = ModelOpt, device: str = DeviceOpt, dtype: str = DtypeOpt) -> None:
    """Print a model's summary: family, layers, heads, d_model, where it was loaded from."""
    lm = load(model, device, dtype)
    for key, value in lm.summary().items():
        typer.echo(f"{key:>12}: {value}")


def lens(
    prompt: str = typer.Argument(..., help="Prompt whose last position is read."),
    target: List[str] = typer.Option([], "--target", "-t", help="Target answer(s), e.g. ' Paris'."),
    k: int = typer.Option(5, "--k", help="Top-k tokens per layer."),
    component: List[str] = typer.Option(["resid_post"], "--component", "-c",
                                        help="resid_post, attn_out and/or mlp_out."),
    model: Optional[str] = ModelOpt,
    device: str = DeviceOpt,
    dtype: str = DtypeOpt,
    out: Optional[str] = OutOpt,
) -> None:
    """Logit lens at every layer: the target's rank and probability and the top-k tokens."""
    from hopscope.lenses import logit_lens
    from hopscope.report import RunFolder, line_curves

    lm = load(model, device, dtype)
    try:
        df = logit_lens(lm, prompt, target, k=k, components=component)
    except ValueError as err:
        fail(str(err))
    run = RunFolder.create("lens", dict(prompt=prompt, target=target, k=k, component=component), out=out)
    run.set_model(lm.name, lm.source)
    table = df.copy()
    table["top_tokens"] = table["top_tokens"].map(lambda toks: " | ".join(repr(t) for t in toks))
    run.write_table("logit_lens", table)
    show_cols = ["component", "layer"] + [c for t in target for c in (f"rank[{t}]", f"prob[{t}]")] + ["top_tokens"]
    typer.echo(table[show_cols].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    figures = []
    for t in target:
        series = {c: (table[table.component == c][f"rank[{t}]"] + 1).tolist() for c in component}
        fig = line_curves(series, x=list(range(lm.n_layers)), title=f"rank of {t!r} by layer", xlabel="layer",
                          ylabel="rank + 1 (1 = top-1)", logy=True)
        figures.append(run.save_figure(f"rank-{len(figures)}", fig).stem)
    headline = {f"first top-1 layer of {t!r}": _first_top1(table, t) for t in target}
    run.add_section("Logit lens", text=f"Prompt: {prompt!r} on {lm.name}.", figures=figures,
                    tables={"per layer": "logit_lens"}, headline=headline)
    path = run.finish()
    typer.echo(f"\nwrote {path}")


def _first_top1(table, target: str):
    hits = table[(table.component == "resid_post") & (table[f"rank[{target}]"] == 0)]
    return int(hits.layer.min()) if len(hits) else "never"


def register(app: typer.Typer) -> None:
    app.command()(info)
    app.command()(lens)
