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


def _generate(lm: "LoadedModel", prompt: str, rows: list[list[Intervention]], answers: list[str], start: int,
              rule: MatchRule, batch_size: int, as_edits: bool) -> tuple[list[list[int]], torch.Tensor]:
    """Greedy continuations and first-position logits of ``rows`` (as edits of the model when ``as_edits``)."""
    common = dict(max_new_tokens=rule.max_new_tokens, stop=rule.stopper(lm, [answers] * len(rows)),
                  first_logits=True, batch_size=batch_size)
    if as_edits:
        g = generate(lm, prompt, [[] for _ in rows], edits=rows, **common)
    else:
        g = generate(lm, prompt, rows, start=start, **common)
    return [list(x) for x in g.tokens], g.first_logits


def decode_rows(lm: "LoadedModel", q: Any, specs: Sequence["Spec"], rows: Sequence[Sequence[Intervention]],
                start: int, rule: MatchRule, *, batch_size: int = 256) -> pd.DataFrame:
    """One row per spec: ``correct`` (the rule on the greedy continuation of ``q.prompt`` under that row's
    interventions), ``logprob`` of e3's first token at the first generated position, the continuation's first
    token, text (up to where the verdict was final) and length. The rows share the prompt (its prefix before
    ``start`` runs once; a row stops decoding once the alias appeared); a mitigation's rows (``EDIT_POLICIES``)
    are edits of the model, applied at every prompt position and at every generated token."""
    answers = Q.answers(q)
    parts = {flag: [i for i, sp in enumerate(specs) if (sp.policy in EDIT_POLICIES) == flag] for flag in (False, True)}
    tokens: list[list[int]] = [[] for _ in specs]
    first = [None] * len(specs)
    for flag, idx in parts.items():
        if not idx:
            continue
        toks, logits = _generate(lm, q.prompt, [list(rows[i]) for i in idx], answers, start, rule, batch_size, flag)
        for j, i in enumerate(idx):
            tokens[i], first[i] = toks[j], logits[j]
    first_logits = torch.stack(first)
    try:
        aid = first_token_id(lm.tokenizer, q.e3)
        logprob = score_tokens(first_logits, [aid] * len(rows))["logprob"].tolist()
    except ValueError:
        logprob = [float("nan")] * len(rows)
    out = []
    for spec, toks, lp in zip(specs, tokens, logprob):
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
