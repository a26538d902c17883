"""Memories: strings (or token sets) turned into residual-space vectors to inject.

The seed (``memory_tweaker_head_hook``) tokenizes the memory with ``to_tokens(memory, prepend_bos=False)``,
sets a multi-hot vector over its *distinct* tokens and multiplies it by TransformerLens's processed ``W_U``
(the final norm's gain folded in, centred over the vocabulary): the memory is the sum of those columns. Here
the rows of :func:`hopscope.lenses.projection.processed_unembedding` (``source="unembed_processed"``), of the
raw unembedding (``"unembed"``; for tied models such as GPT-2 that is the embedding), of the input embedding
(``"embed"``), or the memory text's own attention output at the injected layer, last token (``"attn"``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import torch

from hopscope.engine import answer_token_ids, run_with_cache
from hopscope.lenses.projection import processed_unembedding

if TYPE_CHECKING:
    from hopscope.models.loaded import LoadedModel


@dataclass(frozen=True)
class Memory:
    """A memory: its ``kind`` (gold, random, other_bridge, pos:<list>), index within the kind, text, token ids."""

    kind: str
    index: int
    text: str
    ids: tuple[int, ...]


def memory_ids(lm: "LoadedModel", text: str, *, space: bool = False, bos: bool = False) -> tuple[int, ...]:
    """Distinct token ids of a memory, in order.

    ``space=False``: the text as written (the seed); True: with a leading space (as a continuation).
    ``bos``: a BOS token first. ValueError (naming the memory) when it tokenizes to nothing.
    """
    if not text or not text.strip():
        raise ValueError(f"memory {text!r} is empty")
    tok = lm.tokenizer
    try:
        ids = answer_token_ids(tok, text.strip()) if space else list(tok(text, add_special_tokens=False)["input_ids"])
    except ValueError:
        ids = []
    if not ids:
        raise ValueError(f"memory {text!r} tokenizes to nothing")
    if bos and tok.bos_token_id is not None:
        ids = [tok.bos_token_id, *ids]
    return tuple(dict.fromkeys(int(i) for i in ids))


def make_memory(lm: "LoadedModel", kind: str, index: int, text: str, *, space: bool = False,
                bos: bool = False) -> Memory:
    return Memory(kind, index, text, memory_ids(lm, text, space=space, bos=bos))


class MemoryBank:
    """Vectors of memories from one ``source`` (``"attn"``: per memory and layer, computed on demand)."""

    def __init__(self, lm: "LoadedModel", source: str = "unembed_processed") -> None:
        self.lm, self.source = lm, source
        if source == "unembed_processed":
            self.matrix = processed_unembedding(lm)
        elif source == "unembed":
            self.matrix = lm.adapter.unembed_weight().detach().float().cpu()
        elif source == "embed":
            self.matrix = lm.adapter.embed.weight.detach().float().cpu()
        elif source == "attn":
            self.matrix = None
        else:
            raise ValueError(f"unknown memory source {source!r}")
        self._attn: dict[tuple[str, int], torch.Tensor] = {}

    def vectors(self, memories: Sequence[Memory], layer: int = 0) -> torch.Tensor:
        """``[m, d_model]`` vectors of ``memories`` (``layer`` matters only for the ``"attn"`` source)."""
        if self.matrix is not None:
            return torch.stack([self.matrix[list(m.ids)].sum(0) for m in memories])
        texts = [self.lm.tokenizer.decode(list(m.ids)) for m in memories]
        missing = list(dict.fromkeys(t for t in texts if (t, layer) not in self._attn))
        if missing:
            _, acts = run_with_cache(self.lm, missing, components=("attn_out",), layers=[layer])
            for i, t in enumerate(missing):
                self._attn[t, layer] = acts["attn_out", layer][i, -1].float().cpu()
        return torch.stack([self._attn[t, layer] for t in texts])
