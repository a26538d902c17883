"""The recall analysis as stages of pure, seeded shards (see :mod:`hopscope.pipeline`).

``observe`` (slices of prompts): the cached last-position pass, per-head metrics, the DLA decomposition and
the removal of each last-block component. ``patch`` (slices of prompts): path patching of every head (or of
the candidates). ``mlp`` (one shard): the MLP after the top mover head (chosen on the training half),
decomposed on every prompt, and what every layer's MLP writes. ``select`` (one shard): the mitigations,
chosen on the training half. ``mitigate`` (slices of prompts and text windows): every prompt and window
scored without and with each mitigation, through the engine. ``finish`` summarises, declares the claims and
hands the result to :mod:`hopscope.methods.recall.report`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pandas as pd
import torch

from hopscope.engine import score_tokens
from hopscope.methods.recall import heads as H
from hopscope.methods.recall import mitigation as MIT
from hopscope.methods.recall import mlp_decomposition as M
from hopscope.methods.recall import suppression as S
from hopscope.methods.recall.claims import claims as declare_claims
from hopscope.methods.recall.collect import LastPosition, check_family, collect, dla_components
from hopscope.methods.recall.queries import MAIN, RELATIONS, design, items, relation_name, relation_queries
from hopscope.methods.recall.report import build_report
from hopscope.methods.recall.settings import Settings
from hopscope.pipeline import Analysis, Context, Shard, Stage, execute
from hopscope.results import Result
from hopscope.stats import apply_holm, claims_frame

if TYPE_CHECKING:
    from hopscope.models.loaded import LoadedModel

Tables = dict[str, pd.DataFrame]
N_EXTRA_MOVERS = 3  # earlier mover heads added to the MLP decomposition as inputs of their own
N_RANKED_HEADS = 24  # heads whose subject rank is measured (the top ones by path-patched drop)


# ---- data -------------------------------------------------------------------------------------------------
def prepare(data: Any, settings: Settings) -> list[dict[str, Any]]:
    """The design rows: ``data`` (query records; default: the world-facts relation of the settings) and the
    other world-facts relations' prompts for the mitigation's cost."""
    queries = list(data) if data is not None else relation_queries(settings.relation, settings.n,
                                                                   shots=settings.shots, seed=settings.seed)
    if data is not None and settings.n is not None:
        queries = queries[: settings.n]
    present = {relation_name(settings.relation)} if data is None else {
        str(getattr(q, "relation", None) or (q.get("relation") if isinstance(q, dict) else "") or "") for q in queries}
    others = {r: relation_queries(r, settings.n_other, shots=settings.shots, seed=settings.seed)
              for r in RELATIONS if settings.n_other and relation_name(r) not in present}
    return design(queries, others, settings.seed)


def _rows(ctx: Context, qids: Sequence[str] | None = None, *, where: str | None = MAIN) -> list[dict[str, Any]]:
    keep = None if qids is None else set(qids)
    return [r for r in ctx.data if (where is None or r["set"] == where) and (keep is None or r["qid"] in keep)]


def _slices(qids: Sequence[str], size: int) -> list[list[str]]:
    return [list(qids[i:i + size]) for i in range(0, len(qids), size)]


def _main_qids(ctx: Context, split: str | None = None) -> list[str]:
    return [r["qid"] for r in _rows(ctx) if split is None or r["split"] == split]


# ---- stage: observe ---------------------------------------------------------------------------------------
def plan_observe(ctx: Context) -> list[dict[str, Any]]:
    return [{"qids": q} for q in _slices(_main_qids(ctx), ctx.settings.shard_size)]


def _prompt_table(lp: LastPosition, rows: Sequence[dict[str, Any]]) -> pd.DataFrame:
    s = score_tokens(lp.logits, lp.answer_ids)
    return pd.DataFrame({
        "qid": [r["qid"] for r in rows], "subject": [r["subject"] for r in rows],
        "answer": [r["answer"] for r in rows], "split": [r["split"] for r in rows],
        "source": [r["source"] for r in rows], "n_tokens": [it.n_tokens for it in lp.items],
        "prob": s["prob"].numpy(), "rank": s["rank"].numpy(), "logit_diff": lp.logit_diff.numpy()})


def work_observe(lm: "LoadedModel", ctx: Context, shard: Shard) -> Tables:
    rows = _rows(ctx, shard.payload["qids"])
    its = items(lm, rows)
    lp = collect(lm, its)
    out = {"prompts": _prompt_table(lp, rows), "heads_per_prompt": H.head_frame(lp),
           "dla_components": dla_components(lp), "final_layer_effects": S.final_layer_effects(lm, lp),
           "last_layer_dla": S.last_layer_dla(lp)}
    if ctx.settings.patch_source == "mean":
        n, L, Hh, d = lp.heads.shape
        sums = lp.heads.sum(0).reshape(L * Hh, d)
        out["head_output_sums"] = pd.DataFrame({
            "layer": np.repeat(np.arange(L), Hh), "head": np.tile(np.arange(Hh), L), "n": n,
            "sum": [v.tolist() for v in sums]})
    return out


# ---- stage: patch -----------------------------------------------------------------------------------------
def patched_heads(ctx: Context) -> list[tuple[int, int]]:
    """Every head, or the candidates of the observational summary (``heads="candidates"``)."""
    L, Hh = int(ctx.model["n_layers"]), int(ctx.model["n_heads"])
    if ctx.settings.heads == "all":
        return [(l, h) for l in range(L) for h in range(Hh)]
    return H.candidate_heads(H.head_summary(ctx.tables["heads_per_prompt"]), ctx.settings.candidates_k)


def plan_patch(ctx: Context) -> list[dict[str, Any]]:
    heads = [list(h) for h in patched_heads(ctx)]
    return [{"qids": q, "heads": heads} for q in _slices(_main_qids(ctx), ctx.settings.shard_size)]


def _mean_source(ctx: Context, n: int, shape: tuple[int, ...]) -> torch.Tensor:
    sums = ctx.tables["head_output_sums"]
    L, Hh, d = shape
    total = torch.zeros(L, Hh, d)
    count = torch.zeros(L, Hh, 1)
    for r in sums.itertuples():
        total[r.layer, r.head] += torch.tensor(np.asarray(r.sum, dtype=np.float32))
        count[r.layer, r.head] += r.n
    return (total / count).expand(n, L, Hh, d)


def work_patch(lm: "LoadedModel", ctx: Context, shard: Shard) -> Tables:
    rows = _rows(ctx, shard.payload["qids"])
    lp = collect(lm, items(lm, rows), patterns=False)
    if ctx.settings.patch_source == "mean":
        source = _mean_source(ctx, lp.n, tuple(lp.heads.shape[1:]))
    else:
        by_qid = {r["qid"]: r for r in _rows(ctx)}
        source = collect(lm, items(lm, [by_qid[r["source"]] for r in rows]), patterns=False).heads
    heads = [(int(l), int(h)) for l, h in shard.payload["heads"]]
    return {"head_patching": H.path_patching(lm, lp, heads, source, total=ctx.settings.total_effect)}


# ---- stage: mlp -------------------------------------------------------------------------------------------
def train_summary(ctx: Context) -> pd.DataFrame:
    """The head summary over the training half (the movers are chosen there)."""
    train = set(_main_qids(ctx, "train"))
    per = ctx.tables["heads_per_prompt"]
    pat = ctx.tables["head_patching"]
    return H.head_summary(per[per["qid"].isin(train)], pat[pat["qid"].isin(train)])


def choose_mover(summary: pd.DataFrame) -> dict[str, Any]:
    """The top mover (the first head by path-patched drop meeting the mover criteria; else the top head) and
    up to three earlier movers."""
    checked = summary[summary["drop_path"].notna()]
    movers = checked[checked["mover"]]
    top = movers.iloc[0] if len(movers) else checked.iloc[0]
    layer = int(top["layer"])
    extra = [[int(r.layer), int(r.head)] for r in movers.itertuples() if r.layer < layer][:N_EXTRA_MOVERS]
    return {"mover": [layer, int(top["head"])], "is_mover": bool(len(movers)), "extra": extra}


def plan_mlp(ctx: Context) -> list[dict[str, Any]]:
    summary = train_summary(ctx)
    ranked = summary[summary["drop_path"].notna()].head(N_RANKED_HEADS)
    choice = choose_mover(summary)
    return [{**choice, "ranked": [[int(r.layer), int(r.head)] for r in ranked.itertuples()]}]


def work_mlp(lm: "LoadedModel", ctx: Context, shard: Shard) -> Tables:
    """The MLP after the mover (the first MLP that reads its output: its own layer's, or the next layer's in
    parallel blocks), decomposed on every prompt; every MLP layer's output read through the unembedding."""
    p = shard.payload
    lp = collect(lm, items(lm, _rows(ctx)), patterns=False)
    layer, head = p["mover"]
    extra = [tuple(h) for h in p["extra"]]
    mlp_layer = layer
    if lm.adapter.parallel_residual:
        mlp_layer = min(layer + 1, lm.n_layers - 1)
        extra = [(layer, head)] + [h for h in extra if h != (layer, head)]
    decomp = M.decompose_mlp(lm, lp, mlp_layer, extra)
    decomp["mover"] = decomp["component"] == f"L{layer}H{head}"
    decomp["mover_criteria_met"] = bool(p["is_mover"])  # False: no head met them, the top head stands in
    return {"mlp_decomposition": decomp, "mlp_layers": M.mlp_layers(lm, lp),
            "head_subject_ranks": H.subject_ranks(lm, lp, [tuple(h) for h in p["ranked"]])}


