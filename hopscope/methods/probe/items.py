"""What the probe reads: prompts, their statements, and each statement's place in the reasoning tree."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from hopscope.data.kth_smallest import KthExample

Span = tuple[int, int]


@dataclass
class ProbeItems:
    """Prompts with statement character spans and tree labels.

    ``useful[i][j]``: statement ``j`` of prompt ``i`` is on the reasoning tree; ``step[i][j]``: its step
    (depth) in the tree, 0 for noise. ``targets`` (next-token answers, e.g. ``" 42"``) and ``ranks``
    (size rank of each statement, k-th smallest only) are optional. ``query_chars`` marks the question's
    characters for the ``mean``/``max`` query modes (default: the whole prompt).
    """

    prompts: list[str]
    statements: list[list[Span]]
    useful: list[list[bool]]
    step: list[list[int]]
    targets: list[str] | None = None
    ranks: list[list[int]] | None = None
    query_chars: list[Span] | None = None

    def __post_init__(self) -> None:
        n = len(self.prompts)
        for name in ("statements", "useful", "step"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} has {len(getattr(self, name))} entries for {n} prompts")
        for i, (s, u, d) in enumerate(zip(self.statements, self.useful, self.step)):
            if not len(s) == len(u) == len(d):
                raise ValueError(f"prompt {i}: {len(s)} statements, {len(u)} useful labels, {len(d)} step labels")

    def __len__(self) -> int:
        return len(self.prompts)

    def subset(self, idx: Sequence[int]) -> "ProbeItems":
        pick = lambda xs: None if xs is None else [xs[i] for i in idx]  # noqa: E731
        return ProbeItems(pick(self.prompts), pick(self.statements), pick(self.useful), pick(self.step),
                          pick(self.targets), pick(self.ranks), pick(self.query_chars))


def kth_items(examples: Sequence[KthExample]) -> ProbeItems:
    """Probe items for k-th smallest lists: each number is a statement; leaves are step 1, the root step 2."""
    return ProbeItems(
        prompts=[e.prompt for e in examples],
        statements=[e.char_spans for e in examples],
        useful=[list(e.useful) for e in examples],
        step=[list(e.step) for e in examples],
        targets=[e.target for e in examples],
        ranks=[list(e.ranks) for e in examples],
    )
