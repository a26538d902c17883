"""Whether the model answers each probed question: top-1 for the k-th smallest (the paper's GPT-2
evaluator), " True" against " False" for ProofWriter (its LLaMA evaluator compares the two tokens only)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from hopscope.engine import first_token_id, logit_diff, run
from hopscope.methods.probe.questions import ProbeQuestion


def answer_ids(lm, questions: Sequence[ProbeQuestion]) -> tuple[np.ndarray, np.ndarray | None]:
    """First token ids of the answers, and of the alternatives when every question has one."""
    good = np.array([first_token_id(lm.tokenizer, q.answer) for q in questions], dtype=np.int64)
    if questions and all(q.alternative for q in questions):
        bad = np.array([first_token_id(lm.tokenizer, q.alternative) for q in questions], dtype=np.int64)
        if np.any(good == bad):
            raise ValueError("the answer and its alternative share their first token for this tokenizer")
        return good, bad
    return good, None


def score(lm, logits: torch.Tensor, questions: Sequence[ProbeQuestion]) -> dict[str, np.ndarray]:
    """``correct`` per question and ``margin``: the answer's logit minus the alternative's (two-way
    questions) or minus the best other token's (top-1 questions)."""
    good, bad = answer_ids(lm, questions)
    logits = logits.float()
    if bad is not None:
        margin = logit_diff(logits, good, bad).cpu().numpy()
    else:
        target = logits.gather(-1, torch.as_tensor(good)[:, None])[:, 0]
        other = logits.scatter(-1, torch.as_tensor(good)[:, None], float("-inf")).max(-1).values
        margin = (target - other).cpu().numpy()
    return {"correct": margin > 0, "margin": margin}


def last_logits(lm, prompts: Sequence[str], interventions=None, *, batch_size: int = 64) -> torch.Tensor:
    """Last-position logits ``[n, vocab]`` of ``prompts`` (one shared list of interventions for every row)."""
    rows = [list(interventions)] * len(prompts) if interventions else None
    return run(lm, list(prompts), rows, last_only=True, batch_size=batch_size).logits
