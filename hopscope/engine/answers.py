"""Transitional alias of :mod:`hopscope.engine.scoring` (removed once every caller imports scoring)."""

from hopscope.engine.scoring import *  # noqa: F401,F403
from hopscope.engine.scoring import alias_match, answer_token_ids, first_token_id, normalise_text, score_tokens  # noqa: F401
