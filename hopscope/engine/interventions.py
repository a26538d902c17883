"""Interventions as data: what to do at a site. One list of them per batch row."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from hopscope.engine.sites import Position, Site

OPS = ("cache", "replace", "add", "scale", "zero", "mean", "knockout")


@dataclass(frozen=True, eq=False)
class Intervention:
    """``op`` applied at ``site``. ``value``: tensor for replace/add/mean, factor for scale.

    A knockout blocks attention edges at ``site.layer`` from the query position(s) ``site.position`` to the
    key positions ``keys`` (heads ``site.head``, or all heads).
    """

    site: Site
    op: str
    value: torch.Tensor | float | None = None
    keys: Position | Sequence[int] = None

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ValueError(f"unknown intervention {self.op!r}; choose one of {OPS}")
        if self.op == "knockout" and self.site.component != "attn_pattern":
            raise ValueError("knockout acts on 'attn_pattern' sites")
        if self.site.component == "attn_pattern" and self.op not in ("cache", "knockout"):
            raise ValueError("attention patterns can only be cached or knocked out")

    @property
    def writes(self) -> bool:
        return self.op != "cache"


def _site(site_or_layer: Site | int, component: str | None, position: Position, head: int | None) -> Site:
    if isinstance(site_or_layer, Site):
        return site_or_layer
    if component is None:
        raise ValueError("give a Site or (layer, component)")
    return Site(site_or_layer, component, position, head)


def cache(site: Site | int, component: str | None = None, position: Position = -1, head: int | None = None) -> Intervention:
    """Read the site's value into the result's per-row cache."""
    return Intervention(_site(site, component, position, head), "cache")


def replace(site: Site, value: torch.Tensor) -> Intervention:
    """Overwrite the site with ``value`` (broadcast to the site's slice)."""
    return Intervention(site, "replace", value)


def add(site: Site, value: torch.Tensor) -> Intervention:
    """Add ``value`` to the site."""
    return Intervention(site, "add", value)


def scale(site: Site, factor: float) -> Intervention:
    """Multiply the site by ``factor``."""
    return Intervention(site, "scale", float(factor))


def zero_ablate(site: Site) -> Intervention:
    """Set the site to zero."""
    return Intervention(site, "zero")


def mean_ablate(site: Site, mean: torch.Tensor | None = None) -> Intervention:
    """Set the site to ``mean`` (None: its mean over the rows of the same batch)."""
    return Intervention(site, "mean", mean)


def knockout(layer: int, keys: Position | Sequence[int], query: Position = -1, heads: int | None = None) -> Intervention:
    """Block attention at ``layer`` from ``query`` position(s) to ``keys`` (a position, span or list)."""
    return Intervention(Site(layer, "attn_pattern", query, heads), "knockout", keys=keys)
