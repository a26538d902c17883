"""Greedy generation with patches on the prompt pass, early stopping, and shared prefixes.

The prompt pass carries the interventions (a patch reaches the generated tokens through the KV cache
alone); decoding then continues row by row, batched. A ``stop(row, tokens)`` callback ends a row early: it
leaves the batch and its tokens are a prefix of what it would have generated unstopped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import torch

from hopscope.engine import kv
from hopscope.engine.compat import call_model, output_cache
from hopscope.engine.history import can_share, plan_units, shared_step
from hopscope.engine.hooks import join_layer
from hopscope.engine.interventions import Intervention
from hopscope.engine.layout import Layout, left_pad_mask, prefix_and_tail_widths
from hopscope.engine.sites import Site
from hopscope.engine.passes import prompt_pass
from hopscope.engine.prefix import PASS_WASTE, SMALL_PASS, STORE, common_prefix, little_padding
from hopscope.engine.runner import (MIN_SHARED_PREFIX, _check_nonempty, forward, multi_prefix_pass, rows_of,
                                    shared_prefix_length, sliding_window, suffix_pass)

if TYPE_CHECKING:
    from hopscope.models.loaded import LoadedModel

Stop = Callable[[int, list[int]], bool]
SHARE_HISTORIES = True  # decode steps share blocks among rows with one token history (False: the reference)
ROWS_PER_BATCH = 256  # batch_size=None, one prompt per row: rows per prompt pass and decode batch
DECODE_BYTES = 2 * 2**30  # batch_size=None, one shared prompt: the bytes of cache and logits a decode batch may hold


def bytes_per_row(lm: "LoadedModel", n_prompt: int, max_new_tokens: int) -> int:
    """Bytes one row of a decode batch holds: its KV cache (every layer's keys and values for the prompt's
    ``n_prompt`` and the new tokens) and one step's float32 logits."""
    per_token = 2 * lm.n_layers * lm.n_kv_heads * lm.d_head * torch.finfo(lm.dtype).bits // 8
    return per_token * (n_prompt + max_new_tokens) + 4 * lm.d_vocab


def rows_per_batch(lm: "LoadedModel", n_prompt: int, max_new_tokens: int, budget: int | None = None) -> int:
    """How many rows of one shared prompt decode together within ``budget`` bytes (None: ``DECODE_BYTES``) of
    :func:`bytes_per_row`; at least one. Larger decode batches share more (units of one token history span
    the batch) and run larger matmuls."""
    budget = DECODE_BYTES if budget is None else budget
    return max(1, budget // bytes_per_row(lm, n_prompt, max_new_tokens))


@dataclass
class Generation:
    """Greedy continuations: ``tokens[i]`` for row ``i`` (shorter when stopped early), and optionally the
    first generated position's logits ``[rows, vocab]`` (float32)."""

    tokens: list[list[int]]
    first_logits: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.tokens)

    def texts(self, lm: "LoadedModel") -> list[str]:
        return [lm.tokenizer.decode(t, skip_special_tokens=True) for t in self.tokens]

    def as_tensor(self) -> torch.Tensor:
        """``[rows, n]`` token ids (every row must have the same length: no early stop)."""
        lengths = {len(t) for t in self.tokens}
        if len(lengths) > 1:
            raise ValueError(f"rows have different lengths {sorted(lengths)} (stopped early): use .tokens")
        return torch.tensor(self.tokens, dtype=torch.long)


