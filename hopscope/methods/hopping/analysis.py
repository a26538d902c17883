"""The hopping analysis as pipeline stages of pure, seeded shards.

``knowledge`` (shards of queries) -> ``query`` (one shard per selected query: its back-patching rows and, for the
nested resolution sample, its knockout rows in one ``generate`` on the query's prompt, and its sublayer
projections) -> ``patchscope`` (shards of the resolution sample: every query's rows on the one shared target
prompt) -> ``finish`` (summaries, stages, claims, figures and prose, without the model). The selection is a pure
function of the knowledge table, the settings and the seed: the incorrect and correct groups in a seeded order,
cut to ``n_incorrect`` / ``n_correct``; the resolution sample is the first ``n_resolve`` of each.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pandas as pd

from hopscope.engine import generate, run_with_cache
from hopscope.methods.hopping import backpatch as BP
from hopscope.methods.hopping import knockout as KO
from hopscope.methods.hopping import patchscope as PS
from hopscope.methods.hopping import projection as PR
from hopscope.methods.hopping import queries as Q
from hopscope.methods.hopping import report
from hopscope.methods.hopping.claims import claims
from hopscope.methods.hopping.knowledge import knowledge_table
from hopscope.methods.hopping.settings import Settings, layer_grid
from hopscope.methods.hopping.stages import resolution_stages
from hopscope.pipeline import Analysis, Context, Shard, Stage
from hopscope.results import Result
from hopscope.stats import claims_frame

if TYPE_CHECKING:
    from hopscope.models.loaded import LoadedModel

GROUPS = ("incorrect", "correct")


def prepare(data: Any, settings: Settings) -> list:
    settings.validate()
    return Q.prepare(data, settings.knowledge)


# ---- knowledge ------------------------------------------------------------------------------------------
def _knowledge_settings(ctx: Context) -> Any:
    """The knowledge settings of either analysis (hopping nests them; the knowledge analysis is them)."""
    return getattr(ctx.settings, "knowledge", ctx.settings)


def plan_knowledge(ctx: Context) -> list[list[str]]:
    size = max(1, int(_knowledge_settings(ctx).shard_queries))
    ids = [str(q.qid) for q in ctx.data]
    return [ids[i:i + size] for i in range(0, len(ids), size)]


def work_knowledge(lm: "LoadedModel", ctx: Context, shard: Shard) -> dict[str, pd.DataFrame]:
    k = _knowledge_settings(ctx)
    qs = Q.by_qid(ctx.data)
    return {"knowledge": knowledge_table(lm, [qs[i] for i in shard.payload], k.rule, criterion=k.criterion,
                                         batch_size=k.batch_size)}


# ---- selection ------------------------------------------------------------------------------------------
def selection(ctx: Context) -> dict[str, list[str]]:
    """Per group, the selected qids in their seeded order (population 'all': every query under 'all')."""
    s: Settings = ctx.settings
    kn = ctx.tables["knowledge"]
    if s.population == "all":
        return {"all": Q.sample(kn["qid"].tolist(), s.n_incorrect, s.seed, "all")}
    limits = {"incorrect": s.n_incorrect, "correct": s.n_correct}
    return {g: Q.sample(kn.loc[kn["group"] == g, "qid"].tolist(), limits[g], s.seed, g) for g in GROUPS}


def _in_data_order(ctx: Context, chosen: dict[str, list[str]]) -> list[tuple[str, str]]:
    group = {qid: g for g, ids in chosen.items() for qid in ids}
    return [(str(q.qid), group[str(q.qid)]) for q in ctx.data if str(q.qid) in group]


def plan_query(ctx: Context) -> list[dict[str, Any]]:
    """One shard per selected query: its back-patching (if sampled for it) and knockout and projections (if in
    the nested resolution sample), all on the query's own prompt."""
    s: Settings = ctx.settings
    n = ctx.model["n_layers"]
    for name in ("layers", "patchscope_layers", "patchscope_target_layers", "knockout_layers"):  # fail before work
        layer_grid(getattr(s, name), n, name=name)
    chosen = selection(ctx)
    back = {qid for ids in chosen.values() for qid in ids} if s.backpatch else set()
    resolve = {qid for ids in _resolve_sample(s, chosen).values() for qid in ids} if s.resolve else set()
    qs = Q.by_qid(ctx.data)
    out = []
    for qid, g in _in_data_order(ctx, chosen):
        if qid in back or qid in resolve:
            partner = Q.partner(qs[qid], ctx.data, s.seed) if qid in back and "unrelated" in s.controls else None
            out.append({"qid": qid, "group": g, "backpatch": qid in back, "resolve": qid in resolve,
                        "partner": partner})
    return out


def _resolve_sample(s: Settings, chosen: dict[str, list[str]]) -> dict[str, list[str]]:
    return {g: ids if s.n_resolve is None else ids[:s.n_resolve] for g, ids in chosen.items()}


