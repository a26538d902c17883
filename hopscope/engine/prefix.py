"""A bounded store of prompt-prefix KV caches that is never stale.

An entry is keyed by the prefix's token ids, the model's identity (a counter hopscope stamps on the module,
not ``id()``, which Python reuses), its device and dtype, and its weights version: the sum of every
parameter's in-place version counter (so an optimizer step or ``load_state_dict`` invalidates it) plus an
explicit counter bumped by :func:`weights_changed`. Entries are evicted least-recently-used beyond
``max_bytes``. Callers get the stored cache and must :func:`hopscope.engine.kv.fork` it, never mutate it.

A new prefix that shares its first tokens with a stored one runs only the tokens after the longest such
common part: the stored cache cut to that length (keys and values at a position depend only on the tokens up
to it) is extended. Few-shot prompts of one dataset then run their shared examples once in all.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Sequence

import torch

from hopscope.engine import kv
from hopscope.engine.compat import call_model, output_cache
from hopscope.engine.kv import nbytes
from hopscope.engine.linear import drop_packed
from hopscope.engine.layout import tails_after_prefixes

if TYPE_CHECKING:
    from hopscope.models.loaded import LoadedModel

_UIDS = itertools.count(1)
MIN_REUSE = 4  # tokens: a shorter common part with a stored prefix is recomputed
PASS_WASTE = 0.25  # padding may add this share of the real tokens to a pass of over SMALL_PASS tokens
SMALL_PASS = 64  # tokens: a smaller pass is never split for padding (each pass reads every weight once)


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens ``a`` and ``b`` share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def model_uid(model: torch.nn.Module) -> int:
    """A process-unique id stamped on ``model`` the first time hopscope sees it."""
    uid = getattr(model, "_hopscope_uid", None)
    if uid is None:
        uid = next(_UIDS)
        object.__setattr__(model, "_hopscope_uid", uid)
    return uid


def weights_version(model: torch.nn.Module) -> tuple[int, int]:
    """(explicit counter, sum of parameter version counters): changes whenever weights change in place.

    The parameter slots (module, name) are listed once per model and read afresh on every call, so a
    parameter replaced by a new tensor is read too (walking every module on each call cost ~5 ms). Parameters on
    the meta device are left out: accelerate holds an offloaded weight there between forwards, replacing the
    placeholder at each one (its counter would change at the first call and miss the prefixes that call stored)."""
    slots = getattr(model, "_hopscope_parameter_slots", None)
    if slots is None:
        slots = [(m._parameters, name) for m in model.modules() for name in m._parameters]
        object.__setattr__(model, "_hopscope_parameter_slots", slots)
    auto = sum(p._version for params, name in slots if (p := params.get(name)) is not None and not p.is_meta)
    return int(getattr(model, "_hopscope_weights_version", 0)), int(auto)


def weights_changed(lm: "LoadedModel | torch.nn.Module") -> None:
    """Declare that ``lm``'s weights changed: cached prefixes of it and packed copies of its weights are dropped."""
    model = getattr(lm, "model", lm)
    object.__setattr__(model, "_hopscope_weights_version", int(getattr(model, "_hopscope_weights_version", 0)) + 1)
    STORE.drop_model(model_uid(model))
    drop_packed(model)


