"""Memory injection, per-head projections and attention lenses (Sakarvadia et al. 2023).

Entry point: :func:`run` (the analysis :data:`ANALYSIS`, registered as ``"injection"``). Parts:
:mod:`.pairs` (prompt pairs, BOS, the question's positions), :mod:`.memories` (memory tokenization and
vectors), :mod:`.controls` (random, other-bridge and part-of-speech memories), :mod:`.grid` (injection rows
through the engine), :mod:`.summary` (trimmed mean, the best cell), :mod:`.heads` (per-head projected
injection and ablation), :mod:`.projections` (per-layer and per-head projections), :mod:`.tables`,
:mod:`.claims`, :mod:`.report`. The lens itself lives in :mod:`hopscope.lenses.attention_lens` and its
training in :mod:`hopscope.train.lens`.
"""

from hopscope.methods.injection.analysis import ANALYSIS, run
from hopscope.methods.injection.pairs import InjectionPair, load_pairs
from hopscope.methods.injection.settings import Settings

__all__ = ["ANALYSIS", "InjectionPair", "Settings", "load_pairs", "run"]
