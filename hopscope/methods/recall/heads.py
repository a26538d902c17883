"""Heads that move the subject to the last position (Lv et al. 2024, arXiv 2403.19521, section 3).

For every head at the last position: its direct logit attribution (DLA) to the answer, its attention
from the last token onto the subject span, the dot product of its output with the subject token's
unembedding row, and the Pearson correlation of the last two across prompts (a head that "passes the
argument" writes more of the subject the more it attends to it). Causal check: replace the head's
last-position output by its mean over prompts about other subjects, either plainly (total effect) or
as a path patch that lets the change reach the logits only directly and through later MLPs (later
attention outputs at the last position are frozen at their clean values).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np
import pandas as pd
import torch

from hopscope.engine import Site, replace, run_last_position
from hopscope.engine.interventions import Intervention
from hopscope.methods.recall.collect import LastPosition, logit_diff

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from hopscope.models.loaded import LoadedModel

HeadId = tuple[int, int]


# -- observational metrics --------------------------------------------------------------------------
def head_frame(lp: LastPosition) -> pd.DataFrame:
    """One row per (prompt, layer, head): ``dla``, ``attn_subject``, ``subject_dot``."""
    n, L, H = lp.attn_to_subject.shape
    dla, att, dot = lp.head_dla(), lp.attn_to_subject, lp.subject_dot()
    layer, head = np.meshgrid(np.arange(L), np.arange(H), indexing="ij")
    frames = []
    for i, it in enumerate(lp.items):
        frames.append(pd.DataFrame({
            "qid": it.qid, "subject": it.subject, "layer": layer.ravel(), "head": head.ravel(),
            "dla": dla[i].reshape(-1).numpy(), "attn_subject": att[i].reshape(-1).numpy(),
            "subject_dot": dot[i].reshape(-1).numpy(),
        }))
    return pd.concat(frames, ignore_index=True)


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    x, y = x - x.mean(), y - y.mean()
    denom = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / denom) if denom > 1e-12 else float("nan")


def head_summary(per_prompt: pd.DataFrame, causal: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per head: means of the per-prompt metrics, ``corr_attn_dot`` (Pearson across prompts),
    the causal drops when given, and ``rank`` (by path-patched drop, then DLA; 1 = most important)."""
    rows = []
    for (layer, head), g in per_prompt.groupby(["layer", "head"], sort=True):
        rows.append({
            "layer": int(layer), "head": int(head), "dla": g["dla"].mean(), "dla_std": g["dla"].std(ddof=0),
            "attn_subject": g["attn_subject"].mean(), "subject_dot": g["subject_dot"].mean(),
            "corr_attn_dot": _pearson(g["attn_subject"].to_numpy(), g["subject_dot"].to_numpy()),
        })
    out = pd.DataFrame(rows)
    if causal is not None and len(causal):
        means = causal.groupby(["layer", "head"])[["drop_total", "drop_path", "drop_direct"]].mean().reset_index()
        out = out.merge(means, on=["layer", "head"], how="left")
    else:
        out[["drop_total", "drop_path", "drop_direct"]] = np.nan
    out = out.sort_values(["drop_path", "dla"], ascending=False, na_position="last").reset_index(drop=True)
    out.insert(0, "rank", np.arange(1, len(out) + 1))
    out.insert(3, "head_name", [f"L{l}H{h}" for l, h in zip(out["layer"], out["head"])])
    return out


def candidate_heads(summary: pd.DataFrame, k: int) -> list[HeadId]:
    """The union of the top-``k`` heads by DLA, by attention to the subject, by subject dot product and
    by |correlation|: the heads worth a causal check when not all of them can be run."""
    picked: list[HeadId] = []
    for col, key in (("dla", None), ("attn_subject", None), ("subject_dot", None), ("corr_attn_dot", abs)):
        s = summary[col].abs() if key is abs else summary[col]
        for idx in s.fillna(-np.inf).sort_values(ascending=False).index[:k]:
            hid = (int(summary.at[idx, "layer"]), int(summary.at[idx, "head"]))
            if hid not in picked:
                picked.append(hid)
    return picked


def subject_ranks(lm: "LoadedModel", lp: LastPosition, heads: Iterable[HeadId]) -> pd.DataFrame:
    """Per head: median rank (0 = top) of the subject token in the vocabulary projection of its output, and
    the share of prompts where it is in the top 10 (does the head write the subject?)."""
    from hopscope.methods.recall.linearize import direction_logits

    rows = []
    for layer, head in heads:
        logits = direction_logits(lm, lp.heads[:, layer, head])
        chosen = logits.gather(-1, lp.subject_ids[:, None])
        rank = (logits > chosen).sum(-1).float()
        rows.append({"layer": layer, "head": head, "subject_rank": float(rank.median()),
                     "subject_top10_share": float((rank < 10).float().mean())})
    return pd.DataFrame(rows, columns=["layer", "head", "subject_rank", "subject_top10_share"])


