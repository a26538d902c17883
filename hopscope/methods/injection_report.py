"""The stages of :func:`hopscope.methods.injection_study.injection_study`, each writing tables, figures and a
report section into the run folder."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import pandas as pd

from hopscope.methods import injection as inj
from hopscope.methods.injection_controls import pos_word_lists, sample_words

if TYPE_CHECKING:
    from hopscope.methods.injection_study import InjectionSettings, StudyState
    from hopscope.models.loaded import LoadedModel
    from hopscope.report import RunFolder

Say = Callable[[str], None]
PCT_NOTE = ("Percent change 100 (p1 - p0) / p0 is dominated by prompts whose baseline p0 is tiny, so its mean "
            "is volatile; read it with the median, the share of prompts improved and the mean change in "
            "log-probability, and always next to the random-word control at the same cell.")


def _fig(run: "RunFolder", name: str, fig: Any) -> str:
    """Save a figure and return the name a section refers to it by."""
    return run.save_figure(name, fig).stem


def _pairs_frame(state: "StudyState") -> pd.DataFrame:
    held = {p.qid for p in state.held}
    return pd.DataFrame({"qid": [p.qid for p in state.pairs],
                         "split": ["held-out" if p.qid in held else "search" for p in state.pairs]})


def baseline_stage(lm: "LoadedModel", run: "RunFolder", state: "StudyState", s: "InjectionSettings", say: Say) -> None:
    """p(answer) on the obscure and the explicit prompt of every pair, before any injection."""
    pairs = state.pairs
    answers = [p.answer for p in pairs]
    ob = inj.baseline(lm, [p.obscure for p in pairs], answers)
    ex = inj.baseline(lm, [p.explicit for p in pairs], answers)
    df = _pairs_frame(state).assign(
        answer=answers, bridge=[p.bridge for p in pairs], obscure=[p.obscure for p in pairs],
        explicit=[p.explicit for p in pairs], p_obscure=ob.p0, logp_obscure=ob.logp0, rank_obscure=ob.rank0,
        p_explicit=ex.p0, logp_explicit=ex.logp0, rank_explicit=ex.rank0)
    state.baseline = df.set_index("qid")
    run.write_table("baseline", df, key=["qid"])
    head = {"mean p(answer | obscure)": float(df.p_obscure.mean()),
            "mean p(answer | explicit)": float(df.p_explicit.mean()),
            "top-1 share obscure": float((df.rank_obscure == 0).mean()),
            "top-1 share explicit": float((df.rank_explicit == 0).mean()),
            "share explicit > obscure": float((df.p_explicit > df.p_obscure).mean())}
    state.headline.update(head)
    run.add_section("Baseline: explicit vs obscure prompts", text=(
        f"Probability of the answer's first token at the last position, {len(df)} pairs. For reference, the "
        f"seed's GPT-2 small results on the handwritten set: mean p(answer | obscure) {0.0871}, "
        f"p(answer | explicit) {0.1579}."), tables={"pairs": "baseline"}, headline=head)
    say(f"baseline: p(answer|obscure) {head['mean p(answer | obscure)']:.4f}, "
        f"p(answer|explicit) {head['mean p(answer | explicit)']:.4f}")


def projection_stage(lm: "LoadedModel", run: "RunFolder", state: "StudyState", s: "InjectionSettings",
                     say: Say) -> None:
    """Per-layer attention output and per-head output through the unembedding, explicit vs obscure."""
    from hopscope.methods.layer_projection import head_matrix, layer_projection, layer_summary
    from hopscope.report import heatmap, line_curves

    layers_df, heads_df = layer_projection(lm, state.pairs[: s.projection_pairs])
    run.write_table("projection_layers", layers_df, key=["qid", "prompt_kind", "layer"])
    run.write_table("projection_heads", heads_df, key=["qid", "prompt_kind", "layer", "head"])
    summ = layer_summary(layers_df)
    run.write_table("projection_layer_summary", summ)
    series = {}
    for target in ("answer", "bridge"):
        for kind in ("explicit", "obscure"):
            series[f"{target} | {kind}"] = summ[summ.prompt_kind == kind][f"{target}_prob"].to_numpy()
    figs = [_fig(run, "projection-layers", line_curves(
        series, x=list(range(lm.n_layers)), title="attn_out through the unembedding (last position)",
        ylabel="mean probability", logy=True))]
    for value, kind, title in (("answer_prob", "obscure", "answer, obscure prompts"),
                               ("answer_prob", "explicit", "answer, explicit prompts"),
                               ("bridge_prob", "obscure", "bridge entity, obscure prompts")):
        m = np.log10(head_matrix(heads_df, value, kind).clip(lower=1e-12))
        figs.append(_fig(run, f"heads-{value.split('_')[0]}-{kind}", heatmap(
            m, title=f"head output projection: {title}", colorbar_label="log10 mean probability",
            xlabel="head", ylabel="layer", annotate=False)))
    js = head_matrix(heads_df, "js", "obscure")
    figs.append(_fig(run, "heads-divergence", heatmap(
        js, title="explicit vs obscure head outputs: Jensen-Shannon divergence", colorbar_label="mean JS (nats)",
        xlabel="head", ylabel="layer", annotate=False)))
    ob = heads_df[heads_df.prompt_kind == "obscure"]
    top_js = js.stack().idxmax()
    top_bridge = ob.groupby(["layer", "head"]).bridge_prob.mean().idxmax()
    top_answer = ob.groupby(["layer", "head"]).answer_prob.mean().idxmax()
    head = {"most divergent head (layer, head)": f"{top_js[0]}.{top_js[1]}",
            "head surfacing the bridge most (obscure)": f"{top_bridge[0]}.{top_bridge[1]}",
            "head surfacing the answer most (obscure)": f"{top_answer[0]}.{top_answer[1]}"}
    state.headline.update(head)
    top_heads = (ob.groupby(["layer", "head"])
                 .agg(answer_prob=("answer_prob", "mean"), bridge_prob=("bridge_prob", "mean"), js=("js", "mean"))
                 .sort_values("bridge_prob", ascending=False).head(15).reset_index())
    run.add_section("Per-layer and per-head projections", text=(
        f"{layers_df.qid.nunique()} pairs. At the last prompt position every layer's attention output and every "
        "head's output (residual space) go through the final norm and the unembedding. Lines: mean "
        "probability of the answer's and the bridge entity's first token. Heatmaps: per (layer, head) means "
        "over pairs; the divergence compares a pair's explicit and obscure prompts head by head."),
        figures=figs, tables={"per layer": summ, "heads that surface the bridge (obscure prompts)": top_heads},
        headline=head)
    say(f"projections: most divergent head {head['most divergent head (layer, head)']}")


def _ref_norms(state: "StudyState", lm: "LoadedModel", s: "InjectionSettings") -> np.ndarray:
    """Median gold-memory norm (per layer for the ``attn`` source) over the search prompts."""
    bridges = [p.bridge for p in state.search]
    if s.source != "attn":
        return np.full(lm.n_layers, float(state.bank.vectors(bridges).norm(dim=-1).median()))
    return np.array([float(state.bank.vectors(bridges, l).norm(dim=-1).median()) for l in range(lm.n_layers)])


def _memories(lm, state: "StudyState", pair, n_random: int) -> list[inj.Memory]:
    n_tok = len(inj.memory_token_ids(lm, pair.bridge))
    return [("gold", 0, pair.bridge)] + [("random", j, state.randoms.draw(n_tok, pair.qid, j)) for j in range(n_random)]


def grid_stage(lm: "LoadedModel", run: "RunFolder", state: "StudyState", s: "InjectionSettings", say: Say) -> None:
    """Every (layer, tau) cell on the search prompts, gold and random memories; pick the best cell."""
    state.norms = inj.residual_norms(lm, [p.obscure for p in state.search])
    state.ref = _ref_norms(state, lm, s)
    layers = list(range(0, lm.n_layers, s.layer_stride))
    cells = inj.make_cells(layers, s.taus, s.rel, state.norms, state.ref)
    run.write_table("grid_cells", pd.DataFrame([{**c.__dict__, "resid_norm": state.norms[c.layer],
                                                  "gold_norm": state.ref[c.layer]} for c in cells]))
    say(f"grid: {len(cells)} cells x {1 + s.grid_random} memories x {len(state.search)} prompts")
    with run.table("grid", key=["qid"]) as tab:
        for pair in tab.pending(state.search, key=lambda p: p.qid, desc="injection grid"):
            b = state.baseline.loc[pair.qid]
            df = inj.injection_rows(lm, pair.obscure, pair.answer, cells, _memories(lm, state, pair, s.grid_random),
                                    state.bank, p0=float(b.p_obscure), logp0=float(b.logp_obscure),
                                    positions=s.positions, method=s.method, batch_size=s.batch_size)
            tab.append(df.assign(qid=pair.qid, prompt_kind="obscure"))
    grid = run.load_table("grid")
    summ = inj.summarize(grid)
    run.write_table("grid_summary", summ)
    state.best = best = inj.best_cell(summ, s.criterion)
    wide = gold_vs_random(summ)
    run.write_table("gold_vs_random", wide)
    figs = grid_figures(run, summ, wide)
    at = wide[(wide.layer == best.layer) & (wide.grid == best.grid) & (wide.step == best.step)].iloc[0]
    head = {"best layer": int(best.layer), "best grid": str(best.grid), "best step": float(best.step),
            "best tau": float(best.tau),
            "search: gold mean % change": float(at.gold_mean_pct),
            "search: gold median % change": float(at.gold_median_pct),
            "search: gold share improved": float(at.gold_share_improved),
            "search: random mean % change": float(at.random_mean_pct),
            "search: random share improved": float(at.random_share_improved),
            "grid max gold mean % change": float(wide.gold_mean_pct.max()),
            "grid max random mean % change": float(wide.random_mean_pct.max())}
    state.headline.update(head)
    cols = ["grid", "layer", "step", "tau", "gold_mean_dlogp", "random_mean_dlogp", "gold_mean_pct", "random_mean_pct",
            "gold_median_pct", "random_median_pct", "gold_share_improved", "random_share_improved"]
    run.add_section("Memory injection grid", text=(
        f"tau x memory added to the attention output of each layer at {s.positions} prompt positions; memory "
        f"vectors: sum of the {s.source} vectors of the memory's distinct tokens. Grids: the seed's tau and a "
        f"grid scaled to the residual norm (tau = step x median |resid_pre| / median |gold memory|). Search "
        f"prompts: {len(state.search)}; random memories have as many tokens as the gold one. Best cell by "
        f"{s.criterion} of the gold memory: layer {int(best.layer)}, {best.grid} step {best.step:g} "
        f"(tau {best.tau:.3g}).\n\n{PCT_NOTE}"),
        figures=figs, tables={"top cells, gold vs random (search prompts)":
                              wide.sort_values(f"gold_{s.criterion}", ascending=False)[cols].head(15),
                              "cells": "grid_cells"}, headline=head)
    say(f"grid: best layer {int(best.layer)} {best.grid} {best.step:g} (tau {best.tau:.3g}), gold mean dlogp "
        f"{best.mean_dlogp:.3f}")


def _grid_matrix(df: pd.DataFrame, value: str, grid: str, lim: float) -> pd.DataFrame:
    m = df.pivot(index="layer", columns="step", values=value).clip(-lim, lim)
    m.columns = [f"{c:g}" for c in m.columns]
    m.columns.name = "tau" if grid == "tau" else "injection / residual norm"
    return m


def grid_figures(run: "RunFolder", summ: pd.DataFrame, wide: pd.DataFrame) -> list[str]:
    """Per grid: mean Δ log p of the gold and the random memory, and gold minus random, per (layer, step)."""
    from hopscope.report import heatmap

    figs = []
    for g in [g for g in ("tau", "rel") if (summ.grid == g).any()]:
        name = "seed tau grid" if g == "tau" else "norm-scaled grid"
        sub = summ[(summ.grid == g) & (summ.prompt_kind == "obscure")]
        lim = float(np.nanquantile(np.abs(sub.mean_dlogp), 0.9)) or 1.0  # a few cells saturate
        for kind in ("gold", "random"):
            figs.append(_fig(run, f"grid-{g}-{kind}", heatmap(
                _grid_matrix(sub[sub.memory_kind == kind], "mean_dlogp", g, lim),
                title=f"{kind} memory: mean change in log p(answer) ({name})",
                colorbar_label=f"mean Δ log p (clipped at ±{lim:.2g})", center=0.0, vmin=-lim, vmax=lim,
                ylabel="layer", annotate=False)))
        diff = wide[wide.grid == g].assign(diff=lambda d: d.gold_mean_dlogp - d.random_mean_dlogp)
        dlim = float(np.nanquantile(np.abs(diff["diff"]), 0.9)) or 1.0
        figs.append(_fig(run, f"grid-{g}-gold-minus-random", heatmap(
            _grid_matrix(diff, "diff", g, dlim), title=f"gold minus random memory: mean Δ log p(answer) ({name})",
            colorbar_label=f"difference (clipped at ±{dlim:.2g})", center=0.0, vmin=-dlim, vmax=dlim,
            ylabel="layer", annotate=False)))
    return figs


def gold_vs_random(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per cell: gold and random statistics side by side."""
    keys = ["grid", "layer", "step", "tau"]
    stats = ["n", "mean_pct", "median_pct", "share_improved", "mean_dlogp", "median_dlogp"]
    sub = summary[summary.prompt_kind == "obscure"]
    parts = [sub[sub.memory_kind == k].set_index(keys)[stats].add_prefix(f"{k}_") for k in ("gold", "random")]
    return parts[0].join(parts[1], how="outer").reset_index()


