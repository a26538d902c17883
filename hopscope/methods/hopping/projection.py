"""Sublayer projections at the last position (Biran et al. 2024, after Geva et al. 2022).

Each layer's attention output and MLP output at the last prompt token go through the final norm and the
unembedding (as the paper's code does); the table gives, per layer, the rank of e2, of e3 and of the model's
OWN prediction (its first greedy token, whatever it is: defined on incorrect queries too). e2 and e3 are ranked
by the best of their names' and aliases' first tokens, with and without a leading space and lower-cased, as in
the paper. ``resid_post`` (the logit lens) goes beyond the paper. The first layer whose MLP output ranks the
prediction top-1 is the paper's "prediction extracted" stage; the first whose attention output ranks e2 top-1
is part of its "information propagation" stage.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import pandas as pd
import torch

from hopscope.engine import answer_token_ids, run_with_cache
from hopscope.lenses import project
from hopscope.methods.hopping import queries as Q

if TYPE_CHECKING:
    from hopscope.models.loaded import LoadedModel

COLUMNS = ("qid", "component", "layer", "e2_rank", "e3_rank", "prediction_rank", "prediction")


def entity_token_ids(lm: "LoadedModel", names: Sequence[str]) -> list[int]:
    """First token ids of each name as written and lower-cased, with and without a leading space."""
    ids: set[int] = set()
    for name in names:
        for form in {name, name.lower()}:
            for space in (True, False):
                try:
                    ids.add(answer_token_ids(lm.tokenizer, form, leading_space=space)[0])
                except ValueError:
                    pass
    return sorted(ids)


def _ranks(logits: torch.Tensor, ids: Sequence[int]) -> torch.Tensor:
    """Best rank (0 = top-1) over ``ids`` for every row of ``logits`` ``[n, vocab]``."""
    if not ids:
        return torch.full((logits.shape[0],), -1, dtype=torch.long)
    chosen = logits[:, list(ids)]  # [n, k]
    return (logits[:, None, :] > chosen[:, :, None]).sum(-1).min(-1).values


def projection_table(lm: "LoadedModel", q: Any, logits: torch.Tensor, acts: Any,
                     components: Sequence[str]) -> pd.DataFrame:
    """One row per (component, layer) of one query, from its clean ``run_with_cache`` (``logits`` [1, seq, V])."""
    pred = int(logits[0, -1].argmax())
    word = lm.tokenizer.decode([pred])
    e2, e3 = entity_token_ids(lm, Q.bridges(q)), entity_token_ids(lm, Q.answers(q))
    out = []
    for comp in components:
        vecs = torch.stack([acts[comp, l][0, -1] for l in range(lm.n_layers)])  # [L, d]
        proj = project(lm, vecs)  # final norm + unembedding: [L, vocab]
        r2, r3, rp = _ranks(proj, e2), _ranks(proj, e3), _ranks(proj, [pred])
        for layer in range(lm.n_layers):
            out.append({"qid": str(q.qid), "component": comp, "layer": layer, "e2_rank": int(r2[layer]),
                        "e3_rank": int(r3[layer]), "prediction_rank": int(rp[layer]), "prediction": word})
    return pd.DataFrame(out, columns=list(COLUMNS))


def projection_ranks(lm: "LoadedModel", queries: Sequence[Any], components: Sequence[str]) -> pd.DataFrame:
    """One row per (query, component, layer): ranks of e2, e3 and the model's own prediction."""
    frames = []
    for q in queries:
        logits, acts = run_with_cache(lm, q.prompt, components=tuple(components))
        frames.append(projection_table(lm, q, logits, acts, components))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(COLUMNS))


def first_top1(ranks: pd.DataFrame, qid: str, component: str, column: str) -> float:
    """The first layer at which ``column`` is 0 (top-1) for one query and component (NaN: never)."""
    g = ranks[(ranks["qid"] == qid) & (ranks["component"] == component) & (ranks[column] == 0)]
    return float(g["layer"].min()) if len(g) else float("nan")
