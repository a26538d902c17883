"""MLPs as activations that amplify or erase head outputs (Lv et al. 2024).

The MLP output at the last position is decomposed against the components of its input (each head of
its own layer, chosen earlier heads, the attention bias, and the rest of the residual):

* least squares: ``mlp_out ~ sum_j a_j head_j + remainder`` (``a_j > 0`` amplifies head j, ``< 0`` erases it);
* linearisation with the activation pattern (and the pre-MLP norm scale) frozen: the MLP becomes linear
  in its input, so ``mlp_out = sum_c part_c + constant`` exactly, one part per input component.

Each part is read through the unembedding: does the subject ("France") get amplified, does a part point
at the answer ("Paris") like an implicit ``get_capital(X)``?
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd
import torch

from hopscope.methods.recall.collect import LastPosition
from hopscope.methods.recall.linearize import direction_logits, mlp_spec

if TYPE_CHECKING:
    from hopscope.models.loaded import LoadedModel

HeadId = tuple[int, int]


def _rank(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Rank (0 = top) of ``ids[i]`` in each row of ``logits`` ``[n, V]``."""
    chosen = logits.gather(-1, ids[:, None])
    return (logits > chosen).sum(-1)


def candidate_rank(logits: torch.Tensor, answer_ids: torch.Tensor) -> torch.Tensor:
    """Rank (0 = top) of each prompt's answer among the distinct answers of all prompts, under the
    prompt-specific part of ``logits`` ``[n, V]`` (the mean over prompts removed): does a component
    single out *this* prompt's answer, like an implicit ``get_capital(X)``? Chance of rank 0: 1 / #answers."""
    cands = torch.unique(answer_ids)
    centered = logits - logits.mean(0, keepdim=True)
    sub = centered[:, cands]
    return (sub > centered.gather(-1, answer_ids[:, None])).sum(-1)


def _top(lm: "LoadedModel", logits: torch.Tensor, k: int) -> list[str]:
    return ["|".join(lm.tokenizer.decode([t]).strip() or repr(lm.tokenizer.decode([t]))
                     for t in row) for row in logits.topk(k, -1).indices.tolist()]


def input_components(lp: LastPosition, layer: int, extra_heads: Sequence[HeadId] = (),
                     *, parallel: bool = False) -> tuple[list[str], torch.Tensor]:
    """Names and vectors ``[n, k, d]`` of the MLP input's components; they sum to ``lp.mlp_in[:, layer]``.

    Sequential blocks: every head of ``layer``, its attention bias, the ``extra_heads`` of earlier layers,
    then ``resid_rest`` (the residual before, minus those heads). Parallel blocks read ``resid_pre``, so
    heads of ``layer`` itself are not inputs.
    """
    n, _, H, d = lp.heads.shape
    names, vecs = [], []
    if not parallel:
        for h in range(H):
            names.append(f"L{layer}H{h}")
            vecs.append(lp.heads[:, layer, h])
        if lp.attn_bias[layer].abs().max() > 0:
            names.append(f"L{layer}.attn_bias")
            vecs.append(lp.attn_bias[layer].expand(n, d))
    for l2, h2 in extra_heads:
        if l2 < layer and f"L{l2}H{h2}" not in names:
            names.append(f"L{l2}H{h2}")
            vecs.append(lp.heads[:, l2, h2])
    x = lp.mlp_in[:, layer]
    rest = x - torch.stack(vecs, 1).sum(1) if vecs else x
    names.append("resid_rest")
    vecs.append(rest)
    return names, torch.stack(vecs, 1)


