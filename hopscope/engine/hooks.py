"""Apply per-row interventions to one forward pass through plain PyTorch hooks on unmodified HF modules.

This module and :mod:`hopscope.engine.runner` are the only places that install hooks. A
:class:`HookSession` holds the interventions of one batch; ``index[row]`` is the batch position of a row
(rows may be permuted, and with a :class:`Staircase` they join the batch at the block of their first
intervention as copies of the clean carrier row 0).
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable, Sequence

import torch

from hopscope.engine.attention import ACTIVE, AttentionRequests
from hopscope.engine.interventions import Intervention
from hopscope.engine.layout import Layout
from hopscope.engine.sites import Site, normalise_site

if TYPE_CHECKING:
    from hopscope.models.loaded import LoadedModel

Z_OPS = ("scale", "zero", "mean", "cache", "transform")  # head_out ops applied to a head's value vector z


@dataclass
class Staircase:
    """Rows join the batch late: ``adds[l]`` copies of row 0 are appended at the input of block ``l``
    (``l == n_layers``: at the final norm). The batch at block ``l`` is its first ``sizes[l]`` rows."""

    adds: dict[int, int]
    sizes: list[int]  # batch size at the input of each block (len n_layers)


@dataclass
class ColumnStaircase:
    """The staircase of a packed pass (one sequence): row columns join the sequence late. The input of block
    ``l`` holds its first ``widths[l]`` columns; the columns added there are copies of column ``carrier`` (the
    prompt's last position, which computes what every row computes below its first intervention); the final
    norm gets all ``total`` columns. The blocks' other inputs of ``total`` columns (the attention mask, the
    rotary embeddings, the position ids) are cut to each block's width."""

    widths: list[int]  # columns at the input of each block (len n_layers)
    total: int
    carrier: int


