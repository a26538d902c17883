"""The logit lens: every layer's residual stream (or sublayer output) read through the unembedding."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import pandas as pd
import torch

from hopscope.engine import first_token_id, run_with_cache, score_tokens
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
            raise ValueError(f"logit lens component {c!r} not supported; choose from {', '.join(LENS_COMPONENTS)}")
    n = len(lm.to_ids(prompt))
    if not -n <= position < n:
        raise ValueError(f"position {position} is outside the prompt of {n} tokens")
    target_ids = {}
    for t in targets:
        try:
            target_ids[t] = first_token_id(lm.tokenizer, t)
        except ValueError as err:
            raise ValueError(f"target {t!r}: {err}") from None
    _, acts = run_with_cache(lm, [prompt], components=components)
    rows = []
    for comp in components:
        vecs = torch.stack([acts[comp, l][0, position] for l in range(lm.n_layers)])  # [L, d]
        logits = project(lm, vecs, normalize=True)
        tops = top_tokens(lm, logits, k)
        probs = torch.softmax(logits, -1)
        scores = {t: score_tokens(logits, [tid] * lm.n_layers) for t, tid in target_ids.items()}
        for layer in range(lm.n_layers):
            row = {"component": comp, "layer": layer, "top_tokens": tops[layer],
                   "top_prob": float(probs[layer].max())}
            for t, s in scores.items():
                row[f"rank[{t}]"] = int(s["rank"][layer])
                row[f"prob[{t}]"] = float(s["prob"][layer])
            rows.append(row)
    return pd.DataFrame(rows)
