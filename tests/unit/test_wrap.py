"""``hopscope.wrap``: a model the user loaded runs exactly as ``load_model`` of the same weights does.

Each test saves a tiny model to a folder and compares ``load_model(folder)`` with
``wrap(AutoModelForCausalLM.from_pretrained(folder, ...), tokenizer)``: logits, cached activations,
patched rows (``prompt_pass``), greedy generations and a whole small analysis must be identical, in float32,
in bf16 and with the blocks spread by ``device_map`` (one of them offloaded to disk through accelerate).
"""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, BertConfig, BertLMHeadModel, LlamaModel

import hopscope
from hopscope.models import ModelLoadError

PROMPT = "The capital of France is"
COMPONENTS = ("resid_post", "head_out", "attn_pattern", "mlp_hidden")


def _save(family: str, folder):
    lm = hopscope.models.tiny(family)
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def saved(request, tmp_path_factory):
    """A tiny model of a family saved as an HF folder."""
    return _save(request.param, tmp_path_factory.mktemp(f"tiny-{request.param}"))


def _same_engine_outputs(a, b) -> None:
    """Every engine entry point gives bit-identical results on ``a`` and ``b``."""
    la, acts_a = hopscope.run_with_cache(a, [PROMPT, "Paris is the capital of"], components=COMPONENTS)
    lb, acts_b = hopscope.run_with_cache(b, [PROMPT, "Paris is the capital of"], components=COMPONENTS)
    assert torch.equal(la, lb)
    assert set(acts_a) == set(acts_b) and all(torch.equal(acts_a[k], acts_b[k]) for k in acts_a)
    v = acts_a["resid_post", 0][0, -1]
    rows = [[hopscope.replace(hopscope.Site(t, "resid_post", -1), v)] for t in range(a.n_layers)]
    rows.append([hopscope.scale(hopscope.Site(1, "head_out", -1, head=1), 0.0)])
    pa, pb = hopscope.prompt_pass(a, PROMPT, rows), hopscope.prompt_pass(b, PROMPT, rows)
    assert torch.equal(pa.logits, pb.logits)
    assert not torch.equal(pa.logits[0], pa.logits[-1])  # the patches do something: the comparison is not vacuous
    ga = hopscope.generate(a, PROMPT, rows, max_new_tokens=4).tokens
    assert ga == hopscope.generate(b, PROMPT, rows, max_new_tokens=4).tokens


def test_wrap_equals_load_model(saved):
    a = hopscope.load_model(str(saved))
    b = hopscope.wrap(AutoModelForCausalLM.from_pretrained(saved), AutoTokenizer.from_pretrained(saved))
    assert b.model is not a.model and b.family == a.family and b.n_layers == a.n_layers
    _same_engine_outputs(a, b)


def test_a_wrapped_model_gives_the_same_analysis_tables(tmp_path):
    saved = _save("llama", tmp_path)
    a = hopscope.load_model(str(saved))
    b = hopscope.wrap(AutoModelForCausalLM.from_pretrained(saved), AutoTokenizer.from_pretrained(saved))
    ra = hopscope.recall(a, settings="quick", progress=False)
    rb = hopscope.recall(b, settings="quick", progress=False)
    assert set(ra.tables) == set(rb.tables) and ra.tables
    for name in ra.tables:
        pd.testing.assert_frame_equal(ra.tables[name], rb.tables[name], check_exact=True, obj=name)
    pd.testing.assert_frame_equal(ra.claims, rb.claims)


def test_wrap_bf16_equals_load_model_in_bf16(saved):
    a = hopscope.load_model(str(saved), dtype="bfloat16")
    model = AutoModelForCausalLM.from_pretrained(saved, dtype=torch.bfloat16)
    b = hopscope.wrap(model, AutoTokenizer.from_pretrained(saved))
    assert b.dtype == torch.bfloat16 and next(model.parameters()).dtype == torch.bfloat16  # not cast
    _same_engine_outputs(a, b)
    logits, _ = hopscope.run_with_cache(b, PROMPT)
    assert logits.dtype == torch.float32  # scores in float32 whatever the model's dtype


