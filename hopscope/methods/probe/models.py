"""The models a probe run reads: the k-th smallest GPT-2 trained in the run (its weights travel as a table,
so later stages and other executors rebuild it exactly) and random initialisations of a model's architecture
(the probe's baseline)."""

from __future__ import annotations

import copy
import hashlib
from typing import Any

import pandas as pd
import torch
from transformers import AutoModelForCausalLM

from hopscope.data.kth_smallest import KthSmallestConfig
from hopscope.methods.probe.settings import Settings
from hopscope.models import LoadedModel
from hopscope.train.kth_smallest import GPT2Arch, model_from_weights, scratch_tokenizer

_TRAINED: dict[str, LoadedModel] = {}
_RANDOM: dict[tuple, LoadedModel] = {}


def arch_of(settings: Settings) -> GPT2Arch:
    return GPT2Arch(n_layers=settings.layers, n_heads=settings.heads, d_model=settings.width,
                    n_positions=max(32, settings.n + 8))


def trained_model(settings: Settings, weights: pd.DataFrame) -> LoadedModel:
    """The model of the ``train`` stage, rebuilt from its ``trained_weights`` table (cached per content)."""
    key = hashlib.sha1(b"".join(bytes(b) for b in weights["data"])).hexdigest() + repr(arch_of(settings))
    if key not in _TRAINED:
        task = KthSmallestConfig(n=settings.n, k=settings.k, pool_size=settings.pool_size, seed=settings.seed)
        tok = scratch_tokenizer("numbers", task)
        model = model_from_weights(weights, tok, arch_of(settings))
        _TRAINED.clear()
        _TRAINED[key] = LoadedModel(model=model, tokenizer=tok, name="kth-smallest-gpt2",
                                    source=f"trained in this run (seed {settings.seed})")
    return _TRAINED[key]


def random_init_like(lm: LoadedModel, seed: int) -> LoadedModel:
    """The same architecture and tokenizer with freshly initialised weights (seeded), cached per model."""
    config = copy.deepcopy(lm.model.config)
    key = (config.to_json_string(), str(lm.dtype), str(lm.device), int(seed))
    if key not in _RANDOM:
        if len(_RANDOM) >= 4:
            _RANDOM.pop(next(iter(_RANDOM)))
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=lm.dtype).to(lm.device)
        _RANDOM[key] = LoadedModel(model=model, tokenizer=lm.tokenizer, name=f"{lm.name}-random-init-{seed}",
                                   source=f"random init (seed {seed}) of {lm.source}")
    return _RANDOM[key]


def probed_model(lm: LoadedModel, settings: Settings, tables: dict[str, Any]) -> LoadedModel:
    """The model the probe reads: the one trained in the run (``train=True``) or ``lm``."""
    if settings.kth and settings.train:
        return trained_model(settings, tables["trained_weights"])
    return lm


def random_seeds(settings: Settings) -> list[int]:
    """Seeds of the random initialisations (distinct from the training seed)."""
    return [10_000 + 97 * settings.seed + i for i in range(settings.n_random_init)]
