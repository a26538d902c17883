"""``wrap``: a causal LM the user has already loaded (fine-tuned, bf16, placed with ``device_map``) as a LoadedModel.

:func:`hopscope.load_model` reads weights from somewhere; :func:`wrap` takes a model that is already in memory,
as a notebook has it after ``AutoModelForCausalLM.from_pretrained(...)`` or a training loop, and checks
that hopscope can run it: an HF causal LM of a supported family, with its language-model head, and a
tokenizer that fits its embedding. The model is used as it is (no copy, no move, no dtype change); like
``load_model`` it is put in eval mode, and a tokenizer without a pad token gets its EOS token as one.
"""

from __future__ import annotations

from typing import Any

from torch import nn
from transformers import PreTrainedTokenizerBase

from hopscope.models.adapters import SUPPORTED_FAMILIES, build_adapter
from hopscope.models.loaded import LoadedModel
from hopscope.models.loading import ModelLoadError


def wrap(model: Any, tokenizer: Any, name: str | None = None) -> LoadedModel:
    """The :class:`LoadedModel` every hopscope function takes, around ``model`` and ``tokenizer``.

    ``model``: a transformers causal LM (``AutoModelForCausalLM.from_pretrained(...)``, any dtype, on one device
    or spread with ``device_map``; a PEFT model is run through its LoRA layers as they are). ``tokenizer``: its
    tokenizer (or a processor holding one). ``name``: what run folders and reports call the model (default: the
    folder or hub id it was loaded from). Results equal those of ``load_model`` on the same weights.

    Raises :class:`ModelLoadError` (a ``ValueError``) with one line when the model's family is not supported,
    it has no language-model head, or the tokenizer does not fit it.

    Example::

        model = AutoModelForCausalLM.from_pretrained("my/fine-tuned-llama", dtype=torch.bfloat16, device_map="auto")
        lm = hopscope.wrap(model, AutoTokenizer.from_pretrained("my/fine-tuned-llama"))
    """
    if isinstance(model, LoadedModel):
        raise ModelLoadError(f"{model.name} is already a hopscope model (LoadedModel): use it as it is")
    model = _base_of_peft(model)
    _check_model(model)
    tokenizer = _tokenizer_of(tokenizer)
    _check_vocab(model, tokenizer)
    path = str(getattr(model.config, "_name_or_path", "") or getattr(model, "name_or_path", "") or "")
    label = name or path or type(model).__name__
    return LoadedModel(model=model, tokenizer=tokenizer, name=label,
                       source=f"wrapped in memory ({path or type(model).__name__})")


def _base_of_peft(model: Any) -> Any:
    """A PEFT model's underlying transformers model (its LoRA layers stay in it, so they still run)."""
    if type(model).__name__.startswith("Peft") and hasattr(model, "get_base_model"):
        return model.get_base_model()
    return model


def _check_model(model: Any) -> None:
    config = getattr(model, "config", None)
    if not isinstance(model, nn.Module) or config is None:
        raise ModelLoadError(f"wrap() takes a Hugging Face causal LM (a transformers model with a config), "
                             f"not {type(model).__name__}")
    family = getattr(config, "model_type", None)
    cls = type(model).__name__
    if family not in SUPPORTED_FAMILIES:
        raise ModelLoadError(f"{cls} (model_type {family!r}) is not supported by hopscope; supported families: "
                             f"{', '.join(SUPPORTED_FAMILIES)}")
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        raise ModelLoadError(f"{cls} has no language-model head: load the model with AutoModelForCausalLM "
                             f"(e.g. {cls.removesuffix('Model')}ForCausalLM), not as a base or classification model")
    try:
        build_adapter(model)
    except AttributeError as err:
        raise ModelLoadError(f"{cls} does not have the module layout of a {family} causal LM ({err})") from None


def _tokenizer_of(tokenizer: Any) -> PreTrainedTokenizerBase:
    if isinstance(tokenizer, PreTrainedTokenizerBase):
        return tokenizer
    inner = getattr(tokenizer, "tokenizer", None)  # a processor (text + images) holds the text tokenizer
    if isinstance(inner, PreTrainedTokenizerBase):
        return inner
    raise ModelLoadError(f"wrap() needs the model's tokenizer (a transformers tokenizer, e.g. "
                         f"AutoTokenizer.from_pretrained(...)), not {type(tokenizer).__name__}")


def _check_vocab(model: nn.Module, tokenizer: PreTrainedTokenizerBase) -> None:
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        raise ModelLoadError(f"the tokenizer has {len(tokenizer)} tokens but {type(model).__name__}'s embedding has "
                             f"{rows} rows: is it this model's tokenizer?")
