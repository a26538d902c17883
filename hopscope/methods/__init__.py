"""The analyses, one subpackage per line of research, all of the same shape (see docs/CONTRACT.md).

``REGISTRY`` names each analysis's module; :func:`analysis` imports it on demand (so importing
``hopscope.methods`` stays cheap) and returns its :class:`hopscope.pipeline.Analysis`.
"""

from __future__ import annotations

import importlib
from typing import Any

REGISTRY: dict[str, str] = {
    "knowledge": "hopscope.methods.hopping.knowledge_analysis",
    "hopping": "hopscope.methods.hopping",
    "injection": "hopscope.methods.injection",
    "recall": "hopscope.methods.recall",
    "probe": "hopscope.methods.probe",
    "repair": "hopscope.methods.repair",
}


def analysis(name: str) -> Any:
    """The :class:`hopscope.pipeline.Analysis` registered as ``name``."""
    if name not in REGISTRY:
        raise ValueError(f"unknown analysis {name!r}; choose from {', '.join(REGISTRY)}")
    return importlib.import_module(REGISTRY[name]).ANALYSIS
