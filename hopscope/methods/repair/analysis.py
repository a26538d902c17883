"""The repair analysis as stages of pure, seeded shards (see :mod:`hopscope.pipeline`).

``knowledge`` (the hopping analysis's knowledge filter, shards of queries) -> ``memories`` (the correct and
incorrect queries, split by bridge entity; each query's self, gold and random memory) -> ``mitigation`` (one
shard: the final-layer mitigation candidates) -> ``train`` (shards of training queries: every candidate of every
policy on each query's prompt, one ``generate`` per query) -> ``heldout`` (shards of held-out queries: the
policies chosen on train, their controls and no repair, one ``generate`` per query) -> ``text`` (windows of
plain text: every chosen policy at every position) -> ``finish`` (choices, summaries, claims, report, without
the model). The split and the choices are pure functions of the earlier tables, the settings and the seed.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Sequence

import pandas as pd

from hopscope.data import Dataset

from hopscope.engine import first_token_id, run_with_cache
from hopscope.methods.hopping import queries as Q
from hopscope.methods.hopping.analysis import plan_knowledge, work_knowledge
from hopscope.methods.injection.memories import MemoryBank
from hopscope.methods.recall.mitigation import generic_text, text_windows
from hopscope.methods.repair import choose as CH
from hopscope.methods.repair import policies as P
from hopscope.methods.repair.claims import claims as declare_claims
from hopscope.methods.repair.decode import ROW_COLUMNS, decode_rows, text_nll
from hopscope.methods.repair.memories import COLUMNS as MEMORY_COLUMNS
from hopscope.methods.repair.memories import memories_of, memory_table
from hopscope.methods.repair.mitigations import COLUMNS as MITIGATION_COLUMNS
from hopscope.methods.repair.mitigations import recall_candidates, train_candidates
from hopscope.methods.repair.report import build_report
from hopscope.methods.repair.settings import Settings
from hopscope.methods.repair.split import cap_per_entity, entity_keys, split_queries
from hopscope.methods.repair.summary import heldout_summary, perplexity_summary
from hopscope.pipeline import Analysis, Context, Shard, Stage, execute
from hopscope.results import Result
from hopscope.stats import apply_holm, claims_frame

if TYPE_CHECKING:
    from hopscope.models.loaded import LoadedModel

Tables = dict[str, pd.DataFrame]
GROUPS = ("incorrect", "correct")
TEXT_COLUMNS = ("window", "policy", "memory_qid", "nll", "n_tokens")
STAGE_TABLES = {"memories": MEMORY_COLUMNS, "mitigation_candidates": MITIGATION_COLUMNS, "train": ROW_COLUMNS,
                "heldout": ROW_COLUMNS, "text": TEXT_COLUMNS}
SPLIT_COLUMNS = ("qid", "group", "entity", "split")


def prepare(data: Any, settings: Settings) -> list:
    settings.validate()
    if isinstance(data, (str, os.PathLike)):
        data = Dataset.load(data)
    queries = Q.prepare(data, settings.knowledge)
    for q in queries:  # bad input fails here, in one line, before any work
        for name in ("prompt", "first_hop_prompt", "e2", "e3"):
            if not str(getattr(q, name, "") or "").strip():
                raise ValueError(f"query {q.qid}: needs a non-empty {name}")
    return queries


def table(ctx: Context, name: str) -> pd.DataFrame:
    """A stage's merged table, or an empty one with its columns when the stage had nothing to do."""
    return ctx.tables[name] if name in ctx.tables else pd.DataFrame(columns=list(STAGE_TABLES[name]))


def _slices(ids: Sequence[str], size: int) -> list[list[str]]:
    return [list(ids[i:i + size]) for i in range(0, len(ids), size)]


