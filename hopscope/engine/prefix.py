"""A bounded store of prompt-prefix KV caches that is never stale.

An entry is keyed by the prefix's token ids, the model's identity (a counter hopscope stamps on the module,
not ``id()``, which Python reuses), its device and dtype, and its weights version: the sum of every
parameter's in-place version counter (so an optimizer step or ``load_state_dict`` invalidates it) plus an
explicit counter bumped by :func:`weights_changed`. Entries are evicted least-recently-used beyond
``max_bytes``. Callers get the stored cache and must :func:`hopscope.engine.kv.fork` it, never mutate it.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Sequence

import torch

from hopscope.engine.compat import call_model, output_cache
from hopscope.engine.kv import nbytes

if TYPE_CHECKING:
    from hopscope.models.loaded import LoadedModel

_UIDS = itertools.count(1)


def model_uid(model: torch.nn.Module) -> int:
    """A process-unique id stamped on ``model`` the first time hopscope sees it."""
    uid = getattr(model, "_hopscope_uid", None)
    if uid is None:
        uid = next(_UIDS)
        object.__setattr__(model, "_hopscope_uid", uid)
    return uid


def weights_version(model: torch.nn.Module) -> tuple[int, int]:
    """(explicit counter, sum of parameter version counters): changes whenever weights change in place."""
    auto = sum(p._version for p in model.parameters())
    return int(getattr(model, "_hopscope_weights_version", 0)), int(auto)


def weights_changed(lm: "LoadedModel | torch.nn.Module") -> None:
    """Declare that ``lm``'s weights changed: cached prefixes of it are dropped."""
    model = getattr(lm, "model", lm)
    object.__setattr__(model, "_hopscope_weights_version", int(getattr(model, "_hopscope_weights_version", 0)) + 1)
    STORE.drop_model(model_uid(model))


class PrefixStore:
    """LRU store of prefix caches bounded by ``max_bytes``."""

    def __init__(self, max_bytes: int = 512 << 20) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple, tuple[Any, int]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    @property
    def bytes(self) -> int:
        return sum(n for _, n in self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, lm: "LoadedModel", ids: Sequence[int]):
        """The KV cache of the prefix ``ids`` (computed once; do not mutate it)."""
        model = lm.model
        key = (model_uid(model), weights_version(model), str(lm.device), str(lm.dtype), tuple(int(i) for i in ids))
        if key in self._entries:
            self._entries.move_to_end(key)
            self.hits += 1
            return self._entries[key][0]
        self.misses += 1
        t = torch.tensor([list(ids)], device=lm.device)
        out = call_model(model, input_ids=t, attention_mask=torch.ones_like(t), use_cache=True, logits_to_keep=1)
        cache = output_cache(out)
        size = nbytes(cache)
        self._entries[key] = (cache, size)
        while len(self._entries) > 1 and self.bytes > self.max_bytes:
            self._entries.popitem(last=False)
        return cache

    def drop_model(self, uid: int) -> None:
        for key in [k for k in self._entries if k[0] == uid]:
            del self._entries[key]

    def clear(self) -> None:
        self._entries.clear()


STORE = PrefixStore()


def clear_prefix_cache() -> None:
    """Forget every cached prefix (e.g. after editing weights outside hopscope)."""
    STORE.clear()
