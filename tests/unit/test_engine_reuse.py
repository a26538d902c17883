"""The engine's work-saving steps change no result.

- A decode cache with reserved room (each step writes its column in place) reads exactly like one that
  grows by concatenation, through row selection (early stops) and after its room is spent; it never
  writes into the cache it was made from (a stored prefix); so does a cache merged from several prompts'
  caches with room reserved, and one that several prompt passes wrote into one decode batch's buffers.
- Greedy generation equals the HF twin's own greedy generation, token for token.
- The prefix store runs nested shared stems shortest first, so each shared token is computed once.
- Rows without interventions run from the longest prefix any other row shares with them, and equal each
  prompt run alone.
- A packed prompt pass (the prompt and one last-position column per row, in one forward) equals the full
  pass and the two-forward path, gives the same bits whatever the prefix store holds, and runs only where
  its rule allows.
"""

from __future__ import annotations

import copy
import sys

import pytest
import torch
from transformers.cache_utils import DynamicCache

from hopscope.engine import Site, add, cache, generate, knockout, kv, prompt_pass, replace, run, scale
from hopscope.engine.passes import packs
from hopscope.engine.prefix import MIN_REUSE, SMALL_PASS, STORE, PrefixStore, _stem_rounds

TOL = 1e-4
FEW_SHOT = "Q: Where is the Colosseum? A: Rome.\nQ: Where is Big Ben? A: London.\nQ: "
NESTED = [FEW_SHOT + q for q in (
    "Where is the Eiffel Tower? A:", "Where is the Eiffel Tower located? A:", "Where is the Brandenburg Gate? A:",
    "Where is the Brandenburg Gate? A:",  # a duplicate row
    "Which city has the Eiffel Tower? A:", "Which city has the Brandenburg Gate? A:")] + ["A short prompt"]


def _random_cache(rows: int, n: int, seed: int) -> DynamicCache:
    g = torch.Generator().manual_seed(seed)
    cache = DynamicCache()
    for layer in range(3):
        cache.update(torch.randn(rows, 2, n, 4, generator=g), torch.randn(rows, 2, n, 4, generator=g), layer)
    return cache


def _same(a, b) -> bool:
    return all(torch.equal(x.keys, y.keys) and torch.equal(x.values, y.values) for x, y in zip(a.layers, b.layers))


def test_reserved_cache_reads_like_a_concatenating_one():
    source = _random_cache(rows=4, n=5, seed=0)
    kept = copy.deepcopy(source)
    plain, reserved = copy.deepcopy(source), kv.reserve(source, 3)
    assert all(isinstance(l, kv.ReservedLayer) for l in reserved.layers)
    g = torch.Generator().manual_seed(1)
    ptrs = [l.keys.data_ptr() for l in reserved.layers]
    for step in range(6):  # 3 steps in place, then concatenation once the room is spent
        if step == 2:  # two rows stop: both caches keep rows 3 and 1
            keep = torch.tensor([3, 1])
            kv.select(plain, keep), kv.select(reserved, keep)
            ptrs = [l.keys.data_ptr() for l in reserved.layers]
        b = plain.layers[0].keys.shape[0]
        for layer in range(3):
            k, v = torch.randn(b, 2, 1, 4, generator=g), torch.randn(b, 2, 1, 4, generator=g)
            plain.update(k, v, layer)
            reserved.update(k.clone(), v.clone(), layer)
        assert _same(plain, reserved), step
        in_place = [l.keys.data_ptr() for l in reserved.layers] == ptrs
        assert in_place == (step < 3), step  # not vacuous: the room is used, then left
    assert reserved.layers[0].keys.shape[-2] == 5 + 6
    assert _same(source, kept)  # the cache it was made from is untouched


