"""Models over devices: a model loaded with a device_map that offloads blocks (accelerate's disk offload keeps
their weights on the meta device between forwards) gives the plain model's logits and patched results in every
engine path; half-precision models score in float32; the sweep places models the same way."""

from __future__ import annotations

import pytest
import torch

import hopscope
from hopscope.engine import (Site, add, cache, generate, knockout, mean_ablate, prompt_pass, replace, run,
                             run_with_cache, score_tokens, transform, zero_ablate)
from hopscope.models import tiny
from hopscope.sweep import ModelSpec, load

PROMPT = "The capital of France is Paris, and the capital of Spain is"
OTHER = ["The Eiffel Tower is in", "Water boils at one hundred degrees", "The capital of France is Paris, and"]


def offload_map(lm, disk: set[int]) -> dict[str, str]:
    """A complete device_map: blocks in ``disk`` offloaded to disk, every other module on the CPU."""
    names = {id(m): n for n, m in lm.model.named_modules()}
    blocks = {names[id(b)]: i for i, b in enumerate(lm.adapter.blocks)}
    out: dict[str, str] = {}

    def visit(prefix: str, module: torch.nn.Module) -> None:
        assert not list(module.parameters(recurse=False)) or not prefix, f"{prefix} holds parameters itself"
        for name, child in module.named_children():
            path = prefix + name
            if path in blocks:
                out[path] = "disk" if blocks[path] in disk else "cpu"
            elif any(b.startswith(path + ".") for b in blocks):
                visit(path + ".", child)
            else:
                out[path] = "cpu"
    visit("", lm.model)
    return out


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def pair(request, tmp_path_factory):
    """(plain, offloaded): one tiny model saved to a folder and loaded twice, blocks 1 and 2 on disk."""
    folder = tmp_path_factory.mktemp(f"tiny-{request.param}")
    src = tiny(request.param)
    src.model.save_pretrained(folder)
    src.tokenizer.save_pretrained(folder)
    plain = hopscope.load_model(str(folder))
    device_map = offload_map(plain, disk={1, 2})
    off = hopscope.load_model(str(folder), device_map=device_map, offload_folder=str(folder / "offload"))
    assert {p.device.type for p in off.adapter.blocks[1].parameters()} == {"meta"}  # really offloaded
    assert {p.device.type for p in off.adapter.blocks[0].parameters()} == {"cpu"}
    return plain, off


