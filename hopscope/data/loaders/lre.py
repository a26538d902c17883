"""Relation files in the format of "Linearity of Relation Decoding" (Hernandez et al. 2024).

A JSON object with ``name``, ``prompt_templates`` (strings with ``{}`` for the subject; optional
``prompt_templates_zs``), optional ``properties`` and ``samples`` (``{"subject", "object"}``).
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

from hopscope.data.aliases import normalize, unique
from hopscope.data.dataset import Dataset
from hopscope.data.records import RecordError, SingleHopQuery
from hopscope.data.templates import few_shot_prefix, fill


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", normalize(text)).strip("_") or "x"


def _template(t: Any, where: str) -> str:
    if not isinstance(t, str) or t.count("{}") != 1:
        raise RecordError(f"template {t!r} must be text with exactly one '{{}}'", field=where)
    return t.replace("{}", "{subject}")


def lre_queries(data: dict[str, Any], *, source: str = "", templates: str = "first", k_shot: int = 0,
                seed: int = 0, zero_shot_templates: bool = False) -> list[SingleHopQuery]:
    """Single-hop queries from one parsed relation object (see module docstring)."""
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        raise RecordError("is missing or empty", field="name")
    key = "prompt_templates_zs" if zero_shot_templates and data.get("prompt_templates_zs") else "prompt_templates"
    raw = data.get(key)
    if not isinstance(raw, list) or not raw:
        raise RecordError("must be a non-empty list of templates", field=key)
    tmpls = [_template(t, f"{key}[{i}]") for i, t in enumerate(raw)]
    if templates not in ("first", "all"):
        raise ValueError(f"templates must be 'first' or 'all', got {templates!r}")
    samples = data.get("samples")
    if not isinstance(samples, list):
        raise RecordError("must be a list of {subject, object}", field="samples")
    facts = []
    for i, s in enumerate(samples):
        if not isinstance(s, dict) or not str(s.get("subject", "")).strip() or not str(s.get("object", "")).strip():
            raise RecordError(f"sample {s!r} needs a non-empty subject and object", field=f"samples[{i}]")
        obj = s["object"]
        objects = obj if isinstance(obj, list) else [obj]
        facts.append((str(s["subject"]).strip(), [str(o).strip() for o in objects]))
    out = []
    for i, (subject, objects) in enumerate(facts):
        rng = random.Random(f"{seed}|{name}|{subject}")
        others = [f for f in facts if normalize(f[0]) != normalize(subject)
                  and normalize(f[1][0]) != normalize(objects[0])]
        demos = rng.sample(others, min(k_shot, len(others)))
        for t, tmpl in enumerate(tmpls[:1] if templates == "first" else tmpls):
            prefix = few_shot_prefix([(fill(tmpl, subject=s).text, o[0]) for s, o in demos])
            q = fill(tmpl, subject=subject).shifted(len(prefix))
            out.append(SingleHopQuery(
                qid=f"lre:{_slug(name)}:{i}:t{t}", prompt=prefix + q.text, answer=objects[0],
                aliases=unique(objects[1:], exclude=[objects[0]]), relation=name, subject=subject,
                subject_span=q.spans["subject"], provenance=f"lre: {source}".strip(),
                meta={"template": t, "k_shot": len(demos), "properties": data.get("properties", {})},
            ))
    return out


def load_lre_relation(path: str | Path, **kwargs: Any) -> Dataset:
    """Read one relation JSON file; errors name the file and the field."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise RecordError(f"not valid JSON ({e.msg}, line {e.lineno})", file=str(path)) from None
    if not isinstance(data, dict):
        raise RecordError("expected a JSON object with name, prompt_templates and samples", file=str(path))
    try:
        records = lre_queries(data, source=path.name, **kwargs)
    except RecordError as e:
        raise e.at(file=str(path)) from None
    return Dataset(records, name=data["name"], info={"source": str(path)})


def load_lre_folder(folder: str | Path, **kwargs: Any) -> Dataset:
    """Every ``*.json`` relation under ``folder`` (recursively), in sorted order."""
    ds = Dataset(name="lre")
    for p in sorted(Path(folder).rglob("*.json")):
        ds = ds + load_lre_relation(p, **kwargs)
    return ds
