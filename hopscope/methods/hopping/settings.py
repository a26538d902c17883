"""Settings of the hopping analyses (Biran et al. 2024, "Hopping Too Late").

Defaults are the paper's full-size protocol: every layer, every (s, t) pair, every query of the groups.
``quick()`` is a smoke size; ``study()`` is the size ``hopscope study`` uses (large enough to decide the
fix-rate claim, within a few minutes on a laptop CPU). Sizes never change a definition: ``protocol="paper"``
fixes the definitions, and a setting that deviates from the paper (start-only answer matching, knocking out
the whole e1 span, back-patching every query whatever its group) needs ``protocol="custom"``, so that a
report saying "paper protocol" means it.

Layer grids (``layers``, ``patchscope_layers``, ``knockout_layers``) are ``None`` (every layer), an int ``k``
(``k`` evenly spaced layers, the first and the last included) or explicit layer indices (negative ones count
from the end); they are resolved against the model when the analysis runs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Sequence

from hopscope.engine import MatchRule

PROTOCOLS = ("paper", "custom")
POPULATIONS = ("paper", "all")
VARIANTS = ("last", "e1")  # back-patch position: the last token (t2) or e1's last token (t1)
CONTROLS = ("forward", "random", "unrelated")
TARGETS = ("description", "repeat")
KNOCKOUT_KEYS = ("t1", "e1_span")
PROJECTIONS = ("attn_out", "mlp_out", "resid_post")
LayerSpec = int | tuple[int, ...] | None
# Compositions whose entity shortcut ("the capital of Shenzhen", "the country Shenzhen shares a border with") is not
# answered by the same fact as the composition: for r2 = currency, language, demonym or continent, "r2 of <city>" is
# its country's by definition, so nearly every such query is shortcut-solvable and the paper's groups drop it.
SHORTCUT_FREE_COMPOSITIONS = ("city_country_capital", "city_country_neighbor", "capital_country_neighbor")


@dataclass
class KnowledgeSettings:
    """The knowledge filter: which data, and the one answer-matching rule of the run."""

    queries_per_composition: int | None = 1000  # when the analysis builds world facts itself
    compositions: tuple[str, ...] = ()  # () = the data layer's default compositions
    k_shot: int = 3
    max_new_tokens: int = 10  # the paper's budget: an alias within the first 10 greedy tokens
    match_anywhere: bool = True  # the paper's rule; False = only at the start (a deviation)
    criterion: str = "generation"  # knowledge judged by the greedy generation (the paper's criterion)
    shard_queries: int = 128  # queries per shard of the filter (prompts of one shard share prefixes)
    batch_size: int = 256
    seed: int = 0

    @classmethod
    def quick(cls) -> "KnowledgeSettings":
        return cls(queries_per_composition=3, compositions=SHORTCUT_FREE_COMPOSITIONS)

    @classmethod
    def study(cls) -> "KnowledgeSettings":
        return cls(queries_per_composition=70, compositions=SHORTCUT_FREE_COMPOSITIONS)

    @property
    def rule(self) -> MatchRule:
        return MatchRule(self.max_new_tokens, self.match_anywhere)

    def validate(self, protocol: str = "paper") -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.criterion not in ("generation", "first_token", "either", "both"):
            raise ValueError(f"unknown criterion {self.criterion!r}; choose generation, first_token, either or both")
        if self.queries_per_composition is not None and self.queries_per_composition < 1:
            raise ValueError(f"queries_per_composition must be at least 1, got {self.queries_per_composition}")
        if protocol == "paper":
            deviations = [name for name, ok in (("match_anywhere=False", self.match_anywhere),
                                                (f"criterion={self.criterion!r}", self.criterion == "generation"))
                          if not ok]
            if deviations:
                raise ValueError(f"{', '.join(deviations)} deviate from the paper: set protocol='custom'")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["compositions"] = list(self.compositions)
        d["match_rule"] = self.rule.to_dict()
        return d


@dataclass
class Settings:
    """Back-patching, Patchscopes, attention knockout, sublayer projections and the resolution stages."""

    protocol: str = "paper"
    knowledge: KnowledgeSettings = field(default_factory=KnowledgeSettings)
    population: str = "paper"  # "all": analyse every query, whatever its group (needs protocol="custom")
    n_incorrect: int | None = None  # at most this many incorrect queries (population "all": queries); None = all
    n_correct: int | None = None
    n_resolve: int | None = None  # per group, for Patchscopes / knockout / projections (a nested sample)
    # back-patching
    backpatch: bool = True
    layers: LayerSpec = None  # the (s, t) grid
    variants: tuple[str, ...] = VARIANTS
    controls: tuple[str, ...] = CONTROLS  # hopscope's controls (beyond the paper), on the incorrect group
    control_variants: tuple[str, ...] = ("last",)
    # resolution
    resolve: bool = True
    patchscope_layers: LayerSpec = None  # source layers of the Patchscopes grid
    patchscope_target_layers: LayerSpec = None  # target layers (None: every layer)
    patchscope_targets: tuple[str, ...] = ("description",)
    knockout_layers: LayerSpec = None  # window centres
    knockout_window: int = 3  # half-width k: layers c-k .. c+k (the paper's k = 3)
    knockout_keys: str = "t1"  # "e1_span": every e1 token (needs protocol="custom")
    projections: tuple[str, ...] = PROJECTIONS  # resid_post (the logit lens) goes beyond the paper
    shard_queries: int = 8  # queries per shard of the projection stage
    batch_size: int = 256
    seed: int = 0  # governs everything, the knowledge filter's data included (knowledge.seed follows it)

    def __post_init__(self) -> None:
        if self.knowledge.seed != self.seed:
            self.knowledge = replace(self.knowledge, seed=self.seed)

    @classmethod
    def quick(cls) -> "Settings":
        """A smoke size (well under a minute on the default model): 4 layers, a handful of queries."""
        return cls(knowledge=KnowledgeSettings.quick(), n_incorrect=3, n_correct=2, n_resolve=2, layers=4,
                   variants=("last",), patchscope_layers=4, patchscope_target_layers=2, knockout_layers=4)

    @classmethod
    def study(cls) -> "Settings":
        """The size ``hopscope study`` uses (about 5 minutes on an idle 2-core CPU with the default model).

        Up to 100 incorrect shortcut-free queries (a binomial 95% interval of at most +-0.10), drawn from 70
        queries of each composition that shortcuts do not answer by construction; a 4-layer (s, t) grid (6
        back-patches, and 6 per control, per query); 20 queries per group for the resolution stages, with
        Patchscopes from 8 source layers into 3 target layers and knockout windows at 10 centres.
        """
        return cls(knowledge=KnowledgeSettings.study(), n_incorrect=100, n_correct=30, n_resolve=20, layers=4,
                   patchscope_layers=8, patchscope_target_layers=3, knockout_layers=10)

    @property
    def rule(self) -> MatchRule:
        return self.knowledge.rule

    def validate(self) -> None:
        """Raise ValueError (one line) for an unknown option or a deviation under protocol='paper'."""
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {self.protocol!r}; choose from {', '.join(PROTOCOLS)}")
        self.knowledge.validate(self.protocol)
        _choices("population", [self.population], POPULATIONS)
        _choices("variants", self.variants, VARIANTS)
        _choices("controls", self.controls, CONTROLS)
        _choices("control_variants", self.control_variants, VARIANTS)
        _choices("patchscope_targets", self.patchscope_targets, TARGETS)
        _choices("knockout_keys", [self.knockout_keys], KNOCKOUT_KEYS)
        _choices("projections", self.projections, PROJECTIONS)
        if self.knockout_window < 0:
            raise ValueError(f"knockout_window must be >= 0, got {self.knockout_window}")
        for name in ("n_incorrect", "n_correct", "n_resolve"):
            v = getattr(self, name)
            if v is not None and v < 0:
                raise ValueError(f"{name} must be >= 0 (or None for all), got {v}")
        for name in ("layers", "patchscope_layers", "patchscope_target_layers", "knockout_layers"):
            spec = getattr(self, name)
            if isinstance(spec, int) and not isinstance(spec, bool) and spec < 1:
                raise ValueError(f"{name}={spec}: give at least 1 layer (or None for every layer)")
        if self.protocol == "paper":
            deviations = []
            if self.population != "paper":
                deviations.append(f"population={self.population!r}")
            if self.knockout_keys != "t1":
                deviations.append(f"knockout_keys={self.knockout_keys!r}")
            if deviations:
                raise ValueError(f"{', '.join(deviations)} deviate from the paper: set protocol='custom'")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Settings":
        """Settings from :meth:`to_dict` (e.g. a run folder's recorded arguments)."""
        known = {f.name for f in fields(cls)}
        values = {k: _tuples(v) for k, v in d.items() if k in known and k != "knowledge"}
        k_known = {f.name for f in fields(KnowledgeSettings)}
        kn = {k: _tuples(v) for k, v in (d.get("knowledge") or {}).items() if k in k_known}
        return cls(knowledge=KnowledgeSettings(**kn), **values)

    def to_dict(self) -> dict[str, Any]:
        d = {}
        for f in fields(self):
            v = getattr(self, f.name)
            d[f.name] = v.to_dict() if f.name == "knowledge" else (list(v) if isinstance(v, tuple) else v)
        return d


def _tuples(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _choices(name: str, values: Sequence[str], allowed: Sequence[str]) -> None:
    bad = [v for v in values if v not in allowed]
    if bad:
        raise ValueError(f"unknown {name} {bad}; choose from {', '.join(allowed)}")


def layer_grid(spec: LayerSpec, n_layers: int, *, name: str = "layers") -> list[int]:
    """The layers a grid spec names for a model of ``n_layers`` (sorted, unique)."""
    if spec is None:
        return list(range(n_layers))
    if isinstance(spec, int) and not isinstance(spec, bool):
        k = min(spec, n_layers)
        if k == 1:
            return [n_layers - 1]
        return sorted({round(i * (n_layers - 1) / (k - 1)) for i in range(k)})
    layers = sorted({int(l) + n_layers if int(l) < 0 else int(l) for l in spec})
    bad = [l for l in layers if not 0 <= l < n_layers]
    if bad or not layers:
        raise ValueError(f"{name}: layers {bad or list(spec)} are outside 0..{n_layers - 1}")
    return layers