def work_query(lm: "LoadedModel", ctx: Context, shard: Shard) -> dict[str, pd.DataFrame]:
    s: Settings = ctx.settings
    qs = Q.by_qid(ctx.data)
    p = shard.payload
    q = qs[p["qid"]]
    comps = ("resid_post", *[c for c in s.projections if c != "resid_post"]) if p["resolve"] else ("resid_post",)
    logits, acts = run_with_cache(lm, q.prompt, components=comps)
    bp_specs, bp_rows, ko_specs, ko_rows = [], [], [], []
    if p["backpatch"]:
        partner = qs.get(p["partner"]) if p["partner"] else None
        partner_acts = run_with_cache(lm, partner.prompt, components=("resid_post",))[1] if partner else None
        controls = s.controls if p["group"] in ("incorrect", "all") else ()
        bp_specs, bp_rows = BP.backpatch_rows(lm, q, layer_grid(s.layers, lm.n_layers), acts, variants=s.variants,
                                              controls=controls, control_variants=s.control_variants,
                                              partner=partner, partner_acts=partner_acts, seed=shard.seed)
    if p["resolve"]:
        ko_specs, ko_rows = KO.knockout_rows(lm, q, layer_grid(s.knockout_layers, lm.n_layers),
                                             k=s.knockout_window, keys=s.knockout_keys)
    rows = [[], *bp_rows, *ko_rows]  # one clean row shared by both tables
    start = min([Q.last(lm, q), *(sp["position"] for sp in bp_specs)])
    g = generate(lm, q.prompt, rows, max_new_tokens=s.rule.max_new_tokens, start=start,
                 stop=s.rule.stopper(lm, [Q.answers(q)] * len(rows)), first_logits=True, batch_size=s.batch_size)
    nb = 1 + len(bp_rows)
    out = {"backpatch": pd.DataFrame(columns=list(BP.COLUMNS)), "knockout": pd.DataFrame(columns=list(KO.COLUMNS)),
           "projections": pd.DataFrame(columns=list(PR.COLUMNS))}
    if p["backpatch"]:
        out["backpatch"] = BP.backpatch_table(lm, q, bp_specs, g.tokens[:nb], g.first_logits[:nb], s.rule)
    if p["resolve"]:
        out["knockout"] = KO.knockout_table(lm, q, ko_specs, [g.tokens[0], *g.tokens[nb:]], s.rule)
        out["projections"] = PR.projection_table(lm, q, logits, acts, s.projections)
    return out


def plan_patchscope(ctx: Context) -> list[list[str]]:
    """The resolution sample in chunks that fill one batch of the shared target prompt."""
    s: Settings = ctx.settings
    if not s.resolve:
        return []
    n = ctx.model["n_layers"]
    per_query = 2 * len(layer_grid(s.patchscope_layers, n)) * len(layer_grid(s.patchscope_target_layers, n))
    size = max(1, s.batch_size // per_query)
    chosen = _resolve_sample(s, selection(ctx))
    ids = [qid for qid, _ in _in_data_order(ctx, chosen)]
    return [ids[i:i + size] for i in range(0, len(ids), size)]


def work_patchscope(lm: "LoadedModel", ctx: Context, shard: Shard) -> dict[str, pd.DataFrame]:
    s: Settings = ctx.settings
    qs = Q.by_qid(ctx.data)
    return {"patchscope": PS.patchscope_batch(lm, [qs[i] for i in shard.payload],
                                              layer_grid(s.patchscope_layers, lm.n_layers), s.rule,
                                              target_layers=layer_grid(s.patchscope_target_layers, lm.n_layers),
                                              targets=s.patchscope_targets, batch_size=s.batch_size)}


# ---- finish ---------------------------------------------------------------------------------------------
def finish(ctx: Context) -> Result:
    s: Settings = ctx.settings
    t = dict(ctx.tables)
    groups = dict(zip(t["knowledge"]["qid"], t["knowledge"]["group"]))
    if s.backpatch and "backpatch" in t:
        bq = BP.query_summary(t["backpatch"])
        bq.insert(1, "group", bq["qid"].map(groups))
        t["backpatch_queries"] = bq
    if s.resolve and "patchscope" in t:
        t["patchscope_layers"] = PS.first_target_layers(t["patchscope"])
        t["knockout_layers"] = KO.first_effect(t["knockout"])
        qids = list(dict.fromkeys(t["projections"]["qid"]))
        t["stages"] = resolution_stages(qids, groups, t["patchscope_layers"], t["knockout_layers"],
                                        t["projections"], target=s.patchscope_targets[0])
    result = Result("hopping", s.to_dict(), t, claims=claims_frame(claims(t, s, ctx.model.get("n_layers"))))
    report.complete(result, s, ctx.model)
    return result


ANALYSIS = Analysis(
    "hopping", Settings,
    stages=[Stage("knowledge", plan_knowledge, work_knowledge), Stage("query", plan_query, work_query),
            Stage("patchscope", plan_patchscope, work_patchscope)],
    finish=finish, prepare=prepare,
    title="Hopping too late: back-patching, Patchscopes, knockout and resolution stages (Biran et al. 2024)",
)
