"""The repair policies as engine interventions on one query's prompt (or one window of plain text).

* ``backpatch``: for each chosen (s, t), ``resid_post`` of block t at the patched position is replaced by the
  clean run's ``resid_post`` of block s there (Biran et al. 2024); ``backpatch_random``: the same sites get
  random vectors of the same norms (hopping's control, :func:`hopscope.methods.hopping.backpatch.random_like`);
* ``self_injection`` / ``gold_injection`` / ``random_injection``: ``tau * memory`` added to ``attn_out`` of the
  chosen layer at the injected positions (Sakarvadia et al. 2023; :mod:`hopscope.methods.injection.grid`);
* ``mitigation``: the recall analysis's final-layer edit (:class:`hopscope.methods.recall.Mitigation`), which
  :func:`hopscope.methods.repair.decode.decode_rows` applies as an edit of the model (every prompt position and
  every generated token);
  ``mitigation_random``: an edit of the same kind and size on random heads, neurons or a random direction;
* ``none``: no intervention.

On plain text every policy acts at every position: a back-patch writes the text's own clean block-s states into
block t everywhere, an injection adds its memory everywhere, the mitigation edits every position.
"""

from __future__ import annotations

import math
import random
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import torch

from hopscope.engine import Intervention, Site, add, cache, prompt_pass, replace
from hopscope.methods.hopping import queries as Q
from hopscope.methods.hopping.backpatch import random_like
from hopscope.methods.hopping.settings import layer_grid
from hopscope.methods.injection.grid import Where
from hopscope.methods.injection.pairs import query_start
from hopscope.methods.recall.linearize import mlp_spec
from hopscope.methods.recall.mitigation import Mitigation

if TYPE_CHECKING:
    from hopscope.methods.repair.settings import Settings
    from hopscope.models.loaded import LoadedModel

POLICIES = ("none", "backpatch", "backpatch_random", "self_injection", "gold_injection", "random_injection",
            "mitigation", "mitigation_random")
REPAIRS = ("backpatch", "self_injection", "gold_injection", "mitigation")  # ranked in the report
CONTROLS = {"backpatch": "backpatch_random", "self_injection": "random_injection",
            "gold_injection": "random_injection", "mitigation": "mitigation_random"}
FAMILY_OF = {"none": "none", "backpatch": "backpatch", "backpatch_random": "backpatch", "self_injection": "injection",
             "gold_injection": "injection", "random_injection": "injection", "mitigation": "mitigation",
             "mitigation_random": "mitigation"}
MEMORY_OF = {"self_injection": "self", "gold_injection": "gold", "random_injection": "random"}


@dataclass(frozen=True)
class Spec:
    """One row of a pass: the policy, its candidate's name and parameters (-1 / NaN where they do not apply)."""

    policy: str
    candidate: str = ""
    s: int = -1
    t: int = -1
    layer: int = -1
    tau: float = math.nan

    def row(self) -> dict[str, Any]:
        return {"policy": self.policy, "candidate": self.candidate or self.policy, "s": self.s, "t": self.t,
                "layer": self.layer, "tau": self.tau}


# ---- candidates -------------------------------------------------------------------------------------------
def backpatch_pairs(s: "Settings", n_layers: int) -> list[tuple[int, int]]:
    """The candidate (s, t) pairs: ``backpatch_pairs`` if given, else every s > t of the layer grid."""
    if s.backpatch_pairs:
        bad = [p for p in s.backpatch_pairs if not all(-n_layers <= x < n_layers for x in p)]
        if bad:
            raise ValueError(f"backpatch_pairs {bad} are outside the model's layers 0..{n_layers - 1}")
        return [(a % n_layers, b % n_layers) for a, b in s.backpatch_pairs]
    layers = layer_grid(s.backpatch_layers, n_layers, name="backpatch_layers")
    return [(a, b) for a in layers for b in layers if a > b]


def injection_cells(s: "Settings", n_layers: int) -> list[tuple[int, float]]:
    """The candidate (layer, tau) cells of the injection grid."""
    return [(layer, tau) for layer in layer_grid(s.inject_layers, n_layers, name="inject_layers") for tau in s.taus]


def pair_name(pairs: Sequence[Sequence[int]]) -> str:
    return " + ".join(f"s={int(a)} t={int(b)}" for a, b in pairs)


def cell_name(layer: int, tau: float) -> str:
    return f"L{int(layer)} tau={float(tau):g}"


