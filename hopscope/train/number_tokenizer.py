"""A number-level tokenizer: one token per integer, split on whitespace (a small vocabulary trains fast)."""

from __future__ import annotations

from typing import Iterable

EOS = "<|endoftext|>"
UNK = "<unk>"


def number_tokenizer(values: Iterable[int]):
    """An HF fast tokenizer whose vocabulary is ``<|endoftext|>``, ``<unk>`` and ``str(v)`` for each value.

    Numbers are separated by whitespace, so ``"3"`` and ``" 3"`` are the same single token; the tokenizer
    saves with ``save_pretrained`` and reloads with ``AutoTokenizer`` (offsets mapping supported).
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = [str(int(v)) for v in sorted(set(int(v) for v in values))]
    if not words:
        raise ValueError("number_tokenizer needs at least one value")
    if any(int(w) < 0 for w in words):
        raise ValueError("number_tokenizer takes non-negative integers")
    vocab = {EOS: 0, UNK: 1, **{w: i + 2 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, pad_token=EOS, unk_token=UNK)
