"""The memory-injection analysis as stages of pure, seeded shards (see :mod:`hopscope.pipeline`).

``pairs`` (slices of pairs): which pairs are usable, the answer's probability on the obscure and the explicit
prompt, and (for the norm-scaled grid) residual and memory norms. ``projection``: per-layer and per-head
projections. ``grid`` (slices of the *search* pairs): every (layer, tau) cell with the gold and random
memories. ``controls`` (every pair): at the best cell (chosen on the search pairs by the criterion), gold,
random, other-bridge and part-of-speech memories, and gold on the explicit prompt. ``heads``: the gold memory
projected on each head's output space, each head ablated. ``few_heads`` (held-out pairs): the top heads
(ranked on the search pairs) against random sets of as many heads. ``lens`` (one shard): an attention lens for
the best layer, its held-out KL beside its baselines, and its head scores on the obscure prompts.
"""

from __future__ import annotations

import os
import random
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pandas as pd
from hopscope.engine import first_token_id, prompt_pass, run_with_cache, score_tokens
from hopscope.methods.injection import controls as C
from hopscope.methods.injection import heads as HD
from hopscope.methods.injection.claims import claims as declare_claims
from hopscope.methods.injection.grid import Cell, Where, injection_rows, make_cells
from hopscope.methods.injection.memories import MemoryBank, make_memory
from hopscope.methods.injection.pairs import (
    InjectionPair, as_pairs, fed_prompt, load_pairs, query_start, world_facts_pairs,
)
from hopscope.methods.injection.projections import projections
from hopscope.methods.injection.report import build_report
from hopscope.methods.injection.settings import Settings
from hopscope.methods.injection.summary import best_cell
from hopscope.methods.injection.tables import derived_tables
from hopscope.pipeline import Analysis, Context, Shard, Stage
from hopscope.results import Result

if TYPE_CHECKING:
    from hopscope.models.loaded import LoadedModel

Tables = dict[str, pd.DataFrame]


# ---- data -------------------------------------------------------------------------------------------------
def prepare(data: Any, settings: Settings) -> list[dict[str, Any]]:
    """The design: pairs (two-hop records, pairs, a file or ``"handwritten"``; default: the study's world-facts
    two-hop queries) in a seeded order, the first ``search_prompts`` marked ``search``, the rest ``held-out``."""
    if isinstance(data, (str, os.PathLike)):
        data = load_pairs(data)
    pairs = as_pairs(data) if data is not None else world_facts_pairs(seed=settings.seed)
    order = list(pairs)
    random.Random(settings.seed).shuffle(order)
    order = order[: settings.n_pairs] if settings.n_pairs is not None else order
    n_search = len(order) if settings.search_prompts is None else min(settings.search_prompts, len(order))
    return [{**p.to_dict(), "split": "search" if i < n_search else "held-out", "order": i} for i, p in enumerate(order)]


def _pair(row: dict[str, Any]) -> InjectionPair:
    return InjectionPair(row["qid"], row["obscure"], row["explicit"], row["bridge"], row["answer"])


def _slices(qids: Sequence[str], size: int) -> list[list[str]]:
    return [list(qids[i:i + size]) for i in range(0, len(qids), size)]


def _usable(ctx: Context, split: str | None = None) -> list[str]:
    t = ctx.tables["pairs"]
    t = t[t["usable"]]
    return [q for q, s in zip(t["qid"], t["split"]) if split is None or s == split]


def _rows(ctx: Context, qids: Sequence[str]) -> list[dict[str, Any]]:
    by = {r["qid"]: r for r in ctx.data}
    return [by[q] for q in qids]