def _controls(lm, state, s, pools, pair) -> list[inj.Memory]:
    mems = _memories(lm, state, pair, s.best_random)
    for name, pool in pools.items():
        k = len(pool) if not s.pos_per_prompt else min(s.pos_per_prompt, len(pool))
        words = random.Random(f"{s.seed}:{pair.qid}:{name}").sample(pool, k)
        mems += [(name, j, w) for j, w in enumerate(words)]
    return mems


def controls_stage(lm: "LoadedModel", run: "RunFolder", state: "StudyState", s: "InjectionSettings", say: Say) -> None:
    """At the best cell, on every pair: gold, random words, part-of-speech words, and gold on the explicit prompt."""
    from hopscope.report import bar_chart, box_by_group

    best = state.best
    cell = inj.Cell(int(best.layer), str(best.grid), float(best.step), float(best.tau))
    pools = {}
    try:
        word_lists = pos_word_lists()
    except FileNotFoundError as err:  # the seed's lists live in ../shared/data; random-word controls remain
        say(f"part-of-speech controls skipped: {err}")
        word_lists = {}
    for name, words in word_lists.items():
        ok = [w for w in words if _tokenizes(lm, w)]
        pools[f"pos:{name}"] = sample_words(ok, s.pos_words, s.seed)
    run.write_table("pos_words", pd.DataFrame([{"list": k, "word": w} for k, ws in pools.items() for w in ws]))
    split = _pairs_frame(state).set_index("qid").split
    kw = dict(positions=s.positions, method=s.method, batch_size=s.batch_size)
    with run.table("best_cell", key=["qid"]) as tab:
        for pair in tab.pending(state.pairs, key=lambda p: p.qid, desc="controls at the best cell"):
            b = state.baseline.loc[pair.qid]
            ob = inj.injection_rows(lm, pair.obscure, pair.answer, [cell], _controls(lm, state, s, pools, pair),
                                    state.bank, p0=float(b.p_obscure), logp0=float(b.logp_obscure), **kw)
            ex = inj.injection_rows(lm, pair.explicit, pair.answer, [cell], [("gold", 0, pair.bridge)], state.bank,
                                    p0=float(b.p_explicit), logp0=float(b.logp_explicit), **kw)
            df = pd.concat([ob.assign(prompt_kind="obscure"), ex.assign(prompt_kind="explicit")])
            tab.append(df.assign(qid=pair.qid, split=split[pair.qid]))
    rows = run.load_table("best_cell")
    rows["control"] = np.where(rows.prompt_kind == "explicit", "gold@explicit", rows.memory_kind)
    summ = pd.concat([inj.summarize(rows, ["split", "control"]),
                      inj.summarize(rows.assign(split="all"), ["split", "control"])], ignore_index=True)
    run.write_table("best_cell_summary", summ)
    focus = "held-out" if state.held else "all"
    fs = summ[summ.split == focus].set_index("control")
    order = ["gold", "random"] + sorted(c for c in fs.index if c.startswith("pos:")) + ["gold@explicit"]
    order = [c for c in order if c in fs.index]
    figs = [_fig(run, "controls-share", bar_chart(
                fs.loc[order, "share_improved"], title=f"share of prompts improved at the best cell ({focus})",
                ylabel="share p1 > p0")),
            _fig(run, "controls-dlogp", box_by_group(
                rows[rows.split == focus] if focus != "all" else rows, value="dlogp", by="control", order=order,
                title=f"change in log p(answer) at the best cell ({focus})", ylabel="Δ log p", show_points=False))]
    g, r = fs.loc["gold"], fs.loc["random"]
    head = {f"{focus}: n": int(g.n_prompts), f"{focus}: p0 mean": float(g.p0),
            f"{focus}: gold mean % change": float(g.mean_pct), f"{focus}: gold median % change": float(g.median_pct),
            f"{focus}: gold share improved": float(g.share_improved), f"{focus}: gold mean Δlogp": float(g.mean_dlogp),
            f"{focus}: random mean % change": float(r.mean_pct),
            f"{focus}: random median % change": float(r.median_pct),
            f"{focus}: random share improved": float(r.share_improved),
            f"{focus}: random mean Δlogp": float(r.mean_dlogp)}
    if "gold@explicit" in fs.index:
        head[f"{focus}: gold on explicit, mean Δlogp"] = float(fs.loc["gold@explicit"].mean_dlogp)
    state.headline.update(head)
    show = summ[summ.split == focus][["control", "n", "n_prompts", "p0", "p1", "mean_pct", "median_pct",
                                      "share_improved", "mean_dlogp", "median_dlogp"]]
    run.add_section("Controls at the best cell", text=(
        f"Layer {cell.layer}, {cell.grid} step {cell.step:g} (tau {cell.tau:.3g}), chosen on the search prompts; "
        f"numbers on the {focus} prompts. Controls: {s.best_random} random-word memories per prompt (as many "
        f"tokens as the gold memory), {s.pos_words} words from each part-of-speech list of the seed "
        f"({s.pos_per_prompt or 'all'} per prompt), and the gold memory injected into the explicit prompt "
        f"(which already names the bridge).\n\n{PCT_NOTE}"),
        figures=figs, tables={f"controls ({focus})": show, "all splits": "best_cell_summary"}, headline=head)
    say(f"controls ({focus}): gold mean% {g.mean_pct:.1f} median% {g.median_pct:.1f} share {g.share_improved:.2f} | "
        f"random mean% {r.mean_pct:.1f} median% {r.median_pct:.1f} share {r.share_improved:.2f}")


