"""Prompt passes over one shared prompt: a cached prefix, a recomputed suffix, and the staircase.

Every row of a prompt pass is the same prompt with its own interventions. The tokens before ``start`` are
identical in every row: they run once (a cached KV prefix) and only positions ``start..`` run per row.
Beyond that, a row whose interventions all sit at layers ``>= t`` computes exactly what the clean prompt
computes below block ``t``. So the pass runs one clean *carrier* row from the first block, and each row
joins the batch at the input of its own first block as a copy of the carrier (the staircase); rows without
interventions join at the final norm. Blocks below ``t`` are never recomputed for a row patched at ``t``.

A short prompt whose rows all act at the last position runs *packed* (:func:`packs` says when): one
forward instead of the prefix pass and the staircase, holding the prompt once and then one more column per
row at the last position, under a mask that lets each such column see the prompt's first ``n-1`` columns
and itself (:func:`hopscope.engine.layout.packed_mask`). The staircase holds there too, along the sequence:
a row's column joins at the input of its first block as a copy of the prompt's last column. Each forward
reads every weight once, so for a few rows this costs little more than the prompt alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch

from hopscope.engine import kv
from hopscope.engine.hooks import ColumnStaircase, Staircase, join_layer
from hopscope.engine.interventions import Intervention
from hopscope.engine.layout import Layout, packed_mask
from hopscope.engine.prefix import SMALL_PASS, STORE
from hopscope.engine.runner import RunResult, forward, rows_of
from hopscope.engine.sites import first_position, normalise_site

if TYPE_CHECKING:
    from hopscope.models.loaded import LoadedModel


def _staircase_allowed(rows: Sequence[Sequence[Intervention]]) -> bool:
    """Batch-mean ablation needs every row present at its layer, so it runs without the staircase."""
    return not any(iv.op == "mean" and iv.value is None for r in rows for iv in r)


def packs(lm: "LoadedModel", ids: Sequence[int], start: int, rows: Sequence[Sequence[Intervention]],
          keep_cache: bool = False) -> bool:
    """Whether a pass of ``rows`` over ``ids`` runs packed (one forward; see the module text).

    It needs the rows acting at the last position only (``start = n-1``), reading no attention pattern and no
    batch means, no per-row cache kept, and a model without sliding windows (the packed mask is one causal
    mask). It never depends on what the prefix store holds, so which path gives a result (and its last bits)
    does not depend on what ran before (a resumed run equals an uninterrupted one). Each row's column joins
    the sequence at its first block (:class:`~hopscope.engine.hooks.ColumnStaircase`), so no block below it
    runs for it. Against two forwards (the prefix pass, then the staircase) packing saves one pass over the
    weights; against the staircase alone from a cached prefix it computes the prompt's first ``n-1`` columns
    again at every block, bounded here: at most ``SMALL_PASS / 2``.
    """
    n = len(ids)
    if keep_cache or start != n - 1 or n < 2 or not _staircase_allowed(rows) or kv.sliding_window(lm) is not None:
        return False
    if any(normalise_site(iv.site, lm).component == "attn_pattern" for r in rows for iv in r):
        return False
    return n - 1 <= SMALL_PASS // 2


def plan_staircase(lm: "LoadedModel", rows: Sequence[Sequence[Intervention]]) -> tuple[list[int], Staircase]:
    """Batch index of each row (the carrier is index 0) and the rows added at each block."""
    joins = [join_layer(lm, r) for r in rows]
    order = sorted(range(len(rows)), key=lambda r: joins[r])
    index = [0] * len(rows)
    for pos, r in enumerate(order):
        index[r] = pos + 1
    adds: dict[int, int] = {}
    for j in joins:
        adds[j] = adds.get(j, 0) + 1
    sizes, n = [], 1
    for layer in range(lm.n_layers):
        n += adds.get(layer, 0)
        sizes.append(n)
    return index, Staircase(adds, sizes)


def prompt_pass(
    lm: "LoadedModel",
    prompt: str,
    interventions: Sequence[Sequence[Intervention]],
    *,
    start: int = -1,
    keep_cache: bool = False,
    batch_size: int = 256,
    staircase: bool = True,
    pack: bool = True,
) -> RunResult:
    """Last-position logits ``[rows, vocab]`` of ``prompt``, one row per list of interventions.

    Positions before ``start`` (negative: from the end) are shared through a cached prefix; interventions
    must act at positions ``>= start`` (knockouts may block any keys). ``staircase=False`` runs every row
    through every block (the reference the staircase is tested against). ``keep_cache`` returns the KV cache
    of the whole prompt for every row (for decoding on; rows are then not chunked). ``pack=False`` never
    runs the packed single forward (an uncached prefix then runs in its own pass before the staircase).
    """
    ids = lm.to_ids(prompt)
    if not ids:
        raise ValueError(f"prompt {prompt!r} tokenizes to nothing")
    n = len(ids)
    s = start + n if start < 0 else start
    if not 0 <= s < n:
        raise ValueError(f"start {start} is outside the prompt of {n} tokens")
    rows = rows_of(interventions, len(interventions))
    if not rows:
        raise ValueError("prompt_pass needs at least one row of interventions (an empty list is a clean row)")
    for r in rows:
        for iv in r:
            if first_position(iv.site.position, n) < s:
                raise ValueError(f"{iv.op} at {iv.site} acts before position {s}, which this pass does not recompute "
                                 f"(start={start}); use an earlier start")
    if keep_cache or len(rows) <= batch_size:
        return _chunk(lm, ids, s, rows, keep_cache, staircase, pack)
    parts = [_chunk(lm, ids, s, rows[i:i + batch_size], False, staircase, pack)
             for i in range(0, len(rows), batch_size)]
    return RunResult(torch.cat([p.logits for p in parts]), [c for p in parts for c in p.cache])


def run_last_position(lm: "LoadedModel", prompt: str, interventions: Sequence[Sequence[Intervention]], *,
                      keep_cache: bool = False) -> RunResult:
    """:func:`prompt_pass` from the last position (interventions at the last prompt token only)."""
    return prompt_pass(lm, prompt, interventions, start=-1, keep_cache=keep_cache)


def _chunk(lm: "LoadedModel", ids: list[int], s: int, rows: list[list[Intervention]], keep_cache: bool,
           staircase: bool, pack: bool) -> RunResult:
    n, r = len(ids), len(rows)
    dev = lm.device
    if staircase and pack and packs(lm, ids, s, rows, keep_cache):
        return _packed(lm, ids, rows)
    stair = staircase and _staircase_allowed(rows)
    if stair:
        index, plan = plan_staircase(lm, rows)
        batch, sizes = 1, plan.sizes
    else:
        index, plan = list(range(r)), None
        batch, sizes = r, [r] * lm.n_layers
    past = kv.fork(STORE.get(lm, ids[:s]), sizes) if s > 0 else None
    input_ids = torch.tensor([ids[s:]] * batch, dtype=torch.long, device=dev)
    mask = torch.ones((batch, n), dtype=torch.long, device=dev)
    positions = torch.arange(s, n, device=dev)[None].expand(batch, -1)
    layout = Layout.shared(r, n, s)
    logits, cache, session = forward(lm, input_ids, mask, positions, rows, layout, past=past,
                                     use_cache=keep_cache or past is not None, last_only=True,
                                     index=index, staircase=plan)
    order = torch.tensor(index, dtype=torch.long, device=logits.device)
    logits = logits[:, -1].float().index_select(0, order)
    if keep_cache and stair:
        cache = kv.complete(cache, r + 1, order)
    return RunResult(logits, session.cache, None, cache if keep_cache else None)


def _packed(lm: "LoadedModel", ids: list[int], rows: list[list[Intervention]]) -> RunResult:
    """The prompt and one last-position column per row in one forward (the prefix store is not used). The
    row columns are ordered by their first block and join the sequence there (a :class:`ColumnStaircase`)."""
    n, r = len(ids), len(rows)
    dev = lm.device
    index, plan = plan_staircase(lm, rows)  # the batch staircase's plan: its carrier row is column n-1 here
    slot = [i - 1 for i in index]
    widths = [n - 1 + size for size in plan.sizes]
    input_ids = torch.tensor([ids + [ids[-1]] * r], dtype=torch.long, device=dev)
    positions = torch.tensor([list(range(n)) + [n - 1] * r], dtype=torch.long, device=dev)
    logits, _, session = forward(lm, input_ids, packed_mask(n, r, dev), positions, rows, Layout.packed(r, n, slot),
                                 last_only=r, index=[0] * r, staircase=ColumnStaircase(widths, n + r, n - 1))
    return RunResult(logits[0].float()[torch.tensor(slot, device=logits.device)], session.cache)