def test_rows_leaving_a_reserved_cache_move_only_the_rows_beyond_the_kept_count():
    """kv.compacting_order keeps each kept row among the first len(keep) in its place and fills the others'
    places from beyond; select applies such an order in place (same buffers), any other into new buffers, and
    both read exactly like selecting those rows of a concatenating cache."""
    assert kv.compacting_order([0, 2, 3, 5], 6) == [0, 5, 2, 3]
    assert kv.compacting_order([1, 2], 3) == [2, 1]
    assert kv.compacting_order([0, 1, 2], 3) == [0, 1, 2] and kv.compacting_order([], 2) == []
    with pytest.raises(ValueError, match="distinct rows of 3"):
        kv.compacting_order([0, 3], 3)
    for order, in_place in (([0, 5, 2, 3], True), ([3, 0, 2], False)):
        plain = _random_cache(rows=6, n=4, seed=7)
        reserved = kv.reserve(copy.deepcopy(plain), 2)
        ptrs = [l.keys.data_ptr() for l in reserved.layers]
        idx = torch.tensor(order)
        kv.select(plain, idx), kv.select(reserved, idx)
        assert _same(plain, reserved), order
        assert ([l.keys.data_ptr() for l in reserved.layers] == ptrs) == in_place, order
        k, v = torch.randn(len(order), 2, 1, 4), torch.randn(len(order), 2, 1, 4)
        for layer in range(3):  # the room is still there and still read like concatenation
            plain.update(k, v, layer)
            reserved.update(k.clone(), v.clone(), layer)
        assert _same(plain, reserved) and reserved.layers[0].room() == 1, order


def test_reserved_layer_replaced_from_outside_grows_by_concatenation():
    reserved = kv.reserve(_random_cache(rows=2, n=3, seed=2), 4)
    plain = copy.deepcopy(_random_cache(rows=2, n=3, seed=2))
    for cache in (reserved, plain):  # a caller swaps a layer's tensors (as the staircase does)
        cache.layers[1].keys = cache.layers[1].keys.flip(0).contiguous()
        cache.layers[1].values = cache.layers[1].values.flip(0).contiguous()
    k, v = torch.ones(2, 2, 1, 4), torch.zeros(2, 2, 1, 4)
    for layer in range(3):
        plain.update(k, v, layer)
        reserved.update(k, v, layer)
    assert _same(plain, reserved)


def test_merged_caches_with_room_read_like_padded_concatenation():
    """kv.concat writes several prompt caches into one buffer (a batch-1 prefix repeated for its rows, each
    left-padded with zeros) with room that the next updates fill in place; it reads like the padded cat."""
    a, b = _random_cache(rows=1, n=3, seed=3), _random_cache(rows=2, n=5, seed=4)
    kept = copy.deepcopy(a), copy.deepcopy(b)
    merged = kv.concat([a, b], [3, 5], 6, rows=[2, 2], room=2)
    plain = DynamicCache()
    for layer in range(3):
        parts = []
        for name in ("keys", "values"):
            ta, tb = getattr(a.layers[layer], name).expand(2, -1, -1, -1), getattr(b.layers[layer], name)
            parts.append(torch.cat([torch.cat([torch.zeros(2, 2, 3, 4), ta], -2),
                                    torch.cat([torch.zeros(2, 2, 1, 4), tb], -2)]))
        plain.update(*parts, layer)
    assert _same(plain, merged) and all(isinstance(l, kv.ReservedLayer) for l in merged.layers)
    ptrs = [l.keys.data_ptr() for l in merged.layers]
    g = torch.Generator().manual_seed(5)
    for step in range(3):  # two columns in place, then concatenation
        for layer in range(3):
            k, v = torch.randn(4, 2, 1, 4, generator=g), torch.randn(4, 2, 1, 4, generator=g)
            plain.update(k, v, layer)
            merged.update(k.clone(), v.clone(), layer)
        assert _same(plain, merged), step
        assert ([l.keys.data_ptr() for l in merged.layers] == ptrs) == (step < 2), step
    assert _same(a, kept[0]) and _same(b, kept[1])  # the caches it was made from are untouched
    assert kv.reserve(kv.concat([a, b], [3, 5], 6, rows=[2, 2], room=4), 3).layers[0].room() == 4  # kept


