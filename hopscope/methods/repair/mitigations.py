"""The final-layer mitigation candidates, from the recall analysis's own pieces.

``mitigation_from="recall"``: the recall analysis's design of its own relation (its seeded training half),
:func:`hopscope.methods.recall.mitigation.propose` on that half, each proposal scored there and the one with the
largest mean gain in p(answer) marked ``chosen``, exactly as the recall analysis chooses. ``"train"``: the same
proposals computed on the repair's training queries' composed prompts (e1 as the subject, e3 as the answer); the
choice among them is then made by net accuracy gain on the training queries, like the other policies.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import pandas as pd

from hopscope.data.spans import char_span
from hopscope.methods.recall.analysis import prepare as recall_design
from hopscope.methods.recall.collect import collect
from hopscope.methods.recall.mitigation import Mitigation, mitigation_summary, propose, score_prompts
from hopscope.methods.recall.queries import items
from hopscope.methods.recall.settings import Settings as RecallSettings

if TYPE_CHECKING:
    from hopscope.methods.repair.settings import Settings
    from hopscope.models.loaded import LoadedModel

COLUMNS = ("mitigation", "kind", "layer", "heads", "neurons", "factor", "target", "direction", "proposed_on",
           "train_gain_prob", "chosen")


def recall_settings(s: "Settings") -> RecallSettings:
    """The recall analysis's settings whose training half proposes and chooses the mitigation."""
    return RecallSettings(relation=s.mitigation_relation, n=s.mitigation_prompts, shots=s.mitigation_shots,
                          k_heads=s.k_heads, k_neurons=s.k_neurons, factor=s.factor, n_other=0, seed=s.seed)


def _frame(mits: Sequence[Mitigation], proposed_on: str, gains: dict[str, float], chosen: str | None) -> pd.DataFrame:
    rows = [{**m.to_row(), "proposed_on": proposed_on, "train_gain_prob": gains.get(m.name, float("nan")),
             "chosen": m.name == chosen} for m in mits]
    return pd.DataFrame(rows, columns=list(COLUMNS))


def recall_candidates(lm: "LoadedModel", s: "Settings") -> pd.DataFrame:
    """The recall analysis's proposals on its training half, the one it chooses marked ``chosen``."""
    rs = recall_settings(s)
    train = [r for r in recall_design(None, rs) if r["split"] == "train"]
    its = items(lm, train)
    mits = propose(lm, collect(lm, its, patterns=False), k_heads=rs.k_heads, k_neurons=rs.k_neurons,
                   factor=rs.factor)
    if not mits:
        return _frame([], "", {}, None)
    scores = score_prompts(lm, its, mits)
    scores.insert(1, "eval_set", "train")
    summary = mitigation_summary(scores, None)
    gains = dict(zip(summary["mitigation"], summary["train_gain_prob"]))
    chosen = str(summary.loc[summary["chosen"], "mitigation"].iloc[0])
    return _frame(mits, f"recall: {rs.relation}, {len(train)} training prompts", gains, chosen)


def train_candidates(lm: "LoadedModel", queries: Sequence[Any], s: "Settings") -> pd.DataFrame:
    """The proposals computed on the composed prompts of the training queries (chosen later, by net gain)."""
    rows = []
    for q in queries:
        span = getattr(q, "e1_span", None)
        rows.append({"qid": str(q.qid), "prompt": q.prompt, "answer": q.e3, "subject": q.e1,
                     "subject_span": list(span) if span is not None else list(char_span(q.prompt, q.e1))})
    mits = propose(lm, collect(lm, items(lm, rows), patterns=False), k_heads=s.k_heads, k_neurons=s.k_neurons,
                   factor=s.factor)
    return _frame(mits, f"repair: {len(rows)} training queries", {}, None)
