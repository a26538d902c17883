"""The knowledge filter and the paper's knowledge groups.

Every two-hop query is asked five prompts: the first hop (answer e2), the second hop (e3), the composition
(e3) and the two shortcut prompts (e3): r2 applied to e1 directly, and the composition without e1. Each
prompt is greedy-decoded and scored by the run's one :class:`~hopscope.engine.scoring.MatchRule` (the paper's:
an answer or alias anywhere in the first 10 new tokens); the first generated position also gives the
probability and rank of the answer's first token. All prompts run through the engine's ``generate`` with one
prompt per row, so prompts sharing a few-shot prefix run it once, and a row stops once its verdict is final.

Groups (Biran et al. 2024): a query that either shortcut prompt answers is ``shortcut`` and leaves both groups;
otherwise ``correct`` when the composition is right, ``incorrect`` when it is wrong although both hops are
known, ``hops_unknown`` when it is wrong and a hop is not known. The table keeps every query, its group and
the flags it was made from (``composed_ok``, ``both_hops_known``, ``shortcut``), so other splits stay possible.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import pandas as pd

from hopscope.data import Dataset
from hopscope.engine import MatchRule, first_token_id, generate, score_tokens
from hopscope.methods.hopping import queries as Q
from hopscope.progress import bar

if TYPE_CHECKING:
    from hopscope.models.loaded import LoadedModel

# prompt kind -> (record attribute, which answers)
PROMPTS: dict[str, tuple[str, str]] = {
    "first_hop": ("first_hop_prompt", "bridge"),
    "second_hop": ("second_hop_prompt", "answer"),
    "composed": ("prompt", "answer"),
    "entity_shortcut": ("entity_shortcut_prompt", "answer"),
    "relation_shortcut": ("relation_shortcut_prompt", "answer"),
}
GROUPS = ("correct", "incorrect", "shortcut", "hops_unknown")
CRITERIA = ("generation", "first_token", "either", "both")
SCORE_COLUMNS = ("asked", "text", "correct", "prob", "rank", "alias_rank", "top_token")
CACHE_VERSION = 2


def score_prompts(lm: "LoadedModel", prompts: Sequence[str], targets: Sequence[Sequence[str]], rule: MatchRule, *,
                  batch_size: int = 256, progress: bool = False, desc: str = "prompts") -> pd.DataFrame:
    """Score each prompt against its answers (the first is the main one), one row per prompt.

    Columns: ``text`` (the greedy continuation, up to where its verdict was final), ``correct`` (the rule),
    ``prob`` / ``rank`` of the main answer's first token at the first generated position (rank 0 = top-1),
    ``alias_rank`` (the best rank over every answer's first token) and ``top_token``. A prompt asked twice
    runs once; a prompt asked with several answer lists decodes its whole budget (no early stop).
    """
    if len(prompts) != len(targets):
        raise ValueError(f"{len(prompts)} prompts but {len(targets)} answer lists")
    unique_prompts = sorted(dict.fromkeys(prompts))  # neighbours share few-shot prefixes: batch them together
    index = {p: i for i, p in enumerate(unique_prompts)}
    lists: dict[str, set[tuple[str, ...]]] = {}
    for p, t in zip(prompts, targets):
        lists.setdefault(p, set()).add(tuple(t))
    stop_aliases = [next(iter(lists[p])) if len(lists[p]) == 1 else () for p in unique_prompts]
    stopper = rule.stopper(lm, stop_aliases)
    tokens: list[list[int]] = []
    logits = []
    with bar(total=len(unique_prompts), desc=desc, enabled=progress, unit="prompt") as pb:
        for i in range(0, len(unique_prompts), batch_size):
            chunk = unique_prompts[i:i + batch_size]
            gen = generate(lm, chunk, None, max_new_tokens=rule.max_new_tokens, first_logits=True,
                           stop=lambda row, toks, i=i: bool(stop_aliases[i + row]) and stopper(i + row, toks),
                           batch_size=batch_size)
            tokens += gen.tokens
            logits.append(gen.first_logits)
            pb.update(len(chunk))
    first = _cat(logits)
    ids: dict[str, int] = {}
    rows = []
    for p, answers in zip(prompts, targets):
        j = index[p]
        text = lm.tokenizer.decode(tokens[j], skip_special_tokens=True)
        cand = [x for x in (_token_id(lm, a, ids) for a in answers) if x >= 0]
        ranks = score_tokens(first[j:j + 1].expand(len(cand), -1), cand)["rank"].tolist() if cand else []
        main = _token_id(lm, answers[0], ids) if answers else -1
        sc = score_tokens(first[j:j + 1], [main]) if main >= 0 else None
        rows.append({"asked": True, "text": text, "correct": rule.matches(text, list(answers)),
                     "prob": float(sc["prob"][0]) if sc else float("nan"), "rank": int(sc["rank"][0]) if sc else -1,
                     "alias_rank": int(min(ranks)) if ranks else -1,
                     "top_token": lm.tokenizer.decode(tokens[j][:1])})
    return pd.DataFrame(rows, columns=list(SCORE_COLUMNS))


def _cat(parts: list) -> Any:
    import torch

    return torch.cat(parts) if parts else torch.empty(0, 0)


def _token_id(lm: "LoadedModel", answer: str, cache: dict[str, int]) -> int:
    if answer not in cache:
        try:
            cache[answer] = first_token_id(lm.tokenizer, answer)
        except ValueError:
            cache[answer] = -1
    return cache[answer]


def knowledge_table(lm: "LoadedModel", queries: Sequence[Any], rule: MatchRule, *, criterion: str = "generation",
                    batch_size: int = 256, progress: bool = False) -> pd.DataFrame:
    """One row per two-hop query: the five prompts' scores, the knowledge flags and the group."""
    prompts, targets, owners = [], [], []
    base = []
    for j, q in enumerate(queries):
        base.append({"qid": str(q.qid), "composition": q.relation, "r1": q.r1, "r2": q.r2, "e1": q.e1, "e2": q.e2,
                     "e3": q.e3, "shortcut_prone": bool((q.meta or {}).get("shortcut_prone", False))})
        for kind, (attr, which) in PROMPTS.items():
            p = getattr(q, attr, None)
            if p:
                prompts.append(p)
                targets.append(Q.bridges(q) if which == "bridge" else Q.answers(q))
                owners.append((j, kind))
    scores = score_prompts(lm, prompts, targets, rule, batch_size=batch_size, progress=progress,
                           desc=f"knowledge filter ({len(queries)} queries)")
    empty = {"asked": False, "text": "", "correct": False, "prob": float("nan"), "rank": -1, "alias_rank": -1,
             "top_token": ""}
    for row in base:
        for kind in PROMPTS:
            row.update({f"{kind}_{k}": v for k, v in empty.items()})
    for (j, kind), s in zip(owners, scores.to_dict("records")):
        base[j].update({f"{kind}_{k}": v for k, v in s.items()})
    return classify(pd.DataFrame(base), criterion)


def classify(table: pd.DataFrame, criterion: str = "generation") -> pd.DataFrame:
    """Add ``<kind>_ok`` (by ``criterion``), ``composed_ok``, ``both_hops_known``, ``shortcut`` and ``group``.

    ``criterion``: ``generation`` (the rule on the greedy generation: the paper's), ``first_token`` (the
    answer's first token is top-1), ``either`` or ``both``.
    """
    if criterion not in CRITERIA:
        raise ValueError(f"unknown criterion {criterion!r}; choose from {', '.join(CRITERIA)}")
    t = table.copy()
    for kind in PROMPTS:
        gen = t[f"{kind}_correct"].astype(bool)
        tok = t[f"{kind}_alias_rank"].eq(0)
        ok = {"generation": gen, "first_token": tok, "either": gen | tok, "both": gen & tok}[criterion]
        t[f"{kind}_ok"] = ok & t[f"{kind}_asked"].astype(bool)
    t["both_hops_known"] = t["first_hop_ok"] & t["second_hop_ok"]
    t["shortcut"] = t["entity_shortcut_ok"] | t["relation_shortcut_ok"]
    t["group"] = groups(t["composed_ok"], t["both_hops_known"], t["shortcut"])
    t["criterion"] = criterion
    return t


def groups(composed_ok: pd.Series, both_hops_known: pd.Series, shortcut: pd.Series) -> pd.Series:
    """The paper's groups: shortcut-solvable queries leave both; then correct / incorrect / hops_unknown."""
    out = pd.Series("hops_unknown", index=composed_ok.index, dtype=object)
    out[~shortcut & ~composed_ok & both_hops_known] = "incorrect"
    out[~shortcut & composed_ok] = "correct"
    out[shortcut] = "shortcut"
    return out


def knowledge_filter(lm: "LoadedModel", data: Dataset | Sequence[Any], *, rule: MatchRule | None = None,
                     criterion: str = "generation", max_new_tokens: int | None = None, batch_size: int = 256,
                     cache_dir: str | Path | None = None, use_cache: bool = True,
                     progress: bool = True) -> pd.DataFrame:
    """:func:`knowledge_table` of the two-hop queries of ``data``, cached per model, data and rule.

    ``rule`` (default: the paper's, ``MatchRule(10, anywhere=True)``); ``max_new_tokens`` overrides its budget.
    Tables are cached under ``<cache>/knowledge/<model>/<key>.parquet`` (``cache_dir`` replaces the folder).
    """
    rule = rule or MatchRule()
    if max_new_tokens is not None:
        rule = MatchRule(max_new_tokens, rule.anywhere)
    ds = (data if isinstance(data, Dataset) else Dataset(list(data))).two_hop()
    if len(ds) == 0:
        raise ValueError("the knowledge filter needs two-hop queries; the data has none")
    path = _cache_path(lm, ds, rule, cache_dir)
    if use_cache and path.is_file():
        return classify(pd.read_parquet(path), criterion)
    table = knowledge_table(lm, list(ds), rule, criterion=criterion, batch_size=batch_size, progress=progress)
    if use_cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        table.to_parquet(tmp, index=False)
        os.replace(tmp, path)  # readers in other processes never see a half-written table
    return table


def _cache_path(lm: "LoadedModel", ds: Dataset, rule: MatchRule, cache_dir: str | Path | None) -> Path:
    if cache_dir is None:
        from hopscope.models import cache_root

        cache_dir = cache_root() / "knowledge"
    name = str(getattr(lm, "name", "model"))
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "model"
    payload = json.dumps({"model": name, "source": str(getattr(lm, "source", "")), "data": ds.fingerprint(),
                          "rule": rule.to_dict(), "v": CACHE_VERSION}, sort_keys=True)
    return Path(cache_dir) / slug / f"{hashlib.sha256(payload.encode()).hexdigest()[:16]}.parquet"


# ---- summaries ------------------------------------------------------------------------------------------
def subset_counts(table: pd.DataFrame, *, by: str | None = "composition") -> pd.DataFrame:
    """Queries per group (columns), per ``by`` (rows), plus a ``total`` row and an ``n`` column."""
    rows = table[by] if by else pd.Series("all", index=table.index, name="all")
    counts = pd.crosstab(rows, table["group"]).reindex(columns=list(GROUPS), fill_value=0)
    counts.loc["total"] = counts.sum()
    counts["n"] = counts.sum(axis=1)
    return counts


def accuracy_table(table: pd.DataFrame, *, by: str = "composition") -> pd.DataFrame:
    """Per ``by``: each prompt kind's accuracy under the rule (``_gen``) and first-token top-1 (``_top1``)."""
    out = {}
    for kind in PROMPTS:
        asked = table[f"{kind}_asked"].astype(bool)
        out[f"{kind}_gen"] = table[f"{kind}_correct"].where(asked).astype(float)
        out[f"{kind}_top1"] = table[f"{kind}_alias_rank"].eq(0).where(asked).astype(float)
    frame = pd.DataFrame(out)
    frame[by] = table[by]
    return frame.groupby(by, sort=False).mean()


def shortcut_report(table: pd.DataFrame, *, margin: float = 0.15, by: str = "composition") -> pd.DataFrame:
    """Per ``by``: composition accuracy beside the two shortcut accuracies; ``flagged`` when a shortcut comes
    within ``margin`` of the composition; ``explained_by_shortcut``: share of correct compositions that a
    shortcut also answers (the queries the paper's groups leave out)."""
    rows = []
    for name, g in table.groupby(by, sort=False):
        comp = float(g["composed_ok"].mean())
        acc = {k: float(g[f"{k}_ok"][g[f"{k}_asked"]].mean()) if g[f"{k}_asked"].any() else float("nan")
               for k in ("entity_shortcut", "relation_shortcut")}
        best = max((x for x in acc.values() if x == x), default=float("nan"))
        right = g[g["composed_ok"]]
        rows.append({by: name, "n": len(g), "composed": comp, **acc,
                     "explained_by_shortcut": float(right["shortcut"].mean()) if len(right) else float("nan"),
                     "flagged": bool(best == best and comp > 0 and best >= comp - margin),
                     "shortcut_prone_prior": bool(g["shortcut_prone"].any())})
    return pd.DataFrame(rows)
