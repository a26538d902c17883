"""Where a two-hop query's bridge (e2) and answer (e3) are resolved, and the per-query summary.

Two-hop queries are read through a small protocol so that any record with the fields of
:class:`hopscope.data.records.TwoHopQuery` works: ``qid``, ``prompt``, ``e1``, ``e2``, ``e3``,
``e2_aliases``, ``e3_aliases`` and optionally ``e1_span`` / ``first_hop_span`` (character spans).

* :func:`lens_resolution` - the logit lens at the last token: per layer and component (residual
  stream, attention output, MLP output) the rank of e2's and e3's first token, and the first layer at
  which each is top-1 / within top-k.
* :func:`summarize` - one row per query joining the resolution layers of every analysis (lens,
  Patchscopes, knockout, back-patching), and :func:`summary_by_group`, the dataset view split by
  whether the model composed the query correctly.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from hopscope.engine.answers import first_token_id
from hopscope.engine.runner import run_with_cache
from hopscope.lenses.projection import project

if TYPE_CHECKING:
    from hopscope.models.loaded import LoadedModel

LENS_COMPONENTS = ("resid_post", "attn_out", "mlp_out")


# ---- the two-hop query protocol ---------------------------------------------------------------------
def query_id(q: Any) -> str:
    """The query's id (``qid``, or ``id``)."""
    qid = getattr(q, "qid", None) or getattr(q, "id", None)
    if qid is None:
        raise AttributeError(f"query {q!r} has no 'qid'")
    return str(qid)


def _unique(items: Iterable[str]) -> list[str]:
    out: list[str] = []
    for s in items:
        if s and s.strip() and s not in out:
            out.append(s)
    return out


def answer_aliases(q: Any) -> list[str]:
    """e3 followed by its aliases."""
    return _unique([q.e3, *(getattr(q, "e3_aliases", None) or [])])


def bridge_aliases(q: Any) -> list[str]:
    """e2 followed by its aliases."""
    return _unique([q.e2, *(getattr(q, "e2_aliases", None) or [])])


def token_span(lm: "LoadedModel", text: str, span: tuple[int, int] | str) -> tuple[int, int]:
    """Token span ``(start, stop)`` of ``text``'s tokens overlapping a character span (or the last
    occurrence of a string), in the engine's prompt coordinates."""
    from hopscope.data.spans import model_token_span

    return model_token_span(lm, text, span)


def _char_span_of(q: Any, attr: str, fallback_text: str | None) -> tuple[int, int] | str:
    span = getattr(q, attr, None)
    if span is not None:
        return int(span[0]), int(span[1])
    if fallback_text:
        return fallback_text  # located at its last occurrence (after any few-shot prefix)
    raise ValueError(f"query {query_id(q)} has no {attr}")


def e1_token_span(lm: "LoadedModel", q: Any) -> tuple[int, int]:
    """Token span of e1 in the composed prompt (from ``e1_span``, else found by text)."""
    return token_span(lm, q.prompt, _char_span_of(q, "e1_span", q.e1))


def first_hop_position(lm: "LoadedModel", q: Any) -> int:
    """Prompt position of the last token of the first-hop phrase (``first_hop_span``; else of e1)."""
    if getattr(q, "first_hop_span", None) is not None:
        return token_span(lm, q.prompt, _char_span_of(q, "first_hop_span", None))[1] - 1
    return e1_token_span(lm, q)[1] - 1


def first_layer(flags: Sequence[bool] | np.ndarray, layers: Sequence[int] | None = None) -> float:
    """The first layer whose flag is set (NaN if none)."""
    flags = np.asarray(flags, dtype=bool)
    idx = np.flatnonzero(flags)
    if not idx.size:
        return float("nan")
    return float(layers[idx[0]] if layers is not None else idx[0])


# ---- logit lens / sublayer projection ----------------------------------------------------------------
def lens_ranks(
    lm: "LoadedModel",
    queries: Sequence[Any],
    *,
    components: Sequence[str] = LENS_COMPONENTS,
    batch_size: int = 16,
) -> pd.DataFrame:
    """Rank and probability of e2's and e3's first token at the last prompt token, per layer.

    One row per (query, component, layer, target). Every component is read through the final norm
    and the unembedding (as :func:`hopscope.lenses.logit_lens` does), so ranks are comparable.
    """
    bad = [c for c in components if c not in LENS_COMPONENTS]
    if bad:
        raise ValueError(f"lens components {bad} not supported; choose from {LENS_COMPONENTS}")
    rows: list[dict[str, Any]] = []
    for i in range(0, len(queries), batch_size):
        chunk = list(queries[i:i + batch_size])
        targets = torch.tensor([[first_token_id(lm.tokenizer, q.e2), first_token_id(lm.tokenizer, q.e3)]
                                for q in chunk])
        _, acts = run_with_cache(lm, [q.prompt for q in chunk], components=components)
        for comp in components:
            vecs = torch.stack([acts[comp, l][:, -1] for l in range(lm.n_layers)], dim=1)  # [b, L, d]
            logp = torch.log_softmax(project(lm, vecs), dim=-1)  # [b, L, V]
            tgt = targets[:, None, :].expand(-1, lm.n_layers, -1).to(logp.device)  # [b, L, 2]
            chosen = logp.gather(-1, tgt)  # [b, L, 2]
            rank = (logp[:, :, None, :] > chosen[..., None]).sum(-1)  # [b, L, 2]
            for b, q in enumerate(chunk):
                for layer in range(lm.n_layers):
                    for j, target in enumerate(("e2", "e3")):
                        rows.append({"query_id": query_id(q), "component": comp, "layer": layer, "target": target,
                                     "rank": int(rank[b, layer, j]), "prob": float(chosen[b, layer, j].exp())})
            del logp
    return pd.DataFrame(rows)