class Fed:
    """A pair's prompts as the model sees them, and where an injection goes."""

    def __init__(self, lm: "LoadedModel", row: dict[str, Any], s: Settings) -> None:
        self.pair = _pair(row)
        self.obscure = fed_prompt(lm, self.pair.obscure, s.prompt_bos)
        self.explicit = fed_prompt(lm, self.pair.explicit, s.prompt_bos)
        self.gold = make_memory(lm, "gold", 0, self.pair.bridge, space=s.memory_space, bos=s.memory_bos)
        self.where = self.at(lm, self.obscure, s)

    @staticmethod
    def at(lm: "LoadedModel", prompt: str, s: Settings) -> Where:
        return Where.of(s.positions, len(lm.to_ids(prompt)), query_start(lm, prompt))


# ---- stage: pairs -----------------------------------------------------------------------------------------
def plan_pairs(ctx: Context) -> list[dict[str, Any]]:
    return [{"qids": q} for q in _slices([r["qid"] for r in ctx.data], 4 * ctx.settings.shard_size)]


def work_pairs(lm: "LoadedModel", ctx: Context, shard: Shard) -> Tables:
    s = ctx.settings
    rows, fed = [], []
    for r in _rows(ctx, shard.payload["qids"]):
        base = {"qid": r["qid"], "split": r["split"], "order": r["order"], "answer": r["answer"],
                "bridge": r["bridge"], "obscure": r["obscure"], "explicit": r["explicit"]}
        try:
            f = Fed(lm, r, s)
            first_token_id(lm.tokenizer, r["answer"])
        except ValueError as err:
            rows.append({**base, "usable": False, "reason": str(err)})
            continue
        fed.append(f)
        rows.append({**base, "usable": True, "reason": "", "n_tokens": len(lm.to_ids(f.obscure)),
                     "query_start": query_start(lm, f.obscure), "memory_tokens": len(f.gold.ids),
                     "memory_token_ids": " ".join(map(str, f.gold.ids))})
    out = pd.DataFrame(rows)
    for kind in ("obscure", "explicit"):
        vals = {}
        for f in fed:  # the clean pass the later stages' passes share (its prefix stays cached)
            prompt = getattr(f, kind)
            logits = prompt_pass(lm, prompt, [[]], start=Fed.at(lm, prompt, s).start).logits
            sc = score_tokens(logits, [first_token_id(lm.tokenizer, f.pair.answer)])
            vals[f.pair.qid] = (float(sc["prob"][0]), float(sc["logprob"][0]), int(sc["rank"][0]))
        for i, col in enumerate(("p", "logp", "rank")):
            out[f"{col}_{kind}"] = out["qid"].map(lambda q, i=i: vals[q][i] if q in vals else np.nan)
    tables = {"pairs": out}
    if s.rel:
        tables["norms"] = _norms(lm, fed, s)
    return tables


def _norms(lm: "LoadedModel", fed: Sequence[Fed], s: Settings) -> pd.DataFrame:
    """Per (qid, layer): median |resid_pre| over the injected positions (position 0 left out) and |gold memory|."""
    if not fed:
        return pd.DataFrame(columns=["qid", "layer", "resid_norm", "gold_norm"])
    bank = MemoryBank(lm, s.source)
    prompts = [f.obscure for f in fed]
    _, acts = run_with_cache(lm, prompts, components=("resid_pre",))
    batch = lm.encode(prompts)
    rows = []
    for i, f in enumerate(fed):
        off, n = batch.offsets[i], batch.lengths[i]
        first = max(1, f.where.start if f.where.start >= 0 else n - 1)
        for layer in range(lm.n_layers):
            v = acts["resid_pre", layer][i, off + first: off + n].norm(dim=-1)
            rows.append({"qid": f.pair.qid, "layer": layer, "resid_norm": float(v.median()),
                         "gold_norm": float(bank.vectors([f.gold], layer).norm())})
    return pd.DataFrame(rows)


# ---- stage: projection ------------------------------------------------------------------------------------
def plan_projection(ctx: Context) -> list[dict[str, Any]]:
    s = ctx.settings
    if not s.projection:
        return []
    qids = _usable(ctx)
    qids = qids[: s.projection_pairs] if s.projection_pairs is not None else qids
    return [{"qids": q} for q in _slices(qids, s.shard_size)]


