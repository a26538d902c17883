"""Memory injection's definitions, checked against hand computations of the seed's (Sakarvadia et al. 2023):
the processed unembedding, memory tokenization and BOS, the trimmed mean, the packaged part-of-speech
controls, and injection through the engine's staircase equal to the full-depth forward."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hopscope.data import wordlists
from hopscope.engine import Site, add, run
from hopscope.lenses.projection import final_norm_linear, processed_unembedding
from hopscope.methods.injection.controls import pos_memories, random_memories
from hopscope.methods.injection.grid import Where, injected_logits
from hopscope.methods.injection.memories import MemoryBank, make_memory, memory_ids
from hopscope.methods.injection.pairs import bos_text, fed_prompt, query_start
from hopscope.methods.injection.summary import best_cell, trimmed_mean
from hopscope.models import tiny

PROMPT = "The first president of the United States fought in the"
FEW_SHOT = "The capital of France is Paris.\nThe capital of Spain is Madrid.\nThe capital of Italy is"


# ---- the processed unembedding (issue 14: "unembed" was the raw lm_head, = the embedding for GPT-2) ----------
def test_processed_unembedding_is_gain_folded_and_centred_on_tied_gpt2(tiny_gpt2):
    lm = tiny_gpt2
    W_E = lm.adapter.embed.weight.detach().float()
    W_U = lm.adapter.unembed_weight().detach().float()
    assert torch.equal(W_U, W_E)  # tied: the raw unembedding *is* the embedding
    gamma = lm.model.transformer.ln_f.weight.detach().float()
    assert (gamma - 1).abs().max() > 0.05  # the tiny model's final-norm gain is not all ones
    hand = W_U * gamma[None, :]
    hand = hand - hand.mean(0, keepdim=True)  # TransformerLens: fold_ln, then center_unembed
    proc = processed_unembedding(lm)
    assert torch.allclose(proc, hand, atol=1e-5)
    assert (proc - W_E).abs().max() > 0.01
    mem = make_memory(lm, "gold", 0, "George Washington")
    vec = MemoryBank(lm, "unembed_processed").vectors([mem])[0]
    assert torch.allclose(vec, hand[list(mem.ids)].sum(0), atol=1e-5)
    raw = MemoryBank(lm, "unembed").vectors([mem])[0]
    assert torch.equal(raw, MemoryBank(lm, "embed").vectors([mem])[0])  # why the processed source is needed
    assert not torch.allclose(vec, raw, atol=1e-3)


def test_final_norm_linear_part_in_every_family(tiny_model):
    """(norm(x) - norm(-x)) / 2 times the norm's scale of x is gamma * (centred) x, for LayerNorm and RMSNorm."""
    lm = tiny_model
    lin = final_norm_linear(lm)
    x = torch.randn(5, lm.d_model, generator=torch.Generator().manual_seed(0)) * 3
    with torch.no_grad():
        odd = (lm.adapter.final_norm(x) - lm.adapter.final_norm(-x)).float() / 2
    xc = x - x.mean(-1, keepdim=True) if lin.centres else x
    scale = xc.pow(2).mean(-1, keepdim=True).sqrt()  # the norm's eps is negligible at this scale
    assert torch.allclose(odd * scale, lin(x), atol=2e-3, rtol=1e-3)
    assert lin.centres == (lm.family in ("gpt2", "opt", "gpt_neox", "olmo"))


# ---- memory tokenization and BOS (issue 14: a leading space and no BOS before prompts) ---------------------
def test_memory_is_tokenized_as_written_without_bos(tiny_gpt2):
    lm = tiny_gpt2
    tok = lm.tokenizer
    seed = tuple(tok("George Washington", add_special_tokens=False)["input_ids"])
    assert memory_ids(lm, "George Washington") == seed
    spaced = memory_ids(lm, "George Washington", space=True)
    assert spaced == tuple(tok(" George Washington", add_special_tokens=False)["input_ids"]) and spaced != seed
    assert memory_ids(lm, "George Washington", bos=True) == (tok.bos_token_id, *seed)
    assert memory_ids(lm, "New York New York") == tuple(dict.fromkeys(tok("New York New York")["input_ids"]))
    with pytest.raises(ValueError, match="empty"):
        memory_ids(lm, "   ")


def test_prompts_get_a_bos_first_unless_the_tokenizer_adds_one(tiny_gpt2, tiny_llama):
    for lm in (tiny_gpt2, tiny_llama):
        tok = lm.tokenizer
        fed = fed_prompt(lm, PROMPT, True)
        assert lm.to_ids(fed) == [tok.bos_token_id] + lm.to_ids(PROMPT)
        assert fed_prompt(lm, PROMPT, False) == PROMPT
    with pytest.raises(ValueError, match="empty"):
        fed_prompt(tiny_gpt2, "  ", True)


def test_bos_is_not_doubled_when_the_tokenizer_adds_it(tiny_llama, monkeypatch):
    lm = tiny_llama
    bos = lm.tokenizer.bos_token_id
    monkeypatch.setattr(type(lm), "to_ids", lambda self, text: [bos] + list(
        self.tokenizer(text, add_special_tokens=False)["input_ids"]))
    assert bos_text(lm, True) == ""


