"""Factual-recall mechanisms (Lv et al. 2024, arXiv 2403.19521): subject-moving heads, MLPs that amplify
or erase head outputs, final-layer anti-overconfidence and its mitigation.

Entry point: :func:`recall_study`. Parts: :mod:`.collect` (one cached pass kept at the last position),
:mod:`.heads`, :mod:`.mlp_decomposition`, :mod:`.suppression`, :mod:`.linearize` (exact linearisations of
the final norm and of MLPs), :mod:`.queries` (token spans; a local world-facts relation builder).
"""

from hopscope.methods.recall.collect import LastPosition, collect, logit_diff
from hopscope.methods.recall.heads import candidate_heads, head_ablation, head_frame, head_heatmaps, head_summary
from hopscope.methods.recall.linearize import MLPSpec, NormSpec, logit_diff_directions, mlp_spec, norm_spec
from hopscope.methods.recall.mlp_decomposition import decompose_mlp, decomposition_summary, mlp_layers
from hopscope.methods.recall.queries import RELATIONS, RecallItem, prepare, relation_queries
from hopscope.methods.recall.study import RecallResult, recall_study
from hopscope.methods.recall.suppression import (
    EvalSet, LastLayerState, Mitigation, evaluate_mitigations, final_layer_effects, mitigation_summary,
    propose_mitigations, suppression_share,
)

__all__ = [
    "EvalSet", "LastLayerState", "LastPosition", "MLPSpec", "Mitigation", "NormSpec", "RELATIONS", "RecallItem",
    "RecallResult", "candidate_heads", "collect", "decomposition_summary", "evaluate_mitigations",
    "final_layer_effects", "head_ablation", "head_frame", "head_heatmaps", "head_summary", "logit_diff",
    "decompose_mlp", "logit_diff_directions", "mitigation_summary", "mlp_layers", "mlp_spec", "norm_spec",
    "prepare", "propose_mitigations", "recall_study", "relation_queries", "suppression_share",
]