def work_projection(lm: "LoadedModel", ctx: Context, shard: Shard) -> Tables:
    fed = [Fed(lm, r, ctx.settings) for r in _rows(ctx, shard.payload["qids"])]
    layers, heads = projections(lm, [f.pair.qid for f in fed], [f.explicit for f in fed], [f.obscure for f in fed],
                                [f.pair.answer for f in fed], [f.pair.bridge for f in fed], k=ctx.settings.top_k)
    return {"projection_layers": layers, "projection_heads": heads}


# ---- stage: grid ------------------------------------------------------------------------------------------
def grid_cells(ctx: Context) -> list[Cell]:
    s = ctx.settings
    layers = list(range(0, int(ctx.model["n_layers"]), s.layer_stride))
    if not s.rel:
        return make_cells(layers, s.taus)
    norms = ctx.tables["norms"]
    search = norms[norms["qid"].isin(set(_usable(ctx, "search")))]
    med = search.groupby("layer")[["resid_norm", "gold_norm"]].median()
    return make_cells(layers, s.taus, s.rel, med["resid_norm"].to_dict(), med["gold_norm"].to_dict())


def plan_grid(ctx: Context) -> list[dict[str, Any]]:
    cells = [c.to_dict() for c in grid_cells(ctx)]
    return [{"qids": q, "cells": cells} for q in _slices(_usable(ctx, "search"), ctx.settings.shard_size)]


def work_grid(lm: "LoadedModel", ctx: Context, shard: Shard) -> Tables:
    s = ctx.settings
    cells = [Cell(**c) for c in shard.payload["cells"]]
    bank = MemoryBank(lm, s.source)
    frames = []
    for r in _rows(ctx, shard.payload["qids"]):
        f = Fed(lm, r, s)
        mems = [f.gold] + C.random_memories(lm, len(f.gold.ids), s.grid_random, s.seed, f.pair.qid)
        df = injection_rows(lm, f.obscure, f.pair.answer, cells, mems, bank, f.where, s.batch_size)
        frames.append(df.assign(qid=f.pair.qid, split=r["split"], prompt_kind="obscure"))
    return {"grid": pd.concat(frames, ignore_index=True)}


# ---- stage: controls --------------------------------------------------------------------------------------
def chosen_cell(ctx: Context) -> dict[str, Any]:
    return best_cell(ctx.tables["grid"], ctx.settings.criterion, ctx.settings.trim_percentile)


def plan_controls(ctx: Context) -> list[dict[str, Any]]:
    cell = chosen_cell(ctx)
    return [{"qids": q, "cell": cell} for q in _slices(_usable(ctx), ctx.settings.shard_size)]


def work_controls(lm: "LoadedModel", ctx: Context, shard: Shard) -> Tables:
    s = ctx.settings
    c = shard.payload["cell"]
    cell = Cell(int(c["layer"]), str(c["grid"]), float(c["step"]), float(c["tau"]))
    bank = MemoryBank(lm, s.source)
    all_pairs = [_pair(r) for r in ctx.data]
    pos = C.pos_memories(lm, s.pos_words, space=s.memory_space, bos=s.memory_bos)
    frames = []
    for r in _rows(ctx, shard.payload["qids"]):
        f = Fed(lm, r, s)
        mems = ([f.gold] + C.random_memories(lm, len(f.gold.ids), s.random_memories, s.seed, f.pair.qid)
                + C.other_bridges(lm, all_pairs, f.pair, s.other_bridges, s.seed, space=s.memory_space,
                                  bos=s.memory_bos) + pos)
        ob = injection_rows(lm, f.obscure, f.pair.answer, [cell], mems, bank, f.where, s.batch_size)
        ex = injection_rows(lm, f.explicit, f.pair.answer, [cell], [f.gold], bank, Fed.at(lm, f.explicit, s),
                            s.batch_size)
        frames += [d.assign(prompt_kind=kind, qid=f.pair.qid, split=r["split"])
                   for kind, d in (("obscure", ob), ("explicit", ex))]
    return {"controls": pd.concat(frames, ignore_index=True)}


