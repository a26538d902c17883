"""MechanisticProbe (Hou et al., EMNLP 2023): probe attention for the reasoning tree a model follows.

Statement features are the attention a statement receives from the query, per layer; two kNN probes
recover which statements are used (P1) and at which depth of the reasoning tree (P2); their macro-F1 is
normalised against random initialisations of the same architecture (the score S). Tasks: the k-th smallest
element with a small GPT-2 trained in the run, and ProofWriter questions read by the model given. Causal
checks: head entropy, head masking, corruption. See ``docs/probe.md``.

    result = hopscope.methods.probe.run(lm, settings=Settings.quick())
"""

from __future__ import annotations

from typing import Any

from hopscope.methods.probe.analysis import ANALYSIS, task_config
from hopscope.methods.probe.models import arch_of
from hopscope.methods.probe.settings import Settings
from hopscope.models import LoadedModel
from hopscope.pipeline import execute
from hopscope.results import Result
from hopscope.train.kth_smallest import new_gpt2, scratch_tokenizer


def run(lm=None, data: Any = None, settings: Settings | None = None, *, run_folder: Any = None,
        progress: bool = True) -> Result:
    """Run the probe. ``lm``: the model ProofWriter questions are read by, or (k-th smallest with
    ``train=False``) the model probed; with ``train=True`` the model is trained in the run and ``lm`` may be
    None. ``data``: ProofWriter records or a jsonl path (``task="proofwriter"``)."""
    settings = settings if settings is not None else Settings()
    if lm is None:
        if not (settings.kth and settings.train):
            raise ValueError("the probe needs a model unless it trains its own (task='kth_smallest', train=True)")
        lm = untrained(settings)
    return execute(ANALYSIS, lm, data, settings, run_folder=run_folder, progress=progress)


def untrained(settings: Settings):
    """The architecture the run trains, with its initial weights (what a run folder records as the model)."""
    tok = scratch_tokenizer("numbers", task_config(settings))
    return LoadedModel(model=new_gpt2(tok, arch_of(settings), seed=settings.seed), tokenizer=tok,
                       name="kth-smallest-gpt2", source="trained in this run")


__all__ = ["ANALYSIS", "Result", "Settings", "run"]
