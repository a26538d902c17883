"""Held-out summaries (pure functions of the finished tables): per policy, fix rate on the incorrect group,
break rate on the correct group, net change in accuracy, each with a 95% interval and n, exact McNemar tests
against no repair and against the policy's control; the perplexity cost on plain text.

Changes are paired with the same query's row without repair from the same pass: *fixed* = right with the
policy and wrong without it, among the incorrect group; *broke* = wrong with it and right without it, among the
correct group; the net change is accuracy with the policy minus accuracy without it, over both groups.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from hopscope.methods.repair.policies import CONTROLS, POLICIES, REPAIRS
from hopscope.stats import bootstrap_ci, clopper_pearson, mcnemar_exact, paired_bootstrap_ci

ROLES = {"backpatch": "repair", "self_injection": "repair", "mitigation": "repair", "gold_injection": "oracle",
         "backpatch_random": "control", "random_injection": "control", "mitigation_random": "control"}
SUMMARY_COLUMNS = ("rank", "policy", "role", "candidate", "n", "accuracy_none", "accuracy", "net", "net_low",
                   "net_high", "n_incorrect", "fixed", "fix_rate", "fix_low", "fix_high", "n_correct", "broke",
                   "break_rate", "break_low", "break_high", "p_vs_none", "control", "net_vs_control", "p_vs_control")


def paired(heldout: pd.DataFrame) -> pd.DataFrame:
    """The held-out rows with ``none_correct`` (the same query without repair), ``fixed`` and ``broke``."""
    none = heldout[heldout["policy"] == "none"].set_index("qid")["correct"].astype(bool)
    out = heldout.copy()
    out["none_correct"] = out["qid"].map(none).astype(bool)
    ok = out["correct"].astype(bool)
    wrong_group = out["group"] == "incorrect"
    out["fixed"] = ok & ~out["none_correct"] & wrong_group
    out["broke"] = ~ok & out["none_correct"] & ~wrong_group
    return out


def _rate(k: int, n: int) -> tuple[float, float, float]:
    if n == 0:
        return math.nan, math.nan, math.nan
    ci = clopper_pearson(k, n)
    return k / n, ci.low, ci.high


def heldout_summary(heldout: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """One row per policy (no repair left out), ranked by net held-out change in accuracy."""
    if not len(heldout):
        return pd.DataFrame(columns=list(SUMMARY_COLUMNS))
    t = paired(heldout)
    by = {p: g.set_index("qid") for p, g in t.groupby("policy", sort=False)}
    qids = by["none"].index
    ok0 = by["none"]["correct"].to_numpy(bool)
    rows = []
    for policy in [p for p in POLICIES if p in by and p != "none"]:
        g = by[policy].loc[qids]
        ok = g["correct"].to_numpy(bool)
        wrong_group = (g["group"] == "incorrect").to_numpy()
        n_inc, n_cor = int(wrong_group.sum()), int((~wrong_group).sum())
        fix = _rate(int(g["fixed"].sum()), n_inc)
        brk = _rate(int(g["broke"].sum()), n_cor)
        ci = paired_bootstrap_ci(ok.astype(float), ok0.astype(float), seed=seed)
        control = CONTROLS.get(policy, "")
        okc = by[control].loc[qids]["correct"].to_numpy(bool) if control in by else None
        rows.append({"policy": policy, "role": ROLES.get(policy, ""), "candidate": str(g["candidate"].iloc[0]),
                     "n": len(g), "accuracy_none": float(ok0.mean()), "accuracy": float(ok.mean()),
                     "net": float(ok.mean() - ok0.mean()), "net_low": ci.low, "net_high": ci.high,
                     "n_incorrect": n_inc, "fixed": int(g["fixed"].sum()), "fix_rate": fix[0], "fix_low": fix[1],
                     "fix_high": fix[2], "n_correct": n_cor, "broke": int(g["broke"].sum()), "break_rate": brk[0],
                     "break_low": brk[1], "break_high": brk[2], "p_vs_none": mcnemar_exact(ok, ok0).p_value,
                     "control": control if okc is not None else "",
                     "net_vs_control": float(ok.mean() - okc.mean()) if okc is not None else math.nan,
                     "p_vs_control": mcnemar_exact(ok, okc).p_value if okc is not None else math.nan})
    out = pd.DataFrame(rows, columns=[c for c in SUMMARY_COLUMNS if c != "rank"])
    out = out.sort_values(["net", "p_vs_none"], ascending=[False, True], kind="stable").reset_index(drop=True)
    out.insert(0, "rank", np.arange(1, len(out) + 1))
    return out


def perplexity_summary(text: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Per policy: perplexity of the plain-text windows, its relative change from no repair, the change in
    negative log-likelihood per token (nats; log of the perplexity ratio), each with a 95% interval (bootstrap
    over windows of the per-token change), n windows."""
    cols = ["policy", "n_windows", "n_tokens", "perplexity", "ppl_change", "ppl_change_low", "ppl_change_high",
            "nll_change", "nll_change_low", "nll_change_high"]
    if not len(text):
        return pd.DataFrame(columns=cols)
    none = text[text["policy"] == "none"].set_index("window")
    ppl0 = math.exp(none["nll"].sum() / none["n_tokens"].sum())
    rows = []
    for policy in [p for p in POLICIES if p in set(text["policy"])]:
        g = text[text["policy"] == policy].set_index("window").loc[none.index]
        ppl = math.exp(g["nll"].sum() / g["n_tokens"].sum())
        d = ((g["nll"] - none["nll"]) / g["n_tokens"]).to_numpy(float)
        ci = bootstrap_ci(d, seed=seed) if policy != "none" else None
        low, high = (ci.low, ci.high) if ci is not None else (0.0, 0.0)
        rows.append({"policy": policy, "n_windows": len(g), "n_tokens": int(g["n_tokens"].sum()), "perplexity": ppl,
                     "ppl_change": ppl / ppl0 - 1.0, "ppl_change_low": math.expm1(low),
                     "ppl_change_high": math.expm1(high), "nll_change": math.log(ppl / ppl0), "nll_change_low": low,
                     "nll_change_high": high})
    return pd.DataFrame(rows, columns=cols)


def beats(summary: pd.DataFrame) -> list[str]:
    """The repairs whose net held-out change has a 95% interval above zero."""
    s = summary[summary["policy"].isin(REPAIRS)]
    return [str(p) for p, lo in zip(s["policy"], s["net_low"]) if np.isfinite(lo) and lo > 0]
