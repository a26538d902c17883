"""Attention Lens (Sakarvadia et al. 2023, arXiv 2310.16270): one trainable lens per attention head.

A head's lens maps the head's *raw* output (its contribution to the residual stream, ``head_out``, no
per-head norm) to vocabulary logits; a layer's lens is the sum of its heads' lenses, trained so that it
matches the model's final next-token distribution (:mod:`hopscope.train.lens`).

Every lens starts as the linear logit lens of :func:`hopscope.lenses.projection.linear_logits` (the final
norm's centring and gain folded into the unembedding, centred over the vocabulary, no bias): an untrained
head lens equals that projection of the head's output, and the heads' untrained lenses sum to the
projection of ``attn_out`` minus the output bias's. Kinds:

* full rank (``rank=None``, the paper's): a free ``[vocab, d_model]`` matrix and a bias per head;
* low rank (``rank=r``): the frozen projection times a per-head gain plus a rank-``r`` update ``A_h B_h``
  (``A_h`` starts at zero) and a bias, which trains on a CPU in seconds.

``init="raw"`` starts from the model's raw unembedding instead (the seed repository's ``LensA``, which uses
``lm_head.weight``); the input is still centred for LayerNorm families (the final norm ignores that direction).
The final-logit softcap (Gemma 2) is not applied: a lens is linear.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import pandas as pd
import torch
from torch import nn

from hopscope.engine import Site, cache, first_token_id, run
from hopscope.lenses.projection import final_norm_linear, linear_logits, processed_unembedding, top_tokens

if TYPE_CHECKING:
    from hopscope.models.loaded import LoadedModel

CONFIG_FILE = "lens_config.json"
WEIGHTS_FILE = "lens.safetensors"
INITS = ("processed", "raw")


@dataclass
class LensConfig:
    """What a lens is: its layer, the model's shapes, the kind (``rank`` None = full rank) and its training."""

    layer: int
    n_heads: int
    d_model: int
    d_vocab: int
    rank: int | None = None
    init: str = "processed"
    centres: bool = False
    model: str = ""
    trained: dict[str, Any] = field(default_factory=dict)


class AttentionLens(nn.Module):
    """Per-head lenses of one layer: head outputs ``[..., n_heads, d_model]`` to logits."""

    def __init__(self, lm: "LoadedModel", layer: int, rank: int | None = None, *, init: str = "processed",
                 seed: int = 0) -> None:
        super().__init__()
        layer = layer + lm.n_layers if layer < 0 else layer
        if not 0 <= layer < lm.n_layers:
            raise ValueError(f"layer {layer} is out of range: {lm.name} has {lm.n_layers} layers (0..{lm.n_layers - 1})")
        if rank is not None and rank < 1:
            raise ValueError(f"rank must be a positive integer or None (full rank), got {rank}")
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        H, d, V = lm.n_heads, lm.d_model, lm.d_vocab
        self.config = LensConfig(layer, H, d, V, rank, init, final_norm_linear(lm).centres, lm.name)
        w0 = (processed_unembedding(lm) if init == "processed"
              else lm.adapter.unembed_weight().detach().float().cpu()).contiguous()
        self.bias = nn.Parameter(torch.zeros(H, V))
        if rank is None:
            self.weight = nn.Parameter(w0[None].repeat(H, 1, 1))
        else:
            self.register_buffer("w0", w0, persistent=False)
            gen = torch.Generator().manual_seed(seed)
            self.gain = nn.Parameter(torch.ones(H))
            self.A = nn.Parameter(torch.zeros(H, V, rank))
            self.B = nn.Parameter(torch.randn(H, rank, d, generator=gen) / d ** 0.5)

    def _input(self, head_out: torch.Tensor) -> torch.Tensor:
        H, d = self.config.n_heads, self.config.d_model
        if head_out.shape[-2:] != (H, d):
            raise ValueError(f"the lens of layer {self.config.layer} takes [..., {H}, {d}] head outputs, "
                             f"got {tuple(head_out.shape)}")
        x = head_out.detach().float().to(self.bias.device)
        return x - x.mean(-1, keepdim=True) if self.config.centres else x

    def head_logits(self, head_out: torch.Tensor) -> torch.Tensor:
        """Each head's lens logits ``[..., n_heads, vocab]``."""
        x = self._input(head_out)
        if self.config.rank is None:
            return torch.einsum("...hd,hvd->...hv", x, self.weight) + self.bias
        low = torch.einsum("...hr,hvr->...hv", torch.einsum("...hd,hrd->...hr", x, self.B), self.A)
        return self.gain[:, None] * (x @ self.w0.T) + low + self.bias

    def forward(self, head_out: torch.Tensor) -> torch.Tensor:
        """The layer's lens logits ``[..., vocab]``: the heads' lens logits summed (without the
        ``[..., heads, vocab]`` intermediate)."""
        x = self._input(head_out)
        if self.config.rank is None:
            return torch.einsum("...hd,hvd->...v", x, self.weight) + self.bias.sum(0)
        y = (self.gain[:, None] * x).sum(-2) @ self.w0.T
        z = torch.einsum("...hd,hrd->...hr", x, self.B).flatten(-2)  # [..., H*r]
        a = self.A.permute(1, 0, 2).reshape(self.config.d_vocab, -1)  # [V, H*r]
        return y + z @ a.T + self.bias.sum(0)

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
            raise ValueError(f"the lens in {folder} was made for {cfg.model!r} (heads, d_model, vocab = "
                             f"{(cfg.n_heads, cfg.d_model, cfg.d_vocab)}, layer {cfg.layer}); {lm.name} has "
                             f"{shapes} and {lm.n_layers} layers")
        lens = cls(lm, cfg.layer, cfg.rank, init=cfg.init)
        lens.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
        lens.config = cfg
        return lens


