"""Final-layer anti-overconfidence (Lv et al. 2024): does the last block lower the correct answer?

Per prompt, each component of the last block is removed at the last position (the block, its attention, its
MLP, each of its heads), and the change in the answer's logit difference and probability is recorded: a
negative effect (clean minus removed) means the component suppresses the answer. Removing the whole block at
the last position reads the residual before it through the final norm, i.e. the logit lens one layer down.
These removals are computed exactly by replaying the last layer from one cached pass
(:class:`LastLayerState`; the tests hold it equal to zero-ablating the same sites with the engine).
Attribution: each last-layer neuron's DLA (neuron n writes ``act_n * W_out[:, n]``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import pandas as pd
import torch

from hopscope.engine import score_tokens
from hopscope.lenses import project
from hopscope.methods.recall.collect import LastPosition, answer_logit_diff
from hopscope.methods.recall.linearize import mlp_spec

if TYPE_CHECKING:
    from hopscope.models.loaded import LoadedModel


def neuron_dla(lm: "LoadedModel", lp: LastPosition, layer: int | None = None) -> torch.Tensor:
    """``[n, m]`` DLA of each neuron of the MLP of ``layer`` (default: last) at the last position;
    its sum plus ``u . b_out`` equals the MLP's DLA."""
    layer = lm.n_layers - 1 if layer is None else layer
    spec = mlp_spec(lm, layer)
    return spec.hidden(lp.mlp_in[:, layer]) * (lp.u @ spec.w_out)


@dataclass
class LastLayerState:
    """The last layer's inputs and outputs at the last position of ``n`` prompts.

    An edit confined to the last layer changes the last position's logits only through that position's own
    last-layer computation, so the edited logits follow exactly from these tensors: the MLP is re-run from its
    written-out form (:func:`hopscope.methods.recall.linearize.mlp_spec`) and the result is read through the
    final norm and the unembedding. The tests hold this equal to the engine's interventions.
    """

    heads: torch.Tensor  # [n, H, d]
    attn: torch.Tensor  # [n, d] attention output (with its bias)
    mlp: torch.Tensor  # [n, d]
    mlp_in: torch.Tensor  # [n, d]
    resid_final: torch.Tensor  # [n, d]

    @classmethod
    def of(cls, lp: LastPosition) -> "LastLayerState":
        return cls(lp.heads[:, -1], lp.attn[:, -1], lp.mlp[:, -1], lp.mlp_in[:, -1], lp.resid_final)

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
    """Logits (on the CPU) of final residuals: final norm, unembedding, soft-capping as the model does."""
    return project(lm, resid_final, normalize=True).cpu()


def removals(lm: "LoadedModel", st: LastLayerState) -> dict[str, torch.Tensor]:
    """Final residuals with each component of the last block removed (zeroed) at the last position: the
    block, its attention, its MLP, each head (the MLP then sees the change)."""
    zero = lambda x, o: torch.zeros_like(o)  # noqa: E731
    out = {"block": st.replay(lm, -st.attn, zero), "attn": st.replay(lm, -st.attn), "mlp": st.replay(lm, None, zero)}
    out.update({f"head {h}": st.replay(lm, -st.heads[:, h]) for h in range(st.heads.shape[1])})
    return out


def final_layer_effects(lm: "LoadedModel", lp: LastPosition) -> pd.DataFrame:
    """One row per (prompt, component of the last block): ``effect_logit_diff`` / ``effect_prob`` = clean
    minus removed (negative: the component lowers the correct answer), and the clean values. Exact replay of
    the last layer (equal to zero-ablating these sites at the last position with the engine)."""
    st = LastLayerState.of(lp)
    ids = lp.answer_ids
    clean = final_logits(lm, st.resid_final)
    ld0, p0 = answer_logit_diff(clean, ids), score_tokens(clean, ids)["prob"]
    frames = []
    for name, resid in removals(lm, st).items():
        logits = final_logits(lm, resid)
        ld, p = answer_logit_diff(logits, ids), score_tokens(logits, ids)["prob"]
        frames.append(pd.DataFrame({"qid": [it.qid for it in lp.items], "component": name,
                                    "effect_logit_diff": (ld0 - ld).numpy(), "effect_prob": (p0 - p).numpy(),
                                    "clean_logit_diff": ld0.numpy(), "clean_prob": p0.numpy()}))
    df = pd.concat(frames, ignore_index=True)
    order = {q: i for i, q in enumerate(it.qid for it in lp.items)}
    return df.sort_values("qid", key=lambda s: s.map(order), kind="stable").reset_index(drop=True)


def suppression_share(effects: pd.DataFrame) -> pd.DataFrame:
    """Per component: share of prompts on which it lowers the answer's logit difference / probability, and
    the mean effects."""
    g = effects.groupby("component", sort=False)
    return pd.DataFrame({
        "lowers_logit_diff": g["effect_logit_diff"].apply(lambda s: float((s < 0).mean())),
        "lowers_prob": g["effect_prob"].apply(lambda s: float((s < 0).mean())),
        "mean_effect_logit_diff": g["effect_logit_diff"].mean(),
        "mean_effect_prob": g["effect_prob"].mean(),
        "n": g.size(),
    }).reset_index()


def last_layer_dla(lp: LastPosition) -> pd.DataFrame:
    """One row per (prompt, last-layer component): DLA of ``attn`` (heads + bias), ``mlp`` and each ``head h``."""
    L = lp.heads.shape[1] - 1
    rest = lp.rest_dla()
    heads = lp.head_dla()[:, L]
    rows = []
    for i, it in enumerate(lp.items):
        rows.append({"qid": it.qid, "component": "attn", "dla": float(heads[i].sum() + rest["attn_bias"][i, L])})
        rows.append({"qid": it.qid, "component": "mlp", "dla": float(rest["mlp"][i, L])})
        rows.extend({"qid": it.qid, "component": f"head {h}", "dla": float(heads[i, h])} for h in range(heads.shape[1]))
    return pd.DataFrame(rows)
