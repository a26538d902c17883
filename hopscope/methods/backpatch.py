"""Back-patching (Biran et al. 2024, "Hopping Too Late", arXiv 2406.12775), with controls.

For a two-hop query, the hidden state ``h_s`` (``resid_post`` of block ``s``) at the last prompt token
of a clean run replaces the output of block ``t`` at that position; the model then greedy-decodes and
the continuation is scored by alias match against e3. Conditions (one row each per query and pair):

* ``back``      ``s > t``: the paper's back-patch.
* ``forward``   ``s < t``: patching a state forward (control).
* ``random``    ``s > t`` with a random vector of ``||h_s||`` (control).
* ``unrelated`` ``s > t`` with ``h_s`` taken from another query's prompt (control).
* ``clean``     no patch (the baseline, one row per query, ``s = t = -1``).

The ``first_hop`` variant does the same at the last token of the first-hop phrase.

Speed: all rows of one query share the prompt, so the prompt prefix runs once (its KV cache is
expanded across rows) and only the suffix from the patched position onwards runs per row, batched;
decoding is batched too. With ``prune=True`` a row stops decoding as soon as its alias match is
decided (its text can no longer start with, or already starts with, an alias): ``correct`` is
unchanged, ``text`` is then the decoded text up to that point.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch

from hopscope.engine import Intervention, Site, generate, replace, run_with_cache, score_tokens
from hopscope.engine.scoring import alias_match, first_token_id, normalise_text
from hopscope.methods.resolution import answer_aliases, first_hop_position, query_id

if TYPE_CHECKING:
    from hopscope.models.loaded import LoadedModel

CONDITIONS = ("back", "forward", "random", "unrelated")
VARIANTS = ("last", "first_hop")
UNRELATED_PROMPT = "The weather in the mountains was cold, so the hikers packed warm"


# ---- patched decoding ------------------------------------------------------------------------------
@dataclass
class Decoded:
    """Greedy continuations of patched rows: token ids per row (may stop early when pruned)."""

    tokens: list[list[int]]
    first_logits: torch.Tensor | None = None  # [rows, vocab], only with keep_logits=True
    prob: torch.Tensor | None = None           # [rows] probability of the target's first token
    rank: torch.Tensor | None = None           # [rows] its rank (0 = top-1)


def alias_stopper(lm: "LoadedModel", aliases: Sequence[str]) -> Callable[[list[int]], bool]:
    """``stop(tokens)``: True once ``alias_match(decode(tokens), aliases)`` can no longer change."""
    targets = [a for a in (normalise_text(x) for x in aliases) if a]

    def stop(tokens: list[int]) -> bool:
        text = lm.tokenizer.decode(tokens, skip_special_tokens=True).rstrip("\ufffd")  # partial UTF-8 bytes
        g = normalise_text(text)
        if not g:
            return False
        if any(g.startswith(a + " ") for a in targets):
            return True  # matched, and more text cannot undo it
        return not any(a.startswith(g) for a in targets)  # no alias can still match
    return stop


def patched_decode(
    lm: "LoadedModel",
    prompt: str,
    interventions: Sequence[Sequence[Intervention]],
    *,
    max_new_tokens: int = 10,
    start: int = -1,
    stop: Callable[[list[int]], bool] | None = None,
    target_id: int | None = None,
    batch_size: int = 128,
    keep_logits: bool = False,
) -> Decoded:
    """Greedy-decode ``prompt`` once per row of ``interventions`` (patches act on the prompt pass only)."""
    gen = generate(lm, prompt, interventions, max_new_tokens=max_new_tokens, start=start,
                   stop=None if stop is None else (lambda row, toks: stop(toks)), first_logits=True,
                   batch_size=batch_size)
    prob = rank = None
    if target_id is not None:
        sc = score_tokens(gen.first_logits, [target_id] * len(gen))
        prob, rank = sc["prob"], sc["rank"]
    return Decoded(gen.tokens, gen.first_logits if keep_logits else None, prob, rank)


def naive_decode(lm: "LoadedModel", prompt: str, interventions: Sequence[Sequence[Intervention]], *,
                 max_new_tokens: int = 10) -> Decoded:
    """Reference: one full-prompt forward plus greedy decoding per row, nothing shared (the seed's loop)."""
    tokens, logits = [], []
    for row in interventions:
        gen = generate(lm, [prompt], [list(row)], max_new_tokens=max_new_tokens, first_logits=True, fast=False)
        tokens.extend(gen.tokens)
        logits.append(gen.first_logits)
    return Decoded(tokens, torch.cat(logits))


# ---- knowledge groups -------------------------------------------------------------------------------
GROUPS = {"correct": "correct", "wrong_no_shortcut": "incorrect", "wrong_shortcut": "incorrect",
          "hops_unknown": "hops_unknown"}


def knowledge_groups(lm: "LoadedModel", queries: Sequence[Any], **options: Any) -> pd.DataFrame:
    """:func:`hopscope.data.knowledge_filter` with ``query_id`` and ``group``: ``correct`` (both hops
    known, composition right), ``incorrect`` (both hops known, composition wrong: the back-patching
    target, shortcut or not) or ``hops_unknown``."""
    from hopscope.data.knowledge import knowledge_filter

    table = knowledge_filter(lm, list(queries), **options)
    table.insert(0, "query_id", table["qid"].astype(str))
    table.insert(1, "group", table["subset"].map(GROUPS))
    return table


# ---- the sweep -------------------------------------------------------------------------------------
def layer_pairs(layers: Sequence[int], condition: str) -> list[tuple[int, int]]:
    """(s, t) pairs of ``layers``: s > t for back/random/unrelated, s < t for forward."""
    if condition == "forward":
        return [(s, t) for s in layers for t in layers if s < t]
    if condition in ("back", "random", "unrelated"):
        return [(s, t) for s in layers for t in layers if s > t]
    raise ValueError(f"unknown condition {condition!r}; choose from {CONDITIONS}")


def patch_value(condition: str, h_s: torch.Tensor, other_s: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """The vector written at block t: ``h_s`` (back/forward), a random vector of norm ``||h_s||``
    (random), or the unrelated prompt's state ``other_s`` (unrelated)."""
    if condition in ("back", "forward"):
        return h_s
    if condition == "random":
        r = torch.randn(h_s.shape, generator=generator, dtype=torch.float32)
        return (r / r.norm() * h_s.float().norm()).to(h_s.dtype)
    if condition == "unrelated":
        if other_s is None:
            raise ValueError("the unrelated control needs the other prompt's state")
        return other_s
    raise ValueError(f"unknown condition {condition!r}; choose from {CONDITIONS}")


def _seed(seed: int, *parts: object) -> int:
    return (seed * 1_000_003 + zlib.crc32("|".join(map(str, parts)).encode())) % (2 ** 63)


def _resid(lm: "LoadedModel", prompt: str, positions: Sequence[int], layers: Sequence[int]
           ) -> dict[int, dict[int, torch.Tensor]]:
    """``{position: {layer: resid_post}}`` of one clean run of ``prompt``."""
    _, acts = run_with_cache(lm, prompt, components=("resid_post",), layers=layers)
    return {p: {l: acts["resid_post", l][0, p].clone() for l in layers} for p in positions}


def backpatch_query(
    lm: "LoadedModel",
    query: Any,
    *,
    layers: Sequence[int] | None = None,
    conditions: Sequence[str] = CONDITIONS,
    variants: Sequence[str] = VARIANTS,
    variant_conditions: Sequence[str] = ("back",),
    unrelated: str | Any | None = None,
    max_new_tokens: int = 10,
    prune: bool = True,
    batch_size: int = 128,
    seed: int = 0,
) -> pd.DataFrame:
    """All patch rows of one query: one row per (variant, condition, s, t), plus the ``clean`` row.

    ``layers``: the layer grid (default all); ``variant_conditions``: the conditions run for the
    non-``last`` variants; ``unrelated``: the query (or prompt) whose states feed the ``unrelated``
    control (default :data:`UNRELATED_PROMPT`).
    """
    for c in (*conditions, *variant_conditions):
        if c not in CONDITIONS:
            raise ValueError(f"unknown condition {c!r}; choose from {CONDITIONS}")
    for v in variants:
        if v not in VARIANTS:
            raise ValueError(f"unknown variant {v!r}; choose from {VARIANTS}")
    layers = sorted({l + lm.n_layers if l < 0 else l for l in (range(lm.n_layers) if layers is None else layers)})
    aliases = answer_aliases(query)
    stop = alias_stopper(lm, aliases) if prune else None
    target = first_token_id(lm.tokenizer, query.e3)
    qid = query_id(query)
    n = len(lm.to_ids(query.prompt))
    other_prompt = unrelated if isinstance(unrelated, str) else getattr(unrelated, "prompt", UNRELATED_PROMPT)
    specs: list[dict[str, Any]] = [{"variant": "last", "condition": "clean", "s": -1, "t": -1}]
    rows: list[list[Intervention]] = [[]]
    starts: list[int] = [n - 1]
    where = {v: n - 1 if v == "last" else first_hop_position(lm, query) for v in variants}
    states = _resid(lm, query.prompt, sorted(set(where.values())), layers)
    for variant in variants:
        pos = where[variant]
        h = states[pos]
        conds = conditions if variant == "last" else variant_conditions
        gen = torch.Generator().manual_seed(_seed(seed, qid, variant))
        h_other = None
        if "unrelated" in conds:
            other_pos = -1
            if variant != "last" and not isinstance(unrelated, str) and unrelated is not None:
                other_pos = first_hop_position(lm, unrelated)
            h_other = _resid(lm, other_prompt, [other_pos], layers)[other_pos]
        for cond in conds:
            for s, t in layer_pairs(layers, cond):
                value = patch_value(cond, h[s], None if h_other is None else h_other[s], gen)
                specs.append({"variant": variant, "condition": cond, "s": s, "t": t})
                rows.append([replace(Site(t, "resid_post", pos), value)])
                starts.append(pos)
    out: list[dict[str, Any]] = []
    for start in sorted(set(starts)):
        idx = [i for i, st in enumerate(starts) if st == start]
        dec = patched_decode(lm, query.prompt, [rows[i] for i in idx], max_new_tokens=max_new_tokens, start=start,
                             stop=stop, target_id=target, batch_size=batch_size)
        for j, i in enumerate(idx):
            text = lm.tokenizer.decode(dec.tokens[j], skip_special_tokens=True)
            out.append({"query_id": qid, **specs[i], "correct": alias_match(text, aliases),
                        "prob": float(dec.prob[j]), "rank": int(dec.rank[j]),
                        "first_token": lm.tokenizer.decode(dec.tokens[j][:1]), "text": text,
                        "n_tokens": len(dec.tokens[j])})
    order = {(s["variant"], s["condition"], s["s"], s["t"]): k for k, s in enumerate(specs)}
    out.sort(key=lambda r: order[r["variant"], r["condition"], r["s"], r["t"]])
    return pd.DataFrame(out)


def unrelated_for(queries: Sequence[Any], index: int, seed: int = 0) -> Any:
    """A deterministic 'unrelated' partner of ``queries[index]``: another query sharing neither e2 nor e3."""
    q = queries[index]
    others = [o for o in queries if o is not q and o.e2 != q.e2 and o.e3 != q.e3 and o.e1 != q.e1]
    if not others:
        return UNRELATED_PROMPT
    g = torch.Generator().manual_seed(_seed(seed, query_id(q), "unrelated"))
    return others[int(torch.randint(len(others), (1,), generator=g))]


def backpatch(lm: "LoadedModel", queries: Sequence[Any], *, progress: bool = True, seed: int = 0,
              **options: Any) -> pd.DataFrame:
    """The pair-level table of :func:`backpatch_query` over ``queries`` (unrelated partners from the list)."""
    from tqdm import tqdm

    frames = [backpatch_query(lm, q, unrelated=unrelated_for(queries, i, seed), seed=seed, **options)
              for i, q in enumerate(tqdm(queries, desc="backpatch", disable=not progress))]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


# ---- tables and numbers ----------------------------------------------------------------------------
def query_table(pairs: pd.DataFrame, knowledge: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per (query, variant, condition): how many pairs give the right answer, and the best pair.

    ``clean_correct`` is the unpatched result; ``fixed``: wrong unpatched and right for some pair;
    ``break_frac``: for a clean-correct query, the fraction of pairs that make it wrong.
    """
    clean = pairs[pairs["condition"] == "clean"].set_index("query_id")
    rows = []
    for (qid, variant, cond), g in pairs[pairs["condition"] != "clean"].groupby(
            ["query_id", "variant", "condition"], sort=False):
        clean_ok = bool(clean.loc[qid, "correct"]) if qid in clean.index else None
        best = g.sort_values(["correct", "prob"], ascending=False).iloc[0]
        n_ok = int(g["correct"].sum())
        rows.append({"query_id": qid, "variant": variant, "condition": cond, "n_pairs": len(g), "n_correct": n_ok,
                     "any_correct": n_ok > 0, "clean_correct": clean_ok,
                     "clean_prob": float(clean.loc[qid, "prob"]) if qid in clean.index else float("nan"),
                     "fixed": clean_ok is False and n_ok > 0,
                     "break_frac": 1 - n_ok / len(g) if clean_ok else float("nan"),
                     "best_s": int(best["s"]), "best_t": int(best["t"]), "best_prob": float(best["prob"])})
    df = pd.DataFrame(rows)
    if knowledge is not None and len(df):
        df = df.merge(knowledge[["query_id", "group"]], on="query_id", how="left")
    return df


def headline(queries_df: pd.DataFrame) -> dict[str, float]:
    """Oracle fix rate per condition over the ``incorrect`` group, break rate over ``correct``, counts."""
    out: dict[str, float] = {}
    wrong = queries_df[queries_df["group"] == "incorrect"]
    right = queries_df[queries_df["group"] == "correct"]
    out["n_incorrect"] = float(wrong["query_id"].nunique())
    out["n_correct"] = float(right["query_id"].nunique())
    for (variant, cond), g in wrong.groupby(["variant", "condition"]):
        name = "oracle fix rate" + ("" if variant == "last" else f" [{variant}]") + f" ({cond})"
        out[name] = float(g["any_correct"].mean())
    for (variant, cond), g in right.groupby(["variant", "condition"]):
        if cond != "back":
            continue
        suffix = "" if variant == "last" else f" [{variant}]"
        out["break rate" + suffix] = float(g["break_frac"].mean())
        out["any-pair break rate" + suffix] = float((g["break_frac"] > 0).mean())
    return out


def fix_rate_matrix(pairs: pd.DataFrame, query_ids: Sequence[str] | None = None, *, variant: str = "last",
                    conditions: Sequence[str] = ("back", "forward")) -> pd.DataFrame:
    """Fraction of queries answered correctly per (s, t): rows s, columns t (back below, forward above)."""
    df = pairs[(pairs["variant"] == variant) & pairs["condition"].isin(conditions)]
    if query_ids is not None:
        df = df[df["query_id"].isin(list(query_ids))]
    m = df.groupby(["s", "t"])["correct"].mean().unstack("t")
    m.index.name, m.columns.name = "s (source layer)", "t (patched layer)"
    return m


# ---- the study: back-patching + resolution layers into a run folder --------------------------------
@dataclass
class StudyOptions:
    """Settings of :func:`run_study` (recorded in the run folder's config)."""

    layers: list[int] | None = None          # back-patching layer grid (None: every layer)
    max_new_tokens: int = 10
    conditions: tuple[str, ...] = CONDITIONS
    variants: tuple[str, ...] = VARIANTS
    limit: int | None = None                 # at most this many queries per group (seeded sample)
    resolve: bool = True                     # logit lens, Patchscopes and knockout too
    backpatch: bool = True
    patchscope_targets: tuple[str, ...] = ("repeat", "describe")
    patchscope_tokens: int = 5
    resolve_layers: list[int] | None = None  # source layers / window centres for Patchscopes and knockout
    knockout_k: int = 3
    lens_k: int = 5
    batch_size: int = 128
    prune: bool = True
    seed: int = 0

    @classmethod
    def quick(cls, n_layers: int, **overrides: Any) -> "StudyOptions":
        """At most 8 queries per group, every 3rd layer, 5 new tokens, repeat Patchscope only: ~2-3 min on CPU."""
        grid = list(range(0, n_layers, 3))
        base = dict(layers=grid, resolve_layers=grid, max_new_tokens=5, limit=8, patchscope_targets=("repeat",))
        return cls(**{**base, **overrides})


def _sample(queries: Sequence[Any], knowledge: pd.DataFrame, limit: int | None, seed: int) -> list[Any]:
    """The queries of the correct / incorrect groups, at most ``limit`` of each (seeded), in input order."""
    group = dict(zip(knowledge["query_id"], knowledge["group"]))
    chosen: set[str] = set()
    for g in ("incorrect", "correct"):
        ids = [query_id(q) for q in queries if group.get(query_id(q)) == g]
        if limit is not None and len(ids) > limit:
            perm = torch.randperm(len(ids), generator=torch.Generator().manual_seed(_seed(seed, g)))
            ids = [ids[i] for i in sorted(perm[:limit].tolist())]
        chosen.update(ids)
    return [q for q in queries if query_id(q) in chosen]


def _incremental(run, name: str, items: Sequence[Any], fn: Callable[[Any], pd.DataFrame], desc: str,
                 progress: bool) -> pd.DataFrame:
    with run.table(name, key=["query_id"], progress=progress) as tab:
        for q in tab.pending(items, key=query_id, desc=desc):
            tab.append(fn(q))
    return run.load_table(name) if run.tables.exists(name) else pd.DataFrame()


def run_study(lm: "LoadedModel", queries: Sequence[Any], run, options: StudyOptions | None = None, *,
              knowledge: pd.DataFrame | None = None, progress: bool = True) -> dict[str, float]:
    """Knowledge filter, back-patching with controls, and resolution layers, written into ``run``.

    ``run`` is a :class:`hopscope.report.RunFolder` (a resumed one skips finished queries). Writes the
    tables ``knowledge``, ``pairs``, ``queries``, ``lens_ranks``, ``lens``, ``patchscope``,
    ``patchscope_layers``, ``knockout``, ``knockout_layers``, ``summary``, ``summary_by_group``, the
    figures and report sections; returns the headline numbers. ``knowledge``: a precomputed table with
    ``query_id`` and ``group`` (default: :func:`knowledge_groups`).
    """
    import time

    from hopscope.methods import knockout as ko
    from hopscope.methods import patchscope as ps
    from hopscope.methods import resolution as res
    from hopscope.report import bar_chart, box_by_group, heatmap

    opt = options or StudyOptions()
    t0 = time.monotonic()
    run.set_model(lm)
    run.set_dataset("two_hop", list(queries))
    if knowledge is None:
        knowledge = knowledge_groups(lm, queries, progress=progress)
    run.write_table("knowledge", knowledge, key=["query_id"])
    chosen = _sample(queries, knowledge, opt.limit, opt.seed)
    if not chosen:
        raise ValueError(f"no query of {len(queries)} has both hops known: nothing to analyse "
                         f"(subsets: {knowledge['subset'].value_counts().to_dict()})")
    kn = knowledge[knowledge["query_id"].isin([query_id(q) for q in chosen])]
    head: dict[str, float] = {"n_queries": float(len(queries)), "n_analysed": float(len(chosen))}
    sections = []
    qtab = None
    if opt.backpatch:
        partner = {query_id(q): unrelated_for(chosen, i, opt.seed) for i, q in enumerate(chosen)}
        t1 = time.monotonic()
        pairs = _incremental(run, "pairs", chosen, lambda q: backpatch_query(
            lm, q, layers=opt.layers, conditions=opt.conditions, variants=opt.variants, unrelated=partner[query_id(q)],
            max_new_tokens=opt.max_new_tokens, prune=opt.prune, batch_size=opt.batch_size, seed=opt.seed),
            "back-patching", progress)
        head["backpatch seconds per query"] = (time.monotonic() - t1) / len(chosen)
        qtab = query_table(pairs, kn)
        run.write_table("queries", qtab, key=["query_id", "variant", "condition"])
        head.update(headline(qtab))
        figs = []
        wrong = kn.loc[kn["group"] == "incorrect", "query_id"].tolist()
        right = kn.loc[kn["group"] == "correct", "query_id"].tolist()
        for name, ids, what in (("fix_rate", wrong, "fix rate (incorrect compositions)"),
                                ("keep_rate", right, "still-correct rate (correct compositions)")):
            if ids:
                m = fix_rate_matrix(pairs, ids)
                top = float(m.max().max()) if m.notna().any().any() else 0.0
                run.save_figure(name, heatmap(m, title=f"Back (s>t, below diagonal) vs forward (s<t) patching: {what}",
                                              colorbar_label=f"fraction of {len(ids)} queries correct", vmin=0.0,
                                              vmax=max(top, 0.01)))
                figs.append(name)
        sub = qtab[qtab["group"] == "incorrect"]
        order = {c: i for i, c in enumerate(CONDITIONS)}
        groups = sorted(sub.groupby(["variant", "condition"]), key=lambda kv: (kv[0][0] != "last", order[kv[0][1]]))
        oracle = {cond + ("" if var == "last" else f" @{var}"): float(g["any_correct"].mean())
                  for (var, cond), g in groups}
        if oracle:
            run.save_figure("oracle", bar_chart(oracle, title=f"Oracle fix rate over {len(wrong)} incorrect "
                                                "compositions", ylabel="fraction fixed by some (s, t)"))
            figs.append("oracle")
        sections.append(("Back-patching", figs, {"per query": "queries"}, (
            "Each row of 'pairs' re-runs the prompt with block t's output at the patched position replaced by "
            "block s's output from the clean run (back: s>t; forward: s<t; random: a random vector of the same "
            "norm; unrelated: the state of another query's prompt), then greedy-decodes; 'correct' is an alias "
            "match against e3. The oracle fix rate is the fraction of incorrect compositions (both hops known) "
            "that some pair fixes; the break rate the fraction of pairs that turn a correct composition wrong.")))
    if opt.resolve:
        rl = opt.resolve_layers
        ranks = _incremental(run, "lens_ranks", chosen, lambda q: res.lens_ranks(lm, [q]), "logit lens", progress)
        lens = res.lens_resolution(ranks, k=opt.lens_k)
        run.write_table("lens", lens, key=["query_id", "component", "target"])
        psc = _incremental(run, "patchscope", chosen, lambda q: ps.patchscope_query(
            lm, q, layers=rl, targets=opt.patchscope_targets, max_new_tokens=opt.patchscope_tokens, prune=opt.prune,
            batch_size=opt.batch_size), "patchscopes", progress)
        psl = ps.patchscope_resolution(psc)
        run.write_table("patchscope_layers", psl, key=["query_id", "source", "target"])
        kot = _incremental(run, "knockout", chosen, lambda q: ko.knockout_query(
            lm, q, k=opt.knockout_k, centres=rl, max_new_tokens=opt.patchscope_tokens, prune=opt.prune,
            batch_size=opt.batch_size), "knockout", progress)
        kol = ko.knockout_resolution(kot)
        run.write_table("knockout_layers", kol, key=["query_id"])
        summary = res.summarize(kn, lens=lens, patchscope=psl, knockout=kol, backpatch=qtab, k=opt.lens_k)
        by_group = res.summary_by_group(summary)
        run.write_table("summary", summary, key=["query_id"])
        run.write_table("summary_by_group", by_group, key=["measure", "group"])
        for _, r in by_group.iterrows():
            if r["measure"] in dict(res.BOX_MEASURES):
                head[f"median {dict(res.BOX_MEASURES)[r['measure']]} layer ({r['group']})"] = r["median_layer"]
        data = res.box_data(summary)
        figs = []
        if data:
            run.save_figure("resolution_layers", box_by_group(
                data, title="Layer at which e2 (bridge) and e3 (answer) resolve (resolved / queries per box)",
                ylabel="layer"))
            figs.append("resolution_layers")
        sections.append(("Resolution layers", figs, {"by group": by_group, "per query": "summary"}, (
            "First layer at which e2 / e3 is top-1 under the logit lens at the last token (lens), is decoded by "
            "the repeat Patchscope from e1's last token or the last token, and the centre of the first "
            f"±{opt.knockout_k}-layer window whose knockout of the last token's attention to e1 changes the first "
            "answer token. Queries that never resolve are left out of the boxes (see n_resolved).")))
    head["wall seconds"] = time.monotonic() - t0
    general = ("n_queries", "n_analysed", "wall seconds")
    for i, (title, figs, tables, text) in enumerate(sections):
        mine = {k: v for k, v in head.items()
                if (i == 0 if k in general else k.startswith("median ") == (title == "Resolution layers"))}
        run.add_section(title, text=text, figures=figs, tables=tables, headline=mine)
    return head


def backpatch_study(lm: "LoadedModel", queries: Sequence[Any], run_folder, quick: bool = True, *,
                    seed: int = 0, progress: bool = True) -> dict[str, float]:
    """Entry for ``hopscope study``: :func:`run_study` with :meth:`StudyOptions.quick` (or full) settings."""
    opts = StudyOptions.quick(lm.n_layers, seed=seed) if quick else StudyOptions(seed=seed)
    return run_study(lm, queries, run_folder, opts, progress=progress)
