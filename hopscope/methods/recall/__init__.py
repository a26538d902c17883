"""Factual-recall mechanisms (Lv et al. 2024, arXiv 2403.19521): subject-moving heads, the MLP that amplifies
or erases a head's output, final-layer anti-overconfidence and its mitigation (docs/recall.md).

``run(lm, data=None, settings=None, run_folder=None)`` -> :class:`hopscope.results.Result`; ``ANALYSIS`` is
the pipeline analysis ``hopscope study`` runs; :class:`Mitigation` turns an edit into engine interventions.
Parts: :mod:`.queries` (prompts, halves, source prompts), :mod:`.collect` (one cached last-position pass),
:mod:`.linearize` (exact linearisations of the final norm and of MLPs), :mod:`.heads`,
:mod:`.mlp_decomposition`, :mod:`.suppression`, :mod:`.mitigation`, :mod:`.analysis` (the stages),
:mod:`.claims`, :mod:`.report`.
"""

from hopscope.methods.recall.analysis import ANALYSIS, run
from hopscope.methods.recall.mitigation import Mitigation
from hopscope.methods.recall.queries import RELATIONS, relation_queries
from hopscope.methods.recall.settings import Settings

__all__ = ["ANALYSIS", "Mitigation", "RELATIONS", "Settings", "relation_queries", "run"]