# ---- the design: which queries, which side ----------------------------------------------------------------
def design(ctx: Context) -> pd.DataFrame:
    """The correct and incorrect queries (data order; at most ``max_per_entity`` per bridge entity and
    ``n_queries`` in all, seeded), their entity and side; empty when fewer than two queries or bridge entities
    are left (nothing can be held out: the report says so)."""
    s: Settings = ctx.settings
    kn = ctx.tables["knowledge"]
    group = dict(zip(kn["qid"], kn["group"]))
    qs = Q.by_qid(ctx.data)
    pool = [str(q.qid) for q in ctx.data if group.get(str(q.qid)) in GROUPS]
    keys = entity_keys({qid: Q.bridges(qs[qid]) for qid in pool})
    pool = cap_per_entity(keys, s.max_per_entity, s.seed)
    if s.n_queries is not None:
        keep = set(Q.sample(pool, s.n_queries, s.seed, "repair"))
        pool = [qid for qid in pool if qid in keep]
    keys = {qid: keys[qid] for qid in pool}
    if len(set(keys.values())) < 2:
        return pd.DataFrame(columns=list(SPLIT_COLUMNS))
    sides = split_queries(keys, {qid: group[qid] for qid in pool}, s.heldout_fraction, s.seed)
    return pd.DataFrame({"qid": pool, "group": [group[q] for q in pool], "entity": [keys[q] for q in pool],
                         "split": [sides[q] for q in pool]})


def _qids(ctx: Context, split: str) -> list[str]:
    m = table(ctx, "memories")
    return m.loc[m["split"] == split, "qid"].tolist()


def plan_memories(ctx: Context) -> list[dict[str, Any]]:
    return [{"qids": q} for q in _slices(design(ctx)["qid"].tolist(), 4 * ctx.settings.shard_queries)]


def work_memories(lm: "LoadedModel", ctx: Context, shard: Shard) -> Tables:
    s: Settings = ctx.settings
    d = design(ctx).set_index("qid")
    qs = Q.by_qid(ctx.data)
    kn = ctx.tables["knowledge"]
    mine = [qs[q] for q in shard.payload["qids"]]
    return {"memories": memory_table(lm, mine, kn[kn["qid"].isin(shard.payload["qids"])], d["split"].to_dict(),
                                     d["entity"].to_dict(), s.rule, space=s.memory_space, bos=s.memory_bos,
                                     seed=s.seed, batch_size=s.batch_size)}


# ---- mitigation candidates ----------------------------------------------------------------------------------
def plan_mitigation(ctx: Context) -> list[dict[str, Any]]:
    s: Settings = ctx.settings
    if "mitigation" not in s.families or not len(design(ctx)):
        return []
    return [{"from": s.mitigation_from, "qids": _qids(ctx, "train") if s.mitigation_from == "train" else []}]


def work_mitigation(lm: "LoadedModel", ctx: Context, shard: Shard) -> Tables:
    s: Settings = ctx.settings
    if shard.payload["from"] == "recall":
        return {"mitigation_candidates": recall_candidates(lm, s)}
    qs = Q.by_qid(ctx.data)
    return {"mitigation_candidates": train_candidates(lm, [qs[q] for q in shard.payload["qids"]], s)}


def _mitigation_rows(ctx: Context) -> list[dict[str, Any]]:
    t = table(ctx, "mitigation_candidates")
    if not len(t):
        return []
    rows = t.to_dict("records")
    if ctx.settings.mitigation_from == "recall":
        rows = [r for r in rows if bool(r["chosen"])]
    return [{k: _plain(v) for k, v in r.items() if k not in ("proposed_on", "train_gain_prob", "chosen")}
            for r in rows]


def _plain(v: Any) -> Any:
    """A JSON-able value (Parquet gives lists back as arrays)."""
    if hasattr(v, "tolist"):
        return v.tolist()
    return v


# ---- train ----------------------------------------------------------------------------------------------------
def plan_train(ctx: Context) -> list[dict[str, Any]]:
    mits = _mitigation_rows(ctx)
    return [{"qids": q, "mitigations": mits} for q in _slices(_qids(ctx, "train"), ctx.settings.shard_queries)]


