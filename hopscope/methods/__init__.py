"""The analyses, one subpackage per line of research, all of the same shape (see docs/CONTRACT.md).

``REGISTRY`` names each analysis's module (``"package.module"`` exposing ``ANALYSIS``, or
``"package.module:NAME"``); :func:`analysis` imports it on demand, so importing ``hopscope.methods`` stays
cheap. Analyses of your own join with :func:`register`, or for every process of a run (sweep workers too)
through the environment: ``HOPSCOPE_ANALYSES="name=package.module:NAME,other=..."``.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

REGISTRY: dict[str, str] = {
    "knowledge": "hopscope.methods.hopping.knowledge_analysis",
    "hopping": "hopscope.methods.hopping",
    "injection": "hopscope.methods.injection",
    "recall": "hopscope.methods.recall",
    "probe": "hopscope.methods.probe",
    "repair": "hopscope.methods.repair",
}


def register(name: str, target: str) -> None:
    """Make the Analysis at ``target`` (``"package.module"`` or ``"package.module:NAME"``) known as ``name``."""
    if ":" not in target and "." not in target:
        raise ValueError(f"analysis target {target!r} must be 'package.module' or 'package.module:NAME'")
    REGISTRY[name] = target


def _from_environment() -> None:
    for item in filter(None, (x.strip() for x in os.environ.get("HOPSCOPE_ANALYSES", "").split(","))):
        name, sep, target = item.partition("=")
        if not sep:
            raise ValueError(f"HOPSCOPE_ANALYSES entry {item!r} must be name=package.module[:NAME]")
        register(name.strip(), target.strip())


def analysis(name: str) -> Any:
    """The :class:`hopscope.pipeline.Analysis` registered as ``name``."""
    if name not in REGISTRY:
        raise ValueError(f"unknown analysis {name!r}; choose from {', '.join(REGISTRY)}")
    module, _, attr = REGISTRY[name].partition(":")
    return getattr(importlib.import_module(module), attr or "ANALYSIS")


_from_environment()
