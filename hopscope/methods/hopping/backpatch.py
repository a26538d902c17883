"""Back-patching (Biran et al. 2024): patch a later layer's hidden state back into an earlier layer.

For a two-hop query, ``h_s`` (the output of block ``s``, ``resid_post``) at a position of the clean run
replaces the output of block ``t < s`` at the same position; the model greedy-decodes and the continuation is
scored by the run's :class:`~hopscope.engine.scoring.MatchRule` against e3. Positions (``variant``): ``last``
(t2, the last prompt token) and ``e1`` (t1, e1's last token), as in the paper's code. Conditions:

* ``back``      s > t: the paper's back-patch;
* ``forward``   s < t: the same states patched forward (a control beyond the paper);
* ``random``    s > t: a random vector of norm ``||h_s||`` (a control beyond the paper);
* ``unrelated`` s > t: ``h_s`` of another query's prompt, at its own position (a control beyond the paper);
* ``clean``     no patch (one row per query, ``s = t = -1``).

Every row of a query shares its prompt: the prefix before the patched position runs once, a row patched at
block ``t`` joins at block ``t`` (the engine's staircase), and a row stops decoding once its verdict is final
(the alias appeared), so ``correct`` is exactly the unstopped verdict and ``text`` is the generation up to there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import pandas as pd
import torch

from hopscope.engine import (Intervention, MatchRule, Site, first_token_id, generate, replace, run_with_cache,
                             score_tokens)
from hopscope.methods.hopping import queries as Q

if TYPE_CHECKING:
    from hopscope.models.loaded import LoadedModel

CONDITIONS = ("back", "forward", "random", "unrelated")
COLUMNS = ("qid", "variant", "condition", "s", "t", "correct", "prob", "rank", "first_token", "text", "n_tokens")


def layer_pairs(layers: Sequence[int], condition: str) -> list[tuple[int, int]]:
    """(s, t) pairs of the grid: s > t, or s < t for ``forward``."""
    if condition not in CONDITIONS:
        raise ValueError(f"unknown condition {condition!r}; choose from {', '.join(CONDITIONS)}")
    if condition == "forward":
        return [(s, t) for s in layers for t in layers if s < t]
    return [(s, t) for s in layers for t in layers if s > t]


def random_like(h: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A random direction with the norm of ``h``."""
    r = torch.randn(h.shape, generator=generator, dtype=torch.float32)
    return (r / r.norm() * h.float().norm()).to(h.dtype)


def backpatch_rows(lm: "LoadedModel", q: Any, layers: Sequence[int], acts: Any, *,
                   variants: Sequence[str] = ("last", "e1"), controls: Sequence[str] = (),
                   control_variants: Sequence[str] = ("last",), partner: Any = None, partner_acts: Any = None,
                   seed: int = 0) -> tuple[list[dict[str, Any]], list[list[Intervention]]]:
    """The patch rows of one query (no clean row): ``(specs, interventions)``.

    ``acts``: the query prompt's clean ``resid_post`` (``run_with_cache``); ``controls`` run for the variants in
    ``control_variants``; the ``unrelated`` control takes its states from ``partner_acts`` (the ``partner``
    query's clean run) at the partner's own position; without a partner it is skipped.
    """
    specs: list[dict[str, Any]] = []
    rows: list[list[Intervention]] = []
    for vi, variant in enumerate(variants):
        pos = Q.position(lm, q, variant)
        conds = ["back", *[c for c in controls if variant in control_variants]]
        ppos = Q.position(lm, partner, variant) if partner is not None and partner_acts is not None else None
        gen = torch.Generator().manual_seed(int(seed) * 7919 + vi)
        for cond in conds:
            if cond == "unrelated" and ppos is None:
                continue
            for s, t in layer_pairs(layers, cond):
                h = acts["resid_post", s][0, pos]
                value = (random_like(h, gen) if cond == "random" else
                         partner_acts["resid_post", s][0, ppos] if cond == "unrelated" else h).clone()
                specs.append({"variant": variant, "condition": cond, "s": s, "t": t, "position": pos})
                rows.append([replace(Site(t, "resid_post", pos), value)])
    return specs, rows


