"""Scoring rows of one prompt: greedy decoding through the engine, the run's answer rule, the answer's first
token at the first generated position; and the negative log-likelihood of a window of plain text."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pandas as pd
import torch

from hopscope.engine import Intervention, MatchRule, first_token_id, generate, run, score_tokens
from hopscope.methods.hopping import queries as Q

if TYPE_CHECKING:
    from hopscope.methods.repair.policies import Spec
    from hopscope.models.loaded import LoadedModel

ROW_COLUMNS = ("qid", "policy", "candidate", "s", "t", "layer", "tau", "correct", "logprob", "first_token", "text",
               "n_tokens", "group")


EDIT_POLICIES = ("mitigation", "mitigation_random")  # edits of the model: every prompt and generated position


def decode_rows(lm: "LoadedModel", q: Any, specs: Sequence["Spec"], rows: Sequence[Sequence[Intervention]],
                start: int, rule: MatchRule, *, batch_size: int = 256) -> pd.DataFrame:
    """One row per spec: ``correct`` (the rule on the greedy continuation of ``q.prompt`` under that row's
    interventions), ``logprob`` of e3's first token at the first generated position, the continuation's first
    token, text (up to where the verdict was final) and length. The rows share the prompt (its prefix before
    ``start`` runs once; a row stops decoding once the alias appeared); a mitigation's rows (``EDIT_POLICIES``)
    are edits of the model, applied at every prompt position and at every generated token."""
    answers = Q.answers(q)
    is_edit = [spec.policy in EDIT_POLICIES for spec in specs]
    g = generate(lm, q.prompt, [[] if e else list(r) for r, e in zip(rows, is_edit)],
                 edits=[list(r) if e else [] for r, e in zip(rows, is_edit)], max_new_tokens=rule.max_new_tokens,
                 start=start, stop=rule.stopper(lm, [answers] * len(rows)), first_logits=True, batch_size=batch_size)
    try:
        aid = first_token_id(lm.tokenizer, q.e3)
        logprob = score_tokens(g.first_logits, [aid] * len(rows))["logprob"].tolist()
    except ValueError:
        logprob = [float("nan")] * len(rows)
    out = []
    for spec, toks, lp in zip(specs, g.tokens, logprob):
        text = lm.tokenizer.decode(toks, skip_special_tokens=True)
        out.append({"qid": str(q.qid), **spec.row(), "correct": rule.matches(text, answers), "logprob": float(lp),
                    "first_token": lm.tokenizer.decode(list(toks[:1])), "text": text, "n_tokens": len(toks)})
    return pd.DataFrame(out)


def text_nll(lm: "LoadedModel", text: str, rows: Sequence[Sequence[Intervention]]) -> np.ndarray:
    """Summed next-token negative log-likelihood of ``text`` under each row's interventions ``[rows]``."""
    ids = lm.to_ids(text)
    logits = run(lm, [text] * len(rows), [list(r) for r in rows]).logits  # one prompt: no padding
    target = torch.tensor(ids[1:], dtype=torch.long)
    return np.array([-float(score_tokens(logits[j, :-1], target)["logprob"].sum()) for j in range(len(rows))])
