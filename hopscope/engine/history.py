"""Decode steps that share, among rows with one token history, the blocks below each row's first intervention.

Interventions act on the prompt pass only, so a row whose first intervention is at block ``t`` (its *join*
block) holds exactly the clean prompt's keys and values below block ``t``. Two such rows that have generated
the same tokens so far compute the same new-token state at every block below both their joins. A decode step
therefore runs one *unit* per token history at block ``b`` for the rows joining above ``b``, and one unit per
row for the rows joining at or below ``b``; units split as the step climbs the blocks, and the final norm and
unembedding run one unit per history for the rows that joined nowhere (clean rows). Each unit's new keys and
values are written into the cache rows of all its members, so a later step may split them anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import torch

from hopscope.engine import kv
from hopscope.engine.compat import call_model, output_cache
from hopscope.engine.hooks import unit_hooks

if TYPE_CHECKING:
    from hopscope.models.loaded import LoadedModel


@dataclass
class StepUnits:
    """What one decode step computes at block ``b`` (``b == n_layers``: the final norm and unembedding).

    ``rep[b]``: the batch row whose computation each unit runs; ``of_row[b]``: each batch row's unit;
    ``grow[b]``: for each unit at ``b``, its unit at ``b - 1`` (None where the units do not change)."""

    rep: list[torch.Tensor]
    of_row: list[torch.Tensor]
    grow: list[torch.Tensor | None]

    def work(self) -> int:
        """Row-blocks this step computes (the plain step computes ``rows x (n_layers + 1)``)."""
        return sum(r.numel() for r in self.rep)


def plan_units(histories: Sequence[tuple[int, ...]], joins: Sequence[int], n_layers: int,
               device: torch.device | str = "cpu") -> StepUnits | None:
    """The units of one step of rows with these token ``histories`` and join blocks (None: nothing to share,
    every row is its own unit from block 0)."""
    rows = len(joins)
    group: dict[tuple[int, ...], int] = {}
    gid = [group.setdefault(h, len(group)) for h in histories]
    if len(group) == rows or all(j <= 0 for j in joins):
        return None
    changes = set(joins)
    rep: list[torch.Tensor] = []
    of_row: list[torch.Tensor] = []
    grow: list[torch.Tensor | None] = []
    prev_of: list[int] | None = None
    for b in range(n_layers + 1):
        if prev_of is not None and b not in changes:
            rep.append(rep[-1])
            of_row.append(of_row[-1])
            grow.append(None)
            continue
        seen: dict[int, int] = {}
        reps: list[int] = []
        of: list[int] = []
        for i in range(rows):
            key = gid[i] if joins[i] > min(b, n_layers - 1) else rows + i  # clean rows share the final norm too
            u = seen.get(key)
            if u is None:
                u = seen[key] = len(reps)
                reps.append(i)
            of.append(u)
        if prev_of is not None:
            grow.append(torch.tensor([prev_of[i] for i in reps], dtype=torch.long, device=device))
        else:
            grow.append(None)
        rep.append(torch.tensor(reps, dtype=torch.long, device=device))
        of_row.append(torch.tensor(of, dtype=torch.long, device=device))
        prev_of = of
    return StepUnits(rep, of_row, grow)


def can_share(lm: "LoadedModel", cache) -> bool:
    """Whether decode steps on ``cache`` can share units: every layer of the model is a reserved dynamic layer
    (no sliding windows) of the model's own block."""
    layers = getattr(cache, "layers", None)
    return (layers is not None and len(layers) == lm.n_layers
            and all(isinstance(l, kv.ReservedLayer) and l.holds_own() for l in layers))


def shared_step(lm: "LoadedModel", cache, tok: torch.Tensor, next_pos: torch.Tensor, units: StepUnits):
    """One greedy decode step of every row (no padding), each unit computed once: ``([rows, vocab] logits of
    the new position, the cache)``."""
    layers = cache.layers
    rows = tok.shape[0]
    for b, layer in enumerate(layers):
        layer.units = None if units.rep[b].numel() == rows else (units.of_row[b], units.rep[b])
    first = units.rep[0]
    try:
        with unit_hooks(lm, units.grow, [r.numel() for r in units.rep]):
            step = call_model(lm.model, past=cache, input_ids=tok.index_select(0, first)[:, None],
                              position_ids=next_pos.index_select(0, first)[:, None], use_cache=True,
                              logits_to_keep=1)
    finally:
        for layer in layers:
            layer.units = None
    return step.logits[:, -1].index_select(0, units.of_row[-1].to(step.logits.device)), output_cache(step)
