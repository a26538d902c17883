"""Answer scoring used by every method: first-token id, probability / log-probability / rank, alias match."""

from __future__ import annotations

import re
import unicodedata
from typing import TYPE_CHECKING, Sequence

import torch

if TYPE_CHECKING:
    from hopscope.models.loaded import LoadedModel

_SPACE_MARKERS = ("Ġ", "▁", " ")


def answer_token_ids(tokenizer, answer: str, *, leading_space: bool = True) -> list[int]:
    """Token ids of ``answer`` as it would continue a prompt (with a leading space unless it has one)."""
    text = answer if (answer.startswith(" ") or not leading_space) else " " + answer
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    # SentencePiece / GPT-2 tokenizers may emit a bare-space token before the word: never take that as the answer.
    while ids and tokenizer.convert_ids_to_tokens(ids[0]) in _SPACE_MARKERS:
        ids = ids[1:]
    if not ids or not answer.strip():
        raise ValueError(f"answer {answer!r} tokenizes to nothing")
    return ids


def first_token_id(tokenizer, answer: str, *, leading_space: bool = True) -> int:
    """Id of the first real token of ``answer`` (``" Paris"``); ValueError if it tokenizes to nothing."""
    return answer_token_ids(tokenizer, answer, leading_space=leading_space)[0]


def score_tokens(logits: torch.Tensor, token_ids: torch.Tensor | Sequence[int]) -> dict[str, torch.Tensor]:
    """Probability, log-probability and rank (0 = top-1) of ``token_ids[i]`` under ``logits[i]`` ([b, V])."""
    token_ids = torch.as_tensor(token_ids, device=logits.device, dtype=torch.long)
    logp = torch.log_softmax(logits.float(), dim=-1)
    chosen = logp.gather(-1, token_ids[:, None])[:, 0]
    rank = (logp > chosen[:, None]).sum(-1)
    return {"prob": chosen.exp(), "logprob": chosen, "rank": rank}


def normalise_text(text: str) -> str:
    """Lower-case, strip accents and punctuation, collapse spaces."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(ch for ch in text if not unicodedata.combining(ch)).lower()
    text = re.sub(r"[^\w\s]", " ", text)
    return re.sub(r"\s+", " ", text).strip()


def alias_match(generated: str, aliases: Sequence[str], *, anywhere: bool = False) -> bool:
    """Whether the generated text starts with (or, ``anywhere``, contains) any alias, as whole words."""
    gen = " " + normalise_text(generated) + " "
    for alias in aliases:
        a = normalise_text(alias)
        if not a:
            continue
        if (gen.find(" " + a + " ") == 0) or (anywhere and (" " + a + " ") in gen):
            return True
    return False


def greedy_texts(lm: "LoadedModel", prompts: Sequence[str], max_new_tokens: int = 10,
                 batch_size: int = 32) -> list[str]:
    """Greedy continuations of ``prompts`` (batched, left-padded), decoded to text."""
    from hopscope.engine.fast import generate

    texts: list[str] = []
    for i in range(0, len(prompts), batch_size):
        chunk = list(prompts[i:i + batch_size])
        tokens = generate(lm, chunk, max_new_tokens=max_new_tokens, fast=False)
        texts.extend(lm.tokenizer.decode(t, skip_special_tokens=True) for t in tokens.tolist())
    return texts
