"""MechanisticProbe (Hou et al., EMNLP 2023): probe attention for the reasoning tree a model follows.

Features are the attention a statement receives from the query (the last token), per layer; two kNN probes
recover which statements are useful and at which step of the tree they are used; scores are normalised
against the same architecture with random weights. Causal checks: head entropy, head masking, corruption.
"""

from hopscope.methods.probe.attention import AttentionRows, query_attention
from hopscope.methods.probe.classifier import ProbeFit, knn_probe, probing_score
from hopscope.methods.probe.core import (
    ModelFeatures, ProbeOutcome, ProbeSettings, extract, fit_probes, labels, probe_model, random_init_like,
)
from hopscope.methods.probe.corruption import bin_by_probe_score, corruption_table
from hopscope.methods.probe.entropy import attention_profile, head_entropy, statement_attention
from hopscope.methods.probe.features import StatementFeatures, statement_features
from hopscope.methods.probe.items import ProbeItems, kth_items
from hopscope.methods.probe.masking import accuracy, heads_by, masking_curve, predictions
from hopscope.methods.probe.spans import token_spans
from hopscope.methods.probe.proofwriter import proof_steps, proofwriter_items, sentence_spans
from hopscope.methods.probe.study import (
    StudyConfig, quick_train, run_probe_study, run_text_probe_study, write_probe_study,
)

__all__ = [
    "AttentionRows", "ModelFeatures", "ProbeFit", "ProbeItems", "ProbeOutcome", "ProbeSettings",
    "StatementFeatures", "StudyConfig", "accuracy", "attention_profile", "bin_by_probe_score",
    "corruption_table", "extract", "fit_probes", "head_entropy", "heads_by", "knn_probe", "kth_items", "labels",
    "masking_curve", "predictions", "probe_model", "probing_score", "proof_steps", "proofwriter_items",
    "query_attention", "quick_train", "run_text_probe_study", "sentence_spans",
    "random_init_like", "run_probe_study", "statement_attention", "statement_features", "token_spans",
    "write_probe_study",
]
