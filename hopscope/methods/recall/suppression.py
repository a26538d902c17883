"""Final-layer anti-overconfidence (Lv et al. 2024, section 5) and its mitigation.

Measure: on each prompt, remove the last block's attention, its MLP, the whole block, each of its
heads and a group of its neurons at the last position, and see whether the correct answer's logit
difference and probability go *up* (the component was suppressing it). Attribute by DLA: each head
and each neuron of the last layer (neuron n writes ``act_n * W_out[:, n]``).

Mitigate: remove or scale down the suppressing heads or neurons, or subtract from the last MLP /
attention output its projection on the answer-agnostic direction (its mean last-position output over
training prompts), as a model edit at every position. Report the gain on held-out prompts and the
cost: perplexity on generic text and accuracy on other relations.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np
import pandas as pd
import torch

from hopscope.engine import Site, add, zero_ablate
from hopscope.engine.answers import score_tokens
from hopscope.engine.runner import run
from hopscope.methods.recall.collect import LastPosition, logit_diff
from hopscope.methods.recall.heads import run_rows
from hopscope.methods.recall.linearize import mlp_spec
from hopscope.methods.recall.queries import RecallItem

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from hopscope.models.loaded import LoadedModel


# -- attribution ------------------------------------------------------------------------------------
def neuron_dla(lm: "LoadedModel", lp: LastPosition, layer: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(dla [n, m], acts [n, m])`` of each neuron of the MLP of ``layer`` (default: last) at the last
    position; ``dla.sum(-1) + u . b_out`` equals the MLP's DLA."""
    layer = lm.n_layers - 1 if layer is None else layer
    spec = mlp_spec(lm, layer)
    acts = spec.hidden(lp.mlp_in[:, layer])
    return acts * (lp.u @ spec.w_out), acts


def last_layer_attribution(lm: "LoadedModel", lp: LastPosition) -> pd.DataFrame:
    """One row per (prompt, component) of the last layer: DLA of ``attn``, ``mlp``, each ``head h``."""
    L = lm.n_layers - 1
    rest = lp.rest_dla()
    heads = lp.head_dla()[:, L]
    rows = []
    for i, it in enumerate(lp.items):
        rows.append({"qid": it.qid, "component": "attn", "dla": float(heads[i].sum() + rest["attn_bias"][i, L])})
        rows.append({"qid": it.qid, "component": "mlp", "dla": float(rest["mlp"][i, L])})
        rows.extend({"qid": it.qid, "component": f"head {h}", "dla": float(heads[i, h])} for h in range(heads.shape[1]))
    return pd.DataFrame(rows)


def suppressing_neurons(dla: torch.Tensor, k: int, train: Sequence[int] | None = None) -> list[int]:
    """The ``k`` neurons with the most negative mean DLA over the ``train`` prompts (only negative ones)."""
    mean = dla[list(train)].mean(0) if train is not None else dla.mean(0)
    order = torch.argsort(mean)[:k]
    return [int(n) for n in order if mean[n] < 0]


def suppressing_heads(lp: LastPosition, k: int, train: Sequence[int] | None = None) -> list[int]:
    """Up to ``k`` last-layer heads with negative mean DLA over ``train``, most negative first."""
    dla = lp.head_dla()[:, -1]
    mean = dla[list(train)].mean(0) if train is not None else dla.mean(0)
    return [int(h) for h in torch.argsort(mean)[:k] if mean[h] < 0]


