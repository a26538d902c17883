"""Attention lens: an untrained lens is each head's logit lens, the summed path equals the per-head sum,
save/load round-trips, training lowers held-out KL, and the targets are the model's own distribution."""

from __future__ import annotations

import pytest
import torch

from hopscope.engine import run
from hopscope.lenses import project
from hopscope.lenses.attention_lens import AttentionLens, head_outputs, rank_heads, show_lens
from hopscope.models import tiny
from hopscope.train.lens import collect, corpus_texts, kl_to_model, lens_kl, target_logprobs, train_lenses

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


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("rank", [4, None])
def test_untrained_lens_is_the_heads_logit_lens(family, rank):
    lm = tiny(family)
    lens = AttentionLens(lm, 1, rank)
    x = head_outputs(lm, PROMPTS, 1)
    assert torch.allclose(lens.head_logits(x), project(lm, x), atol=1e-4)
    assert torch.allclose(lens(x), project(lm, x).sum(-2), atol=1e-4)


@pytest.mark.parametrize("rank", [3, None])
def test_summed_path_equals_sum_of_heads(tiny_llama, rank):
    lens = AttentionLens(tiny_llama, 2, rank)
    _perturb(lens)
    x = head_outputs(tiny_llama, PROMPTS, 2)
    assert torch.allclose(lens(x), lens.head_logits(x).sum(-2), atol=1e-4)


@pytest.mark.parametrize("rank", [4, None])
def test_save_load_round_trip(tiny_llama, tmp_path, rank):
    lens = AttentionLens(tiny_llama, 1, rank)
    _perturb(lens, 1)
    lens.config.trained = {"steps": 3, "kl_after": 0.5}
    lens.save(tmp_path / "lens")
    back = AttentionLens.load(tmp_path / "lens", tiny_llama)
    assert back.config == lens.config
    x = head_outputs(tiny_llama, PROMPTS, 1)
    assert torch.equal(back.head_logits(x), lens.head_logits(x))
    for k, v in lens.state_dict().items():
        assert torch.equal(back.state_dict()[k], v)


def test_load_errors(tiny_llama, tmp_path):
    with pytest.raises(FileNotFoundError):
        AttentionLens.load(tmp_path, tiny_llama)
    AttentionLens(tiny("gpt2"), 1, 2).save(tmp_path / "g")
    with pytest.raises(ValueError, match="made for"):
        AttentionLens.load(tmp_path / "g", tiny_llama)
    with pytest.raises(ValueError):
        AttentionLens(tiny_llama, 9)
    with pytest.raises(ValueError):
        AttentionLens(tiny_llama, 0, rank=0)


def test_targets_are_the_models_distribution(tiny_llama):
    data = collect(tiny_llama, TEXTS[:3], [1], positions="last")
    assert len(data) == 3 and data.heads[1].shape == (3, tiny_llama.n_heads, tiny_llama.d_model)
    ref = torch.log_softmax(run(tiny_llama, [tiny_llama.tokenizer.decode(tiny_llama.to_ids(t)[:48]) for t in TEXTS[:3]],
                                last_only=True).logits, -1)
    assert torch.allclose(target_logprobs(tiny_llama, data.final), ref, atol=1e-4)
    allpos = collect(tiny_llama, TEXTS[:3], [1], per_text=None)
    assert len(allpos) == sum(len(tiny_llama.to_ids(t)) - 1 for t in TEXTS[:3])


def test_untrained_kl_and_training_lowers_held_out_kl(tiny_llama):
    train = collect(tiny_llama, TEXTS[:4], [1], per_text=None)
    held = collect(tiny_llama, TEXTS[4:], [1], per_text=None)
    lens = AttentionLens(tiny_llama, 1, 4)
    logq = torch.log_softmax(project(tiny_llama, held.heads[1]).sum(-2), -1)
    logp = target_logprobs(tiny_llama, held.final)
    manual = float((logp.exp() * (logp - logq)).sum(-1).mean())
    assert lens_kl(tiny_llama, lens, held) == pytest.approx(manual, rel=1e-4)
    with torch.no_grad():
        assert float(kl_to_model(lens, held.heads[1], logp).min()) >= -1e-5
    res = train_lenses(tiny_llama, [1], train, held, rank=4, steps=25, batch_size=32, lr=1e-2)
    assert res.kl_after[1] < res.kl_before[1]
    assert res.lenses[1].config.trained["kl_after"] == res.kl_after[1]
    assert list(res.table().columns) == ["layer", "rank", "kl_before", "kl_after", "kl_drop", "kl_constant"]


def test_show_and_rank_heads(tiny_llama):
    lens = AttentionLens(tiny_llama, 1, 2)
    df = show_lens(tiny_llama, lens, PROMPTS[0], k=3)
    assert len(df) == tiny_llama.n_heads and all(a == b for a, b in zip(df.lens_top, df.projection_top))
    ranked = rank_heads(tiny_llama, lens, PROMPTS, ["Paris", "Revolutionary", "one"], ["France", "George", "water"])
    assert sorted(ranked["head"]) == list(range(tiny_llama.n_heads))
    assert ranked.score.is_monotonic_decreasing


def test_corpora():
    wf = corpus_texts("world-facts")
    assert len(wf) > 100 and all(isinstance(t, str) and t for t in wf)
    with pytest.raises(FileNotFoundError):
        corpus_texts("no-such-corpus")
