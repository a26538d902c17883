"""Every claimed family runs exactly: the tiny models exercise each family's distinctive features, and those
features reach the engine (masks, softcaps, scaling, QK-norm, fused projections, embedding scaling)."""

from __future__ import annotations

import pytest
import torch

from hopscope.engine import Site, cache, knockout, replace, run, run_last_position, run_with_cache
from hopscope.engine import attention as attention_module
from hopscope.engine.attention import attention_modules, pass_through
from hopscope.models import SUPPORTED_FAMILIES, TINY_FAMILIES
from hopscope.models.tiny import SLIDING_WINDOW

LONG = "Hello world, my name is Ada and I live in"  # longer than every sliding window
PATTERN_TOL = 1e-5  # attention probabilities: the engine's exactness bound (float32 reduction order)

SLIDING = ("mistral", "qwen3", "gemma2", "gemma3_text", "phi3")
QK_NORM = ("qwen3", "gemma3_text", "olmo2")


@pytest.fixture(scope="module")
def models(tiny_of):
    return tiny_of


def _patterns(model, lm, prompt):
    """HF eager attention weights of ``model`` on ``prompt``: one ``[H, q, k]`` per layer."""
    ids = torch.tensor([lm.to_ids(prompt)])
    with torch.no_grad():
        return [a[0] for a in model(input_ids=ids, output_attentions=True).attentions]


def _engine_patterns(lm, prompt):
    _, acts = run_with_cache(lm, [prompt], components=("attn_pattern",))
    return [acts["attn_pattern", l][0] for l in range(lm.n_layers)]


def _sliding_layers(lm) -> list[int]:
    types = getattr(lm.config, "layer_types", None)
    if types is not None:
        return [l for l, t in enumerate(types) if t == "sliding_attention"]
    return list(range(lm.n_layers)) if getattr(lm.config, "sliding_window", None) else []


