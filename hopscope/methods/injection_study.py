"""The memory-injection study: per-layer projections, the injection grid with controls, the best cell, an
attention lens and the heads it points to, written into one run folder.

    from hopscope.methods.injection_study import injection_study
    headline = injection_study(lm, pairs, run, quick=True)        # ~1-2 CPU minutes on SmolLM2-135M

Selection is honest: the best (layer, tau) is chosen on the *search* prompts (``grid_prompts`` of them) and
reported on the held-out rest, gold next to random-word and part-of-speech controls at the same cell.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import pandas as pd

from hopscope.methods import injection as inj
from hopscope.methods.injection_controls import RandomWords, as_pairs, load_pairs

if TYPE_CHECKING:
    from hopscope.methods.injection_controls import InjectionPair
    from hopscope.models.loaded import LoadedModel
    from hopscope.report import RunFolder

SEED_P_OBSCURE, SEED_P_EXPLICIT = 0.0871, 0.1579  # GPT-2 small, the seed's result files (data README)


@dataclass
class InjectionSettings:
    """Sizes and choices of a study. :meth:`quick` fits ``hopscope study``; the defaults are the full run."""

    n_pairs: int | None = None                 # pairs used (None: all)
    grid_prompts: int | None = 24              # search prompts of the grid (None: all pairs, no held-out)
    layer_stride: int = 1                      # every layer (1) or every k-th
    taus: Sequence[float] = inj.SEED_TAUS
    rel: Sequence[float] = inj.REL_STEPS       # injection norm / residual norm for a typical gold memory
    source: str = "unembed"
    positions: str = "all"                     # "all", "last", or "auto": all unless prompts are long
    auto_max_tokens: int = 24                  # "auto" injects at the last position above this mean length
    method: str = "shared"
    criterion: str = "mean_dlogp"
    grid_random: int = 1                       # random memories per prompt at every cell
    best_random: int = 5                       # random memories per prompt at the best cell
    pos_words: int = 40                        # words per part-of-speech list
    pos_per_prompt: int | None = 8             # of those, per prompt (None: all of them)
    projection: bool = True
    projection_pairs: int | None = None        # pairs in the per-layer/per-head projections (None: all)
    lens: bool = True
    lens_layer: int | None = None              # None: the best injection layer
    lens_rank: int | None = 8
    lens_steps: int = 200
    lens_batch: int = 128
    lens_corpus: str = "boolq"
    lens_train_texts: int = 200
    lens_held_texts: int = 50
    lens_max_tokens: int = 48
    head_pairs: int | None = 40                # pairs for head injection / ablation (None: all)
    batch_size: int = 96
    seed: int = 0

    @classmethod
    def quick(cls, **kw: Any) -> "InjectionSettings":
        base = cls(n_pairs=20, grid_prompts=6, layer_stride=3, taus=(2.0, 5.0, 10.0), rel=(0.1, 0.4), positions="auto",
                   best_random=2, pos_words=10, pos_per_prompt=1, projection_pairs=8, lens_steps=80, lens_batch=32,
                   lens_train_texts=24, lens_held_texts=8, lens_max_tokens=32, head_pairs=5)
        return replace(base, **kw)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["taus"], d["rel"] = list(self.taus), list(self.rel)
        return d


@dataclass
class StudyState:
    """What the stages hand to each other."""

    pairs: list["InjectionPair"]
    search: list["InjectionPair"]
    held: list["InjectionPair"]
    baseline: pd.DataFrame
    bank: inj.MemoryBank
    randoms: RandomWords
    headline: dict[str, Any] = field(default_factory=dict)
    best: pd.Series | None = None
    norms: np.ndarray | None = None            # median |resid_pre| per layer (search prompts)
    ref: np.ndarray | None = None              # median |gold memory| per layer
    lens: Any = None


def _log(log: Callable[[str], None] | None) -> Callable[[str], None]:
    t0 = time.perf_counter()
    return lambda msg: log(f"[{time.perf_counter() - t0:6.0f}s] {msg}") if log else None


def usable_pairs(lm: "LoadedModel", pairs: Sequence["InjectionPair"]) -> tuple[list, list[str]]:
    """Pairs whose answer and bridge tokenize to something; the reasons the others were dropped."""
    keep, dropped = [], []
    for p in pairs:
        try:
            inj.answer_id(lm, p.answer)
            inj.memory_token_ids(lm, p.bridge)
            keep.append(p)
        except ValueError as err:
            dropped.append(f"{p.qid}: {err}")
    return keep, dropped


def check_settings(s: InjectionSettings) -> None:
    """Raise a ValueError naming the first setting with an unknown value."""
    checks = (("positions", s.positions, (*inj.POSITIONS, "auto")), ("method", s.method, inj.METHODS),
              ("criterion", s.criterion, inj.CRITERIA), ("source", s.source, inj.MEMORY_SOURCES))
    for name, value, allowed in checks:
        if value not in allowed:
            raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def resolve_positions(lm: "LoadedModel", pairs: Sequence["InjectionPair"], s: InjectionSettings) -> InjectionSettings:
    """Settings with ``positions="auto"`` made concrete: ``"all"`` (the seed) for short prompts, ``"last"``
    (prefix KV cache, far cheaper) when the obscure prompts average more than ``auto_max_tokens`` tokens."""
    if s.positions != "auto":
        return s
    mean = float(np.mean([len(lm.to_ids(p.obscure)) for p in pairs]))
    return replace(s, positions="all" if mean <= s.auto_max_tokens else "last")


def injection_study(
    lm: "LoadedModel",
    pairs: Sequence[Any] | None,
    run_folder: "RunFolder | str",
    *,
    quick: bool = True,
    settings: InjectionSettings | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run every stage into ``run_folder`` (a RunFolder, or a path for a new one); returns the headline.

    ``pairs``: InjectionPairs or two-hop records (None: the seed's 106 handwritten pairs). The caller
    finishes the run folder (``run.finish()``) when it passed one; a path is finished here.
    """
    from hopscope.report import RunFolder

    s = settings or (InjectionSettings.quick() if quick else InjectionSettings())
    check_settings(s)
    all_pairs = (as_pairs(pairs) if pairs is not None else load_pairs())[: s.n_pairs]
    kept, dropped = usable_pairs(lm, all_pairs)
    if not kept:
        raise ValueError(f"no usable pairs (answer or bridge tokenizes to nothing): {dropped[:3]}")
    if not isinstance(run_folder, RunFolder):
        with RunFolder.create("inject", s.to_dict(), out=run_folder, seed=s.seed) as run:
            return _stages(lm, kept, dropped, run, s, log)
    return _stages(lm, kept, dropped, run_folder, s, log)


