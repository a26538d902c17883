"""Mitigating final-layer suppression with engine interventions, chosen on training prompts, scored on
held-out prompts, costed on other relations and on the perplexity of generic text.

A :class:`Mitigation` is data (kind, layer, heads / neurons / direction, factor) and becomes engine
interventions with :meth:`Mitigation.interventions`: ``scale`` at ``head_out`` for heads, a ``transform`` at
``mlp_hidden`` (the input of the MLP's output projection) for neurons, a ``transform`` at ``mlp_out`` /
``attn_out`` for projecting a direction out, at every position by default, so any analysis can apply it to
any prompt through ``run`` / ``prompt_pass`` / ``generate``. A mitigation round-trips through a table row
(:meth:`Mitigation.to_row`, :meth:`Mitigation.from_row`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from hopscope.engine import Intervention, Site, run, scale, score_tokens, transform
from hopscope.methods.recall.collect import LastPosition, answer_logit_diff
from hopscope.methods.recall.queries import RecallItem
from hopscope.methods.recall.suppression import neuron_dla

if TYPE_CHECKING:
    from hopscope.models.loaded import LoadedModel

KINDS = ("heads", "neurons", "project")
TARGETS = ("mlp", "attn")


@dataclass
class Mitigation:
    """An edit of one layer's computation: ``kind`` ``"heads"`` (scale the listed heads' outputs by ``factor``),
    ``"neurons"`` (scale the listed MLP neurons' activations by ``factor``) or ``"project"`` (subtract from the
    ``target`` sublayer's output, ``"mlp"`` or ``"attn"``, its projection on ``direction``)."""

    kind: str
    layer: int
    heads: list[int] = field(default_factory=list)
    neurons: list[int] = field(default_factory=list)
    factor: float = 0.0
    target: str = "mlp"
    direction: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown mitigation kind {self.kind!r}; choose one of {', '.join(KINDS)}")
        if self.kind == "project":
            if self.target not in TARGETS:
                raise ValueError(f"a 'project' mitigation targets 'mlp' or 'attn', not {self.target!r}")
            if self.direction is None or float(torch.as_tensor(self.direction).norm()) == 0.0:
                raise ValueError("a 'project' mitigation needs a non-zero direction")

    @property
    def name(self) -> str:
        if self.kind == "heads":
            return f"heads L{self.layer}:{','.join(map(str, self.heads))} x{self.factor:g}"
        if self.kind == "neurons":
            return f"{len(self.neurons)} neurons L{self.layer} x{self.factor:g}"
        return f"project out L{self.layer} {self.target} mean direction"

    def interventions(self, lm: "LoadedModel", positions: int | tuple[int, int] | list[int] | None = None,
                      ) -> list[Intervention]:
        """The engine interventions of this edit at ``positions`` (``None``: every position, i.e. the edited
        model; for a last-layer edit, ``-1`` gives the same last-position logits)."""
        layer = self.layer + lm.n_layers if self.layer < 0 else self.layer
        if self.kind == "heads":
            return [scale(Site(layer, "head_out", positions, head=h), self.factor) for h in self.heads]
        if self.kind == "neurons":
            idx = torch.tensor(self.neurons, dtype=torch.long)
            factor = self.factor

            def neurons(v: torch.Tensor, row: int) -> torch.Tensor:
                v[..., idx.to(v.device)] = v[..., idx.to(v.device)] * factor
                return v
            return [transform(Site(layer, "mlp_hidden", positions), neurons)] if self.neurons else []
        unit = torch.as_tensor(self.direction, dtype=torch.float32)
        unit = unit / unit.norm()

        def project(v: torch.Tensor, row: int) -> torch.Tensor:
            d = unit.to(device=v.device, dtype=v.dtype)
            return v - (v @ d)[..., None] * d
        return [transform(Site(layer, f"{self.target}_out", positions), project)]

    def to_row(self) -> dict[str, Any]:
        """A table row (JSON-able lists) from which :meth:`from_row` rebuilds this mitigation."""
        direction = [] if self.direction is None else [float(x) for x in torch.as_tensor(self.direction).tolist()]
        return {"mitigation": self.name, "kind": self.kind, "layer": int(self.layer),
                "heads": [int(h) for h in self.heads], "neurons": [int(n) for n in self.neurons],
                "factor": float(self.factor), "target": self.target, "direction": direction}

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> "Mitigation":
        direction = list(row.get("direction", []) if row.get("direction") is not None else [])
        return cls(str(row["kind"]), int(row["layer"]), heads=[int(h) for h in row.get("heads", [])],
                   neurons=[int(n) for n in row.get("neurons", [])], factor=float(row.get("factor", 0.0)),
                   target=str(row.get("target", "mlp")),
                   direction=torch.tensor(np.asarray(direction, dtype=np.float32)) if len(direction) else None)


def suppressing(mean_dla: torch.Tensor, k: int) -> list[int]:
    """Indices of the ``k`` most negative entries of ``mean_dla`` (only negative ones), most negative first."""
    order = torch.argsort(mean_dla, stable=True)[:k]
    return [int(i) for i in order if mean_dla[i] < 0]


def propose(lm: "LoadedModel", train: LastPosition, *, k_heads: int = 2, k_neurons: int = 16,
            factor: float = 0.0) -> list[Mitigation]:
    """Mitigations chosen on the ``train`` prompts: the last-layer heads and neurons with the most negative
    mean DLA scaled by ``factor``, and the more suppressing last-layer sublayer's mean output direction (an
    answer-agnostic direction) projected out of it."""
    L = lm.n_layers - 1
    out = []
    heads = suppressing(train.head_dla()[:, L].mean(0), k_heads)
    if heads:
        out.append(Mitigation("heads", L, heads=heads, factor=factor))
    neurons = suppressing(neuron_dla(lm, train, L).mean(0), k_neurons)
    if neurons:
        out.append(Mitigation("neurons", L, neurons=neurons, factor=factor))
    rest = train.rest_dla()
    attn_dla = float((train.head_dla()[:, L].sum(-1) + rest["attn_bias"][:, L]).mean())
    mlp_dla = float(rest["mlp"][:, L].mean())
    target = "mlp" if mlp_dla <= attn_dla else "attn"
    vecs = train.mlp[:, L] if target == "mlp" else train.attn[:, L]
    if float(vecs.mean(0).norm()) > 0:
        out.append(Mitigation("project", L, target=target, direction=vecs.mean(0)))
    return out


def score_prompts(lm: "LoadedModel", items: Sequence[RecallItem], mitigations: Sequence[Mitigation], *,
                  batch_prompts: int = 8) -> pd.DataFrame:
    """One row per (prompt, condition): the answer's ``prob``, ``logprob``, ``rank`` and ``logit_diff`` at the
    last position without a mitigation (``"none"``) and under each one applied at every position, through
    the engine (``batch_prompts`` prompts x conditions per forward)."""
    names = ["none"] + [m.name for m in mitigations]
    conditions = [[]] + [m.interventions(lm) for m in mitigations]
    records = []
    for c0 in range(0, len(items), batch_prompts):
        chunk = list(items[c0:c0 + batch_prompts])
        prompts = [it.prompt for it in chunk for _ in conditions]
        logits = run(lm, prompts, [ivs for _ in chunk for ivs in conditions], last_only=True).logits
        ids = [it.answer_id for it in chunk for _ in conditions]
        s, ld = score_tokens(logits, ids), answer_logit_diff(logits, ids)
        for r, (it, name) in enumerate((it, name) for it in chunk for name in names):
            records.append({"qid": it.qid, "mitigation": name, "prob": float(s["prob"][r]),
                            "logprob": float(s["logprob"][r]), "rank": int(s["rank"][r]), "logit_diff": float(ld[r])})
    return pd.DataFrame(records, columns=["qid", "mitigation", "prob", "logprob", "rank", "logit_diff"])


def generic_text(n_chars: int = 40000) -> tuple[str, str]:
    """English prose shipped with Python itself: the paragraphs of the language reference in the stdlib's
    ``pydoc_data.topics`` (code blocks, grammar rules and headings dropped). Returns (text, source)."""
    from pydoc_data.topics import topics

    paras = []
    for key in sorted(topics):
        for p in topics[key].split("\n\n"):
            if p.startswith((" ", "*", "=", "-")) or "::=" in p or len(p) < 200:
                continue
            paras.append(" ".join(p.split()))
    return "\n\n".join(paras)[:n_chars], "prose paragraphs of Python's pydoc_data.topics (stdlib language reference)"


def text_windows(lm: "LoadedModel", text: str, *, window: int = 64, n: int = 8) -> list[str]:
    """``n`` consecutive windows of ``window`` tokens of ``text``, decoded back to text."""
    ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) < window * n:
        raise ValueError(f"the text has {len(ids)} tokens: too short for {n} windows of {window}")
    return [lm.tokenizer.decode(ids[i * window:(i + 1) * window]) for i in range(n)]