# ---- stage: select ----------------------------------------------------------------------------------------
def plan_select(ctx: Context) -> list[dict[str, Any]]:
    return [{"qids": _main_qids(ctx, "train")}]


def work_select(lm: "LoadedModel", ctx: Context, shard: Shard) -> Tables:
    s = ctx.settings
    train = collect(lm, items(lm, _rows(ctx, shard.payload["qids"])), patterns=False)
    mits = MIT.propose(lm, train, k_heads=s.k_heads, k_neurons=s.k_neurons, factor=s.factor)
    return {"mitigations": pd.DataFrame([m.to_row() for m in mits],
                                        columns=["mitigation", "kind", "layer", "heads", "neurons", "factor",
                                                 "target", "direction"])}


# ---- stage: mitigate --------------------------------------------------------------------------------------
def plan_mitigate(ctx: Context) -> list[dict[str, Any]]:
    s = ctx.settings
    qids = [r["qid"] for r in ctx.data]
    out: list[dict[str, Any]] = [{"qids": q} for q in _slices(qids, 4 * s.shard_size)]
    windows = list(range(s.text_windows))
    out += [{"windows": w} for w in [windows[i:i + s.shard_size] for i in range(0, len(windows), s.shard_size)]]
    return out


def mitigations_of(tables: Tables) -> list[MIT.Mitigation]:
    return [MIT.Mitigation.from_row(r) for r in tables["mitigations"].to_dict("records")]


