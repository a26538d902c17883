"""Probe items from ProofWriter questions: theory sentences are the statements, proof statements are useful."""

from __future__ import annotations

import re
from typing import Any, Iterable

from hopscope.methods.probe.items import ProbeItems

_SENTENCE = re.compile(r"[^.!?]+[.!?]")


def sentence_spans(text: str, start: int = 0) -> list[tuple[int, int]]:
    """Character spans (offset by ``start``) of the sentences of ``text``, without surrounding spaces."""
    spans = []
    for m in _SENTENCE.finditer(text):
        a, b = m.start(), m.end()
        while a < b and text[a].isspace():
            a += 1
        if a < b:
            spans.append((start + a, start + b))
    return spans


def proof_steps(tree: dict[str, Any]) -> dict[str, int]:
    """Statement text -> step at which the proof uses it: a rule applied at height h (counting rule
    applications from the bottom) is step h, the facts it consumes are used at the same step; a
    proof that is a single fact uses it at step 1. A statement used twice keeps its earliest step."""
    steps: dict[str, int] = {}

    def note(text: str, step: int) -> None:
        text = text.strip()
        if text:
            steps[text] = min(step, steps.get(text, step))

    def height(node: dict[str, Any]) -> int:
        below = max((height(c) for c in node.get("children", [])), default=0)
        return below + (1 if node["kind"] == "rule" else 0)

    def walk(node: dict[str, Any], parent_step: int) -> None:
        if node["kind"] == "rule":
            step = height(node)
            note(node.get("rule_text", ""), step)
            for child in node.get("children", []):
                walk(child, step)
        elif node["kind"] == "fact":
            note(node.get("text", ""), parent_step)
        else:  # "and" groups, intermediates and NAF carry no theory sentence of their own
            for child in node.get("children", []):
                walk(child, parent_step)

    walk(tree, 1)
    return steps


def proofwriter_items(records: Iterable[Any], *, require_proof: bool = True) -> ProbeItems:
    """Probe items from :class:`hopscope.data.records.ProofQuery` records (their first proof).

    Statements are the theory's sentences; a sentence is useful when the proof uses it (fact or rule
    text) and its step is :func:`proof_steps`'s. The question's characters are the query span. Records
    without a proof (or whose proof names no theory sentence) are skipped when ``require_proof``.
    """
    prompts, statements, useful, step, targets, queries = [], [], [], [], [], []
    for r in records:
        start = r.prompt.find(r.theory)
        if start < 0:
            raise ValueError(f"record {r.qid}: the prompt does not contain the theory text")
        spans = sentence_spans(r.theory, start)
        steps = proof_steps(r.proofs[0]) if r.proofs else {}
        labels = [steps.get(r.prompt[a:b].strip(), 0) for a, b in spans]
        if require_proof and not any(labels):
            continue
        q = r.prompt.rfind(r.question)
        if q < 0:
            raise ValueError(f"record {r.qid}: the prompt does not contain the question text")
        prompts.append(r.prompt)
        statements.append(spans)
        useful.append([s > 0 for s in labels])
        step.append(labels)
        targets.append(f" {r.answer}")
        queries.append((q, q + len(r.question)))
    return ProbeItems(prompts, statements, useful, step, targets=targets, query_chars=queries)