def _device_map(model: nn.Module) -> dict[str, str]:
    """Every top-level module and every block on the CPU, except block 1: offloaded to disk."""
    top_name, top = next((n, m) for n, m in model.named_children() if n != "lm_head")
    out = {}
    for name, child in top.named_children():
        if isinstance(child, nn.ModuleList):
            out.update({f"{top_name}.{name}.{i}": "disk" if i == 1 else "cpu" for i in range(len(child))})
        else:
            out[f"{top_name}.{name}"] = "cpu"
    return {**out, "lm_head": "cpu"}


def test_wrap_a_model_spread_by_device_map_with_a_block_on_disk(saved, tmp_path):
    a = hopscope.load_model(str(saved))
    device_map = _device_map(a.model)
    model = AutoModelForCausalLM.from_pretrained(saved, device_map=device_map, offload_folder=tmp_path)
    assert model.hf_device_map == device_map  # accelerate placed it so: one block's weights on disk
    b = hopscope.wrap(model, AutoTokenizer.from_pretrained(saved))
    _same_engine_outputs(a, b)


def test_wrapping_leaves_the_model_computing_what_it_did(saved):
    model = AutoModelForCausalLM.from_pretrained(saved)
    tok = AutoTokenizer.from_pretrained(saved)
    ids = tok(PROMPT, return_tensors="pt")
    with torch.no_grad():
        before = model(**ids).logits
    lm = hopscope.wrap(model, tok, name="mine")
    hopscope.prompt_pass(lm, PROMPT, [[hopscope.zero_ablate(hopscope.Site(1, "attn_out", -1))], []])
    hopscope.run_with_cache(lm, PROMPT, components=("attn_pattern",))
    with torch.no_grad():
        after = model(**ids).logits
    assert torch.equal(before, after)
    assert lm.name == "mine" and "wrapped" in lm.source and not model.training


def test_wrap_names_the_model_after_its_folder(saved):
    lm = hopscope.wrap(AutoModelForCausalLM.from_pretrained(saved), AutoTokenizer.from_pretrained(saved))
    assert lm.name == str(saved) and lm.summary()["name"] == str(saved)


def test_wrap_takes_a_processor_and_a_peft_style_wrapper(tiny_llama):
    class Processor:  # what a multimodal model's AutoProcessor looks like to wrap(): it holds a tokenizer
        tokenizer = tiny_llama.tokenizer

    class PeftModelForCausalLM(nn.Module):  # PEFT's wrapper: the LoRA layers live inside the base model
        def __init__(self, base):
            super().__init__()
            self.base_model = base

        def get_base_model(self):
            return self.base_model

    lm = hopscope.wrap(PeftModelForCausalLM(tiny_llama.model), Processor())
    assert lm.model is tiny_llama.model and lm.tokenizer is tiny_llama.tokenizer


@pytest.mark.parametrize("case, message", [
    ("bert", "BertLMHeadModel (model_type 'bert') is not supported by hopscope; supported families: gemma"),
    ("base", "LlamaModel has no language-model head: load the model with AutoModelForCausalLM"),
    ("not-a-model", "wrap() takes a Hugging Face causal LM"),
    ("loaded", "is already a hopscope model"),
    ("tokenizer", "needs the model's tokenizer"),
    ("vocab", "tokens but LlamaForCausalLM's embedding has"),
])
def test_wrap_rejects_what_it_cannot_run_in_one_line(case, message, tiny_llama, tiny_gpt2):
    tok = tiny_llama.tokenizer
    model = {
        "bert": lambda: BertLMHeadModel(BertConfig(num_hidden_layers=1, hidden_size=32, num_attention_heads=2,
                                                   intermediate_size=32, is_decoder=True)),
        "base": lambda: LlamaModel(tiny_llama.model.config),
        "not-a-model": lambda: "HuggingFaceTB/SmolLM2-135M",
        "loaded": lambda: tiny_llama,
        "tokenizer": lambda: tiny_llama.model,
        "vocab": lambda: tiny_llama.model,
    }[case]()
    if case == "tokenizer":
        tok = "HuggingFaceTB/SmolLM2-135M"
    if case == "vocab":
        tok = tiny_gpt2.tokenizer  # GPT-2's 50257 tokens do not fit SmolLM2's 49152 embedding rows
    with pytest.raises(ModelLoadError) as err:
        hopscope.wrap(model, tok)
    assert message in str(err.value) and "\n" not in str(err.value)
