"""Memory injection (Sakarvadia et al. 2023, arXiv 2309.05605): add ``tau * memory`` to a layer's attention
output and see whether the answer of a multi-hop prompt becomes more likely.

A *memory* is a string (the gold one is the bridge entity, e.g. "George Washington"); its vector is the sum
of the vectors of its distinct tokens: unembedding rows (``"unembed"``, the seed's choice), input-embedding
rows (``"embed"``) or the memory's own attention output at the injected layer (``"attn"``, read at its last
token). An injection row is (layer, vector); :func:`inject` scores many rows of one prompt in few forwards:

* ``positions="all"`` (the seed: every prompt position). ``method="shared"`` runs one forward per chunk of
  rows in which a clean row runs every block and each injection row joins the batch at its own layer
  (a copy of the clean row there), so the blocks below ``l`` are never recomputed for rows of layer ``l``;
  ``method="engine"`` hands the rows to the engine's batched ``run``.
* ``positions="last"``: only the last position; the engine's ``run_last_position`` shares the prefix cache.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np
import pandas as pd
import torch

from hopscope.engine import Site, add, run, run_last_position, run_with_cache, score_tokens
from hopscope.engine.answers import answer_token_ids, first_token_id

if TYPE_CHECKING:
    from hopscope.models.loaded import LoadedModel

MEMORY_SOURCES = ("unembed", "embed", "attn")
POSITIONS = ("all", "last")
METHODS = ("shared", "engine")
SEED_TAUS: tuple[float, ...] = tuple(float(t) for t in range(1, 16))
REL_STEPS: tuple[float, ...] = (0.05, 0.1, 0.2, 0.4, 0.8)


# ---------------------------------------------------------------------------------------------------------
# memories
def memory_token_ids(lm: "LoadedModel", memory: str) -> list[int]:
    """Distinct token ids of ``memory`` as it would continue a sentence (leading space), in order."""
    if not memory or not memory.strip():
        raise ValueError(f"memory {memory!r} is empty")
    try:
        ids = answer_token_ids(lm.tokenizer, memory.strip())
    except ValueError:
        raise ValueError(f"memory {memory!r} tokenizes to nothing") from None
    return list(dict.fromkeys(ids))


class MemoryBank:
    """Vectors of memories from one ``source``, cached per memory (``"attn"``: per memory and layer)."""

    def __init__(self, lm: "LoadedModel", source: str = "unembed") -> None:
        if source not in MEMORY_SOURCES:
            raise ValueError(f"unknown memory source {source!r}; choose one of {MEMORY_SOURCES}")
        self.lm, self.source = lm, source
        self._cache: dict[tuple[str, int], torch.Tensor] = {}

    def _matrix(self) -> torch.Tensor:
        ad = self.lm.adapter
        return ad.unembed_weight() if self.source == "unembed" else ad.embed.weight

    def vector(self, memory: str, layer: int = 0) -> torch.Tensor:
        """The memory's vector ``[d_model]`` (``layer`` matters only for the ``"attn"`` source)."""
        return self.vectors([memory], layer)[0]

    def vectors(self, memories: Sequence[str], layer: int = 0) -> torch.Tensor:
        """Vectors ``[m, d_model]`` of ``memories``."""
        key_layer = layer if self.source == "attn" else 0
        missing = list(dict.fromkeys(m for m in memories if (m, key_layer) not in self._cache))
        if missing:
            self._fill(missing, key_layer)
        return torch.stack([self._cache[m, key_layer] for m in memories])

    def _fill(self, memories: list[str], layer: int) -> None:
        ids = [memory_token_ids(self.lm, m) for m in memories]
        if self.source != "attn":
            w = self._matrix().detach()
            for m, row in zip(memories, ids):
                self._cache[m, 0] = w[row].sum(0).clone()
            return
        texts = [self.lm.tokenizer.decode(row) for row in ids]
        _, acts = run_with_cache(self.lm, texts, components=("attn_out",))
        for l in range(self.lm.n_layers):
            for i, m in enumerate(memories):
                self._cache[m, l] = acts["attn_out", l][i, -1].clone()


