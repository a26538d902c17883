"""Typed query records, built-in world-facts datasets, loaders for the seed papers' formats,
token spans and answer-token hygiene. (The knowledge filter, which runs a model, is
:mod:`hopscope.methods.hopping.knowledge`.)
"""

from hopscope.data.aliases import normalize, parse_list_string
from hopscope.data.builders import build_single_hop, build_two_hop, build_world_facts, relation_facts
from hopscope.data.dataset import Dataset
from hopscope.data.hygiene import answer_token_table, restrict_unambiguous
from hopscope.data.records import ChoiceQuery, ProofQuery, RecordError, SingleHopQuery, TwoHopQuery
from hopscope.data.spans import SpanNotFound, char_span, find_token_span, model_token_span, token_span
from hopscope.data.templates import COMPOSITIONS, RELATIONS, fill
from hopscope.data.world_facts import ATTRIBUTION

__all__ = [
    "ATTRIBUTION", "COMPOSITIONS", "ChoiceQuery", "Dataset", "ProofQuery", "RELATIONS", "RecordError",
    "SingleHopQuery", "SpanNotFound", "TwoHopQuery", "answer_token_table", "build_single_hop",
    "build_two_hop", "build_world_facts", "char_span", "fill", "find_token_span",
    "model_token_span", "normalize", "parse_list_string", "relation_facts",
    "restrict_unambiguous", "token_span",
]
