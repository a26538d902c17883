"""Sites: (layer, component, position, head) — where the engine reads or writes a tensor.

A site may also be named as TransformerLens users know it (``"blocks.3.hook_resid_post"``); see
:func:`as_site` and :data:`HOOK_NAMES`.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence, Union

if TYPE_CHECKING:
    from hopscope.models.loaded import LoadedModel

Position = Union[int, tuple[int, int], Sequence[int], None]

COMPONENTS = (
    "embed", "resid_pre", "resid_mid", "resid_post", "attn_out", "head_out", "mlp_hidden", "mlp_out",
    "attn_pattern", "final_norm",
)
HEADED = ("head_out", "attn_pattern")

# TransformerLens hook names -> components ("{l}" is the layer). hook_embed is hopscope's ``embed``: the
# input of block 0 (token plus position embeddings where the family adds them there, e.g. GPT-2).
HOOK_NAMES: dict[str, str] = {
    "blocks.{l}.hook_resid_pre": "resid_pre",
    "blocks.{l}.hook_resid_mid": "resid_mid",
    "blocks.{l}.hook_resid_post": "resid_post",
    "blocks.{l}.hook_attn_out": "attn_out",
    "blocks.{l}.hook_mlp_out": "mlp_out",
    "blocks.{l}.attn.hook_pattern": "attn_pattern",
    "blocks.{l}.attn.hook_result": "head_out",
    "blocks.{l}.mlp.hook_post": "mlp_hidden",
    "hook_embed": "embed",
    "ln_final.hook_normalized": "final_norm",
}
_HOOK_RE = re.compile(r"^blocks\.(-?\d+)\.(.+)$")


@dataclass(frozen=True)
class Site:
    """A place in the forward pass.

    ``position``: an int (negative counts from the end of the prompt, -1 = last prompt token;
    non-negative indexes the unpadded prompt), a ``(start, stop)`` span, a list of positions, or ``None``
    for every position. ``head`` is only meaningful for ``head_out`` and ``attn_pattern`` (``None`` = all).
    """

    layer: int
    component: str
    position: Position = -1
    head: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.position, list):  # lists are unhashable: keep sites hashable
            object.__setattr__(self, "position", tuple(int(p) for p in self.position) if len(self.position) != 2
                               else _PositionList(int(p) for p in self.position))

    def key(self) -> tuple[str, int]:
        return (self.component, self.layer)

    @property
    def hook_name(self) -> str:
        """The TransformerLens name of this site's tensor."""
        for name, comp in HOOK_NAMES.items():
            if comp == self.component:
                return name.format(l=self.layer)
        raise ValueError(f"component {self.component!r} has no TransformerLens name")


class _PositionList(tuple):
    """A list of exactly two positions (a plain 2-tuple means a ``(start, stop)`` span)."""


def parse_hook_name(name: str, n_layers: int | None = None) -> tuple[str, int]:
    """``(component, layer)`` of a TransformerLens hook name; errors list the nearest valid names."""
    name = name.strip()
    if name in HOOK_NAMES:
        comp = HOOK_NAMES[name]
        return comp, (0 if comp == "embed" else (n_layers or 1) - 1)
    m = _HOOK_RE.match(name)
    if m and f"blocks.{{l}}.{m.group(2)}" in HOOK_NAMES:
        return HOOK_NAMES[f"blocks.{{l}}.{m.group(2)}"], int(m.group(1))
    layer = m.group(1) if m else "0"
    valid = [n.format(l=layer) for n in HOOK_NAMES]
    near = difflib.get_close_matches(name, valid, n=3, cutoff=0.4) or valid[:3]
    raise ValueError(f"unknown hook name {name!r}; did you mean {', '.join(near)}? "
                     f"(known: {', '.join(n.format(l='L') for n in HOOK_NAMES)})")


def as_site(site: "Site | str", position: Position = -1, head: int | None = None) -> Site:
    """A :class:`Site` from a Site or a TransformerLens hook name (with ``position``/``head``)."""
    if isinstance(site, Site):
        return site
    if isinstance(site, str):
        comp, layer = parse_hook_name(site)
        return Site(-1 if comp == "final_norm" else layer, comp, position, head)
    raise TypeError(f"a site is a Site or a hook name, not {type(site).__name__}")


def normalise_site(site: Site, lm: "LoadedModel") -> Site:
    """Validate ``site`` against ``lm`` and return it with a non-negative layer; errors name the problem."""
    if site.component not in COMPONENTS:
        near = difflib.get_close_matches(site.component, COMPONENTS, n=2)
        hint = f" (did you mean {' or '.join(near)}?)" if near else ""
        raise ValueError(f"unknown component {site.component!r}{hint}; components are {', '.join(COMPONENTS)}")
    n = lm.n_layers
    layer = site.layer + n if site.layer < 0 else site.layer
    if not 0 <= layer < n:
        raise ValueError(f"layer {site.layer} is out of range: {lm.name} has {n} layers (0..{n - 1})")
    if site.component == "embed" and layer != 0:
        raise ValueError("component 'embed' exists only at layer 0 (it is resid_pre of layer 0)")
    if site.component == "final_norm" and layer != n - 1:
        raise ValueError(f"component 'final_norm' exists only at the last layer ({n - 1})")
    if site.component == "resid_mid" and lm.adapter.parallel_residual:
        raise ValueError(f"component 'resid_mid' does not exist in {lm.family}: its blocks use a parallel residual")
    if site.head is not None:
        if site.component not in HEADED:
            raise ValueError(f"component {site.component!r} has no heads; only {HEADED} take head=")
        if not 0 <= site.head < lm.n_heads:
            raise ValueError(f"head {site.head} is out of range: {lm.name} has {lm.n_heads} heads (0..{lm.n_heads - 1})")
    if site.component == "embed":
        return Site(0, "resid_pre", site.position, site.head)
    if layer == site.layer:
        return site
    return Site(layer, site.component, site.position, site.head)


def is_span(position: Position) -> bool:
    """Whether ``position`` is a ``(start, stop)`` span (a plain 2-tuple)."""
    return isinstance(position, tuple) and len(position) == 2 and not isinstance(position, _PositionList)


def resolve_positions(position: Position, length: int) -> list[int]:
    """Prompt positions (0..length-1) that ``position`` names in a prompt of ``length`` tokens."""
    if position is None:
        return list(range(length))
    if is_span(position):
        start, stop = position
        start = start + length if start < 0 else start
        stop = stop + length if stop < 0 else stop
        if not 0 <= start < stop <= length:
            raise ValueError(f"span {position} is outside the prompt of {length} tokens")
        return list(range(start, stop))
    if isinstance(position, (list, tuple)):
        out = [p + length if p < 0 else p for p in position]
        bad = [p for p, q in zip(position, out) if not 0 <= q < length]
        if bad:
            raise ValueError(f"position(s) {bad} are beyond the prompt of {length} tokens")
        return out
    p = position + length if position < 0 else position
    if not 0 <= p < length:
        raise ValueError(f"position {position} is beyond the prompt of {length} tokens")
    return [p]


def first_position(position: Position, length: int) -> int:
    """The earliest prompt position ``position`` names (for deciding what a pass must recompute)."""
    return min(resolve_positions(position, length)) if length else 0