def least_squares(mlp_out: torch.Tensor, directions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per prompt, least-squares coefficients ``[n, k]`` of ``mlp_out`` ``[n, d]`` on ``directions``
    ``[n, k, d]``, and the remainder ``[n, d]`` (orthogonal to every direction)."""
    a = directions.transpose(1, 2).double()  # [n, d, k]
    coef = torch.linalg.lstsq(a, mlp_out.double()[..., None], driver="gelsd").solution[..., 0]
    remainder = mlp_out.double() - (a @ coef[..., None])[..., 0]
    return coef.float(), remainder.float()


def decompose_mlp(lm: "LoadedModel", lp: LastPosition, layer: int, extra_heads: Sequence[HeadId] = (),
                  *, k: int = 5) -> pd.DataFrame:
    """One row per (prompt, component) of the last-position MLP output of ``layer``.

    Columns: ``lstsq_coef`` (heads only; NaN for the rest), ``input_norm``, ``part_norm``, ``part_gain``
    (the part's coefficient along its own input: > 0 amplified, < 0 erased), ``part_dla`` (the part's
    direct logit attribution to the answer), ``subject_rank``/``answer_rank`` of the part's vocabulary
    projection (0 = top), ``input_subject_rank``, ``part_top``/``input_top`` tokens. The rows ``constant``
    (biases) and ``remainder`` (least-squares residual) complete the picture; ``sum_error`` on every
    row is the max |sum of parts + constant - MLP output| for that prompt (exact up to float error).
    """
    spec = mlp_spec(lm, layer)
    parallel = lm.adapter.parallel_residual
    names, comps = input_components(lp, layer, extra_heads, parallel=parallel)
    x, out = lp.mlp_in[:, layer], lp.mlp[:, layer]
    parts, const = spec.linear_parts(x, comps)
    sum_error = (parts.sum(1) + const - out).abs().amax(-1)
    head_idx = [j for j, nm in enumerate(names) if "H" in nm and not nm.endswith("bias")]
    coef, remainder = least_squares(out, comps[:, head_idx])
    subj, ans = lp.subject_ids, lp.answer_ids
    qids = [it.qid for it in lp.items]
    rows = []
    for j, name in enumerate(names):  # one component at a time: [n, V] projections, not [n, k, V]
        part_logits, in_logits = direction_logits(lm, parts[:, j]), direction_logits(lm, comps[:, j])
        gain = (parts[:, j] * comps[:, j]).sum(-1) / comps[:, j].pow(2).sum(-1).clamp_min(1e-12)
        col = head_idx.index(j) if j in head_idx else None
        rows.append(pd.DataFrame({
            "qid": qids, "mlp_layer": layer, "component": name,
            "lstsq_coef": coef[:, col].numpy() if col is not None else np.nan,
            "input_norm": comps[:, j].norm(dim=-1).numpy(), "part_norm": parts[:, j].norm(dim=-1).numpy(),
            "part_gain": gain.numpy(), "part_dla": (parts[:, j] * lp.u).sum(-1).numpy(),
            "subject_rank": _rank(part_logits, subj).numpy(), "answer_rank": _rank(part_logits, ans).numpy(),
            "answer_cand_rank": candidate_rank(part_logits, ans).numpy(),
            "input_subject_rank": _rank(in_logits, subj).numpy(),
            "part_top": _top(lm, part_logits, k), "input_top": _top(lm, in_logits, k),
        }))
    extra = {"constant": const, "remainder": remainder}
    if float(const.abs().max()) == 0.0:  # no biases anywhere (Llama): nothing to show
        del extra["constant"]
    for name, vec in extra.items():
        lg = direction_logits(lm, vec)
        rows.append(pd.DataFrame({
            "qid": qids, "mlp_layer": layer, "component": name, "lstsq_coef": np.nan, "input_norm": np.nan,
            "part_norm": vec.norm(dim=-1).numpy(),
            "part_gain": np.nan, "part_dla": (vec * lp.u).sum(-1).numpy(),
            "subject_rank": _rank(lg, subj).numpy(), "answer_rank": _rank(lg, ans).numpy(),
            "answer_cand_rank": candidate_rank(lg, ans).numpy(), "input_subject_rank": np.nan,
            "part_top": _top(lm, lg, k), "input_top": "",
        }))
    df = pd.concat(rows, ignore_index=True)
    df["mlp_norm"] = np.tile(out.norm(dim=-1).numpy(), len(names) + len(extra))
    df["sum_error"] = np.tile(sum_error.numpy(), len(names) + len(extra))
    return df


def decomposition_summary(df: pd.DataFrame) -> pd.DataFrame:
    """One row per component: means of coefficients, norms and DLA; medians of ranks; share of prompts
    where the part amplifies its input (``part_gain > 0``) and where the subject is in the part's top 10."""
    g = df.groupby("component", sort=False)
    out = g.agg(lstsq_coef=("lstsq_coef", "mean"), input_norm=("input_norm", "mean"),
                part_norm=("part_norm", "mean"), part_gain=("part_gain", "mean"), part_dla=("part_dla", "mean"),
                subject_rank=("subject_rank", "median"), answer_rank=("answer_rank", "median"),
                input_subject_rank=("input_subject_rank", "median"))
    out["amplified_share"] = g["part_gain"].apply(lambda s: float((s > 0).mean()) if s.notna().any() else np.nan)
    out["subject_top10_share"] = g["subject_rank"].apply(lambda s: float((s < 10).mean()))
    out["answer_top10_share"] = g["answer_rank"].apply(lambda s: float((s < 10).mean()))
    out["answer_cand_top1_share"] = g["answer_cand_rank"].apply(lambda s: float((s == 0).mean()))
    return out.reset_index()


def mlp_layers(lm: "LoadedModel", lp: LastPosition) -> pd.DataFrame:
    """One row per (prompt, layer): the MLP's DLA to the answer, the rank (0 = top) of the answer and of the
    subject in its output's vocabulary projection, and ``answer_cand_rank``: the rank of this prompt's answer
    among all prompts' answers in the prompt-specific part of that projection (:func:`candidate_rank`).
    Which MLP writes the answer (the paper's implicit ``get_capital(X)``), which the subject?"""
    frames = []
    dla = lp.rest_dla()["mlp"]
    qids = [it.qid for it in lp.items]
    for layer in range(lp.mlp.shape[1]):
        lg = direction_logits(lm, lp.mlp[:, layer])
        frames.append(pd.DataFrame({
            "qid": qids, "layer": layer, "mlp_dla": dla[:, layer].numpy(),
            "answer_rank": _rank(lg, lp.answer_ids).numpy(), "subject_rank": _rank(lg, lp.subject_ids).numpy(),
            "answer_cand_rank": candidate_rank(lg, lp.answer_ids).numpy()}))
    return pd.concat(frames, ignore_index=True)


def mlp_layer_summary(per_prompt: pd.DataFrame) -> pd.DataFrame:
    """One row per layer of :func:`mlp_layers`: mean DLA, median ranks, shares of prompts with the answer /
    subject in the top 10 and with the answer first among all answers, and ``chance`` = 1 / #answers."""
    g = per_prompt.groupby("layer", sort=True)
    out = g.agg(mlp_dla=("mlp_dla", "mean"), answer_rank=("answer_rank", "median"),
                subject_rank=("subject_rank", "median")).reset_index()
    out["answer_top10_share"] = g["answer_rank"].apply(lambda s: float((s < 10).mean())).to_numpy()
    out["subject_top10_share"] = g["subject_rank"].apply(lambda s: float((s < 10).mean())).to_numpy()
    out["answer_cand_top1_share"] = g["answer_cand_rank"].apply(lambda s: float((s == 0).mean())).to_numpy()
    return out
