"""Heads that move the subject to the last position (Lv et al. 2024).

Observational, per head at the last position: its direct logit attribution (DLA) to the answer, its attention
from the last token onto the subject span, the dot product of its output with the subject token's
unembedding row, and their Pearson correlation across prompts (a head that "passes the argument" writes more
of the subject the more it attends to it). Causal, per (prompt, head): path patching, the head's
last-position output replaced by its value on the source run (a prompt about another subject, or the mean
over prompts) with every later attention output at the last position frozen at its clean value, so the
change reaches the logits only directly and through later MLPs (``drop_path``); optionally plain
activation patching without freezing (``drop_total``); and the DLA of the change (``drop_direct``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np
import pandas as pd
import torch

from hopscope.engine import Intervention, Site, prompt_pass, replace
from hopscope.methods.recall.collect import LastPosition, answer_logit_diff
from hopscope.methods.recall.linearize import direction_logits
from hopscope.progress import bar

if TYPE_CHECKING:
    from hopscope.models.loaded import LoadedModel

HeadId = tuple[int, int]
DROPS = ("drop_path", "drop_total", "drop_direct")

# A mover attends from the last token to the subject, writes towards the subject token's unembedding, and
# helps the answer. (The attention-dot correlation is reported, not required: a head that attends to the
# subject on every prompt has no attention variance to correlate.)
MOVER_MIN_ATTENTION = 0.2
MOVER_MIN_DLA = 0.1


def head_frame(lp: LastPosition) -> pd.DataFrame:
    """One row per (prompt, layer, head): ``dla``, ``attn_subject``, ``subject_dot``."""
    n, L, H, _ = lp.heads.shape
    dla, att, dot = lp.head_dla(), lp.attn_to_subject, lp.subject_dot()
    layer, head = np.meshgrid(np.arange(L), np.arange(H), indexing="ij")
    frames = [pd.DataFrame({
        "qid": it.qid, "layer": layer.ravel(), "head": head.ravel(), "dla": dla[i].reshape(-1).numpy(),
        "attn_subject": att[i].reshape(-1).numpy(), "subject_dot": dot[i].reshape(-1).numpy(),
    }) for i, it in enumerate(lp.items)]
    return pd.concat(frames, ignore_index=True)


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    x, y = x - x.mean(), y - y.mean()
    denom = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / denom) if denom > 1e-12 else float("nan")


def head_summary(per_prompt: pd.DataFrame, patching: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per head: means of the per-prompt metrics, ``corr_attn_dot`` (Pearson across prompts), the
    mean causal drops and ``drop_path_pct`` (100 x mean drop / mean clean logit difference, the paper's
    scale) where measured, ``mover``, and ``rank`` (by path-patched drop, then DLA; 1 = most important)."""
    rows = []
    for (layer, head), g in per_prompt.groupby(["layer", "head"], sort=True):
        rows.append({
            "layer": int(layer), "head": int(head), "dla": g["dla"].mean(), "dla_std": g["dla"].std(ddof=0),
            "attn_subject": g["attn_subject"].mean(), "subject_dot": g["subject_dot"].mean(),
            "corr_attn_dot": _pearson(g["attn_subject"].to_numpy(), g["subject_dot"].to_numpy()),
        })
    out = pd.DataFrame(rows)
    if patching is not None and len(patching):
        cols = [c for c in DROPS if c in patching]
        means = patching.groupby(["layer", "head"])[cols + ["clean_logit_diff"]].mean().reset_index()
        means["drop_path_pct"] = 100.0 * means["drop_path"] / means["clean_logit_diff"]
        out = out.merge(means.drop(columns="clean_logit_diff"), on=["layer", "head"], how="left")
    for c in (*DROPS, "drop_path_pct"):
        if c not in out:
            out[c] = np.nan
    out["mover"] = ((out["attn_subject"] >= MOVER_MIN_ATTENTION) & (out["subject_dot"] > 0)
                    & (out["dla"] >= MOVER_MIN_DLA))
    out = out.sort_values(["drop_path", "dla"], ascending=False, na_position="last").reset_index(drop=True)
    out.insert(0, "rank", np.arange(1, len(out) + 1))
    out.insert(3, "head_name", [f"L{l}H{h}" for l, h in zip(out["layer"], out["head"])])
    return out


def candidate_heads(summary: pd.DataFrame, k: int) -> list[HeadId]:
    """The union of the top-``k`` heads by DLA, by attention to the subject, by subject dot product and by
    |correlation|: the heads worth a causal check when not all of them can be run."""
    picked: list[HeadId] = []
    for col, key in (("dla", None), ("attn_subject", None), ("subject_dot", None), ("corr_attn_dot", abs)):
        s = summary[col].abs() if key is abs else summary[col]
        for idx in s.fillna(-np.inf).sort_values(ascending=False, kind="stable").index[:k]:
            hid = (int(summary.at[idx, "layer"]), int(summary.at[idx, "head"]))
            if hid not in picked:
                picked.append(hid)
    return sorted(picked)


