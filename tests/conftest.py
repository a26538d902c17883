"""Shared fixtures: tiny models of every family (cached per session) and the default model."""

from __future__ import annotations

from pathlib import Path

import pytest

from hopscope.models import TINY_FAMILIES, tiny

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session", params=TINY_FAMILIES)
def tiny_model(request):
    """A tiny random model of each supported family."""
    return tiny(request.param)


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
