"""Choosing each policy on the training queries (pure functions of the ``train`` table).

A candidate's *net gain* is its accuracy minus the accuracy without repair over the same training queries
(fixes minus breaks, over n); ties go to the larger mean change in log p(e3's first token) at the first
generated position, then to the earlier candidate. The chosen back-patch is the ``k`` best pairs with distinct
patched layers t, applied together; the chosen injection cell is the best (layer, tau) for the self memory.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

GAIN_COLUMNS = ("policy", "candidate", "s", "t", "layer", "tau", "n", "n_incorrect", "n_correct", "fixed", "broke",
                "net", "dlogprob", "order")


def candidate_gains(train: pd.DataFrame) -> pd.DataFrame:
    """One row per (policy, candidate) of the train table: n, fixes, breaks, net gain, mean change in log p."""
    if not len(train):
        return pd.DataFrame(columns=list(GAIN_COLUMNS))
    none = train[train["policy"] == "none"].set_index("qid")
    rows = []
    cands = train[train["policy"] != "none"]
    for order, ((policy, cand), g) in enumerate(cands.groupby(["policy", "candidate"], sort=False)):
        base = none.loc[g["qid"]]
        ok, ok0 = g["correct"].to_numpy(bool), base["correct"].to_numpy(bool)
        wrong_group = (g["group"] == "incorrect").to_numpy()
        first = g.iloc[0]
        rows.append({"policy": policy, "candidate": cand, "s": int(first["s"]), "t": int(first["t"]),
                     "layer": int(first["layer"]), "tau": float(first["tau"]), "n": len(g),
                     "n_incorrect": int(wrong_group.sum()), "n_correct": int((~wrong_group).sum()),
                     "fixed": int((ok & ~ok0 & wrong_group).sum()), "broke": int((~ok & ok0 & ~wrong_group).sum()),
                     "net": float(ok.mean() - ok0.mean()),
                     "dlogprob": float(np.nanmean(g["logprob"].to_numpy(float) - base["logprob"].to_numpy(float)))
                     if np.isfinite(g["logprob"].to_numpy(float)).any() else float("nan"),
                     "order": order})
    return pd.DataFrame(rows, columns=list(GAIN_COLUMNS))


def ranked(gains: pd.DataFrame, policy: str) -> pd.DataFrame:
    """The candidates of ``policy``, best first (net gain, then mean change in log p, then order)."""
    g = gains[gains["policy"] == policy].copy()
    g["_d"] = g["dlogprob"].fillna(-np.inf)
    return g.sort_values(["net", "_d", "order"], ascending=[False, False, True], kind="stable").drop(columns="_d")


def choose_backpatch(gains: pd.DataFrame, k: int) -> list[list[int]]:
    """The ``k`` best (s, t) pairs with distinct t (fewer when the grid has fewer t)."""
    out: list[list[int]] = []
    for r in ranked(gains, "backpatch").itertuples():
        if int(r.t) not in {t for _, t in out}:
            out.append([int(r.s), int(r.t)])
        if len(out) == k:
            break
    return out


def choose_cell(gains: pd.DataFrame) -> dict[str, Any] | None:
    """The best (layer, tau) of the self-injection grid."""
    best = ranked(gains, "self_injection")
    if not len(best):
        return None
    r = best.iloc[0]
    return {"layer": int(r["layer"]), "tau": float(r["tau"])}


def choose_mitigation(gains: pd.DataFrame) -> str | None:
    """The name of the mitigation candidate with the best net gain on train."""
    best = ranked(gains, "mitigation")
    return str(best.iloc[0]["candidate"]) if len(best) else None


def oracle_fix_rate(train: pd.DataFrame, policy: str) -> tuple[int, int]:
    """In-sample oracle (the papers' measure): (training incorrect queries that *some* candidate of ``policy``
    answers right, training incorrect queries)."""
    wrong = train[(train["group"] == "incorrect")]
    none_ok = wrong[wrong["policy"] == "none"].set_index("qid")["correct"].astype(bool)
    cand = wrong[wrong["policy"] == policy]
    fixed = cand.groupby("qid")["correct"].any().reindex(none_ok.index, fill_value=False) & ~none_ok
    return int(fixed.sum()), int(len(none_ok))
