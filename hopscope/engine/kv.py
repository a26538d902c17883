"""Batch surgery on transformers KV caches (every layer's ``keys``/``values`` are ``[batch, heads, seq, d]``)."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, Sequence

import torch
from transformers.cache_utils import DynamicLayer

if TYPE_CHECKING:
    from hopscope.models.loaded import LoadedModel


def _holds_keys(layer: Any) -> bool:
    return bool(getattr(layer, "is_initialized", False) and layer.keys is not None and layer.keys.numel())


def _layers(cache: Any) -> list:
    return [l for l in cache.layers if _holds_keys(l)]


def _shallow_copy(cache: Any) -> tuple[Any, list[tuple[int, Any]]]:
    """A copy of ``cache`` with copies of its layer objects (tensors shared), and its layers holding keys."""
    new = copy.copy(cache)
    new.layers = [copy.copy(l) for l in cache.layers]
    live = [(i, l) for i, l in enumerate(new.layers) if _holds_keys(l)]
    return new, live


def nbytes(cache: Any) -> int:
    """Bytes held by the cache's tensors."""
    return sum(l.keys.numel() * l.keys.element_size() + l.values.numel() * l.values.element_size()
               for l in _layers(cache))


def fork(cache: Any, sizes: Sequence[int]) -> Any:
    """A new cache whose layer ``l`` holds ``sizes[l]`` copies (views) of the batch-1 ``cache``'s row."""
    new, live = _shallow_copy(cache)
    for i, layer in live:
        n = sizes[i] if i < len(sizes) else sizes[-1]
        layer.keys = layer.keys.expand(n, *layer.keys.shape[1:])
        layer.values = layer.values.expand(n, *layer.values.shape[1:])
    return new


def truncate(cache: Any, length: int) -> Any:
    """A new cache holding the first ``length`` columns of ``cache`` (views; ``cache`` is not changed)."""
    new, live = _shallow_copy(cache)
    for _, layer in live:
        layer.keys = layer.keys[..., :length, :]
        layer.values = layer.values[..., :length, :]
    return new


def row(cache: Any, index: int, columns: torch.Tensor) -> Any:
    """A new batch-1 cache holding row ``index`` of ``cache`` at key ``columns`` only (contiguous copies)."""
    new, live = _shallow_copy(cache)
    for _, layer in live:
        cols = columns.to(layer.keys.device)
        layer.keys = layer.keys[index:index + 1].index_select(-2, cols).contiguous()
        layer.values = layer.values[index:index + 1].index_select(-2, cols).contiguous()
    return new


def complete(cache: Any, total: int, order: torch.Tensor) -> Any:
    """Staircase caches: pad each layer to ``total`` rows with copies of row 0, then keep rows ``order``."""
    for layer in _layers(cache):
        for name in ("keys", "values"):
            t = getattr(layer, name)
            if t.shape[0] < total:
                t = torch.cat([t, t[:1].expand(total - t.shape[0], *t.shape[1:])])
            setattr(layer, name, t.index_select(0, order.to(t.device)))
    return cache


def compacting_order(keep: Sequence[int], n: int) -> list[int]:
    """An order of the kept rows ``keep`` (ascending, out of ``n``) that :func:`select` applies in place on
    reserved layers: a kept row among the first ``len(keep)`` stays where it is, and the kept rows beyond
    them fill the places of the rows that left (so only those rows move)."""
    m, kept = len(keep), set(keep)
    if any(not 0 <= j < n for j in kept) or len(kept) != m:
        raise ValueError(f"rows to keep must be distinct rows of {n}: {list(keep)}")
    tail = iter([j for j in keep if j >= m])
    return [j if j in kept else next(tail) for j in range(m)]


def select(cache: Any, rows: torch.Tensor) -> Any:
    """Keep only batch rows ``rows`` (in that order); a reserved layer keeps its room."""
    for layer in _layers(cache):
        if isinstance(layer, ReservedLayer) and layer.holds_own():
            layer.select_rows(rows)
            continue
        layer.keys = layer.keys.index_select(0, rows.to(layer.keys.device))
        layer.values = layer.values.index_select(0, rows.to(layer.values.device))
    return cache


