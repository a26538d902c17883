"""Lenses: logit lens, sublayer and per-head vocabulary projections, trainable attention lenses."""

from hopscope.lenses.logit_lens import logit_lens
from hopscope.lenses.projection import project, top_tokens

__all__ = ["logit_lens", "project", "top_tokens"]
