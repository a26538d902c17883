"""The engine's linear route: float32 ``nn.Linear`` layers on CPU through oneDNN's packed-weight kernel.

torch's eager ``F.linear`` in float32 on CPU calls MKL's sgemm. On some CPUs that runs far below the machine:
on the AMD EPYC (AVX-512) this project is benchmarked on, oneDNN's packed-weight kernel
(``torch.ops.mkldnn._linear_pointwise``, what torch's own compiler emits on CPU) runs the default model's layer
shapes 2.5-3.5x faster at 1-40 rows and 2x at 1,024, and a whole forward about 2x. Inside the engine's own
model calls (:func:`active`, entered by ``compat.call_model``), every ``nn.Linear`` of the model runs that
kernel on a packed copy of its weight; calls outside the engine (a user's own ``lm.model(...)``) run torch's
linear as before, bit for bit.

The result is the same product summed in another order: it differs from MKL's in the last bits (the default
model's logits by at most about 1e-4 in absolute value); at the default model's shapes a row's output did not
depend on the other rows of the batch, except for a single row through the 1,536-wide down-projection (MKL's
changes from 1 to 3 rows). Torch's linear runs instead wherever the packed route does not apply: outside an engine call,
with gradients on, a weight or input not float32 or not on the CPU, or a torch without oneDNN. A packed copy
costs the layer's weight memory once more (a layer whose weights accelerate offloads is packed at each call and
not kept, so offloading still holds no copy, and its output equals the resident model's); it is rebuilt when the
weight changes (a new parameter, new storage, an in-place write that bumps its version counter, as optimizers
and ``load_state_dict`` do) and dropped by :func:`hopscope.engine.weights_changed` (for writes through
``.data``, which bump no counter). ``HOPSCOPE_LINEAR=torch`` in the environment, :func:`set_route` or :func:`using` (a block) turns the
route off.
"""

from __future__ import annotations

import os
import warnings
import weakref
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator

import torch
import torch.nn.functional as F

ROUTES = ("onednn", "torch")
_ACTIVE: ContextVar[bool] = ContextVar("hopscope_linear_active", default=False)
# module -> (weakref to the weight packed, its storage address, its version counter, the packed weight or None)
_PACKED: "weakref.WeakKeyDictionary[torch.nn.Module, tuple]" = weakref.WeakKeyDictionary()


def _available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _wanted() -> str:
    """The route ``HOPSCOPE_LINEAR`` asks for (``onednn`` when unset), normalised."""
    return os.environ.get("HOPSCOPE_LINEAR", "onednn").strip().lower()


def env_problem() -> str | None:
    """What is wrong with the environment's ``HOPSCOPE_LINEAR``, in one line (None: nothing)."""
    wanted = _wanted()
    if wanted not in ROUTES:
        return f"HOPSCOPE_LINEAR={wanted!r} is not a linear route: expected one of {', '.join(ROUTES)}"
    return None


def _initial_route() -> str:
    """``HOPSCOPE_LINEAR`` (default and fallback for a wrong value: ``onednn`` where this torch has it)."""
    return "torch" if _wanted() == "torch" or not _available() else "onednn"


_ROUTE = [_initial_route()]


def route() -> str:
    """The route the engine's float32 CPU linear layers take: ``"onednn"`` or ``"torch"``."""
    return _ROUTE[0]


def set_route(name: str) -> None:
    """Choose the linear route (``"onednn"``: packed weights where they apply; ``"torch"``: ``F.linear``)."""
    if name not in ROUTES:
        raise ValueError(f"unknown linear route {name!r}: expected one of {', '.join(ROUTES)}")
    if name == "onednn" and not _available():
        raise ValueError("this torch has no oneDNN linear kernel: only the route 'torch' is available")
    _ROUTE[0] = name


@contextmanager
def using(name: str) -> Iterator[None]:
    """Within this block the engine takes the linear route ``name`` (the previous route is restored after)."""
    before = route()
    set_route(name)
    try:
        yield
    finally:
        _ROUTE[0] = before


@contextmanager
def active() -> Iterator[None]:
    """Within this block, installed linear layers take the packed route (the engine's model calls)."""
    token = _ACTIVE.set(True)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


class Linear(torch.nn.Linear):
    """``nn.Linear`` whose forward takes the packed route inside the engine (installed by class swap; the
    parameters, hooks and ``state_dict`` are the module's own)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 - torch's own argument name
        packed = _packed_for(self, input) if _ACTIVE.get() and _ROUTE[0] == "onednn" else None
        if packed is None:
            return F.linear(input, self.weight, self.bias)
        shape = input.shape
        out = torch.ops.mkldnn._linear_pointwise(input.reshape(-1, shape[-1]), packed, self.bias, "none", [], "")
        return out.view(*shape[:-1], out.shape[-1])


def _packed_for(module: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor | None:
    """The packed weight of ``module`` for input ``x``, or None where the route does not apply."""
    w = module.weight
    if (x.dtype is not torch.float32 or w.dtype is not torch.float32 or x.device.type != "cpu"
            or w.device.type != "cpu" or (torch.is_grad_enabled() and (w.requires_grad or x.requires_grad))):
        return None
    if _offloaded(getattr(module, "_hf_hook", None)):  # the weight is loaded for this call only: keep no copy
        return _pack(w)
    entry = _PACKED.get(module)
    if entry is not None and entry[0]() is w and entry[1] == w.data_ptr() and entry[2] == w._version:
        return entry[3]
    packed = _pack(w)
    _PACKED[module] = (weakref.ref(w), w.data_ptr(), w._version, packed)
    return packed


def _pack(w: torch.Tensor) -> torch.Tensor | None:
    try:
        return torch.ops.mkldnn._reorder_linear_weight(w.detach(), None)
    except RuntimeError:  # a shape or build oneDNN declines: the module keeps torch's linear
        return None


def _offloaded(hook: object) -> bool:
    """Whether an accelerate hook (or one of a chain of them) offloads the module's weights between calls."""
    if hook is None:
        return False
    return bool(getattr(hook, "offload", False)) or any(_offloaded(h) for h in getattr(hook, "hooks", ()))


def ensure_installed(model: torch.nn.Module) -> None:
    """Give every plain ``nn.Linear`` of ``model`` the routed forward, once (a flag on the model records it)."""
    if getattr(model, "_hopscope_linear", False):
        return
    if (problem := env_problem()) is not None:
        warnings.warn(f"{problem}; the engine uses {route()!r}", stacklevel=3)
    for m in model.modules():
        if type(m) is torch.nn.Linear:
            m.__class__ = Linear
            if "_old_forward" in m.__dict__:  # accelerate's hook wraps the forward it found: give it this one
                m._old_forward = Linear.forward.__get__(m)
    object.__setattr__(model, "_hopscope_linear", True)


def drop_packed(model: torch.nn.Module) -> None:
    """Forget the packed weights of ``model``'s layers (they are rebuilt at the next engine call)."""
    for m in model.modules():
        _PACKED.pop(m, None)


def packed_bytes(model: torch.nn.Module) -> int:
    """Bytes held by packed copies of ``model``'s weights (a packed float32 weight is as large as the weight)."""
    return sum(4 * m.weight.numel() for m in model.modules() if (e := _PACKED.get(m)) is not None and e[3] is not None)
