"""Loaders for the seed papers' file formats; each returns a :class:`~hopscope.data.Dataset`."""

from hopscope.data.loaders.arc import load_arc
from hopscope.data.loaders.fanoutqa import load_fanoutqa
from hopscope.data.loaders.hopping_too_late import load_hopping_too_late
from hopscope.data.loaders.lre import load_lre_folder, load_lre_relation, lre_queries
from hopscope.data.loaders.memory_injection import load_memory_injection_csv, load_memory_injections
from hopscope.data.loaders.proofwriter import ProofNode, ProofParseError, load_proofwriter, parse_proofs

__all__ = [
    "ProofNode", "ProofParseError", "load_arc", "load_fanoutqa", "load_hopping_too_late", "load_lre_folder",
    "load_lre_relation", "load_memory_injection_csv", "load_memory_injections", "load_proofwriter",
    "lre_queries", "parse_proofs",
]