def generate(
    lm: "LoadedModel",
    prompts: str | Sequence[str],
    interventions: Sequence[Sequence[Intervention]] | None = None,
    *,
    max_new_tokens: int = 10,
    start: int = -1,
    stop: Stop | None = None,
    first_logits: bool = False,
    batch_size: int | None = None,
    fast: bool = True,
    edits: Sequence[Sequence[Intervention]] | None = None,
) -> Generation:
    """Greedy-decode ``max_new_tokens`` per row; interventions act on the prompt pass only.

    ``prompts``: one prompt shared by every row of ``interventions`` (its prefix before ``start`` runs once,
    see :func:`prompt_pass`), or one prompt per row (prompts sharing a token prefix run it once).
    ``edits``: per row, interventions that act like a change of the model itself: at every position of the
    prompt and of every generated token (e.g. a mitigation; their ``position`` is ignored). Rows with edits
    run their whole prompt (no shared prefix); the other rows keep the fast path. ``fast=False`` is the reference: every row's whole prompt
    runs through every block, left-padded. ``batch_size``: rows per prompt pass and decode batch; None: for one
    shared prompt as many as :func:`rows_per_batch` fits in ``DECODE_BYTES``, else ``ROWS_PER_BATCH``.
    """
    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be at least 1")
    shared = isinstance(prompts, str)
    n_rows = (len(interventions) if interventions is not None else 1) if shared else len(prompts)
    rows = rows_of(interventions, n_rows)
    if edits is not None and fast:
        edited = [i for i, e in enumerate(rows_of(edits, n_rows)) if len(e)]
        if 0 < len(edited) < n_rows:  # the rows without edits keep the shared prefix and the staircase
            plain = [i for i in range(n_rows) if i not in set(edited)]
            per_row = rows_of(edits, n_rows)
            parts = []
            for idx, part_edits in ((plain, None), (edited, [per_row[i] for i in edited])):
                sub_stop = None if stop is None else (lambda r, toks, idx=idx: stop(idx[r], toks))
                parts.append((idx, generate(lm, prompts if shared else [prompts[i] for i in idx],
                                            [rows[i] for i in idx], max_new_tokens=max_new_tokens, start=start,
                                            stop=sub_stop, first_logits=first_logits, batch_size=batch_size,
                                            edits=part_edits)))
            return _merged(n_rows, parts)
    step_edits = None
    if edits is not None and any(len(e) for e in rows_of(edits, n_rows)):
        step_edits = [[_everywhere(iv, -1) for iv in e] for e in rows_of(edits, n_rows)]
        rows = [r + [_everywhere(iv, None) for iv in e] for r, e in zip(rows, rows_of(edits, n_rows))]
        fast = False
    tokens: list[list[int]] = [[] for _ in range(n_rows)]
    logits: list[torch.Tensor] = []
    if shared and fast:
        n = len(lm.to_ids(prompts))
        batch_size = rows_per_batch(lm, n, max_new_tokens) if batch_size is None else batch_size
        for c0 in range(0, n_rows, batch_size):
            chunk = list(range(c0, min(c0 + batch_size, n_rows)))
            res = prompt_pass(lm, prompts, [rows[i] for i in chunk], start=start, keep_cache=True)
            mask = torch.ones((len(chunk), n), dtype=torch.long, device=lm.device)
            pos = torch.full((len(chunk),), n, dtype=torch.long, device=lm.device)
            _decode(lm, res.logits, res.past_key_values, mask, pos, max_new_tokens, stop, chunk, tokens, None,
                    joins=[join_layer(lm, rows[i]) for i in chunk] if SHARE_HISTORIES else None)
            if first_logits:
                logits.append(res.logits.cpu())
    else:
        batch_size = ROWS_PER_BATCH if batch_size is None else batch_size
        plist = [prompts] * n_rows if shared else list(prompts)
        ids = [lm.to_ids(p) for p in plist]
        _check_nonempty(plist, ids)
        wave: list[tuple[list[int], torch.Tensor, object, torch.Tensor, torch.Tensor]] = []

        def flush() -> None:
            if not wave:
                return
            group, first, cache, mask, pos = _merge(wave, max_new_tokens - 1) if len(wave) > 1 else wave[0]
            _decode(lm, first, cache, mask, pos, max_new_tokens, stop, group, tokens,
                    None if step_edits is None else [step_edits[i] for i in group])
            wave.clear()

        mergeable = sliding_window(lm) is None  # sliding-window caches keep one length per layer: no merging
        plain: list[tuple[list[int], int]] = []  # groups without interventions: they run together at the end

        def run_plain(batch: list[list[tuple[list[int], int]]]) -> None:
            """One decode batch of passes from cached prefixes, each pass writing into the batch's buffers."""
            width = max(sum(prefix_and_tail_widths([ids[i] for g, _ in part for i in g],
                                                   [p for g, p in part for _ in g])) for part in batch)
            room = max_new_tokens - 1
            buffers = kv.BatchBuffers(sum(len(g) for part in batch for g, _ in part), width + room)
            group, firsts, masks, positions, cache = [], [], [], [], None
            for part in batch:
                rows_ = [i for g, _ in part for i in g]
                first, cache, mask, pos = multi_prefix_pass(lm, [([ids[i] for i in g], p) for g, p in part],
                                                            room=room, into=(buffers, len(group)))
                if first_logits:
                    logits.append((rows_, first.cpu()))
                group += rows_
                firsts.append(first)
                masks.append(left_pad_mask(mask, width))
                positions.append(pos)
            _decode(lm, torch.cat(firsts), buffers.cache(cache, width), torch.cat(masks), torch.cat(positions),
                    max_new_tokens, stop, group, tokens, None)

        if fast and mergeable:  # rows without interventions: each from the longest prefix another row shares
            plain, rest = _shared_stems([i for i in range(n_rows) if not rows[i]], ids, batch_size)
            batches = _groups([ids[i] for i in rest], batch_size, rest) + _groups(
                [ids[i] for i in range(n_rows) if rows[i]], batch_size, [i for i in range(n_rows) if rows[i]])
        else:
            batches = _groups(ids, batch_size) if fast else _chunks(n_rows, batch_size)
        for group in batches:
            g_ids, g_rows = [ids[i] for i in group], [rows[i] for i in group]
            p = shared_prefix_length(lm, g_ids, g_rows, extra=max_new_tokens) if fast else 0
            if p >= MIN_SHARED_PREFIX and mergeable and not any(g_rows):
                plain.append((list(group), p))
                continue
            if p >= MIN_SHARED_PREFIX:
                masks: list = []
                first, cache, _ = suffix_pass(lm, g_ids, g_rows, p, keep_cache=True, mask_out=masks)
                mask = masks[0]
                pos = torch.tensor([len(x) for x in g_ids], dtype=torch.long, device=lm.device)
            else:
                batch = lm.encode_ids(g_ids)
                layout = Layout.left_padded(batch.lengths, batch.input_ids.shape[1])
                out, cache, _ = forward(lm, batch.input_ids, batch.attention_mask, batch.position_ids, g_rows,
                                        layout, use_cache=True, last_only=True)
                first, mask, pos = out[:, -1].float(), batch.attention_mask, batch.position_ids[:, -1] + 1
            if first_logits:
                logits.append((group, first.cpu()))
            if not mergeable or sum(len(w[0]) for w in wave) + len(group) > batch_size:
                flush()
            wave.append((list(group), first, cache, mask, pos))
        flush()
        if plain:  # every prefix first, batched, each shared stem once
            STORE.warm(lm, [ids[g[0]][:p] for g, p in plain])
        for batch in _decode_batches(_waves(plain, ids, batch_size), batch_size):
            run_plain(batch)
    out_logits = None
    if first_logits:
        if shared and fast:
            out_logits = torch.cat(logits)
        else:
            out_logits = torch.empty(n_rows, logits[0][1].shape[-1])
            for group, lg in logits:
                out_logits[torch.tensor(group)] = lg
    return Generation(tokens, out_logits)


