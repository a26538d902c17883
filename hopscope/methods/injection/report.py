"""The injection report: the only place with prose and figures. :func:`build_report` fills a Result's
``figures``, ``headline`` and ``sections`` from its tables and claims."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from hopscope.methods.injection.projections import head_matrix, layer_summary
from hopscope.methods.injection.tables import POOLED, claim_split, gold_vs_controls
from hopscope.report.figures import bar_chart, heatmap, interval_plot, line_curves, points_plot
from hopscope.results import Headline, Section
from hopscope.stats import VERDICT_RULE, bootstrap_ci

if TYPE_CHECKING:
    from hopscope.methods.injection.settings import Settings
    from hopscope.results import Result

SEED_P_OBSCURE, SEED_P_EXPLICIT = 0.0871, 0.1579  # GPT-2 small on the 106 handwritten pairs (the seed's results)
PCT_NOTE = ("The % change 100 (p1 - p0) / p0 is dominated by prompts whose p0 is tiny; read it with its median, "
            "the seed's trimmed mean (values below the 99th percentile), the share of prompts improved and the "
            "change in log p, and always beside the controls at the same cell.")


def _claim(result: "Result", cid: str) -> pd.Series | None:
    rows = result.claims[result.claims["id"] == cid] if len(result.claims) else result.claims
    return rows.iloc[0] if len(rows) else None


def _claim_line(result: "Result", cid: str) -> str:
    c = _claim(result, cid)
    if c is None:
        return ""
    return (f"Claim {cid}: {c['statement']}. Measure: {c['measure']} = {c['value']:.3g} [{c['low']:.3g}, "
            f"{c['high']:.3g}], n = {c['n']}; control: {c['control']}; {c['test']} p = {c['p_value']:.2g}; "
            f"verdict: {c['verdict']}. {c['note']}")


def _h(label: str, value: Any, n: int | None = None, unit: str = "") -> Headline:
    return Headline(label, float(value), n, unit=unit)


def _ci(label: str, values: np.ndarray, seed: int) -> dict[str, Any]:
    values = np.asarray(values, dtype=float)
    low, high = bootstrap_ci(values, np.mean, seed=seed)
    return {"label": label, "value": float(values.mean()), "low": float(low), "high": float(high), "n": len(values)}


def _cell_name(cell: Any) -> str:
    if cell["grid"] == "tau":
        return f"tau {cell['tau']:g}"
    return f"injected / residual norm {cell['step']:g} (tau {cell['tau']:.3g})"


SOURCES = {"unembed_processed": "processed unembedding (final-norm gain folded in, centred over the vocabulary)",
           "unembed": "raw unembedding", "embed": "input embedding",
           "attn": "memory text's own attention output at the injected layer"}


# ---- sections ---------------------------------------------------------------------------------------------
def setup_section(result: "Result", s: "Settings") -> Section:
    pairs = result.tables["pairs"]
    ok = pairs[pairs["usable"]]
    n_search, n_held = int((ok["split"] == "search").sum()), int((ok["split"] == "held-out").sum())
    dropped = pairs[~pairs["usable"]]
    mem = "as written" if not s.memory_space else "with a leading space"
    text = (
        f"{len(ok)} prompt pairs ({n_search} search, {n_held} held-out; seed {s.seed})"
        + (f", {len(dropped)} dropped (answer or memory tokenizes to nothing)" if len(dropped) else "") + ". "
        f"Memories: the sum of the {SOURCES[s.source]} rows of the memory's distinct tokens, tokenized {mem}"
        f"{' after a BOS' if s.memory_bos else ', without a BOS'}; prompts {'get' if s.prompt_bos else 'get no'} "
        f"BOS token first; the answer is scored by its first token with a leading space. Injection: tau x memory "
        f"added to the attention output at {s.positions} prompt positions. The best (layer, tau) cell and the top "
        f"heads are chosen on the search pairs by {s.criterion}; every claim is measured on the held-out pairs.\n\n"
        f"Before any injection: mean p(answer | obscure) {ok['p_obscure'].mean():.4f}, p(answer | explicit) "
        f"{ok['p_explicit'].mean():.4f}. The seed's GPT-2 small on its 106 handwritten pairs: {SEED_P_OBSCURE} and "
        f"{SEED_P_EXPLICIT} (comparable only for that model and data).\n\n{VERDICT_RULE}")
    return Section("Memory injection: set-up and claims", text=text, tables={"pairs": "pairs"},
                   headline=[_h("pairs", len(ok), len(ok)), _h("mean p(answer | obscure)", ok["p_obscure"].mean(), len(ok)),
                             _h("mean p(answer | explicit)", ok["p_explicit"].mean(), len(ok))])


def projection_section(t: dict[str, pd.DataFrame], figs: dict[str, Figure]) -> Section | None:
    if "projection_layers" not in t or not len(t["projection_layers"]):
        return None
    layers, heads = t["projection_layers"], t["projection_heads"]
    summ = layer_summary(layers)
    series = {f"{target} | {kind}": summ[summ["prompt_kind"] == kind][f"{target}_prob"].to_numpy()
              for target in ("answer", "bridge") for kind in ("explicit", "obscure")}
    figs["projection-layers"] = line_curves(
        series, x=sorted(summ["layer"].unique()), title="attn_out through the linear projection (last position)",
        ylabel="mean probability", logy=True)
    figs["projection-heads-bridge"] = heatmap(
        np.log10(head_matrix(heads, "bridge_prob", "obscure").clip(lower=1e-12)),
        title="head outputs, obscure prompts: bridge entity", colorbar_label="log10 mean probability",
        annotate=False)
    figs["projection-heads-js"] = heatmap(
        head_matrix(heads, "js", "obscure"), title="explicit vs obscure head projections: Jensen-Shannon divergence",
        colorbar_label="mean JS (nats)", annotate=False)
    return Section(
        "Per-layer and per-head projections",
        text=(f"{layers['qid'].nunique()} pairs. At the last position every layer's attention output and every head's "
              "raw output (no per-head norm) go through the linear projection: the final norm's centring and gain "
              "folded into the unembedding, centred over the vocabulary (the seed's model.unembed on "
              "TransformerLens's processed weights). Lines: mean probability of the answer's and the bridge's first "
              "token; heatmaps: per (layer, head) means over pairs."),
        figures=["projection-layers", "projection-heads-bridge", "projection-heads-js"],
        tables={"per layer": "projection_layers", "per head": "projection_heads"})


def grid_section(t: dict[str, pd.DataFrame], figs: dict[str, Figure], s: "Settings") -> Section | None:
    if "grid_summary" not in t:
        return None
    summ, best = t["grid_summary"], t["best_cell"].iloc[0]
    names = []
    for g in [g for g in ("tau", "rel") if (summ["grid"] == g).any()]:
        sub = summ[summ["grid"] == g]
        for kind, value, label in (("gold", "trimmed_mean_pct", "trimmed mean % change"),
                                   ("gold", "mean_dlogp", "mean Δ log p")):
            m = sub[sub["memory_kind"] == kind].pivot(index="layer", columns="step", values=value)
            m.columns = [f"{c:g}" for c in m.columns]
            m.columns.name = "tau" if g == "tau" else "injected / residual norm"
            lim = float(np.nanquantile(np.abs(m.to_numpy()), 0.95)) or 1.0
            name = f"grid-{g}-{kind}-{value}"
            figs[name] = heatmap(m.clip(-lim, lim), title=f"{kind} memory, search prompts: {label}",
                                 colorbar_label=f"{label} (clipped at ±{lim:.3g})", center=0.0, annotate=False)
            names.append(name)
    n = int(t["grid"]["qid"].nunique())
    return Section(
        "Memory injection grid",
        text=(f"tau x memory added to the attention output of every {s.layer_stride}-th layer, {n} search prompts, "
              f"the gold memory and {s.grid_random} random-word memories per prompt. Best cell by {s.criterion}: "
              f"layer {int(best['layer'])}, {_cell_name(best)}, value {best['value']:.3g}.\n\n{PCT_NOTE}"),
        figures=names, tables={"cells": "grid_summary", "best cell": "best_cell"},
        headline=[_h("best layer", best["layer"]), _h("best tau", best["tau"])])


def controls_section(result: "Result", figs: dict[str, Figure], s: "Settings") -> Section | None:
    t = result.tables
    if "controls_tests" not in t:
        return None
    split = claim_split(t["pairs"])
    wide = gold_vs_controls(t["controls"], split, "dlogp")
    order = ["gold", "random", "other_bridge", POOLED] + sorted(c for c in wide if c.startswith("pos:"))
    order = [c for c in order if c in wide]
    label = {c: ("pooled" if c == POOLED else c.removeprefix("pos:").replace("_", " ")) for c in order}
    figs["claim-inj-gold-beats-random"] = points_plot(
        {label[c]: wide[c].dropna().to_numpy() for c in order},
        title=f"{split} prompts at the best cell: Δ log p(answer), per prompt (controls: median per kind)",
        ylabel="Δ log p(answer)", reference=0.0, reference_label="no change",
        ids={label[c]: list(wide[c].dropna().index) for c in order})
    summ = t["controls_summary"]
    shares = summ[summ["split"] == split].set_index("control")["share_improved"]
    figs["controls-share"] = bar_chart(shares, title=f"share of {split} prompts improved at the best cell",
                                       ylabel="share p1 > p0")
    tests = t["controls_tests"]
    head = []
    pooled = tests[tests["control"] == POOLED]
    if len(pooled):
        r = pooled.iloc[0]
        head = [_h(f"{split}: gold median % change", r["gold_median_pct"], int(r["n"]), "%"),
                _h(f"{split}: controls median % change", r["control_median_pct"], int(r["n"]), "%")]
    return Section(
        "Controls at the best cell",
        text=(f"At the best cell, on every pair: the gold memory, {s.random_memories} random-word memories (as many "
              f"distinct tokens as the gold one), {s.other_bridges} other pairs' bridges, and the first {s.pos_words} "
              "words of each of the seed's part-of-speech lists; and the gold memory on the explicit prompt (which "
              "names the bridge already). Paired tests per control kind, % change of gold minus the control's "
              f"median per prompt: table 'tests'.\n\n{_claim_line(result, 'inj.gold_beats_random')}\n\n{PCT_NOTE}"),
        figures=["claim-inj-gold-beats-random", "controls-share"],
        tables={"tests": "controls_tests", "summary": "controls_summary"}, headline=head)


def heads_section(result: "Result", figs: dict[str, Figure], s: "Settings") -> Section | None:
    t = result.tables
    if "heads_summary" not in t:
        return None
    hs = t["heads_summary"]
    layer = int(hs["layer"].iloc[0])
    col = "inject_dlogp_search" if "inject_dlogp_search" in hs else "inject_dlogp_held-out"
    figs["heads-inject"] = bar_chart({f"h{int(h)}": v for h, v in zip(hs["head"], hs[col])},
                                     title=f"layer {layer}: the memory projected on one head's output space",
                                     ylabel="mean Δ log p(answer), search prompts")
    names = ["heads-inject"]
    few = t.get("few_heads_summary")
    if few is not None and len(few):
        figs["claim-inj-few-heads"] = points_plot(
            {"all heads": few["dlogp_all"], "top heads": few["dlogp_top"], "random heads": few["dlogp_random"]},
            title="held-out prompts: the memory projected on a set of heads", ylabel="Δ log p(answer)",
            reference=0.0, reference_label="no change",
            ids={k: few["qid"] for k in ("all heads", "top heads", "random heads")})
        names.insert(0, "claim-inj-few-heads")
    lens_text = ""
    if "lens_rank" in hs:
        rho = float(hs["lens_rank"].corr(hs["inject_rank"], method="spearman"))
        lens_text = (f" Ranked by the lens ({s.head_rank_by}: the answer's centred logit through the head's lens, "
                     f"which scales with the head's output, or the KL from the model's distribution to the head's "
                     f"lens distribution), beside the untrained lens (linear projection) and the unigram KL; "
                     f"Spearman correlation of the lens ranking with the injection ranking {rho:.2f}.")
    return Section(
        "Heads of the injection layer",
        text=(f"Layer {layer} at the best tau. A residual vector added to one head equals one added to the "
              "attention output, so the memory is projected on the head's output space (W_O^h pinv(W_O^h) m). "
              f"The top {s.top_heads} heads on the search prompts against {s.random_head_sets} random sets of as many "
              f"heads on the held-out prompts; each head also zero-ablated without a memory.{lens_text}\n\n"
              f"{_claim_line(result, 'inj.few_heads')}"),
        figures=names, tables={"heads": "heads_summary", "per prompt": "few_heads_summary"})


def lens_section(result: "Result", figs: dict[str, Figure], s: "Settings") -> Section | None:
    t = result.tables
    if "lens_texts" not in t:
        return None
    texts, info = t["lens_texts"], t["lens_info"].iloc[0]
    layer = int(info["layer"])
    hist = t["lens_history"]
    figs["lens-training"] = line_curves({"training KL (batch)": hist[f"kl_l{layer}"].to_numpy()},
                                        x=hist["step"].tolist(), title=f"attention lens, layer {layer}: training",
                                        xlabel="step", ylabel="KL(model || lens)", markers=False)
    labels = {"kl_lens": "trained lens", "kl_untrained": "untrained lens (linear projection)",
              "kl_logit_lens": "logit lens of the summed head outputs", "kl_unigram": "unigram guess"}
    figs["claim-lens-beats-baseline"] = interval_plot(
        [_ci(labels[c], texts[c].to_numpy(), s.seed) for c in labels],
        title=f"held-out KL to the model's next-token distribution ({len(texts)} texts)", xlabel="mean KL (nats)")
    c = _claim(result, "lens.beats_baseline")
    verdict = ("" if c is None or c["verdict"] == "supported" else
               " Lens not better than baseline: the trained lens does not beat the better baseline on held-out text.")
    kind = "full rank" if s.lens_rank is None else f"rank {s.lens_rank} (a low-rank update; the paper's lens is full rank)"
    return Section(
        "Attention lens",
        text=(f"One lens per head of layer {layer}, {kind}, on the heads' raw outputs; the heads' lens logits are "
              f"summed and trained with KL(model || lens) for {s.lens_steps} steps on {int(info['n_train_positions'])} "
              f"positions of {int(info['n_train_texts'])} {s.lens_corpus} texts (the paper: BookCorpus, not available "
              f"offline); held-out KL on {int(info['n_held_positions'])} positions of {int(info['n_held_texts'])} other "
              f"texts, beside the untrained lens, the logit lens of the summed head outputs and the unigram guess."
              f"{verdict}\n\n{_claim_line(result, 'lens.beats_baseline')}"),
        figures=["claim-lens-beats-baseline", "lens-training"],
        tables={"per held-out text": "lens_texts", "lens": "lens_info"},
        headline=[_h("lens held-out KL", texts["kl_lens"].mean(), len(texts)),
                  _h("unigram held-out KL", texts["kl_unigram"].mean(), len(texts)),
                  _h("logit-lens held-out KL", texts["kl_logit_lens"].mean(), len(texts))])


def build_report(result: "Result", settings: "Settings") -> None:
    """Fill ``result.figures``, ``result.headline`` and ``result.sections``."""
    figs: dict[str, Figure] = {}
    t = result.tables
    sections = [setup_section(result, settings), projection_section(t, figs), grid_section(t, figs, settings),
                controls_section(result, figs, settings), heads_section(result, figs, settings),
                lens_section(result, figs, settings)]
    result.sections = [x for x in sections if x is not None]
    result.figures = figs
    result.headline = [h for sec in result.sections for h in sec.headline]