def test_every_supported_family_has_a_tiny_model():
    assert sorted(TINY_FAMILIES) == sorted(SUPPORTED_FAMILIES)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_tiny_model_exercises_its_family(family, models):
    lm = models(family)
    cfg = lm.config
    assert lm.family == family
    attn = lm.adapter.attn[0]
    if family in SLIDING:
        assert cfg.sliding_window == SLIDING_WINDOW < len(lm.to_ids(LONG)) - 1
        assert _sliding_layers(lm)
    if family in QK_NORM:
        assert hasattr(attn, "q_norm") and hasattr(attn, "k_norm")
    if family in ("mistral", "qwen3", "gemma2", "gemma3_text"):
        assert lm.d_head * lm.n_heads != lm.d_model
    if family not in ("gpt2", "opt", "gpt_neox"):
        assert lm.n_kv_heads < lm.n_heads  # grouped-query attention
    if family == "gemma2":
        assert cfg.attn_logit_softcapping and cfg.final_logit_softcapping and cfg.query_pre_attn_scalar != lm.d_head
        assert _sliding_layers(lm) != list(range(lm.n_layers))  # local and global layers
    if family == "gemma3_text":
        assert cfg.query_pre_attn_scalar != lm.d_head and _sliding_layers(lm) != list(range(lm.n_layers))
    if family == "phi3":
        assert hasattr(attn, "qkv_proj") and hasattr(lm.adapter.mlp[0], "gate_up_proj")
    if family == "olmo":
        assert cfg.clip_qkv is not None


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_pass_through_is_hf_default_and_bitwise_equal(family, models, make_hf_twin):
    lm = models(family)
    twin = make_hf_twin(lm)
    ids = torch.tensor([lm.to_ids(LONG)])
    with torch.no_grad():
        ref = twin(input_ids=ids).logits[0]
    got = run(lm, [LONG]).logits[0]
    expected = "eager" if family == "gemma2" else "sdpa"  # Gemma 2: SDPA cannot apply the logit softcap
    assert twin.config._attn_implementation == expected
    kinds = {pass_through(m, getattr(m, "attn_logit_softcapping", None)) for m in attention_modules(lm.model)}
    assert kinds == {expected}
    assert torch.equal(got, ref)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_padded_batch_pass_through_is_bitwise_equal(family, models, make_hf_twin, monkeypatch):
    """A left-padded batch (a mask, several query columns): on CPU the grouped-query layers take SDPA's own
    grouping instead of transformers' repeat_kv copy, and the logits stay bitwise HF's."""
    lm = models(family)
    twin = make_hf_twin(lm)
    batch = lm.encode_ids([lm.to_ids(LONG), lm.to_ids("Hello world")])
    inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask,
              "position_ids": batch.position_ids}
    taken: list[bool] = []
    real = attention_module.grouped_sdpa

    def counting(*args, **kwargs):
        out = real(*args, **kwargs)
        taken.append(out is not None)
        return out

    monkeypatch.setattr(attention_module, "grouped_sdpa", counting)
    attention_module.ensure_installed(lm.model)
    with torch.no_grad():
        ref = twin(**inputs).logits
        got = lm.model(**inputs).logits
    real_tokens = batch.attention_mask.bool()
    assert torch.equal(got[real_tokens], ref[real_tokens])
    kinds = {pass_through(m, getattr(m, "attn_logit_softcapping", None)) for m in attention_modules(lm.model)}
    grouped = lm.n_kv_heads < lm.n_heads and kinds == {"sdpa"}  # an eager pass-through (Gemma 2) never groups
    assert any(taken) == grouped and (not grouped or all(taken))


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_every_engine_call_takes_the_pass_through(family):
    """Prompts decoded from shared cached prefixes (the knowledge filter's route, which never calls the hooked
    forward) still run hopscope's attention: the route of a pass does not depend on which call came first."""
    from hopscope.engine import generate
    from hopscope.models.tiny import tiny

    lm = tiny(family)  # fresh: no earlier call installed anything on it
    assert not getattr(lm.model, "_hopscope_attention", False)
    generate(lm, [LONG + " one", LONG + " two", LONG + " three"], max_new_tokens=2)
    assert {m.config._attn_implementation for m in attention_modules(lm.model)} == {attention_module.IMPLEMENTATION}


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16))
def test_grouped_sdpa_equals_transformers_sdpa_bitwise(dtype):
    """Random grouped-query inputs, boolean and additive masks (a fully masked padding row included): the
    CPU grouping route returns transformers' output bit for bit, and declines the cases it does not cover."""
    from types import SimpleNamespace

    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    g = torch.Generator().manual_seed(0)
    for batch, heads, groups, q, past in ((1, 4, 2, 5, 0), (3, 9, 3, 7, 6), (2, 6, 6, 2, 3)):
        module = SimpleNamespace(num_key_value_groups=groups, is_causal=True)
        k_len = q + past
        query = torch.randn(batch, q, heads, 16, generator=g).to(dtype).transpose(1, 2)
        key = torch.randn(batch, k_len, heads // groups, 16, generator=g).to(dtype).transpose(1, 2)
        value = torch.randn(batch, k_len, heads // groups, 16, generator=g).to(dtype).transpose(1, 2)
        allowed = torch.ones(q, k_len, dtype=torch.bool).tril(past)[None, None].repeat(batch, 1, 1, 1)
        allowed[0, :, 0, :] = False  # a left-padding query column that sees nothing
        for mask in (allowed, torch.where(allowed, torch.zeros((), dtype=dtype), torch.finfo(dtype).min)):
            ref, _ = sdpa_attention_forward(module, query, key, value, mask, scaling=0.25)
            got, _ = attention_module.grouped_sdpa(module, query, key, value, mask, scaling=0.25)
            assert torch.equal(got.nan_to_num(7.0), ref.nan_to_num(7.0))
        declined = [(SimpleNamespace(num_key_value_groups=1), query, key, allowed, {}),  # no grouping
                    (module, query, key, None, {}),  # no mask: transformers already uses enable_gqa
                    (module, query[:, :, :1], key, allowed[:, :, :1], {}),  # one column: transformers packs it
                    (module, query, key, allowed, {"position_bias": torch.zeros(1)})]
        for mod, qq, kk, mm, extra in declined:
            assert attention_module.grouped_sdpa(mod, qq, kk, kk, mm, **extra) is None


@pytest.mark.parametrize("family", SLIDING)
def test_sliding_window_mask_reaches_the_explicit_path(family, models):
    lm = models(family)
    pats = _engine_patterns(lm, LONG)
    n = pats[0].shape[-1]
    sliding = _sliding_layers(lm)
    for layer, pat in enumerate(pats):
        outside = pat[:, SLIDING_WINDOW:, :].tril(-SLIDING_WINDOW)  # keys at least `window` tokens back
        if layer in sliding:
            assert outside.abs().max().item() == 0.0, layer
            assert (pat[:, -1, n - SLIDING_WINDOW:] > 0).all()
        else:  # a full layer does attend there, so the check above is not vacuous
            assert outside.abs().max().item() > 1e-4, layer


# (family, config change that removes one feature): the engine must equal the real model, not this one
FEATURES = [
    ("gemma2", dict(attn_logit_softcapping=None)),
    ("gemma2", dict(query_pre_attn_scalar=24)),
    ("gemma2", dict(sliding_window=4096)),
    ("gemma3_text", dict(query_pre_attn_scalar=24)),
    ("gemma3_text", dict(sliding_window=4096)),
    ("mistral", dict(sliding_window=None)),
    ("qwen3", dict(sliding_window=4096)),
    ("phi3", dict(sliding_window=None)),
    ("olmo", dict(clip_qkv=None)),
]


@pytest.mark.parametrize("family,change", FEATURES, ids=[f"{f}-{next(iter(c))}" for f, c in FEATURES])
def test_engine_patterns_apply_the_feature(family, change, models, make_hf_twin):
    lm = models(family)
    got = _engine_patterns(lm, LONG)
    real = _patterns(make_hf_twin(lm, "eager"), lm, LONG)
    without = _patterns(make_hf_twin(lm, "eager", **change), lm, LONG)
    assert max((g - r).abs().max().item() for g, r in zip(got, real)) <= PATTERN_TOL
    assert max((g - w).abs().max().item() for g, w in zip(got, without)) > 1e-3


def test_final_logit_softcap_is_applied(models, make_hf_twin):
    lm = models("gemma2")
    ids = torch.tensor([lm.to_ids(LONG)])
    with torch.no_grad():
        uncapped = make_hf_twin(lm, final_logit_softcapping=None)(input_ids=ids).logits[0]
    got = run(lm, [LONG]).logits[0]
    cap = lm.config.final_logit_softcapping
    assert (got - torch.tanh(uncapped / cap) * cap).abs().max().item() <= 1e-6
    assert (got - uncapped).abs().max().item() > 1e-2


@pytest.mark.parametrize("family", ("gemma", "gemma2", "gemma3_text"))
def test_gemma_embedding_is_scaled_at_the_embed_site(family, models):
    lm = models(family)
    ids = lm.to_ids(LONG)
    _, acts = run_with_cache(lm, [LONG], components=("embed",))
    raw = lm.adapter.embed.weight[torch.tensor(ids)]
    scale = torch.tensor(lm.d_model ** 0.5, dtype=lm.dtype)
    assert (acts["embed", 0][0] - raw * scale).abs().max().item() <= 1e-6


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_adapter_projections_are_the_right_modules(family, models):
    """``mlp_down`` is the MLP's output projection (its output is the MLP's) and ``out_proj`` takes the
    concatenated heads (so head_out slices it per head); for Phi-3's fused modules too."""
    lm = models(family)
    ad = lm.adapter
    seen = {}
    handles = [ad.mlp_down[1].register_forward_pre_hook(lambda m, a: seen.__setitem__("hidden", a[0])),
               ad.mlp[1].register_forward_hook(lambda m, a, o: seen.__setitem__("mlp", o)),
               ad.out_proj[1].register_forward_pre_hook(lambda m, a: seen.__setitem__("z", a[0]))]
    try:
        with torch.no_grad():
            lm.model(input_ids=torch.tensor([lm.to_ids(LONG)]))
            again = ad.mlp_down[1](seen["hidden"])
    finally:
        for h in handles:
            h.remove()
    assert torch.equal(again.view_as(seen["mlp"]), seen["mlp"])
    assert seen["z"].shape[-1] == lm.n_heads * lm.d_head
    assert tuple(ad.out_proj_weight(1).shape) == (lm.d_model, lm.n_heads * lm.d_head)
    if family == "phi3":
        assert seen["hidden"].shape[-1] == lm.config.intermediate_size  # after gate_up is split and gated


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_residual_stream_decomposes_into_the_adapters_sublayers(family, models):
    """resid_mid = resid_pre + attn_to_resid(attn_out), resid_post = resid_mid + mlp_to_resid(mlp_out): the
    post-norms of Gemma 2/3 and OLMo 2 sit between a sublayer and the residual; GPT-NeoX adds both at once."""
    lm = models(family)
    ad = lm.adapter
    comps = ("resid_pre", "attn_out", "mlp_out", "resid_post") + (() if ad.parallel_residual else ("resid_mid",))
    _, acts = run_with_cache(lm, [LONG], components=comps)
    sandwich = ad.attn_to_resid[0] is not ad.attn[0]
    assert sandwich == (family in ("gemma2", "gemma3_text", "olmo2"))
    for l in range(lm.n_layers):
        with torch.no_grad():
            attn = ad.attn_to_resid[l](acts["attn_out", l]) if sandwich else acts["attn_out", l]
            mlp = ad.mlp_to_resid[l](acts["mlp_out", l]) if sandwich else acts["mlp_out", l]
        if ad.parallel_residual:
            assert (acts["resid_pre", l] + attn + mlp - acts["resid_post", l]).abs().max().item() <= 1e-5
            continue
        assert (acts["resid_pre", l] + attn - acts["resid_mid", l]).abs().max().item() <= 1e-5
        assert (acts["resid_mid", l] + mlp - acts["resid_post", l]).abs().max().item() <= 1e-5


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_mlp_hidden_site_is_the_input_of_mlp_down(family, models):
    lm = models(family)
    seen = {}
    handle = lm.adapter.mlp_down[1].register_forward_pre_hook(lambda m, a: seen.__setitem__("hidden", a[0]))
    try:
        with torch.no_grad():
            lm.model(input_ids=torch.tensor([lm.to_ids(LONG)]))
    finally:
        handle.remove()
    base = run(lm, [LONG]).logits
    site = Site(1, "mlp_hidden", None)
    hidden = run(lm, [LONG], [[cache(site)]]).cache[0][site]
    assert torch.equal(hidden, seen["hidden"].reshape(hidden.shape))
    assert torch.equal(run(lm, [LONG], [[replace(site, hidden)]]).logits, base)
    assert (run(lm, [LONG], [[replace(site, hidden * 0)]]).logits - base).abs().max().item() > 1e-4


@pytest.mark.parametrize("family", SLIDING)
def test_fast_path_on_a_sliding_window_cache(family, models):
    """The prefix cache of a sliding layer keeps only its last keys: knockouts and patterns still line up."""
    lm = models(family)
    n = len(lm.to_ids(LONG))
    rows = [[knockout(l, keys=[n - 2]) for l in range(lm.n_layers)],
            [knockout(l, keys=(0, n - 2)) for l in range(lm.n_layers)],
            [cache(Site(l, "attn_pattern", -1)) for l in range(lm.n_layers)]]
    fast = run_last_position(lm, LONG, rows)
    naive = run(lm, [LONG] * len(rows), rows)  # full logits: every row runs every position, no shared prefix
    naive.logits = naive.logits[:, -1]
    assert (fast.logits - naive.logits).abs().max().item() <= 1e-5
    assert (naive.logits[0] - naive.logits[2]).abs().max().item() > 1e-4  # the knockout inside the window bites
    alone = run_last_position(lm, LONG, rows[2:])  # patterns read with no knockout in the batch
    for l in range(lm.n_layers):
        site = Site(l, "attn_pattern", -1)
        for got in (fast.cache[2][site], alone.cache[0][site]):
            assert got.shape == naive.cache[2][site].shape == (lm.n_heads, 1, n)
            assert (got - naive.cache[2][site]).abs().max().item() <= PATTERN_TOL


def test_knocking_out_every_visible_key_attends_to_nothing(models):
    """Within a window every key can be knocked out: the query then attends to nothing (no hidden keys)."""
    lm = models("mistral")
    n = len(lm.to_ids(LONG))
    site = Site(0, "attn_pattern", -1)
    res = run(lm, [LONG], [[knockout(0, keys=(n - SLIDING_WINDOW, n)), cache(site)]])
    assert res.cache[0][site].abs().max().item() == 0.0


def test_split_gguf_is_joined_and_checked(tmp_path, monkeypatch):
    """Parts spread over packages (Gemma 3 270M: ``*.gguf.partNN``) join in package order; size and sha256
    are checked before the joined file is kept."""
    import hashlib
    import sys

    from hopscope.models import embedded

    chunks = [b"GGUF" + bytes(range(7)), b"second part", b"3"]
    for i, chunk in enumerate(chunks):
        data = tmp_path / "site" / f"hs_fake_part{i + 1}" / "data"
        data.mkdir(parents=True)
        (data.parent / "__init__.py").write_text("")
        (data / f"model.gguf.part{i:02d}").write_bytes(chunk)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("HOPSCOPE_CACHE", str(tmp_path / "cache"))
    whole = b"".join(chunks)
    spec = embedded.EmbeddedModel(packages=tuple(f"hs_fake_part{i}" for i in (1, 2, 3)), gguf_name="fake.gguf",
                                  install_hint="pip install fake", size=len(whole),
                                  sha256=hashlib.sha256(whole).hexdigest(), part_glob="*.gguf.part*")
    monkeypatch.setitem(embedded.EMBEDDED, "fake", spec)
    assert embedded.gguf_path("fake").read_bytes() == whole
    bad = embedded.EmbeddedModel(**{**spec.__dict__, "gguf_name": "bad.gguf", "sha256": "0" * 64})
    monkeypatch.setitem(embedded.EMBEDDED, "bad", bad)
    with pytest.raises(ValueError, match="do not hold this model") as err:
        embedded.gguf_path("bad")
    assert "\n" not in str(err.value) and not (tmp_path / "cache" / "gguf" / "bad.gguf").exists()
    assert "hs_fake_part1" not in sys.modules  # found by importlib, never imported


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_info_names_the_sites_and_the_attention_that_runs(family, models):
    from hopscope.cli.core import describe
    from hopscope.engine import COMPONENTS

    lm = models(family)
    info = describe(lm)
    sites = [s.split(" (")[0] for s in info["sites"].split(", ")]
    parallel = family == "gpt_neox"
    assert sites == [c for c in COMPONENTS if not (parallel and c == "resid_mid")]
    assert ("resid_mid (parallel residual" in info["absent"]) == parallel
    d_mlp = run(lm, [LONG], [[cache(Site(0, "mlp_hidden", -1))]]).cache[0][Site(0, "mlp_hidden", -1)].shape[-1]
    assert f"mlp_hidden (d_mlp {d_mlp}: input of " in info["sites"]
    passing = "eager" if family == "gemma2" else "SDPA"
    assert info["attention"].startswith(f"pass-through {passing} ") and "explicit" in info["attention"]
    assert ("sliding window 3" in info["attn detail"]) == (family in SLIDING)


def test_unsupported_family_says_why():
    from types import SimpleNamespace

    from hopscope.models import build_adapter

    with pytest.raises(ValueError, match=r"'mixtral' is not supported by hopscope \(mixture-of-experts") as err:
        build_adapter(SimpleNamespace(config=SimpleNamespace(model_type="mixtral")))
    assert "\n" not in str(err.value) and "gemma3_text" in str(err.value)