def work_train(lm: "LoadedModel", ctx: Context, shard: Shard) -> Tables:
    s: Settings = ctx.settings
    fam = set(s.families)
    pairs = P.backpatch_pairs(s, lm.n_layers) if "backpatch" in fam else []
    cells = P.injection_cells(s, lm.n_layers) if "injection" in fam else []
    bank = MemoryBank(lm, s.source) if cells else None
    qs = Q.by_qid(ctx.data)
    mem = table(ctx, "memories").set_index("qid")
    frames = []
    for qid in shard.payload["qids"]:
        q = qs[qid]
        qp = P.QueryPrompt(lm, q, s, sorted({a for a, _ in pairs}))
        specs, rows = [P.Spec("none")], [[]]
        for a, b in pairs:
            specs.append(P.Spec("backpatch", P.pair_name([(a, b)]), s=a, t=b))
            rows.append(P.backpatch([(a, b)], qp.states, qp.patch_at))
        own = memories_of(mem.loc[qid])["self"]
        for layer, tau in cells:
            v = bank.vectors([own], layer)[0] if own is not None else None
            specs.append(P.Spec("self_injection", P.cell_name(layer, tau), layer=layer, tau=tau))
            rows.append(P.injection(v, layer, tau, qp.where.position))
        for m in shard.payload["mitigations"]:
            specs.append(P.Spec("mitigation", m["mitigation"], layer=int(m["layer"])))
            rows.append(P.mitigation(lm, m))
        df = decode_rows(lm, q, specs, rows, qp.start, s.rule, batch_size=s.batch_size)
        frames.append(df.assign(group=mem.loc[qid, "group"]))
    return {"train": pd.concat(frames, ignore_index=True)}


# ---- held-out -------------------------------------------------------------------------------------------------
def choices(ctx: Context) -> dict[str, Any]:
    """What is applied to the held-out queries: the chosen back-patch pairs, injection cell and mitigation."""
    s: Settings = ctx.settings
    gains = CH.candidate_gains(table(ctx, "train"))
    out: dict[str, Any] = {}
    if "backpatch" in s.families:
        out["backpatch"] = CH.choose_backpatch(gains, s.backpatch_set)
    if "injection" in s.families:
        out["injection"] = CH.choose_cell(gains)
    if "mitigation" in s.families:
        mits = _mitigation_rows(ctx)
        name = CH.choose_mitigation(gains) if s.mitigation_from == "train" else (mits[0]["mitigation"] if mits
                                                                                 else None)
        out["mitigation"] = next((m for m in mits if m["mitigation"] == name), None)
    return out


def plan_heldout(ctx: Context) -> list[dict[str, Any]]:
    choice = choices(ctx)
    return [{"qids": q, "choice": choice} for q in _slices(_qids(ctx, "held-out"), ctx.settings.shard_queries)]


def policy_rows(lm: "LoadedModel", ctx: Context, choice: dict[str, Any], qid: str,
                qp: "P.QueryPrompt") -> tuple[list[P.Spec], list[list]]:
    """The held-out rows of one query: no repair, each chosen policy and its control."""
    s: Settings = ctx.settings
    specs, rows = [P.Spec("none")], [[]]
    pairs = choice.get("backpatch") or []
    if pairs:
        name = P.pair_name(pairs)
        specs += [P.Spec("backpatch", name), P.Spec("backpatch_random", f"random vectors at {name}")]
        rows += [P.backpatch(pairs, qp.states, qp.patch_at),
                 P.random_backpatch(pairs, qp.states, qp.patch_at, s.seed, qid)]
    cell = choice.get("injection")
    if cell:
        bank = MemoryBank(lm, s.source)
        mems = memories_of(table(ctx, "memories").set_index("qid").loc[qid])
        for policy, kind in P.MEMORY_OF.items():
            m = mems[kind]
            v = bank.vectors([m], cell["layer"])[0] if m is not None else None
            specs.append(P.Spec(policy, P.cell_name(cell["layer"], cell["tau"]), layer=cell["layer"], tau=cell["tau"]))
            rows.append(P.injection(v, cell["layer"], cell["tau"], qp.where.position))
    mit = choice.get("mitigation")
    if mit:
        control = P.random_mitigation(lm, mit, s.seed)
        specs += [P.Spec("mitigation", mit["mitigation"], layer=int(mit["layer"])),
                  P.Spec("mitigation_random", control["mitigation"], layer=int(mit["layer"]))]
        rows += [P.mitigation(lm, mit), P.mitigation(lm, control)]
    return specs, rows