def same(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.device == b.device
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_offloaded_model_gives_the_same_logits_and_activations(pair):
    plain, off = pair
    same(run(off, [PROMPT, OTHER[0]]).logits, run(plain, [PROMPT, OTHER[0]]).logits)
    same(run(off, OTHER, last_only=True).logits, run(plain, OTHER, last_only=True).logits)  # shared prefix path
    comps = ("resid_pre", "resid_mid", "resid_post", "attn_out", "head_out", "mlp_hidden", "mlp_out", "attn_pattern")
    la, acts_a = run_with_cache(plain, [PROMPT, OTHER[1]], components=comps)
    lb, acts_b = run_with_cache(off, [PROMPT, OTHER[1]], components=comps)
    same(lb, la)
    assert set(acts_a) == set(acts_b)
    for key in acts_a:
        same(acts_b[key], acts_a[key])  # on the model's device, wherever the block's weights were


def test_offloaded_model_gives_the_same_patched_results(pair):
    plain, off = pair
    d = plain.d_model
    g = torch.Generator().manual_seed(0)
    vec = torch.randn(d, generator=g)
    rows = [
        [],
        [replace(Site(1, "resid_post", -1), vec)],
        [zero_ablate(Site(2, "mlp_out", -1)), cache(Site(2, "head_out", -1, head=1))],
        [knockout(1, [0, 1, 2]), cache(Site(1, "attn_pattern", -1))],
        [replace(Site(2, "head_out", -1, head=0), vec), add(Site(1, "attn_out", -1), vec)],
        [transform(Site(1, "mlp_hidden", -1), lambda v, row: v * 0.5), cache(Site(2, "resid_mid", -1))],
    ]
    for start in (-1, -3):
        ra, rb = prompt_pass(plain, PROMPT, rows, start=start), prompt_pass(off, PROMPT, rows, start=start)
        same(rb.logits, ra.logits)
        for ca, cb in zip(ra.cache, rb.cache):
            assert set(ca) == set(cb)
            for site in ca:
                same(cb[site], ca[site])
    means = [[mean_ablate(Site(1, "resid_post", -1))]] * 3  # a batch mean: no staircase
    same(prompt_pass(off, PROMPT, means).logits, prompt_pass(plain, PROMPT, means).logits)
    ga = generate(plain, PROMPT, rows, max_new_tokens=5, first_logits=True, stop=lambda r, t: len(t) >= 2 + r % 3)
    gb = generate(off, PROMPT, rows, max_new_tokens=5, first_logits=True, stop=lambda r, t: len(t) >= 2 + r % 3)
    assert gb.tokens == ga.tokens
    same(gb.first_logits, ga.first_logits)
    assert generate(off, OTHER, max_new_tokens=4).tokens == generate(plain, OTHER, max_new_tokens=4).tokens


def test_half_precision_models_score_in_float32():
    lm32 = tiny("llama")
    lm16 = tiny("llama")
    lm16.model.to(torch.bfloat16)
    rows = [[], [zero_ablate(Site(1, "resid_post", -1))]]
    outs = [run(lm16, [PROMPT]).logits, run(lm16, OTHER, last_only=True).logits,
            prompt_pass(lm16, PROMPT, rows).logits, generate(lm16, PROMPT, rows, max_new_tokens=2,
                                                            first_logits=True).first_logits,
            run_with_cache(lm16, [PROMPT])[0]]
    assert all(o.dtype == torch.float32 for o in outs)
    ref = prompt_pass(lm32, PROMPT, rows).logits
    ids = ref.argmax(-1)
    s16, s32 = score_tokens(outs[2], ids), score_tokens(ref, ids)
    assert s16["logprob"].dtype == torch.float32
    torch.testing.assert_close(s16["logprob"], s32["logprob"], atol=0.05, rtol=0)  # bf16 weights, fp32 scores


def test_placement_options_are_checked():
    with pytest.raises(ValueError, match="need a device_map"):
        hopscope.load_model("smollm2-135m", max_memory={"cpu": "1GiB"})
    with pytest.raises(ValueError, match="unknown device_map 'everywhere'"):
        hopscope.load_model("smollm2-135m", device_map="everywhere")
    assert load(ModelSpec("tiny-llama", dtype="bfloat16")).dtype == torch.bfloat16
    from hopscope.sweep import Placement

    with pytest.raises(ValueError, match="device_map needs a model folder"):
        load(ModelSpec("tiny-llama", placement=Placement(device_map="auto")))


def test_a_sweep_places_each_model_by_its_device_map(tmp_path):
    from test_sweep import TOY_PATCH, TOY_SCORES

    from hopscope.report import RunFolder
    from hopscope.sweep import Placement, SweepSpec, run_sweep

    folder = tmp_path / "tiny-llama"
    src = tiny("llama")
    src.model.save_pretrained(folder)
    src.tokenizer.save_pretrained(folder)
    spec = SweepSpec(models=[str(folder)], analyses=[TOY_SCORES, TOY_PATCH])
    plain = run_sweep(spec, out=tmp_path / "plain", progress=False).path
    placement = Placement(device_map=offload_map(src, disk={0, 2}), offload_folder=str(tmp_path / "offload"))
    placed = run_sweep(spec, placement=placement, out=tmp_path / "placed", progress=False).path
    for child, tables in (("tiny-llama__toy_scores", ("scores", "summary")), ("tiny-llama__toy_patch", ("patch",))):
        for name in tables:
            a, b = RunFolder.open(plain / child).load_table(name), RunFolder.open(placed / child).load_table(name)
            assert len(a) and a.equals(b)
    assert RunFolder.open(placed).config["sweep"]["placement"]["device_map"]["model.layers.0"] == "disk"


def test_offloaded_layers_keep_no_packed_copy(pair):
    """The engine's linear route packs an offloaded block's weights for each call only: the offloaded model
    holds packed copies of its resident layers alone, so offloading still saves the memory."""
    from hopscope.engine import linear

    if linear.route() != "onednn":
        pytest.skip("the packed linear route is off in this torch")
    plain, off = pair
    run(plain, [PROMPT]), run(off, [PROMPT])
    for i, (a, b) in enumerate(zip(plain.adapter.blocks, off.adapter.blocks)):
        kept, full = linear.packed_bytes(b), linear.packed_bytes(a)
        assert full > 0 or not any(isinstance(m, torch.nn.Linear) for m in a.modules())
        assert kept == (0 if i in (1, 2) else full)


def test_an_offloaded_models_weights_version_holds_over_its_first_call(tmp_path):
    """accelerate replaces an offloaded weight's meta placeholder at every forward; the prefix cache's weights
    version leaves meta placeholders out, so the first engine call on a freshly loaded offloaded model finds the
    prefixes it stored itself (before, its version changed at that call and the call took another path)."""
    from hopscope.engine.prefix import weights_version

    src = tiny("llama")
    src.model.save_pretrained(tmp_path)
    src.tokenizer.save_pretrained(tmp_path)
    plain = hopscope.load_model(str(tmp_path))
    off = hopscope.load_model(str(tmp_path), device_map=offload_map(plain, disk={1}),
                              offload_folder=str(tmp_path / "offload"))
    before = weights_version(off.model)
    run(off, [PROMPT])
    assert weights_version(off.model) == before
