"""The claims of Sakarvadia et al. (2023) that the injection analysis tests, each with its rule stated before the
result. Every claim is measured on the held-out pairs (the best cell and the top heads are chosen on the search
pairs); with no held-out pairs (``search_prompts=None``, the seed's in-sample protocol) the note says so.

inj.gold_beats_random  injecting the bridge entity at the best (layer, tau) raises p(answer) more than control
                       memories: per held-out prompt the gold memory's % change minus the median % change of
                       its random-word and part-of-speech memories at the same cell; Wilcoxon signed-rank,
                       bootstrap interval of the median difference (each control alone: ``controls_tests``).
inj.few_heads          a few heads carry the memory's effect: per held-out prompt, Δ log p(answer) when the
                       memory is projected on the output space of the top heads (ranked on the search pairs)
                       minus the mean over random sets of as many heads, in units of the full injection's mean
                       effect (the share of it); Wilcoxon signed-rank.
lens.beats_baseline    the trained attention lens decodes the layer's heads better than its baselines: per
                       held-out text, the lens's mean KL to the model's next-token distribution minus that of
                       the better baseline (the logit lens of the summed head outputs, or the unigram guess);
                       Wilcoxon signed-rank; the paper's direction is lower.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from hopscope.methods.injection.tables import POOLED, claim_split, gold_vs_controls
from hopscope.stats import Claim, claims_frame, empty_claims, paired_change

if TYPE_CHECKING:
    from hopscope.methods.injection.settings import Settings

ANALYSIS = "injection"
PAPER = "Sakarvadia et al. 2023, Memory Injections (arXiv 2309.05605)"
LENS_PAPER = "Sakarvadia et al. 2023, Attention Lens (arXiv 2310.16270)"


def _in_sample(tables: dict[str, pd.DataFrame]) -> str:
    return ("" if claim_split(tables["pairs"]) == "held-out" else
            "in-sample: the cell and heads were chosen on these same prompts (no held-out pairs)")


def gold_claim(tables: dict[str, pd.DataFrame], settings: "Settings") -> Claim | None:
    if "controls" not in tables or not len(tables["controls"]):
        return None
    wide = gold_vs_controls(tables["controls"], claim_split(tables["pairs"]))
    if POOLED not in wide:
        return None
    both = wide[["gold", POOLED]].dropna()
    cell = tables["best_cell"].iloc[0]
    claim = paired_change(
        "inj.gold_beats_random", both["gold"], both[POOLED], analysis=ANALYSIS,
        statement=(f"Injecting the bridge entity into the attention output of layer {int(cell['layer'])} "
                   f"(tau {cell['tau']:.3g}, chosen on the search prompts) raises p(answer) more than random-word "
                   "and part-of-speech memories at the same cell"),
        paper=PAPER, paper_value="up to +424% p(answer) at the best layer and tau (GPT-2, handwritten pairs)",
        measure="% change in p(answer), gold minus the median control memory (per held-out prompt)",
        control_label="random-word and part-of-speech memories", direction="greater", seed=settings.seed)
    gold = both["gold"].to_numpy()
    extra = (f"gold: median {np.median(gold):.3g}%, share improved {np.mean(gold > 0):.2f}; "
             f"controls: median {np.median(both[POOLED]):.3g}%")
    claim.note = "; ".join(x for x in (claim.note, extra, _in_sample(tables)) if x)
    return claim


def few_heads_claim(tables: dict[str, pd.DataFrame], settings: "Settings") -> Claim | None:
    few = tables.get("few_heads_summary")
    if few is None or not len(few):
        return None
    scale = float(few["dlogp_all"].mean())
    shares = scale > 0
    top = (few["dlogp_top"] / scale) if shares else few["dlogp_top"]
    rnd = (few["dlogp_random"] / scale) if shares else few["dlogp_random"]
    heads = few["top_heads"].iloc[0]
    layer = int(tables["best_cell"]["layer"].iloc[0])
    unit = "share of the full injection's mean Δ log p(answer)" if shares else "Δ log p(answer)"
    claim = paired_change(
        "inj.few_heads", top, rnd, analysis=ANALYSIS,
        statement=(f"A few heads of layer {layer} (heads {heads}, the top {settings.top_heads} on the search prompts) "
                   "carry the memory's effect: the memory projected on their output space raises p(answer) more "
                   "than when projected on as many random heads"),
        paper=PAPER, paper_value="qualitative: specific attention heads of the injection layer carry the memory",
        measure=f"{unit}, top heads minus random heads (per held-out prompt)",
        control_label=f"random sets of {settings.top_heads} heads (mean over sets)", direction="greater",
        seed=settings.seed)
    extra = (f"mean Δ log p: full injection {scale:.3g}, top heads {few['dlogp_top'].mean():.3g}, "
             f"random heads {few['dlogp_random'].mean():.3g}")
    if not shares:
        extra += "; the full injection does not raise log p on average, so raw Δ log p is compared"
    claim.note = "; ".join(x for x in (claim.note, extra, _in_sample(tables)) if x)
    return claim


def lens_claim(tables: dict[str, pd.DataFrame], settings: "Settings") -> Claim | None:
    texts = tables.get("lens_texts")
    if texts is None or not len(texts):
        return None
    base = {"kl_logit_lens": "the logit lens of the summed head outputs", "kl_unigram": "a constant unigram guess"}
    best = min(base, key=lambda c: float(texts[c].mean()))
    layer = int(tables["lens_info"]["layer"].iloc[0])
    kind = "full-rank" if settings.lens_rank is None else f"rank-{settings.lens_rank}"
    claim = paired_change(
        "lens.beats_baseline", texts["kl_lens"], texts[best], analysis=ANALYSIS,
        statement=(f"A trained {kind} attention lens of layer {layer} decodes the heads' raw outputs into the model's "
                   f"next-token distribution better than {base[best]} (the better of two baselines)"),
        paper=LENS_PAPER, paper_value="qualitative: trained lenses map head outputs to interpretable vocabulary",
        measure="held-out KL(model || lens) minus the baseline's, per held-out text (nats)",
        control_label=base[best], direction="less", seed=settings.seed)
    other = [c for c in base if c != best][0]
    extra = (f"mean KL: lens {texts['kl_lens'].mean():.3g}, {base[best]} {texts[best].mean():.3g}, "
             f"{base[other]} {texts[other].mean():.3g}, untrained lens {texts['kl_untrained'].mean():.3g}")
    claim.note = "; ".join(x for x in (claim.note, extra) if x)
    return claim


def claims(tables: dict[str, pd.DataFrame], settings: "Settings") -> pd.DataFrame:
    """The claims frame (rows of :data:`hopscope.stats.CLAIM_COLUMNS`) for what this run measured."""
    rows = [c for c in (gold_claim(tables, settings), few_heads_claim(tables, settings), lens_claim(tables, settings))
            if c is not None]
    return claims_frame(rows) if rows else empty_claims()
