"""Settings of the repair analysis: which repairs are tried, how each is chosen on the training queries, and
how big the run is.

Defaults are the full-size protocol of every piece: the knowledge filter's own defaults (the paper's rule), every
(s, t) back-patch pair of every layer (Biran et al. 2024), every layer x tau 1..15 of the injection grid at every
prompt position (the seed of Sakarvadia et al. 2023), the recall analysis's mitigation chosen on all of its
prompts (Lv et al. 2024), 32 windows of plain text. ``quick()`` is a smoke size; ``study()`` the size
``hopscope study`` uses. Sizes never change a definition.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any, Mapping

from hopscope.engine import MatchRule
from hopscope.methods.hopping.settings import KnowledgeSettings, LayerSpec
from hopscope.methods.injection.settings import POSITIONS, SEED_TAUS, SOURCES

FAMILIES = ("backpatch", "injection", "mitigation")  # policy families; "none" always runs
MITIGATION_FROM = ("recall", "train")
BACKPATCH_POSITIONS = ("last", "e1")


@dataclass
class Settings:
    """What one repair run computes.

    Data: the two-hop queries (``knowledge`` builds world facts when no data is given) in the knowledge
    filter's correct and incorrect groups (shortcut-free, Biran et al. 2024), at most ``max_per_entity`` of
    them per bridge entity and ``n_queries`` in all (seeded; None = no limit), split into train and held-out by
    bridge entity: queries whose bridges (e2 or an alias) coincide go to the same side, and about
    ``heldout_fraction`` of each group is held out.

    Policies (``families``): ``backpatch``: the ``backpatch_set`` (s, t) pairs (s > t, over the
    ``backpatch_layers`` grid, or the explicit ``backpatch_pairs``) with the best net accuracy gain on train,
    patched at ``backpatch_position`` (``last`` = t2, ``e1`` = t1); ``injection``: the model's own first-hop
    answer as the memory (``source`` vectors, tokenized as written unless ``memory_space``), ``tau * memory``
    added to ``attn_out`` of the (layer, tau) over ``inject_layers`` x ``taus`` with the best net gain on train,
    at ``inject_positions``; the gold bridge and a random memory of as many tokens go in the same cell;
    ``mitigation``: the final-layer edit of the recall analysis, proposed on its own prompts
    (``mitigation_relation``, ``mitigation_prompts``, ``mitigation_shots``, ``k_heads``, ``k_neurons``,
    ``factor``) and chosen there (``mitigation_from="recall"``), or proposed on the training queries' composed
    prompts (e1 as the subject, e3 as the answer) and chosen by net accuracy gain on train (``"train"``).

    Cost: ``text_windows`` windows of ``window`` tokens of the recall analysis's plain text, every policy
    applied at every position.
    """

    knowledge: KnowledgeSettings = field(default_factory=KnowledgeSettings)
    n_queries: int | None = None
    max_per_entity: int | None = None
    heldout_fraction: float = 0.5
    families: tuple[str, ...] = FAMILIES
    backpatch_layers: LayerSpec = None
    backpatch_pairs: tuple[tuple[int, int], ...] = ()
    backpatch_set: int = 1
    backpatch_position: str = "last"
    inject_layers: LayerSpec = None
    taus: tuple[float, ...] = SEED_TAUS
    inject_positions: str = "all"
    source: str = "unembed_processed"
    memory_space: bool = False
    memory_bos: bool = False
    mitigation_from: str = "recall"
    mitigation_relation: str = "capital"
    mitigation_prompts: int | None = None
    mitigation_shots: int = 0
    k_heads: int = 2
    k_neurons: int = 16
    factor: float = 0.0
    text_windows: int = 32
    window: int = 64
    shard_queries: int = 8
    batch_size: int = 256
    seed: int = 0  # governs everything, the knowledge filter's data included (knowledge.seed follows it)

    def __post_init__(self) -> None:
        if isinstance(self.knowledge, Mapping):
            self.knowledge = _knowledge(self.knowledge)
        if self.knowledge.seed != self.seed:
            self.knowledge = replace(self.knowledge, seed=self.seed)
        self.families = tuple(str(f) for f in self.families)
        self.backpatch_pairs = tuple((int(s), int(t)) for s, t in self.backpatch_pairs)
        self.taus = tuple(float(t) for t in self.taus)
        for name in ("backpatch_layers", "inject_layers"):
            spec = getattr(self, name)
            if isinstance(spec, (list, tuple)):
                setattr(self, name, tuple(int(x) for x in spec))
        self.validate()

    def validate(self) -> None:
        """Raise ValueError (one line) for an unknown option or an impossible size."""
        self.knowledge.validate("custom")
        _choices("families", self.families, FAMILIES)
        if not self.families:
            raise ValueError(f"families is empty: choose some of {', '.join(FAMILIES)}")
        _choices("backpatch_position", [self.backpatch_position], BACKPATCH_POSITIONS)
        _choices("inject_positions", [self.inject_positions], POSITIONS)
        _choices("source", [self.source], SOURCES)
        _choices("mitigation_from", [self.mitigation_from], MITIGATION_FROM)
        if not 0.0 < self.heldout_fraction < 1.0:
            raise ValueError(f"heldout_fraction must be between 0 and 1 (exclusive), got {self.heldout_fraction}")
        if self.n_queries is not None and self.n_queries < 2:
            raise ValueError(f"n_queries must be at least 2 (one to train on, one to hold out), got {self.n_queries}")
        if self.max_per_entity is not None and self.max_per_entity < 1:
            raise ValueError(f"max_per_entity must be at least 1 (or None: no limit), got {self.max_per_entity}")
        if not self.taus:
            raise ValueError("taus is empty: the injection grid needs at least one tau")
        if self.mitigation_prompts is not None and self.mitigation_prompts < 4:
            raise ValueError(f"mitigation_prompts must be at least 4 (the recall analysis's minimum), "
                             f"got {self.mitigation_prompts}")
        for name in ("backpatch_set", "window", "shard_queries", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("text_windows", "k_heads", "k_neurons", "mitigation_shots"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("backpatch_layers", "inject_layers"):
            spec = getattr(self, name)
            if isinstance(spec, int) and not isinstance(spec, bool) and spec < 1:
                raise ValueError(f"{name}={spec}: give at least 1 layer (or None for every layer)")

    @classmethod
    def quick(cls, **changes: Any) -> "Settings":
        """A smoke size (well under a minute on the default model): 4 queries per composition, 3-layer grids."""
        base = dict(knowledge=KnowledgeSettings.quick(), backpatch_layers=3, inject_layers=3, taus=(4.0, 12.0),
                    inject_positions="last", mitigation_prompts=12, text_windows=2, window=32)
        return cls(**{**base, **changes})

    @classmethod
    def study(cls, **changes: Any) -> "Settings":
        """The size ``hopscope study`` uses: the hopping study's knowledge filter (70 queries of each
        shortcut-free composition), at most 10 of its correct and incorrect queries per bridge entity, 60% held
        out; a 4-layer back-patch grid (6 pairs, as the hopping study); 8 layers x taus 16, 64, 128 of injection
        at the last position (the seed's taus 1..15 were set for GPT-2: on SmolLM2 a one-token memory has norm
        ~3.8 against residual norms of 70-200 in the middle layers, and changes no generation below tau ~48); the
        recall study's mitigation (120 prompts); 4 windows of 64 tokens. About 3 minutes on an idle 2-core CPU."""
        base = dict(knowledge=KnowledgeSettings.study(), max_per_entity=10, heldout_fraction=0.6,
                    backpatch_layers=4, inject_layers=8, taus=(16.0, 64.0, 128.0), inject_positions="last",
                    mitigation_prompts=120, text_windows=4, window=64)
        return cls(**{**base, **changes})

    @property
    def rule(self) -> MatchRule:
        return self.knowledge.rule

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            d[f.name] = v.to_dict() if f.name == "knowledge" else _jsonable(v)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Settings":
        """The settings :meth:`to_dict` wrote (e.g. a run folder's ``args``); unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"repair has no setting(s) {unknown}; its settings are {', '.join(sorted(known))}")
        return cls(**dict(data))


def _knowledge(data: Mapping[str, Any]) -> KnowledgeSettings:
    names = {f.name for f in fields(KnowledgeSettings)}
    kw = {k: v for k, v in data.items() if k in names}
    if "compositions" in kw:
        kw["compositions"] = tuple(kw["compositions"])
    return KnowledgeSettings(**kw)


def _jsonable(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_jsonable(x) for x in v]
    return v


def _choices(name: str, values: Any, allowed: tuple[str, ...]) -> None:
    bad = [v for v in values if v not in allowed]
    if bad:
        raise ValueError(f"unknown {name} {bad}; choose from {', '.join(allowed)}")