def lens_resolution(ranks: pd.DataFrame, *, k: int = 5) -> pd.DataFrame:
    """First layer at which each target is top-1 and within top-``k``; one row per (query, component, target)."""
    out = []
    for (qid, comp, target), g in ranks.groupby(["query_id", "component", "target"], sort=False):
        g = g.sort_values("layer")
        layers = g["layer"].tolist()
        out.append({"query_id": qid, "component": comp, "target": target,
                    "first_top1": first_layer(g["rank"].to_numpy() == 0, layers),
                    f"first_top{k}": first_layer(g["rank"].to_numpy() < k, layers),
                    "best_rank": int(g["rank"].min()), "final_rank": int(g["rank"].iloc[-1])})
    return pd.DataFrame(out)


# ---- the per-query summary ----------------------------------------------------------------------------
def summarize(
    knowledge: pd.DataFrame,
    *,
    lens: pd.DataFrame | None = None,
    patchscope: pd.DataFrame | None = None,
    knockout: pd.DataFrame | None = None,
    backpatch: pd.DataFrame | None = None,
    k: int = 5,
) -> pd.DataFrame:
    """One row per query: its knowledge group and the layer at which each analysis resolves e2 / e3.

    ``knowledge``: query_id + ``group`` (e.g. "correct" / "incorrect" composition). The other tables
    are the per-query outputs of :func:`lens_resolution`, :func:`hopscope.methods.patchscope.patchscope_resolution`,
    :func:`hopscope.methods.knockout.knockout_resolution` and :func:`hopscope.methods.backpatch.query_table`.
    Missing layers (never resolved) are NaN.
    """
    out = knowledge[["query_id", "group"]].drop_duplicates("query_id").set_index("query_id")
    if lens is not None and len(lens):
        for comp, name in (("resid_post", "lens"), ("attn_out", "attn"), ("mlp_out", "mlp")):
            sub = lens[lens["component"] == comp]
            for target in ("e2", "e3"):
                t = sub[sub["target"] == target].set_index("query_id")
                if len(t):
                    out[f"{target}_{name}_top1"] = t["first_top1"]
                    out[f"{target}_{name}_top{k}"] = t[f"first_top{k}"]
    if patchscope is not None and len(patchscope):
        for (source, target), g in patchscope.groupby(["source", "target"]):
            g = g.set_index("query_id")
            out[f"e2_patchscope_{target}_{source}"] = g["first_e2_layer"]
            if source == "last":
                out[f"e3_patchscope_{target}_{source}"] = g["first_e3_layer"]
    if knockout is not None and len(knockout):
        g = knockout.set_index("query_id")
        out["knockout_first_flip"] = g["first_flip_layer"]
        out["knockout_last_flip"] = g["last_flip_layer"]
    if backpatch is not None and len(backpatch):
        b = backpatch[(backpatch["condition"] == "back") & (backpatch["variant"] == "last")].set_index("query_id")
        if len(b):
            out["backpatch_any_correct"] = b["any_correct"]
            out["backpatch_best_s"] = b["best_s"]
            out["backpatch_best_t"] = b["best_t"]
    return out.reset_index()


# measures drawn in the box plot: (column, label)
BOX_MEASURES = (
    ("e2_lens_top1", "e2 lens"), ("e3_lens_top1", "e3 lens"),
    ("e2_patchscope_repeat_e1_last", "e2 patchscope@e1"), ("e2_patchscope_repeat_last", "e2 patchscope@last"),
    ("e3_patchscope_repeat_last", "e3 patchscope@last"), ("knockout_first_flip", "knockout flip"),
)


def summary_by_group(summary: pd.DataFrame) -> pd.DataFrame:
    """Per measure and group: n, how many resolve at all, and the median / mean resolution layer."""
    rows = []
    measures = [c for c in summary.columns if c not in ("query_id", "group") and not c.startswith("backpatch_")]
    for col in measures:
        for group, g in summary.groupby("group"):
            v = pd.to_numeric(g[col], errors="coerce")
            rows.append({"measure": col, "group": group, "n": int(len(v)), "n_resolved": int(v.notna().sum()),
                         "median_layer": float(v.median()) if v.notna().any() else float("nan"),
                         "mean_layer": float(v.mean()) if v.notna().any() else float("nan")})
    return pd.DataFrame(rows)


def box_data(summary: pd.DataFrame, measures: Sequence[tuple[str, str]] = BOX_MEASURES) -> dict[str, list[float]]:
    """``{"<label>\\n<group> (resolved/n)": layers}`` for :func:`hopscope.report.figures.box_by_group`."""
    data: dict[str, list[float]] = {}
    for col, label in measures:
        if col not in summary.columns:
            continue
        for group, g in summary.groupby("group", sort=True):
            values = pd.to_numeric(g[col], errors="coerce").dropna().tolist()
            data[f"{label}\n{group} ({len(values)}/{len(g)})"] = values
    return data