def backpatch_table(lm: "LoadedModel", q: Any, specs: Sequence[dict[str, Any]], tokens: Sequence[Sequence[int]],
                    first_logits: torch.Tensor, rule: MatchRule) -> pd.DataFrame:
    """Score the decoded rows (the first is the clean row) against e3."""
    aliases = Q.answers(q)
    sc = score_tokens(first_logits, [first_token_id(lm.tokenizer, q.e3)] * len(tokens))
    out = []
    for j, (spec, toks) in enumerate(zip([{"variant": "last", "condition": "clean", "s": -1, "t": -1}, *specs],
                                         tokens)):
        text = lm.tokenizer.decode(toks, skip_special_tokens=True)
        out.append({"qid": str(q.qid), "variant": spec["variant"], "condition": spec["condition"], "s": spec["s"],
                    "t": spec["t"], "correct": rule.matches(text, aliases), "prob": float(sc["prob"][j]),
                    "rank": int(sc["rank"][j]), "first_token": lm.tokenizer.decode(list(toks[:1])), "text": text,
                    "n_tokens": len(toks)})
    return pd.DataFrame(out, columns=list(COLUMNS))


def backpatch_query(lm: "LoadedModel", q: Any, layers: Sequence[int], rule: MatchRule, *,
                    variants: Sequence[str] = ("last", "e1"), controls: Sequence[str] = (),
                    control_variants: Sequence[str] = ("last",), partner: Any = None, seed: int = 0,
                    stop_early: bool = True, batch_size: int = 256) -> pd.DataFrame:
    """Every patch row of one query (one per variant, condition, s, t) plus the ``clean`` row.

    One ``generate`` call for all rows, from the earliest patched position. ``stop_early=False`` decodes every
    row to the end of the budget (the reference the early stop is tested against).
    """
    _, acts = run_with_cache(lm, q.prompt, components=("resid_post",), layers=layers)
    partner_acts = None
    if partner is not None and "unrelated" in controls:
        _, partner_acts = run_with_cache(lm, partner.prompt, components=("resid_post",), layers=layers)
    specs, rows = backpatch_rows(lm, q, layers, acts, variants=variants, controls=controls,
                                 control_variants=control_variants, partner=partner, partner_acts=partner_acts,
                                 seed=seed)
    start = min([Q.last(lm, q), *(s["position"] for s in specs)])
    g = generate(lm, q.prompt, [[], *rows], max_new_tokens=rule.max_new_tokens, start=start,
                 stop=rule.stopper(lm, [Q.answers(q)] * (len(rows) + 1)) if stop_early else None,
                 first_logits=True, batch_size=batch_size)
    return backpatch_table(lm, q, specs, g.tokens, g.first_logits, rule)


def query_summary(pairs: pd.DataFrame) -> pd.DataFrame:
    """One row per (query, variant, condition): how many pairs answer correctly, the oracle verdict, the best pair.

    ``fixed``: the clean composition is wrong and some pair makes it right (the paper's oracle success);
    ``break_frac``: for a clean-correct query, the share of pairs that make it wrong.
    """
    cols = ["qid", "variant", "condition", "n_pairs", "n_correct", "any_correct", "clean_correct", "fixed",
            "break_frac", "best_s", "best_t", "best_prob"]
    if not len(pairs):
        return pd.DataFrame(columns=cols)
    clean = pairs[pairs["condition"] == "clean"].set_index("qid")["correct"].astype(bool)
    out = []
    for (qid, variant, cond), g in pairs[pairs["condition"] != "clean"].groupby(
            ["qid", "variant", "condition"], sort=False):
        ok = bool(clean.get(qid, False))
        best = g.sort_values(["correct", "prob"], ascending=False).iloc[0]
        n_ok = int(g["correct"].sum())
        out.append({"qid": qid, "variant": variant, "condition": cond, "n_pairs": len(g), "n_correct": n_ok,
                    "any_correct": n_ok > 0, "clean_correct": ok, "fixed": (not ok) and n_ok > 0,
                    "break_frac": 1 - n_ok / len(g) if ok else float("nan"),
                    "best_s": int(best["s"]), "best_t": int(best["t"]), "best_prob": float(best["prob"])})
    return pd.DataFrame(out, columns=cols)


def fix_rate_matrix(pairs: pd.DataFrame, qids: Sequence[str], *, variant: str = "last",
                    conditions: Sequence[str] = ("back", "forward")) -> pd.DataFrame:
    """Share of ``qids`` answered correctly per (s, t): rows s, columns t (back below the diagonal)."""
    df = pairs[(pairs["variant"] == variant) & pairs["condition"].isin(list(conditions))
               & pairs["qid"].isin(list(qids))]
    m = df.groupby(["s", "t"])["correct"].mean().unstack("t")
    m.index.name, m.columns.name = "s (source layer)", "t (patched layer)"
    return m
