"""The claims of Lv et al. (2024) that the recall analysis tests, each with its rule stated before the result.

recall.movers      the top-k heads by path-patched drop (chosen on the training half) carry a larger share of the
                   path-patching effect on each held-out prompt than k random heads (exact expectation),
                   paired per prompt, Wilcoxon signed-rank.
recall.mlp_gain    the MLP right after the top mover amplifies its output: per held-out prompt the gain (least-
                   squares coefficient, or the linearised part's gain) vs zero, sign-flip test. The paper says
                   amplify; a negative mean would say erase.
recall.suppression removing the last block at the last position raises the answer's logit difference on more than
                   half of the prompts (the block lowers it), binomial test vs 0.5.
recall.mitigation  the mitigation chosen on the training half raises p(answer) on held-out prompts: paired per
                   prompt, Wilcoxon signed-rank; the change in generic-text perplexity is reported beside it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

from hopscope.stats import Claim, mean_vs_zero, paired_change, share_vs

if TYPE_CHECKING:
    from hopscope.methods.recall.settings import Settings

ANALYSIS = "recall"
PAPER = "Lv et al. 2024, Interpreting Key Mechanisms of Factual Recall (arXiv 2403.19521)"


def movers_claim(tables: dict[str, pd.DataFrame], settings: "Settings") -> Claim:
    conc = tables["movers_concentration"]
    heads = conc["top_heads"].iloc[0] if len(conc) else ""
    return paired_change(
        "recall.movers", conc["top_share"], conc["random_share"], analysis=ANALYSIS,
        statement=(f"A few heads ({heads}, the top {settings.top_k} by path-patched drop on the training half) move "
                   "the subject to the last position: they carry a larger share of the path-patching effect than "
                   "as many random heads"),
        paper=PAPER,
        paper_value="qualitative: a handful of mid-to-late 'mover' heads extract the topic token (GPT-2, OPT, Llama-2)",
        measure=f"held-out share of the summed |path-patching drop| carried by the top {settings.top_k} heads",
        control_label=f"{settings.top_k} random heads (exact expectation)", direction="greater", seed=settings.seed)


def mlp_gain_claim(tables: dict[str, pd.DataFrame], settings: "Settings") -> Claim:
    decomp = tables["mlp_decomposition"]
    test = set(tables["prompts"].loc[tables["prompts"]["split"] == "test", "qid"])
    rows = decomp[decomp["mover"] & decomp["qid"].isin(test)]
    column = "lstsq_coef" if settings.gain == "regression" else "part_gain"
    mover = rows["component"].iloc[0] if len(rows) else "?"
    layer = int(rows["mlp_layer"].iloc[0]) if len(rows) else -1
    values = rows[column].to_numpy(dtype=float)
    word = "amplifies" if len(values) and values.mean() > 0 else "erases"
    how = ("least-squares coefficient of the MLP output on the head outputs" if column == "lstsq_coef"
           else "gain of the exactly linearised MLP part along the head's output")
    return mean_vs_zero(
        "recall.mlp_gain", values, analysis=ANALYSIS,
        statement=(f"The MLP after the mover head {mover} (MLP {layer}) amplifies the head's output "
                   f"(point estimate on this model: it {word} it)"),
        paper=PAPER, paper_value="qualitative: the MLP after the mover heads amplifies the topic-token head output",
        measure=f"held-out per-prompt {how} ({column})", control_label="zero (neither amplify nor erase)",
        direction="greater", seed=settings.seed)


def suppression_claim(tables: dict[str, pd.DataFrame], settings: "Settings") -> Claim:
    eff = tables["final_layer_effects"]
    block = eff[eff["component"] == "block"]
    return share_vs(
        "recall.suppression", (block["effect_logit_diff"] < 0).to_numpy(), null=0.5, analysis=ANALYSIS,
        statement="The final block lowers the correct answer's logit difference (anti-overconfidence) on most prompts",
        paper=PAPER, paper_value="qualitative: a universal anti-overconfidence mechanism in the final layer "
                                 "(GPT-2, OPT-1.3B, Llama-2-7B)",
        measure="share of prompts where removing the last block at the last position raises logit(answer) - mean",
        control_label="half of the prompts", direction="greater", seed=settings.seed)


def mitigation_claim(tables: dict[str, pd.DataFrame], settings: "Settings") -> Claim:
    summary = tables["mitigation"]
    scores = tables["mitigation_scores"]
    chosen = summary[summary["chosen"]]
    name = str(chosen["mitigation"].iloc[0]) if len(chosen) else "none"
    test = scores[scores["eval_set"] == "test"]
    before = test[test["mitigation"] == "none"].set_index("qid")["prob"]
    after = test[test["mitigation"] == name].set_index("qid")["prob"].reindex(before.index)
    ppl = ""
    if len(chosen) and pd.notna(chosen["ppl_before"].iloc[0]):
        c = chosen.iloc[0]
        ppl = (f"; generic-text perplexity {c['ppl_before']:.3g} -> {c['ppl_after']:.3g} "
               f"({100 * c['ppl_change_rel']:+.1f}%)")
    claim = paired_change(
        "recall.mitigation", after.to_numpy(dtype=float), before.to_numpy(dtype=float), analysis=ANALYSIS,
        statement=f"The mitigation chosen on the training half ({name}) raises the correct answer's probability "
                  "on held-out prompts at a small perplexity cost",
        paper=PAPER, paper_value="qualitative: mitigating the suppression improves factual-recall confidence",
        measure="held-out p(answer) with the mitigation", control_label="the unmitigated model",
        direction="greater", seed=settings.seed)
    claim.note = claim.note + ppl
    return claim


def claims(tables: dict[str, pd.DataFrame], settings: "Settings") -> list[Claim]:
    """The four recall claims, measured on a finished run's tables."""
    return [movers_claim(tables, settings), mlp_gain_claim(tables, settings), suppression_claim(tables, settings),
            mitigation_claim(tables, settings)]