def _tokenizes(lm, word: str) -> bool:
    try:
        inj.memory_token_ids(lm, word)
        return True
    except ValueError:
        return False


def lens_stage(lm: "LoadedModel", run: "RunFolder", state: "StudyState", s: "InjectionSettings", say: Say) -> None:
    """Train a lens for one layer (default: the best injection layer); held-out KL before and after."""
    from hopscope.report import line_curves
    from hopscope.train.lens import train_from_corpus

    layer = int(state.best.layer) if s.lens_layer is None else s.lens_layer
    say(f"lens: training layer {layer} (rank {s.lens_rank or 'full'}, {s.lens_steps} steps, corpus {s.lens_corpus})")
    res = train_from_corpus(lm, [layer], s.lens_corpus, n_train=s.lens_train_texts, n_held=s.lens_held_texts,
                            rank=s.lens_rank, steps=s.lens_steps, batch_size=s.lens_batch,
                            max_tokens=s.lens_max_tokens, seed=s.seed)
    state.lens = lens = res.lenses[layer]
    folder = lens.save(run.path / f"lens_l{layer}")
    table = res.table()
    run.write_table("lens_kl", table)
    run.write_table("lens_history", res.history)
    fig = line_curves({"train KL (batch)": res.history[f"kl_l{layer}"].to_numpy()}, x=res.history.step.tolist(),
                      title=f"attention lens, layer {layer}: training", xlabel="step", ylabel="KL(model || lens)",
                      hline=res.kl_after[layer], markers=False)
    head = {"lens layer": layer, "lens held-out KL before": res.kl_before[layer],
            "lens held-out KL after": res.kl_after[layer], "constant-guess held-out KL": res.info["kl_constant"]}
    state.headline.update(head)
    run.add_section("Attention lens", text=(
        f"One lens per head of layer {layer}, initialised to the model's logit lens (final norm + unembedding), "
        f"rank {s.lens_rank or 'full'}; the heads' lens logits are summed and trained with KL(model's next-token "
        f"distribution || lens) on {res.info['n_train_positions']} positions of {res.info['n_train_texts']} "
        f"{s.lens_corpus} texts; held-out KL on {res.info['n_held_positions']} positions of other texts (dashed "
        f"line: after training). Reference: a constant guess (the training positions' mean distribution) has "
        f"held-out KL {res.info['kl_constant']:.3f}. Saved in {folder.name}/ (load with AttentionLens.load)."),
        figures=[_fig(run, "lens-training", fig)], tables={"held-out KL": table}, headline=head)
    say(f"lens: held-out KL {res.kl_before[layer]:.3f} -> {res.kl_after[layer]:.3f}")