def work_heldout(lm: "LoadedModel", ctx: Context, shard: Shard) -> Tables:
    s: Settings = ctx.settings
    choice = shard.payload["choice"]
    qs = Q.by_qid(ctx.data)
    group = table(ctx, "memories").set_index("qid")["group"]
    frames = []
    for qid in shard.payload["qids"]:
        q = qs[qid]
        qp = P.QueryPrompt(lm, q, s, sorted({a for a, _ in choice.get("backpatch") or []}))
        specs, rows = policy_rows(lm, ctx, choice, qid, qp)
        frames.append(decode_rows(lm, q, specs, rows, qp.start, s.rule, batch_size=s.batch_size)
                      .assign(group=group[qid]))
    return {"heldout": pd.concat(frames, ignore_index=True)}


# ---- plain text -----------------------------------------------------------------------------------------------
def plan_text(ctx: Context) -> list[dict[str, Any]]:
    """Windows of plain text; window i carries the memories of the i-th held-out query that has a memory."""
    s: Settings = ctx.settings
    if not s.text_windows or not len(table(ctx, "train")):
        return []
    m = table(ctx, "memories")
    carriers = m.loc[(m["split"] == "held-out") & (m["memory_tokens"] > 0), "qid"].tolist()
    choice = choices(ctx)
    windows = list(range(s.text_windows))
    return [{"windows": w, "memory_qids": [carriers[i % len(carriers)] if carriers else "" for i in w],
             "choice": choice} for w in _slices(windows, max(1, s.shard_queries))]


def work_text(lm: "LoadedModel", ctx: Context, shard: Shard) -> Tables:
    s: Settings = ctx.settings
    p = shard.payload
    choice = p["choice"]
    text, _ = generic_text()
    windows = text_windows(lm, text, window=s.window, n=s.text_windows)
    pairs = choice.get("backpatch") or []
    cell = choice.get("injection")
    bank = MemoryBank(lm, s.source) if cell else None
    mem = table(ctx, "memories").set_index("qid")
    records = []
    for w, carrier in zip(p["windows"], p["memory_qids"]):
        win = windows[w]
        names, rows = ["none"], [[]]
        if pairs:
            _, acts = run_with_cache(lm, win, components=("resid_post",), layers=sorted({a for a, _ in pairs}))
            names.append("backpatch")
            rows.append(P.backpatch(pairs, {a: acts["resid_post", a][0] for a, _ in pairs}, None))
        if cell and carrier:
            mems = memories_of(mem.loc[carrier])
            for policy, kind in P.MEMORY_OF.items():
                m = mems[kind]
                names.append(policy)
                rows.append(P.injection(bank.vectors([m], cell["layer"])[0] if m is not None else None,
                                        cell["layer"], cell["tau"], None))
        if choice.get("mitigation"):
            names.append("mitigation")
            rows.append(P.mitigation(lm, choice["mitigation"], None))
        nll = text_nll(lm, win, rows)
        n_tokens = len(lm.to_ids(win)) - 1
        records += [{"window": int(w), "policy": name, "memory_qid": carrier if P.FAMILY_OF[name] == "injection"
                     else "", "nll": float(v), "n_tokens": n_tokens} for name, v in zip(names, nll)]
    return {"text": pd.DataFrame(records, columns=list(TEXT_COLUMNS))}


