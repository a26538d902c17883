"""Sites: (layer, component, position, head) — where the engine reads or writes a tensor."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Union

if TYPE_CHECKING:
    from hopscope.models.loaded import LoadedModel

Position = Union[int, tuple[int, int], None]

COMPONENTS = (
    "embed", "resid_pre", "resid_mid", "resid_post", "attn_out", "head_out", "mlp_out", "attn_pattern", "final_norm",
)
HEADED = ("head_out", "attn_pattern")


@dataclass(frozen=True)
class Site:
    """A place in the forward pass.

    ``position``: an int (negative counts from the end of the prompt, -1 = last prompt token;
    non-negative indexes the unpadded prompt), a ``(start, stop)`` span, or ``None`` for every position.
    ``head`` is only meaningful for ``head_out`` and ``attn_pattern`` (``None`` = all heads).
    """

    layer: int
    component: str
    position: Position = -1
    head: int | None = None

    def key(self) -> tuple[str, int]:
        return (self.component, self.layer)


def normalise_site(site: Site, lm: "LoadedModel") -> Site:
    """Validate ``site`` against ``lm`` and return it with a non-negative layer; errors name the problem."""
    if site.component not in COMPONENTS:
        raise ValueError(f"unknown component {site.component!r}; components are {', '.join(COMPONENTS)}")
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
    return Site(layer, site.component, site.position, site.head)


def resolve_positions(position: Position, length: int) -> list[int]:
    """Prompt positions (0..length-1) that ``position`` names in a prompt of ``length`` tokens."""
    if position is None:
        return list(range(length))
    if isinstance(position, tuple):
        start, stop = position
        start = start + length if start < 0 else start
        stop = stop + length if stop < 0 else stop
        if not 0 <= start < stop <= length:
            raise ValueError(f"span {position} is outside the prompt of {length} tokens")
        return list(range(start, stop))
    p = position + length if position < 0 else position
    if not 0 <= p < length:
        raise ValueError(f"position {position} is beyond the prompt of {length} tokens")
    return [p]