def _merged(n_rows: int, parts: list[tuple[list[int], Generation]]) -> Generation:
    """One Generation from generations of disjoint row subsets (``idx``: their rows in the whole)."""
    tokens: list[list[int]] = [[] for _ in range(n_rows)]
    logits = None
    for idx, g in parts:
        for j, i in enumerate(idx):
            tokens[i] = g.tokens[j]
        if g.first_logits is not None:
            if logits is None:
                logits = torch.empty(n_rows, g.first_logits.shape[-1])
            logits[torch.tensor(idx)] = g.first_logits
    return Generation(tokens, logits)


def _everywhere(iv: Intervention, position) -> Intervention:
    """A model edit at ``position`` (None: every position of the prompt pass; -1: the new token)."""
    if iv.op in ("knockout", "cache"):
        raise ValueError(f"edits change the model at every position: {iv.op!r} is not an edit")
    return iv.at(Site(iv.site.layer, iv.site.component, position, iv.site.head))


def _decode(lm: "LoadedModel", first: torch.Tensor, cache, mask: torch.Tensor, next_pos: torch.Tensor,
            max_new_tokens: int, stop: Stop | None, row_ids: Sequence[int], out: list[list[int]],
            edits: list[list[Intervention]] | None, joins: Sequence[int] | None = None) -> None:
    """Greedy continuation from a prompt cache into ``out[row_ids[i]]``; stopped rows leave the batch.
    ``edits[i]`` act on each new token of row ``i``. ``joins[i]``: row ``i``'s first intervened block, for rows
    of one prompt: rows with one token history then share the blocks below their joins
    (:mod:`hopscope.engine.history`)."""
    tok = first.argmax(-1)
    cache = kv.reserve(cache, max_new_tokens - 1)  # each step writes its column in place
    live = list(range(len(row_ids)))
    padded = bool((mask == 0).any())  # without padding the model needs no mask: every new token sees everything
    share = joins is not None and edits is None and not padded and can_share(lm, cache)
    for i, t in zip(live, tok.tolist()):
        out[row_ids[i]].append(int(t))
    for _ in range(max_new_tokens - 1):
        if stop is not None:
            keep = [j for j, i in enumerate(live) if not stop(row_ids[i], out[row_ids[i]])]
            if len(keep) < len(live):
                if not keep:
                    return
                order = kv.compacting_order(keep, len(live))  # only rows beyond the kept count move
                idx = torch.tensor(order, dtype=torch.long, device=tok.device)
                cache = kv.select(cache, idx)
                tok, mask, next_pos = tok[idx], mask[idx], next_pos[idx]
                live = [live[j] for j in order]
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        units = plan_units([tuple(out[row_ids[i]]) for i in live], [joins[i] for i in live], lm.n_layers,
                           tok.device) if share else None
        if units is not None:
            last, cache = shared_step(lm, cache, tok, next_pos, units)
            logits = last[:, None]
        elif edits is None:
            step = call_model(lm.model, past=cache, input_ids=tok[:, None], attention_mask=mask if padded else None,
                              position_ids=next_pos[:, None], use_cache=True, logits_to_keep=1)
            logits, cache = step.logits, output_cache(step)
        else:
            r = len(live)
            logits, cache, _ = forward(lm, tok[:, None], mask, next_pos[:, None], [edits[i] for i in live],
                                       Layout([1] * r, [0] * r, 0, 1), past=cache, use_cache=True, last_only=True)
        next_pos = next_pos + 1
        tok = logits[:, -1].argmax(-1).to(mask.device)  # a model split over devices ends on another one
        for i, t in zip(live, tok.tolist()):
            out[row_ids[i]].append(int(t))


