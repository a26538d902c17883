"""Locating a substring's token span, including when the tokenizer merges it with neighbours."""

from __future__ import annotations

import random

import pytest

from hopscope.data.spans import (
    SpanNotFound,
    char_span,
    find_token_span,
    model_token_span,
    span_tokens,
    token_offsets,
    token_span,
)
from hopscope.data.spans import _offsets_by_decoding


@pytest.fixture(scope="module")
def gpt2_tok():
    from hopscope.models.tokenizers import gpt2_tokenizer

    return gpt2_tokenizer()


@pytest.fixture(scope="module")
def smol_tok():
    from hopscope.models.tokenizers import smollm2_tokenizer

    try:
        return smollm2_tokenizer()
    except FileNotFoundError as e:  # the embedded model package is optional
        pytest.skip(str(e))


def _covers(tok, prompt, span, chars):
    """Every character of ``chars`` lies inside the tokens of ``span``."""
    offsets = token_offsets(tok, prompt)
    lo = offsets[span[0]][0]
    hi = offsets[span[1] - 1][1]
    return lo <= chars[0] and hi >= chars[1]


def test_char_span_prefers_the_last_occurrence_and_falls_back_to_case():
    prompt = "The capital of Peru is Lima.\nThe capital of Peru is"
    assert char_span(prompt, "Peru") == (44, 48)
    assert char_span(prompt, "Peru", occurrence=0) == (15, 19)
    assert char_span("the capital of peru", "Peru") == (15, 19)
    with pytest.raises(SpanNotFound, match="does not occur"):
        char_span(prompt, "Chile")
    with pytest.raises(SpanNotFound, match="occurrence 5"):
        char_span(prompt, "Peru", occurrence=5)


def test_plain_word_span(gpt2_tok):
    span = token_span(gpt2_tok, "The capital of China is", "China")
    assert span_tokens(gpt2_tok, "The capital of China is", span) == [" China"]


@pytest.mark.parametrize("prompt, text, expected", [
    ("The Kenyan shilling", "Kenya", [" Kenyan"]),          # entity is the prefix of a longer token
    ("capital:Nairobi.", "Nairobi", ["N", "airo", "bi"]),    # no leading space
    ("Capital of (Nairobi)'s", "Nairobi)", ["N", "airo", "bi", ")'"]),  # ')' merged with the quote
])
def test_merged_tokens_are_included_gpt2(gpt2_tok, prompt, text, expected):
    span = token_span(gpt2_tok, prompt, text)
    assert span_tokens(gpt2_tok, prompt, span) == expected


def test_merged_tokens_are_included_smollm2(smol_tok):
    prompt = "The Kenyan shilling (Nairobi)'s"
    span = token_span(smol_tok, prompt, "Nairobi)")
    assert span_tokens(smol_tok, prompt, span) == ["N", "airobi", ")'"]
    span = token_span(smol_tok, prompt, "Kenya")
    assert span_tokens(smol_tok, prompt, span) == [" Kenyan"]


def test_random_substrings_never_crash_and_are_covered(gpt2_tok):
    rng = random.Random(0)
    words = ["Nairobi", "São", "Paulo", "(Kenya)'s", "x", "日本", "shilling", ",", "Dhaka's", "  ", "Côte d'Ivoire"]
    for _ in range(150):
        prompt = "".join(rng.choice(words) + rng.choice(["", " ", "-", "\n"]) for _ in range(rng.randint(1, 8)))
        a = rng.randrange(len(prompt))
        b = rng.randint(a + 1, len(prompt))
        span = token_span(gpt2_tok, prompt, (a, b))
        assert 0 <= span[0] < span[1] <= len(gpt2_tok(prompt)["input_ids"])
        assert _covers(gpt2_tok, prompt, span, (a, b)) or not prompt[a:b].strip()


def test_out_of_range_span_is_a_clear_error(gpt2_tok):
    with pytest.raises(SpanNotFound, match="outside the prompt"):
        token_span(gpt2_tok, "short", (2, 10))
    assert find_token_span(gpt2_tok, "The capital of Peru is", "Chile") is None
    assert find_token_span(gpt2_tok, "The capital of Peru is", "Peru") == (3, 4)


class _NoOffsetsTokenizer:
    """Wraps a tokenizer but refuses offset mappings (like slow tokenizers)."""

    def __init__(self, tok):
        self.tok = tok
        self.all_special_ids = tok.all_special_ids

    def __call__(self, text, add_special_tokens=True, return_offsets_mapping=False):
        if return_offsets_mapping:
            raise NotImplementedError("no offsets")
        return self.tok(text, add_special_tokens=add_special_tokens)

    def decode(self, ids, **kw):
        return self.tok.decode(ids, **kw)


def test_tokenizer_without_offsets_falls_back_to_decoding(gpt2_tok):
    slow = _NoOffsetsTokenizer(gpt2_tok)
    prompt = "The Kenyan shilling (Nairobi)'s São Paulo"
    assert token_offsets(slow, prompt) == token_offsets(gpt2_tok, prompt)
    assert token_span(slow, prompt, "Paulo") == token_span(gpt2_tok, prompt, "Paulo")


def test_decoding_fallback_groups_partial_characters(gpt2_tok):
    prompt = "首都は東京"
    ids = gpt2_tok(prompt)["input_ids"]
    offsets = _offsets_by_decoding(gpt2_tok, prompt, ids)
    assert len(offsets) == len(ids)
    assert offsets[-1][1] == len(prompt)
    assert all(a <= b for a, b in offsets)
    span = token_span(_NoOffsetsTokenizer(gpt2_tok), prompt, "東京")
    assert span[1] == len(ids)


class _BosModel:
    """A model-like object whose engine prepends a BOS token that the tokenizer does not add."""

    def __init__(self, tok):
        self.tokenizer = tok

    def to_ids(self, text):
        return [self.tokenizer.eos_token_id] + list(self.tokenizer(text)["input_ids"])


def test_model_token_span_follows_engine_coordinates(gpt2_tok, tiny_gpt2):
    prompt = "The capital of China is"
    plain = model_token_span(tiny_gpt2, prompt, "China")
    assert plain == token_span(gpt2_tok, prompt, "China")
    assert tiny_gpt2.to_ids(prompt)[plain[0]:plain[1]] == gpt2_tok(" China", add_special_tokens=False)["input_ids"]
    shifted = model_token_span(_BosModel(gpt2_tok), prompt, "China")
    assert shifted == (plain[0] + 1, plain[1] + 1)
