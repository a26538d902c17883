"""Settings of the factual-recall analysis (Lv et al. 2024). Defaults: the paper's full protocol on the
world-facts relation (every prompt, every head causally checked, zero-shot); :meth:`Settings.quick` and
:meth:`Settings.study` are fixed smaller sizes (same seed, same tables)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

PATCH_SOURCES = ("other_subject", "mean")
HEAD_SETS = ("all", "candidates")
GAINS = ("regression", "linearised")


@dataclass(frozen=True)
class Settings:
    """What one recall run computes.

    Data: ``n`` single-hop prompts of ``relation`` (``hopscope.data.build_single_hop``, most popular subjects
    first; ``None`` = all of them) with ``shots`` demonstrations; ``n_other`` prompts of each other world-facts
    relation for the mitigation's cost, and ``text_windows`` windows of ``window`` tokens of generic prose for
    its perplexity cost. A seeded half of the prompts (``train``) selects the movers and the mitigation; the
    claims are measured on the other half (``test``).

    Heads: ``heads="all"`` path-patches every head (the paper); ``"candidates"`` only the union of the top
    ``candidates_k`` heads by each observational metric (faster; an extension). ``patch_source``: the value a
    patched head gets, its output on a prompt about another subject (``"other_subject"``, the paper's
    corrupted run) or its mean over all prompts (``"mean"``, mean ablation; an extension). ``total_effect``
    also measures plain activation patching (no path freezing). ``top_k``: the heads whose share of the
    path-patching effect is the movers claim's concentration.

    MLP: ``gain`` is the measure of the mlp_gain claim, the least-squares coefficient of the MLP output on the
    mover's output (``"regression"``, the paper's regression) or the exactly linearised part's gain
    (``"linearised"``). Mitigation: ``k_heads`` suppressing last-layer heads and ``k_neurons`` neurons scaled
    by ``factor``, or the mean output direction projected out of the more suppressing sublayer.
    """

    relation: str = "capital"
    n: int | None = None
    shots: int = 0
    heads: str = "all"
    candidates_k: int = 3
    patch_source: str = "other_subject"
    total_effect: bool = True
    top_k: int = 3
    gain: str = "regression"
    k_heads: int = 2
    k_neurons: int = 16
    factor: float = 0.0
    n_other: int = 30
    text_windows: int = 32
    window: int = 64
    shard_size: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        for name, value, allowed in (("patch_source", self.patch_source, PATCH_SOURCES),
                                     ("heads", self.heads, HEAD_SETS), ("gain", self.gain, GAINS)):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, not {value!r}")
        if self.n is not None and self.n < 4:
            raise ValueError(f"n must be at least 4 (two halves of two prompts about different subjects), got {self.n}")
        for name in ("shots", "n_other", "text_windows", "k_heads", "k_neurons"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("top_k", "candidates_k", "window", "shard_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @classmethod
    def quick(cls, **changes) -> "Settings":
        """A smoke-test size (well under a minute on the default model)."""
        base = dict(n=12, heads="candidates", total_effect=False, n_other=4, text_windows=2, window=32, shard_size=6)
        return cls(**{**base, **changes})

    @classmethod
    def study(cls, **changes) -> "Settings":
        """The size ``hopscope study`` uses: enough held-out prompts to decide the claims, in a few minutes."""
        base = dict(n=120, heads="candidates", candidates_k=6, total_effect=False, n_other=20, text_windows=8,
                    window=64, shard_size=10)
        return cls(**{**base, **changes})

    def to_dict(self) -> dict[str, object]:
        return asdict(self)
