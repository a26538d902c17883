"""Tables derived from the stages' tables (pure functions of them): what the claims and the report read."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from hopscope.methods.injection.summary import CELL_KEYS, best_cell, per_prompt, summarize
from hopscope.stats import paired_change

if TYPE_CHECKING:
    from hopscope.methods.injection.settings import Settings

Tables = dict[str, pd.DataFrame]
POOLED = "random + part-of-speech"


def claim_split(pairs: pd.DataFrame) -> str:
    """The split the claims are measured on: ``held-out``, or ``search`` when every pair is a search pair."""
    usable = pairs[pairs["usable"]]
    return "held-out" if (usable["split"] == "held-out").any() else "search"


def controls_frame(controls: pd.DataFrame) -> pd.DataFrame:
    """Control rows with a ``control`` label: the memory kind, or ``gold@explicit`` on the explicit prompt."""
    return controls.assign(control=np.where(controls["prompt_kind"] == "explicit", "gold@explicit",
                                            controls["memory_kind"]))


def gold_vs_controls(controls: pd.DataFrame, split: str, value: str = "change_pct") -> pd.DataFrame:
    """Per prompt of ``split`` (obscure prompts): the gold memory's ``value`` and, per control kind, the median
    over that kind's memories; ``POOLED`` is the median over every random and part-of-speech memory."""
    ob = controls[(controls["prompt_kind"] == "obscure") & (controls["split"] == split)]
    wide = per_prompt(ob, value)
    pooled = ob[(ob["memory_kind"] == "random") | ob["memory_kind"].str.startswith("pos:")]
    if len(pooled):
        wide[POOLED] = pooled.groupby("qid")[value].median()
    return wide


def controls_tests(controls: pd.DataFrame, split: str, settings: "Settings") -> pd.DataFrame:
    """Gold against each control on ``split``: the paired test of the claim, one row per control."""
    wide = gold_vs_controls(controls, split)
    rows = []
    for kind in [c for c in wide.columns if c != "gold"]:
        both = wide[["gold", kind]].dropna()
        if both.empty:
            continue
        c = paired_change(f"gold_vs_{kind}", both["gold"], both[kind], analysis="injection",
                          statement="", measure="% change in p(answer)", seed=settings.seed)
        rows.append({"control": kind, "n": c.n, "gold_median_pct": float(both["gold"].median()),
                     "control_median_pct": float(both[kind].median()), "median_difference": c.value,
                     "low": c.low, "high": c.high, "p_value": c.p_value,
                     "gold_better_share": float((both["gold"] > both[kind]).mean())})
    return pd.DataFrame(rows)


def few_heads_per_prompt(few: pd.DataFrame) -> pd.DataFrame:
    """Per prompt: Δ log p of the full injection, of the top heads' projection, and the mean over random sets."""
    piv = few.pivot_table(index="qid", columns="condition", values="dlogp", aggfunc="mean")
    out = piv.rename(columns={"all": "dlogp_all", "top": "dlogp_top", "random": "dlogp_random"}).reset_index()
    out["top_heads"] = few[few["condition"] == "top"].groupby("qid")["heads"].first().reindex(out["qid"]).to_numpy()
    return out


def heads_summary(tables: Tables, settings: "Settings") -> pd.DataFrame:
    """One row per head of the injection layer: projected injection, ablation and lens scores, with ranks."""
    inj = tables["head_injection"]
    out = inj.groupby("head").agg(layer=("layer", "first"))
    for split in ("search", "held-out"):
        sub = inj[inj["split"] == split]
        if len(sub):
            out[f"inject_dlogp_{split}"] = sub.groupby("head")["dlogp"].mean()
            out[f"inject_improved_{split}"] = (sub["p1"] > sub["p0"]).groupby(sub["head"]).mean()
    abl = tables["head_ablation"]
    for kind in ("obscure", "explicit"):
        out[f"ablate_dlogp_{kind}"] = abl[abl["prompt_kind"] == kind].groupby("head")["dlogp"].mean()
    lens = tables.get("lens_heads")
    if lens is not None and len(lens) and int(lens["layer"].iloc[0]) == int(out["layer"].iloc[0]):
        for col in ("head_norm", "lens_logit", "lens_kl", "linear_logit", "linear_kl", "unigram_kl"):
            out[col] = lens.groupby("head")[col].mean()
        key, asc = ("lens_logit", False) if settings.head_rank_by == "lens_logit" else ("lens_kl", True)
        out["lens_rank"] = out[key].rank(ascending=asc, method="first").astype(int)
        out["linear_rank"] = out["linear_logit"].rank(ascending=False, method="first").astype(int)
    out["inject_rank"] = out["inject_dlogp_search" if "inject_dlogp_search" in out else "inject_dlogp_held-out"].rank(
        ascending=False, method="first").astype(int)
    return out.reset_index().sort_values("inject_rank", kind="stable").reset_index(drop=True)


def lens_texts(lens_kl: pd.DataFrame) -> pd.DataFrame:
    """Per held-out text: mean KL of the lens and of each reference over its positions."""
    cols = ["kl_lens", "kl_untrained", "kl_logit_lens", "kl_unigram"]
    return lens_kl.groupby("text")[cols].mean().reset_index()


def derived_tables(tables: Tables, settings: "Settings") -> Tables:
    """Every summary the claims and the report read (pure functions of the stage tables)."""
    out: Tables = {}
    pairs = tables["pairs"]
    split = claim_split(pairs)
    if "grid" in tables and len(tables["grid"]):
        grid = tables["grid"]
        out["grid_summary"] = summarize(grid, [*CELL_KEYS, "memory_kind"], settings.trim_percentile)
        out["best_cell"] = pd.DataFrame([best_cell(grid, settings.criterion, settings.trim_percentile)])
    if "controls" in tables and len(tables["controls"]):
        ctrl = controls_frame(tables["controls"])
        both = pd.concat([ctrl, ctrl.assign(split="all")], ignore_index=True)
        out["controls_summary"] = summarize(both, ["split", "control"], settings.trim_percentile)
        out["controls_tests"] = controls_tests(tables["controls"], split, settings)
    if "head_injection" in tables and len(tables["head_injection"]):
        out["heads_summary"] = heads_summary(tables, settings)
    if "few_heads" in tables and len(tables["few_heads"]):
        out["few_heads_summary"] = few_heads_per_prompt(tables["few_heads"])
    if "lens_kl" in tables and len(tables["lens_kl"]):
        out["lens_texts"] = lens_texts(tables["lens_kl"])
    return out