def test_passes_written_into_batch_buffers_read_like_their_merge():
    """Two prompt passes of one decode batch write into its buffers (kv.BatchBuffers, `concat(into=...)`): the
    batch's cache reads exactly like merging the two passes' caches afterwards (a second copy), its
    padding is zeros, and its room takes the decode steps in place."""
    g = torch.Generator().manual_seed(6)
    room, plan = 2, [(1, 3, 2, 2), (1, 4, 2, 4)]  # per pass: prefix rows, prefix columns, rows, own new columns
    widths = [p + s for _, p, _, s in plan]
    class Dirty(kv.BatchBuffers):  # new buffers hold NaN, so padding that is not written shows
        def slot(self, layer, name, like):
            fresh = not hasattr(self, "seen") or (layer, name) not in self.seen
            buf = super().slot(layer, name, like)
            if fresh:
                self.seen = getattr(self, "seen", set()) | {(layer, name)}
                buf.fill_(float("nan"))
            return buf

    buffers = Dirty(rows=4, columns=max(widths) + room)
    passes, r0 = [], 0
    for k, (b, p, n, s) in enumerate(plan):
        prefix = _random_cache(rows=b, n=p, seed=10 + k)
        c = kv.concat([prefix], [p], p, rows=[n], room=s + room, into=(buffers, r0))
        for layer in range(3):
            c.update(torch.randn(n, 2, s, 4, generator=g), torch.randn(n, 2, s, 4, generator=g), layer)
        passes.append(c)
        r0 += n
    batch = buffers.cache(passes[-1], max(widths))
    merged = kv.concat(passes, widths, max(widths), room=room)
    assert _same(batch, merged)
    assert batch.layers[0].keys[:2, :, :max(widths) - widths[0]].abs().sum() == 0  # the first pass's left padding
    ptrs = [l.keys.data_ptr() for l in batch.layers]
    for step in range(2):
        for layer in range(3):
            k, v = torch.randn(4, 2, 1, 4, generator=g), torch.randn(4, 2, 1, 4, generator=g)
            merged.update(k, v, layer)
            batch.update(k.clone(), v.clone(), layer)
        assert _same(batch, merged), step
    assert [l.keys.data_ptr() for l in batch.layers] == ptrs  # in place: the room was the batch buffers' own
    with pytest.raises(ValueError, match="do not fit"):
        kv.concat([_random_cache(rows=1, n=3, seed=0)], [3], 3, rows=[3], room=1, into=(kv.BatchBuffers(2, 4), 0))


def test_generation_with_reserved_room_equals_concatenation(tiny_model, monkeypatch):
    lm = tiny_model
    prompts = NESTED
    stop = lambda row, toks: len(toks) >= 2 + row % 4  # rows leave the batch at different steps
    got = generate(lm, prompts, max_new_tokens=6, stop=stop)
    monkeypatch.setattr(kv, "reserve", lambda cache, extra: cache)
    ref = generate(lm, prompts, max_new_tokens=6, stop=stop)
    assert got.tokens == ref.tokens
    assert [len(t) for t in got.tokens] == [2 + i % 4 for i in range(len(prompts))]


def test_generation_equals_the_hf_twins_greedy_generation(tiny_model, tiny_hf):
    lm = tiny_model
    for prompt in (NESTED[0], NESTED[-1]):
        ids = torch.tensor([lm.to_ids(prompt)])
        ref = tiny_hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                               min_new_tokens=6, pad_token_id=0)[0, ids.shape[1]:].tolist()
        assert generate(lm, [prompt], max_new_tokens=6).tokens[0] == ref, prompt


def test_nested_stems_run_shortest_first():
    a = tuple(range(10))
    prefixes = [a + (20, 21, 22, 30), a + (20, 21, 22, 31), a + (20, 40), a + (50,), (7,) * 6]
    rounds = _stem_rounds(prefixes, lambda x: False)
    assert rounds == [[a], [a + (20,)], [a + (20, 21, 22)], prefixes]
    # a stem already stored is not run again, and its extensions still come after it
    assert _stem_rounds(prefixes, lambda x: x == a) == [[a + (20,)], [a + (20, 21, 22)], prefixes]
    # stems shorter than MIN_REUSE are not worth a round
    short = [(1,) * (MIN_REUSE - 1) + (2,), (1,) * (MIN_REUSE - 1) + (3,)]
    assert _stem_rounds(short, lambda x: False) == [short]


def test_warm_computes_each_shared_token_once(tiny_llama, monkeypatch):
    prefix_module = sys.modules["hopscope.engine.prefix"]
    lm = tiny_llama
    prefixes = [lm.to_ids(p)[:-1] for p in NESTED[:-1]]
    assert len({tuple(p) for p in prefixes}) == 5
    computed = []
    real = prefix_module._extend
    monkeypatch.setattr(prefix_module, "_extend",
                        lambda lm_, items: computed.extend(len(x) - c for _, c, x in items) or real(lm_, items))
    store = PrefixStore()
    caches = store.get_many(lm, prefixes)
    trie = {tuple(p[:k]) for p in prefixes for k in range(1, len(p) + 1)}
    assert sum(computed) == len(trie)  # every distinct token position once; the shared few-shot part once
    whole = PrefixStore()
    whole.reuse = False
    for ids, cache in zip(prefixes, caches):
        for lg, lr in zip(cache.layers, whole.get(lm, ids).layers):
            assert (lg.keys - lr.keys).abs().max().item() <= TOL and (lg.values - lr.values).abs().max().item() <= TOL