def score_text(lm: "LoadedModel", windows: Sequence[tuple[str, str]],
               mitigations: Sequence[Mitigation]) -> pd.DataFrame:
    """One row per (window, condition): summed next-token negative log-likelihood ``nll`` over ``n_tokens``
    predicted tokens, without a mitigation and under each one applied at every position (``windows``:
    ``(qid, text)`` pairs)."""
    names = ["none"] + [m.name for m in mitigations]
    rows = [[]] + [m.interventions(lm) for m in mitigations]
    records = []
    for qid, text in windows:
        ids = torch.tensor(lm.to_ids(text))
        logits = run(lm, [text] * len(rows), rows).logits  # [rows, seq, V]; one prompt, so no padding
        logp = torch.log_softmax(logits[:, :-1].float(), -1)
        nll = -logp.gather(-1, ids[1:].to(logp.device)[None, :, None].expand(len(rows), -1, 1))[..., 0].sum(-1)
        for j, name in enumerate(names):
            records.append({"qid": qid, "mitigation": name, "nll": float(nll[j]), "n_tokens": len(ids) - 1})
    return pd.DataFrame(records, columns=["qid", "mitigation", "nll", "n_tokens"])


def perplexity(text_scores: pd.DataFrame) -> pd.Series:
    """Perplexity per condition over all windows: exp(sum nll / sum tokens)."""
    g = text_scores.groupby("mitigation", sort=False)
    return g["nll"].sum().combine(g["n_tokens"].sum(), lambda a, b: math.exp(a / b) if b else math.nan)


