"""Attention lens on raw head outputs: an untrained lens is each head's linear projection, the heads' lenses sum
to the lens of ``attn_out``, the summed path equals the per-head sum, save/load round-trips, training lowers
held-out KL and is deterministic, and the baselines are what they say."""

from __future__ import annotations

import pytest
import torch

from hopscope.engine import Site, cache, run, run_with_cache
from hopscope.lenses import project
from hopscope.lenses.attention_lens import AttentionLens, head_outputs, head_scores, show_lens
from hopscope.lenses.projection import linear_logits, processed_unembedding
from hopscope.models import tiny
from hopscope.train.lens import collect, held_out_kl, kl_rows, target_logprobs, train_lenses, unigram

PROMPTS = ["The capital of France is", "George Washington fought in the", "Water boils at"]
TEXTS = [
    "The river flows through the old town and into the sea.",
    "Paris is the capital of France, and Berlin is the capital of Germany.",
    "A cat sat on the mat while the dog slept by the door.",
    "The first president of the United States was George Washington.",
    "Water boils at one hundred degrees at sea level.",
    "Mount Everest is the highest mountain on Earth.",
]


def _perturb(lens: AttentionLens, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lens.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma"])
@pytest.mark.parametrize("rank", [4, None])
def test_untrained_lens_is_the_linear_projection_of_the_raw_head_output(family, rank):
    lm = tiny(family)
    lens = AttentionLens(lm, 1, rank)
    x, _ = head_outputs(lm, PROMPTS, 1)
    assert torch.allclose(lens.head_logits(x), linear_logits(lm, x), atol=1e-4)
    assert torch.allclose(lens(x), linear_logits(lm, x).sum(-2), atol=1e-3)
    # raw outputs, no per-head norm: the lens scales with the head (the old per-head final norm did not)
    assert torch.allclose(lens.head_logits(3 * x), 3 * lens.head_logits(x), atol=1e-3)


@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen2", "opt"])
def test_heads_lenses_sum_to_the_lens_of_attn_out(family):
    """What is summed: the linear map before the final norm's nonlinearity (its centring and gain, then the
    processed unembedding). sum_h L(head_h) + L(b_O) = L(attn_out) exactly; through the full final norm (the
    old per-head projection) the heads' logits do not add up."""
    lm = tiny(family)
    layer = 1
    sites = [Site(layer, "head_out", -1), Site(layer, "attn_out", -1)]
    res = run(lm, PROMPTS, [[cache(s) for s in sites] for _ in PROMPTS], last_only=True)
    heads, attn = res.cached(sites[0])[:, 0], res.cached(sites[1])[:, 0]
    bias = lm.adapter.out_proj_bias(layer)
    bias = torch.zeros(lm.d_model) if bias is None else bias.detach().float()
    assert torch.allclose(heads.sum(-2) + bias, attn, atol=1e-4)
    lens = AttentionLens(lm, layer)
    summed = lens.head_logits(heads).sum(-2) + linear_logits(lm, bias)
    assert torch.allclose(summed, linear_logits(lm, attn), atol=1e-3)
    normed = project(lm, heads).sum(-2) + project(lm, bias)
    assert (normed - project(lm, attn)).abs().max() > 1e-2


def test_linear_projection_divided_by_the_norm_scale_is_the_logit_lens(tiny_llama):
    """For an RMS-norm model without unembedding bias: softmax(L(x) / rms(x)) is the logit lens of x."""
    lm = tiny_llama
    _, acts = run_with_cache(lm, PROMPTS, components=("resid_post",))
    x = acts["resid_post", 2][:, -1]
    eps = lm.config.rms_norm_eps
    scaled = linear_logits(lm, x) / (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()
    assert torch.allclose(torch.log_softmax(scaled, -1), torch.log_softmax(project(lm, x), -1), atol=1e-4)


@pytest.mark.parametrize("rank", [3, None])
def test_summed_path_equals_sum_of_heads(tiny_llama, rank):
    lens = AttentionLens(tiny_llama, 2, rank)
    _perturb(lens)
    x, _ = head_outputs(tiny_llama, PROMPTS, 2)
    assert torch.allclose(lens(x), lens.head_logits(x).sum(-2), atol=1e-4)


@pytest.mark.parametrize("rank", [4, None])
def test_save_load_round_trip(tiny_llama, tmp_path, rank):
    lens = AttentionLens(tiny_llama, 1, rank)
    _perturb(lens, 1)
    lens.config.trained = {"steps": 3}
    lens.save(tmp_path / "lens")
    back = AttentionLens.load(tmp_path / "lens", tiny_llama)
    assert back.config == lens.config
    x, _ = head_outputs(tiny_llama, PROMPTS, 1)
    assert torch.equal(back.head_logits(x), lens.head_logits(x))
    with pytest.raises(ValueError, match="made for"):
        AttentionLens.load(tmp_path / "lens", tiny("gpt2"))


def test_bad_layer_and_rank_are_one_line_errors(tiny_llama):
    with pytest.raises(ValueError, match="out of range"):
        AttentionLens(tiny_llama, 7)
    with pytest.raises(ValueError, match="rank"):
        AttentionLens(tiny_llama, 1, 0)


def test_collect_targets_are_the_models_distribution(tiny_llama):
    data = collect(tiny_llama, TEXTS[:2], [1], positions="last")
    logits = run(tiny_llama, [tiny_llama.tokenizer.decode(tiny_llama.to_ids(t)) for t in TEXTS[:2]],
                 last_only=True).logits
    assert torch.allclose(target_logprobs(tiny_llama, data.final), torch.log_softmax(logits, -1), atol=1e-4)
    assert data.text.tolist() == [0, 1]


def test_training_lowers_held_out_kl_and_is_deterministic(tiny_gpt2):
    lm = tiny_gpt2
    train = collect(lm, TEXTS[:4], [1], per_text=8)
    held = collect(lm, TEXTS[4:], [1], per_text=8)
    a = train_lenses(lm, [1], train, held, rank=None, steps=25, batch_size=16, seed=0)
    b = train_lenses(lm, [1], train, held, rank=None, steps=25, batch_size=16, seed=0)
    kl = a.held[1]
    assert kl["kl_lens"].mean() < 0.5 * kl["kl_untrained"].mean()
    assert a.history.equals(b.history) and kl.equals(b.held[1])
    assert len(kl) == len(held) and set(kl["text"]) == {0, 1}


def test_baselines_are_the_untrained_lens_the_logit_lens_and_the_unigram(tiny_gpt2):
    lm = tiny_gpt2
    train = collect(lm, TEXTS[:3], [1], per_text=4)
    held = collect(lm, TEXTS[3:], [1], per_text=4)
    lens = AttentionLens(lm, 1, 2)
    _perturb(lens)
    log_u = unigram(lm, train)
    kl = held_out_kl(lm, lens, held, log_u)
    target = target_logprobs(lm, held.final)
    x = held.heads[1]
    assert torch.allclose(torch.tensor(kl["kl_untrained"].to_numpy()).float(),
                          kl_rows(target, linear_logits(lm, x).sum(-2)), atol=1e-3)
    assert torch.allclose(torch.tensor(kl["kl_logit_lens"].to_numpy()).float(),
                          kl_rows(target, project(lm, x.sum(-2))), atol=1e-3)
    mean = target_logprobs(lm, train.final).exp().mean(0)
    assert torch.allclose(log_u.exp(), mean, atol=1e-6)
    with torch.no_grad():
        assert torch.allclose(torch.tensor(kl["kl_lens"].to_numpy()).float(), kl_rows(target, lens(x)), atol=1e-3)


def test_head_scores_and_show(tiny_llama):
    lm = tiny_llama
    lens = AttentionLens(lm, 1, 2)
    df = head_scores(lm, lens, PROMPTS, [" Paris", " war", " one"], ["a", "b", "c"],
                     log_unigram=torch.log_softmax(torch.zeros(lm.d_vocab), -1))
    assert len(df) == 3 * lm.n_heads and set(df["qid"]) == {"a", "b", "c"}
    # untrained: the lens columns equal the linear-projection columns
    assert (df["lens_logit"] - df["linear_logit"]).abs().max() < 1e-3
    x, _ = head_outputs(lm, PROMPTS[:1], 1)
    w = processed_unembedding(lm)
    logits = linear_logits(lm, x, w)[0]
    tid = lm.tokenizer(" Paris", add_special_tokens=False)["input_ids"][0]
    expect = logits[:, tid] - logits.mean(-1)
    got = torch.tensor(df[df["qid"] == "a"].sort_values("head")["linear_logit"].to_numpy()).float()
    assert torch.allclose(got, expect, atol=1e-3)
    shown = show_lens(lm, lens, PROMPTS[0], k=3)
    assert len(shown) == lm.n_heads and (shown["lens_top"] == shown["projection_top"]).all()
