"""The intervention engine: sites, interventions, the batched runner, the last-position fast path."""

from hopscope.engine.fast import generate, run_last_position
from hopscope.engine.interventions import (
    Intervention, add, cache, knockout, mean_ablate, replace, scale, zero_ablate,
)
from hopscope.engine.runner import RunResult, run, run_with_cache
from hopscope.engine.sites import COMPONENTS, Site

__all__ = [
    "COMPONENTS", "Intervention", "RunResult", "Site", "add", "cache", "generate", "knockout", "mean_ablate",
    "replace", "run", "run_last_position", "run_with_cache", "scale", "zero_ablate",
]

from hopscope.engine.answers import alias_match, answer_token_ids, first_token_id, greedy_texts, score_tokens  # noqa: E402

__all__ += ["alias_match", "answer_token_ids", "first_token_id", "greedy_texts", "score_tokens"]
