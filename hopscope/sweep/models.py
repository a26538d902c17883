"""Models as a sweep names them: loading one from its name (in the driver or in a worker), and what the
driver knows of a model that only the workers hold."""

from __future__ import annotations

import gc
from dataclasses import dataclass
from typing import Any

from hopscope.models import LoadedModel, load_model
from hopscope.models.loading import TINY_PREFIX

from .spec import Placement



@dataclass
class ModelSpec:
    """Everything a worker needs to load the same model as every other worker."""

    name: str
    device: str = "cpu"
    dtype: str = "float32"
    placement: Placement | None = None


def load(spec: ModelSpec) -> LoadedModel:
    """Load ``spec``: ``tiny-<family>`` (a tiny random model, for smoke tests of a sweep or a cluster) or
    anything :func:`hopscope.models.load_model` takes, placed by ``spec.placement``."""
    placement = spec.placement or Placement()
    return load_model(spec.name, device=spec.device, dtype=spec.dtype, device_map=placement.device_map,
                      max_memory=placement.max_memory, offload_folder=placement.offload_folder)


def free_memory() -> None:
    """Give back the memory of models nothing refers to any more (GPU memory included)."""
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001 - freeing memory is best effort
        pass


class RemoteModel:
    """The driver's stand-in for a model held by the workers: its facts (``LoadedModel.summary()``), which
    is all the pipeline needs outside a shard (plans, the run folder's record, ``finish``)."""

    def __init__(self, facts: dict[str, Any]) -> None:
        self._facts = dict(facts)

    def summary(self) -> dict[str, Any]:
        return dict(self._facts)

    def __getattr__(self, name: str) -> Any:
        facts = self.__dict__.get("_facts", {})
        if name in facts:
            return facts[name]
        raise AttributeError(name)

    def __repr__(self) -> str:
        return f"RemoteModel({self._facts.get('name')!r})"