# ---- stage: heads -----------------------------------------------------------------------------------------
def plan_heads(ctx: Context) -> list[dict[str, Any]]:
    if not ctx.settings.heads:
        return []
    cell = chosen_cell(ctx)
    return [{"qids": q, "cell": cell} for q in _slices(_usable(ctx), ctx.settings.shard_size)]


def work_heads(lm: "LoadedModel", ctx: Context, shard: Shard) -> Tables:
    s = ctx.settings
    layer, tau = int(shard.payload["cell"]["layer"]), float(shard.payload["cell"]["tau"])
    bank = MemoryBank(lm, s.source)
    inj, abl = [], []
    for r in _rows(ctx, shard.payload["qids"]):
        f = Fed(lm, r, s)
        m = bank.vectors([f.gold], layer)[0]
        inj.append(HD.head_injection(lm, f.obscure, f.pair.answer, layer, tau, m, f.where, s.batch_size)
                   .assign(qid=f.pair.qid, split=r["split"], layer=layer, tau=tau))
        for kind in ("obscure", "explicit"):
            prompt = getattr(f, kind)
            abl.append(HD.head_ablation(lm, prompt, f.pair.answer, layer, Fed.at(lm, prompt, s), s.batch_size)
                       .assign(qid=f.pair.qid, split=r["split"], layer=layer, prompt_kind=kind))
    return {"head_injection": pd.concat(inj, ignore_index=True), "head_ablation": pd.concat(abl, ignore_index=True)}


def top_heads(head_injection: pd.DataFrame, search: Sequence[str], k: int) -> list[int]:
    """The ``k`` heads whose projected gold memory raises log p(answer) most on the search prompts."""
    sub = head_injection[head_injection["qid"].isin(set(search))]
    means = sub.groupby("head")["dlogp"].mean().sort_values(ascending=False, kind="stable")
    return [int(h) for h in means.index[:k]]


def plan_few_heads(ctx: Context) -> list[dict[str, Any]]:
    s = ctx.settings
    if not s.heads or "head_injection" not in ctx.tables:
        return []
    n_heads = int(ctx.model["n_heads"])
    k = min(s.top_heads, n_heads - 1)
    if k < 1:
        return []
    top = top_heads(ctx.tables["head_injection"], _usable(ctx, "search"), k)
    others = [list(x) for x in HD.random_head_sets(n_heads, k, top, s.random_head_sets, s.seed)]
    held = _usable(ctx, "held-out") or _usable(ctx)
    cell = chosen_cell(ctx)
    return [{"qids": q, "cell": cell, "top": top, "others": others} for q in _slices(held, s.shard_size)]


def work_few_heads(lm: "LoadedModel", ctx: Context, shard: Shard) -> Tables:
    s = ctx.settings
    p = shard.payload
    layer, tau = int(p["cell"]["layer"]), float(p["cell"]["tau"])
    bank = MemoryBank(lm, s.source)
    frames = []
    for r in _rows(ctx, p["qids"]):
        f = Fed(lm, r, s)
        m = bank.vectors([f.gold], layer)[0]
        frames.append(HD.head_set_injection(lm, f.obscure, f.pair.answer, layer, tau, m, p["top"], p["others"],
                                            f.where, s.batch_size).assign(qid=f.pair.qid, split=r["split"]))
    return {"few_heads": pd.concat(frames, ignore_index=True)}


# ---- stage: lens ------------------------------------------------------------------------------------------
def plan_lens(ctx: Context) -> list[dict[str, Any]]:
    s = ctx.settings
    if not s.lens:
        return []
    layer = chosen_cell(ctx)["layer"] if s.lens_layer is None else int(s.lens_layer) % int(ctx.model["n_layers"])
    return [{"layer": int(layer), "qids": _usable(ctx)}]


