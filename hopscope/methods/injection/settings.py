"""Settings of the memory-injection analysis (Sakarvadia et al. 2023). Defaults: the seed's full protocol (the
processed unembedding, memories tokenized as written, a BOS before every prompt, tau 1..15 at every layer
and every prompt position, the best cell by the outlier-trimmed mean % change, the first 40 words of each
part-of-speech list, full-rank attention lenses); :meth:`Settings.quick` and :meth:`Settings.study` are
fixed smaller sizes (same seed, same tables)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

SOURCES = ("unembed_processed", "unembed", "embed", "attn")
POSITIONS = ("all", "query", "last")
CRITERIA = ("trimmed_mean_pct", "mean_pct", "median_pct", "share_improved", "mean_dlogp", "median_dlogp")
HEAD_RANKINGS = ("lens_logit", "lens_kl")
SEED_TAUS: tuple[float, ...] = tuple(float(t) for t in range(1, 16))


@dataclass(frozen=True)
class Settings:
    """What one injection run computes.

    Data: ``n_pairs`` pairs (None: all), in a seeded order; the first ``search_prompts`` choose the best
    (layer, tau) cell and the top heads, the rest are held out for every claim (``search_prompts=None``: all
    pairs search and report, the seed's in-sample protocol; then no claim is decided).

    Memories: ``source`` ``"unembed_processed"`` (the seed's: rows of TransformerLens's processed W_U, i.e. the
    unembedding with the final norm's gain folded in and centred over the vocabulary), ``"unembed"`` (raw
    ``lm_head`` rows), ``"embed"`` (input embeddings) or ``"attn"`` (the memory text's own attention output at
    the injected layer; an extension). A memory's vector sums its *distinct* tokens (the seed's multi-hot).
    ``memory_space=False`` tokenizes the memory as written (the seed); True with a leading space.
    ``memory_bos=False``: no BOS in the memory (the seed's ``prepend_bos=False``). ``prompt_bos=True``: a BOS
    token before every prompt, unless the tokenizer adds one (the seed's TransformerLens default).

    Grid: ``taus`` at every ``layer_stride``-th layer, plus optional ``rel`` steps (tau set so that the gold
    memory's injected norm is ``rel`` x the median residual norm at that layer; an extension). ``positions``:
    ``"all"`` prompt positions (the seed), ``"query"`` (the positions after a few-shot prefix, i.e. after the
    prompt's last newline; the prefix runs once, cached) or ``"last"``. ``criterion``: how the best cell is
    chosen on the search prompts (the seed: the mean % change without its top 1% outliers).

    Controls at the best cell: ``random_memories`` random vocabulary words per prompt (as many distinct tokens
    as the gold memory), ``other_bridges`` bridges of other pairs (the seed's ``subject`` memories), and the
    first ``pos_words`` words of each part-of-speech list (the seed's lists, shipped in the package).

    Heads at the best layer: the gold memory projected onto one head's output space (``W_O^h pinv(W_O^h) m``)
    for each head, and each head zero-ablated; ``top_heads`` heads (ranked on the search prompts) against
    ``random_head_sets`` random sets of as many heads. Lens: one attention lens for the best layer (or
    ``lens_layer``), ``lens_rank`` None = full rank (the paper), trained on ``lens_corpus``.
    """

    n_pairs: int | None = None
    search_prompts: int | None = 30
    source: str = "unembed_processed"
    memory_space: bool = False
    memory_bos: bool = False
    prompt_bos: bool = True
    taus: tuple[float, ...] = SEED_TAUS
    rel: tuple[float, ...] = ()
    layer_stride: int = 1
    positions: str = "all"
    criterion: str = "trimmed_mean_pct"
    trim_percentile: float = 99.0
    grid_random: int = 1
    random_memories: int = 5
    other_bridges: int = 1
    pos_words: int = 40
    projection: bool = True
    projection_pairs: int | None = None
    top_k: int = 5
    heads: bool = True
    top_heads: int = 2
    random_head_sets: int = 20
    lens: bool = True
    lens_layer: int | None = None
    lens_rank: int | None = None
    lens_init: str = "processed"
    lens_steps: int = 2000
    lens_batch: int = 64
    lens_lr: float = 1e-3
    lens_corpus: str = "boolq"
    lens_train_texts: int = 1000
    lens_held_texts: int = 100
    lens_max_tokens: int = 64
    lens_positions: str = "all"
    head_rank_by: str = "lens_logit"
    shard_size: int = 4
    batch_size: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        for name, value, allowed in (("source", self.source, SOURCES), ("positions", self.positions, POSITIONS),
                                     ("criterion", self.criterion, CRITERIA),
                                     ("head_rank_by", self.head_rank_by, HEAD_RANKINGS),
                                     ("lens_init", self.lens_init, ("processed", "raw")),
                                     ("lens_positions", self.lens_positions, ("all", "last"))):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, not {value!r}")
        object.__setattr__(self, "taus", tuple(float(t) for t in self.taus))
        object.__setattr__(self, "rel", tuple(float(r) for r in self.rel))
        if not self.taus and not self.rel:
            raise ValueError("the grid needs at least one tau or rel step")
        if self.n_pairs is not None and self.n_pairs < 2:
            raise ValueError(f"n_pairs must be at least 2, got {self.n_pairs}")
        if self.search_prompts is not None and self.search_prompts < 1:
            raise ValueError(f"search_prompts must be at least 1 (or None: every pair), got {self.search_prompts}")
        if not 0 < self.trim_percentile <= 100:
            raise ValueError(f"trim_percentile must be in (0, 100], got {self.trim_percentile}")
        for name in ("grid_random", "random_memories", "other_bridges", "pos_words", "random_head_sets"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("layer_stride", "top_k", "top_heads", "lens_steps", "lens_batch", "shard_size", "batch_size",
                     "lens_train_texts", "lens_held_texts", "lens_max_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lens_rank is not None and self.lens_rank < 1:
            raise ValueError(f"lens_rank must be >= 1 or None (full rank), got {self.lens_rank}")

    @classmethod
    def quick(cls, **changes) -> "Settings":
        """A smoke-test size (well under a minute on the default model): a coarse grid at the last position."""
        base = dict(n_pairs=12, search_prompts=4, taus=(3.0, 9.0, 15.0), layer_stride=6, positions="last",
                    grid_random=0, random_memories=2, pos_words=2, projection_pairs=4, random_head_sets=6,
                    lens_rank=4, lens_steps=30, lens_batch=32, lens_train_texts=16, lens_held_texts=8,
                    lens_max_tokens=32, shard_size=6)
        return cls(**{**base, **changes})

    @classmethod
    def study(cls, **changes) -> "Settings":
        """The size ``hopscope study`` uses: dozens of held-out prompts, paired, in about three minutes."""
        base = dict(search_prompts=16, layer_stride=3, positions="last", grid_random=1, random_memories=4,
                    pos_words=3, projection_pairs=8, random_head_sets=20, lens_rank=8, lens_steps=150,
                    lens_batch=48, lens_train_texts=64, lens_held_texts=24, lens_max_tokens=48, shard_size=8)
        return cls(**{**base, **changes})

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["taus"], d["rel"] = list(self.taus), list(self.rel)
        return d
