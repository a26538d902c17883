"""Train a small GPT-2 from scratch (or fine-tune any HF causal LM) on the k-th smallest task and save it."""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch

from hopscope.data.kth_smallest import KthSmallestConfig, make_split, resolve_pool
from hopscope.engine import weights_changed
from hopscope.train.last_token import TrainConfig, encode_prompts, last_token_accuracy, target_ids, train_last_token

TASK_FILE = "hopscope_task.json"


@dataclass(frozen=True)
class GPT2Arch:
    """Shape of the from-scratch model."""

    n_layers: int = 4
    n_heads: int = 4
    d_model: int = 128
    n_positions: int = 64

    def to_dict(self) -> dict:
        return dict(n_layers=self.n_layers, n_heads=self.n_heads, d_model=self.d_model, n_positions=self.n_positions)


@dataclass
class KthTrainResult:
    """A trained model with its tokenizer, task, settings, learning curve and test metrics."""

    model: Any
    tokenizer: Any
    task: KthSmallestConfig
    train: TrainConfig
    history: pd.DataFrame
    metrics: dict[str, float]
    arch: dict = field(default_factory=dict)
    folder: Path | None = None


def new_gpt2(tokenizer, arch: GPT2Arch = GPT2Arch(), *, seed: int = 0):
    """A randomly initialised GPT-2 (no dropout, tied embeddings) for ``tokenizer``'s vocabulary."""
    from transformers import GPT2Config, GPT2LMHeadModel

    if arch.d_model % arch.n_heads:
        raise ValueError(f"d_model={arch.d_model} is not divisible by n_heads={arch.n_heads}")
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=arch.n_positions, n_embd=arch.d_model,
                        n_layer=arch.n_layers, n_head=arch.n_heads, resid_pdrop=0.0, embd_pdrop=0.0,
                        attn_pdrop=0.0, bos_token_id=eos, eos_token_id=eos, tie_word_embeddings=True)
    config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    return GPT2LMHeadModel(config).eval()


TOKENIZERS = ("numbers", "gpt2")


def scratch_tokenizer(kind: str, task: KthSmallestConfig):
    """Tokenizer of a from-scratch model: ``"numbers"`` (one token per pool value, small and fast to
    train) or ``"gpt2"`` (GPT-2's BPE, built offline by the models layer)."""
    if kind == "numbers":
        from hopscope.train.number_tokenizer import number_tokenizer

        return number_tokenizer(task.pool or range(task.pool_size))
    if kind == "gpt2":
        from hopscope.models.tokenizers import gpt2_tokenizer

        return gpt2_tokenizer()
    raise ValueError(f"unknown tokenizer {kind!r}; choose one of {TOKENIZERS}")


def train_kth_smallest(
    task: KthSmallestConfig = KthSmallestConfig(),
    train: TrainConfig = TrainConfig(),
    *,
    model=None,
    arch: GPT2Arch = GPT2Arch(),
    tokenizer: str = "numbers",
    out: str | Path | None = None,
    progress: Callable[[dict], None] | None = None,
) -> KthTrainResult:
    """Train on the k-th smallest task; report test accuracy; save to ``out`` when given.

    ``model`` is None (a new GPT-2 of shape ``arch`` with the ``tokenizer`` named, see
    :func:`scratch_tokenizer`) or a ``LoadedModel``-like object with ``.model`` and ``.tokenizer`` to
    fine-tune in place. The pool is filled with values that are one token for the tokenizer (a ValueError
    names a given pool value that is not).
    """
    if model is None:
        kind = tokenizer
        tokenizer = scratch_tokenizer(kind, task)
        hf = new_gpt2(tokenizer, arch, seed=train.seed)
        arch_info = {"family": "gpt2", "from_scratch": True, "tokenizer": kind, **arch.to_dict()}
    else:
        tokenizer, hf = model.tokenizer, model.model
        arch_info = {"family": getattr(hf.config, "model_type", "?"), "from_scratch": False,
                     "base": getattr(model, "name", None)}
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    task = resolve_pool(task, tokenizer)
    max_pos = getattr(hf.config, "n_positions", None) or getattr(hf.config, "max_position_embeddings", None)
    if max_pos is not None and max_pos < task.n + 2:
        raise ValueError(f"the model's {max_pos} positions cannot hold lists of n={task.n} numbers")

    splits = {s: make_split(task, s) for s in ("train", "val", "test")}
    enc = {s: encode_prompts(tokenizer, [e.prompt for e in ex]) for s, ex in splits.items()}
    tgt = {s: target_ids(tokenizer, [e.target for e in ex]) for s, ex in splits.items()}
    history = train_last_token(hf, enc["train"], tgt["train"], train, val=enc["val"], val_targets=tgt["val"],
                               progress=progress)
    metrics = {
        "test_accuracy": last_token_accuracy(hf, enc["test"], tgt["test"]),
        "val_accuracy": last_token_accuracy(hf, enc["val"], tgt["val"]),
        "chance_accuracy": 1.0 / len(task.pool),
        "steps": train.steps,
        "seconds": float(history["seconds"].iloc[-1]) if len(history) else 0.0,
    }
    result = KthTrainResult(hf, tokenizer, task, train, history, metrics, arch_info)
    if out is not None:
        result.folder = save_trained(out, result)
    return result


def weights_table(model) -> pd.DataFrame:
    """The model's parameters as a table (one row per tensor: name, dtype, shape, raw bytes), so a trained
    model can be stored as a pipeline part and rebuilt bit for bit by :func:`model_from_weights`."""
    rows = []
    for name, t in model.state_dict().items():
        a = t.detach().cpu().contiguous().numpy()
        rows.append({"name": name, "dtype": str(a.dtype), "shape": json.dumps(list(a.shape)), "data": a.tobytes()})
    return pd.DataFrame(rows, columns=["name", "dtype", "shape", "data"])


def model_from_weights(table: pd.DataFrame, tokenizer, arch: GPT2Arch):
    """A GPT-2 of shape ``arch`` for ``tokenizer`` with the weights of a :func:`weights_table` table."""
    model = new_gpt2(tokenizer, arch)
    state = {r.name: torch.from_numpy(np.frombuffer(bytes(r.data), dtype=r.dtype).reshape(json.loads(r.shape)).copy())
             for r in table.itertuples()}
    model.load_state_dict(state)
    weights_changed(model)
    return model.eval()


def save_trained(folder: str | Path, result: KthTrainResult) -> Path:
    """Write an HF folder (weights + tokenizer) with ``hopscope_task.json`` (task, settings, metrics)
    and ``history.csv`` (learning curve)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    result.model.save_pretrained(folder)
    result.tokenizer.save_pretrained(folder)
    info = {
        "task": "kth_smallest",
        "task_config": result.task.to_dict(),
        "train_config": result.train.to_dict(),
        "arch": result.arch,
        "metrics": result.metrics,
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
    }
    (folder / TASK_FILE).write_text(json.dumps(info, indent=2))
    result.history.to_csv(folder / "history.csv", index=False)
    return folder


def load_task_info(folder: str | Path) -> dict | None:
    """The ``hopscope_task.json`` of a trained model folder, or None when the folder has none."""
    path = Path(folder) / TASK_FILE
    return json.loads(path.read_text()) if path.is_file() else None