# ---------------------------------------------------------------------------------------------------------
def head_outputs(lm: "LoadedModel", prompts: Sequence[str], layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw ``head_out`` of ``layer`` at the last prompt token ``[n, n_heads, d_model]`` and the model's
    last-position logits ``[n, vocab]``, in one last-position pass (prompts share their common prefix)."""
    layer = layer + lm.n_layers if layer < 0 else layer
    site = Site(layer, "head_out", -1)
    res = run(lm, list(prompts), [[cache(site)] for _ in prompts], last_only=True)
    return res.cached(site)[:, 0].float().cpu(), res.logits.float().cpu()


def show_lens(lm: "LoadedModel", lens: AttentionLens, prompt: str, k: int = 5) -> pd.DataFrame:
    """Per head of the lens's layer: top-``k`` tokens through the lens and through the linear projection."""
    x = head_outputs(lm, [prompt], lens.config.layer)[0][0]  # [H, d]
    with torch.no_grad():
        through_lens = lens.head_logits(x)
    plain = linear_logits(lm, x)
    return pd.DataFrame({"head": range(lm.n_heads), "lens_top": top_tokens(lm, through_lens, k),
                         "projection_top": top_tokens(lm, plain, k)})


def head_scores(lm: "LoadedModel", lens: AttentionLens, prompts: Sequence[str], targets: Sequence[str],
                qids: Sequence[str] | None = None, *, log_unigram: torch.Tensor | None = None,
                batch_size: int = 16) -> pd.DataFrame:
    """Per (prompt, head) at the last position: how the head's lens output bears on the model's output.

    Columns: ``head_norm`` (|head_out|), ``lens_logit`` (the target's first token's logit through the head's
    lens, centred over the vocabulary: the head's additive contribution to the layer lens's logit of the
    target, so it scales with the head's output), ``lens_rank``, ``lens_kl`` (KL from the model's final
    distribution to the softmax of the head's lens logits) and the same through the untrained linear
    projection (``linear_logit``, ``linear_rank``, ``linear_kl``), the logit-lens baseline; with
    ``log_unigram`` (log-probs ``[vocab]``) also ``unigram_kl``, the KL of that constant guess (per prompt).
    """
    qids = [str(i) for i in range(len(prompts))] if qids is None else list(qids)
    w = processed_unembedding(lm)
    rows = []
    for s in range(0, len(prompts), batch_size):
        ps, ts, qs = list(prompts[s:s + batch_size]), list(targets[s:s + batch_size]), qids[s:s + batch_size]
        x, final = head_outputs(lm, ps, lens.config.layer)  # [n, H, d], [n, V]
        final = torch.log_softmax(final, -1)
        ids = torch.tensor([first_token_id(lm.tokenizer, t) for t in ts])
        with torch.no_grad():
            stats = {"lens": lens.head_logits(x).cpu(), "linear": linear_logits(lm, x, w)}
        out = {}
        for name, logits in stats.items():
            centred = logits - logits.mean(-1, keepdim=True)
            chosen = centred.gather(-1, ids[:, None, None].expand(-1, lm.n_heads, 1))[..., 0]
            out[f"{name}_logit"] = chosen
            out[f"{name}_rank"] = (centred > chosen[..., None]).sum(-1)
            logq = torch.log_softmax(logits, -1)
            out[f"{name}_kl"] = (final.exp()[:, None] * (final[:, None] - logq)).sum(-1)
        norms = x.norm(dim=-1)
        extra = {}
        for i in range(len(ps)):
            if log_unigram is not None:
                extra = {"unigram_kl": float((final[i].exp() * (final[i] - log_unigram)).sum())}
            for h in range(lm.n_heads):
                rows.append({"qid": qs[i], "head": h, "head_norm": float(norms[i, h]), **extra,
                             **{k: (int(v[i, h]) if k.endswith("rank") else float(v[i, h])) for k, v in out.items()}})
    return pd.DataFrame(rows)
