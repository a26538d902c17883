"""Interventions as data: what to do at a site. One list of them per batch row."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from hopscope.engine.sites import Position, Site, as_site

OPS = ("cache", "replace", "add", "scale", "zero", "mean", "knockout", "transform")

Transform = Callable[[torch.Tensor, int], torch.Tensor]


@dataclass(frozen=True, eq=False)
class Intervention:
    """``op`` applied at ``site``. ``value``: tensor for replace/add/mean, factor for scale, a callable
    ``fn(value, row) -> value`` for transform.

    A knockout blocks attention edges at ``site.layer`` from the query position(s) ``site.position`` to the
    key positions ``keys`` (heads ``site.head``, or all heads).
    """

    site: Site
    op: str
    value: torch.Tensor | float | Transform | None = None
    keys: Position | Sequence[int] = None

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ValueError(f"unknown intervention {self.op!r}; choose one of {OPS}")
        if self.op == "knockout" and self.site.component != "attn_pattern":
            raise ValueError("knockout acts on 'attn_pattern' sites")
        if self.site.component == "attn_pattern" and self.op not in ("cache", "knockout"):
            raise ValueError("attention patterns can only be cached or knocked out")
        if self.op == "transform" and not callable(self.value):
            raise ValueError("transform needs a callable fn(value, row) -> value")

    @property
    def writes(self) -> bool:
        return self.op != "cache"

    def at(self, site: Site) -> "Intervention":
        """The same intervention at another (e.g. normalised) site."""
        return self if site == self.site else Intervention(site, self.op, self.value, self.keys)


def _site(site_or_layer: Site | str | int, component: str | None, position: Position, head: int | None) -> Site:
    if isinstance(site_or_layer, (Site, str)):
        return as_site(site_or_layer, position, head)
    if component is None:
        raise ValueError("give a Site, a hook name or (layer, component)")
    return Site(site_or_layer, component, position, head)


def cache(site: Site | str | int, component: str | None = None, position: Position = -1,
          head: int | None = None) -> Intervention:
    """Read the site's value into the result's per-row cache."""
    return Intervention(_site(site, component, position, head), "cache")


def replace(site: Site | str, value: torch.Tensor) -> Intervention:
    """Overwrite the site with ``value`` (broadcast to the site's slice)."""
    return Intervention(as_site(site), "replace", value)


def add(site: Site | str, value: torch.Tensor) -> Intervention:
    """Add ``value`` to the site."""
    return Intervention(as_site(site), "add", value)


def scale(site: Site | str, factor: float) -> Intervention:
    """Multiply the site by ``factor``."""
    return Intervention(as_site(site), "scale", float(factor))


def zero_ablate(site: Site | str) -> Intervention:
    """Set the site to zero."""
    return Intervention(as_site(site), "zero")


def mean_ablate(site: Site | str, mean: torch.Tensor | None = None) -> Intervention:
    """Set the site to ``mean`` (None: its mean over the rows of the same batch)."""
    return Intervention(as_site(site), "mean", mean)


def transform(site: Site | str, fn: Transform) -> Intervention:
    """Replace the site's slice ``v`` of row ``row`` by ``fn(v, row)`` (same shape; any edit)."""
    return Intervention(as_site(site), "transform", fn)


def knockout(layer: int, keys: Position | Sequence[int], query: Position = -1, heads: int | None = None) -> Intervention:
    """Block attention at ``layer`` from ``query`` position(s) to ``keys`` (a position, span or list)."""
    return Intervention(Site(layer, "attn_pattern", query, heads), "knockout", keys=keys)
