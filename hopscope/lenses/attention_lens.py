"""Attention Lens (Sakarvadia et al. 2023, arXiv 2310.16270): one trainable lens per attention head.

A head's lens maps its output (its contribution to the residual stream) to vocabulary logits. Every lens
starts as the model's own logit lens (final norm, then the unembedding), so an untrained lens equals
``hopscope.lenses.project`` of the head's output. Two kinds:

* full rank (``rank=None``): a ``[vocab, d_model]`` matrix per head initialised to the unembedding (the
  seed's design; ~28M parameters per head for SmolLM2, fine on a GPU);
* low rank (``rank=r``): the frozen unembedding scaled by a per-head gain plus a rank-``r`` update
  ``A_h B_h`` (``A_h`` starts at zero), which trains on a CPU in minutes.

The lenses of a layer are trained jointly (their logits summed) by :mod:`hopscope.train.lens`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import pandas as pd
import torch
from torch import nn

if TYPE_CHECKING:
    from hopscope.models.loaded import LoadedModel

CONFIG_FILE = "lens_config.json"
WEIGHTS_FILE = "lens.safetensors"


@dataclass
class LensConfig:
    """What a lens is: its layer, the model's shapes, the kind (``rank`` None = full rank) and its training."""

    layer: int
    n_heads: int
    d_model: int
    d_vocab: int
    rank: int | None = 8
    normalize: bool = True
    model: str = ""
    trained: dict[str, Any] = field(default_factory=dict)


class AttentionLens(nn.Module):
    """Per-head lenses of one layer: head outputs ``[..., n_heads, d_model]`` to logits."""

    def __init__(self, lm: "LoadedModel", layer: int, rank: int | None = 8, *, normalize: bool = True,
                 seed: int = 0) -> None:
        super().__init__()
        layer = layer + lm.n_layers if layer < 0 else layer
        if not 0 <= layer < lm.n_layers:
            raise ValueError(f"layer {layer} out of range: {lm.name} has {lm.n_layers} layers")
        if rank is not None and rank < 1:
            raise ValueError(f"rank must be a positive integer or None (full rank), got {rank}")
        H, d, V = lm.n_heads, lm.d_model, lm.d_vocab
        self.config = LensConfig(layer, H, d, V, rank, normalize, lm.name)
        ad = lm.adapter
        bias = ad.unembed_bias()
        # frozen parts of the model, kept out of the module's parameters and state dict
        self._frozen = {"norm": ad.final_norm, "W": ad.unembed_weight().detach(),
                        "b": None if bias is None else bias.detach(),
                        "softcap": getattr(lm.config, "final_logit_softcapping", None), "dtype": lm.dtype}
        gen = torch.Generator().manual_seed(seed)
        if rank is None:
            self.weight = nn.Parameter(self._frozen["W"].float().clone()[None].repeat(H, 1, 1))
            b = torch.zeros(V) if bias is None else bias.detach().float().clone()
            self.bias = nn.Parameter(b[None].repeat(H, 1))
        else:
            self.gain = nn.Parameter(torch.ones(H))
            self.A = nn.Parameter(torch.zeros(H, V, rank))
            self.B = nn.Parameter(torch.randn(H, rank, d, generator=gen) / d ** 0.5)

    # -- forward ---------------------------------------------------------------------------------
    def _normed(self, x: torch.Tensor) -> torch.Tensor:
        """Head outputs through the model's final norm (no gradient: the norm is frozen and x an input)."""
        if not self.config.normalize:
            return x.float()
        with torch.no_grad():
            return self._frozen["norm"](x.to(self._frozen["dtype"])).float()

    def _cap(self, logits: torch.Tensor) -> torch.Tensor:
        cap = self._frozen["softcap"]
        return torch.tanh(logits / cap) * cap if cap else logits

    def _check(self, head_out: torch.Tensor) -> None:
        H, d = self.config.n_heads, self.config.d_model
        if head_out.shape[-2:] != (H, d):
            raise ValueError(f"lens of layer {self.config.layer} expects [..., {H}, {d}] head outputs, "
                             f"got {tuple(head_out.shape)}")

    def head_logits(self, head_out: torch.Tensor) -> torch.Tensor:
        """Each head's lens logits ``[..., n_heads, vocab]``."""
        self._check(head_out)
        x = self._normed(head_out)
        if self.config.rank is None:
            logits = torch.einsum("...hd,hvd->...hv", x, self.weight) + self.bias
        else:
            W, b = self._frozen["W"].float(), self._frozen["b"]
            logits = self.gain[:, None] * (x @ W.T) + torch.einsum("...hr,hvr->...hv",
                                                                   torch.einsum("...hd,hrd->...hr", x, self.B), self.A)
            if b is not None:
                logits = logits + self.gain[:, None] * b.float()
        return self._cap(logits)

    def forward(self, head_out: torch.Tensor) -> torch.Tensor:
        """The layer's lens logits ``[..., vocab]``: the heads' lens logits summed (computed without the
        ``[.., heads, vocab]`` intermediate)."""
        self._check(head_out)
        x = self._normed(head_out)
        if self.config.rank is None:
            logits = torch.einsum("...hd,hvd->...v", x, self.weight) + self.bias.sum(0)
        else:
            W, b = self._frozen["W"].float(), self._frozen["b"]
            y = (self.gain[:, None] * x).sum(-2)
            z = torch.einsum("...hd,hrd->...hr", x, self.B).flatten(-2)  # [..., H*r]
            a = self.A.permute(1, 0, 2).reshape(self.config.d_vocab, -1)  # [V, H*r]
            logits = y @ W.T + z @ a.T
            if b is not None:
                logits = logits + self.gain.sum() * b.float()
        return self._cap(logits)

    # -- persistence -----------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        """Write ``lens_config.json`` and ``lens.safetensors`` (trainable tensors only) into ``folder``."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous() for k, v in self.state_dict().items()}, str(folder / WEIGHTS_FILE))
        (folder / CONFIG_FILE).write_text(json.dumps(asdict(self.config), indent=2))
        return folder

    @classmethod
    def load(cls, folder: str | Path, lm: "LoadedModel") -> "AttentionLens":
        """A lens saved by :meth:`save`, attached to ``lm`` (which must have the lens's shapes)."""
        from safetensors.torch import load_file

        folder = Path(folder)
        if not (folder / CONFIG_FILE).is_file():
            raise FileNotFoundError(f"no attention lens in {folder} (missing {CONFIG_FILE})")
        cfg = LensConfig(**json.loads((folder / CONFIG_FILE).read_text()))
        shapes = (lm.n_heads, lm.d_model, lm.d_vocab)
        if (cfg.n_heads, cfg.d_model, cfg.d_vocab) != shapes or cfg.layer >= lm.n_layers:
            raise ValueError(f"lens in {folder} was made for {cfg.model!r} (heads, d_model, vocab = "
                             f"{(cfg.n_heads, cfg.d_model, cfg.d_vocab)}, layer {cfg.layer}); {lm.name} has "
                             f"{shapes} and {lm.n_layers} layers")
        lens = cls(lm, cfg.layer, cfg.rank, normalize=cfg.normalize)
        lens.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
        lens.config = cfg
        return lens


