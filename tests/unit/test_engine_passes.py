"""Invariants of the engine's shared computation, on tiny models of every family.

- The staircase (rows join the batch at the block of their first intervention) equals the full-depth pass.
- A prompt pass from any start equals running the whole prompt per row.
- Prompts sharing a token prefix, run once from the cached prefix, equal each prompt run alone.
- A prefix computed by extending a stored prefix's cache equals the prefix computed whole.
- Prompts from different cached prefixes, run in one pass, equal each prompt run alone.
- Early-stopped generation gives exactly the prefix of the unstopped generation of each row.
- A weight change through hopscope's own code never lets a stale prefix cache be used.
- The open ``transform`` op and the ``mlp_hidden`` site act exactly where they say.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from hopscope.engine import (
    Site, add, cache, generate, knockout, prompt_pass, replace, run, run_with_cache, scale, transform, weights_changed,
    zero_ablate,
)
from hopscope.engine.prefix import STORE

PROMPT = "The Eiffel Tower is located in the city of"
FEW_SHOT = "Q: Where is the Colosseum? A: Rome.\nQ: Where is Big Ben? A: London.\nQ: "
QUESTIONS = ["Where is the Eiffel Tower? A:", "Where is the Brandenburg Gate? A:", "Where is it? A:",
             "Where is the Statue of Liberty located? A:"]
TOL = 1e-4


def _patch_rows(lm, position=-1, seed=0):
    """One row per layer patched at ``position`` with a random vector, plus a knockout row and a clean row."""
    g = torch.Generator().manual_seed(seed)
    rows = [[replace(Site(l, "resid_post", position), torch.randn(lm.d_model, generator=g))] for l in range(lm.n_layers)]
    rows += [[add(Site(l, "attn_out", position), torch.randn(lm.d_model, generator=g))] for l in range(lm.n_layers)]
    rows.append([knockout(lm.n_layers - 1, keys=(-3, -1), query=-1)])  # inside any sliding window
    rows.append([])
    return rows


def _full(lm, prompt, rows):
    return run(lm, [prompt] * len(rows), rows, last_only=True, share_prefix=False).logits


def test_staircase_equals_full_depth(tiny_model):
    lm = tiny_model
    rows = _patch_rows(lm)
    stair = prompt_pass(lm, PROMPT, rows).logits
    flat = prompt_pass(lm, PROMPT, rows, staircase=False).logits
    full = _full(lm, PROMPT, rows)
    assert (stair - full).abs().max().item() <= TOL
    assert (flat - full).abs().max().item() <= TOL
    # not vacuous: the patched rows differ from the clean row
    assert (full[:-1] - full[-1]).abs().amax(-1).min().item() > 1e-4


@pytest.mark.parametrize("start", [0, 2, -3, -1])
def test_prompt_pass_from_any_start_equals_the_whole_prompt(tiny_model, start):
    lm = tiny_model
    n = len(lm.to_ids(PROMPT))
    pos = (start + n if start < 0 else start) + 1 if (start + n if start < 0 else start) + 1 < n else -1
    g = torch.Generator().manual_seed(3)
    rows = [[replace(Site(l, "resid_pre", pos), torch.randn(lm.d_model, generator=g))] for l in range(lm.n_layers)]
    rows.append([scale(Site(0, "mlp_out", None), 0.5)] if start == 0 else [])
    got = prompt_pass(lm, PROMPT, rows, start=start).logits
    assert (got - _full(lm, PROMPT, rows)).abs().max().item() <= TOL


def test_prompt_pass_refuses_patches_before_start(tiny_llama):
    with pytest.raises(ValueError, match="does not recompute"):
        prompt_pass(tiny_llama, PROMPT, [[zero_ablate(Site(1, "resid_pre", 1))]], start=3)


def test_generation_from_a_shared_prompt_equals_naive(tiny_model):
    lm = tiny_model
    rows = _patch_rows(lm, seed=1)
    for start in (-1, 2):
        pos = -1 if start == -1 else 4
        rows_s = _patch_rows(lm, position=pos, seed=1) if start != -1 else rows
        fast = generate(lm, PROMPT, rows_s, max_new_tokens=5, start=start, first_logits=True)
        naive = generate(lm, PROMPT, rows_s, max_new_tokens=5, first_logits=True, fast=False)
        assert fast.tokens == naive.tokens
        assert (fast.first_logits - naive.first_logits).abs().max().item() <= TOL


def test_shared_prefix_across_prompts_equals_each_prompt_alone(tiny_model):
    lm = tiny_model
    prompts = [FEW_SHOT + q for q in QUESTIONS]
    ids = [lm.to_ids(p) for p in prompts]
    assert min(len(x) for x in ids) > 8 and len({len(x) for x in ids}) > 1  # padded after the shared prefix
    shared = run(lm, prompts, last_only=True).logits
    alone = torch.cat([run(lm, [p], last_only=True, share_prefix=False).logits for p in prompts])
    assert (shared - alone).abs().max().item() <= TOL
    gen = generate(lm, prompts, max_new_tokens=4, first_logits=True)
    for i, p in enumerate(prompts):
        ref = generate(lm, [p], max_new_tokens=4, fast=False)
        assert gen.tokens[i] == ref.tokens[0], p
    # rows with interventions after the shared prefix keep them
    rows = [[zero_ablate(Site(1, "attn_out", -1))] for _ in prompts]
    got = run(lm, prompts, rows, last_only=True).logits
    ref = torch.cat([run(lm, [p], [r], last_only=True, share_prefix=False).logits for p, r in zip(prompts, rows)])
    assert (got - ref).abs().max().item() <= TOL
    assert (got - shared).abs().max().item() > 1e-4


def test_prompts_from_different_prefixes_run_together_as_each_alone(tiny_model, monkeypatch):
    import sys

    from hopscope.engine.kv import sliding_window

    gen_module = sys.modules["hopscope.engine.generate"]
    lm = tiny_model
    other = "Facts about towers and gates, one per line.\nQ: "
    prompts = [FEW_SHOT + q for q in QUESTIONS[:3]] + [other + q for q in QUESTIONS[1:]] + [PROMPT]
    calls = []
    real = gen_module.multi_prefix_pass
    monkeypatch.setattr(gen_module, "multi_prefix_pass",
                        lambda lm_, parts, **kw: calls.append(len(parts)) or real(lm_, parts, **kw))
    gen = generate(lm, prompts, max_new_tokens=4, first_logits=True)
    if sliding_window(lm) is None:  # several prefix groups in one pass (PROMPT shares no prefix: it runs alone)
        assert len(calls) == 1 and calls[0] >= 2
    else:
        assert calls == []
    alone = torch.cat([run(lm, [p], last_only=True, share_prefix=False).logits for p in prompts])
    assert (gen.first_logits - alone).abs().max().item() <= TOL
    for i, p in enumerate(prompts):
        assert gen.tokens[i] == generate(lm, [p], max_new_tokens=4, fast=False).tokens[0], p


def test_passes_of_one_decode_batch_write_one_buffer_and_equal_each_prompt_alone(tiny_model, monkeypatch):
    """Prompts whose own tokens differ much in length run as several passes (the padding bound) that decode as
    one batch: each pass writes into the batch's buffers, nothing merges them afterwards, and tokens and
    first-token logits equal each prompt run alone."""
    import sys

    from hopscope.engine.kv import sliding_window

    gen_module = sys.modules["hopscope.engine.generate"]
    lm = tiny_model
    long_tail = "Where is the tower that stands by the old river gate, the one every guide points at? " * 4 + "A:"
    prompts = [FEW_SHOT + q for q in QUESTIONS] + [FEW_SHOT + long_tail]
    passes, decoded, merges = [], [], []
    real_pass, real_decode, real_merge = gen_module.multi_prefix_pass, gen_module._decode, gen_module._merge
    monkeypatch.setattr(gen_module, "multi_prefix_pass", lambda lm_, parts, **kw: passes.append(
        sum(len(g) for g, _ in parts)) or real_pass(lm_, parts, **kw))
    monkeypatch.setattr(gen_module, "_decode", lambda *a, **kw: decoded.append(len(a[7])) or real_decode(*a, **kw))
    monkeypatch.setattr(gen_module, "_merge", lambda *a, **kw: merges.append(1) or real_merge(*a, **kw))
    gen = generate(lm, prompts, max_new_tokens=4, first_logits=True)
    if sliding_window(lm) is None:
        assert len(passes) >= 2 and sum(passes) == len(prompts)  # not vacuous: several passes
        assert decoded == [len(prompts)] and merges == []  # one decode batch, never merged
    alone = torch.cat([run(lm, [p], last_only=True, share_prefix=False).logits for p in prompts])
    assert (gen.first_logits - alone).abs().max().item() <= TOL
    for i, p in enumerate(prompts):
        assert gen.tokens[i] == generate(lm, [p], max_new_tokens=4, fast=False).tokens[0], p


def test_rows_of_one_prompt_decode_in_batches_that_fit_the_memory_budget(tiny_model, monkeypatch):
    """batch_size=None decodes as many rows of one shared prompt together as fit their KV cache and one step's
    logits in DECODE_BYTES (the count counts the bytes the real cache holds); an explicit batch_size chunks;
    the tokens are the same every way."""
    import sys

    from hopscope.engine import kv

    gen_module = sys.modules["hopscope.engine.generate"]
    lm, m = tiny_model, 4
    n = len(lm.to_ids(PROMPT))
    cache = prompt_pass(lm, PROMPT, [[]], keep_cache=True).past_key_values
    actual = kv.nbytes(cache) // n * (n + m) + 4 * lm.d_vocab  # one row's real cache and logits
    per_row = gen_module.bytes_per_row(lm, n, m)
    if kv.sliding_window(lm) is None:
        assert per_row == actual  # the budget counts exactly the cache's bytes
    else:
        assert per_row >= actual  # never fewer bytes than the cache holds
    assert gen_module.rows_per_batch(lm, n, m, budget=10 * per_row + 1) == 10
    assert gen_module.rows_per_batch(lm, n, m, budget=1) == 1
    rows = _patch_rows(lm)
    decoded = []
    real = gen_module._decode
    monkeypatch.setattr(gen_module, "_decode", lambda *a, **kw: decoded.append(len(a[7])) or real(*a, **kw))
    whole = generate(lm, PROMPT, rows, max_new_tokens=m)
    assert decoded == [len(rows)]  # the default budget holds them all
    decoded.clear()
    monkeypatch.setattr(gen_module, "DECODE_BYTES", 5 * per_row)
    by_budget = generate(lm, PROMPT, rows, max_new_tokens=m)
    assert decoded == [5] * (len(rows) // 5) + ([len(rows) % 5] if len(rows) % 5 else [])
    decoded.clear()
    by_size = generate(lm, PROMPT, rows, max_new_tokens=m, batch_size=3)
    assert decoded == [3] * (len(rows) // 3) + ([len(rows) % 3] if len(rows) % 3 else [])
    assert whole.tokens == by_budget.tokens == by_size.tokens


def test_early_stopped_generation_is_a_prefix_of_the_unstopped(tiny_model):
    lm = tiny_model
    rows = _patch_rows(lm, seed=2)
    full = generate(lm, PROMPT, rows, max_new_tokens=6)
    stop_after = {i: 1 + i % 5 for i in range(len(rows))}  # row i stops once it has 1 + i % 5 tokens
    stopped = generate(lm, PROMPT, rows, max_new_tokens=6, stop=lambda row, toks: len(toks) >= stop_after[row])
    for i, (a, b) in enumerate(zip(stopped.tokens, full.tokens)):
        assert a == b[:len(a)] and len(a) == stop_after[i], i
    per_row = generate(lm, [PROMPT, FEW_SHOT + QUESTIONS[0]], max_new_tokens=6, stop=lambda row, toks: row == 0)
    ref = generate(lm, [PROMPT, FEW_SHOT + QUESTIONS[0]], max_new_tokens=6)
    assert per_row.tokens[0] == ref.tokens[0][:1] and per_row.tokens[1] == ref.tokens[1]


def test_weight_change_never_uses_a_stale_prefix_cache():
    from hopscope.models import tiny

    lm = tiny("llama", seed=5)
    rows = [[replace(Site(1, "resid_post", -1), torch.ones(lm.d_model))]]
    before = prompt_pass(lm, PROMPT, rows).logits
    # an optimizer step (what hopscope's training code does) changes the weights in place
    opt = torch.optim.SGD(lm.model.parameters(), lr=0.05)
    out = lm.model(input_ids=torch.tensor([lm.to_ids(PROMPT)]))
    torch.log_softmax(out.logits[0, :, :100], -1)[:, 0].mean().backward()
    opt.step()
    lm.model.zero_grad()
    after = prompt_pass(lm, PROMPT, rows).logits
    ref = _full(lm, PROMPT, rows)
    assert (after - ref).abs().max().item() <= TOL
    assert (after - before).abs().max().item() > 1e-3
    # an explicit declaration drops the model's entries at once
    weights_changed(lm)
    assert all(k[0] != lm.model._hopscope_uid for k in STORE._entries)


def test_prefix_store_is_keyed_by_model_not_by_id():
    from hopscope.models import tiny

    a = tiny("llama", seed=1)
    la = prompt_pass(a, PROMPT, [[]]).logits
    del a
    b = tiny("llama", seed=2)  # may reuse a's id(); must not reuse its cache
    lb = prompt_pass(b, PROMPT, [[]]).logits
    assert (lb - _full(b, PROMPT, [[]])).abs().max().item() <= TOL
    assert (la - lb).abs().max().item() > 1e-3


def test_prefix_extended_from_a_stored_one_equals_the_whole_prefix(tiny_model):
    from hopscope.engine.kv import sliding_window
    from hopscope.engine.prefix import PrefixStore

    lm = tiny_model
    a, b = lm.to_ids(FEW_SHOT + QUESTIONS[0]), lm.to_ids(FEW_SHOT + QUESTIONS[1])
    shared = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
    assert shared >= 8 and len(b) > shared + 2
    store, whole = PrefixStore(), PrefixStore()
    whole.reuse = False
    store.get(lm, a)
    got, ref = store.get(lm, b), whole.get(lm, b)
    assert store.extended == (1 if sliding_window(lm) is None else 0) and whole.extended == 0
    for lg, lr in zip(got.layers, ref.layers):
        assert lg.keys.shape == lr.keys.shape
        assert (lg.keys - lr.keys).abs().max().item() <= TOL and (lg.values - lr.values).abs().max().item() <= TOL
    # the stored cache it extended from is unchanged
    again = PrefixStore()
    again.reuse = False
    for la, lr in zip(store.get(lm, a).layers, again.get(lm, a).layers):
        assert la.keys.shape == lr.keys.shape and (la.keys - lr.keys).abs().max().item() <= TOL


def test_prefixes_computed_together_equal_each_computed_whole(tiny_model):
    from hopscope.engine.prefix import PrefixStore

    lm = tiny_model
    prefixes = [lm.to_ids(FEW_SHOT + q)[:-1] for q in QUESTIONS] + [lm.to_ids(PROMPT), lm.to_ids("Q: Where")]
    store, whole = PrefixStore(), PrefixStore()
    whole.reuse = False
    got = store.get_many(lm, prefixes)
    for ids, cache in zip(prefixes, got):
        ref = whole.get(lm, ids)
        for lg, lr in zip(cache.layers, ref.layers):
            assert lg.keys.shape == lr.keys.shape, ids
            assert (lg.keys - lr.keys).abs().max().item() <= TOL and (lg.values - lr.values).abs().max().item() <= TOL
    assert store.misses > len(prefixes) or store.extended == 0  # a shared stem ran first where caches can be cut


def test_prefix_store_is_bounded():
    from hopscope.engine.prefix import PrefixStore
    from hopscope.models import tiny

    lm = tiny("llama")
    store = PrefixStore(max_bytes=1)
    for text in ("a b c d", "e f g h", "i j k l"):
        store.get(lm, lm.to_ids(text))
    assert len(store) == 1


def test_transform_sees_and_replaces_exactly_its_slice(tiny_llama):
    lm = tiny_llama
    seen = {}

    def double(value, row):
        seen[row] = value.clone()
        return value * 2

    site = Site(1, "attn_out", -1)
    got = run(lm, [PROMPT, PROMPT], [[transform(site, double), cache(site)], []], last_only=True).logits
    ref = run(lm, [PROMPT], [[scale(site, 2.0)]], last_only=True).logits
    assert (got[0] - ref[0]).abs().max().item() <= TOL
    assert set(seen) == {0} and seen[0].shape == (1, lm.d_model)
    with pytest.raises(ValueError, match="must return a tensor of shape"):
        run(lm, [PROMPT], [[transform(site, lambda v, r: v[:, :3])]])


def test_mlp_hidden_is_the_input_of_the_down_projection(tiny_model):
    lm = tiny_model
    _, acts = run_with_cache(lm, PROMPT, components=("mlp_hidden", "mlp_out"), layers=[1])
    hidden, out = acts["mlp_hidden", 1][0], acts["mlp_out", 1][0]
    down = lm.adapter.mlp_down[1]
    w = down.weight.T if type(down).__name__ == "Conv1D" else down.weight  # [d_model, d_mlp]
    bias = down.bias if down.bias is not None else 0
    if lm.adapter.mlp[1] is down or type(lm.adapter.mlp[1]).__name__ != "Identity":
        assert (hidden @ w.T + bias - out).abs().max().item() <= 1e-4
    # zeroing every neuron leaves only the bias of the down projection
    z = run_with_cache(lm, PROMPT, components=("mlp_out",), layers=[1],
                       interventions=[[zero_ablate(Site(1, "mlp_hidden", None))]])[1]["mlp_out", 1][0]
    expect = torch.zeros_like(z) + (down.bias if down.bias is not None else 0)
    assert (z - expect).abs().max().item() <= 1e-5


def test_hook_names_work_everywhere_a_site_does(tiny_llama):
    lm = tiny_llama
    _, acts = run_with_cache(lm, PROMPT, components=("resid_post", "attn_pattern"))
    assert torch.equal(acts["blocks.2.hook_resid_post"], acts["resid_post", 2])
    assert torch.equal(acts["blocks.1.attn.hook_pattern"], acts["attn_pattern", 1])
    v = acts["resid_post", 1][0, -1]
    a = run(lm, [PROMPT], [[replace("blocks.1.hook_resid_post", v * 0)]], last_only=True).logits
    b = run(lm, [PROMPT], [[replace(Site(1, "resid_post", -1), v * 0)]], last_only=True).logits
    assert torch.equal(a, b)
    _, tl = run_with_cache(lm, PROMPT, components=("blocks.0.hook_mlp_out", "ln_final.hook_normalized"))
    assert ("mlp_out", 0) in tl and ("final_norm", lm.n_layers - 1) in tl
    with pytest.raises(ValueError, match="did you mean blocks.1.hook_resid_post"):
        run_with_cache(lm, PROMPT, components=("blocks.1.hook_resid_pst",))


def test_no_deprecation_warning_from_hopscopes_own_calls(tiny_llama, caplog):
    import logging

    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        generate(tiny_llama, [PROMPT, FEW_SHOT + QUESTIONS[1]], max_new_tokens=3)
        generate(tiny_llama, PROMPT, [[], []], max_new_tokens=3, start=2)
    text = " ".join([str(w.message) for w in caught] + [r.getMessage() for r in caplog.records])
    assert "deprecated" not in text.lower(), text


def test_edits_act_at_every_position_of_prompt_and_generation(tiny_model):
    """A model edit in ``generate`` equals greedy decoding by rerunning the whole sequence with the edit everywhere."""
    from hopscope.engine.layout import Layout
    from hopscope.engine.runner import forward

    lm = tiny_model
    edit = [scale(Site(lm.n_layers - 1, "attn_out", None), 0.0)]
    prompts = [PROMPT, FEW_SHOT + QUESTIONS[0]]
    got = generate(lm, prompts, max_new_tokens=4, edits=[edit, []])
    ids = lm.to_ids(PROMPT)
    n = len(ids)
    for _ in range(4):
        b = lm.encode_ids([ids])
        logits, _, _ = forward(lm, b.input_ids, b.attention_mask, b.position_ids, [edit],
                               Layout.left_padded(b.lengths, b.input_ids.shape[1]), last_only=True)
        ids = ids + [int(logits[0, -1].argmax())]
    assert got.tokens[0] == ids[n:]
    plain = generate(lm, prompts, max_new_tokens=4)
    assert plain.tokens[1] == got.tokens[1]  # the row without edits is the plain generation
    # not vacuous: the edit changes what the model says at some step (checked on the logits of step 1)
    first = run(lm, [PROMPT], [edit], last_only=True, share_prefix=False).logits
    assert (first - run(lm, [PROMPT], last_only=True, share_prefix=False).logits).abs().max().item() > 1e-4
    # one shared prompt, rows with and without edits in one call: each row equals its own call, and ``stop``
    # sees each row by its number in the whole call
    seen: set[int] = set()

    def stop(row, toks):
        seen.add(row)
        return row == 2 and len(toks) >= 2
    mixed = generate(lm, PROMPT, [[], [], []], edits=[[], edit, []], max_new_tokens=4, stop=stop, first_logits=True)
    alone = generate(lm, PROMPT, [[]], max_new_tokens=4, first_logits=True)
    assert mixed.tokens[0] == alone.tokens[0] and mixed.tokens[1] == got.tokens[0]
    assert mixed.tokens[2] == alone.tokens[0][:2] and seen == {0, 1, 2}
    assert (mixed.first_logits[0] - alone.first_logits[0]).abs().max().item() <= 1e-5
    assert (mixed.first_logits[1] - first.reshape(-1, first.shape[-1])[-1]).abs().max().item() <= 1e-5
    with pytest.raises(ValueError, match="not an edit"):
        generate(lm, PROMPT, [[]], edits=[[knockout(0, keys=[0])]])