# -- causal check ---------------------------------------------------------------------------------
def other_subject_means(lp: LastPosition) -> torch.Tensor:
    """``[n, L, H, d]``: for prompt i, each head's mean last-position output over prompts whose subject differs."""
    subjects = [it.subject for it in lp.items]
    out = torch.empty_like(lp.heads)
    for i, s in enumerate(subjects):
        others = [j for j, t in enumerate(subjects) if t != s]
        if not others:
            raise ValueError("mean-ablation needs prompts about at least two different subjects")
        out[i] = lp.heads[others].mean(0)
    return out


def run_rows(lm: "LoadedModel", prompt: str, rows: Sequence[Sequence[Intervention]], *,
             chunk: int = 96) -> torch.Tensor:
    """Last-position logits ``[len(rows), V]`` of ``prompt`` under each row's interventions (fast path, chunked)."""
    outs = [run_last_position(lm, prompt, list(rows[s:s + chunk])).logits for s in range(0, len(rows), chunk)]
    return torch.cat(outs)


def ablation_rows(lp: LastPosition, i: int, heads: Iterable[HeadId], means: torch.Tensor,
                  *, path: bool = True) -> tuple[list[list[Intervention]], list[tuple[HeadId, str]]]:
    """Intervention rows for prompt ``i``: per head, its output replaced by ``means[i, l, h]`` (``total``)
    and, with ``path``, the same with every later attention output frozen at its clean value (``path``)."""
    rows, labels = [], []
    L = lp.heads.shape[1]
    for layer, head in heads:
        swap = replace(Site(layer, "head_out", -1, head=head), means[i, layer, head])
        rows.append([swap])
        labels.append(((layer, head), "total"))
        if path:
            frozen = [replace(Site(l2, "attn_out", -1), lp.attn[i, l2]) for l2 in range(layer + 1, L)]
            rows.append([swap, *frozen])
            labels.append(((layer, head), "path"))
    return rows, labels


def head_ablation(lm: "LoadedModel", lp: LastPosition, heads: Iterable[HeadId] | None = None, *,
                  path: bool = True, means: torch.Tensor | None = None, progress: bool = False) -> pd.DataFrame:
    """Drop in the answer's logit difference when each head's last-position output is mean-ablated.

    One row per (prompt, head): ``drop_total`` (plain ablation), ``drop_path`` (effect only directly and
    through later MLPs), ``drop_direct`` (DLA of the change, final norm frozen). Positive = the head helps.
    """
    L, H = lp.heads.shape[1:3]
    heads = [(l, h) for l in range(L) for h in range(H)] if heads is None else list(heads)
    means = other_subject_means(lp) if means is None else means
    records = []
    iterator = enumerate(lp.items)
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(list(iterator), desc="head ablation", leave=False)
    for i, it in iterator:
        rows, labels = ablation_rows(lp, i, heads, means, path=path)
        logits = run_rows(lm, it.prompt, [[]] + rows)
        ld = logit_diff(logits, [it.answer_id] * len(logits))
        drops = (ld[0] - ld[1:]).tolist()
        by_head: dict[HeadId, dict[str, float]] = {}
        for (hid, kind), d in zip(labels, drops):
            by_head.setdefault(hid, {})[f"drop_{kind}"] = d
        for (layer, head), vals in by_head.items():
            direct = float(lp.u[i] @ (lp.heads[i, layer, head] - means[i, layer, head]))
            records.append({"qid": it.qid, "layer": layer, "head": head,
                            "drop_total": vals.get("drop_total", np.nan), "drop_path": vals.get("drop_path", np.nan),
                            "drop_direct": direct, "clean_logit_diff": float(ld[0])})
    return pd.DataFrame(records)


# -- figures ----------------------------------------------------------------------------------------
HEATMAP_METRICS = {
    "dla": ("direct logit attribution to the answer", "logit diff"),
    "attn_subject": ("attention from the last token to the subject", "attention"),
    "subject_dot": ("head output . subject unembedding", "dot product"),
    "corr_attn_dot": ("corr(attention to subject, subject dot) across prompts", "Pearson r"),
    "drop_total": ("drop in logit diff, mean-ablated", "logit diff"),
    "drop_path": ("drop in logit diff, path-patched (direct + later MLPs)", "logit diff"),
}


def head_heatmaps(summary: pd.DataFrame, title_suffix: str = "") -> dict[str, "Figure"]:
    """One (layer x head) heatmap per metric of ``summary`` that has any finite value."""
    from hopscope.report.figures import heatmap

    figs = {}
    for metric, (title, label) in HEATMAP_METRICS.items():
        if metric not in summary or not np.isfinite(summary[metric]).any():
            continue
        grid = summary.pivot(index="layer", columns="head", values=metric).sort_index()
        diverging = metric != "attn_subject"
        figs[metric] = heatmap(grid, title=title + title_suffix, colorbar_label=label, xlabel="head",
                               ylabel="layer", center=0.0 if diverging else None,
                               cmap=None if diverging else "magma")
    return figs
