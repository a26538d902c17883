"""Typed query records.

Every record has a ``qid``, a ``prompt`` (exactly what is fed to the model, few-shot prefix
included), an answer with aliases, and provenance. Spans are *character* spans ``(start, stop)``
into a prompt, so they do not depend on a tokenizer; :mod:`hopscope.data.spans` turns them into
token spans for a given model.

Records validate themselves on construction; :meth:`Record.from_row` also coerces values read
from JSONL/CSV/Parquet (JSON strings, numpy arrays, list strings) and raises :class:`RecordError`
naming the file, the row and the field.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar

from hopscope.data.aliases import parse_list_string, unique

Span = tuple[int, int]


class RecordError(ValueError):
    """A record that breaks the schema; says which file, row (1-based) and field."""

    def __init__(self, message: str, *, field: str | None = None, row: int | None = None,
                 file: str | None = None) -> None:
        self.message, self.field, self.row, self.file = message, field, row, file
        super().__init__(self._render())

    def _render(self) -> str:
        where = []
        if self.file is not None:
            where.append(str(self.file))
        if self.row is not None:
            where.append(f"row {self.row}")
        if self.field is not None:
            where.append(f"field {self.field!r}")
        return (", ".join(where) + ": " if where else "") + self.message

    def at(self, *, file: str | None = None, row: int | None = None) -> RecordError:
        """The same error with the file and row filled in."""
        return RecordError(self.message, field=self.field, row=self.row if row is None else row,
                           file=self.file if file is None else file)


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _coerce(value: Any, tp: Any, name: str) -> Any:
    """Convert ``value`` read from a file to type ``tp`` or raise :class:`RecordError`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if _is_missing(value):
            if type(None) in args:
                return None
            raise RecordError("is missing", field=name)
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, name)
    if _is_missing(value):
        raise RecordError("is missing", field=name)
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()  # numpy arrays / scalars from Parquet
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise RecordError(f"expected text, got {type(value).__name__} {value!r}", field=name)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        raise RecordError(f"expected true/false, got {value!r}", field=name)
    if tp is int:
        if isinstance(value, bool):
            raise RecordError(f"expected an integer, got {value!r}", field=name)
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                number = float(value.strip())
            except ValueError:
                number = float("nan")
            if number.is_integer():
                return int(number)
        raise RecordError(f"expected an integer, got {value!r}", field=name)
    if origin is list:
        if isinstance(value, str):
            text = value.strip()
            if args and args[0] is str:
                try:
                    value = parse_list_string(text)
                except ValueError as e:
                    raise RecordError(str(e), field=name) from None
            else:
                value = _json(text, name)
        if not isinstance(value, (list, tuple)):
            raise RecordError(f"expected a list, got {type(value).__name__} {value!r}", field=name)
        return [_coerce(v, args[0], f"{name}[{i}]") for i, v in enumerate(value)] if args else list(value)
    if origin is tuple:  # spans
        if isinstance(value, str):
            value = _json(value, name)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise RecordError(f"expected {len(args)} numbers [start, stop], got {value!r}", field=name)
        return tuple(_coerce(v, a, name) for v, a in zip(value, args))
    if origin is dict or tp is dict:
        if isinstance(value, str):
            value = _json(value, name) if value.strip() else {}
        if not isinstance(value, dict):
            raise RecordError(f"expected a mapping, got {type(value).__name__} {value!r}", field=name)
        return dict(value)
    raise TypeError(f"unsupported field type {tp!r} for {name}")


