"""Corruptions of probed questions.

ProofWriter (the paper's experiment): one theory sentence that the proof does not use is replaced by
"That ... is false." (built by :mod:`hopscope.methods.probe.proofwriter`); the model should keep its answer.
k-th smallest (a hopscope extension): one useful and one noise number of a list are rewritten to a pool
value above the answer: a useful number becomes noise, so the answer moves; a noise number stays noise.
"""

from __future__ import annotations

import random
from typing import Sequence

from hopscope.data.kth_smallest import KthExample
from hopscope.methods.probe.questions import ProbeQuestion, kth_questions


def kth_rewrites(q: ProbeQuestion, k: int, pool: Sequence[int], seed: int) -> list[dict]:
    """For one list: a rewrite of a random useful number and of a random noise number (a number above the
    answer, so it stays noise), each to a random pool value above the answer. Rows carry the new question."""
    ex = KthExample(q.numbers, k)
    rng = random.Random(f"{seed}:{q.qid}")
    out = []
    for kind in ("useful", "noise"):
        cands = [j for j, (u, v) in enumerate(zip(ex.useful, ex.numbers))
                 if (u if kind == "useful" else (not u and v > ex.answer))]
        if not cands:
            continue
        j = rng.choice(cands)
        values = [v for v in sorted(set(pool)) if v > ex.answer and v != ex.numbers[j]]
        if not values:
            continue
        new = ex.corrupted(j, rng.choice(values))
        question = kth_questions([new], prefix=q.qid + f":{kind}")[0]
        out.append(dict(qid=q.qid, kind=kind, position=j, old_value=ex.numbers[j], new_value=new.numbers[j],
                        answer_before=ex.answer, answer_after=new.answer, question=question))
    return out
