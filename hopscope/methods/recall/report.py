"""The recall report: the only place with prose and figures. :func:`build_report` fills a Result's
``figures``, ``headline`` and ``sections`` from its tables and claims."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from hopscope.report.figures import heatmap, points_plot
from hopscope.results import Headline, Section
from hopscope.stats import VERDICT_RULE

if TYPE_CHECKING:
    from hopscope.results import Result

HEATMAPS = {
    "dla": ("direct logit attribution to the answer", "logit diff", True),
    "attn_subject": ("attention from the last token to the subject", "attention", False),
    "corr_attn_dot": ("corr(attention to subject, subject dot) across prompts", "Pearson r", True),
    "drop_path_pct": ("path patching: drop in logit diff, % of clean", "%", True),
}


def _claim(result: "Result", cid: str) -> pd.Series | None:
    rows = result.claims[result.claims["id"] == cid] if len(result.claims) else result.claims
    return rows.iloc[0] if len(rows) else None


def _claim_line(result: "Result", cid: str) -> str:
    c = _claim(result, cid)
    if c is None:
        return ""
    return (f"Claim {cid}: {c['statement']}. Measure: {c['measure']} = {c['value']:.3g} "
            f"[{c['low']:.3g}, {c['high']:.3g}], n = {c['n']}; control: {c['control']}; {c['test']} "
            f"p = {c['p_value']:.2g}; verdict: {c['verdict']}. {c['note']}")


def _headline(label: str, value: float, n: int | None = None, c: pd.Series | None = None) -> Headline:
    if c is not None:
        return Headline(label, float(c["value"]), int(c["n"]), float(c["low"]), float(c["high"]))
    return Headline(label, float(value), n)


# ---- figures ----------------------------------------------------------------------------------------------
def head_heatmaps(summary: pd.DataFrame) -> dict[str, Figure]:
    figs = {}
    for metric, (title, label, diverging) in HEATMAPS.items():
        if metric not in summary or not np.isfinite(summary[metric].to_numpy(dtype=float)).any():
            continue
        grid = summary.pivot(index="layer", columns="head", values=metric).sort_index()
        figs[f"heads-{metric}"] = heatmap(grid, title=title, colorbar_label=label, xlabel="head", ylabel="layer",
                                          center=0.0 if diverging else None, cmap=None if diverging else "magma")
    return figs


def decomposition_figure(summary: pd.DataFrame, layer: int) -> Figure:
    """Bars of the mean least-squares coefficient and the mean linearised gain per head input of the MLP
    (heads whose output norm is under a tenth of the largest are left out: their coefficients are noise)."""
    heads = summary[summary["component"].str.match(r"^L\d+H\d+$")]
    heads = heads[heads["input_norm"] >= 0.1 * heads["input_norm"].max()]
    fig = Figure(figsize=(max(5.0, 0.6 * len(heads) + 2), 4.0), layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(len(heads))
    ax.bar(x - 0.2, heads["lstsq_coef"], 0.4, label="least-squares coefficient")
    ax.bar(x + 0.2, heads["part_gain"], 0.4, label="linearised gain (part . input / |input|^2)")
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(x, heads["component"], rotation=45, ha="right")
    ax.set_ylabel("> 0 amplify, < 0 erase")
    ax.set_title(f"MLP {layer} at the last position: amplify or erase each head")
    ax.legend(fontsize=8)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return fig


def mlp_layers_figure(layers: pd.DataFrame, chance: float) -> Figure:
    """Per layer: the MLP's mean DLA to the answer; shares of prompts with the answer first among all answers
    (prompt-specific part) and with the subject in the top 10 tokens."""
    fig = Figure(figsize=(7.5, 4.0), layout="constrained")
    ax = fig.add_subplot()
    ax.bar(layers["layer"], layers["mlp_dla"], color="C0", label="mean DLA to answer")
    ax.set_xlabel("layer")
    ax.set_ylabel("logit diff")
    ax2 = ax.twinx()
    ax2.plot(layers["layer"], layers["answer_cand_top1_share"], "o-", color="C3",
             label="answer ranked 1st among all answers (prompt-specific part)")
    ax2.axhline(chance, color="C3", ls=":", lw=0.8, label="chance")
    ax2.plot(layers["layer"], layers["subject_top10_share"], "s--", color="C2", label="subject in top 10 tokens")
    ax2.set_ylim(0, 1.05)
    ax2.set_ylabel("share of prompts")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=8, loc="upper left")
    ax.set_title("What each MLP writes at the last position")
    return fig


def suppression_figure(share: pd.DataFrame) -> Figure:
    """Share of prompts on which each last-block component lowers the answer's logit diff / probability."""
    fig = Figure(figsize=(max(6.0, 0.5 * len(share) + 2), 4.0), layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(len(share))
    ax.bar(x - 0.2, share["lowers_logit_diff"], 0.4, label="lowers logit diff")
    ax.bar(x + 0.2, share["lowers_prob"], 0.4, label="lowers probability")
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.set_xticks(x, share["component"], rotation=45, ha="right")
    ax.set_ylim(0, 1.22)
    ax.set_ylabel("share of prompts")
    ax.set_title("Last block: where it suppresses the correct answer")
    ax.legend(fontsize=8, ncol=2, loc="upper center")
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return fig


def mitigation_figure(summary: pd.DataFrame) -> Figure:
    """Held-out probability gain next to the costs (relative perplexity change, other-relation accuracy)."""
    fig = Figure(figsize=(8.0, 4.0), layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(len(summary))
    cols = [("gain_prob", "held-out p(answer) gain"), ("ppl_change_rel", "generic-text perplexity change (rel.)"),
            ("other_accuracy_change", "other-relation accuracy change")]
    for j, (col, label) in enumerate(cols):
        ax.bar(x + (j - 1) * 0.27, summary[col].fillna(0), 0.27, label=label)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(x, [m + (" (chosen)" if c else "") for m, c in zip(summary["mitigation"], summary["chosen"])],
                  rotation=20, ha="right")
    ax.set_title("Mitigating final-layer suppression: gain and cost")
    ax.legend(fontsize=8)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return fig


def claim_figures(t: dict[str, pd.DataFrame]) -> dict[str, Figure]:
    """One figure per claim showing every unit (prompt) and the mean with its 95% interval."""
    figs = {}
    conc = t["movers_concentration"]
    if len(conc):
        figs["claim-recall-movers"] = points_plot(
            {"top heads": conc["top_share"], "random heads": conc["random_share"]},
            title="recall.movers: share of the path-patching effect per held-out prompt", ylabel="share",
            ids={"top heads": conc["qid"], "random heads": conc["qid"]})
    test = set(t["prompts"].loc[t["prompts"]["split"] == "test", "qid"])
    mover = t["mlp_decomposition"]
    mover = mover[mover["mover"] & mover["qid"].isin(test)]
    if len(mover):
        figs["claim-recall-mlp_gain"] = points_plot(
            {"least-squares coef": mover["lstsq_coef"], "linearised gain": mover["part_gain"]},
            title=f"recall.mlp_gain: MLP {int(mover['mlp_layer'].iloc[0])} on {mover['component'].iloc[0]}",
            ylabel="> 0 amplify, < 0 erase", reference=0.0, reference_label="zero",
            ids={"least-squares coef": mover["qid"], "linearised gain": mover["qid"]})
    block = t["final_layer_effects"]
    block = block[block["component"] == "block"]
    if len(block):
        figs["claim-recall-suppression"] = points_plot(
            {"last block": block["effect_logit_diff"]}, ids={"last block": block["qid"]},
            title="recall.suppression: effect of the last block on logit(answer) - mean",
            ylabel="clean - block removed (< 0: lowers the answer)", reference=0.0, reference_label="zero")
    chosen = t["mitigation"][t["mitigation"]["chosen"]]
    if len(chosen):
        s = t["mitigation_scores"]
        s = s[s["eval_set"] == "test"]
        before = s[s["mitigation"] == "none"].set_index("qid")["prob"]
        after = s[s["mitigation"] == chosen["mitigation"].iloc[0]].set_index("qid")["prob"].reindex(before.index)
        figs["claim-recall-mitigation"] = points_plot(
            {"delta p(answer)": (after - before).to_numpy()}, ids={"delta p(answer)": list(before.index)},
            title=f"recall.mitigation: {chosen['mitigation'].iloc[0]}, held-out", ylabel="p after - p before",
            reference=0.0, reference_label="zero")
    return figs


# ---- sections ---------------------------------------------------------------------------------------------
def build_report(result: "Result") -> None:
    """Fill ``result.figures``, ``result.headline`` and ``result.sections``."""
    t = result.tables
    s = result.settings
    prompts = t["prompts"]
    n, n_test = len(prompts), int((prompts["split"] == "test").sum())
    figs = {**head_heatmaps(t["heads"]), **claim_figures(t)}
    heads = t["heads"]
    dla_err = float(t["dla_components"]["sum_error"].abs().max())
    mlp_err = float(t["mlp_decomposition"]["sum_error"].max())
    acc = float((prompts["rank"] == 0).mean())
    source = ("its output on a prompt about another subject (the paper's corrupted run)"
              if s["patch_source"] == "other_subject" else "its mean output over all prompts (mean ablation)")
    checked = ("of every head" if s["heads"] == "all" else
               f"of the candidate heads, the top {s['candidates_k']} by each observational metric")
    sections = [Section(
        "Factual recall: claims",
        text=(f"{n} prompts ({s['relation']}, {s['shots']} demonstrations), split by seed {s['seed']} into a "
              f"training half that selects the mover heads and the mitigation and a held-out half of {n_test} "
              f"prompts on which the claims are measured (the suppression claim uses every prompt). Top-1 "
              f"accuracy {acc:.2f}.\n\n{VERDICT_RULE}"),
        headline=[_headline("prompts", n, n), _headline("top-1 accuracy", acc, n)])]
    sections.append(Section(
        "Subject-moving heads",
        text=(f"For every head at the last position: direct logit attribution (DLA) to logit(answer) - mean logit, "
              "through the final norm frozen at each prompt's residual; attention from the last token to the "
              "subject span; dot product of its output with the subject token's unembedding; their Pearson "
              f"correlation across prompts. Path patching {checked}: the head's last-position output replaced "
              f"by {source}, every later attention output at the last position frozen at its clean value, so the "
              "change reaches the logits directly and through later MLPs (drop_path; drop_path_pct = 100 x mean "
              "drop / mean clean logit difference, the paper's scale). subject_rank: median rank of the subject "
              "token in the head output's vocabulary projection (top heads only). Movers: attention to the subject "
              f">= 0.2, output . subject unembedding > 0, DLA >= 0.1. DLA terms + rest reproduce the logit "
              f"difference to {dla_err:.1e}."
              f"\n\n{_claim_line(result, 'recall.movers')}"),
        figures=[f for f in ("claim-recall-movers", "heads-drop_path_pct", "heads-dla", "heads-attn_subject",
                             "heads-corr_attn_dot") if f in figs],
        tables={"heads (ranked by path-patched drop)": "heads", "per prompt and head": "heads_per_prompt",
                "path patching": "head_patching", "concentration per held-out prompt": "movers_concentration"},
        headline=[_headline("top head (all prompts)", float(heads["drop_path"].iloc[0]), n)] if len(heads) else []))
    decomp = t["mlp_decomposition"]
    mover = decomp[decomp["mover"]]
    layer = int(decomp["mlp_layer"].iloc[0])
    mover_name = str(mover["component"].iloc[0]) if len(mover) else "?"
    chance = 1.0 / max(1, prompts["answer"].nunique())
    figs["mlp-decomposition"] = decomposition_figure(t["mlp_decomposition_summary"], layer)
    figs["mlp-layers"] = mlp_layers_figure(t["mlp_layer_summary"], chance)
    sections.append(Section(
        f"MLP {layer}: amplify or erase the mover {mover_name}",
        text=(f"The MLP of layer {layer} (right after the top mover head {mover_name}, chosen on the training half) "
              "at the last position, decomposed against its input components. lstsq_coef: least-squares "
              "coefficient of the MLP output on each head's output (> 0 amplify, < 0 erase; the remainder is what "
              "no head direction explains). The linearised parts freeze the pre-MLP norm scale and the activation "
              "(gate) so the MLP is linear in its input: parts + constant equal the MLP output exactly (max error "
              f"{mlp_err:.1e}). part_gain: a part's coefficient along its own input; subject_rank / answer_rank: "
              "rank of the subject and answer tokens in the part's vocabulary projection (0 = top); "
              "answer_cand_rank: rank of the answer among all prompts' answers in the prompt-specific part (mean "
              "over prompts removed; 0 = singles out the right answer, the paper's implicit get_capital(X); chance "
              f"{chance:.2f}). The second figure asks the same of every layer's whole MLP output."
              f"\n\n{_claim_line(result, 'recall.mlp_gain')}"),
        figures=[f for f in ("claim-recall-mlp_gain", "mlp-decomposition", "mlp-layers") if f in figs],
        tables={"components (means over prompts)": "mlp_decomposition_summary",
                "per prompt and component": "mlp_decomposition", "MLP layers": "mlp_layer_summary"}))
    figs["final-layer-suppression"] = suppression_figure(t["final_layer_suppression"])
    sections.append(Section(
        "Final-layer anti-overconfidence",
        text=("Each component of the last block removed (zeroed) at the last position, computed exactly by replaying "
              "the last layer from the cached pass (the tests hold it equal to zeroing these sites with the engine): "
              "lowers_* is the share of prompts on which the component lowers the correct answer's logit difference "
              "/ probability (removing it raises them). Removing the whole block reads the residual before it "
              "through the final norm (the logit lens one layer down)."
              f"\n\n{_claim_line(result, 'recall.suppression')}"),
        figures=[f for f in ("claim-recall-suppression", "final-layer-suppression") if f in figs],
        tables={"suppression share": "final_layer_suppression", "per prompt": "final_layer_effects",
                "DLA of the last layer": "last_layer_dla"}))
    figs["mitigation"] = mitigation_figure(t["mitigation"])
    others = sorted({e.split(":", 1)[1] for e in t["mitigation_scores"]["eval_set"] if str(e).startswith("other:")})
    sections.append(Section(
        "Mitigation: gain and cost",
        text=("Edits chosen on the training half and applied through the engine at every position: the suppressing "
              f"last-layer heads or neurons (most negative mean DLA) scaled by {s['factor']:g}, or the more "
              "suppressing last-layer sublayer's mean output (an answer-agnostic direction) projected out of it. "
              "The chosen mitigation has the largest mean gain in p(answer) on the training half; the claim is "
              f"measured on the held-out half. Cost: perplexity on {s['text_windows']} windows of {s['window']} "
              "tokens of generic prose (Python's own language reference) and first-token accuracy on other "
              f"relations ({', '.join(others) or 'none'}).\n\n{_claim_line(result, 'recall.mitigation')}"),
        figures=[f for f in ("claim-recall-mitigation", "mitigation") if f in figs],
        tables={"mitigations": "mitigation", "definitions": "mitigations", "per prompt": "mitigation_scores"}))
    result.figures = figs
    result.sections = sections
    result.headline = [_headline("prompts", n, n), _headline("top-1 accuracy", acc, n)] + [
        _headline(f"{cid}: {_claim(result, cid)['measure']}", 0.0, None, _claim(result, cid))
        for cid in ("recall.movers", "recall.mlp_gain", "recall.suppression", "recall.mitigation")
        if _claim(result, cid) is not None]