def _json(text: str, name: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise RecordError(f"not valid JSON ({e.msg}): {text[:60]!r}", field=name) from None


@dataclass
class Record:
    """Base class: validation, (de)serialisation and the common answer interface."""

    kind: ClassVar[str] = "record"

    def __post_init__(self) -> None:
        self.validate()

    # -- schema ---------------------------------------------------------------------------
    @classmethod
    def _hints(cls) -> dict[str, Any]:
        return typing.get_type_hints(cls)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Record:
        """Build a record from a loaded row (extra keys ignored); raises :class:`RecordError`."""
        hints = cls._hints()
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = row.get(f.name)
            has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
            if _is_missing(raw) and has_default and f.default is not None:
                continue  # absent optional field: keep the dataclass default
            if f.name not in row and not has_default:
                raise RecordError("is missing (required)", field=f.name)
            values[f.name] = _coerce(raw, hints[f.name], f.name)
        return cls(**values)

    def to_row(self) -> dict[str, Any]:
        """JSON-compatible dict with a ``kind`` key (spans become lists)."""
        row: dict[str, Any] = {"kind": self.kind}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            row[f.name] = list(v) if isinstance(v, tuple) else v
        return row

    def validate(self) -> None:
        """Check types and cross-field invariants; raise :class:`RecordError` on the first problem."""
        hints = self._hints()
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            coerced = _coerce(v, hints[f.name], f.name)
            if coerced != v:
                setattr(self, f.name, coerced)
        if not self.qid.strip():
            raise RecordError("is empty", field="qid")
        if not self.prompt.strip():
            raise RecordError("is empty", field="prompt")
        if not self.answer.strip():  # type: ignore[attr-defined]
            raise RecordError("is empty", field=self._answer_field)

    _answer_field: ClassVar[str] = "answer"

    # -- common interface (subclasses provide ``answer`` and ``aliases``) --------------------
    @property
    def all_answers(self) -> list[str]:
        """The answer followed by its aliases, deduplicated."""
        return unique([self.answer, *self.aliases])  # type: ignore[attr-defined]


def _check_span(span: Span | None, text: str, name: str, expect: str | None = None,
                text_field: str = "prompt") -> None:
    if span is None:
        return
    start, stop = span
    if not 0 <= start < stop <= len(text):
        raise RecordError(f"span ({start}, {stop}) lies outside {text_field} of length {len(text)}",
                          field=name)
    if expect is not None and text[start:stop].lower() != expect.lower():
        raise RecordError(f"span ({start}, {stop}) covers {text[start:stop]!r}, expected {expect!r}",
                          field=name)


@dataclass
class SingleHopQuery(Record):
    """One fact: ``prompt`` (ends where the answer should follow) -> ``answer``."""

    qid: str
    prompt: str
    answer: str
    relation: str
    subject: str
    subject_span: Span | None = None
    aliases: list[str] = field(default_factory=list)
    provenance: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    kind: ClassVar[str] = "single_hop"

    def validate(self) -> None:
        super().validate()
        _check_span(self.subject_span, self.prompt, "subject_span", self.subject)


@dataclass
class TwoHopQuery(Record):
    """A composition r2(r1(e1)) = e3 through the bridge entity e2.

    ``prompt`` is the composed prompt; ``first_hop_prompt`` asks r1(e1) (answer e2);
    ``second_hop_prompt`` asks r2(e2) with the bridge named (answer e3). The shortcut prompts ask
    for e3 while skipping a hop: ``entity_shortcut_prompt`` applies r2 to e1 directly, and
    ``relation_shortcut_prompt`` is the composition without e1 (answerable only from priors).
    ``first_hop_span`` is the character span of the first-hop phrase in ``prompt``; ``e1_span``
    the span of e1 in ``prompt``.
    """

    qid: str
    prompt: str
    first_hop_prompt: str
    second_hop_prompt: str
    e1: str
    e2: str
    e3: str
    r1: str
    r2: str
    e2_aliases: list[str] = field(default_factory=list)
    e3_aliases: list[str] = field(default_factory=list)
    first_hop_span: Span | None = None
    e1_span: Span | None = None
    entity_shortcut_prompt: str | None = None
    relation_shortcut_prompt: str | None = None
    composition: str = ""
    provenance: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    kind: ClassVar[str] = "two_hop"
    _answer_field: ClassVar[str] = "e3"

    @property
    def answer(self) -> str:  # type: ignore[override]
        return self.e3

    @property
    def aliases(self) -> list[str]:
        return self.e3_aliases

    @property
    def relation(self) -> str:
        return self.composition or f"{self.r1}->{self.r2}"

    @property
    def bridge_answers(self) -> list[str]:
        """e2 followed by its aliases, deduplicated."""
        return unique([self.e2, *self.e2_aliases])

    def validate(self) -> None:
        super().validate()
        for name in ("first_hop_prompt", "second_hop_prompt", "e2", "r1", "r2"):
            if not getattr(self, name).strip():
                raise RecordError("is empty", field=name)
        _check_span(self.first_hop_span, self.prompt, "first_hop_span")
        _check_span(self.e1_span, self.prompt, "e1_span", self.e1 or None)


@dataclass
class ChoiceQuery(Record):
    """A multiple-choice question (e.g. ARC); ``answer`` is the text of the correct choice."""

    qid: str
    prompt: str
    question: str
    choices: list[str]
    labels: list[str]
    answer_key: str
    answer: str
    aliases: list[str] = field(default_factory=list)
    provenance: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    kind: ClassVar[str] = "choice"

    def validate(self) -> None:
        super().validate()
        if len(self.choices) != len(self.labels):
            raise RecordError(f"{len(self.labels)} labels for {len(self.choices)} choices", field="labels")
        if self.answer_key not in self.labels:
            raise RecordError(f"{self.answer_key!r} is not one of the labels {self.labels}",
                              field="answer_key")


@dataclass
class ProofQuery(Record):
    """A deductive question over a theory (e.g. ProofWriter) with its proofs as statement trees.

    ``proofs`` holds :meth:`hopscope.data.loaders.proofwriter.ProofNode.to_dict` trees.
    """

    qid: str
    prompt: str
    theory: str
    question: str
    answer: str
    depth: int
    proofs: list[dict[str, Any]] = field(default_factory=list)
    aliases: list[str] = field(default_factory=list)
    provenance: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    kind: ClassVar[str] = "proof"

    def validate(self) -> None:
        super().validate()
        if self.depth < 0:
            raise RecordError(f"must be >= 0, got {self.depth}", field="depth")


RECORD_TYPES: dict[str, type[Record]] = {
    cls.kind: cls for cls in (SingleHopQuery, TwoHopQuery, ChoiceQuery, ProofQuery)
}


def record_from_row(row: dict[str, Any], *, default_kind: str | None = None) -> Record:
    """Dispatch on the row's ``kind`` (or ``default_kind``) and build the record."""
    kind = row.get("kind")
    if _is_missing(kind) or kind == "":
        kind = default_kind
    if kind not in RECORD_TYPES:
        raise RecordError(f"unknown kind {kind!r}; expected one of {sorted(RECORD_TYPES)}", field="kind")
    return RECORD_TYPES[kind].from_row(row)
