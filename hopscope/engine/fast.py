"""The last-position fast path and greedy generation with patches.

When every intervention of a batch touches only the last prompt position, the prefix (all tokens but the
last) is identical in every row: it runs once, its KV cache is expanded across the rows, and only the last
token runs per row. Greedy decoding then continues from the cache, so a patch applied on the prompt pass
reaches the generated tokens through the cache alone.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Sequence

import torch

from hopscope.engine.hooks import Layout
from hopscope.engine.interventions import Intervention
from hopscope.engine.runner import RunResult, _rows, forward

if TYPE_CHECKING:
    from hopscope.models.loaded import LoadedModel

_PREFIX_CACHE: dict[tuple[int, tuple[int, ...]], object] = {}


def prefix_cache(lm: "LoadedModel", ids: Sequence[int]):
    """KV cache of the prompt prefix ``ids`` (memoised for the most recent prefixes of each model)."""
    key = (id(lm.model), tuple(ids))
    if key not in _PREFIX_CACHE:
        if len(_PREFIX_CACHE) >= 8:
            _PREFIX_CACHE.pop(next(iter(_PREFIX_CACHE)))
        t = torch.tensor([list(ids)], device=lm.device)
        with torch.no_grad():
            out = lm.model(input_ids=t, attention_mask=torch.ones_like(t), use_cache=True)
        _PREFIX_CACHE[key] = out.past_key_values
    return _PREFIX_CACHE[key]


def _expanded(cache, rows: int):
    cache = copy.deepcopy(cache)
    if rows > 1:
        cache.batch_repeat_interleave(rows)
    return cache


def run_last_position(
    lm: "LoadedModel",
    prompt: str,
    interventions: Sequence[Sequence[Intervention]],
    *,
    keep_cache: bool = False,
) -> RunResult:
    """Logits ``[rows, vocab]`` at the last position of ``prompt``, one row per list of interventions.

    Interventions must sit at the last prompt position (knockouts may block any keys from it).
    Equal to ``run(lm, [prompt] * rows, interventions, last_only=True)`` within float tolerance.
    """
    ids = lm.to_ids(prompt)
    if not ids:
        raise ValueError(f"prompt {prompt!r} tokenizes to nothing")
    rows = _rows(interventions, len(interventions))
    n_rows = len(rows)
    n = len(ids)
    past = _expanded(prefix_cache(lm, ids[:-1]), n_rows) if n > 1 else None
    input_ids = torch.full((n_rows, 1), ids[-1], dtype=torch.long, device=lm.device)
    mask = torch.ones((n_rows, n), dtype=torch.long, device=lm.device)
    positions = torch.full((n_rows, 1), n - 1, dtype=torch.long, device=lm.device)
    layout = Layout(lengths=[n] * n_rows, offsets=[0] * n_rows, past=n - 1)
    out, session = forward(lm, input_ids, mask, positions, rows, layout, past_key_values=past,
                           use_cache=keep_cache or past is not None, last_only=True)
    return RunResult(out.logits[:, -1].float(), session.cache, None, out.past_key_values if keep_cache else None)


def _decode(lm: "LoadedModel", first_logits: torch.Tensor, past, mask: torch.Tensor, next_pos: torch.Tensor,
            max_new_tokens: int) -> torch.Tensor:
    """Greedy continuation from a cache; returns ``[rows, max_new_tokens]`` token ids."""
    tokens = [first_logits.argmax(-1)]
    for _ in range(max_new_tokens - 1):
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        with torch.no_grad():
            out = lm.model(input_ids=tokens[-1][:, None], attention_mask=mask, position_ids=next_pos[:, None],
                           past_key_values=past, use_cache=True, logits_to_keep=1)
        past = out.past_key_values
        next_pos = next_pos + 1
        tokens.append(out.logits[:, -1].argmax(-1))
    return torch.stack(tokens, dim=1)


def generate(
    lm: "LoadedModel",
    prompts: str | Sequence[str],
    interventions: Sequence[Sequence[Intervention]] | None = None,
    *,
    max_new_tokens: int = 10,
    fast: bool | None = None,
) -> torch.Tensor:
    """Greedy-decode ``max_new_tokens`` per row; interventions act on the prompt pass only.

    ``prompts``: one prompt shared by every row of ``interventions``, or one prompt per row. ``fast``
    (default: whenever one prompt is shared) uses the last-position fast path, which requires the
    interventions to sit at the last position.
    """
    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be at least 1")
    shared = isinstance(prompts, str)
    n_rows = len(interventions) if (shared and interventions is not None) else (1 if shared else len(prompts))
    rows = _rows(interventions, n_rows)
    fast = shared if fast is None else fast
    if fast:
        if not shared:
            raise ValueError("the fast path needs one shared prompt")
        res = run_last_position(lm, prompts, rows, keep_cache=True)
        n = len(lm.to_ids(prompts))
        mask = torch.ones((n_rows, n), dtype=torch.long, device=lm.device)
        pos = torch.full((n_rows,), n, dtype=torch.long, device=lm.device)
        return _decode(lm, res.logits, res.past_key_values, mask, pos, max_new_tokens)
    plist = [prompts] * n_rows if shared else list(prompts)
    batch = lm.encode(plist)
    layout = Layout(lengths=batch.lengths, offsets=batch.offsets)
    out, _ = forward(lm, batch.input_ids, batch.attention_mask, batch.position_ids, rows, layout,
                     use_cache=True, last_only=True)
    pos = batch.position_ids[:, -1] + 1
    return _decode(lm, out.logits[:, -1].float(), out.past_key_values, batch.attention_mask, pos, max_new_tokens)
