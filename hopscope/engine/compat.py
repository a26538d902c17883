"""Calling an HF model across transformers 5.x: the KV cache's keyword and output field.

transformers 5.24 renamed ``past_key_values`` to ``cache`` (the old name warns and goes in 5.40). The engine
passes the cache under whichever name the installed model's ``forward`` takes, so no deprecation warning
comes from hopscope's own calls on any 5.x release. Every call also installs hopscope's pass-through attention
and linear route on the model first (once), so a pass takes the same routes whichever engine call came before
it, and runs the model with the linear route active (:mod:`hopscope.engine.linear`).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from hopscope.engine import linear
from hopscope.engine.attention import ensure_installed

_KWARG: dict[type, str] = {}


def cache_kwarg(model: torch.nn.Module) -> str:
    """``"cache"`` where the model's forward takes it, else ``"past_key_values"``."""
    cls = type(model)
    if cls not in _KWARG:
        params = inspect.signature(model.forward).parameters
        _KWARG[cls] = "cache" if "cache" in params else "past_key_values"
    return _KWARG[cls]


def call_model(model: torch.nn.Module, *, past: Any = None, **kwargs: Any):
    """``model(**kwargs)`` with the KV cache ``past`` passed under the right keyword (no grad), through
    hopscope's pass-through attention and linear route."""
    ensure_installed(model)
    linear.ensure_installed(model)
    if past is not None:
        kwargs[cache_kwarg(model)] = past
    with torch.no_grad(), linear.active():
        return model(**kwargs)


def output_cache(out: Any) -> Any:
    """The KV cache of a model output, read without touching deprecated attributes."""
    keys = out.keys()
    if "cache" in keys:
        return out["cache"]
    return out["past_key_values"] if "past_key_values" in keys else None
