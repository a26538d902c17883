"""Head-level injection and ablation: injecting into one head equals adding to that head's output."""

from __future__ import annotations

import pytest
import torch

from hopscope.engine import Site, add, run, zero_ablate
from hopscope.methods.injection_controls import InjectionPair
from hopscope.methods.injection_heads import head_ablation, head_injection, head_memory, head_write_matrix
from hopscope.methods.injection import MemoryBank

PROMPT = "The first president of the United States fought in the"
LAYER = 1


def _z_hook(lm, head, fn):
    """A plain pre-hook on the output projection that edits head ``head``'s slice of z."""
    dh = lm.d_head

    def hook(module, args):
        z = args[0].clone()
        z[..., head * dh:(head + 1) * dh] = fn(z[..., head * dh:(head + 1) * dh])
        return (z, *args[1:])
    return lm.adapter.out_proj[LAYER].register_forward_pre_hook(hook)


def _plain_logits(lm, prompt, head, fn):
    h = _z_hook(lm, head, fn)
    try:
        with torch.no_grad():
            return lm.model(input_ids=torch.tensor([lm.to_ids(prompt)])).logits[0, -1]
    finally:
        h.remove()


def test_injecting_into_one_head_equals_adding_to_its_output(tiny_llama):
    lm = tiny_llama
    vec = 3.0 * MemoryBank(lm).vector("George Washington")
    for head in range(lm.n_heads):
        v_h = head_memory(lm, LAYER, head, vec, "project")
        got = run(lm, [PROMPT], [[add(Site(LAYER, "head_out", None, head=head), v_h)]], last_only=True).logits[0]
        coeff = torch.linalg.pinv(head_write_matrix(lm, LAYER, head).double()) @ vec.double()
        ref = _plain_logits(lm, PROMPT, head, lambda z: z + coeff.float())  # the head's own output grows by W_h c = v_h
        assert torch.allclose(got, ref, atol=1e-4), head


def test_projection_lies_in_the_head_output_space(tiny_llama):
    lm = tiny_llama
    w = head_write_matrix(lm, LAYER, 2)
    z = torch.randn(lm.d_head)
    assert torch.allclose(head_memory(lm, LAYER, 2, w @ z), w @ z, atol=1e-4)  # already writable: unchanged
    v = torch.randn(lm.d_model)
    p = head_memory(lm, LAYER, 2, v)
    assert torch.allclose(head_memory(lm, LAYER, 2, p), p, atol=1e-4)  # idempotent
    assert p.norm() < v.norm()


def test_full_head_injection_is_the_same_for_every_head(tiny_llama):
    lm = tiny_llama
    v = MemoryBank(lm).vector("Paris")
    ivs = [[add(Site(LAYER, "head_out", None, head=h), v)] for h in range(lm.n_heads)]
    ivs.append([add(Site(LAYER, "attn_out", None), v)])
    logits = run(lm, [PROMPT] * len(ivs), ivs, last_only=True).logits
    assert torch.allclose(logits, logits[-1:].expand_as(logits), atol=1e-5)


def test_head_ablation_matches_zeroing_z(tiny_llama):
    lm = tiny_llama
    pair = InjectionPair("q", PROMPT, "George Washington fought in the", "George Washington", "Revolutionary War")
    df = head_ablation(lm, [pair], LAYER, [0, 3], prompt_kinds=("obscure",))
    aid = lm.tokenizer(" Revolutionary", add_special_tokens=False)["input_ids"][0]
    for head in (0, 3):
        ref = torch.log_softmax(_plain_logits(lm, PROMPT, head, torch.zeros_like), -1)[aid]
        assert df[df["head"] == head].logp1.iloc[0] == pytest.approx(float(ref), abs=1e-4)
    engine = run(lm, [PROMPT], [[zero_ablate(Site(LAYER, "head_out", None, head=3))]], last_only=True).logits[0]
    assert df[df["head"] == 3].logp1.iloc[0] == pytest.approx(float(torch.log_softmax(engine, -1)[aid]), abs=1e-5)


def test_head_injection_rows(tiny_llama):
    lm = tiny_llama
    pairs = [InjectionPair("q", PROMPT, "George Washington fought in the", "George Washington", "Revolutionary War")]
    df = head_injection(lm, pairs, LAYER, range(lm.n_heads), MemoryBank(lm), 0.0)
    assert len(df) == lm.n_heads and abs(df.dlogp).max() < 1e-5
    with pytest.raises(ValueError, match="mode"):
        head_memory(lm, LAYER, 0, torch.zeros(lm.d_model), "half")
