"""ProofWriter questions for the probe, as Hou et al. (2023) build them.

Statements are the theory's sentences; a sentence is in the reasoning tree when the question's proof uses
it, at its depth in the proof tree (:func:`hopscope.data.loaders.proofwriter.statement_depths`: 0 for the
last rule applied, 1 for its premises, ...). The paper's subset: questions with one proof (no ``OR``), no
negation as failure, proof depth <= 1. Prompts are k-shot: ``shots`` solved questions of *other* theories,
then ``"{theory} {question}: True or False?"``; the model's answer compares " True" with " False".
The corruption (the paper's ``corrput_func``): one sentence the proof does not use is replaced by
``"That {sentence} is false."``.
"""

from __future__ import annotations

import hashlib
import random
import re
from pathlib import Path
from typing import Any, Iterable, Sequence

from hopscope.data.loaders.proofwriter import load_proofwriter, statement_depths
from hopscope.methods.probe.questions import ProbeQuestion

_SENTENCE = re.compile(r"[^.!?]+[.!?]")
ANSWERS = (" True", " False")


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


def question_text(theory: str, question: str) -> str:
    """The paper's query: ``"{theory} {question}: True or False?"``."""
    return f"{theory} {question}: True or False?"


def example_text(theory: str, question: str, answer: str) -> str:
    """One in-context example: the query followed by its answer (with a space, so the scored tokens
    " True"/" False" are the ones the examples show) and a newline."""
    return f"{question_text(theory, question)} {answer}\n"


def negated(sentence: str) -> str:
    """The paper's corruption of a statement: ``"That {sentence} is false."``."""
    core = sentence.strip()
    core = core[:-1] if core.endswith(".") else core
    return f"That {core} is false."


def usable(record: Any, max_depth: int | None = None) -> bool:
    """The paper's probing subset: one parsed proof without OR or NAF, depth <= ``max_depth``, using at
    least one theory sentence, and a True/False answer."""
    if len(record.proofs) != 1 or str(record.answer) not in ("True", "False"):
        return False
    if "OR" in str(record.meta.get("proof_string", "")) or "NAF" in str(record.meta.get("proof_string", "")):
        return False
    if _has_naf(record.proofs[0]):
        return False
    if max_depth is not None and record.depth > max_depth:
        return False
    texts = {record.theory[a:b] for a, b in sentence_spans(record.theory)}
    return any(t in texts for t in statement_depths(record.proofs[0]))


def _has_naf(node: dict[str, Any]) -> bool:
    return node.get("kind") == "naf" or any(_has_naf(c) for c in node.get("children", []))


def theory_group(theory: str) -> str:
    """The fold group of a question: its theory (questions of one theory share their statements)."""
    return "theory:" + hashlib.sha1(theory.encode("utf-8")).hexdigest()[:12]


def proofwriter_questions(records: Sequence[Any], *, shots: int = 4, max_depth: int | None = 1,
                          limit: int | None = None, seed: int = 0, shared_examples: bool = False,
                          examples: Sequence[Any] | None = None) -> list[ProbeQuestion]:
    """Probe questions from :class:`hopscope.data.records.ProofQuery` records.

    The usable records (see :func:`usable`) are ordered by a seeded shuffle and cut to ``limit``. Each
    question's ``shots`` examples are drawn (seeded by the question) from ``examples`` (default: every
    record with a True/False answer) of other theories, as the paper draws them per question.
    ``shared_examples``: one seeded set of examples (from distinct theories, which are then not probed)
    for every question, so the prompts share a prefix the engine runs once (several times faster on a CPU).
    Raises a ValueError when no record is usable.
    """
    records = list(records)
    pool = [r for r in (examples if examples is not None else records) if str(r.answer) in ("True", "False")]
    pool.sort(key=lambda r: r.qid)
    chosen = sorted((r for r in records if usable(r, max_depth)), key=lambda r: r.qid)
    shared = None
    if shared_examples and shots:
        shared = _distinct_theories(pool, shots, random.Random(f"{seed}:shared"))
        held = {theory_group(e.theory) for e in shared}
        chosen = [r for r in chosen if theory_group(r.theory) not in held]
    random.Random(seed).shuffle(chosen)
    if limit is not None:
        chosen = chosen[:limit]
    if not chosen:
        raise ValueError(f"no ProofWriter question is usable (one proof without OR or NAF, depth <= {max_depth}, "
                         f"a True/False answer) among {len(records)} records")
    return [_question(r, pool, shots, seed, shared) for r in chosen]


def _distinct_theories(pool: Sequence[Any], shots: int, rng: random.Random) -> list[Any]:
    order = list(pool)
    rng.shuffle(order)
    out, seen = [], set()
    for e in order:
        if theory_group(e.theory) not in seen:
            out.append(e)
            seen.add(theory_group(e.theory))
        if len(out) == shots:
            return out
    raise ValueError(f"{shots} shared examples need {shots} theories; the data has {len(seen)}")


def _question(r: Any, pool: Sequence[Any], shots: int, seed: int, shared: list[Any] | None) -> ProbeQuestion:
    group = theory_group(r.theory)
    rng = random.Random(f"{seed}:{r.qid}")
    others = [e for e in pool if theory_group(e.theory) != group]
    if shots and shared is None and len(others) < shots:
        raise ValueError(f"{shots}-shot prompts need {shots} examples from other theories; "
                         f"the data has {len(others)} for {r.qid}")
    demos = shared if shared is not None else (rng.sample(others, shots) if shots else [])
    prefix = "".join(example_text(e.theory, e.question, e.answer) for e in demos)
    prompt = prefix + question_text(r.theory, r.question)
    spans = sentence_spans(r.theory, len(prefix))
    tree = statement_depths(r.proofs[0])
    depth = tuple(tree.get(prompt[a:b], -1) for a, b in spans)
    q = len(prefix) + len(r.theory) + 1
    noise = [j for j, d in enumerate(depth) if d < 0]
    corrupted, which = "", -1
    if noise:
        which = rng.choice(noise)
        a, b = spans[which]
        corrupted = prompt[:a] + negated(prompt[a:b]) + prompt[b:]
    good, bad = (ANSWERS if r.answer == "True" else ANSWERS[::-1])
    return ProbeQuestion(qid=r.qid, group=group, prompt=prompt, statements=tuple(spans), depth=depth,
                         query=(q, len(prompt)), answer=good, alternative=bad, corrupted=corrupted,
                         corrupted_statement=which)


def load_questions(source: Any) -> list[Any]:
    """ProofQuery records from a ProofWriter jsonl path, a Dataset or an iterable of records."""
    if isinstance(source, (str, Path)):
        return list(load_proofwriter(source))
    return list(source) if isinstance(source, Iterable) else [source]