def test_query_start_is_the_token_after_the_few_shot_prefix(tiny_gpt2):
    lm = tiny_gpt2
    fed = fed_prompt(lm, FEW_SHOT, True)
    q = query_start(lm, fed)
    ids = lm.to_ids(fed)
    assert lm.tokenizer.decode(ids[q:]) == "The capital of Italy is"
    assert query_start(lm, fed_prompt(lm, PROMPT, True)) == 0


# ---- the trimmed mean (issue 14: missing) -----------------------------------------------------------------
def test_trimmed_mean_drops_values_at_or_above_the_99th_percentile():
    assert trimmed_mean(np.arange(1, 101)) == pytest.approx(50.0)  # 100 >= 99.01 is dropped; mean is 50.5
    assert trimmed_mean([1.0, 2.0, 3.0, 1000.0]) == pytest.approx(2.0)
    assert trimmed_mean([5.0, 5.0, 5.0]) == 5.0  # nothing strictly below: the plain mean
    assert trimmed_mean([1.0, 2.0, 3.0, 4.0], percentile=50) == pytest.approx(1.5)


def test_best_cell_uses_the_criterion_on_gold_rows():
    import pandas as pd

    rows = []
    for layer, pcts in ((0, [10.0, 10.0, 10.0, 900.0]), (1, [50.0, 40.0, 45.0, 60.0])):
        for i, pct in enumerate(pcts):
            rows.append({"grid": "tau", "layer": layer, "step": 1.0, "tau": 1.0, "memory_kind": "gold", "qid": str(i),
                         "change_pct": pct, "p0": 0.1, "p1": 0.1 * (1 + pct / 100), "dlogp": np.log1p(pct / 100)})
        rows.append({"grid": "tau", "layer": layer, "step": 1.0, "tau": 1.0, "memory_kind": "random", "qid": "0",
                     "change_pct": 1e6, "p0": 0.1, "p1": 1.0, "dlogp": 2.3})
    grid = pd.DataFrame(rows)
    assert best_cell(grid, "mean_pct")["layer"] == 0  # the outlier wins the plain mean
    assert best_cell(grid, "trimmed_mean_pct")["layer"] == 1  # not the seed's trimmed mean


# ---- controls (issue 14: POS words sampled at random, from a folder beside the checkout) -------------------
def test_pos_controls_are_the_first_words_of_the_packaged_lists(tiny_gpt2, tmp_path, monkeypatch):
    monkeypatch.setenv("HOPSCOPE_SHARED_DATA", str(tmp_path / "nowhere"))
    monkeypatch.chdir(tmp_path)
    mems = pos_memories(tiny_gpt2, 40)
    kinds = {m.kind for m in mems}
    assert kinds == {f"pos:{k}" for k in wordlists.KINDS}
    for kind in wordlists.KINDS:
        words = [m.text for m in mems if m.kind == f"pos:{kind}"]
        assert words == wordlists.first_words(kind, 40)
    assert [m.text for m in mems if m.kind == "pos:conjunctions"][:3] == ["and", "that", "but"]


def test_random_memories_match_the_gold_token_count_and_are_seeded(tiny_gpt2):
    a = random_memories(tiny_gpt2, 3, 4, seed=0, qid="q1")
    assert a == random_memories(tiny_gpt2, 3, 4, seed=0, qid="q1")
    assert a != random_memories(tiny_gpt2, 3, 4, seed=1, qid="q1")
    assert all(len(m.ids) == 3 and len(set(m.ids)) == 3 for m in a)


# ---- injection through the engine -------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["gpt2", "llama", "gemma2"])
@pytest.mark.parametrize("positions", ["all", "query", "last"])
def test_staircase_injection_equals_full_depth_injection(family, positions):
    lm = tiny(family)
    prompt = fed_prompt(lm, FEW_SHOT, True)
    n = len(lm.to_ids(prompt))
    where = Where.of(positions, n, query_start(lm, prompt))
    mem = MemoryBank(lm).vectors([make_memory(lm, "gold", 0, "Rome")])[0]
    layers = [l for l in range(lm.n_layers) for _ in range(2)]
    vecs = torch.stack([(1 + i) * mem for i in range(len(layers))])
    clean, fast = injected_logits(lm, prompt, layers, vecs, where)
    rows = [[add(Site(l, "attn_out", where.position), v)] for l, v in zip(layers, vecs)]
    naive = run(lm, [prompt] * len(rows), rows, last_only=True, share_prefix=False).logits
    assert (fast - naive).abs().max() <= 1e-4
    assert (clean - run(lm, [prompt], last_only=True, share_prefix=False).logits[0]).abs().max() <= 1e-4
    assert (fast - clean).abs().max() > 1e-3  # the injection does something


def test_a_vector_added_to_one_head_equals_one_added_to_attn_out(tiny_llama):
    lm = tiny_llama
    v = torch.randn(lm.d_model, generator=torch.Generator().manual_seed(1))
    rows = [[add(Site(1, "head_out", None, head=h), v)] for h in range(lm.n_heads)] + [[add(Site(1, "attn_out", None), v)]]
    logits = run(lm, [PROMPT] * len(rows), rows, last_only=True).logits
    assert (logits - logits[-1]).abs().max() <= 1e-4
