"""Apply per-row interventions to one forward pass through plain PyTorch hooks on unmodified HF modules."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable, Sequence

import torch

from hopscope.engine.attention import ACTIVE, AttentionRequests
from hopscope.engine.interventions import Intervention
from hopscope.engine.sites import Site, normalise_site, resolve_positions

if TYPE_CHECKING:
    from hopscope.models.loaded import LoadedModel


@dataclass
class Layout:
    """How the columns of the running forward map to prompt positions.

    Row ``r``'s prompt has ``lengths[r]`` tokens starting at column ``offsets[r]``; the forward holds the
    columns ``past .. past + width - 1`` of that layout (``past`` > 0 when a KV cache supplies the rest).
    """

    lengths: list[int]
    offsets: list[int]
    past: int = 0
    width: int = 0

    def columns(self, row: int, position, *, keys: bool = False) -> list[int]:
        """Forward columns of ``position`` in ``row`` (for keys: columns of the full cached sequence)."""
        if isinstance(position, (list, tuple)) and not (len(position) == 2 and isinstance(position, tuple)):
            positions = [p + self.lengths[row] if p < 0 else p for p in position]
            for p in positions:
                if not 0 <= p < self.lengths[row]:
                    raise ValueError(f"position {p} is beyond the prompt of {self.lengths[row]} tokens")
        else:
            positions = resolve_positions(position, self.lengths[row])
        shift = self.offsets[row] - (0 if keys else self.past)
        cols = [p + shift for p in positions]
        if not keys:
            outside = [p for p, c in zip(positions, cols) if not 0 <= c < self.width]
            if outside:
                raise ValueError(
                    f"prompt position(s) {outside} are not computed in this pass (only the last {self.width} "
                    f"token(s) are): the last-position fast path accepts interventions at the last position only"
                )
        return cols


@dataclass
class HookSession:
    """Context manager that installs the hooks one batch needs and collects what it reads."""

    lm: "LoadedModel"
    interventions: Sequence[Sequence[Intervention]]
    layout: Layout
    record: Iterable[tuple[str, int]] = ()
    cache: list[dict[Site, torch.Tensor]] = field(init=False)
    acts: dict[tuple[str, int], torch.Tensor] = field(init=False)

    def __post_init__(self) -> None:
        self.cache = [dict() for _ in self.interventions]
        self.acts = {}
        self._by_key: dict[tuple[str, int], list[tuple[int, Intervention]]] = defaultdict(list)
        for row, ivs in enumerate(self.interventions):
            for iv in ivs:
                site = normalise_site(iv.site, self.lm)
                iv = Intervention(site, iv.op, iv.value, iv.keys) if site != iv.site else iv
                self._by_key[site.key()].append((row, iv))
        self._record = set()
        for comp, layer in self.record:
            site = normalise_site(Site(layer, comp, None), self.lm)
            self._record.add(site.key())
        self._handles: list = []
        self._stash: dict[int, torch.Tensor] = {}
        self._token = None

    # -- installing ------------------------------------------------------------------------
    def __enter__(self) -> "HookSession":
        ad = self.lm.adapter
        keys = set(self._by_key) | self._record
        reg = self._handles.append
        mid_layers = {layer for comp, layer in keys if comp == "resid_mid"}
        for layer in sorted({l for c, l in keys if c in ("resid_pre", "resid_mid")}):
            reg(ad.blocks[layer].register_forward_pre_hook(self._block_pre_hook(layer), with_kwargs=True))
        for layer in sorted({l for c, l in keys if c == "resid_post"}):
            reg(ad.blocks[layer].register_forward_hook(self._output_hook("resid_post", layer)))
        for layer in sorted({l for c, l in keys if c == "attn_out"}):
            reg(ad.attn[layer].register_forward_hook(self._output_hook("attn_out", layer)))
        for layer in sorted({l for c, l in keys if c == "mlp_out"}):
            reg(ad.mlp[layer].register_forward_hook(self._output_hook("mlp_out", layer)))
        for layer in sorted(mid_layers):
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
            reg(_PreForward(self._build_knockouts))
            for layer in pattern_layers:
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

    # -- generic slice operations -------------------------------------------------------------
    def _apply(self, key: tuple[str, int], x: torch.Tensor, *, head_dim: int | None = None) -> None:
        """Read/write ``x`` ([b, cols, d]) in place for every intervention at ``key``."""
        items = self._by_key.get(key, [])
        batch_means: dict[object, torch.Tensor] = {}
        for row, iv in items:
            cols = self.layout.columns(row, iv.site.position)
            sl = self._slice(x, row, cols, iv.site.head, head_dim)
            if iv.op == "cache":
                self.cache[row][iv.site] = sl.detach().clone()
            elif iv.op == "replace":
                self._write(x, row, cols, iv.site.head, head_dim, _as(iv.value, sl).expand_as(sl))
            elif iv.op == "add":
                self._write(x, row, cols, iv.site.head, head_dim, sl + _as(iv.value, sl))
            elif iv.op == "scale":
                self._write(x, row, cols, iv.site.head, head_dim, sl * float(iv.value))
            elif iv.op == "zero":
                self._write(x, row, cols, iv.site.head, head_dim, torch.zeros_like(sl))
            elif iv.op == "mean":
                if iv.value is not None:
                    mean = _as(iv.value, sl)
                else:
                    mkey = (iv.site.position, iv.site.head)
                    if mkey not in batch_means:
                        batch_means[mkey] = self._batch_mean(x, iv.site, head_dim)
                    mean = batch_means[mkey]
                self._write(x, row, cols, iv.site.head, head_dim, mean.expand_as(sl).clone())
        if key in self._record and head_dim is None:
            self.acts[key] = x.detach().clone()

    def _batch_mean(self, x: torch.Tensor, site: Site, head_dim: int | None) -> torch.Tensor:
        rows = [self._slice(x, r, self.layout.columns(r, site.position), site.head, head_dim).clone()
                for r in range(x.shape[0])]
        return torch.stack(rows).mean(0)

    @staticmethod
    def _slice(x, row, cols, head, head_dim):
        if head is None or head_dim is None:
            return x[row, cols]
        return x[row, cols, head * head_dim:(head + 1) * head_dim]

    @staticmethod
    def _write(x, row, cols, head, head_dim, value):
        if head is None or head_dim is None:
            x[row, cols] = value.to(x.dtype)
        else:
            x[row, cols, head * head_dim:(head + 1) * head_dim] = value.to(x.dtype)

    def _needs_write(self, key) -> bool:
        return any(iv.writes for _, iv in self._by_key.get(key, []))

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
            shaped = out if out.dim() == 3 else out.view(len(self.layout.lengths), -1, out.shape[-1])
            if self._needs_write(key):
                shaped = shaped.clone()
            self._apply(key, shaped)
            new = shaped.view_as(out)
            if new is out:
                return None
            return (new, *output[1:]) if isinstance(output, tuple) else new
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
            z_ops = [(r, iv) for r, iv in self._by_key.get(key, []) if iv.op in ("scale", "zero", "mean", "cache")]
            if not z_ops:
                if key in self._record:
                    self.acts[key] = self._head_outputs(layer, z)
                return None
            z = z.clone() if any(iv.writes for _, iv in z_ops) else z
            saved, self._by_key[key] = self._by_key[key], z_ops
            try:
                self._apply_heads(layer, z, d_head)
            finally:
                self._by_key[key] = saved
            if key in self._record:
                self.acts[key] = self._head_outputs(layer, z)
            return (z, *args[1:])
        return hook

    def _apply_heads(self, layer: int, z: torch.Tensor, d_head: int) -> None:
        """z-space ops on heads; cached values are converted to residual space (head_out)."""
        key = ("head_out", layer)
        caches = [(r, iv) for r, iv in self._by_key[key] if iv.op == "cache"]
        writes = [(r, iv) for r, iv in self._by_key[key] if iv.op != "cache"]
        self._by_key[key] = writes
        self._apply(key, z, head_dim=d_head)
        if caches:
            heads = self._head_outputs(layer, z)  # [b, cols, H, d_model]
            for row, iv in caches:
                cols = self.layout.columns(row, iv.site.position)
                val = heads[row, cols] if iv.site.head is None else heads[row, cols, iv.site.head]
                self.cache[row][iv.site] = val.detach().clone()

    def _head_outputs(self, layer: int, z: torch.Tensor) -> torch.Tensor:
        """Per-head contributions in residual space: [b, cols, H, d_model] (without the output bias)."""
        w = self.lm.adapter.out_proj_weight(layer)  # [d_model, H*dh]
        b, s, _ = z.shape
        zh = z.view(b, s, self.lm.n_heads, self.lm.d_head)
        wh = w.view(w.shape[0], self.lm.n_heads, self.lm.d_head)
        return torch.einsum("bshk,dhk->bshd", zh, wh)

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
                if iv.op == "add":
                    if iv.site.head is None:
                        raise ValueError("adding to 'head_out' needs a head (head=None would be ambiguous)")
                    delta = _as(iv.value, out[row, cols])
                else:
                    if heads is None:
                        heads = self._head_outputs(layer, z)
                    cur = heads[row, cols] if iv.site.head is None else heads[row, cols, iv.site.head]
                    delta = _as(iv.value, cur).expand_as(cur) - cur
                    if iv.site.head is None:
                        delta = delta.sum(-2)
                out[row, cols] = out[row, cols] + delta
            return out
        return hook

    def _pattern_hook(self, layer: int):
        key = ("attn_pattern", layer)

        def hook(module, args, output):
            pattern = self._attn_req.patterns.pop(layer, None)
            if pattern is None:
                return None
            if key in self._record:
                self.acts[key] = pattern
            for row, iv in self._by_key.get(key, []):
                if iv.op != "cache":
                    continue
                cols = self.layout.columns(row, iv.site.position)
                p = pattern[row][:, cols, self.layout.offsets[row]:]
                self.cache[row][iv.site] = (p if iv.site.head is None else p[iv.site.head]).clone()
            return None
        return hook

    def _build_knockouts(self, batch: int, q_len: int, kv_len: int, device) -> None:
        """Boolean 'blocked' masks per layer for the knockout interventions of this forward."""
        req = self._attn_req
        req.masks.clear()
        for (comp, layer), items in self._by_key.items():
            kos = [(r, iv) for r, iv in items if iv.op == "knockout"]
            if comp != "attn_pattern" or not kos:
                continue
            mask = torch.zeros(batch, self.lm.n_heads, q_len, kv_len, dtype=torch.bool, device=device)
            for row, iv in kos:
                qcols = self.layout.columns(row, iv.site.position)
                kcols = self.layout.columns(row, iv.keys, keys=True)
                if not kcols:
                    continue
                q_idx = torch.tensor(qcols, dtype=torch.long, device=device)[:, None]
                k_idx = torch.tensor(kcols, dtype=torch.long, device=device)[None, :]
                if iv.site.head is None:
                    mask[row, :, q_idx, k_idx] = True
                else:
                    mask[row, iv.site.head, q_idx, k_idx] = True
            req.masks[layer] = mask


class _PreForward:
    """Placeholder handle: the runner calls ``build`` before the forward with the batch geometry."""

    def __init__(self, build):
        self.build = build

    def remove(self) -> None:
        pass


def _as(value, like: torch.Tensor) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        value = torch.tensor(value)
    return value.to(device=like.device, dtype=like.dtype)


def prepare_knockouts(session: HookSession, batch: int, q_len: int, kv_len: int, device) -> None:
    """Build the knockout masks of ``session`` for a forward of the given geometry."""
    for h in session._handles:
        if isinstance(h, _PreForward):
            h.build(batch, q_len, kv_len, device)