def _merge(wave, room: int):
    """One decode batch from several prompt passes: caches and masks left-padded to a common length, the
    cache with ``room`` columns reserved for the decode steps."""
    width = max(m.shape[1] for _, _, _, m, _ in wave)
    caches = [c for _, _, c, _, _ in wave]
    widths = [m.shape[1] for _, _, _, m, _ in wave]
    masks = [left_pad_mask(m, width) for _, _, _, m, _ in wave]
    group = [i for g, _, _, _, _ in wave for i in g]
    return (group, torch.cat([f for _, f, _, _, _ in wave]), kv.concat(caches, widths, width, room=room),
            torch.cat(masks), torch.cat([p for _, _, _, _, p in wave]))


def _waves(groups: list[tuple[list[int], int]], ids: Sequence[Sequence[int]], size: int,
           waste: float = PASS_WASTE, small: int = SMALL_PASS) -> list[list[tuple[list[int], int]]]:
    """The rows of prefix groups ``(rows, p)`` packed into passes of at most ``size`` rows, by the length of
    each row's own tokens (rows of one group may go to different passes), so that padding adds at most
    ``waste`` of the real tokens to a pass of over ``small`` tokens (smaller ones are never split: each
    pass reads every weight once). Each pass is a list of parts ``(rows, p)`` of one group each."""
    order = sorted((len(ids[i]) - p, k, i) for k, (g, p) in enumerate(groups) for i in g)
    passes: list[list[tuple[int, int, int]]] = []
    cur: list[tuple[int, int, int]] = []
    real = 0
    for item in order:
        padded = (len(cur) + 1) * item[0]  # sorted: this row's tokens are the pass's longest
        if cur and (len(cur) + 1 > size or not little_padding(padded, real + item[0], waste, small)):
            passes.append(cur)
            cur, real = [], 0
        cur.append(item)
        real += item[0]
    if cur:
        passes.append(cur)
    waves = []
    for rows in passes:
        parts: dict[int, list[int]] = {}
        for _, k, i in rows:
            parts.setdefault(k, []).append(i)
        waves.append([(members, groups[k][1]) for k, members in parts.items()])
    return waves