def test_rows_run_from_the_longest_prefix_another_row_shares(tiny_model):
    gen_module = sys.modules["hopscope.engine.generate"]
    lm = tiny_model
    ids = [lm.to_ids(p) for p in NESTED]
    groups, alone = gen_module._shared_stems(list(range(len(ids))), ids, 256)
    assert alone == [len(ids) - 1]
    starts = {i: p for rows, p in groups for i in rows}
    for i in starts:
        best = max(gen_module.common_prefix(ids[i], ids[j]) for j in range(len(ids)) if j != i)
        assert starts[i] == min(best, len(ids[i]) - 1), NESTED[i]
    assert len({p for p in starts.values()}) >= 3  # nested: rows start at several depths
    got = generate(lm, NESTED, max_new_tokens=4, first_logits=True)
    alone_logits = torch.cat([run(lm, [p], last_only=True, share_prefix=False).logits for p in NESTED])
    assert (got.first_logits - alone_logits).abs().max().item() <= TOL
    for i, p in enumerate(NESTED):
        assert got.tokens[i] == generate(lm, [p], max_new_tokens=4, fast=False).tokens[0], p


def test_passes_pack_rows_by_their_own_length_and_lose_none():
    gen_module = sys.modules["hopscope.engine.generate"]
    prefix_module = sys.modules["hopscope.engine.prefix"]
    g = torch.Generator().manual_seed(0)
    ids, groups = [], []
    for k in range(12):  # 12 prefix groups; each row's own tokens after its group's prefix vary from 1 to 40
        p = 10 + k
        rows = []
        for _ in range(int(torch.randint(1, 30, (1,), generator=g))):
            rows.append(len(ids))
            ids.append([k] * p + [1] * int(torch.randint(1, 41, (1,), generator=g)))
        groups.append((rows, p))
    p_of = {i: p for rows, p in groups for i in rows}
    waves = gen_module._waves(groups, ids, 64)
    seen = [i for wave in waves for rows, _ in wave for i in rows]
    assert sorted(seen) == list(range(len(ids)))  # every row once
    for wave in waves:
        assert all(p == p_of[i] for rows, p in wave for i in rows)  # each part keeps its own group's prefix
        own = [len(ids[i]) - p for rows, p in wave for i in rows]
        assert len(own) <= 64
        padded = len(own) * max(own)
        assert padded <= prefix_module.SMALL_PASS or padded <= (1 + prefix_module.PASS_WASTE) * sum(own)
    # rows packed by their own length pad less than whole groups packed by their longest row
    padded_rows = sum(len(w) * max(w) for w in ([len(ids[i]) - p for rows, p in wave for i in rows] for wave in waves))
    group_width = sum(len(rows) * max(len(ids[i]) - p for i in rows) for rows, p in groups)
    assert padded_rows < group_width
    # the prefix store's passes follow the same rule
    assert prefix_module._fits([5] * 100, 4096) and not prefix_module._fits([5] * 99 + [40], 4096)
    small = prefix_module.SMALL_PASS
    assert prefix_module._fits([1, small // 2], 4096)  # small passes are never split for padding
    assert not prefix_module._fits([1] * 3 + [small], 4096)  # a larger one is, beyond the bound
    assert not prefix_module._fits([40] * 103, 4096)  # nor made larger than max_tokens


PATCHED = "The Eiffel Tower is located in the city of"


def _last_position_rows(lm, seed=0):
    """Rows acting at the last position only: a patch at each layer, an add, a head edit, a read, a clean row."""
    g = torch.Generator().manual_seed(seed)
    rows = [[replace(Site(l, "resid_post", -1), torch.randn(lm.d_model, generator=g))] for l in range(lm.n_layers)]
    rows += [[add(Site(l, "attn_out", -1), torch.randn(lm.d_model, generator=g))] for l in range(lm.n_layers)]
    rows += [[scale(Site(0, "head_out", -1, head=1), 0.0)], [cache(Site(1, "resid_post", -1))], []]
    return rows


def _count_model_calls(monkeypatch) -> list[int]:
    calls = [0]
    for name in ("hopscope.engine.runner", "hopscope.engine.prefix"):
        module = sys.modules[name]
        real = module.call_model

        def counted(*args, _real=real, **kwargs):
            calls[0] += 1
            return _real(*args, **kwargs)
        monkeypatch.setattr(module, "call_model", counted)
    return calls


def test_packed_pass_equals_the_full_pass_in_one_forward(tiny_model, monkeypatch):
    lm = tiny_model
    rows = _last_position_rows(lm)
    ids = lm.to_ids(PATCHED)
    full = run(lm, [PATCHED] * len(rows), rows, last_only=True, share_prefix=False)
    read = Site(1, "resid_post", -1)
    STORE.clear()
    two = prompt_pass(lm, PATCHED, rows, pack=False)  # prefix pass, then the staircase
    STORE.clear()
    calls = _count_model_calls(monkeypatch)
    packed = packs(lm, ids, len(ids) - 1, rows)
    got = prompt_pass(lm, PATCHED, rows)
    assert packed == (kv.sliding_window(lm) is None)  # every family without sliding windows packs
    assert calls[0] == (1 if packed else 2)
    for res in (got, two):
        assert (res.logits - full.logits).abs().max().item() <= TOL
        assert (res.cache[-2][read] - full.cache[-2][read]).abs().max().item() <= TOL
    assert (full.logits[:-2] - full.logits[-1]).abs().amax(-1).min().item() > 1e-4  # the edited rows do differ
    # what the prefix store holds never changes the path, so never a bit of the result
    STORE.get(lm, ids[:-1])
    calls[0] = 0
    again = prompt_pass(lm, PATCHED, rows)
    assert calls[0] == 1 and torch.equal(again.logits, got.logits)  # packed, or the staircase from the store
    if packed:
        assert len(STORE) == 1  # the packed pass neither stores nor reads a prefix


def test_packed_columns_join_the_sequence_at_their_first_block(tiny_llama):
    """Block ``l`` of a packed pass sees the prompt and the columns of the rows whose first intervention is at
    a block ``<= l``; the final norm sees every row; and the result equals the full pass."""
    lm = tiny_llama
    layers = lm.n_layers
    g = torch.Generator().manual_seed(3)
    firsts = [layers - 1, 0, None, 1, 0, layers - 1]  # None: a clean row
    rows = [[] if l is None else [add(Site(l, "resid_post" if k % 2 else "attn_out", -1),
                                      torch.randn(lm.d_model, generator=g))] for k, l in enumerate(firsts)]
    n = len(lm.to_ids(PATCHED))
    seen: dict[int, int] = {}
    modules = list(lm.adapter.blocks) + [lm.adapter.final_norm]

    def width(k):
        def hook(module, args, out):
            seen[k] = (out[0] if isinstance(out, tuple) else out).shape[1]
        return hook
    handles = [m.register_forward_hook(width(k)) for k, m in enumerate(modules)]
    try:
        got = prompt_pass(lm, PATCHED, rows)
    finally:
        for h in handles:
            h.remove()
    # a block's output has the columns of its input, which the engine's pre-hook set
    want = {l: n + sum(f is not None and f <= l for f in firsts) for l in range(layers)}
    want[layers] = n + len(rows)
    assert seen == want
    full = run(lm, [PATCHED] * len(rows), rows, last_only=True, share_prefix=False)
    assert (got.logits - full.logits).abs().max().item() <= TOL
    assert (full.logits[0] - full.logits[2]).abs().max().item() > 1e-4  # a row edited at the last block differs


def test_packing_runs_only_where_its_rule_allows(tiny_llama):
    lm = tiny_llama
    layers = lm.n_layers
    ids = lm.to_ids(PATCHED)
    s = len(ids) - 1
    rows = _last_position_rows(lm)
    assert packs(lm, ids, s, rows)
    assert not packs(lm, ids, s, rows, keep_cache=True)  # decoding on needs each row's own cache
    assert not packs(lm, ids, s - 1, rows)  # interventions before the last position
    assert not packs(lm, ids, s, rows + [[knockout(layers - 1, keys=(-3, -1), query=-1)]])  # patterns
    # rows joining late pack too: their columns join the sequence at their own block
    late = [[replace(Site(layers - 1, "resid_post", -1), torch.zeros(lm.d_model))]]
    early = [[replace(Site(0, "resid_post", -1), torch.zeros(lm.d_model))]]
    assert packs(lm, ids, s, late * 4) and packs(lm, ids, s, early * 200)
    # a prompt whose own extra columns exceed SMALL_PASS / 2 per block
    long_ids = ids * (SMALL_PASS // len(ids) + 1)
    assert len(long_ids) - 1 > SMALL_PASS // 2 and not packs(lm, long_ids, len(long_ids) - 1, early)