def heads_stage(lm: "LoadedModel", run: "RunFolder", state: "StudyState", s: "InjectionSettings", say: Say) -> None:
    """Rank the lens layer's heads by lens output, then inject into and ablate each head alone."""
    from hopscope.lenses.attention_lens import rank_heads
    from hopscope.methods.injection_heads import head_ablation, head_injection, head_summary
    from hopscope.report import bar_chart

    lens = state.lens
    layer = lens.config.layer
    pairs = (state.held or state.pairs)[: s.head_pairs]
    best = state.best
    tau = float(best.tau) if best.grid == "tau" else float(best.step * state.norms[layer] / state.ref[layer])
    ranked = rank_heads(lm, lens, [p.obscure for p in pairs], [p.answer for p in pairs], [p.bridge for p in pairs])
    ranked["lens_rank"] = range(len(ranked))
    heads = list(range(lm.n_heads))
    injected = head_summary(head_injection(lm, pairs, layer, heads, state.bank, tau, mode="project",
                                           positions=s.positions))
    ablated = head_summary(head_ablation(lm, pairs, layer, heads))
    table = ranked.set_index("head")
    table["inject_mean_dlogp"] = injected.set_index("head").mean_dlogp
    table["inject_share_improved"] = injected.set_index("head").share_improved
    for kind in ("obscure", "explicit"):
        table[f"ablate_{kind}_mean_dlogp"] = ablated[ablated.prompt_kind == kind].set_index("head").mean_dlogp
    table = table.reset_index()
    run.write_table("heads", table)
    labels = [f"h{h}" for h in table["head"]]
    figs = [_fig(run, "heads-inject", bar_chart(
                dict(zip(labels, table.inject_mean_dlogp)), title=f"layer {layer}: gold memory into one head "
                f"(projected on its output space, tau {tau:.3g}); heads in lens order",
                ylabel="mean Δ log p(answer)")),
            _fig(run, "heads-ablate", bar_chart(
                dict(zip(labels, table.ablate_obscure_mean_dlogp)), title=f"layer {layer}: zero-ablating one head "
                "(obscure prompts); heads in lens order", ylabel="mean Δ log p(answer)"))]
    corr = float(pd.Series(table.score).corr(pd.Series(-table.ablate_obscure_mean_dlogp), method="spearman"))
    head = {"top lens head": f"{layer}.{int(table['head'].iloc[0])}",
            "head whose ablation hurts most":
                f"{layer}.{int(table.loc[table.ablate_obscure_mean_dlogp.idxmin(), 'head'])}",
            "head whose injection helps most": f"{layer}.{int(table.loc[table.inject_mean_dlogp.idxmax(), 'head'])}",
            "Spearman(lens score, ablation harm)": corr}
    state.headline.update(head)
    run.add_section("Heads of the lens layer", text=(
        f"Heads of layer {layer} ranked by how much their lens output promotes the answer or the bridge (mean "
        f"log-prob under the head's lens, obscure prompts), next to injecting the gold memory into that head "
        f"alone (projected on the head's output space; adding a full vector to one head equals adding it to "
        f"the attention output) and zero-ablating it; {len(pairs)} pairs."),
        figures=figs, tables={"heads": table}, headline=head)
    say(f"heads: top lens head {head['top lens head']}, ablation hurts most {head['head whose ablation hurts most']}")