def _decode_batches(waves: list[list[tuple[list[int], int]]], size: int) -> list[list[list[tuple[list[int], int]]]]:
    """Consecutive passes (lists of parts ``(rows, p)``) gathered into decode batches of at most ``size`` rows
    (a pass of more rows decodes alone)."""
    batches: list[list[list[tuple[list[int], int]]]] = []
    rows = 0
    for part in waves:
        n = sum(len(g) for g, _ in part)
        if not batches or rows + n > size:
            batches.append([])
            rows = 0
        batches[-1].append(part)
        rows += n
    return batches


def _chunks(n: int, size: int) -> list[list[int]]:
    return [list(range(i, min(i + size, n))) for i in range(0, n, size)]


def _shared_stems(rows: Sequence[int], ids: Sequence[Sequence[int]], size: int
                  ) -> tuple[list[tuple[list[int], int]], list[int]]:
    """Groups ``(rows, p)`` of at most ``size`` rows that run from one cached prefix of ``p`` tokens, and the
    rows that share fewer than ``MIN_SHARED_PREFIX`` tokens with any other.

    Each row starts from the longest prefix it shares with another row (keeping one token of its own), so
    every token two prompts share sits in a cached prefix (computed once, stems first, by the prefix
    store) and each row runs only the tokens no other row has: the least work of any prefix sharing.
    """
    order = sorted(rows, key=lambda i: ids[i])
    by_prefix: dict[tuple[int, ...], list[int]] = {}
    alone: list[int] = []
    for k, i in enumerate(order):
        shared = max([common_prefix(ids[i], ids[j]) for j in order[max(k - 1, 0):k + 2] if j != i] or [0])
        p = min(shared, len(ids[i]) - 1)
        if p < MIN_SHARED_PREFIX:
            alone.append(i)
        else:
            by_prefix.setdefault(tuple(ids[i][:p]), []).append(i)
    groups = [(members[c:c + size], len(stem)) for stem, members in by_prefix.items()
              for c in range(0, len(members), size)]
    return groups, alone


def _groups(ids: Sequence[Sequence[int]], size: int, names: Sequence[int] | None = None) -> list[list[int]]:
    """Rows in batches of at most ``size`` whose prompts share long token prefixes (sorted by tokens);
    ``names``: the rows' numbers to return (default: their positions in ``ids``)."""
    if names is not None:
        return [[names[i] for i in g] for g in _groups(ids, size)]
    order = sorted(range(len(ids)), key=lambda i: ids[i])
    groups: list[list[int]] = []
    cur: list[int] = []
    lcp = 0
    for i in order:
        if cur:
            c = common_prefix(ids[cur[0]], ids[i])
            if len(cur) >= size or c < MIN_SHARED_PREFIX or (len(cur) > 1 and c < lcp // 2):
                groups.append(cur)
                cur, lcp = [], 0
            else:
                lcp = c if len(cur) == 1 else min(lcp, c)
        cur.append(i)
    if cur:
        groups.append(cur)
    return groups