def subject_ranks(lm: "LoadedModel", lp: LastPosition, heads: Iterable[HeadId]) -> pd.DataFrame:
    """One row per (prompt, head): rank (0 = top) of the subject token in the vocabulary projection of the
    head's output (does the head write the subject?)."""
    frames = []
    for layer, head in heads:
        logits = direction_logits(lm, lp.heads[:, layer, head])
        chosen = logits.gather(-1, lp.subject_ids[:, None])
        rank = (logits > chosen).sum(-1)
        frames.append(pd.DataFrame({"qid": [it.qid for it in lp.items], "layer": layer, "head": head,
                                    "subject_rank": rank.numpy()}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        {"qid": pd.Series(dtype=str), "layer": pd.Series(dtype=int), "head": pd.Series(dtype=int),
         "subject_rank": pd.Series(dtype=int)})


def patch_rows(lp: LastPosition, i: int, heads: Sequence[HeadId], source: torch.Tensor, *,
               total: bool = True) -> tuple[list[list[Intervention]], list[tuple[HeadId, str]]]:
    """Intervention rows for prompt ``i``: per head, its last-position output replaced by ``source[l, h]``
    with every later attention output frozen at its clean value (``path``), and, with ``total``, the
    replacement alone (``total``)."""
    rows, labels = [], []
    L = lp.heads.shape[1]
    for layer, head in heads:
        swap = replace(Site(layer, "head_out", -1, head=head), source[layer, head])
        frozen = [replace(Site(l2, "attn_out", -1), lp.attn[i, l2]) for l2 in range(layer + 1, L)]
        rows.append([swap, *frozen])
        labels.append(((layer, head), "path"))
        if total:
            rows.append([swap])
            labels.append(((layer, head), "total"))
    return rows, labels


def path_patching(lm: "LoadedModel", lp: LastPosition, heads: Sequence[HeadId], source: torch.Tensor, *,
                  total: bool = True, progress: bool = False) -> pd.DataFrame:
    """One row per (prompt, head): the drop in the answer's logit difference (clean minus patched; positive =
    the head helps) when the head's last-position output takes the value ``source[i, l, h]`` (``[n, L, H, d]``).

    Columns ``drop_path``, ``drop_total`` (NaN without ``total``), ``drop_direct`` (DLA of the change, final
    norm frozen at the clean run) and ``clean_logit_diff``. Every row of a prompt runs in one prompt pass
    from the last position; a row joins the batch at its head's layer (the engine's staircase).
    """
    records = []
    for i, it in enumerate(bar(lp.items, desc="path patching", enabled=progress, unit="prompt")):
        rows, labels = patch_rows(lp, i, heads, source[i], total=total)
        logits = prompt_pass(lm, it.prompt, [[]] + rows, start=-1).logits
        ld = answer_logit_diff(logits, [it.answer_id] * len(logits))
        drops: dict[HeadId, dict[str, float]] = {}
        for (hid, kind), d in zip(labels, (ld[0] - ld[1:]).tolist()):
            drops.setdefault(hid, {})[f"drop_{kind}"] = d
        for (layer, head), vals in drops.items():
            direct = float(lp.u[i] @ (lp.heads[i, layer, head] - source[i, layer, head]))
            records.append({"qid": it.qid, "layer": layer, "head": head, "drop_path": vals["drop_path"],
                            "drop_total": vals.get("drop_total", np.nan), "drop_direct": direct,
                            "clean_logit_diff": float(ld[0])})
    return pd.DataFrame(records, columns=["qid", "layer", "head", *DROPS, "clean_logit_diff"])


def top_heads(patching: pd.DataFrame, qids: Iterable[str], k: int) -> list[HeadId]:
    """The ``k`` heads with the largest mean path-patched drop over the prompts ``qids`` (ties by layer, head)."""
    sel = patching[patching["qid"].isin(set(qids))]
    means = sel.groupby(["layer", "head"])["drop_path"].mean().reset_index()
    means = means.sort_values(["drop_path", "layer", "head"], ascending=[False, True, True], kind="stable")
    return [(int(r.layer), int(r.head)) for r in means.head(k).itertuples()]


def concentration(patching: pd.DataFrame, heads: Sequence[HeadId]) -> pd.DataFrame:
    """Per prompt: the share of the path-patching effect carried by ``heads``, ``top_share`` = sum of their
    drops / sum of |drops| over every patched head, and ``random_share``, its exact expectation for as many
    heads drawn uniformly at random among the patched ones (k / N x sum of drops / sum of |drops|)."""
    chosen = set(heads)
    rows = []
    for qid, g in patching.groupby("qid", sort=False):
        d = g["drop_path"].to_numpy(dtype=float)
        scale = np.abs(d).sum()
        mask = np.array([(int(l), int(h)) in chosen for l, h in zip(g["layer"], g["head"])])
        top = d[mask].sum() / scale if scale > 0 else 0.0
        rand = len(chosen) / len(d) * d.sum() / scale if scale > 0 else 0.0
        rows.append({"qid": qid, "top_share": float(top), "random_share": float(rand), "n_heads": len(d)})
    return pd.DataFrame(rows, columns=["qid", "top_share", "random_share", "n_heads"])
