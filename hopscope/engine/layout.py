"""How the columns of one forward map to the prompt positions of each row.

Row ``r``'s prompt has ``lengths[r]`` tokens. Its first ``prefix`` tokens (shared by every row) sit in a KV
cache at key columns ``0 .. prefix-1``; then come ``pads[r]`` padding columns, then the rest of the prompt.
The forward itself computes the ``width`` columns after the prefix. A plain left-padded batch is
``prefix=0, pads=<pad count per row>``; a pass that reruns a shared prompt from position ``s`` is
``prefix=s, pads=0``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from hopscope.engine.sites import Position, resolve_positions


@dataclass
class Layout:
    """Prompt positions -> forward (query) columns and cache (key) columns, per row."""

    lengths: list[int]
    pads: list[int]
    prefix: int = 0
    width: int = 0

    @classmethod
    def left_padded(cls, lengths: list[int], width: int) -> "Layout":
        return cls(list(lengths), [width - n for n in lengths], 0, width)

    @classmethod
    def shared(cls, rows: int, length: int, start: int) -> "Layout":
        """``rows`` copies of one prompt of ``length`` tokens, recomputed from position ``start``."""
        return cls([length] * rows, [0] * rows, start, length - start)

    @classmethod
    def packed(cls, rows: int, length: int, slots: Sequence[int] | None = None) -> "PackedLayout":
        """``rows`` copies of one prompt packed into one sequence (see :class:`PackedLayout`); row ``r``'s last
        position is the ``slots[r]``-th column after the prompt (default: the ``r``-th)."""
        slots = range(rows) if slots is None else slots
        return PackedLayout([length] * rows, [0] * rows, 0, length + rows, [length + k for k in slots])

    def key_column(self, row: int, p: int) -> int:
        return p if p < self.prefix else p + self.pads[row]

    def columns(self, row: int, position: Position, *, keys: bool = False) -> list[int]:
        """Columns of ``position`` in ``row``: key columns of the whole cached sequence, or (default) the
        columns of this forward, which must hold every position named."""
        positions = resolve_positions(position, self.lengths[row])
        cols = [self.key_column(row, p) for p in positions]
        if keys:
            return cols
        cols = [c - self.prefix for c in cols]
        outside = [p for p, c in zip(positions, cols) if not 0 <= c < self.width]
        if outside:
            raise ValueError(
                f"prompt position(s) {outside} are not computed in this pass (only positions {self.prefix}.."
                f"{self.lengths[row] - 1} are): move the intervention later or recompute from an earlier start"
            )
        return cols

    def key_columns(self, row: int) -> list[int]:
        """Key columns of every real token of ``row`` (prefix and suffix, no padding)."""
        n = self.lengths[row]
        return [self.key_column(row, p) for p in range(n)]


@dataclass
class PackedLayout(Layout):
    """One sequence holding the prompt once and then one more column per row: every row shares the prompt's
    columns ``0 .. n-2`` and has its own last position at column ``last[row]`` (the prompt's own last
    column ``n-1`` is the clean row). The attention mask (:func:`packed_mask`) lets each row's column see
    the shared columns and itself only, so it computes exactly what that row alone would."""

    last: list[int] = field(default_factory=list)

    def key_column(self, row: int, p: int) -> int:
        return self.last[row] if p == self.lengths[row] - 1 else p


def packed_mask(length: int, rows: int, device=None) -> torch.Tensor:
    """Boolean ``[1, 1, q, k]`` mask (True = may attend) of :meth:`Layout.packed`: causal over the prompt's
    ``length`` columns; each of the ``rows`` columns after them sees columns ``0 .. length-2`` and itself."""
    w = length + rows
    mask = torch.zeros(w, w, dtype=torch.bool, device=device)
    mask[:length, :length] = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    mask[length:, :length - 1] = True
    idx = torch.arange(length, w, device=device)
    mask[idx, idx] = True
    return mask[None, None]


def prefix_and_tail_widths(ids: Sequence[Sequence[int]], own: Sequence[int]) -> tuple[int, int]:
    """The columns :func:`tails_after_prefixes` lays out: the longest cached prefix (``max(own)``) and the
    longest run of a row's own tokens after its prefix."""
    return max(own), max(len(x) - p for x, p in zip(ids, own))


def left_pad_mask(mask: torch.Tensor, width: int) -> torch.Tensor:
    """``mask [rows, w]`` with ``width - w`` zero columns in front (padding the mask hides)."""
    pad = torch.zeros(mask.shape[0], width - mask.shape[1], dtype=mask.dtype, device=mask.device)
    return torch.cat([pad, mask], 1)


def tails_after_prefixes(ids: Sequence[Sequence[int]], own: Sequence[int],
                         pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One batch of each row's tokens after its own cached prefix of ``own[i]`` tokens.

    The prefixes sit left-padded inside a cache of ``max(own)`` columns and each row's remaining tokens come
    left-padded after it. Returns ``input_ids [rows, width]``, the attention mask ``[rows, max(own) + width]``
    (zero on both paddings) and ``position_ids [rows, width]`` (each row's own positions).
    """
    big, width = prefix_and_tail_widths(ids, own)
    r = len(ids)
    input_ids = torch.full((r, width), pad_id, dtype=torch.long)
    mask = torch.zeros((r, big + width), dtype=torch.long)
    positions = torch.zeros((r, width), dtype=torch.long)
    for i, (x, p) in enumerate(zip(ids, own)):
        tail = list(x[p:])
        input_ids[i, width - len(tail):] = torch.tensor(tail, dtype=torch.long)
        mask[i, big - p:big] = 1
        mask[i, big + width - len(tail):] = 1
        positions[i, width - len(tail):] = torch.arange(p, len(x))
    return input_ids, mask, positions