# -- causal measurement -----------------------------------------------------------------------------
def final_layer_effects(lm: "LoadedModel", lp: LastPosition, neurons: Sequence[int] = ()) -> pd.DataFrame:
    """Per (prompt, component) of the last block, the effect of removing it at the last position.

    ``effect_logit_diff`` / ``effect_prob`` = clean minus removed: negative means the component lowers the
    correct answer (suppresses it). Components: ``block`` (attention and MLP), ``attn``, ``mlp``, each
    ``head h`` (zeroed; the MLP then sees the change), and ``neurons`` (the given group's write removed).
    """
    L = lm.n_layers - 1
    spec = mlp_spec(lm, L) if neurons else None
    acts = spec.hidden(lp.mlp_in[:, L]) if spec is not None else None
    labels = ["block", "attn", "mlp"] + [f"head {h}" for h in range(lm.n_heads)]
    records = []
    for i, it in enumerate(lp.items):
        rows = [[zero_ablate(Site(L, "attn_out", -1)), zero_ablate(Site(L, "mlp_out", -1))],
                [zero_ablate(Site(L, "attn_out", -1))], [zero_ablate(Site(L, "mlp_out", -1))]]
        rows += [[zero_ablate(Site(L, "head_out", -1, head=h))] for h in range(lm.n_heads)]
        names = list(labels)
        if neurons:
            idx = list(neurons)
            write = acts[i, idx] @ spec.w_out[:, idx].T
            rows.append([add(Site(L, "mlp_out", -1), -write)])
            names.append("neurons")
        logits = run_rows(lm, it.prompt, [[]] + rows)
        ids = [it.answer_id] * len(logits)
        ld = logit_diff(logits, ids)
        prob = score_tokens(logits, ids)["prob"]
        for j, name in enumerate(names, start=1):
            records.append({"qid": it.qid, "component": name, "effect_logit_diff": float(ld[0] - ld[j]),
                            "effect_prob": float(prob[0] - prob[j]), "clean_prob": float(prob[0]),
                            "clean_logit_diff": float(ld[0])})
    return pd.DataFrame(records)


def suppression_share(effects: pd.DataFrame) -> pd.DataFrame:
    """Per component: share of prompts where it lowers the answer's logit difference / probability, and
    the mean effects."""
    g = effects.groupby("component", sort=False)
    return pd.DataFrame({
        "lowers_logit_diff": g["effect_logit_diff"].apply(lambda s: float((s < 0).mean())),
        "lowers_prob": g["effect_prob"].apply(lambda s: float((s < 0).mean())),
        "mean_effect_logit_diff": g["effect_logit_diff"].mean(),
        "mean_effect_prob": g["effect_prob"].mean(),
        "n": g.size(),
    }).reset_index()


# -- mitigation -------------------------------------------------------------------------------------
@dataclass
class Mitigation:
    """A model edit on one layer, applied at every position while :meth:`applied` is active.

    ``kind``: ``"heads"`` (scale the listed heads' outputs by ``factor``), ``"neurons"`` (scale the listed
    neurons' activations by ``factor``), ``"project"`` (subtract from the ``target`` sublayer's output,
    ``"mlp"`` or ``"attn"``, its projection on ``direction``).
    """

    kind: str
    layer: int
    heads: list[int] = field(default_factory=list)
    neurons: list[int] = field(default_factory=list)
    factor: float = 0.0
    target: str = "mlp"
    direction: torch.Tensor | None = None

    @property
    def name(self) -> str:
        if self.kind == "heads":
            return f"heads L{self.layer}:{','.join(map(str, self.heads))} x{self.factor:g}"
        if self.kind == "neurons":
            return f"{len(self.neurons)} neurons L{self.layer} x{self.factor:g}"
        return f"project out L{self.layer} {self.target} mean direction"

    def describe(self) -> dict[str, object]:
        return {"mitigation": self.name, "kind": self.kind, "layer": self.layer,
                "heads": ",".join(map(str, self.heads)), "n_neurons": len(self.neurons), "factor": self.factor}

    @contextlib.contextmanager
    def applied(self, lm: "LoadedModel") -> Iterator[None]:
        ad = lm.adapter
        handles = []
        if self.kind == "heads":
            dh = lm.d_head
            cols = torch.cat([torch.arange(h * dh, (h + 1) * dh) for h in self.heads]) if self.heads else None

            def pre(module, args):
                if cols is None:
                    return None
                z = args[0].clone()
                z[..., cols] = z[..., cols] * self.factor
                return (z, *args[1:])
            handles.append(ad.out_proj[self.layer].register_forward_pre_hook(pre))
        elif self.kind == "neurons":
            idx = torch.tensor(self.neurons, dtype=torch.long)

            def pre(module, args):
                h = args[0].clone()
                h[..., idx] = h[..., idx] * self.factor
                return (h, *args[1:])
            handles.append(mlp_spec(lm, self.layer).down.register_forward_pre_hook(pre))
        elif self.kind == "project":
            if self.direction is None:
                raise ValueError("a 'project' mitigation needs a direction")
            d = self.direction / self.direction.norm()
            module = (ad.mlp_to_resid if self.target == "mlp" else ad.attn_to_resid)[self.layer]

            def post(module, args, output):
                out = output[0] if isinstance(output, tuple) else output
                dd = d.to(out.dtype)
                new = out - (out @ dd)[..., None] * dd
                return (new, *output[1:]) if isinstance(output, tuple) else new
            handles.append(module.register_forward_hook(post))
        else:
            raise ValueError(f"unknown mitigation kind {self.kind!r}; choose heads, neurons or project")
        try:
            yield
        finally:
            for h in handles:
                h.remove()


