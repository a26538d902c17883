"""The intervention engine: the only code in hopscope that runs the model or installs hooks.

Sites and interventions describe what to read or write; ``run`` / ``run_with_cache`` run a batch;
``prompt_pass`` reruns one shared prompt from any position for many rows (cached prefix, staircase);
``generate`` decodes greedily with early stopping; :mod:`hopscope.engine.scoring` scores the outputs.
"""

from hopscope.engine.generate import Generation, generate
from hopscope.engine.interventions import (
    Intervention, add, cache, knockout, mean_ablate, replace, scale, transform, zero_ablate,
)
from hopscope.engine.passes import prompt_pass, run_last_position
from hopscope.engine.prefix import clear_prefix_cache, weights_changed
from hopscope.engine.runner import Activations, RunResult, run, run_with_cache
from hopscope.engine.scoring import (
    MatchRule, alias_match, alias_stopper, answer_token_ids, first_token_id, logit_diff, logit_vs_mean, normalise_text,
    score_tokens,
)
from hopscope.engine.sites import COMPONENTS, HOOK_NAMES, Site, as_site

__all__ = [
    "Activations", "COMPONENTS", "Generation", "HOOK_NAMES", "Intervention", "MatchRule", "RunResult", "Site", "add",
    "alias_match", "alias_stopper", "answer_token_ids", "as_site", "cache", "clear_prefix_cache", "first_token_id",
    "generate", "knockout", "logit_diff", "logit_vs_mean", "mean_ablate", "normalise_text", "prompt_pass", "replace", "run",
    "run_last_position", "run_with_cache", "scale", "score_tokens", "transform", "weights_changed", "zero_ablate",
]
