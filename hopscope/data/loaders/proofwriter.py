"""ProofWriter (Tafjord et al. 2021) jsonl files, with proof strings parsed into statement trees.

Each line holds a ``theory`` (text), ``triples`` and ``rules`` (id -> {"text", ...}) and
``questions`` (id -> {"question", "answer", "QDep", "proofs", optional "proofsWithIntermediates"}).
A proof string such as ``"[((triple1 triple2) -> (rule1 % int1))]"`` reads: from triple1 and
triple2, rule1 concludes int1. Alternatives are separated by ``OR``; ``NAF`` marks negation as
failure. :func:`parse_proofs` turns it into :class:`ProofNode` trees whose nodes carry the
statement text.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hopscope.data.dataset import Dataset
from hopscope.data.records import ProofQuery, RecordError

_TOKEN = re.compile(r"\s*(->|\(|\)|\[|\]|%|[A-Za-z_][\w]*|\S)")


class ProofParseError(ValueError):
    """A proof string that does not follow the ProofWriter grammar."""


@dataclass
class ProofNode:
    """One statement in a proof. ``kind``: ``fact`` (a theory triple), ``rule`` (a rule applied to
    ``children``, concluding ``id`` when the data names the intermediate), ``intermediate`` (a
    reference to a derived statement), ``naf`` (negation as failure)."""

    kind: str
    id: str = ""
    rule: str = ""
    text: str = ""
    rule_text: str = ""
    children: list[ProofNode] = field(default_factory=list)

    @property
    def depth(self) -> int:
        """Number of rule applications on the longest path."""
        below = max((c.depth for c in self.children), default=0)
        return below + (1 if self.kind == "rule" else 0)

    def leaves(self) -> list[ProofNode]:
        return [self] if not self.children else [leaf for c in self.children for leaf in c.leaves()]

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind, "id": self.id}
        for k in ("rule", "text", "rule_text"):
            if getattr(self, k):
                d[k] = getattr(self, k)
        if self.children:
            d["children"] = [c.to_dict() for c in self.children]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ProofNode:
        return cls(kind=d["kind"], id=d.get("id", ""), rule=d.get("rule", ""), text=d.get("text", ""),
                   rule_text=d.get("rule_text", ""),
                   children=[cls.from_dict(c) for c in d.get("children", [])])


class _Parser:
    def __init__(self, text: str, statements: dict[str, str], rules: dict[str, str]) -> None:
        self.text, self.statements, self.rules = text, statements, rules
        self.tokens = _TOKEN.findall(text)
        if "".join(self.tokens) != re.sub(r"\s+", "", text):
            raise ProofParseError(f"unexpected characters in proof {text!r}")
        self.i = 0

    def peek(self) -> str | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self, expect: str | None = None) -> str:
        tok = self.peek()
        if tok is None or (expect is not None and tok != expect):
            raise ProofParseError(f"expected {expect or 'a token'!r} at token {self.i} of {self.text!r}, got {tok!r}")
        self.i += 1
        return tok

    def leaf(self, ident: str) -> ProofNode:
        if ident == "NAF":
            return ProofNode("naf", id="NAF")
        kind = "intermediate" if ident.startswith("int") else "fact"
        return ProofNode(kind, id=ident, text=self.statements.get(ident, ""))

    def item(self) -> ProofNode:
        tok = self.take()
        if tok == "(":
            return self.group()
        if re.fullmatch(r"[A-Za-z_]\w*", tok):
            return self.leaf(tok)
        raise ProofParseError(f"unexpected {tok!r} in proof {self.text!r}")

    def conclusion(self) -> tuple[str, str]:
        wrapped = self.peek() == "("
        if wrapped:
            self.take("(")
        rule = self.take()
        produced = ""
        if self.peek() == "%":
            self.take("%")
            produced = self.take()
        if wrapped:
            self.take(")")
        return rule, produced

    def group(self) -> ProofNode:
        """After '(' : items, optionally '->' conclusion, then ')'."""
        items: list[ProofNode] = []
        while self.peek() not in (")", "->", None):
            items.append(self.item())
        if self.peek() == "->":
            self.take("->")
            rule, produced = self.conclusion()
            self.take(")")
            premises: list[ProofNode] = []
            for it in items:  # "(a b) -> r": the inner group is the premise list
                premises += it.children if it.kind == "and" else [it]
            return ProofNode("rule", id=produced, rule=rule, text=self.statements.get(produced, ""),
                             rule_text=self.rules.get(rule, ""), children=premises)
        self.take(")")
        if len(items) == 1:
            return items[0]
        return ProofNode("and", children=items)

    def alternatives(self) -> list[ProofNode]:
        closing = None
        if self.peek() == "[":
            self.take("[")
            closing = "]"
        out: list[ProofNode] = []
        while self.peek() not in (closing, None):
            if self.peek() == "OR":
                self.take("OR")
                continue
            out.append(self.item())
        if closing:
            self.take(closing)
        if self.peek() is not None:
            raise ProofParseError(f"trailing {self.peek()!r} in proof {self.text!r}")
        return out


def parse_proofs(text: str, statements: dict[str, str] | None = None,
                 rules: dict[str, str] | None = None) -> list[ProofNode]:
    """Parse a ProofWriter proof string (one or more alternatives) into trees.

    ``statements`` maps triple/intermediate ids to text and ``rules`` rule ids to text; they only
    fill in the ``text`` fields. Raises :class:`ProofParseError` on malformed input.
    """
    return _Parser(text, statements or {}, rules or {}).alternatives()


def statement_depths(tree: ProofNode | dict[str, Any]) -> dict[str, int]:
    """Theory statement text -> its depth in the proof tree: the number of edges on the longest path from
    the statement to the root (the last rule applied, or the fact itself for a proof of depth 0).

    This is how Hou et al. (2023) label ProofWriter statements for MechanisticProbe (the PRover proof
    graph, with each node's longest path to the root): in ``((triple1) -> rule1)`` the rule is at depth 0
    and the fact at depth 1. Facts are labelled with their text, rules with their rule text; ``and``
    groups pass their depth on, intermediates and NAF carry no theory statement.
    """
    node = tree.to_dict() if isinstance(tree, ProofNode) else tree
    depths: dict[str, int] = {}

    def note(text: str, depth: int) -> None:
        text = text.strip()
        if text:
            depths[text] = max(depth, depths.get(text, depth))

    def walk(n: dict[str, Any], depth: int) -> None:
        kind = n.get("kind")
        if kind == "rule":
            note(n.get("rule_text", ""), depth)
            for child in n.get("children", []):
                walk(child, depth + 1)
        elif kind == "fact":
            note(n.get("text", ""), depth)
        elif kind == "and":
            for child in n.get("children", []):
                walk(child, depth)

    walk(node, 0)
    return depths


def _texts(d: Any, field_name: str) -> dict[str, str]:
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise RecordError("expected an object of id -> {text}", field=field_name)
    return {k: (v.get("text", "") if isinstance(v, dict) else str(v)) for k, v in d.items()}


def _answer(value: Any) -> str:
    if isinstance(value, bool):
        return "True" if value else "False"
    return str(value)


def proofwriter_queries(item: dict[str, Any], *, source: str = "") -> list[ProofQuery]:
    """One :class:`ProofQuery` per question of a ProofWriter theory object."""
    for name in ("id", "theory", "questions"):
        if name not in item:
            raise RecordError("is missing", field=name)
    triples, rules = _texts(item.get("triples"), "triples"), _texts(item.get("rules"), "rules")
    questions = item["questions"]
    if isinstance(questions, list):  # some releases store a list with an "id" per question
        questions = {q.get("id", str(i)): q for i, q in enumerate(questions)}
    out = []
    for qid, q in questions.items():
        where = f"questions.{qid}"
        if "question" not in q or "answer" not in q:
            raise RecordError("needs 'question' and 'answer'", field=where)
        trees, error = [], ""
        variants = q.get("proofsWithIntermediates") or []
        try:
            if variants:
                for v in variants:
                    statements = {**triples, **_texts(v.get("intermediates"), f"{where}.intermediates")}
                    trees += parse_proofs(v["representation"], statements, rules)
            elif q.get("proofs"):
                trees = parse_proofs(q["proofs"], triples, rules)
        except ProofParseError as e:
            error = str(e)
        depth = q.get("QDep", q.get("depth", 0))
        try:
            depth = int(depth)
        except (TypeError, ValueError):
            raise RecordError(f"expected an integer depth, got {depth!r}", field=f"{where}.QDep") from None
        question, theory = str(q["question"]), str(item["theory"])
        out.append(ProofQuery(
            qid=f"proofwriter:{item['id']}:{qid}", theory=theory, question=question,
            prompt=f"{theory}\nQuestion: True or false: {question}\nAnswer:", answer=_answer(q["answer"]),
            depth=depth, proofs=[t.to_dict() for t in trees], provenance=f"proofwriter: {source}".strip(),
            meta={"proof_string": q.get("proofs", ""), "strategy": q.get("strategy", ""),
                  **({"proof_parse_error": error} if error else {})},
        ))
    return out


def load_proofwriter(path: str | Path, *, max_depth: int | None = None) -> Dataset:
    """Read a ProofWriter jsonl file; errors name the file, line and field."""
    path = Path(path)
    records: list[ProofQuery] = []
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                if not isinstance(item, dict):
                    raise RecordError("expected a JSON object per line")
                records += proofwriter_queries(item, source=path.name)
            except json.JSONDecodeError as e:
                raise RecordError(f"not valid JSON ({e.msg})", file=str(path), row=line_no) from None
            except RecordError as e:
                raise e.at(file=str(path), row=line_no) from None
    if max_depth is not None:
        records = [r for r in records if r.depth <= max_depth]
    return Dataset(records, name=path.stem, info={"source": str(path)})