@dataclass
class HookSession:
    """Context manager that installs the hooks one batch needs and collects what it reads."""

    lm: "LoadedModel"
    interventions: Sequence[Sequence[Intervention]]
    layout: Layout
    record: Iterable[tuple[str, int]] = ()
    index: list[int] | None = None
    staircase: Staircase | ColumnStaircase | None = None
    cache: list[dict[Site, torch.Tensor]] = field(init=False)
    acts: dict[tuple[str, int], torch.Tensor] = field(init=False)

    def __post_init__(self) -> None:
        self.cache = [dict() for _ in self.interventions]
        self.acts = {}
        if self.index is None:
            self.index = list(range(len(self.interventions)))
        self._by_key: dict[tuple[str, int], list[tuple[int, Intervention]]] = defaultdict(list)
        for row, ivs in enumerate(self.interventions):
            for iv in ivs:
                iv = iv.at(normalise_site(iv.site, self.lm))
                self._by_key[iv.site.key()].append((row, iv))
        self._record = {normalise_site(Site(layer, comp, None), self.lm).key() for comp, layer in self.record}
        self._handles: list = []
        self._stash: dict[int, torch.Tensor] = {}
        self._token = None
        self._attn_req: AttentionRequests | None = None
        self._home = self.lm.device  # cached values come back here, wherever the layer that made them sits

    # -- installing ------------------------------------------------------------------------
    def __enter__(self) -> "HookSession":
        ad = self.lm.adapter
        keys = set(self._by_key) | self._record
        reg = self._handles.append
        if isinstance(self.staircase, ColumnStaircase):
            st = self.staircase
            for layer, width in enumerate(st.widths):
                reg(ad.blocks[layer].register_forward_pre_hook(_columns(width, st.total, st.carrier),
                                                               with_kwargs=True))
            reg(ad.final_norm.register_forward_pre_hook(_columns(st.total, st.total, st.carrier), with_kwargs=True))
        elif self.staircase is not None:
            for layer, n in sorted(self.staircase.adds.items()):
                module = ad.final_norm if layer == self.lm.n_layers else ad.blocks[layer]
                reg(module.register_forward_pre_hook(_widen(n), with_kwargs=True))
        for layer in sorted({l for c, l in keys if c in ("resid_pre", "resid_mid")}):
            reg(ad.blocks[layer].register_forward_pre_hook(self._block_pre_hook(layer), with_kwargs=True))
        for layer in sorted({l for c, l in keys if c == "resid_post"}):
            reg(ad.blocks[layer].register_forward_hook(self._output_hook("resid_post", layer)))
        for layer in sorted({l for c, l in keys if c == "attn_out"}):
            reg(ad.attn[layer].register_forward_hook(self._output_hook("attn_out", layer)))
        for layer in sorted({l for c, l in keys if c == "mlp_hidden"}):
            reg(ad.mlp_down[layer].register_forward_pre_hook(self._input_hook("mlp_hidden", layer)))
        for layer in sorted({l for c, l in keys if c == "mlp_out"}):
            reg(ad.mlp[layer].register_forward_hook(self._output_hook("mlp_out", layer)))
        for layer in sorted({l for c, l in keys if c == "resid_mid"}):
            reg(ad.attn_to_resid[layer].register_forward_hook(self._mid_hook(layer)))
        for layer in sorted({l for c, l in keys if c == "head_out"}):
            reg(ad.out_proj[layer].register_forward_pre_hook(self._head_pre_hook(layer)))
            reg(ad.out_proj[layer].register_forward_hook(self._head_post_hook(layer)))
        if any(c == "final_norm" for c, _ in keys):
            reg(ad.final_norm.register_forward_hook(self._output_hook("final_norm", self.lm.n_layers - 1)))
        pattern_layers = {l for c, l in keys if c == "attn_pattern"}
        if pattern_layers:
            req = AttentionRequests()
            for layer in pattern_layers:
                if ("attn_pattern", layer) in self._record or any(
                        iv.op == "cache" for _, iv in self._by_key.get(("attn_pattern", layer), [])):
                    req.record.add(layer)
            self._attn_req = req
            for layer in pattern_layers:
                reg(ad.attn[layer].register_forward_pre_hook(self._mask_device_hook(layer), with_kwargs=True))
                reg(ad.attn[layer].register_forward_hook(self._pattern_hook(layer)))
            self._token = ACTIVE.set(req)
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        if self._token is not None:
            ACTIVE.reset(self._token)
            self._token = None

    def prepare(self, batch: int, q_len: int, kv_len: int, device) -> None:
        """Build the knockout masks for a forward of this geometry (call inside the session, before it)."""
        if self._attn_req is None:
            return
        req = self._attn_req
        req.kv_length = kv_len  # sliding-window caches hold fewer keys: patterns are padded back to this
        req.masks.clear()
        for (comp, layer), items in self._by_key.items():
            kos = [(r, iv) for r, iv in items if iv.op == "knockout"]
            if comp != "attn_pattern" or not kos:
                continue
            mask = torch.zeros(batch, self.lm.n_heads, q_len, kv_len, dtype=torch.bool, device=device)
            for row, iv in kos:
                qcols = self.layout.columns(row, iv.site.position)
                kcols = self.layout.columns(row, iv.keys, keys=True) if _nonempty(iv.keys) else []
                if not kcols:
                    continue
                q_idx = torch.tensor(qcols, dtype=torch.long, device=device)[:, None]
                k_idx = torch.tensor(kcols, dtype=torch.long, device=device)[None, :]
                b = self.index[row]
                if iv.site.head is None:
                    mask[b, :, q_idx, k_idx] = True
                else:
                    mask[b, iv.site.head, q_idx, k_idx] = True
            req.masks[layer] = mask

    # -- generic slice operations -------------------------------------------------------------
    def _apply(self, key: tuple[str, int], x: torch.Tensor, *, head_dim: int | None = None,
               items: list[tuple[int, Intervention]] | None = None) -> None:
        """Read/write ``x`` ([b, cols, d]) in place for every intervention at ``key``."""
        items = self._by_key.get(key, []) if items is None else items
        batch_means: dict[object, torch.Tensor] = {}
        for row, iv in items:
            cols = self.layout.columns(row, iv.site.position)
            b = self.index[row]
            sl = _slice(x, b, cols, iv.site.head, head_dim)
            if iv.op == "cache":
                self.cache[row][iv.site] = _home(sl, self._home)
                continue
            if iv.op == "replace":
                new = _as(iv.value, sl).expand_as(sl)
            elif iv.op == "add":
                new = sl + _as(iv.value, sl)
            elif iv.op == "scale":
                new = sl * float(iv.value)
            elif iv.op == "zero":
                new = torch.zeros_like(sl)
            elif iv.op == "transform":
                new = iv.value(sl.clone(), row)
                if not isinstance(new, torch.Tensor) or new.shape != sl.shape:
                    raise ValueError(f"transform at {iv.site} must return a tensor of shape {tuple(sl.shape)}")
            else:  # mean
                if iv.value is not None:
                    mean = _as(iv.value, sl)
                else:
                    mkey = (iv.site.position, iv.site.head)
                    if mkey not in batch_means:
                        batch_means[mkey] = self._batch_mean(x, iv.site, head_dim)
                    mean = batch_means[mkey]
                new = mean.expand_as(sl).clone()
            _write(x, b, cols, iv.site.head, head_dim, new)
        if key in self._record and head_dim is None:
            self.acts[key] = _home(x, self._home)

    def _batch_mean(self, x: torch.Tensor, site: Site, head_dim: int | None) -> torch.Tensor:
        rows = [_slice(x, self.index[r], self.layout.columns(r, site.position), site.head, head_dim).clone()
                for r in range(len(self.interventions))]
        return torch.stack(rows).mean(0)

    def _needs_write(self, key) -> bool:
        return any(iv.writes for _, iv in self._by_key.get(key, []))

    def _shaped(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` as ``[batch, cols, d]`` (OPT runs its MLP on flattened ``[batch * cols, d]``)."""
        if t.dim() == 3:
            return t
        if isinstance(self.staircase, ColumnStaircase):  # one sequence whose width changes from block to block
            return t.view(1, -1, t.shape[-1])
        return t.view(-1, self.layout.width, t.shape[-1])

    # -- hooks --------------------------------------------------------------------------------
    def _block_pre_hook(self, layer: int):
        def hook(module, args, kwargs):
            hs = args[0] if args else kwargs["hidden_states"]
            key = ("resid_pre", layer)
            if key in self._by_key or key in self._record:
                if self._needs_write(key):
                    hs = hs.clone()
                self._apply(key, hs)
            if ("resid_mid", layer) in self._by_key or ("resid_mid", layer) in self._record:
                self._stash[layer] = hs
            if args:
                return (hs, *args[1:]), kwargs
            kwargs["hidden_states"] = hs
            return args, kwargs
        return hook

    def _output_hook(self, component: str, layer: int):
        key = (component, layer)

        def hook(module, args, output):
            out = output[0] if isinstance(output, tuple) else output
            shaped = self._shaped(out)
            if self._needs_write(key):
                shaped = shaped.clone()
            self._apply(key, shaped)
            new = shaped.view_as(out)
            if new is out:
                return None
            return (new, *output[1:]) if isinstance(output, tuple) else new
        return hook

    def _input_hook(self, component: str, layer: int):
        key = (component, layer)

        def hook(module, args):
            x = args[0]
            shaped = self._shaped(x)
            if self._needs_write(key):
                shaped = shaped.clone()
            self._apply(key, shaped)
            new = shaped.view_as(x)
            return None if new is x else (new, *args[1:])
        return hook

    def _mid_hook(self, layer: int):
        key = ("resid_mid", layer)

        def hook(module, args, output):
            out = output[0] if isinstance(output, tuple) else output
            mid = self._stash.pop(layer) + out
            before = mid.clone() if self._needs_write(key) else mid
            self._apply(key, mid)
            if not self._needs_write(key):
                return None
            new = out + (mid - before)
            return (new, *output[1:]) if isinstance(output, tuple) else new
        return hook

    def _head_pre_hook(self, layer: int):
        key = ("head_out", layer)
        d_head = self.lm.d_head

        def hook(module, args):
            z = args[0]
            z_items = [(r, iv) for r, iv in self._by_key.get(key, []) if iv.op in Z_OPS]
            if not z_items:
                if key in self._record:
                    self.acts[key] = _home(self._head_outputs(layer, z), self._home, copy=False)
                return None
            z = z.clone() if any(iv.writes for _, iv in z_items) else z
            writes = [(r, iv) for r, iv in z_items if iv.op != "cache"]
            self._apply(key, z, head_dim=d_head, items=writes)
            caches = [(r, iv) for r, iv in z_items if iv.op == "cache"]
            if caches:
                heads = self._head_outputs(layer, z)  # [b, cols, H, d_model]
                for row, iv in caches:
                    cols = self.layout.columns(row, iv.site.position)
                    b = self.index[row]
                    val = heads[b, cols] if iv.site.head is None else heads[b, cols, iv.site.head]
                    self.cache[row][iv.site] = _home(val, self._home)
            if key in self._record:
                self.acts[key] = _home(self._head_outputs(layer, z), self._home, copy=False)
            return (z, *args[1:])
        return hook

    def _head_outputs(self, layer: int, z: torch.Tensor) -> torch.Tensor:
        """Per-head contributions in residual space: [b, cols, H, d_model] (without the output bias)."""
        b, s, _ = z.shape
        zh = z.view(b, s, self.lm.n_heads, self.lm.d_head)
        with _weights_on(self.lm.adapter.out_proj[layer], z.device):  # an offloaded projection: its weights
            w = self.lm.adapter.out_proj_weight(layer)  # [d_model, H*dh]
            wh = w.view(w.shape[0], self.lm.n_heads, self.lm.d_head).to(z.device)
            return torch.einsum("bshk,dhk->bshd", zh, wh)

    def _mask_device_hook(self, layer: int):
        """Attention pre-hook: the layer's knockout mask on the device its hidden states arrive on (a model
        split over several devices runs each block on its own)."""
        def hook(module, args, kwargs):
            mask = self._attn_req.masks.get(layer) if self._attn_req is not None else None
            hs = args[0] if args else kwargs.get("hidden_states")
            if mask is not None and hs is not None and mask.device != hs.device:
                self._attn_req.masks[layer] = mask.to(hs.device)
            return None
        return hook

    def _head_post_hook(self, layer: int):
        key = ("head_out", layer)

        def hook(module, args, output):
            items = [(r, iv) for r, iv in self._by_key.get(key, []) if iv.op in ("replace", "add")]
            if not items:
                return None
            out = output.clone()
            z = args[0]
            heads = None
            for row, iv in items:
                cols = self.layout.columns(row, iv.site.position)
                b = self.index[row]
                if iv.op == "add":
                    if iv.site.head is None:
                        raise ValueError("adding to 'head_out' needs a head (head=None would be ambiguous)")
                    delta = _as(iv.value, out[b, cols])
                else:
                    if heads is None:
                        heads = self._head_outputs(layer, z)
                    cur = heads[b, cols] if iv.site.head is None else heads[b, cols, iv.site.head]
                    delta = _as(iv.value, cur).expand_as(cur) - cur
                    if iv.site.head is None:
                        delta = delta.sum(-2)
                out[b, cols] = out[b, cols] + delta
            return out
        return hook

    def _pattern_hook(self, layer: int):
        key = ("attn_pattern", layer)

        def hook(module, args, output):
            pattern = self._attn_req.patterns.pop(layer, None)
            if pattern is None:
                return None
            if key in self._record:
                self.acts[key] = _home(pattern, self._home, copy=False)
            for row, iv in self._by_key.get(key, []):
                if iv.op != "cache":
                    continue
                cols = self.layout.columns(row, iv.site.position)
                p = pattern[self.index[row]][:, cols][:, :, self.layout.key_columns(row)]
                self.cache[row][iv.site] = _home(p if iv.site.head is None else p[iv.site.head], self._home)
            return None
        return hook


def _widen(n: int):
    """Block pre-hook appending ``n`` copies of batch row 0 (the clean carrier) to the hidden states."""
    def hook(module, args, kwargs):
        hs = args[0] if args else kwargs["hidden_states"]
        hs = torch.cat([hs, hs[:1].expand(n, *hs.shape[1:])])
        if args:
            return (hs, *args[1:]), kwargs
        kwargs["hidden_states"] = hs
        return args, kwargs
    return hook


def _columns(width: int, total: int, carrier: int):
    """Block pre-hook of a :class:`ColumnStaircase`: the hidden states cut or extended (copies of column
    ``carrier``) to ``width`` columns, and every other input laid out over ``total`` columns cut to it."""
    def hidden(hs):
        w = hs.shape[1]
        if w > width:
            return hs[:, :width]
        if w < width:
            return torch.cat([hs, hs[:, carrier:carrier + 1].expand(-1, width - w, -1)], 1)
        return hs
    return _block_inputs(hidden, lambda x: _cut_columns(x, total, width))


def _block_inputs(hidden, other):
    """A block pre-hook (with kwargs) that maps the hidden states through ``hidden`` and every other input
    through ``other``."""
    def hook(module, args, kwargs):
        hs = hidden(args[0] if args else kwargs["hidden_states"])
        rest = tuple(other(a) for a in args[1:])
        kwargs = {k: (v if k == "hidden_states" else other(v)) for k, v in kwargs.items()}
        if args:
            return (hs, *rest), kwargs
        kwargs["hidden_states"] = hs
        return rest, kwargs
    return hook


@contextlib.contextmanager
def unit_hooks(lm: "LoadedModel", grow: Sequence[torch.Tensor | None], sizes: Sequence[int]):
    """Block pre-hooks of a shared decode step (:mod:`hopscope.engine.history`): at block ``b`` (the final
    norm at ``b == n_layers``) the hidden states hold ``sizes[b]`` rows, one per unit, ``grow[b]`` picking
    each unit's row of the previous block (None: the same units). The blocks' other batch-shaped inputs
    (rotary embeddings, position ids, a mask) come with the step's ``sizes[0]`` input rows, all equal: they
    are widened to each block's rows."""
    ad = lm.adapter
    handles = []
    try:
        for b, (g, m) in enumerate(zip(grow, sizes)):
            if g is not None or m != sizes[0]:
                module = ad.final_norm if b == lm.n_layers else ad.blocks[b]
                handles.append(module.register_forward_pre_hook(_units(g, sizes[0], m), with_kwargs=True))
        yield
    finally:
        for h in handles:
            h.remove()


def _units(grow: torch.Tensor | None, first: int, rows: int):
    def hidden(hs):
        return hs if grow is None else hs.index_select(0, grow.to(hs.device))
    return _block_inputs(hidden, lambda x: _widen_rows(x, first, rows))


def _widen_rows(x, first: int, rows: int):
    """A batch-shaped input of ``first`` equal rows (at least 2-d) as ``rows`` rows; anything else unchanged."""
    if isinstance(x, (tuple, list)):
        return type(x)(_widen_rows(v, first, rows) for v in x)
    if isinstance(x, torch.Tensor) and x.dim() >= 2 and x.shape[0] == first and first != rows:
        return x[:1].expand(rows, *x.shape[1:])
    return x


def _cut_columns(x, total: int, width: int):
    """``x`` laid out over ``total`` sequence columns, cut to the first ``width``: a ``[.., q, k]`` mask, rotary
    ``(cos, sin)`` of ``[b, seq, d]``, position ids ``[b, seq]`` or ``[seq]``; anything else unchanged."""
    if isinstance(x, (tuple, list)):
        return type(x)(_cut_columns(v, total, width) for v in x)
    if not isinstance(x, torch.Tensor) or total == width:
        return x
    if x.dim() == 4 and x.shape[-1] == total and x.shape[-2] == total:
        return x[..., :width, :width]
    if x.dim() == 3 and x.shape[1] == total:
        return x[:, :width]
    if x.dim() in (1, 2) and x.shape[-1] == total:
        return x[..., :width]
    return x


def _nonempty(keys) -> bool:
    return keys is not None and not (isinstance(keys, (list, tuple)) and len(keys) == 0)


def _slice(x, b, cols, head, head_dim):
    if head is None or head_dim is None:
        return x[b, cols]
    return x[b, cols, head * head_dim:(head + 1) * head_dim]


def _write(x, b, cols, head, head_dim, value):
    value = value.to(device=x.device, dtype=x.dtype)
    if head is None or head_dim is None:
        x[b, cols] = value
    else:
        x[b, cols, head * head_dim:(head + 1) * head_dim] = value


def _home(t: torch.Tensor, device: torch.device, *, copy: bool = True) -> torch.Tensor:
    """A detached copy of ``t`` on ``device`` (``copy=False``: ``t`` itself when it is there already)."""
    t = t.detach()
    if t.device != device:
        return t.to(device)
    return t.clone() if copy else t


def _weights_on(module: torch.nn.Module, device: torch.device):
    """A context in which ``module``'s weights are real tensors: accelerate keeps an offloaded module's
    weights on the meta device outside its own forward (a hook reading them runs outside it)."""
    if not any(p.device.type == "meta" for p in module.parameters(recurse=False)):
        return contextlib.nullcontext()
    from accelerate.utils import align_module_device

    return align_module_device(module, device)


def _as(value, like: torch.Tensor) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        value = torch.tensor(value)
    return value.to(device=like.device, dtype=like.dtype)


def join_layer(lm: "LoadedModel", interventions: Sequence[Intervention]) -> int:
    """The first block whose computation a row's interventions can change (``n_layers``: none)."""
    layers = [normalise_site(iv.site, lm).layer for iv in interventions]
    return min(layers) if layers else lm.n_layers