# ---------------------------------------------------------------------------------------------------------
def head_outputs(lm: "LoadedModel", prompts: Sequence[str], layer: int, position: int = -1) -> torch.Tensor:
    """``head_out`` of ``layer`` at ``position`` (default: the last prompt token): ``[n, n_heads, d_model]``."""
    from hopscope.engine import run_with_cache

    _, acts = run_with_cache(lm, list(prompts), components=("head_out",), layers=[layer])
    layer = layer + lm.n_layers if layer < 0 else layer
    return acts["head_out", layer][:, position]


def show_lens(lm: "LoadedModel", lens: AttentionLens, prompt: str, k: int = 5) -> pd.DataFrame:
    """Per head of the lens's layer: top-``k`` tokens through the lens and through the plain projection."""
    from hopscope.lenses.projection import project, top_tokens

    x = head_outputs(lm, [prompt], lens.config.layer)[0]  # [H, d]
    with torch.no_grad():
        through_lens = lens.head_logits(x)
    plain = project(lm, x, normalize=lens.config.normalize)
    return pd.DataFrame({"head": range(lm.n_heads), "lens_top": top_tokens(lm, through_lens, k),
                         "projection_top": top_tokens(lm, plain, k)})


def head_target_scores(lm: "LoadedModel", lens: AttentionLens, prompts: Sequence[str], targets: Sequence[str],
                       batch_size: int = 16) -> pd.DataFrame:
    """Per (prompt, head): log-prob and rank of each prompt's target's first token under the head's lens."""
    from hopscope.engine.answers import first_token_id

    rows = []
    for s in range(0, len(prompts), batch_size):
        ps, ts = list(prompts[s:s + batch_size]), list(targets[s:s + batch_size])
        x = head_outputs(lm, ps, lens.config.layer)
        with torch.no_grad():
            logp = torch.log_softmax(lens.head_logits(x), dim=-1)  # [n, H, V]
        ids = torch.tensor([first_token_id(lm.tokenizer, t) for t in ts])
        chosen = logp.gather(-1, ids[:, None, None].expand(-1, lm.n_heads, 1))[..., 0]
        rank = (logp > chosen[..., None]).sum(-1)
        for i in range(len(ps)):
            for h in range(lm.n_heads):
                rows.append({"prompt_index": s + i, "head": h, "logprob": float(chosen[i, h]),
                             "rank": int(rank[i, h])})
    return pd.DataFrame(rows)


def rank_heads(lm: "LoadedModel", lens: AttentionLens, prompts: Sequence[str], answers: Sequence[str],
               bridges: Sequence[str] | None = None) -> pd.DataFrame:
    """Heads of the lens's layer ranked by how strongly their lens output promotes the answer (and bridge).

    Columns: ``answer_logprob``/``answer_rank`` (mean log-prob, median rank over prompts), the same for the
    bridge, and ``score`` = the larger of the two mean log-probs; sorted by ``score``.
    """
    out = head_target_scores(lm, lens, prompts, answers).groupby("head").agg(
        answer_logprob=("logprob", "mean"), answer_rank=("rank", "median"))
    out["score"] = out.answer_logprob
    if bridges is not None:
        b = head_target_scores(lm, lens, prompts, bridges).groupby("head").agg(
            bridge_logprob=("logprob", "mean"), bridge_rank=("rank", "median"))
        out = out.join(b)
        out["score"] = out[["answer_logprob", "bridge_logprob"]].max(axis=1)
    out.insert(0, "layer", lens.config.layer)
    return out.sort_values("score", ascending=False).reset_index()