# ---- one query's prompt -----------------------------------------------------------------------------------
class QueryPrompt:
    """A query's composed prompt as the policies see it: where a back-patch and an injection act, the clean
    states a back-patch writes, and the earliest position a pass over all the rows must recompute."""

    def __init__(self, lm: "LoadedModel", q: Any, s: "Settings", sources: Sequence[int]) -> None:
        self.q, self.prompt = q, q.prompt
        self.n = len(lm.to_ids(q.prompt))
        self.patch_at = Q.position(lm, q, s.backpatch_position)
        self.where = Where.of(s.inject_positions, self.n, query_start(lm, q.prompt))
        self.states = clean_states(lm, q.prompt, sources, self.patch_at)
        positions = [self.n - 1, self.where.start % self.n]
        if self.states:
            positions.append(self.patch_at)
        self.start = min(positions)


def clean_states(lm: "LoadedModel", prompt: str, layers: Sequence[int], position: int) -> dict[int, torch.Tensor]:
    """``resid_post`` of each of ``layers`` at ``position`` in the clean run (one cached last-positions pass)."""
    layers = sorted(set(int(x) for x in layers))
    if not layers:
        return {}
    res = prompt_pass(lm, prompt, [[cache(Site(l, "resid_post", position)) for l in layers]], start=position)
    return {l: res.cache[0][Site(l, "resid_post", position)].reshape(-1).clone() for l in layers}


def backpatch(pairs: Sequence[Sequence[int]], states: Mapping[int, torch.Tensor], position: Any) -> list[Intervention]:
    """Block t's output at ``position`` replaced by the clean block-s state, for every (s, t)."""
    return [replace(Site(int(t), "resid_post", position), states[int(s)]) for s, t in pairs]


def random_backpatch(pairs: Sequence[Sequence[int]], states: Mapping[int, torch.Tensor], position: Any, seed: int,
                     qid: str) -> list[Intervention]:
    """The back-patch's sites given random vectors with the norms of the clean states (seeded per query)."""
    gen = torch.Generator().manual_seed(zlib.crc32(f"{seed}|{qid}|backpatch_random".encode()))
    return [replace(Site(int(t), "resid_post", position), random_like(states[int(s)], gen)) for s, t in pairs]


def injection(vector: torch.Tensor | None, layer: int, tau: float, position: Any) -> list[Intervention]:
    """``tau * vector`` added to ``attn_out`` of ``layer`` at ``position`` (no vector: nothing)."""
    if vector is None:
        return []
    return [add(Site(int(layer), "attn_out", position), float(tau) * vector)]


def mitigation(lm: "LoadedModel", row: Mapping[str, Any] | None, position: Any = -1) -> list[Intervention]:
    """The interventions of a mitigation row (:meth:`Mitigation.to_row`) at ``position`` (None: every one)."""
    if row is None:
        return []
    return Mitigation.from_row(row).interventions(lm, position)


def random_mitigation(lm: "LoadedModel", row: Mapping[str, Any], seed: int) -> dict[str, Any]:
    """A mitigation of the same kind, layer, factor and size as ``row`` on random heads or neurons (not the
    chosen ones), or a random direction: the mitigation's control (a fixed draw from ``seed``)."""
    m = Mitigation.from_row(row)
    rng = random.Random(f"{seed}|repair|mitigation_random")
    layer = m.layer % lm.n_layers
    if m.kind == "heads":
        pool = [h for h in range(lm.n_heads) if h not in set(m.heads)] or list(range(lm.n_heads))
        out = Mitigation("heads", m.layer, heads=sorted(rng.sample(pool, min(len(m.heads), len(pool)))),
                         factor=m.factor)
    elif m.kind == "neurons":
        d_mlp = mlp_spec(lm, layer).d_mlp
        pool = [i for i in range(d_mlp) if i not in set(m.neurons)] or list(range(d_mlp))
        out = Mitigation("neurons", m.layer, neurons=sorted(rng.sample(pool, min(len(m.neurons), len(pool)))),
                         factor=m.factor)
    else:
        gen = torch.Generator().manual_seed(rng.randrange(2 ** 31))
        out = Mitigation("project", m.layer, target=m.target,
                         direction=torch.randn(torch.as_tensor(m.direction).shape, generator=gen))
    return {**out.to_row(), "mitigation": f"random: {out.name}"}
