"""The whole factual-recall analysis on one query set, written into a run folder.

:func:`recall_study` chains the three parts: subject-moving heads (observational metrics and causal
ablation), the MLP decomposition after the top mover head, and final-layer suppression with its
mitigation (gain on held-out prompts, cost on generic text and other relations).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pandas as pd

from hopscope.methods.recall import heads as H
from hopscope.methods.recall import mlp_decomposition as M
from hopscope.methods.recall import suppression as S
from hopscope.methods.recall.collect import collect
from hopscope.methods.recall.queries import RELATIONS, prepare, query_shots, relation_name, relation_queries

if TYPE_CHECKING:
    from hopscope.models.loaded import LoadedModel
    from hopscope.report.run_folder import RunFolder

MOVER_MIN_ATTENTION = 0.2
MOVER_MIN_CORR = 0.2
MOVER_MIN_DLA = 0.1


@dataclass
class RecallResult:
    """Tidy tables of every part, the headline numbers, and seconds spent per stage."""

    tables: dict[str, pd.DataFrame]
    headline: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)
    mlp_layer: int | None = None


def mark_movers(summary: pd.DataFrame) -> pd.DataFrame:
    """Add ``mover``: the head attends to the subject (mean attention >= 0.2), writes more of it the more it
    attends (``corr_attn_dot`` >= 0.2), and helps the answer (mean DLA >= 0.1)."""
    out = summary.copy()
    out["mover"] = ((out["attn_subject"] >= MOVER_MIN_ATTENTION) & (out["corr_attn_dot"] >= MOVER_MIN_CORR)
                    & (out["dla"] >= MOVER_MIN_DLA))
    return out


def _other_queries(queries: Sequence[Any], n: int, seed: int) -> dict[str, list]:
    """The world-facts relations absent from ``queries``, with as many demonstrations as their first query."""
    present = {str(_relation_of(q)) for q in queries}
    shots = query_shots(queries[0])
    return {r: relation_queries(r, n, shots=shots, seed=seed) for r in RELATIONS
            if relation_name(r) not in present}


def _relation_of(q: Any) -> str:
    return (q.get("relation", "") if isinstance(q, dict) else getattr(q, "relation", "")) or ""


def _split(n: int, seed: int) -> tuple[list[int], list[int]]:
    perm = np.random.default_rng(seed).permutation(n)
    half = n // 2
    return sorted(perm[:half].tolist()), sorted(perm[half:].tolist())


def recall_study(
    lm: "LoadedModel",
    queries: Sequence[Any],
    run_folder: "RunFolder | None" = None,
    *,
    quick: bool = True,
    seed: int = 0,
    other_queries: dict[str, Sequence[Any]] | None = None,
    n_other: int | None = None,
    candidates_k: int = 3,
    k_heads: int = 2,
    k_neurons: int = 16,
    title: str = "",
    progress: bool = False,
) -> RecallResult:
    """Run the factual-recall analysis of ``queries`` (single-hop records: prompt, answer, subject).

    ``quick`` causally checks only the union of the top-``candidates_k`` heads by each metric (all heads
    otherwise) and evaluates costs on smaller sets (10 prompts per other relation and 8 text windows of 64
    tokens, vs 30 and 32). Mitigations are chosen on a seeded half of the prompts and scored on the other
    half. ``other_queries`` (relation -> records) default to ``n_other`` queries of each world-facts relation
    absent from ``queries`` (capital, continent, currency, language), with the same number of shots.
    Writes tables, figures and report sections into ``run_folder`` when given (the folder is not finished
    here). ``title`` prefixes the section titles (e.g. ``"3-shot"``).
    """
    t0 = time.monotonic()
    timings: dict[str, float] = {}

    def lap(name: str) -> None:
        nonlocal t0
        now = time.monotonic()
        timings[name] = round(now - t0, 2)
        t0 = now

    items = prepare(lm, queries)
    if len({it.subject for it in items}) < 2:
        raise ValueError("recall_study needs prompts about at least two different subjects")
    lp = collect(lm, items)
    lap("collect")

    # 1. heads --------------------------------------------------------------------------------------
    per_prompt = H.head_frame(lp)
    summary = H.head_summary(per_prompt)
    cands = H.candidate_heads(summary, candidates_k) if quick else None
    causal = H.head_ablation(lm, lp, cands, path=True, progress=progress)
    summary = mark_movers(H.head_summary(per_prompt, causal))
    movers = summary[summary["mover"]]
    top = movers.iloc[0] if len(movers) else summary.iloc[0]
    top_name = str(top["head_name"])
    checked = [(int(r.layer), int(r.head)) for r in summary.itertuples()
               if r.head_name == top_name or not np.isnan(r.drop_path)][:24]
    summary = summary.merge(H.subject_ranks(lm, lp, checked), on=["layer", "head"], how="left")
    lap("heads")

    # 2. MLP after the top mover head ----------------------------------------------------------------
    mlp_layer = int(top["layer"])
    extra = [(int(r.layer), int(r.head)) for r in movers.itertuples() if r.layer < mlp_layer][:3]
    decomp = M.decompose_mlp(lm, lp, mlp_layer, extra)
    decomp_summary = M.decomposition_summary(decomp)
    layers = M.mlp_layers(lm, lp)
    lap("mlp")

    # 3. final-layer suppression and mitigation ------------------------------------------------------
    train, test = _split(lp.n, seed)
    dla_n, _ = S.neuron_dla(lm, lp)
    neurons = S.suppressing_neurons(dla_n, k_neurons, train)
    effects = S.final_layer_effects(lm, lp, neurons)
    share = S.suppression_share(effects)
    attribution = S.last_layer_attribution(lm, lp)
    mitigations = S.propose_mitigations(lm, lp, train, k_heads=k_heads, k_neurons=k_neurons)
    n_other = n_other if n_other is not None else (10 if quick else 30)
    others = other_queries if other_queries is not None else _other_queries(queries, n_other, seed)
    text, text_source = S.generic_text()
    sets = [S.EvalSet.from_last_position("train", lp, train), S.EvalSet.from_last_position("held_out", lp, test)]
    sets += [S.EvalSet.from_items(lm, f"other:{r}", prepare(lm, list(q))) for r, q in others.items() if len(q)]
    sets.append(S.EvalSet.from_text(lm, text, window=64, n_windows=8 if quick else 32))
    evals = S.evaluate_mitigations(lm, mitigations, sets)
    mit = S.mitigation_summary(evals)
    lap("suppression")

    by_comp = share.set_index("component")
    block, attn = by_comp.loc["block"], by_comp.loc["attn"]
    writer = layers.sort_values(["answer_cand_top1_share", "mlp_dla"], ascending=False).iloc[0]
    mover_dec = decomp[decomp["component"] == top_name]
    best = mit.sort_values("train_gain_prob", ascending=False).iloc[0] if len(mit) else None
    headline: dict[str, Any] = {
        "n prompts": lp.n,
        "accuracy (top-1)": float((lp.logits.argmax(-1) == lp.answer_ids).float().mean()),
        "top head": str(summary.iloc[0]["head_name"]),
        "top head path drop": float(summary.iloc[0]["drop_path"]),
        "top mover head": top_name,
        "movers": int(summary["mover"].sum()),
        "top mover subject rank": float(summary.loc[summary["head_name"] == top_name, "subject_rank"].iloc[0]),
        "mlp after mover: gain on mover": float(mover_dec["part_gain"].mean()) if len(mover_dec) else float("nan"),
        "answer-writing mlp": int(writer["layer"]),
        "answer-writing mlp top-1 among answers": float(writer["answer_cand_top1_share"]),
        "last block lowers logit diff (share)": float(block["lowers_logit_diff"]),
        "last block lowers prob (share)": float(block["lowers_prob"]),
        "last attn lowers logit diff (share)": float(attn["lowers_logit_diff"]),
        "dla sum max error": float(_dla_error(lp)),
        "mlp parts sum max error": float(decomp["sum_error"].max()),
    }
    if best is not None:
        headline.update({
            "best mitigation (on train)": str(best["mitigation"]),
            "mitigation held-out p gain": float(best["gain_prob"]),
            "mitigation ppl change (rel)": float(best["ppl_change_rel"]),
            "mitigation other-relation acc change": float(best["other_accuracy_change"]),
        })
    tables = {
        "heads": summary, "heads_per_prompt": per_prompt, "head_ablation": causal,
        "dla_components": _component_frame(lp), "mlp_decomposition": decomp,
        "mlp_decomposition_summary": decomp_summary, "mlp_layers": layers,
        "final_layer_effects": effects, "final_layer_suppression": share, "final_layer_attribution": attribution,
        "mitigation_eval": evals, "mitigation": mit,
    }
    timings["total"] = round(sum(timings.values()), 2)
    result = RecallResult(tables, headline, timings, mlp_layer)
    if run_folder is not None:
        _write(run_folder, result, lp, title, text_source, neurons, train, test)
    return result


def _dla_error(lp) -> float:
    rest = lp.rest_dla()
    total = lp.head_dla().sum((1, 2)) + rest["embed"] + rest["attn_bias"].sum(1) + rest["mlp"].sum(1) + rest["constant"]
    return float((total - lp.logit_diff).abs().max())


def _component_frame(lp) -> pd.DataFrame:
    """Per prompt: DLA of the embedding, each layer's attention (heads + bias) and MLP, the constant, the
    observed logit difference, and their difference (exactly zero up to float error)."""
    rest = lp.rest_dla()
    attn = lp.head_dla().sum(-1) + rest["attn_bias"]
    rows = []
    for i, it in enumerate(lp.items):
        rows.append({"qid": it.qid, "component": "embed", "layer": -1, "dla": float(rest["embed"][i])})
        rows.extend({"qid": it.qid, "component": "attn", "layer": l, "dla": float(attn[i, l])}
                    for l in range(attn.shape[1]))
        rows.extend({"qid": it.qid, "component": "mlp", "layer": l, "dla": float(rest["mlp"][i, l])}
                    for l in range(attn.shape[1]))
        rows.append({"qid": it.qid, "component": "constant", "layer": -1, "dla": float(rest["constant"][i])})
    df = pd.DataFrame(rows)
    totals = df.groupby("qid", sort=False)["dla"].sum()
    ld = pd.Series(lp.logit_diff.numpy(), index=[it.qid for it in lp.items])
    df["logit_diff"] = df["qid"].map(ld)
    df["sum_error"] = df["qid"].map(totals - ld)
    return df


def _write(run: "RunFolder", res: RecallResult, lp, title: str, text_source: str, neurons: list[int],
           train: list[int], test: list[int]) -> None:
    pre = f"{title}: " if title else ""
    tag = f" ({title})" if title else ""
    t = res.tables
    for name, df in t.items():
        run.write_table(name, df)
    run.write_table("timings", pd.DataFrame([{"stage": k, "seconds": v} for k, v in res.timings.items()]))
    slug = "".join(ch if ch.isalnum() else "_" for ch in title.lower()).strip("_")
    prefix = f"{slug}-" if slug else ""
    figs = []
    for metric, fig in H.head_heatmaps(t["heads"], tag).items():
        figs.append(run.save_figure(f"{prefix}heads-{metric}", fig).stem)
    top = t["heads"].head(20)
    cols = ["rank", "head_name", "dla", "attn_subject", "subject_dot", "corr_attn_dot", "drop_total", "drop_path",
            "drop_direct", "subject_rank", "mover"]
    h = res.headline
    run.add_section(
        f"{pre}Subject-moving heads",
        text=(f"{lp.n} prompts. For every head at the last position: direct logit attribution (DLA) to the "
              "answer, logit(answer) - mean logit, through the final norm frozen at each prompt's residual; "
              "attention from the last token to the subject span; dot product of its output with the "
              "subject token's unembedding; their Pearson correlation across prompts. Causal: the head's "
              "output replaced by its mean over prompts about other subjects (drop_total), or path-patched so "
              "the change reaches the logits only directly and through later MLPs (drop_path; later attention "
              "outputs frozen). subject_rank: median rank of the subject token in the head output's vocabulary "
              "projection (checked heads only). Movers: attention >= 0.2, correlation >= 0.2, DLA >= 0.1. "
              f"DLA terms + rest reproduce the logit difference to {h['dla sum max error']:.1e}."),
        figures=figs, tables={"heads (ranked by path-patched drop)": top[cols], "all heads": "heads"},
        headline={k: h[k] for k in ("n prompts", "accuracy (top-1)", "top head", "top head path drop",
                                    "top mover head", "movers", "top mover subject rank", "dla sum max error")})
    layer = res.mlp_layer
    ds = t["mlp_decomposition_summary"]
    example = t["mlp_decomposition"]
    example = example[example["qid"] == example["qid"].iloc[0]][
        ["subject", "component", "lstsq_coef", "part_gain", "part_dla", "subject_rank", "answer_rank",
         "answer_cand_rank", "part_top", "input_top"]]
    f1 = run.save_figure(f"{prefix}mlp-decomposition", M.decomposition_figure(ds, layer)).stem
    f2 = run.save_figure(f"{prefix}mlp-layers", M.mlp_layers_figure(t["mlp_layers"])).stem
    run.add_section(
        f"{pre}MLP {layer}: amplify or erase head outputs",
        text=(f"The MLP of layer {layer} (right after the top mover head) at the last position, decomposed against "
              "its input components. lstsq_coef: least-squares coefficient of the MLP output on each head's "
              "output (> 0 amplify, < 0 erase). The linearised parts freeze the pre-MLP norm scale and the "
              "activation (gate) so the MLP is linear in its input: parts + constant equal the MLP output "
              f"exactly (max error {h['mlp parts sum max error']:.1e}). part_gain: a part's coefficient along its "
              "own input; subject_rank / answer_rank: rank of the subject and answer tokens in the part's "
              "vocabulary projection (0 = top); answer_cand_rank: rank of the answer among all prompts' answers "
              "in the prompt-specific part (mean over prompts removed; 0 = singles out the right answer). "
              "The second figure and the 'MLP layers' table ask the same of every layer's whole MLP output."),
        figures=[f1, f2], tables={"components (means over prompts)": ds, "one prompt": example,
                                  "MLP layers": t["mlp_layers"]},
        headline={k: h[k] for k in ("mlp after mover: gain on mover", "answer-writing mlp",
                                    "answer-writing mlp top-1 among answers", "mlp parts sum max error")})
    share = t["final_layer_suppression"]
    f3 = run.save_figure(f"{prefix}final-layer-suppression", S.suppression_figure(share)).stem
    attr = (t["final_layer_attribution"].groupby("component", sort=False)["dla"]
            .agg(["mean", lambda s: float((s < 0).mean())]).reset_index())
    attr.columns = ["component", "mean_dla", "negative_share"]
    run.add_section(
        f"{pre}Final-layer anti-overconfidence",
        text=("Each component of the last block removed at the last position (exact replay of the last layer): "
              "lowers_* is the share of prompts on which the component lowers the correct answer's logit "
              f"difference / probability. 'neurons' is the group of {len(neurons)} neurons with the most negative "
              "mean DLA on the training half."),
        figures=[f3], tables={"suppression share": share, "DLA attribution (last layer)": attr},
        headline={k: h[k] for k in ("last block lowers logit diff (share)", "last block lowers prob (share)",
                                    "last attn lowers logit diff (share)")})
    mit = t["mitigation"]
    f4 = run.save_figure(f"{prefix}mitigation", S.mitigation_figure(mit)).stem
    others = sorted({s.split(":", 1)[1] for s in t["mitigation_eval"]["eval_set"] if s.startswith("other:")})
    run.add_section(
        f"{pre}Mitigation: gain and cost",
        text=(f"Edits chosen on {len(train)} training prompts, scored on {len(test)} held-out prompts (the headline "
              "mitigation is the one with the best gain on the training prompts): scale the "
              "suppressing last-layer heads or neurons to 0, or project the more suppressing last-layer "
              "sublayer's mean output (an answer-agnostic direction) out of it, at every position. Cost: "
              f"perplexity on generic text ({text_source}) and first-token accuracy on other relations "
              f"({', '.join(others) or 'none'})."),
        figures=[f4], tables={"mitigations": mit, "all measurements": "mitigation_eval"},
        headline={k: h[k] for k in ("best mitigation (on train)", "mitigation held-out p gain",
                                    "mitigation ppl change (rel)",
                                    "mitigation other-relation acc change") if k in h})
