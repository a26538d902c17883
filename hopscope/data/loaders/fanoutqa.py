"""Two-hop chains from the FanOutQA dev set (Zhu et al. 2024; data CC BY-SA 4.0).

The JSON ships in the ``fanoutqa`` package's ``data`` folder; the package is located with
``find_spec`` and not imported. A chain is a sub-question B that depends on exactly one
sub-question A, where A and B have single (non-list) answers and B's question names A's answer.
A's answer is the bridge e2 and B's the answer e3. When A reads "Who/What is/was X?", the composed
question replaces the bridge in B by X ("What city was the president of China born in?"); other
chains cannot be composed and are skipped.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hopscope.data.dataset import Dataset
from hopscope.data.loaders._common import package_folder
from hopscope.data.records import RecordError, TwoHopQuery
from hopscope.data.spans import SpanNotFound, char_span

_DESCRIBE = re.compile(r"^\s*(?:who|what)\s+(?:is|was|are|were)\s+(?P<phrase>.+?)\s*\?*\s*$", re.IGNORECASE)


def fanoutqa_dev_path() -> Path:
    return package_folder("fanoutqa", "data", "fanout-final-dev.json")


def _walk(subs: list[dict]) -> Iterator[dict]:
    for s in subs:
        yield s
        yield from _walk(s.get("decomposition") or [])


def _scalar(value: Any) -> str | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (str, int, float)):
        return str(value).strip() or None
    return None


def _qa(question: str) -> str:
    return f"Question: {question.strip()}\nAnswer:"


def chain_query(top: dict, a: dict, b: dict) -> TwoHopQuery | None:
    """The two-hop record for sub-questions a -> b, or None if they do not compose."""
    e2, e3 = _scalar(a.get("answer")), _scalar(b.get("answer"))
    m = _DESCRIBE.match(a.get("question", ""))
    if e2 is None or e3 is None or m is None:
        return None
    question_b = b.get("question", "")
    try:
        bridge = char_span(question_b, e2)
    except SpanNotFound:
        return None
    phrase = re.sub(r"^(?:the )?(?:title|name) of ", "", m.group("phrase").rstrip("?. "), flags=re.IGNORECASE)
    composed_q = question_b[: bridge[0]] + phrase + question_b[bridge[1]:]
    prompt = _qa(composed_q)
    offset = len("Question: ")
    start = offset + bridge[0]
    return TwoHopQuery(
        qid=f"fanoutqa:{top['id']}:{a['id']}:{b['id']}", prompt=prompt,
        first_hop_prompt=_qa(a["question"]), second_hop_prompt=_qa(question_b),
        e1="", e2=e2, e3=e3, r1="fanoutqa_subquestion", r2="fanoutqa_subquestion",
        first_hop_span=(start, start + len(phrase)), composition="fanoutqa",
        provenance="fanoutqa dev (CC BY-SA 4.0)",
        meta={"question": top.get("question", ""), "first_question": a["question"],
              "second_question": question_b, "evidence": [a.get("evidence", {}).get("title", ""),
                                                          b.get("evidence", {}).get("title", "")]},
    )


def load_fanoutqa(path: str | Path | None = None) -> Dataset:
    """Two-hop records from the FanOutQA dev JSON (default: the copy inside the package)."""
    path = Path(path) if path is not None else fanoutqa_dev_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise RecordError(f"not valid JSON ({e.msg})", file=str(path)) from None
    if not isinstance(data, list):
        raise RecordError("expected a list of questions", file=str(path))
    records = []
    for i, top in enumerate(data, 1):
        try:
            if "id" not in top or "decomposition" not in top:
                raise RecordError("needs 'id' and 'decomposition'", field="decomposition")
            subs = list(_walk(top["decomposition"]))
            by_id = {s.get("id"): s for s in subs}
            for b in subs:
                deps = b.get("depends_on") or []
                if len(deps) == 1 and deps[0] in by_id:
                    q = chain_query(top, by_id[deps[0]], b)
                    if q is not None:
                        records.append(q)
        except RecordError as e:
            raise e.at(file=str(path), row=i) from None
    return Dataset(records, name="fanoutqa_dev_two_hop",
                   info={"source": str(path), "licence": "CC BY-SA 4.0"})
