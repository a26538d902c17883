"""Answer-token handling and scoring."""

from __future__ import annotations

import torch

from hopscope.engine import alias_match, answer_token_ids, first_token_id, score_tokens


def test_gpt2_first_token_has_leading_space(tiny_gpt2):
    tok = tiny_gpt2.tokenizer
    tid = first_token_id(tok, "Paris")
    assert tok.convert_ids_to_tokens(tid) == "ĠParis"
    assert first_token_id(tok, " Paris") == tid


def test_smollm2_first_token_is_not_a_bare_space(tiny_llama):
    tok = tiny_llama.tokenizer
    for answer in ["Paris", "Afghani", "1984", "Kwanza"]:
        ids = answer_token_ids(tok, answer)
        assert tok.convert_ids_to_tokens(ids[0]) not in ("Ġ", "▁", " ")
        assert tok.decode(ids).strip() == answer


def test_score_tokens_rank_and_prob():
    logits = torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 0.0]])
    s = score_tokens(logits, [2, 0])
    assert s["rank"].tolist() == [1, 0]
    assert torch.allclose(s["prob"], torch.softmax(logits, -1)[[0, 1], [2, 0]])
    assert torch.allclose(s["logprob"].exp(), s["prob"])


def test_alias_match_word_boundaries():
    assert alias_match(" Paris, the city of light", ["Paris"])
    assert alias_match(" São Paulo is big", ["Sao Paulo"])
    assert not alias_match(" Parisian food", ["Paris"])
    assert not alias_match(" the capital is Paris", ["Paris"])
    assert alias_match(" the capital is Paris", ["Paris"], anywhere=True)
