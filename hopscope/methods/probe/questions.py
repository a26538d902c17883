"""What the probe reads: a prompt, its statements, and each statement's depth in the reasoning tree."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from hopscope.data.kth_smallest import KthExample

Span = tuple[int, int]


@dataclass(frozen=True)
class ProbeQuestion:
    """One probed prompt.

    ``statements``: character spans of the statements in ``prompt``; ``depth[j]``: statement ``j``'s depth
    in the reasoning tree (0 = the root, 1 = a premise of the root, ...; -1 = noise, not in the tree).
    ``query``: character span of the query rows (the question and what follows it; the last token for the
    k-th smallest). ``answer`` is the target continuation (``" 3"``, ``" True"``); ``alternative`` the
    competing answer when accuracy compares two (``" False"``). ``group`` names the theory: folds never
    split one. ``corrupted``: the prompt with the paper's corruption inserted ("" when none applies).
    ``ranks``: size rank of each number (k-th smallest only).
    """

    qid: str
    group: str
    prompt: str
    statements: tuple[Span, ...]
    depth: tuple[int, ...]
    query: Span
    answer: str
    alternative: str = ""
    corrupted: str = ""
    corrupted_statement: int = -1
    ranks: tuple[int, ...] = ()
    numbers: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if len(self.statements) != len(self.depth):
            raise ValueError(f"question {self.qid}: {len(self.statements)} statements but {len(self.depth)} depths")
        for a, b in self.statements:
            if not 0 <= a < b <= len(self.prompt):
                raise ValueError(f"question {self.qid}: statement span {(a, b)} lies outside the prompt")


def kth_questions(examples: Sequence[KthExample], *, prefix: str = "kth") -> list[ProbeQuestion]:
    """Probe questions for k-th smallest lists: each number is a statement; the query is the last token."""
    out = []
    for i, ex in enumerate(examples):
        prompt = ex.prompt
        spans = tuple(ex.char_spans)
        qid = f"{prefix}:{i}"
        out.append(ProbeQuestion(qid=qid, group=qid, prompt=prompt, statements=spans, depth=ex.depth,
                                 query=spans[-1], answer=ex.target, ranks=ex.ranks, numbers=ex.numbers))
    return out
