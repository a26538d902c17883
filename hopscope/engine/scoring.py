"""Scoring used by every method: answer token ids, probability / log-probability / rank, logit difference,
alias matching and its early-stopping rule (:class:`MatchRule`)."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

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


def logit_diff(logits: torch.Tensor, correct: torch.Tensor | Sequence[int],
               incorrect: torch.Tensor | Sequence[int]) -> torch.Tensor:
    """``logits[i, correct[i]] - logits[i, incorrect[i]]`` for ``[b, V]`` logits."""
    c = torch.as_tensor(correct, device=logits.device, dtype=torch.long)
    w = torch.as_tensor(incorrect, device=logits.device, dtype=torch.long)
    lf = logits.float()
    return lf.gather(-1, c[:, None])[:, 0] - lf.gather(-1, w[:, None])[:, 0]


def alias_stopper(lm: "LoadedModel", aliases: Sequence[str], *, anywhere: bool = False) -> Callable[[list[int]], bool]:
    """``stop(tokens)``: True once ``alias_match(decode(tokens), aliases, anywhere=...)`` can no longer change.

    At the start (``anywhere=False``): once an alias is matched or no alias can still match. Anywhere: once an
    alias is matched (more tokens can always still produce one, so the budget ends the rest).
    """
    targets = [a for a in (normalise_text(x) for x in aliases) if a]

    def stop(tokens: list[int]) -> bool:
        text = lm.tokenizer.decode(tokens, skip_special_tokens=True).rstrip("\ufffd")  # partial UTF-8 bytes
        g = normalise_text(text)
        if not g:
            return False
        if anywhere:
            return _complete_word_match(g, targets)  # matched, with a word after it: final
        if any(g.startswith(a + " ") for a in targets):
            return True  # matched, and more text cannot undo it
        return not any(a.startswith(g) for a in targets)  # no alias can still match
    return stop


def _complete_word_match(g: str, targets: Sequence[str]) -> bool:
    """An alias occurs in ``g`` followed by a space (so a longer word cannot swallow it later)."""
    padded = " " + g
    return any((" " + a + " ") in padded for a in targets)


@dataclass(frozen=True)
class MatchRule:
    """The one answer-matching rule of a run: an alias within the first ``max_new_tokens`` greedy tokens,
    anywhere in the text (the paper's rule, Biran et al. 2024) or only at its start (``anywhere=False``)."""

    max_new_tokens: int = 10
    anywhere: bool = True

    def matches(self, text: str, aliases: Sequence[str]) -> bool:
        return alias_match(text, aliases, anywhere=self.anywhere)

    def stopper(self, lm: "LoadedModel", aliases_per_row: Sequence[Sequence[str]]) -> Callable[[int, list[int]], bool]:
        """A ``stop(row, tokens)`` for :func:`hopscope.engine.generate`: a row stops once its verdict is final."""
        stops = {}

        def stop(row: int, tokens: list[int]) -> bool:
            if row not in stops:
                stops[row] = alias_stopper(lm, aliases_per_row[row], anywhere=self.anywhere)
            return stops[row](tokens)
        return stop

    def to_dict(self) -> dict[str, object]:
        return {"max_new_tokens": self.max_new_tokens, "anywhere": self.anywhere,
                "rule": ("an alias of the target appears " + ("anywhere" if self.anywhere else "at the start")
                         + f" in the first {self.max_new_tokens} greedy tokens (normalised, whole words)")}


def logit_vs_mean(logits: torch.Tensor, token_ids: torch.Tensor | Sequence[int]) -> torch.Tensor:
    """``logits[i, token_ids[i]]`` minus the mean logit of row ``i`` (Lv et al.'s answer metric)."""
    ids = torch.as_tensor(token_ids, device=logits.device, dtype=torch.long)
    lf = logits.float()
    return lf.gather(-1, ids[:, None])[:, 0] - lf.mean(-1)
