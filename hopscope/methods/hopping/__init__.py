"""Multi-hop anatomy (Biran et al. 2024, "Hopping Too Late"): knowledge groups, back-patching, Patchscopes,
attention knockout of t1, sublayer projections and the resolution stages, as the paper defines them.

    import hopscope
    from hopscope.methods import hopping
    lm = hopscope.load_model()
    result = hopping.run(lm, settings=hopping.Settings.study())   # world facts built from the settings
    result.claims                                                  # hop.resolve_order, hop.backpatch_fix, ...

The stand-alone knowledge filter is :mod:`hopscope.methods.hopping.knowledge_analysis` (registry name
"knowledge"); :func:`hopscope.methods.hopping.knowledge.knowledge_filter` scores a dataset directly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hopscope.methods.hopping.analysis import ANALYSIS
from hopscope.methods.hopping.settings import KnowledgeSettings, Settings
from hopscope.pipeline import execute
from hopscope.results import Result

if TYPE_CHECKING:
    from hopscope.models.loaded import LoadedModel

__all__ = ["ANALYSIS", "KnowledgeSettings", "Settings", "run"]


def run(lm: "LoadedModel", data: Any = None, settings: Settings | None = None, *, run_folder: Any = None,
        progress: bool = True) -> Result:
    """Run the hopping analysis (``data``: two-hop records, a Dataset, or None to build world facts)."""
    return execute(ANALYSIS, lm, data, settings if settings is not None else Settings(), run_folder=run_folder,
                   progress=progress)
