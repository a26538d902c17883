"""Heads of the injection layer: which of them can carry the memory's effect, and which the answer needs.

Adding a residual-space vector to one head's output equals adding it to the layer's attention output (the
heads' outputs are summed), so a plain head injection cannot tell heads apart. A head can only *write* in
the column space of its slice of the output projection, ``W_O^h``; injecting ``P_S m`` (the memory projected
onto the joint column space of a set ``S`` of heads, ``W_S pinv(W_S) m``) asks how much of the memory's
effect those heads could carry. Rows go through the engine: ``add`` at ``head_out`` of one head (equal to
``attn_out`` for a residual vector), ``zero_ablate`` of a head's value vector for ablations (at the positions
the memory is injected at).
"""

from __future__ import annotations

import itertools
import random
from typing import TYPE_CHECKING, Sequence

import pandas as pd
import torch

from hopscope.engine import Site, add, first_token_id, prompt_pass, zero_ablate
from hopscope.methods.injection.grid import Where, score_change

if TYPE_CHECKING:
    from hopscope.models.loaded import LoadedModel


def head_write_matrix(lm: "LoadedModel", layer: int, heads: Sequence[int]) -> torch.Tensor:
    """The heads' columns of the output projection, ``[d_model, len(heads) * d_head]``."""
    w = lm.adapter.out_proj_weight(layer).detach().double().cpu()
    dh = lm.d_head
    bad = [h for h in heads if not 0 <= h < lm.n_heads]
    if bad:
        raise ValueError(f"head(s) {bad} out of range: {lm.name} has {lm.n_heads} heads (0..{lm.n_heads - 1})")
    return torch.cat([w[:, h * dh:(h + 1) * dh] for h in heads], dim=1)


def project_on_heads(lm: "LoadedModel", layer: int, heads: Sequence[int], vec: torch.Tensor) -> torch.Tensor:
    """``P_S vec``: the part of ``vec`` the heads ``S`` can write (least-squares projection on their columns)."""
    w = head_write_matrix(lm, layer, heads)
    return (w @ (torch.linalg.pinv(w) @ vec.double().cpu())).float()


def _rows(lm, prompt: str, answer: str, ivs: list[list], where: Where, batch_size: int) -> dict:
    logits = prompt_pass(lm, prompt, [[]] + ivs, start=where.start, batch_size=batch_size).logits.float().cpu()
    return score_change(logits[0], logits[1:], first_token_id(lm.tokenizer, answer))


def head_injection(lm: "LoadedModel", prompt: str, answer: str, layer: int, tau: float, memory: torch.Tensor,
                   where: Where, batch_size: int = 256) -> pd.DataFrame:
    """Per head: ``tau * P_h m`` added to the head's output (``m`` the gold memory). One row per head."""
    heads = list(range(lm.n_heads))
    ivs = [[add(Site(layer, "head_out", where.position, head=h), tau * project_on_heads(lm, layer, [h], memory))]
           for h in heads]
    df = pd.DataFrame({"head": heads})
    for k, v in _rows(lm, prompt, answer, ivs, where, batch_size).items():
        df[k] = v
    return df


def head_ablation(lm: "LoadedModel", prompt: str, answer: str, layer: int, where: Where,
                  batch_size: int = 256) -> pd.DataFrame:
    """Per head: the head zero-ablated at the injection's positions (no memory). One row per head."""
    heads = list(range(lm.n_heads))
    ivs = [[zero_ablate(Site(layer, "head_out", where.position, head=h))] for h in heads]
    df = pd.DataFrame({"head": heads})
    for k, v in _rows(lm, prompt, answer, ivs, where, batch_size).items():
        df[k] = v
    return df


def random_head_sets(n_heads: int, k: int, top: Sequence[int], count: int, seed: int) -> list[tuple[int, ...]]:
    """Up to ``count`` distinct ``k``-sets of heads other than ``top``, drawn with ``seed`` (all when fewer)."""
    sets = [s for s in itertools.combinations(range(n_heads), k) if set(s) != set(top)]
    if len(sets) <= count:
        return sets
    return sorted(random.Random(seed).sample(sets, count))


def head_set_injection(lm: "LoadedModel", prompt: str, answer: str, layer: int, tau: float, memory: torch.Tensor,
                       top: Sequence[int], others: Sequence[Sequence[int]], where: Where,
                       batch_size: int = 256) -> pd.DataFrame:
    """The memory projected on the top heads' joint output space, on each random set's, and in full.

    Rows: ``condition`` in ``all`` (``tau * m`` into ``attn_out``), ``top`` and ``random`` (``set_index``);
    ``heads`` names the set.
    """
    site = Site(layer, "attn_out", where.position)
    sets = [("all", -1, tuple(range(lm.n_heads)))] + [("top", 0, tuple(top))] + [
        ("random", i, tuple(s)) for i, s in enumerate(others)]
    ivs = [[add(site, tau * (memory if cond == "all" else project_on_heads(lm, layer, list(s), memory)))]
           for cond, _, s in sets]
    df = pd.DataFrame({"condition": [c for c, _, _ in sets], "set_index": [i for _, i, _ in sets],
                       "heads": [",".join(map(str, s)) for _, _, s in sets]})
    for k, v in _rows(lm, prompt, answer, ivs, where, batch_size).items():
        df[k] = v
    return df
