"""The :class:`LoadedModel`: an HF causal LM, its tokenizer, its adapter and where it came from."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from hopscope.models.adapters import Adapter, build_adapter


@dataclass
class Batch:
    """Left-padded token batch: row ``i``'s prompt occupies the last ``lengths[i]`` columns."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    lengths: list[int]

    @property
    def offsets(self) -> list[int]:
        """Number of pad columns before each row's first token."""
        width = self.input_ids.shape[1]
        return [width - n for n in self.lengths]

    def __len__(self) -> int:
        return self.input_ids.shape[0]


@dataclass
class LoadedModel:
    """A causal LM ready for the engine. ``model`` is the unmodified HF module in eval mode."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str
    source: str
    adapter: Adapter = field(init=False)

    def __post_init__(self) -> None:
        self.model.eval()
        self.adapter = build_adapter(self.model)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token

    # -- shape facts -------------------------------------------------------------------------
    @property
    def config(self):
        return self.model.config

    @property
    def family(self) -> str:
        return self.adapter.family

    @property
    def n_layers(self) -> int:
        return len(self.adapter.blocks)

    @property
    def n_heads(self) -> int:
        return int(self.config.num_attention_heads)

    @property
    def n_kv_heads(self) -> int:
        return int(getattr(self.config, "num_key_value_heads", None) or self.n_heads)

    @property
    def d_model(self) -> int:
        return int(self.config.hidden_size)

    @property
    def d_head(self) -> int:
        return int(getattr(self.config, "head_dim", None) or self.d_model // self.n_heads)

    @property
    def d_vocab(self) -> int:
        return int(self.adapter.unembed_weight().shape[0])

    @property
    def device(self) -> torch.device:
        """Where inputs go: the embedding's execution device (a split or offloaded model's first block)."""
        placement = getattr(self.model, "hf_device_map", None)
        if placement:
            first = next(iter(placement.values()))
            return torch.device("cpu" if first in ("cpu", "disk") else (f"cuda:{first}" if isinstance(first, int)
                                                                        else first))
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    # -- tokenization ------------------------------------------------------------------------
    def to_ids(self, text: str) -> list[int]:
        """Token ids of one prompt, exactly as :meth:`encode` tokenizes it."""
        return list(self.tokenizer(text, add_special_tokens=True)["input_ids"])

    def str_tokens(self, text: str) -> list[str]:
        """The prompt's tokens as decoded strings."""
        return [self.tokenizer.decode([i]) for i in self.to_ids(text)]

    def encode(self, prompts: list[str] | str) -> Batch:
        """Tokenize and left-pad prompts; position ids count real tokens only."""
        if isinstance(prompts, str):
            prompts = [prompts]
        if len(prompts) == 0:
            raise ValueError("encode() needs at least one prompt")
        ids = [self.to_ids(p) for p in prompts]
        for p, row in zip(prompts, ids):
            if not row:
                raise ValueError(f"prompt {p!r} tokenizes to nothing")
        return self.encode_ids(ids)

    def encode_ids(self, ids: list[list[int]]) -> Batch:
        """Left-pad lists of token ids into a :class:`Batch`."""
        width = max(len(r) for r in ids)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(ids), width), pad, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for i, row in enumerate(ids):
            input_ids[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
            mask[i, width - len(row):] = 1
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        dev = self.device
        return Batch(input_ids.to(dev), mask.to(dev), position_ids.to(dev), [len(r) for r in ids])

    def summary(self) -> dict[str, object]:
        """Facts for ``hopscope info`` and run configs."""
        return {
            "name": self.name,
            "source": self.source,
            "family": self.family,
            "architecture": type(self.model).__name__,
            "n_layers": self.n_layers,
            "n_heads": self.n_heads,
            "n_kv_heads": self.n_kv_heads,
            "d_model": self.d_model,
            "d_head": self.d_head,
            "d_vocab": self.d_vocab,
            "n_params": sum(p.numel() for p in self.model.parameters()),
            "dtype": str(self.dtype).replace("torch.", ""),
            "device": str(self.device),
        }
