"""The engine's linear route (hopscope.engine.linear): inside engine calls every float32 CPU nn.Linear runs on a
packed oneDNN weight, close to torch's linear; calls outside the engine are untouched bit for bit; a changed
weight is never served from a stale packed copy; training, other dtypes and copies of the model still work."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F

import hopscope
from hopscope.engine import Site, generate, linear, prompt_pass, replace, run, weights_changed
from hopscope.models import TINY_FAMILIES
from hopscope.models.tiny import tiny

PROMPT = "The capital of France is Paris, and the capital of Spain is"

pytestmark = pytest.mark.skipif(linear.route() != "onednn", reason="this torch has no oneDNN linear kernel "
                                "(or HOPSCOPE_LINEAR=torch): the packed route is not taken")


@pytest.fixture
def torch_route():
    """Switch the engine to a route for the rest of the test (the packed route is restored after it)."""
    with linear.using("onednn"):
        yield linear.set_route


def routed(model: torch.nn.Module) -> list[torch.nn.Linear]:
    return [m for m in model.modules() if isinstance(m, torch.nn.Linear)]


def direct_logits(lm, text: str) -> torch.Tensor:
    ids = torch.tensor([lm.to_ids(text)])
    with torch.no_grad():
        return lm.model(input_ids=ids).logits


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_engine_calls_pack_every_linear_and_match_torchs_linear(family, torch_route):
    """After one engine call every nn.Linear holds a packed copy (the route was taken), the logits equal the
    same engine call on torch's linear to float32 rounding, and greedy tokens agree."""
    lm = tiny(family)
    rows = [[], [replace(Site(1, "resid_post", -1), torch.ones(lm.d_model))]]
    fast = run(lm, [PROMPT]).logits
    assert routed(lm.model) and linear.packed_bytes(lm.model) == sum(4 * m.weight.numel() for m in routed(lm.model))
    fast_rows = prompt_pass(lm, PROMPT, rows).logits
    fast_tokens = generate(lm, PROMPT, rows, max_new_tokens=4).tokens
    torch_route("torch")
    torch.testing.assert_close(fast, run(lm, [PROMPT]).logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast_rows, prompt_pass(lm, PROMPT, rows).logits, rtol=1e-5, atol=1e-5)
    assert generate(lm, PROMPT, rows, max_new_tokens=4).tokens == fast_tokens


def test_calls_outside_the_engine_are_untouched():
    """A user's own forward gives the same bits before and after the engine installed its route, and packs
    nothing; the installed modules are still nn.Linear with their own parameters and state_dict."""
    lm = tiny("llama")
    before = direct_logits(lm, PROMPT)
    state = {k: v.clone() for k, v in lm.model.state_dict().items()}
    run(lm, [PROMPT])
    linear.drop_packed(lm.model)
    after = direct_logits(lm, PROMPT)
    assert torch.equal(before, after)
    assert linear.packed_bytes(lm.model) == 0
    assert all(isinstance(m, torch.nn.Linear) for m in routed(lm.model))
    assert all(torch.equal(v, state[k]) for k, v in lm.model.state_dict().items())


@pytest.mark.parametrize("edit", ["in_place", "optimizer_step", "new_parameter", "data_then_weights_changed"])
def test_a_changed_weight_is_never_served_stale(edit, torch_route):
    """Each way of changing a weight (an in-place write, an optimizer step, a new Parameter, a write through
    ``.data`` declared with weights_changed) reaches the next engine call: its logits equal torch's linear on the
    edited model, not the packed copy of the old weights."""
    lm = tiny("llama")
    old = run(lm, [PROMPT], last_only=True).logits
    head = lm.model.lm_head
    if edit == "in_place":
        with torch.no_grad():
            head.weight.mul_(-2.0)
    elif edit == "optimizer_step":
        opt = torch.optim.SGD([head.weight], lr=10.0)
        x = torch.randn(3, head.in_features)
        head(x).square().sum().backward()
        opt.step()
    elif edit == "new_parameter":
        head.weight = torch.nn.Parameter(torch.randn_like(head.weight))
    else:
        head.weight.data.mul_(-2.0)
        weights_changed(lm)
    new = run(lm, [PROMPT], last_only=True).logits
    assert (new - old).abs().max() > 1e-2  # the edit shows
    torch_route("torch")
    torch.testing.assert_close(new, run(lm, [PROMPT], last_only=True).logits, rtol=1e-4, atol=1e-4)


def test_gradients_run_torchs_linear_inside_the_route():
    """With gradients on, a routed layer computes F.linear, so training through it is exact."""
    lm = tiny("llama")
    run(lm, [PROMPT])
    layer = lm.model.lm_head
    x = torch.randn(2, layer.in_features, requires_grad=True)
    with linear.active(), torch.enable_grad():
        y = layer(x)
    assert y.grad_fn is not None and torch.equal(y, F.linear(x, layer.weight, layer.bias))
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_other_dtypes_keep_torchs_linear():
    lm = tiny("llama")
    lm.model.to(torch.bfloat16)
    run(lm, [PROMPT])
    assert linear.packed_bytes(lm.model) == 0


def test_copies_of_an_installed_model_work():
    """deepcopy gives a model whose engine logits equal the original's bit for bit (its packed copies are its
    own); an installed layer pickles."""
    lm = tiny("llama")
    ref = run(lm, [PROMPT]).logits
    twin = hopscope.wrap(copy.deepcopy(lm.model), lm.tokenizer)
    assert linear.packed_bytes(twin.model) == 0
    assert torch.equal(run(twin, [PROMPT]).logits, ref)
    layer = pickle.loads(pickle.dumps(lm.model.lm_head))
    assert torch.equal(layer.weight, lm.model.lm_head.weight)


def test_wrong_route_names_fail_clearly(monkeypatch):
    with pytest.raises(ValueError, match="unknown linear route 'mkl'"):
        linear.set_route("mkl")
    with linear.using("torch"):
        assert linear.route() == "torch"
    assert linear.route() == "onednn"
    monkeypatch.setenv("HOPSCOPE_LINEAR", "fast")
    assert "HOPSCOPE_LINEAR='fast' is not a linear route" in linear.env_problem()
    monkeypatch.setenv("HOPSCOPE_LINEAR", "torch")
    assert linear.env_problem() is None