# ---- finish ---------------------------------------------------------------------------------------------------
def choice_table(ctx: Context) -> pd.DataFrame:
    """One row per policy family: what was chosen on train, its training net gain and n, the in-sample oracle."""
    s: Settings = ctx.settings
    train = table(ctx, "train")
    gains = CH.candidate_gains(train)
    choice = choices(ctx) if len(train) else {}
    rows = []
    for family, policy in (("backpatch", "backpatch"), ("injection", "self_injection"), ("mitigation", "mitigation")):
        if family not in choice:
            continue
        c = choice[family]
        name = (P.pair_name(c) if family == "backpatch" and c else P.cell_name(c["layer"], c["tau"])
                if family == "injection" and c else c["mitigation"] if family == "mitigation" and c else "")
        g = gains[(gains["policy"] == policy) & (gains["candidate"] == name)]
        k, n = CH.oracle_fix_rate(train, policy) if len(train) else (0, 0)
        rows.append({"family": family, "policy": policy, "chosen": name,
                     "candidates": int((gains["policy"] == policy).sum()),
                     "train_net": float(g["net"].iloc[0]) if len(g) else float("nan"),
                     "train_fixed": int(g["fixed"].iloc[0]) if len(g) else 0,
                     "train_broke": int(g["broke"].iloc[0]) if len(g) else 0,
                     "n_train": int(g["n"].iloc[0]) if len(g) else 0,
                     "oracle_fixed": k, "oracle_n_incorrect": n, "oracle_fix_rate": k / n if n else float("nan"),
                     "chosen_by": ("recall analysis (its training prompts)" if family == "mitigation"
                                   and s.mitigation_from == "recall" else "net accuracy gain on train")})
    return pd.DataFrame(rows, columns=["family", "policy", "chosen", "candidates", "train_net", "train_fixed",
                                       "train_broke", "n_train", "oracle_fixed", "oracle_n_incorrect",
                                       "oracle_fix_rate", "chosen_by"])


def finish(ctx: Context) -> Result:
    s: Settings = ctx.settings
    tables = {"knowledge": ctx.tables["knowledge"], **{name: table(ctx, name) for name in STAGE_TABLES}}
    tables["split"] = design(ctx)
    tables["candidates"] = CH.candidate_gains(tables["train"])
    tables["choices"] = choice_table(ctx)
    tables["summary"] = heldout_summary(tables["heldout"], seed=s.seed)
    tables["perplexity"] = perplexity_summary(tables["text"], seed=s.seed)
    result = Result("repair", s.to_dict(), tables, model=dict(ctx.model))
    result.claims = apply_holm(claims_frame(declare_claims(tables, s)))
    build_report(result, s)
    return result


ANALYSIS = Analysis(
    "repair", Settings,
    stages=[Stage("knowledge", plan_knowledge, work_knowledge), Stage("memories", plan_memories, work_memories),
            Stage("mitigation", plan_mitigation, work_mitigation), Stage("train", plan_train, work_train),
            Stage("heldout", plan_heldout, work_heldout), Stage("text", plan_text, work_text)],
    finish=finish, prepare=prepare,
    title="Repair that generalises: policies chosen on train, scored on held-out queries",
)


def run(lm: "LoadedModel", data: Any = None, settings: Settings | None = None, *, run_folder: Any = None,
        progress: bool = True) -> Result:
    """Choose each repair policy on training queries and score it on held-out ones (see docs/repair.md).

    ``data``: two-hop records (a Dataset, records, a dataset file, or None: world facts built from
    ``settings.knowledge``).
    ``run_folder``: a path (created, or resumed when it holds this run) or a RunFolder; finished shards are
    kept there, so an interrupted run resumes with identical tables.
    """
    settings = settings if settings is not None else Settings()
    for q in prepare(data, settings):  # bad input fails here, in one line, before any work
        try:
            first_token_id(lm.tokenizer, q.e3)
        except ValueError as err:
            raise ValueError(f"query {q.qid}: {err}") from None
    P.backpatch_pairs(settings, lm.n_layers)
    P.injection_cells(settings, lm.n_layers)
    return execute(ANALYSIS, lm, data, settings, run_folder=run_folder, progress=progress)