class ReservedLayer(DynamicLayer):
    """A dynamic cache layer whose keys and values are views into buffers with room for more columns, so a
    decode step writes its new column in place instead of copying the whole layer (``torch.cat``).

    Reading it is the same as reading a ``DynamicLayer``; once its room is spent, or its tensors were
    replaced from outside, it grows by concatenation again. While ``units`` is set (``(of_row, rep)``, see
    :mod:`hopscope.engine.history`), an update brings the new column of fewer rows (one per unit): it is
    written into every row of its unit, and the keys and values of the units' rows are returned.
    """

    units: tuple[torch.Tensor, torch.Tensor] | None = None

    def reserve(self, extra: int) -> None:
        n = self.keys.shape[-2]
        for name in ("keys", "values"):
            t = getattr(self, name)
            buf = torch.empty(*t.shape[:-2], n + extra, t.shape[-1], dtype=t.dtype, device=t.device)
            buf[..., :n, :] = t
            self.hold(name, buf, n)

    def hold(self, name: str, buf: torch.Tensor, n: int) -> None:
        """Make ``buf`` the buffer of ``name`` (``"keys"``/``"values"``), its first ``n`` columns the live ones."""
        setattr(self, f"_{name}_room", buf)
        setattr(self, name, buf[..., :n, :])

    def room(self) -> int:
        """Columns still free in this layer's buffers."""
        return self._keys_room.shape[-2] - self.keys.shape[-2]

    def holds_own(self) -> bool:
        """Whether ``keys``/``values`` are still the leading columns of this layer's own buffers."""
        room = getattr(self, "_keys_room", None)
        return (room is not None and self.keys.data_ptr() == room.data_ptr() and self.keys.shape[0] == room.shape[0]
                and self.values.data_ptr() == self._values_room.data_ptr())

    def select_rows(self, rows: torch.Tensor) -> None:
        """Keep batch rows ``rows``: in place where each kept row among the first ``len(rows)`` stays where it
        is and later rows fill the others' places (:func:`compacting_order`), else into new buffers."""
        n, order = self.keys.shape[-2], rows.tolist()
        m = len(order)
        if all(r == j or r >= m for j, r in enumerate(order)):
            moved = [j for j, r in enumerate(order) if r != j]
            dst = torch.tensor(moved, dtype=torch.long, device=self.keys.device)
            src = torch.tensor([order[j] for j in moved], dtype=torch.long, device=self.keys.device)
            for name in ("keys", "values"):
                buf = getattr(self, f"_{name}_room")
                if moved:  # the sources lie beyond the first m rows: no row is read after it is written
                    buf.index_copy_(0, dst, buf.index_select(0, src))
                self.hold(name, buf[:m], n)
            return
        for name in ("keys", "values"):
            self.hold(name, getattr(self, f"_{name}_room").index_select(0, rows.to(self.keys.device)), n)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if self.units is None:
            return self._update(key_states, value_states, *args, **kwargs)
        of_row, rep = self.units  # a shared step: one new column per unit, for every row of the unit
        keys, values = self._update(key_states.index_select(0, of_row.to(key_states.device)),
                                    value_states.index_select(0, of_row.to(value_states.device)), *args, **kwargs)
        rows = rep.to(keys.device)
        return keys.index_select(0, rows), values.index_select(0, rows)

    def _update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if self.is_initialized and self.holds_own():
            n, q = self.keys.shape[-2], key_states.shape[-2]
            if n + q <= self._keys_room.shape[-2] and key_states.shape[0] == self.keys.shape[0]:
                self._keys_room[..., n:n + q, :] = key_states
                self._values_room[..., n:n + q, :] = value_states
                self.keys = self._keys_room[..., :n + q, :]
                self.values = self._values_room[..., :n + q, :]
                return self.keys, self.values
        return super().update(key_states, value_states, *args, **kwargs)


def _takes_room(layer: Any, extra: int) -> bool:
    """Whether ``layer`` can hold ``extra`` reserved columns: a plain or reserved dynamic layer (not a sliding
    window), and ``extra > 0``."""
    return type(layer) in (DynamicLayer, ReservedLayer) and extra > 0


def reserve(cache: Any, extra: int) -> Any:
    """A copy of ``cache`` whose plain dynamic layers have room for ``extra`` more columns (see
    :class:`ReservedLayer`); other layer kinds (sliding windows) and layers that have the room already are
    kept as they are."""
    new, live = _shallow_copy(cache)
    for _, layer in live:
        if isinstance(layer, ReservedLayer) and layer.holds_own() and layer.room() >= extra:
            continue
        if _takes_room(layer, extra):
            layer.__class__ = ReservedLayer
            layer.reserve(extra)
    return new