def mitigation_summary(scores: pd.DataFrame, text: pd.DataFrame | None) -> pd.DataFrame:
    """One row per mitigation: mean change in p(answer) on the training and held-out prompts, held-out change in
    accuracy (top-1) and logit difference, generic-text perplexity before / after, mean accuracy and
    probability change over the other relations; ``chosen`` marks the best on the training prompts."""
    base = scores[scores["mitigation"] == "none"].set_index("qid")
    ppl = perplexity(text) if text is not None and len(text) else None
    rows = []
    for name, g in scores[scores["mitigation"] != "none"].groupby("mitigation", sort=False):
        g = g.set_index("qid")
        b = base.loc[g.index]
        delta = g["prob"] - b["prob"]
        acc = (g["rank"] == 0).astype(float) - (b["rank"] == 0).astype(float)
        ld = g["logit_diff"] - b["logit_diff"]
        sets = g["eval_set"]
        other = sets.str.startswith("other:")
        rows.append({
            "mitigation": name, "train_gain_prob": float(delta[sets == "train"].mean()),
            "gain_prob": float(delta[sets == "test"].mean()), "gain_accuracy": float(acc[sets == "test"].mean()),
            "gain_logit_diff": float(ld[sets == "test"].mean()),
            "ppl_before": float(ppl["none"]) if ppl is not None else np.nan,
            "ppl_after": float(ppl[name]) if ppl is not None else np.nan,
            "other_accuracy_change": float(acc[other].mean()) if other.any() else np.nan,
            "other_prob_change": float(delta[other].mean()) if other.any() else np.nan,
            "n_test": int((sets == "test").sum()), "n_other": int(other.sum()),
        })
    out = pd.DataFrame(rows, columns=["mitigation", "train_gain_prob", "gain_prob", "gain_accuracy", "gain_logit_diff",
                                      "ppl_before", "ppl_after", "other_accuracy_change", "other_prob_change",
                                      "n_test", "n_other"])
    out["ppl_change_rel"] = out["ppl_after"] / out["ppl_before"] - 1.0
    out["chosen"] = False
    if len(out):
        out.loc[out["train_gain_prob"].idxmax(), "chosen"] = True
    return out