def _stages(lm: "LoadedModel", kept: list, dropped: list[str], run: "RunFolder", s: InjectionSettings,
            log: Callable[[str], None] | None) -> dict[str, Any]:
    from hopscope.methods import injection_report as rep

    say = _log(log)
    if run.config.get("model") is None:
        run.set_model(lm)
    s = resolve_positions(lm, kept, s)
    order = kept[:]
    random.Random(s.seed).shuffle(order)
    n_search = len(kept) if not s.grid_prompts else min(s.grid_prompts, len(kept))
    search_ids = {p.qid for p in order[:n_search]}
    state = StudyState(kept, [p for p in kept if p.qid in search_ids], [p for p in kept if p.qid not in search_ids],
                       pd.DataFrame(), inj.MemoryBank(lm, s.source), RandomWords(lm.tokenizer, s.seed))
    state.headline.update({"pairs": len(kept), "search prompts": len(state.search),
                           "held-out prompts": len(state.held), "injection positions": s.positions})
    say(f"{len(kept)} pairs ({len(dropped)} dropped), {len(state.search)} search / {len(state.held)} held-out, "
        f"injecting at {s.positions} positions")
    rep.baseline_stage(lm, run, state, s, say)
    if s.projection:
        rep.projection_stage(lm, run, state, s, say)
    rep.grid_stage(lm, run, state, s, say)
    rep.controls_stage(lm, run, state, s, say)
    if s.lens:
        rep.lens_stage(lm, run, state, s, say)
        rep.heads_stage(lm, run, state, s, say)
    if dropped:
        run.add_section("Dropped pairs", text="\n".join(dropped))
    say(f"done: {run.path}")
    return state.headline