def propose_mitigations(lm: "LoadedModel", lp: LastPosition, train: Sequence[int], *, k_heads: int = 2,
                        k_neurons: int = 32, factor: float = 0.0) -> list[Mitigation]:
    """Mitigations chosen on the ``train`` prompts: the suppressing last-layer heads, the most suppressing
    neurons, and projecting the more suppressing sublayer's mean direction out."""
    L = lm.n_layers - 1
    out = []
    heads = suppressing_heads(lp, k_heads, train)
    if heads:
        out.append(Mitigation("heads", L, heads=heads, factor=factor))
    dla, _ = neuron_dla(lm, lp, L)
    neurons = suppressing_neurons(dla, k_neurons, train)
    if neurons:
        out.append(Mitigation("neurons", L, neurons=neurons, factor=factor))
    rest = lp.rest_dla()
    tr = list(train)
    attn_dla = float((lp.head_dla()[tr, L].sum(-1) + rest["attn_bias"][tr, L]).mean())
    mlp_dla = float(rest["mlp"][tr, L].mean())
    target = "mlp" if mlp_dla <= attn_dla else "attn"
    vecs = lp.mlp[tr, L] if target == "mlp" else lp.attn[tr, L]
    out.append(Mitigation("project", L, target=target, direction=vecs.mean(0)))
    return out


def generic_text(n_chars: int = 20000) -> tuple[str, str]:
    """English prose shipped with Python itself: the paragraphs of the language reference in the stdlib's
    ``pydoc_data.topics`` (code blocks, grammar rules and headings dropped). Returns (text, source)."""
    from pydoc_data.topics import topics

    paras = []
    for key in sorted(topics):
        for p in topics[key].split("\n\n"):
            if p.startswith((" ", "*", "=", "-")) or "::=" in p or len(p) < 200:
                continue
            paras.append(" ".join(p.split()))
    text = "\n\n".join(paras)[:n_chars]
    return text, "prose paragraphs of Python's pydoc_data.topics (stdlib language reference)"


def perplexity(lm: "LoadedModel", text: str, *, window: int = 64, n_windows: int = 8, batch_size: int = 8) -> float:
    """Perplexity of ``text`` in ``n_windows`` consecutive non-overlapping windows of ``window`` tokens."""
    ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    n_windows = min(n_windows, len(ids) // window)
    if n_windows < 1:
        raise ValueError(f"the text has {len(ids)} tokens: too short for one window of {window}")
    chunks = torch.tensor(ids[: n_windows * window], device=lm.device).view(n_windows, window)
    nll, count = 0.0, 0
    with torch.no_grad():
        for s in range(0, n_windows, batch_size):
            x = chunks[s:s + batch_size]
            logits = lm.model(input_ids=x, attention_mask=torch.ones_like(x)).logits.float()
            logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, x[:, 1:, None])[..., 0]
            nll -= float(logp.sum())
            count += logp.numel()
    return math.exp(nll / count)


def _score(lm: "LoadedModel", items: Sequence[RecallItem]) -> dict[str, np.ndarray]:
    logits = run(lm, [it.prompt for it in items], last_only=True, batch_size=32).logits
    ids = [it.answer_id for it in items]
    s = score_tokens(logits, ids)
    return {"prob": s["prob"].numpy(), "correct": (s["rank"] == 0).numpy(),
            "logit_diff": logit_diff(logits, ids).numpy()}