# ---------------------------------------------------------------------------------------------------------
# grid cells
@dataclass(frozen=True)
class Cell:
    """One (layer, strength) of the grid: ``grid`` is ``"tau"`` (``step`` = tau, the seed's grid) or
    ``"rel"`` (``step`` = injection norm / residual norm for a typical gold memory; ``tau`` derived)."""

    layer: int
    grid: str
    step: float
    tau: float


def residual_norms(lm: "LoadedModel", prompts: Sequence[str], max_prompts: int = 16) -> np.ndarray:
    """Median norm of ``resid_pre`` at each layer over prompt positions 1.. (position 0 is an attention sink)."""
    prompts = list(prompts)[:max_prompts]
    _, acts = run_with_cache(lm, prompts, components=("resid_pre",))
    batch = lm.encode(prompts)
    norms = []
    for l in range(lm.n_layers):
        vals = []
        for i, (off, n) in enumerate(zip(batch.offsets, batch.lengths)):
            start = off + (1 if n > 1 else 0)
            vals.append(acts["resid_pre", l][i, start:].norm(dim=-1))
        norms.append(float(torch.cat(vals).median()))
    return np.array(norms)


def make_cells(
    layers: Sequence[int],
    taus: Sequence[float] = SEED_TAUS,
    rel: Sequence[float] = REL_STEPS,
    resid_norms: Sequence[float] | None = None,
    ref_norms: float | Sequence[float] | None = None,
) -> list[Cell]:
    """Cells for every layer: fixed ``taus`` and, given norms, ``rel`` steps (tau = r * resid / ref norm)."""
    cells = [Cell(int(l), "tau", float(t), float(t)) for l in layers for t in taus]
    if rel:
        if resid_norms is None or ref_norms is None:
            raise ValueError("relative steps need resid_norms and ref_norms")
        ref = np.broadcast_to(np.asarray(ref_norms, dtype=float), (len(resid_norms),))
        cells += [Cell(int(l), "rel", float(r), float(r * resid_norms[l] / ref[l])) for l in layers for r in rel]
    return cells


# ---------------------------------------------------------------------------------------------------------
# running injection rows
@contextmanager
def _staircase(lm: "LoadedModel", groups: list[tuple[int, torch.Tensor]], positions: str) -> Iterator[None]:
    """Hooks for one forward in which injection rows join the batch at their own layer.

    Row 0 is the clean prompt and runs every block; at block ``l`` the rows injected at ``l`` join as
    copies of row 0 (so the blocks below ``l`` run once for all of them) and get their vectors added to
    that block's attention output. ``groups``: ``(layer, deltas [n, d])`` sorted by layer.
    """
    ad = lm.adapter
    start = {}
    filled = 1
    for layer, deltas in groups:
        start[layer] = filled
        filled += deltas.shape[0]

    def widen(n):
        def hook(module, args, kwargs):
            hs = args[0] if args else kwargs["hidden_states"]
            hs = torch.cat([hs, hs[:1].expand(n, *hs.shape[1:])])
            if args:
                return (hs, *args[1:]), kwargs
            kwargs["hidden_states"] = hs
            return args, kwargs
        return hook

    def add_at(first, deltas):
        def hook(module, args, output):
            out = output[0] if isinstance(output, tuple) else output
            shaped = (out if out.dim() == 3 else out.view(first + deltas.shape[0], -1, out.shape[-1])).clone()
            rows = slice(first, first + deltas.shape[0])
            cols = slice(None) if positions == "all" else slice(-1, None)
            shaped[rows, cols] += deltas.to(shaped.dtype)[:, None, :]
            new = shaped.view_as(out)
            return (new, *output[1:]) if isinstance(output, tuple) else new
        return hook

    handles = []
    try:
        for layer, deltas in groups:
            handles.append(ad.blocks[layer].register_forward_pre_hook(widen(deltas.shape[0]), with_kwargs=True))
            handles.append(ad.attn[layer].register_forward_hook(add_at(start[layer], deltas)))
        yield
    finally:
        for h in handles:
            h.remove()


