"""Patchscopes (Ghandeharioun et al. 2024) as Biran et al. 2024 use them: which entity a hidden state names.

The hidden state ``h_s`` (``resid_post`` of block ``s``) at a source position of the query prompt (``e1``:
e1's last token t1; ``last``: the last token t2) replaces the output of block ``t`` at the placeholder ``x``
(the last token) of a few-shot identity target prompt, for every (s, t) of the grid; the model greedy-decodes
and the text is labelled by the run's :class:`~hopscope.engine.scoring.MatchRule` with the paper's precedence
e1 > e2 > e3 (``other`` when none matches). Per query and source layer, the first target layer that decodes
e2 (or e3) is where the entity is decodable; the first source layer that decodes it at all is the paper's
resolution layer.

Targets: ``description`` (the paper's: ``"Syria: Syria is a country in the Middle East, ..., x"``: the model
names the entity and describes it, so the rule can detect the entity) and ``repeat`` (``"Syria: Syria, ...,
x"``, from the paper's code). All rows of a query share the target prompt: its prefix runs once, a row patched
at block ``t`` joins there, and a row stops once it names e1 (its label is then final).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pandas as pd

from hopscope.engine import MatchRule, Site, generate, replace, run_with_cache
from hopscope.methods.hopping import queries as Q

if TYPE_CHECKING:
    from hopscope.models.loaded import LoadedModel

TARGET_PROMPTS = {
    "description": ("Syria: Syria is a country in the Middle East, Leonardo DiCaprio: Leonardo DiCaprio is an "
                    "American actor, Samsung: Samsung is a South Korean multinational corporation, x"),
    "repeat": "Syria: Syria, Leonardo DiCaprio: Leonardo DiCaprio, Samsung: Samsung, x",
}
SOURCES = ("e1", "last")
LABELS = ("e1", "e2", "e3")
COLUMNS = ("qid", "target", "source", "s", "t", "label", "text")


def entity_label(text: str, entities: dict[str, Sequence[str]], rule: MatchRule) -> str:
    """The first of e1, e2, e3 (the paper's precedence) whose name or alias the text contains, else ``other``."""
    for label in LABELS:
        if rule.matches(text, list(entities[label])):
            return label
    return "other"


def patchscope_rows(lm: "LoadedModel", q: Any, acts: Any, layers: Sequence[int], *,
                    target_layers: Sequence[int] | None = None, sources: Sequence[str] = SOURCES
                    ) -> tuple[list[dict[str, Any]], list[list[Any]]]:
    """One row per (source, s, t) of one query: ``(specs, interventions)`` for the target prompt.

    ``acts``: the query prompt's clean ``resid_post`` (``run_with_cache``); ``layers``: the source layers, and the
    target layers unless ``target_layers`` is given.
    """
    t_layers = list(layers if target_layers is None else target_layers)
    specs, rows = [], []
    for source in sources:
        pos = Q.position(lm, q, source)
        for s in layers:
            h = acts["resid_post", s][0, pos].clone()
            for t in t_layers:
                specs.append({"qid": str(q.qid), "source": source, "s": s, "t": t})
                rows.append([replace(Site(t, "resid_post", -1), h)])
    return specs, rows


def entities(q: Any) -> dict[str, list[str]]:
    return {"e1": Q.subjects(q), "e2": Q.bridges(q), "e3": Q.answers(q)}


def patchscope_batch(lm: "LoadedModel", queries: Sequence[Any], layers: Sequence[int], rule: MatchRule, *,
                     targets: Sequence[str] = ("description",), sources: Sequence[str] = SOURCES,
                     target_layers: Sequence[int] | None = None, batch_size: int = 256) -> pd.DataFrame:
    """One row per (query, target, source, s, t): the decoded text and its entity label.

    Every query's rows run on the same target prompt, so several queries share one ``generate`` call.
    """
    specs, rows, names = [], [], []
    for q in queries:
        _, acts = run_with_cache(lm, q.prompt, components=("resid_post",), layers=sorted(set(layers)))
        sp, rw = patchscope_rows(lm, q, acts, layers, target_layers=target_layers, sources=sources)
        specs += sp
        rows += rw
        names += [entities(q)] * len(rw)
    out = []
    for target in targets:
        if target not in TARGET_PROMPTS:
            raise ValueError(f"unknown Patchscope target {target!r}; choose from {', '.join(TARGET_PROMPTS)}")
        if not rows:
            continue
        g = generate(lm, TARGET_PROMPTS[target], rows, max_new_tokens=rule.max_new_tokens, start=-1,
                     stop=rule.stopper(lm, [n["e1"] for n in names]), batch_size=batch_size)
        for spec, ents, text in zip(specs, names, g.texts(lm)):
            out.append({**spec, "target": target, "label": entity_label(text, ents, rule), "text": text})
    return pd.DataFrame(out, columns=list(COLUMNS))


def first_target_layers(rows: pd.DataFrame) -> pd.DataFrame:
    """Per (query, target, source, s): the first target layer t whose decoding is labelled e1 / e2 / e3."""
    cols = ["qid", "target", "source", "s", "first_t_e1", "first_t_e2", "first_t_e3"]
    if not len(rows):
        return pd.DataFrame(columns=cols)
    out = []
    for (qid, target, source, s), g in rows.groupby(["qid", "target", "source", "s"], sort=False):
        rec = {"qid": qid, "target": target, "source": source, "s": int(s)}
        for label in LABELS:
            hit = g.loc[g["label"] == label, "t"]
            rec[f"first_t_{label}"] = float(hit.min()) if len(hit) else np.nan
        out.append(rec)
    return pd.DataFrame(out, columns=cols)


def first_source_layer(layers: pd.DataFrame, qid: str, target: str, source: str, label: str) -> float:
    """The first source layer from which some target layer decodes ``label`` (NaN: none does)."""
    g = layers[(layers["qid"] == qid) & (layers["target"] == target) & (layers["source"] == source)]
    hit = g.loc[g[f"first_t_{label}"].notna(), "s"]
    return float(hit.min()) if len(hit) else np.nan
