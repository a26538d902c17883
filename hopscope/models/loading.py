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
TINY_PREFIX = "tiny-"

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


def _placement(device_map, max_memory, offload_folder) -> dict[str, object]:
    """from_pretrained's placement keywords (accelerate's big-model loading); {} for a plain load."""
    if device_map is None:
        if max_memory is not None or offload_folder is not None:
            raise ValueError("max_memory and offload_folder need a device_map (e.g. device_map='auto')")
        return {}
    if isinstance(device_map, str) and device_map not in ("auto", "balanced", "balanced_low_0", "sequential"):
        raise ValueError(f"unknown device_map {device_map!r}; use 'auto', 'balanced', 'sequential' or a dict")
    out: dict[str, object] = {"device_map": device_map}
    if max_memory is not None:
        out["max_memory"] = dict(max_memory)
    if offload_folder is not None:
        out["offload_folder"] = str(offload_folder)
    return out


def load_model(
    name: str | None = None,
    *,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = torch.float32,
    device_map: str | dict[str, int | str] | None = None,
    max_memory: dict[int | str, int | str] | None = None,
    offload_folder: str | os.PathLike[str] | None = None,
) -> LoadedModel:
    """Load a causal LM for the engine.

    ``name`` is ``None`` (the embedded default, SmolLM2-135M-Instruct), an embedded model's short name
    (``hopscope.models.EMBEDDED``), a local HF folder, a ``.gguf`` file, or a hub id.

    A model larger than one device: ``device_map`` (``"auto"``, ``"balanced"``, ``"sequential"`` or a
    ``{module: device}`` dict, devices being GPU indices, ``"cpu"`` or ``"disk"``) places its blocks through
    accelerate, within ``max_memory`` per device (``{0: "20GiB", "cpu": "60GiB"}``); blocks that do not fit
    are offloaded to CPU memory or to ``offload_folder`` on disk. ``device`` is then ignored.
    """
    torch_dtype = _resolve_dtype(dtype)
    placement = _placement(device_map, max_memory, offload_folder)
    name = name or DEFAULT_MODEL
    hf_logging.disable_progress_bar()
    if name.startswith((TINY_PREFIX, "tiny:")):  # a tiny random model (tests, docs, smoke runs): "tiny-llama"
        from hopscope.models.tiny import TINY_FAMILIES, tiny

        family = name[len(TINY_PREFIX):]
        if family not in TINY_FAMILIES:
            raise ModelLoadError(f"no tiny model {name!r}; tiny models: {', '.join(TINY_PREFIX + f for f in TINY_FAMILIES)}")
        if placement:
            raise ModelLoadError(f"{name} is built in memory; a device_map needs a model folder or hub id")
        lm = tiny(family)
        lm.model.to(device=device, dtype=torch_dtype)
        return lm
    if name in EMBEDDED:
        folder = embedded_folder(name)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype, **placement)
        tok = AutoTokenizer.from_pretrained(folder)
        source = str(folder)
    elif name.endswith(".gguf"):
        path = Path(name).expanduser()
        if not path.is_file():
            raise ModelLoadError(f"GGUF file {name!r} does not exist")
        if placement:
            raise ModelLoadError(f"GGUF file {name!r}: device_map/max_memory need a Hugging Face folder or hub id")
        model, tok = _from_gguf(path, torch_dtype)
        source = str(path.resolve())
    elif Path(name).expanduser().is_dir():
        folder = Path(name).expanduser()
        if not (folder / "config.json").is_file():
            raise ModelLoadError(f"folder {name!r} has no config.json: not a Hugging Face model folder")
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype, **placement)
        tok = AutoTokenizer.from_pretrained(folder)
        source = str(folder.resolve())
    else:
        offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
        try:
            model = AutoModelForCausalLM.from_pretrained(name, dtype=torch_dtype, local_files_only=offline,
                                                         **placement)
            tok = AutoTokenizer.from_pretrained(name, local_files_only=offline)
        except (OSError, ValueError) as err:
            raise ModelLoadError(
                f"unknown model {name!r}: it is not an embedded model ({', '.join(EMBEDDED)}), a local folder or a "
                f".gguf file, and the Hugging Face hub could not provide it"
                f"{' (HF_HUB_OFFLINE=1)' if offline else ' (no network?)'}: {type(err).__name__}"
            ) from err
        source = f"hf-hub:{name}"
    if not placement:
        model.to(device)
    return LoadedModel(model=model, tokenizer=tok, name=name, source=source)
