"""Settings of the MechanisticProbe analysis: defaults are the paper's protocol, ``quick()`` a smoke run,
``study()`` the size ``hopscope study`` uses (the small model trained inside the run)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

TASKS = ("kth_smallest", "proofwriter")
TOKEN_POOLS = ("mean", "sum")
QUERY_POOLS = ("auto", "last", "max", "mean")
NORMALIZE = ("auto", "max", "none")
DISTANCES = ("auto", "manhattan", "euclidean")


@dataclass(frozen=True)
class Settings:
    """What the probe reads, how it is scored, and the causal checks.

    ``task="kth_smallest"``: lists of ``n`` numbers from a pool of ``pool_size`` one-token values, the
    answer is the ``k``-th smallest. ``train=True`` trains a small GPT-2 (``layers`` x ``heads``, width
    ``width``, ``train_steps`` steps) inside the run and probes it; ``train=False`` probes the model passed
    in (e.g. a folder from ``hopscope train kth-smallest``; ``pool`` then names its values).
    ``task="proofwriter"``: the model passed in reads ProofWriter questions with ``shots`` in-context
    examples, drawn per question as the paper does (``shared_examples=True``: one set for all, a shared
    prefix, much faster on a CPU); the probed subset has proof depth <= ``max_depth`` (the paper: QDep <= 1).

    Features (Hou et al.): attention from the query rows (``query_pool``: the last token for the k-th
    smallest, the max over the question's tokens for ProofWriter), averaged over heads (``per_head`` keeps
    them), pooled over each statement's tokens (``token_pool``: mean, or sum), per layer; ``normalize``:
    ``max`` divides a prompt's block by its largest value (the paper's k-th smallest code), ``none`` keeps
    raw attention (its ProofWriter code); ``auto`` picks the paper's choice per task.
    Probes: distance-weighted kNN with ``n_neighbors`` neighbours (``distance``: ``auto`` = Euclidean for the
    k-th smallest, Manhattan for ProofWriter, as the paper's code), scored by macro-F1 of the out-of-fold
    predictions of ``n_folds``-fold cross-validation grouped by theory (a k-th smallest list is its own
    theory). S = (F1 - F1_random_init) / (1 - F1_random_init) against ``n_random_init`` random
    initialisations of the same architecture; the claims test S against ``n_permutations`` label
    permutations (within each prompt) and bootstrap it over prompts (``n_bootstrap``).
    """

    task: str = "kth_smallest"
    # k-th smallest task (the paper: lists of 16 drawn from 512 one-token numbers, k = 2, 1024 probed lists)
    n: int = 16
    k: int = 2
    pool_size: int = 512
    pool: tuple[int, ...] = ()
    n_probe: int = 1024
    n_eval: int = 1000
    # the model trained in the run (hopscope's small GPT-2 from scratch; the paper fine-tunes GPT-2 small)
    train: bool = True
    train_lists: int = 50_000
    train_steps: int = 3000
    batch_size: int = 128
    lr: float = 1e-3
    layers: int = 4
    heads: int = 4
    width: int = 128
    # ProofWriter
    shots: int = 4
    shared_examples: bool = False
    max_depth: int = 1
    n_questions: int = 1024
    # features
    query_pool: str = "auto"
    token_pool: str = "mean"
    normalize: str = "auto"
    per_head: bool = False
    # probes and their statistics
    n_neighbors: int = 8
    distance: str = "auto"
    n_folds: int = 5
    n_random_init: int = 1
    n_permutations: int = 2000
    n_bootstrap: int = 2000
    layerwise: bool = True
    # causal checks
    masking: bool = True
    mask_fractions: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    n_random_masks: int = 3
    corruption: bool = True
    shard_size: int = 128
    seed: int = 0

    def __post_init__(self) -> None:
        for name, allowed in (("task", TASKS), ("token_pool", TOKEN_POOLS), ("query_pool", QUERY_POOLS),
                              ("normalize", NORMALIZE), ("distance", DISTANCES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"probe setting {name}={getattr(self, name)!r}: choose one of {', '.join(allowed)}")
        for name in ("n_probe", "n_eval", "n_questions", "n_neighbors", "n_random_init", "shard_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"probe setting {name} must be at least 1, got {getattr(self, name)}")
        if self.n_folds < 2:
            raise ValueError(f"probe setting n_folds must be at least 2, got {self.n_folds}")
        if self.shots < 0:
            raise ValueError(f"probe setting shots must be >= 0, got {self.shots}")
        if any(not 0 < f <= 1 for f in self.mask_fractions):
            raise ValueError(f"mask_fractions must lie in (0, 1], got {list(self.mask_fractions)}")

    # ---- per-task choices of the paper ----
    @property
    def kth(self) -> bool:
        return self.task == "kth_smallest"

    @property
    def resolved_query_pool(self) -> str:
        return self.query_pool if self.query_pool != "auto" else ("last" if self.kth else "max")

    @property
    def resolved_normalize(self) -> str:
        return self.normalize if self.normalize != "auto" else ("max" if self.kth else "none")

    @property
    def resolved_distance(self) -> str:
        return self.distance if self.distance != "auto" else ("euclidean" if self.kth else "manhattan")

    # ---- sizes ----
    @classmethod
    def quick(cls, **overrides: Any) -> "Settings":
        """A smoke run (well under a minute): a 2-layer model, short lists, few probed items."""
        base = dict(n=6, pool_size=32, n_probe=120, n_eval=120, train_lists=4000, train_steps=200, batch_size=64,
                    lr=3e-3, layers=2, heads=2, width=32, n_questions=40, shots=2, n_permutations=300,
                    n_bootstrap=300, mask_fractions=(0.25, 0.5, 1.0), n_random_masks=1, shard_size=64)
        return cls(**{**base, **overrides})

    @classmethod
    def study(cls, **overrides: Any) -> "Settings":
        """The size ``hopscope study`` uses: a 4-layer GPT-2 trained in the run on lists of 8 from 128 values
        (about 1.5 minutes of training on 2 cores), 400 probed lists, 3 random initialisations."""
        base = dict(n=8, pool_size=128, n_probe=400, n_eval=400, train_lists=30_000, train_steps=600,
                    lr=2e-3, width=64, n_questions=200, n_random_init=3, mask_fractions=(0.1, 0.3, 0.5, 0.7, 0.9),
                    n_random_masks=2, shard_size=200)
        return cls(**{**base, **overrides})

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["pool"], d["mask_fractions"] = list(self.pool), list(self.mask_fractions)
        return d


__all__ = ["DISTANCES", "NORMALIZE", "QUERY_POOLS", "Settings", "TASKS", "TOKEN_POOLS"]