class BatchBuffers:
    """The key/value buffers of one decode batch, ``rows`` x ``columns`` per layer, allocated on first use.

    Several prompt passes fill them block of rows by block of rows (:func:`concat` with ``into``), each pass's
    columns ending where the batch's do, so their caches form one batch (:meth:`cache`) without a second copy.
    """

    def __init__(self, rows: int, columns: int) -> None:
        self.rows, self.columns = rows, columns
        self._bufs: dict[tuple[int, str], torch.Tensor] = {}

    def slot(self, layer: int, name: str, like: torch.Tensor) -> torch.Tensor:
        """Layer ``layer``'s ``name`` buffer, shaped like ``like`` but for ``rows`` x ``columns``."""
        key = (layer, name)
        if key not in self._bufs:
            self._bufs[key] = torch.empty(self.rows, *like.shape[1:-2], self.columns, like.shape[-1],
                                          dtype=like.dtype, device=like.device)
        return self._bufs[key]

    def cache(self, template: Any, width: int) -> Any:
        """The batch's cache: ``template``'s layer structure (a cache one pass filled into these buffers), every
        layer holding the whole buffers with their first ``width`` columns live and the rest as room."""
        new, live = _shallow_copy(template)
        for i, layer in live:
            if (i, "keys") not in self._bufs:
                raise ValueError(f"cache layer {i} was not written into the batch buffers")
            layer.__class__ = ReservedLayer
            for name in ("keys", "values"):
                layer.hold(name, self._bufs[i, name], width)
        return new


def concat(caches: Sequence[Any], widths: Sequence[int], width: int, *, rows: Sequence[int] | None = None,
           room: int = 0, into: tuple[BatchBuffers, int] | None = None) -> Any:
    """One cache from several (rows stacked), written once into a new buffer: cache ``i`` holds ``widths[i]``
    columns and is left-padded with zeros to ``width`` (the caller masks the padding); ``rows[i]``: its rows
    in the result (a batch-1 cache is repeated). ``room``: columns reserved after ``width`` for the next
    updates to write in place (:class:`ReservedLayer`). Every cache must have the same layer structure.

    ``into=(batch, row)``: write into rows ``row..`` of ``batch``'s buffers instead of new ones, the result's
    ``width + room`` columns being their last ones (the columns before them are zeroed, for the batch's mask
    to hide); every layer must take room."""
    new, live = _shallow_copy(caches[0])
    for i, layer in live:
        reservable = _takes_room(layer, room)
        if reservable:
            layer.__class__ = ReservedLayer
        elif into is not None:
            raise ValueError(f"cache layer {i} ({type(layer).__name__}) cannot be written into batch buffers")
        for name in ("keys", "values"):
            parts = [getattr(c.layers[i], name) for c in caches]
            counts = [t.shape[0] for t in parts] if rows is None else list(rows)
            t0 = parts[0]
            columns = width + (room if reservable else 0)
            if into is None:
                buf = torch.empty(sum(counts), *t0.shape[1:-2], columns, t0.shape[-1],
                                  dtype=t0.dtype, device=t0.device)  # the room is written before it is read
            else:
                batch, row0 = into
                full = batch.slot(i, name, t0)
                lead, end = full.shape[-2] - columns, row0 + sum(counts)
                if lead < 0 or end > full.shape[0]:
                    raise ValueError(f"{sum(counts)} rows x {columns} columns from row {row0} do not fit batch "
                                     f"buffers of {full.shape[0]} x {full.shape[-2]}")
                full[row0:end, ..., :lead, :] = 0  # the batch's left padding: masked, never garbage
                buf = full[row0:end, ..., lead:, :]
            r = 0
            for t, w, n in zip(parts, widths, counts):
                if t.shape[-2] != w or t.shape[0] not in (1, n):
                    raise ValueError(f"cache layer {i} holds {t.shape[0]} x {t.shape[-2]} columns, not {n} x {w}: "
                                     f"cannot merge it")
                buf[r:r + n, ..., :width - w, :] = 0  # masked, but never garbage (0 x NaN would leak through)
                buf[r:r + n, ..., width - w:width, :] = t
                r += n
            if reservable:
                layer.hold(name, buf, width)
            else:
                setattr(layer, name, buf)
    return new


def sliding_window(lm: "LoadedModel") -> int | None:
    """The smallest attention window of the model's sliding-window layers (None: every layer is global)."""
    cfg = lm.model.config
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    window = getattr(cfg, "sliding_window", None)
    if not window or getattr(cfg, "use_sliding_window", True) is False:
        return None
    types = getattr(cfg, "layer_types", None)
    if types is not None and not any("sliding" in str(t) for t in types):
        return None
    return int(window)
