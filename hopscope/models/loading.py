"""Load any HF causal LM (hub id, local folder, GGUF file) or the embedded default into a LoadedModel."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

from hopscope.models.embedded import EMBEDDED, embedded_folder
from hopscope.models.loaded import LoadedModel

DEFAULT_MODEL = "smollm2-135m"

log = logging.getLogger(__name__)


class ModelLoadError(ValueError):
    """A model could not be found or loaded; the message names the model and the reason."""


def _resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    table = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
             "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if dtype not in table:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {sorted(table)}")
    return table[dtype]


def _from_gguf(path: Path, dtype: torch.dtype):
    try:
        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
    except ValueError as err:
        if "not supported" in str(err).lower() or "architecture" in str(err).lower():
            raise ModelLoadError(f"GGUF file {path} has an architecture transformers cannot load: {err}") from err
        raise
    # A dequantised GGUF model is an ordinary float model; drop the quantizer so it can be saved and hooked.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model, tok


def load_model(
    name: str | None = None,
    *,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = torch.float32,
) -> LoadedModel:
    """Load a causal LM for the engine.

    ``name`` is ``None`` (the embedded default, SmolLM2-135M-Instruct), an embedded model's short name
    (``hopscope.models.EMBEDDED``), a local HF folder, a ``.gguf`` file, or a hub id.
    """
    torch_dtype = _resolve_dtype(dtype)
    name = name or DEFAULT_MODEL
    hf_logging.disable_progress_bar()
    if name in EMBEDDED:
        folder = embedded_folder(name)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype)
        tok = AutoTokenizer.from_pretrained(folder)
        source = str(folder)
    elif name.endswith(".gguf"):
        path = Path(name).expanduser()
        if not path.is_file():
            raise ModelLoadError(f"GGUF file {name!r} does not exist")
        model, tok = _from_gguf(path, torch_dtype)
        source = str(path.resolve())
    elif Path(name).expanduser().is_dir():
        folder = Path(name).expanduser()
        if not (folder / "config.json").is_file():
            raise ModelLoadError(f"folder {name!r} has no config.json: not a Hugging Face model folder")
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype)
        tok = AutoTokenizer.from_pretrained(folder)
        source = str(folder.resolve())
    else:
        offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
        try:
            model = AutoModelForCausalLM.from_pretrained(name, dtype=torch_dtype, local_files_only=offline)
            tok = AutoTokenizer.from_pretrained(name, local_files_only=offline)
        except (OSError, ValueError) as err:
            raise ModelLoadError(
                f"unknown model {name!r}: it is not an embedded model ({', '.join(EMBEDDED)}), a local folder or a "
                f".gguf file, and the Hugging Face hub could not provide it"
                f"{' (HF_HUB_OFFLINE=1)' if offline else ' (no network?)'}: {type(err).__name__}"
            ) from err
        source = f"hf-hub:{name}"
    model.to(device)
    return LoadedModel(model=model, tokenizer=tok, name=name, source=source)