def work_lens(lm: "LoadedModel", ctx: Context, shard: Shard) -> Tables:
    from hopscope.lenses.attention_lens import head_scores
    from hopscope.train.lens import train_from_corpus

    s = ctx.settings
    layer = int(shard.payload["layer"])
    res = train_from_corpus(lm, [layer], s.lens_corpus, n_train=s.lens_train_texts, n_held=s.lens_held_texts,
                            max_tokens=s.lens_max_tokens, positions=s.lens_positions, seed=shard.seed,
                            rank=s.lens_rank, init=s.lens_init, steps=s.lens_steps, batch_size=s.lens_batch,
                            lr=s.lens_lr)
    lens = res.lenses[layer]
    fed = [Fed(lm, r, s) for r in _rows(ctx, shard.payload["qids"])]
    scores = head_scores(lm, lens, [f.obscure for f in fed], [f.pair.answer for f in fed], [f.pair.qid for f in fed],
                         log_unigram=res.unigram)
    info = {k: (str(v) if not isinstance(v, (int, float, bool)) or v is None else v) for k, v in res.info.items()}
    return {"lens_kl": res.held[layer].assign(layer=layer), "lens_history": res.history.assign(layer=layer),
            "lens_heads": scores.assign(layer=layer), "lens_info": pd.DataFrame([{"layer": layer, **info}])}


# ---- finish -----------------------------------------------------------------------------------------------
def finish(ctx: Context) -> Result:
    tables = dict(ctx.tables)
    tables.update(derived_tables(tables, ctx.settings))
    result = Result("injection", ctx.settings.to_dict(), tables, model=dict(ctx.model))
    result.claims = declare_claims(tables, ctx.settings)
    build_report(result, ctx.settings)
    return result


ANALYSIS = Analysis(
    "injection", Settings,
    stages=[Stage("pairs", plan_pairs, work_pairs), Stage("projection", plan_projection, work_projection),
            Stage("grid", plan_grid, work_grid), Stage("controls", plan_controls, work_controls),
            Stage("heads", plan_heads, work_heads), Stage("few_heads", plan_few_heads, work_few_heads),
            Stage("lens", plan_lens, work_lens)],
    finish=finish, prepare=prepare,
    title="Memory injection and attention lenses (Sakarvadia et al. 2023)",
)


def run(lm: "LoadedModel", data: Any = None, settings: Settings | None = None, *, run_folder: Any = None,
        progress: bool = True) -> Result:
    """Run memory injection on ``data`` (two-hop records or :class:`InjectionPair` s; default: the study's
    world-facts two-hop queries) and return its :class:`~hopscope.results.Result` (see docs/injection.md).

    ``run_folder``: a path (created, or resumed when it holds this run) or a RunFolder; finished shards are
    kept there, so an interrupted run resumes with identical tables.
    """
    from hopscope.pipeline import execute

    settings = settings if settings is not None else Settings()
    if settings.lens_layer is not None and not -lm.n_layers <= settings.lens_layer < lm.n_layers:
        raise ValueError(f"lens_layer {settings.lens_layer} is out of range: {lm.name} has {lm.n_layers} layers "
                         f"(0..{lm.n_layers - 1})")
    check_data(lm, prepare(data, settings), settings)  # bad input fails here, in one line, before any work
    return execute(ANALYSIS, lm, data, settings, run_folder=run_folder, progress=progress)


def check_data(lm: "LoadedModel", rows: Sequence[dict[str, Any]], settings: Settings) -> None:
    """ValueError (one line) unless some search pair is usable: its prompts, memory and answer tokenize."""
    reasons = []
    for r in rows:
        try:
            Fed(lm, r, settings)
            first_token_id(lm.tokenizer, r["answer"])
        except ValueError as err:
            reasons.append(f"{r['qid']}: {err}")
            continue
        if r["split"] == "search":
            return
    detail = f" ({'; '.join(reasons[:2])})" if reasons else ""
    raise ValueError(f"no usable search pair among {len(rows)} pairs{detail}")