class PrefixStore:
    """LRU store of prefix caches bounded by ``max_bytes``."""

    def __init__(self, max_bytes: int = 512 << 20) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple, tuple[Any, int]] = OrderedDict()
        self.hits = 0
        self.misses = 0
        self.extended = 0  # misses computed by extending a stored prefix
        self.reuse = True  # extend stored prefixes (False: every miss runs its whole prefix)

    @property
    def bytes(self) -> int:
        return sum(n for _, n in self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def _head(self, lm: "LoadedModel") -> tuple:
        model = lm.model
        return model_uid(model), weights_version(model), str(lm.device), str(lm.dtype)

    def _lookup(self, key: tuple):
        if key in self._entries:
            self._entries.move_to_end(key)
            self.hits += 1
            return self._entries[key][0]
        return None

    def _store(self, key: tuple, cache: Any) -> None:
        self._entries[key] = (cache, nbytes(cache))
        while len(self._entries) > 1 and self.bytes > self.max_bytes:
            self._entries.popitem(last=False)

    def _base(self, lm: "LoadedModel", head: tuple, ids: tuple[int, ...]) -> tuple[Any, int]:
        if not self.reuse or kv.sliding_window(lm) is not None:
            return None, 0
        return self._longest_common(head, ids)

    def get(self, lm: "LoadedModel", ids: Sequence[int]):
        """The KV cache of the prefix ``ids`` (computed once; do not mutate it)."""
        head = self._head(lm)
        key = head + (tuple(int(i) for i in ids),)
        found = self._lookup(key)
        if found is not None:
            return found
        self.misses += 1
        base, c = self._base(lm, head, key[-1])
        self.extended += base is not None
        cache = _extend(lm, [(base, c, key[-1])])[0]
        self._store(key, cache)
        return cache

    def get_many(self, lm: "LoadedModel", prefixes: Sequence[Sequence[int]], *, max_tokens: int = 4096) -> list:
        """The caches of several prefixes (see :meth:`warm`)."""
        self.warm(lm, prefixes, max_tokens=max_tokens)
        return [self.get(lm, p) for p in prefixes]  # a prefix evicted meanwhile is recomputed

    def warm(self, lm: "LoadedModel", prefixes: Sequence[Sequence[int]], *, max_tokens: int = 4096) -> None:
        """Store the caches of ``prefixes``: the missing ones run in batched passes of about ``max_tokens``
        tokens, after the longer stems they share (so each shared stem runs once)."""
        head = self._head(lm)
        want = [tuple(int(i) for i in p) for p in prefixes]
        missing = [p for p in dict.fromkeys(want) if head + (p,) not in self._entries]
        rounds = [missing]
        sliding = kv.sliding_window(lm) is not None
        if self.reuse and not sliding and len(missing) > 1:
            rounds = _stem_rounds(missing, lambda x: head + (x,) in self._entries)
        if sliding:
            max_tokens = 0  # padding would count against the window: one prefix per pass
        for seqs in rounds:
            items = []
            for x in seqs:
                base, c = self._base(lm, head, x)
                items.append((base, c, x))
            items.sort(key=lambda it: (len(it[2]) - it[1], it[1]))  # by own tokens: little padding in a pass
            chunk: list = []
            for item in items + [None]:
                if item is not None and (not chunk or _fits([len(x) - c for _, c, x in chunk + [item]], max_tokens)):
                    chunk.append(item)
                    continue
                if chunk:
                    self.misses += len(chunk)
                    self.extended += sum(b is not None for b, _, _ in chunk)
                    for (_, _, x), cache in zip(chunk, _extend(lm, chunk)):
                        self._store(head + (x,), cache)
                chunk = [item] if item is not None else []

    def _longest_common(self, head: tuple, ids: tuple[int, ...]) -> tuple[Any, int]:
        """The stored cache of this model sharing the most leading tokens with ``ids`` (at least
        ``MIN_REUSE``, and leaving one token of ``ids`` to run), and that count."""
        best, best_c = None, MIN_REUSE - 1
        for k, (cache, _) in self._entries.items():
            if k[:-1] != head:
                continue
            c = min(common_prefix(k[-1], ids), len(ids) - 1)
            if c > best_c:
                best, best_c = cache, c
        return (best, best_c) if best is not None else (None, 0)

    def drop_model(self, uid: int) -> None:
        for key in [k for k in self._entries if k[0] == uid]:
            del self._entries[key]

    def clear(self) -> None:
        self._entries.clear()


def _fits(own: Sequence[int], max_tokens: int, waste: float = PASS_WASTE, small: int = SMALL_PASS) -> bool:
    """Whether rows running ``own`` tokens each fit one pass: at most ``max_tokens`` padded tokens, and
    padding adds at most ``waste`` of the real tokens to a pass of over ``small`` tokens."""
    padded = len(own) * max(own)
    return padded <= max_tokens and little_padding(padded, sum(own), waste, small)


def little_padding(padded: int, real: int, waste: float = PASS_WASTE, small: int = SMALL_PASS) -> bool:
    """The padding bound of every batched pass: ``padded`` tokens for ``real`` ones are fine in a pass of at
    most ``small`` tokens, or when padding adds at most ``waste`` of the real tokens."""
    return padded <= small or padded <= (1 + waste) * real


def _stem_rounds(missing: Sequence[tuple[int, ...]], stored) -> list[list[tuple[int, ...]]]:
    """The missing prefixes in rounds, after the stems they share: every branch point of their token trie
    (the common part of two neighbours in sorted order) not yet ``stored``, a stem after the stems it
    extends, so each shared token runs once and every later round extends a cache of an earlier one."""
    ordered = sorted(missing)
    stems = {a[:c] for a, b in zip(ordered, ordered[1:]) if (c := common_prefix(a, b)) >= MIN_REUSE}
    depth: dict[tuple[int, ...], int] = {}
    chain: list[tuple[int, ...]] = []
    for x in sorted(stems):  # sorted: a stem comes right before the stems that extend it
        while chain and x[:len(chain[-1])] != chain[-1]:
            chain.pop()
        depth[x] = len(chain)
        chain.append(x)
    levels: dict[int, list[tuple[int, ...]]] = {}
    for x, d in depth.items():
        if not stored(x):
            levels.setdefault(d, []).append(x)
    return [levels[d] for d in sorted(levels)] + [[p for p in missing if p not in stems]]


def _extend(lm: "LoadedModel", items: Sequence[tuple[Any, int, Sequence[int]]]) -> list:
    """Caches of the sequences ``ids`` of ``items = [(base cache or None, c, ids)]``, in one forward: a row
    with a base reuses its first ``c`` columns and runs ``ids[c:]``; bases are left-padded to the longest and
    the rows' own tokens after them (the mask hides the padding). Each row's cache keeps its real columns."""
    dev = lm.device
    with_base = [i for i, (b, _, _) in enumerate(items) if b is not None]
    without = [i for i, (b, _, _) in enumerate(items) if b is None]
    out: list = [None] * len(items)
    for rows in (with_base, without):
        if not rows:
            continue
        own = [items[i][1] if items[i][0] is not None else 0 for i in rows]
        input_ids, mask, positions = tails_after_prefixes([items[i][2] for i in rows], own,
                                                          lm.tokenizer.pad_token_id or 0)
        big_c, r = max(own), len(rows)
        past = None
        if big_c:
            bases = [kv.truncate(items[i][0], c) for i, c in zip(rows, own)]
            past = kv.concat(bases, own, big_c) if r > 1 else bases[0]
        padded = bool((mask == 0).any())
        res = call_model(lm.model, past=past, input_ids=input_ids.to(dev),
                         attention_mask=mask.to(dev) if padded or past is not None else None,
                         position_ids=positions.to(dev), use_cache=True, logits_to_keep=1)
        cache = output_cache(res)
        if r == 1 and not padded:  # the whole cache is the row's (and a sliding-window cache may hold fewer columns)
            out[rows[0]] = cache
            continue
        for j, i in enumerate(rows):
            cols = mask[j].nonzero()[:, 0]
            out[i] = kv.row(cache, j, cols)
    return out


STORE = PrefixStore()


def clear_prefix_cache() -> None:
    """Forget every cached prefix (e.g. after editing weights outside hopscope)."""
    STORE.clear()