def work_mitigate(lm: "LoadedModel", ctx: Context, shard: Shard) -> Tables:
    mits = mitigations_of(ctx.tables)
    p = shard.payload
    if "qids" in p:
        rows = _rows(ctx, p["qids"], where=None)
        scores = MIT.score_prompts(lm, items(lm, rows), mits)
        sets = {r["qid"]: (r["split"] if r["set"] == MAIN else r["set"]) for r in rows}
        scores.insert(1, "eval_set", scores["qid"].map(sets))
        return {"mitigation_scores": scores}
    text, _ = MIT.generic_text()
    windows = MIT.text_windows(lm, text, window=ctx.settings.window, n=ctx.settings.text_windows)
    return {"mitigation_text": MIT.score_text(lm, [(f"text:{i}", windows[i]) for i in p["windows"]], mits)}


# ---- finish -----------------------------------------------------------------------------------------------
def derived_tables(ctx: Context) -> Tables:
    """Summaries the report and the claims read (all pure functions of the stage tables)."""
    t = ctx.tables
    test = _main_qids(ctx, "test")
    summary = H.head_summary(t["heads_per_prompt"], t["head_patching"])
    ranks = t["head_subject_ranks"].groupby(["layer", "head"])["subject_rank"].median().rename("subject_rank")
    summary = summary.merge(ranks.reset_index(), on=["layer", "head"], how="left")
    top = H.top_heads(t["head_patching"], _main_qids(ctx, "train"), ctx.settings.top_k)
    conc = H.concentration(t["head_patching"][t["head_patching"]["qid"].isin(set(test))], top)
    conc["top_heads"] = ",".join(f"L{l}H{h}" for l, h in top)
    return {
        "heads": summary, "train_heads": train_summary(ctx), "movers_concentration": conc,
        "mlp_decomposition_summary": M.decomposition_summary(t["mlp_decomposition"]),
        "mlp_layer_summary": M.mlp_layer_summary(t["mlp_layers"]),
        "final_layer_suppression": S.suppression_share(t["final_layer_effects"]),
        "mitigation": MIT.mitigation_summary(t["mitigation_scores"], t.get("mitigation_text")),
    }


def finish(ctx: Context) -> Result:
    tables = {k: v for k, v in ctx.tables.items() if k != "head_output_sums"}
    tables.update(derived_tables(ctx))
    result = Result("recall", ctx.settings.to_dict(), tables, model=dict(ctx.model))
    result.claims = apply_holm(claims_frame(declare_claims(tables, ctx.settings)))
    build_report(result)
    return result


ANALYSIS = Analysis(
    "recall", Settings,
    stages=[Stage("observe", plan_observe, work_observe), Stage("patch", plan_patch, work_patch),
            Stage("mlp", plan_mlp, work_mlp), Stage("select", plan_select, work_select),
            Stage("mitigate", plan_mitigate, work_mitigate)],
    finish=finish, prepare=prepare,
    title="Factual-recall mechanisms (Lv et al. 2024)",
)


def run(lm: "LoadedModel", data: Any = None, settings: Settings | None = None, *, run_folder: Any = None,
        progress: bool = True) -> Result:
    """Run the recall analysis on ``data`` (single-hop records with prompt, answer, subject; default: the
    settings' world-facts relation) and return its :class:`~hopscope.results.Result` (see docs/recall.md).

    ``run_folder``: a path (created, or resumed when it holds this run) or a RunFolder; finished shards are
    kept there, so an interrupted run resumes with identical tables.
    """
    settings = settings if settings is not None else Settings()
    check_family(lm)
    items(lm, prepare(data, settings))  # bad input fails here, in one line, before any work
    return execute(ANALYSIS, lm, data, settings, run_folder=run_folder, progress=progress)
