"""The logit lens: every layer's residual stream (or sublayer output) read through the unembedding."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import pandas as pd
import torch

from hopscope.engine.answers import first_token_id, score_tokens
from hopscope.engine.runner import run_with_cache
from hopscope.lenses.projection import project, top_tokens

if TYPE_CHECKING:
    from hopscope.models.loaded import LoadedModel

LENS_COMPONENTS = ("resid_post", "attn_out", "mlp_out")


def logit_lens(
    lm: "LoadedModel",
    prompt: str,
    targets: Sequence[str] = (),
    *,
    k: int = 5,
    components: Sequence[str] = ("resid_post",),
    position: int = -1,
) -> pd.DataFrame:
    """One row per (component, layer): top-``k`` tokens and each target's rank and probability.

    ``resid_post`` goes through the final norm (the logit lens proper); sublayer outputs
    (``attn_out``, ``mlp_out``) are projected through the final norm too, so their ranks are comparable.
    The last layer's ``resid_post`` row equals the model's own output distribution.
    """
    for c in components:
        if c not in LENS_COMPONENTS:
            raise ValueError(f"logit lens component {c!r} not supported; choose from {LENS_COMPONENTS}")
    target_ids = {t: first_token_id(lm.tokenizer, t) for t in targets}
    _, acts = run_with_cache(lm, [prompt], components=components)
    rows = []
    for comp in components:
        vecs = torch.stack([acts[comp, l][0, position] for l in range(lm.n_layers)])  # [L, d]
        logits = project(lm, vecs, normalize=True)
        tops = top_tokens(lm, logits, k)
        probs = torch.softmax(logits, -1)
        for layer in range(lm.n_layers):
            row = {"component": comp, "layer": layer, "top_tokens": tops[layer],
                   "top_prob": float(probs[layer].max())}
            for t, tid in target_ids.items():
                s = score_tokens(logits[layer:layer + 1], [tid])
                row[f"rank[{t}]"] = int(s["rank"][0])
                row[f"prob[{t}]"] = float(s["prob"][0])
            rows.append(row)
    return pd.DataFrame(rows)


def target_table(df: pd.DataFrame, target: str) -> pd.DataFrame:
    """The columns of one target, renamed to ``rank`` and ``prob``."""
    return df.rename(columns={f"rank[{target}]": "rank", f"prob[{target}]": "prob"})[
        ["component", "layer", "rank", "prob", "top_tokens"]]
