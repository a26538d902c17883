"""``hopscope info`` and ``hopscope lens``: a model's summary and a per-layer logit-lens table."""

from __future__ import annotations

import re
from typing import List, Optional

import typer

from hopscope.cli.common import DeviceOpt, DtypeOpt, ModelOpt, OutOpt, fail, load


def describe(lm) -> dict[str, object]:
    """``lm.summary()`` plus the sites it has, the ones it lacks and why, and the attention that runs."""
    from hopscope.engine.attention import implementation
    from hopscope.engine.sites import COMPONENTS

    cfg = lm.config
    d_mlp = _d_mlp(lm)
    detail = {
        "head_out": f"{lm.n_heads} heads in residual space",
        "attn_pattern": f"{lm.n_heads} query / {lm.n_kv_heads} key-value heads",
        "mlp_hidden": f"d_mlp {d_mlp}: input of {_module_name(lm.model, lm.adapter.mlp_down[0])}" if d_mlp else None,
        "final_norm": "last layer only", "embed": "layer 0 only",
    }
    absent = {}
    if lm.adapter.parallel_residual:
        absent["resid_mid"] = "parallel residual: attention and MLP read the same input"
    sites = [c + (f" ({detail[c]})" if detail.get(c) else "") for c in COMPONENTS if c not in absent]
    out = dict(lm.summary())
    out["sites"] = ", ".join(sites)
    out["absent"] = "; ".join(f"{c} ({why})" for c, why in absent.items()) or "none"
    out["attention"] = implementation(lm.model)
    extras = []
    types = getattr(cfg, "layer_types", None)
    window = getattr(cfg, "sliding_window", None)
    if window and (types is None or "sliding_attention" in types):
        n = types.count("sliding_attention") if types else lm.n_layers
        extras.append(f"sliding window {window} on {n} of {lm.n_layers} layers")
    for key in ("attn_logit_softcapping", "final_logit_softcapping", "query_pre_attn_scalar"):
        if getattr(cfg, key, None) is not None:
            extras.append(f"{key} {getattr(cfg, key)}")
    out["attn detail"] = ", ".join(extras) or "none"
    return out


def _d_mlp(lm) -> int | None:
    down = lm.adapter.mlp_down[0]
    w = getattr(down, "weight", None)
    if w is None:
        return None
    return int(w.shape[0] if type(down).__name__ == "Conv1D" else w.shape[1])


def _module_name(model, module) -> str:
    """``model.layers.{l}.mlp.down_proj``: the dotted name of layer 0's ``module`` with the layer index generic."""
    name = next((name for name, m in model.named_modules() if m is module), "?")
    return re.sub(r"\.0\.", ".{l}.", name, count=1)


def info(model: Optional[str] = ModelOpt, device: str = DeviceOpt, dtype: str = DtypeOpt) -> None:
    """Print a model's summary: family, shapes, source, the sites it has and the attention that runs.

    Example: hopscope info --model smollm2-135m
    """
    lm = load(model, device, dtype)
    for key, value in describe(lm).items():
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
    """Logit lens at every layer: the target's rank and probability and the top-k tokens.

    Example: hopscope lens "The capital of France is" -t " Paris" -c resid_post -c mlp_out
    """
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