def evaluate_mitigations(
    lm: "LoadedModel",
    mitigations: Sequence[Mitigation],
    test: Sequence[RecallItem],
    *,
    other: dict[str, Sequence[RecallItem]] | None = None,
    text: str | None = None,
    window: int = 64,
    n_windows: int = 8,
) -> pd.DataFrame:
    """One row per (mitigation, eval set, metric) with ``before``, ``after`` and ``change``.

    Eval sets: ``test`` (held-out prompts of the analysed relation: ``prob``, ``accuracy``,
    ``logit_diff``), each relation of ``other`` (``prob``, ``accuracy``), and ``text`` (``perplexity``).
    """
    sets = {"held_out": list(test), **{f"other:{k}": list(v) for k, v in (other or {}).items()}}

    def measure() -> dict[tuple[str, str], float]:
        res = {}
        for name, items in sets.items():
            if not items:
                continue
            s = _score(lm, items)
            res[name, "prob"] = float(s["prob"].mean())
            res[name, "accuracy"] = float(s["correct"].mean())
            if name == "held_out":
                res[name, "logit_diff"] = float(s["logit_diff"].mean())
        if text:
            res["generic_text", "perplexity"] = perplexity(lm, text, window=window, n_windows=n_windows)
        return res

    base = measure()
    rows = []
    for mit in mitigations:
        with mit.applied(lm):
            after = measure()
        for (evalset, metric), b in base.items():
            rows.append({**mit.describe(), "eval_set": evalset, "metric": metric, "before": b,
                         "after": after[evalset, metric], "change": after[evalset, metric] - b,
                         "n": len(sets.get(evalset, [])) or n_windows * window})
    return pd.DataFrame(rows)


def mitigation_summary(evals: pd.DataFrame) -> pd.DataFrame:
    """One row per mitigation: held-out gain in probability and accuracy, perplexity change (absolute and
    relative), and the mean change in accuracy and probability over the other relations."""
    rows = []
    for name, g in evals.groupby("mitigation", sort=False):
        pick = lambda s, m: g[(g["eval_set"] == s) & (g["metric"] == m)]  # noqa: E731
        ppl = pick("generic_text", "perplexity")
        others = g[g["eval_set"].str.startswith("other:")]
        rows.append({
            "mitigation": name,
            "gain_prob": float(pick("held_out", "prob")["change"].sum()),
            "gain_accuracy": float(pick("held_out", "accuracy")["change"].sum()),
            "gain_logit_diff": float(pick("held_out", "logit_diff")["change"].sum()),
            "ppl_before": float(ppl["before"].sum()) if len(ppl) else np.nan,
            "ppl_change": float(ppl["change"].sum()) if len(ppl) else np.nan,
            "ppl_change_rel": float((ppl["change"] / ppl["before"]).sum()) if len(ppl) else np.nan,
            "other_accuracy_change": float(others[others["metric"] == "accuracy"]["change"].mean())
            if len(others) else np.nan,
            "other_prob_change": float(others[others["metric"] == "prob"]["change"].mean()) if len(others) else np.nan,
        })
    return pd.DataFrame(rows)


def suppression_figure(share: pd.DataFrame) -> "Figure":
    """Share of prompts on which each last-layer component lowers the answer's logit diff / probability."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(6.0, 0.5 * len(share) + 2), 4.0), layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(len(share))
    ax.bar(x - 0.2, share["lowers_logit_diff"], 0.4, label="lowers logit diff")
    ax.bar(x + 0.2, share["lowers_prob"], 0.4, label="lowers probability")
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.set_xticks(x, share["component"], rotation=45, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("share of prompts")
    ax.set_title("Last block: where it suppresses the correct answer")
    ax.legend(fontsize=8)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return fig


def mitigation_figure(summary: pd.DataFrame) -> "Figure":
    """Held-out probability gain next to the costs (relative perplexity change, other-relation accuracy)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8.0, 4.0), layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(len(summary))
    cols = [("gain_prob", "held-out p(answer) gain"), ("ppl_change_rel", "generic-text perplexity change (rel.)"),
            ("other_accuracy_change", "other-relation accuracy change")]
    for j, (col, label) in enumerate(cols):
        ax.bar(x + (j - 1) * 0.27, summary[col].fillna(0), 0.27, label=label)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(x, summary["mitigation"], rotation=20, ha="right")
    ax.set_title("Mitigating final-layer suppression: gain and cost")
    ax.legend(fontsize=8)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return fig