def _staircase_logits(lm: "LoadedModel", ids: list[int], layers: np.ndarray, vectors: torch.Tensor,
                      positions: str) -> torch.Tensor:
    """Logits ``[1 + R, vocab]`` (row 0: no injection) for rows sorted by layer."""
    groups = [(int(l), vectors[torch.as_tensor(np.flatnonzero(layers == l))]) for l in np.unique(layers)]
    t = torch.tensor([ids], device=lm.device)
    with torch.no_grad(), _staircase(lm, groups, positions):
        out = lm.model(input_ids=t, attention_mask=torch.ones_like(t), use_cache=False, logits_to_keep=1)
    return out.logits[:, -1].float()


def inject(
    lm: "LoadedModel",
    prompt: str,
    layers: Sequence[int],
    vectors: torch.Tensor,
    *,
    positions: str = "all",
    method: str = "shared",
    batch_size: int = 128,
) -> torch.Tensor:
    """Last-position logits ``[R, vocab]`` of ``prompt`` with ``vectors[i]`` added to ``attn_out`` of ``layers[i]``.

    ``positions``: ``"all"`` prompt positions or the ``"last"`` one. ``method``: ``"shared"`` (fast: the blocks
    below each row's layer run once per chunk; last-position rows use the prefix KV cache) or ``"engine"``
    (the engine's batched ``run`` with ``add`` interventions). Both agree within float tolerance.
    """
    if positions not in POSITIONS:
        raise ValueError(f"positions must be one of {POSITIONS}, got {positions!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    layers = [int(l) + lm.n_layers if int(l) < 0 else int(l) for l in layers]
    if vectors.dim() != 2 or vectors.shape != (len(layers), lm.d_model):
        raise ValueError(f"vectors must be [{len(layers)}, {lm.d_model}], got {tuple(vectors.shape)}")
    bad = [l for l in layers if not 0 <= l < lm.n_layers]
    if bad:
        raise ValueError(f"layer(s) {sorted(set(bad))} out of range: {lm.name} has {lm.n_layers} layers")
    out = torch.empty(len(layers), lm.d_vocab)
    if method == "engine" or positions == "last":
        pos = None if positions == "all" else -1
        ivs = [[add(Site(l, "attn_out", pos), v)] for l, v in zip(layers, vectors)]
        for i in range(0, len(ivs), batch_size):
            chunk = ivs[i:i + batch_size]
            if method == "shared":
                out[i:i + len(chunk)] = run_last_position(lm, prompt, chunk).logits.cpu()
            else:
                out[i:i + len(chunk)] = run(lm, [prompt] * len(chunk), chunk, last_only=True).logits.cpu()
        return out
    ids = lm.to_ids(prompt)
    if not ids:
        raise ValueError(f"prompt {prompt!r} tokenizes to nothing")
    order = np.argsort(layers, kind="stable")
    for j in range(0, len(order), batch_size):
        rows = order[j:j + batch_size]
        out[torch.as_tensor(rows)] = _staircase_logits(lm, ids, np.asarray(layers)[rows], vectors[rows],
                                                       positions)[1:].cpu()
    return out


def clean_logits(lm: "LoadedModel", prompts: Sequence[str], batch_size: int = 32) -> torch.Tensor:
    """Last-position logits ``[n, vocab]`` without any injection."""
    return run(lm, list(prompts), last_only=True, batch_size=batch_size).logits.cpu()


# ---------------------------------------------------------------------------------------------------------
# scoring and summaries
def score_rows(logits: torch.Tensor, answer_id: int, p0: float, logp0: float) -> dict[str, np.ndarray]:
    """Probability, log-prob and rank of the answer token after injection, and the changes from before."""
    s = score_tokens(logits, [answer_id] * logits.shape[0])
    p1, lp1 = s["prob"].double().numpy(), s["logprob"].double().numpy()
    return {"p1": p1, "logp1": lp1, "rank1": s["rank"].numpy(),
            "change_pct": 100.0 * (p1 - p0) / max(p0, 1e-30), "dlogp": lp1 - logp0}


SUMMARY_KEYS = ("prompt_kind", "grid", "layer", "step", "tau", "memory_kind")


def summarize(rows: pd.DataFrame, by: Sequence[str] = SUMMARY_KEYS) -> pd.DataFrame:
    """Per group: n, prompts, mean p0/p1, mean and median % change, share improved, mean/median Δlog p."""
    by = [c for c in by if c in rows.columns]
    g = rows.assign(improved=rows.p1 > rows.p0).groupby(by, sort=True, dropna=False)
    out = g.agg(n=("p1", "size"), n_prompts=("qid", "nunique"), p0=("p0", "mean"), p1=("p1", "mean"),
                mean_pct=("change_pct", "mean"), median_pct=("change_pct", "median"),
                share_improved=("improved", "mean"), mean_dlogp=("dlogp", "mean"),
                median_dlogp=("dlogp", "median"))
    return out.reset_index()


CRITERIA = ("mean_dlogp", "median_dlogp", "mean_pct", "median_pct", "share_improved")


def best_cell(summary: pd.DataFrame, criterion: str = "mean_dlogp", memory_kind: str = "gold",
              prompt_kind: str = "obscure") -> pd.Series:
    """The summary row of ``memory_kind`` with the highest ``criterion``."""
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
    sub = summary[(summary.memory_kind == memory_kind) & (summary.prompt_kind == prompt_kind)]
    if sub.empty:
        raise ValueError(f"no {memory_kind!r} rows on {prompt_kind!r} prompts in the summary")
    return sub.loc[sub[criterion].idxmax()]


def answer_id(lm: "LoadedModel", answer: str) -> int:
    """First token of the answer (``" Paris"``); ValueError naming the answer if it tokenizes to nothing."""
    return first_token_id(lm.tokenizer, answer)


# ---------------------------------------------------------------------------------------------------------
# one prompt x many (cell, memory) rows
Memory = tuple[str, int, str]  # (kind, index within the kind, text)


def baseline(lm: "LoadedModel", prompts: Sequence[str], answers: Sequence[str], batch_size: int = 32) -> pd.DataFrame:
    """Probability, log-prob and rank of each answer's first token before any injection."""
    logits = clean_logits(lm, prompts, batch_size)
    ids = [answer_id(lm, a) for a in answers]
    s = score_tokens(logits, ids)
    return pd.DataFrame({"prompt": list(prompts), "answer": list(answers), "answer_id": ids,
                         "p0": s["prob"].double().numpy(), "logp0": s["logprob"].double().numpy(),
                         "rank0": s["rank"].numpy()})


def injection_rows(
    lm: "LoadedModel",
    prompt: str,
    answer: str,
    cells: Sequence[Cell],
    memories: Sequence[Memory],
    bank: MemoryBank,
    *,
    p0: float | None = None,
    logp0: float | None = None,
    positions: str = "all",
    method: str = "shared",
    batch_size: int = 96,
) -> pd.DataFrame:
    """One row per (cell, memory): the answer's probability before/after injecting ``tau * memory``."""
    if not cells or not memories:
        raise ValueError("injection_rows needs at least one cell and one memory")
    aid = answer_id(lm, answer)
    if p0 is None or logp0 is None:
        s0 = score_tokens(clean_logits(lm, [prompt]), [aid])
        p0, logp0 = float(s0["prob"][0]), float(s0["logprob"][0])
    texts = [m[2] for m in memories]
    layers, vecs, meta = [], [], []
    for cell in cells:
        mat = bank.vectors(texts, cell.layer)
        for (kind, idx, text), v in zip(memories, mat):
            layers.append(cell.layer)
            vecs.append(cell.tau * v)
            meta.append((cell.layer, cell.grid, cell.step, cell.tau, kind, idx, text))
    logits = inject(lm, prompt, layers, torch.stack(vecs), positions=positions, method=method,
                    batch_size=batch_size)
    df = pd.DataFrame(meta, columns=["layer", "grid", "step", "tau", "memory_kind", "memory_index", "memory"])
    df["p0"], df["logp0"] = p0, logp0
    for k, v in score_rows(logits, aid, p0, logp0).items():
        df[k] = v
    return df
