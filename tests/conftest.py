"""Shared fixtures: tiny models of every family (cached per session) and the default model."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from hopscope.models import TINY_FAMILIES, tiny

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


_TINY: dict = {}


def _tiny(family: str):
    if family not in _TINY:
        _TINY[family] = tiny(family)
    return _TINY[family]


@pytest.fixture(scope="session", params=TINY_FAMILIES)
def tiny_model(request):
    """A tiny random model of each supported family."""
    return _tiny(request.param)


@pytest.fixture(scope="session")
def tiny_of():
    """``tiny_of(family)``: the same session-wide tiny model ``tiny_model`` gives for that family."""
    return _tiny


def hf_twin(lm, attn_implementation: str | None = None, **config_changes):
    """A separate HF model with ``lm``'s weights, loaded with transformers' default attention implementation
    for its family (or ``attn_implementation``), never touched by hopscope: the reference for exactness."""
    from transformers import AutoModelForCausalLM

    cfg = copy.deepcopy(lm.model.config)
    cfg._attn_implementation = None
    for key, value in config_changes.items():
        setattr(cfg, key, value)
    twin = AutoModelForCausalLM.from_config(cfg, dtype=lm.dtype, attn_implementation=attn_implementation)
    twin.load_state_dict(lm.model.state_dict())
    return twin.eval()


@pytest.fixture(scope="session")
def make_hf_twin():
    """:func:`hf_twin`, for tests that need a twin with a changed config."""
    return hf_twin


@pytest.fixture(scope="session")
def tiny_hf(tiny_model):
    """``tiny_model``'s HF twin with the family's default attention (SDPA; eager for Gemma 2)."""
    return hf_twin(tiny_model)


@pytest.fixture(scope="session")
def tiny_hf_eager(tiny_model):
    """``tiny_model``'s HF twin with eager attention (it returns attention weights)."""
    return hf_twin(tiny_model, "eager")


@pytest.fixture(scope="session")
def tiny_llama():
    return tiny("llama")


@pytest.fixture(scope="session")
def tiny_gpt2():
    return tiny("gpt2")


@pytest.fixture(scope="session")
def default_model():
    """The embedded default model (SmolLM2-135M-Instruct)."""
    import hopscope

    return hopscope.load_model()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data beside the project root; tests that need it skip when it is absent."""
    path = SHARED / "data"
    if not path.is_dir():
        pytest.skip(f"shared data folder {path} not present")
    return path


def pytest_configure(config):
    """Under pytest-xdist each worker runs torch on one thread (the workers share the machine's cores)."""
    import os

    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)
