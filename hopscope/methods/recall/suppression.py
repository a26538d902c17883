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
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

import numpy as np
import pandas as pd
import torch

from hopscope.engine.answers import score_tokens
from hopscope.lenses.projection import project
from hopscope.methods.recall.collect import LastPosition, logit_diff
from hopscope.methods.recall.linearize import MLPSpec, mlp_input_component, mlp_spec
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


# -- exact replay of the last layer ------------------------------------------------------------------
@dataclass
class LastLayerState:
    """The last layer's inputs and outputs at some positions (any leading shape ``[...]``).

    An edit confined to the last layer changes the logits at a position only through that position's
    own last-layer computation (nothing reads the last layer's outputs at other positions), so the
    edited logits follow exactly from these tensors: the MLP is re-run from its written-out form and
    the result read through the final norm and the unembedding.
    """

    heads: torch.Tensor  # [..., H, d]
    attn: torch.Tensor  # [..., d] attention output (with its bias)
    mlp: torch.Tensor  # [..., d]
    mlp_in: torch.Tensor  # [..., d]
    resid_final: torch.Tensor  # [..., d]

    @classmethod
    def from_last_position(cls, lp: LastPosition, rows: Sequence[int] | None = None) -> "LastLayerState":
        idx = list(range(lp.n)) if rows is None else list(rows)
        return cls(lp.heads[idx, -1], lp.attn[idx, -1], lp.mlp[idx, -1], lp.mlp_in[idx, -1], lp.resid_final[idx])

    @classmethod
    def from_prompts(cls, lm: "LoadedModel", prompts: Sequence[str], *, every_position: bool = False,
                     batch_size: int = 16) -> tuple["LastLayerState", torch.Tensor, torch.Tensor]:
        """Run ``prompts`` once; returns the state (``[n, d]`` at the last position, or ``[n, seq, d]``),
        the input ids ``[n, seq]`` and the attention mask (left-padded, batched to a common width)."""
        from hopscope.engine.runner import run_with_cache

        L = lm.n_layers - 1
        mid = mlp_input_component(lm)
        parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("heads", "attn", "mlp", "mlp_in", "ids", "mask")}
        width = max(len(lm.to_ids(p)) for p in prompts)
        for s in range(0, len(prompts), batch_size):
            chunk = list(prompts[s:s + batch_size])
            _, acts = run_with_cache(lm, chunk, components=("head_out", "attn_out", "mlp_out", mid), layers=[L])
            batch = lm.encode(chunk)
            pad = width - batch.input_ids.shape[1]
            sel = (lambda t: t[:, -1]) if not every_position else (
                lambda t: torch.nn.functional.pad(t, (0, 0) * (t.dim() - 2) + (pad, 0)))
            parts["heads"].append(sel(acts["head_out", L]).float().cpu())
            parts["attn"].append(sel(acts["attn_out", L]).float().cpu())
            parts["mlp"].append(sel(acts["mlp_out", L]).float().cpu())
            parts["mlp_in"].append(sel(acts[mid, L]).float().cpu())
            parts["ids"].append(torch.nn.functional.pad(batch.input_ids.cpu(), (pad, 0),
                                                        value=lm.tokenizer.pad_token_id))
            parts["mask"].append(torch.nn.functional.pad(batch.attention_mask.cpu(), (pad, 0)))
        cat = {k: torch.cat(v) for k, v in parts.items()}
        final = cat["mlp_in"] + cat["mlp"] + (cat["attn"] if mid == "resid_pre" else 0)
        return cls(cat["heads"], cat["attn"], cat["mlp"], cat["mlp_in"], final), cat["ids"], cat["mask"]

    def replay(self, lm: "LoadedModel", attn_delta: torch.Tensor | None = None,
               mlp_edit: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """The final residual after adding ``attn_delta`` to the attention output and passing the MLP's
        (input, output) through ``mlp_edit``; the MLP is re-run when its input changed."""
        spec = mlp_spec(lm, lm.n_layers - 1)
        mlp_in, mlp_out, resid = self.mlp_in, self.mlp, self.resid_final
        if attn_delta is not None:
            resid = resid + attn_delta
            if not lm.adapter.parallel_residual:
                mlp_in = mlp_in + attn_delta
                mlp_out = spec(mlp_in)
        if mlp_edit is not None:
            mlp_out = mlp_edit(mlp_in, mlp_out)
        return resid - self.mlp + mlp_out


def final_logits(lm: "LoadedModel", resid_final: torch.Tensor) -> torch.Tensor:
    """Logits (on the CPU) from final residuals: final norm, unembedding, soft-capping as the model does."""
    return project(lm, resid_final, normalize=True).cpu()


def _neuron_write(spec: MLPSpec, idx: Sequence[int], factor: float):
    cols = list(idx)

    def edit(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return out - (1.0 - factor) * (spec.hidden(x)[..., cols] @ spec.w_out[:, cols].T)
    return edit


# -- causal measurement -----------------------------------------------------------------------------
def final_layer_effects(lm: "LoadedModel", lp: LastPosition, neurons: Sequence[int] = ()) -> pd.DataFrame:
    """Per (prompt, component) of the last block, the effect of removing it at the last position.

    ``effect_logit_diff`` / ``effect_prob`` = clean minus removed: negative means the component lowers the
    correct answer (suppresses it). Components: ``block`` (attention and MLP), ``attn``, ``mlp``, each
    ``head h`` (zeroed; the MLP then sees the change), and ``neurons`` (the given group's write removed).
    Computed exactly by replaying the last layer (equal to zero-ablating these sites with the engine).
    """
    st = LastLayerState.from_last_position(lp)
    zero = lambda x, o: torch.zeros_like(o)  # noqa: E731
    variants: dict[str, torch.Tensor] = {
        "clean": st.resid_final,
        "block": st.replay(lm, -st.attn, zero),
        "attn": st.replay(lm, -st.attn),
        "mlp": st.replay(lm, None, zero),
    }
    for h in range(st.heads.shape[-2]):
        variants[f"head {h}"] = st.replay(lm, -st.heads[..., h, :])
    if neurons:
        variants["neurons"] = st.replay(lm, None, _neuron_write(mlp_spec(lm, lm.n_layers - 1), neurons, 0.0))
    ids = lp.answer_ids
    scores = {}
    for name, resid in variants.items():
        logits = final_logits(lm, resid)
        scores[name] = (logit_diff(logits, ids), score_tokens(logits, ids)["prob"])
    ld0, p0 = scores.pop("clean")
    records = []
    for name, (ld, p) in scores.items():
        for i, it in enumerate(lp.items):
            records.append({"qid": it.qid, "component": name, "effect_logit_diff": float(ld0[i] - ld[i]),
                            "effect_prob": float(p0[i] - p[i]), "clean_prob": float(p0[i]),
                            "clean_logit_diff": float(ld0[i])})
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

    def replay(self, lm: "LoadedModel", st: LastLayerState) -> torch.Tensor:
        """Final residuals of ``st`` under this edit (exact; the edit must be on the last layer)."""
        if self.layer not in (lm.n_layers - 1, -1):
            raise NotImplementedError("replay covers last-layer edits; use `applied` and a full forward instead")
        if self.kind == "heads":
            return st.replay(lm, -(1.0 - self.factor) * st.heads[..., self.heads, :].sum(-2))
        if self.kind == "neurons":
            return st.replay(lm, None, _neuron_write(mlp_spec(lm, lm.n_layers - 1), self.neurons, self.factor))
        if self.kind == "project":
            d = (self.direction / self.direction.norm()).float()
            if self.target == "mlp":
                return st.replay(lm, None, lambda x, o: o - (o @ d)[..., None] * d)
            return st.replay(lm, -(st.attn @ d)[..., None] * d)
        raise ValueError(f"unknown mitigation kind {self.kind!r}")

    @contextlib.contextmanager
    def applied(self, lm: "LoadedModel") -> Iterator[None]:
        """Install the edit as forward hooks (every position) for the duration of the block."""
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
                dd = d.to(device=out.device, dtype=out.dtype)
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


@dataclass
class EvalSet:
    """Prompts (scored on their answers) or text windows (scored by perplexity), cached at the last layer."""

    name: str
    state: LastLayerState
    answer_ids: torch.Tensor | None = None  # prompts
    input_ids: torch.Tensor | None = None  # text windows [b, s]
    mask: torch.Tensor | None = None

    @classmethod
    def from_items(cls, lm: "LoadedModel", name: str, items: Sequence[RecallItem]) -> "EvalSet":
        st, _, _ = LastLayerState.from_prompts(lm, [it.prompt for it in items])
        return cls(name, st, answer_ids=torch.tensor([it.answer_id for it in items]))

    @classmethod
    def from_last_position(cls, name: str, lp: LastPosition, rows: Sequence[int]) -> "EvalSet":
        return cls(name, LastLayerState.from_last_position(lp, rows), answer_ids=lp.answer_ids[list(rows)])

    @classmethod
    def from_text(cls, lm: "LoadedModel", text: str, *, window: int = 64, n_windows: int = 8,
                  name: str = "generic_text") -> "EvalSet":
        """``n_windows`` consecutive windows of about ``window`` tokens of ``text``."""
        ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
        n_windows = min(n_windows, len(ids) // window)
        if n_windows < 1:
            raise ValueError(f"the text has {len(ids)} tokens: too short for one window of {window}")
        windows = [lm.tokenizer.decode(ids[i * window:(i + 1) * window]) for i in range(n_windows)]
        st, input_ids, mask = LastLayerState.from_prompts(lm, windows, every_position=True)
        return cls(name, st, input_ids=input_ids, mask=mask)

    @property
    def size(self) -> int:
        return int(self.mask[:, 1:].sum()) if self.mask is not None else len(self.answer_ids)

    def metrics(self, lm: "LoadedModel", resid: torch.Tensor) -> dict[str, float]:
        """``prob``/``accuracy``/``logit_diff`` means for prompts, ``perplexity`` for text."""
        logits = final_logits(lm, resid)
        if self.answer_ids is not None:
            s = score_tokens(logits, self.answer_ids)
            return {"prob": float(s["prob"].mean()), "accuracy": float((s["rank"] == 0).float().mean()),
                    "logit_diff": float(logit_diff(logits, self.answer_ids).mean())}
        logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, self.input_ids[:, 1:, None])[..., 0]
        valid = (self.mask[:, 1:] * self.mask[:, :-1]).bool()
        return {"perplexity": math.exp(float(-logp[valid].mean()))}


def evaluate_mitigations(lm: "LoadedModel", mitigations: Sequence[Mitigation],
                         sets: Sequence[EvalSet]) -> pd.DataFrame:
    """One row per (mitigation, eval set, metric) with ``before``, ``after``, ``change`` and ``n``."""
    rows = []
    for es in sets:
        before = es.metrics(lm, es.state.resid_final)
        for mit in mitigations:
            after = es.metrics(lm, mit.replay(lm, es.state))
            for metric, b in before.items():
                rows.append({**mit.describe(), "eval_set": es.name, "metric": metric, "before": b,
                             "after": after[metric], "change": after[metric] - b, "n": es.size})
    return pd.DataFrame(rows)


def mitigation_summary(evals: pd.DataFrame) -> pd.DataFrame:
    """One row per mitigation: gain in probability on the training prompts (when measured: the honest way to
    pick a mitigation), held-out gain in probability, accuracy and logit difference, perplexity change
    (absolute and relative), and the mean change in accuracy and probability over the other relations."""
    rows = []
    for name, g in evals.groupby("mitigation", sort=False):
        pick = lambda s, m: g[(g["eval_set"] == s) & (g["metric"] == m)]  # noqa: E731
        ppl = g[g["metric"] == "perplexity"]
        others = g[g["eval_set"].str.startswith("other:")]
        rows.append({
            "mitigation": name,
            "train_gain_prob": float(pick("train", "prob")["change"].sum()) if len(pick("train", "prob")) else np.nan,
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
    ax.set_ylim(0, 1.22)
    ax.set_ylabel("share of prompts")
    ax.set_title("Last block: where it suppresses the correct answer")
    ax.legend(fontsize=8, ncol=2, loc="upper center")
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
