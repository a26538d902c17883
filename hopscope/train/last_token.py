"""Train any HF causal LM to predict one target token at the last prompt position (cross-entropy on logits)."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import pandas as pd
import torch
import torch.nn.functional as F

from hopscope.engine import weights_changed
from hopscope.engine.scoring import first_token_id


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings. The learning rate warms up linearly, then decays (cosine) to ``min_lr_ratio``."""

    steps: int = 2000
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup: int = 100
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    eval_every: int = 500
    eval_size: int = 1000
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TokenBatch:
    """Left-padded token ids with attention mask and position ids (counting real tokens only)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def __getitem__(self, idx) -> "TokenBatch":
        return TokenBatch(self.input_ids[idx], self.attention_mask[idx], self.position_ids[idx])

    def to(self, device) -> "TokenBatch":
        return TokenBatch(self.input_ids.to(device), self.attention_mask.to(device), self.position_ids.to(device))


def encode_prompts(tokenizer, prompts: Sequence[str]) -> TokenBatch:
    """Tokenize prompts (with the tokenizer's special tokens) and left-pad them."""
    rows = tokenizer(list(prompts), add_special_tokens=True)["input_ids"]
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if not r:
            raise ValueError(f"prompt {prompts[i]!r} tokenizes to nothing")
        ids[i, width - len(r):] = torch.tensor(r)
        mask[i, width - len(r):] = 1
    return TokenBatch(ids, mask, (mask.cumsum(-1) - 1).clamp(min=0))


def target_ids(tokenizer, targets: Sequence[str]) -> torch.Tensor:
    """First token id of each target string (e.g. ``" 42"``); error if a target tokenizes to nothing."""
    return torch.tensor([first_token_id(tokenizer, t, leading_space=False) for t in targets], dtype=torch.long)


def last_logits(model, batch: TokenBatch) -> torch.Tensor:
    """[b, vocab] logits at the last (prompt) position."""
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
                logits_to_keep=1)
    return out.logits[:, -1]


@torch.no_grad()
def last_token_accuracy(model, batch: TokenBatch, targets: torch.Tensor, *, batch_size: int = 256) -> float:
    """Share of rows whose top-1 next token equals the target id."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    hits = 0
    for i in range(0, len(batch), batch_size):
        part = batch[i:i + batch_size].to(device)
        hits += int((last_logits(model, part).argmax(-1).cpu() == targets[i:i + batch_size]).sum())
    model.train(was_training)
    return hits / max(len(batch), 1)


def _lr_lambda(cfg: TrainConfig) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < cfg.warmup:
            return (step + 1) / cfg.warmup
        progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return f


def train_last_token(
    model,
    train: TokenBatch,
    train_targets: torch.Tensor,
    cfg: TrainConfig,
    *,
    val: TokenBatch | None = None,
    val_targets: torch.Tensor | None = None,
    progress: Callable[[dict], None] | None = None,
) -> pd.DataFrame:
    """Train ``model`` in place with AdamW on cross-entropy of the last-position logits.

    Batches are drawn with a seeded generator from ``train``. Every ``eval_every`` steps (and at the end)
    a row with the running train loss and the validation accuracy is appended to the returned history and
    passed to ``progress``.
    """
    if len(train) != len(train_targets):
        raise ValueError(f"{len(train)} training prompts but {len(train_targets)} targets")
    device = next(model.parameters()).device
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg))
    history, losses, start = [], [], time.time()
    model.train()
    for step in range(1, cfg.steps + 1):
        idx = torch.randint(len(train), (cfg.batch_size,), generator=gen)
        logits = last_logits(model, train[idx].to(device))
        loss = F.cross_entropy(logits.float(), train_targets[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if step % cfg.eval_every == 0 or step == cfg.steps:
            row = {"step": step, "train_loss": sum(losses) / len(losses), "lr": sched.get_last_lr()[0],
                   "seconds": time.time() - start}
            if val is not None and val_targets is not None:
                n = min(cfg.eval_size, len(val))
                row["val_accuracy"] = last_token_accuracy(model, val[:n], val_targets[:n])
            history.append(row)
            losses = []
            if progress is not None:
                progress(row)
    model.eval()
    weights_changed(model)  # the engine's prefix caches of the old weights must not be reused
    return pd.DataFrame(history)
