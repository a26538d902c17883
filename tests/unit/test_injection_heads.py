"""Head-level injection: the projected memory lies in the head's output space and equals adding to the head's
own value vector; the projection on every head of a full-rank W_O is the whole memory; ablation is zeroing
the head; random head sets are seeded and exclude the top set."""

from __future__ import annotations

import torch

from hopscope.engine import Site, add, run, transform, zero_ablate
from hopscope.methods.injection.grid import Where
from hopscope.methods.injection.heads import (
    head_ablation, head_set_injection, head_write_matrix, project_on_heads, random_head_sets,
)
from hopscope.methods.injection.memories import MemoryBank, make_memory

PROMPT = "The first president of the United States fought in the"
LAYER = 1


def _memory(lm) -> torch.Tensor:
    return 3.0 * MemoryBank(lm).vectors([make_memory(lm, "gold", 0, "George Washington")])[0]


def test_projected_memory_equals_growing_the_heads_value_vector(tiny_llama):
    """Adding P_h m to attn_out is adding c = pinv(W_O^h) m to head h's value vector z_h (an engine transform)."""
    lm = tiny_llama
    vec = _memory(lm)
    for head in range(lm.n_heads):
        v_h = project_on_heads(lm, LAYER, [head], vec)
        got = run(lm, [PROMPT], [[add(Site(LAYER, "head_out", None, head=head), v_h)]], last_only=True).logits[0]
        coeff = (torch.linalg.pinv(head_write_matrix(lm, LAYER, [head])) @ vec.double()).float()
        ref = run(lm, [PROMPT], [[transform(Site(LAYER, "head_out", None, head=head), lambda z, r: z + coeff)]],
                  last_only=True).logits[0]
        assert torch.allclose(got, ref, atol=1e-4), head


def test_projection_lies_in_the_head_output_space_and_all_heads_give_the_memory(tiny_llama):
    lm = tiny_llama
    vec = _memory(lm)
    w = head_write_matrix(lm, LAYER, [2])
    v = project_on_heads(lm, LAYER, [2], vec).double()
    assert torch.allclose(w @ (torch.linalg.pinv(w) @ v), v, atol=1e-5)  # idempotent: already in the space
    assert (v - vec.double()).norm() > 1e-3  # one head cannot write all of it
    assert lm.n_heads * lm.d_head == lm.d_model
    full = project_on_heads(lm, LAYER, list(range(lm.n_heads)), vec)
    assert torch.allclose(full, vec, atol=1e-4)


def test_head_ablation_is_zeroing_the_heads_value_vector(tiny_llama):
    lm = tiny_llama
    df = head_ablation(lm, PROMPT, "Revolutionary War", LAYER, Where(0, None))
    assert df["head"].tolist() == list(range(lm.n_heads))
    tid = lm.tokenizer(" Revolutionary", add_special_tokens=False)["input_ids"][0]
    for h in range(lm.n_heads):
        ref = run(lm, [PROMPT], [[zero_ablate(Site(LAYER, "head_out", None, head=h))]], last_only=True).logits[0]
        assert abs(float(torch.softmax(ref, -1)[tid]) - float(df["p1"].iloc[h])) < 1e-5


def test_head_sets_and_the_full_condition(tiny_llama):
    lm = tiny_llama
    sets = random_head_sets(lm.n_heads, 2, [0, 1], 3, seed=0)
    assert sets == random_head_sets(lm.n_heads, 2, [0, 1], 3, seed=0) and len(sets) == 3
    assert (0, 1) not in sets and len(set(sets)) == 3
    assert len(random_head_sets(lm.n_heads, 2, [0, 1], 100, seed=0)) == 5  # C(4, 2) - 1: all of them
    vec = _memory(lm)
    df = head_set_injection(lm, PROMPT, "Revolutionary War", LAYER, 1.0, vec, [0, 1], sets, Where(-1, -1))
    assert df["condition"].tolist() == ["all", "top"] + ["random"] * 3
    full = run(lm, [PROMPT], [[add(Site(LAYER, "attn_out", -1), vec)]], last_only=True).logits[0]
    tid = lm.tokenizer(" Revolutionary", add_special_tokens=False)["input_ids"][0]
    assert abs(float(torch.softmax(full, -1)[tid]) - float(df["p1"].iloc[0])) < 1e-5
