"""Knowledge filter: which two-hop queries does a model know hop by hop, and does it compose them?

For every two-hop query the model answers five prompts: the first hop (target e2), the second
hop (e3), the composition (e3) and the two shortcut prompts (e3). Each prompt is scored twice:
greedy generation with alias match, and the probability / rank of the answer's first token (and
the best rank over the aliases). The table says, per query, whether both hops are known, whether
the composition is right and whether a shortcut gives the answer away, and puts each query in a
subset:

* ``correct`` — both hops known, composition correct;
* ``wrong_no_shortcut`` — both hops known, composition wrong, neither shortcut correct
  (the clean "fails to compose" cases that the multi-hop methods study);
* ``wrong_shortcut`` — both hops known, composition wrong, a shortcut correct;
* ``hops_unknown`` — at least one hop not known.

Tables are cached per model under ``<cache>/knowledge/<model>/<key>.parquet``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from hopscope.data.dataset import Dataset
from hopscope.data.records import Record, TwoHopQuery

Criterion = Literal["generation", "first_token", "either", "both"]
PROMPTS: dict[str, tuple[str, str]] = {  # prompt kind -> (record attribute, target)
    "first_hop": ("first_hop_prompt", "bridge"),
    "second_hop": ("second_hop_prompt", "answer"),
    "composed": ("prompt", "answer"),
    "entity_shortcut": ("entity_shortcut_prompt", "answer"),
    "relation_shortcut": ("relation_shortcut_prompt", "answer"),
}
SUBSETS = ("correct", "wrong_no_shortcut", "wrong_shortcut", "hops_unknown")
CACHE_VERSION = 1


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, unit="prompt", leave=False)


def greedy_with_logits(model: Any, prompts: Sequence[str], *, max_new_tokens: int = 8):
    """One left-padded prompt pass that returns both the last-position logits ``[b, V]`` and the
    greedy continuation ``[b, max_new_tokens]`` (KV cache reused), so scoring and generation do
    not each pay for the prompt. No interventions: this is the plain model, which the engine
    reproduces exactly without interventions."""
    import torch

    batch = model.encode(list(prompts))
    mask, pos = batch.attention_mask, batch.position_ids[:, -1]
    with torch.no_grad():
        out = model.model(input_ids=batch.input_ids, attention_mask=mask, position_ids=batch.position_ids,
                          use_cache=True, logits_to_keep=1)
        last = out.logits[:, -1].float()
        tokens = [last.argmax(-1)]
        past = out.past_key_values
        for _ in range(max_new_tokens - 1):
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            pos = pos + 1
            step = model.model(input_ids=tokens[-1][:, None], attention_mask=mask, position_ids=pos[:, None],
                               past_key_values=past, use_cache=True, logits_to_keep=1)
            past = step.past_key_values
            tokens.append(step.logits[:, -1].argmax(-1))
    return last, torch.stack(tokens, dim=1)


def score_prompts(model: Any, prompts: Sequence[str], targets: Sequence[Sequence[str]], *, batch_size: int = 32,
                  max_new_tokens: int = 8, progress: bool = True, desc: str = "scoring") -> pd.DataFrame:
    """Score each prompt against its target answers (the first is the main answer).

    Columns: ``text`` (greedy continuation), ``match`` (alias match at its start), ``prob`` and
    ``rank`` of the main answer's first token (rank 0 = top-1), ``alias_rank`` (best rank over all
    the answers' first tokens) and ``top_token``. Identical prompts run once; rows are batched.
    """
    from hopscope.engine.answers import alias_match, first_token_id, score_tokens

    if len(prompts) != len(targets):
        raise ValueError(f"{len(prompts)} prompts but {len(targets)} target lists")
    tok = model.tokenizer
    ids_cache: dict[str, int] = {}

    def tid(answer: str) -> int:
        if answer not in ids_cache:
            try:
                ids_cache[answer] = first_token_id(tok, answer)
            except ValueError:
                ids_cache[answer] = -1
        return ids_cache[answer]

    needed: dict[str, set[int]] = {}  # unique prompt -> first-token ids to score there
    for p, answers in zip(prompts, targets):
        needed.setdefault(p, set()).update(t for t in map(tid, answers) if t >= 0)
    scored: dict[str, dict[int, tuple[float, int]]] = {}  # prompt -> token id -> (prob, rank)
    texts: dict[str, str] = {}
    top: dict[str, str] = {}
    with _progress(len(needed), desc, progress) as bar:
        unique_prompts = list(needed)
        for i in range(0, len(unique_prompts), batch_size):
            chunk = unique_prompts[i:i + batch_size]
            last, tokens = greedy_with_logits(model, chunk, max_new_tokens=max_new_tokens)
            for p, row, ids in zip(chunk, last, tokens.tolist()):
                texts[p] = tok.decode(ids, skip_special_tokens=True)
                top[p] = tok.decode([ids[0]])
                want = sorted(needed[p])
                if want:
                    s = score_tokens(row[None].expand(len(want), -1), want)
                    scored[p] = {t: (float(pr), int(rk)) for t, pr, rk in zip(want, s["prob"], s["rank"])}
                else:
                    scored[p] = {}
            bar.update(len(chunk))
    rows = []
    for p, answers in zip(prompts, targets):
        ranks = {t: scored[p][t] for t in map(tid, answers) if t >= 0}
        prob, rank = ranks.get(tid(answers[0]) if answers else -1, (float("nan"), -1))
        rows.append({
            "text": texts[p], "match": alias_match(texts[p], list(answers)),
            "prob": prob, "rank": rank,
            "alias_rank": min((r for _, r in ranks.values()), default=-1),
            "top_token": top[p],
        })
    return pd.DataFrame(rows)


def _correct(prefix: str, frame: pd.DataFrame, criterion: Criterion) -> pd.Series:
    gen = frame[f"{prefix}_match"].fillna(False).astype(bool)
    tok = frame[f"{prefix}_alias_rank"].fillna(-1).eq(0)
    return {"generation": gen, "first_token": tok, "either": gen | tok, "both": gen & tok}[criterion]


def classify(table: pd.DataFrame, criterion: Criterion = "generation") -> pd.DataFrame:
    """Add the ``*_ok`` columns, ``both_hops_known``, ``shortcut`` and ``subset`` for ``criterion``."""
    t = table.copy()
    for kind in PROMPTS:
        ok = _correct(kind, t, criterion)
        if kind.endswith("shortcut"):
            ok = ok & t[f"{kind}_prompt"].notna()
        t[f"{kind}_ok"] = ok
    t["both_hops_known"] = t["first_hop_ok"] & t["second_hop_ok"]
    t["shortcut"] = t["entity_shortcut_ok"] | t["relation_shortcut_ok"]
    t["subset"] = "hops_unknown"
    t.loc[t["both_hops_known"] & t["composed_ok"], "subset"] = "correct"
    t.loc[t["both_hops_known"] & ~t["composed_ok"] & t["shortcut"], "subset"] = "wrong_shortcut"
    t.loc[t["both_hops_known"] & ~t["composed_ok"] & ~t["shortcut"], "subset"] = "wrong_no_shortcut"
    t["criterion"] = criterion
    return t


def _cache_path(model: Any, dataset: Dataset, settings: dict[str, Any], cache_dir: str | Path | None) -> Path:
    if cache_dir is None:
        from hopscope.models import cache_root

        cache_dir = cache_root() / "knowledge"
    ident = f"{getattr(model, 'name', type(model).__name__)}"
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", ident).strip("_") or "model"
    payload = json.dumps({"model": ident, "source": str(getattr(model, "source", "")), "data": dataset.fingerprint(),
                          "settings": settings, "v": CACHE_VERSION}, sort_keys=True)
    key = hashlib.sha256(payload.encode()).hexdigest()[:16]
    return Path(cache_dir) / slug / f"{key}.parquet"


def knowledge_filter(model: Any, dataset: Dataset | Sequence[Record], *, criterion: Criterion = "generation",
                     batch_size: int = 32, max_new_tokens: int = 8, cache_dir: str | Path | None = None,
                     use_cache: bool = True, progress: bool = True) -> pd.DataFrame:
    """One row per two-hop query of ``dataset`` (other records are ignored) with the scores of its
    five prompts and its subset (see the module docstring). Cached per model and dataset."""
    ds = dataset if isinstance(dataset, Dataset) else Dataset(dataset)
    ds = ds.two_hop()
    if len(ds) == 0:
        raise ValueError("knowledge_filter needs two-hop queries; the dataset has none")
    settings = {"max_new_tokens": max_new_tokens}
    path = _cache_path(model, ds, settings, cache_dir)
    if use_cache and path.is_file():
        return classify(pd.read_parquet(path), criterion)
    empty = {"text": None, "match": False, "prob": float("nan"), "rank": -1, "alias_rank": -1, "top_token": None}
    rows: list[dict[str, Any]] = []
    prompts, targets, owners = [], [], []
    for j, r in enumerate(ds):
        assert isinstance(r, TwoHopQuery)
        row: dict[str, Any] = {"qid": r.qid, "composition": r.relation, "r1": r.r1, "r2": r.r2, "e1": r.e1,
                               "e2": r.e2, "e3": r.e3, "shortcut_prone": bool(r.meta.get("shortcut_prone", False))}
        for kind, (attr, target) in PROMPTS.items():
            p = getattr(r, attr)
            row[f"{kind}_prompt"] = p
            row.update({f"{kind}_{k}": v for k, v in empty.items()})  # a missing prompt keeps these
            if p:
                prompts.append(p)
                targets.append(r.bridge_answers if target == "bridge" else r.all_answers)
                owners.append((j, kind))
        rows.append(row)
    scores = score_prompts(model, prompts, targets, batch_size=batch_size, max_new_tokens=max_new_tokens,
                           progress=progress, desc=f"knowledge filter ({len(ds)} queries)")
    for (j, kind), s in zip(owners, scores.to_dict("records")):
        rows[j].update({f"{kind}_{k}": v for k, v in s.items()})
    base = pd.DataFrame(rows)
    for kind in PROMPTS:
        base[f"{kind}_match"] = base[f"{kind}_match"].astype(bool)
        for col in ("rank", "alias_rank"):
            base[f"{kind}_{col}"] = base[f"{kind}_{col}"].astype(int)
    base["model"] = getattr(model, "name", "")
    if use_cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        base.to_parquet(path, index=False)
    return classify(base, criterion)


def subset_counts(table: pd.DataFrame, *, by: str | None = "composition") -> pd.DataFrame:
    """Queries per subset (columns), per ``by`` group (rows) plus a ``total`` row."""
    counts = pd.crosstab(table[by] if by else pd.Series("all", index=table.index, name="group"),
                         table["subset"]).reindex(columns=list(SUBSETS), fill_value=0)
    counts.loc["total"] = counts.sum()
    counts["n"] = counts.sum(axis=1)
    return counts


def accuracy_table(table: pd.DataFrame, *, by: str = "composition") -> pd.DataFrame:
    """Per group: accuracy of each prompt kind under generation match and first-token top-1."""
    out = {}
    for kind in PROMPTS:
        out[f"{kind}_gen"] = table[f"{kind}_match"]
        out[f"{kind}_top1"] = table[f"{kind}_alias_rank"].eq(0)
    frame = pd.DataFrame(out)
    frame[by] = table[by]
    return frame.groupby(by, sort=False).mean()


def shortcut_report(table: pd.DataFrame, *, margin: float = 0.15, by: str = "composition") -> pd.DataFrame:
    """Per composition: composition accuracy vs. the shortcut accuracies (under the table's
    criterion). ``flagged`` when a shortcut comes within ``margin`` of the composition — the
    composition can then be answered without the bridge and is not a clean compositional probe.
    ``explained_by_shortcut``: share of the correct compositions whose shortcut is also correct."""
    rows = []
    for name, g in table.groupby(by, sort=False):
        comp = float(g["composed_ok"].mean())
        ent = float(g["entity_shortcut_ok"].mean()) if g["entity_shortcut_prompt"].notna().any() else float("nan")
        rel = float(g["relation_shortcut_ok"].mean()) if g["relation_shortcut_prompt"].notna().any() else float("nan")
        best = max((x for x in (ent, rel) if x == x), default=float("nan"))
        right = g[g["composed_ok"]]
        explained = float(right["shortcut"].mean()) if len(right) else float("nan")
        rows.append({by: name, "n": len(g), "composed": comp, "entity_shortcut": ent, "relation_shortcut": rel,
                     "explained_by_shortcut": explained,
                     "flagged": bool(best == best and comp > 0 and best >= comp - margin),
                     "shortcut_prone_prior": bool(g["shortcut_prone"].any())})
    return pd.DataFrame(rows)


def evaluate_single_hop(model: Any, dataset: Dataset, *, batch_size: int = 32, max_new_tokens: int = 8,
                        progress: bool = True) -> pd.DataFrame:
    """Single-hop accuracy table: one row per single-hop query with generation and first-token scores."""
    ds = dataset.single_hop()
    scores = score_prompts(model, [r.prompt for r in ds], [r.all_answers for r in ds], batch_size=batch_size,
                           max_new_tokens=max_new_tokens, progress=progress, desc="single-hop")
    meta = pd.DataFrame([{"qid": r.qid, "relation": r.relation, "subject": r.subject, "answer": r.answer}
                         for r in ds])
    return pd.concat([meta, scores], axis=1)
