"""Engine benchmarks: each workload timed the naive way, hopscope's way and (where installed) the peer
libraries' best way, in one run on one model, printed as ratios with the max abs difference to the naive
result, and the achieved share of the machine's matmul throughput measured at the model's shapes.

Workloads (issue 11's targets in brackets):
  cache      cache every layer's resid_post vs one plain forward                      [<= 1.1x]
  patch      last-token patch of resid_post at each layer vs one naive forward per layer [>= 20x; beat nnsight]
             (prompt_pass packs this short prompt into one forward; pack=False: prefix pass + staircase,
             and the staircase alone from a cached prefix). The ways are timed in turns, once each per round.
  backpatch  one two-hop query, every (s, t) pair x 4 conditions, 10 new tokens vs the per-pair loop
             [>= 30x without early stopping, >= 60x with it]
  knowledge  the knowledge filter over 200 three-shot queries (5 prompts each) vs the old filter: each
             distinct prompt running its own few-shot prefix, left-padded batches of 32  [>= 4x]
  (the decode loops of backpatch and knowledge should reach >= 30% of the matmul throughput)
Within a workload the ways are timed in turns (one warm-up round, then one call of each per round), so a
drift of the machine's speed reaches all of them alike. Each ratio is that of the medians over the rounds
(cache and patch: --repeats rounds; backpatch and knowledge: max(2, repeats // 2)), followed by the range of
the paired per-round ratios and their number of rounds.

    python bench/bench_engine.py                      # everything, default model
    python bench/bench_engine.py --only patch,cache   # some workloads
    python bench/bench_engine.py --quick              # small sizes, to check the script runs

The engine runs float32 linear layers on oneDNN's packed weights (``hopscope.engine.linear``); the patch workload
also times its naive loop and packed pass on torch's own linear, and the matmul peak is the better of both
kernels. Peers: ``pip install "hopscope[bench]"`` (nnsight, transformer-lens). Run alone on the machine: with two cores a
parallel job halves every number; the load average is printed.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from typing import Callable

import torch

import hopscope
from hopscope.engine import MatchRule, Site, clear_prefix_cache, generate, linear, prompt_pass, replace, run, run_with_cache
from hopscope.engine.compat import cache_kwarg

TWO_HOP = "The currency of the country whose capital is Nairobi is the"
ALIASES = ["Kenyan shilling", "shilling"]
CONDITIONS = ("back", "forward", "random", "unrelated")


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    """Median wall time over ``repeats`` calls after one warm-up (``repeats=0``: one call, no warm-up)."""
    if repeats == 0:
        t = time.perf_counter()
        out = fn()
        return time.perf_counter() - t, out
    out = fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def timed_together(fns: dict[str, Callable[[], object]], repeats: int,
                   rounds: dict[str, list[float]] | None = None) -> dict[str, tuple[float, object]]:
    """Median wall time of each function, timed in turns (one call of each per round, after one warm-up
    round), so that a drift of the machine's speed during the run reaches every one of them alike.
    ``rounds``: filled with each function's time in every round (for paired per-round ratios)."""
    outs = {name: fn() for name, fn in fns.items()}
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(max(1, repeats)):
        for name, fn in fns.items():
            t = time.perf_counter()
            outs[name] = fn()
            times[name].append(time.perf_counter() - t)
    if rounds is not None:
        rounds.update(times)
    return {name: (statistics.median(times[name]), outs[name]) for name in fns}


def round_ratios(rounds: dict[str, list[float]], base: str, scale: float = 1.0) -> dict[str, list[float]]:
    """Per round, the baseline's time (times ``scale``) over each other function's time in the same round."""
    return {name: [scale * b / t for b, t in zip(rounds[base], ts)] for name, ts in rounds.items() if name != base}


def matmul_gflops(lm, rows: int = 256, kernel: str = "best") -> float:
    """Measured float32 matmul throughput (GFLOP/s) at the model's MLP and unembedding shapes: torch's own
    matmul (``kernel="torch"``: MKL on x86), the engine's linear route (``"onednn"``: packed weights, see
    ``hopscope.engine.linear``), or the better of the two (``"best"``, the peak the shares use)."""
    if kernel == "best":
        kernels = ["torch"] + (["onednn"] if linear.route() == "onednn" else [])
        return max(matmul_gflops(lm, rows, k) for k in kernels)
    d, v = lm.d_model, lm.d_vocab
    d_mlp = lm.adapter.mlp_down[0].weight.shape[1 if type(lm.adapter.mlp_down[0]).__name__ != "Conv1D" else 0]
    shapes = [(rows, d, d_mlp), (rows, d_mlp, d), (rows, d, v)]
    flops = times = 0.0
    for m, k, n in shapes:
        a, w = torch.randn(m, k), torch.randn(n, k)
        if kernel == "onednn":
            packed = torch.ops.mkldnn._reorder_linear_weight(w, None)
            t, _ = timed(lambda: torch.ops.mkldnn._linear_pointwise(a, packed, None, "none", [], ""), 5)
        else:
            t, _ = timed(lambda: torch.nn.functional.linear(a, w), 5)
        flops += 2 * m * k * n
        times += t
    return flops / times / 1e9


def matmul_peak(lm, rows=(256, 1024, 2048), known: float = 0.0) -> float:
    """The best of :func:`matmul_gflops` over row counts up to a large decode batch's (a decode batch of
    more rows than 256 runs more efficient matmuls than a 256-row peak would allow) and over both kernels,
    and of ``known`` (a rate already measured, whose row count ``rows`` may then leave out)."""
    return max([known] + [matmul_gflops(lm, r) for r in rows])


def few_row_matmuls(lm, rows=(1, 8, 31, 256)) -> str:
    """Time of one matmul by the MLP's up-projection weight at a few row counts (cold weights: 60 copies),
    through torch's own ``F.linear`` (outside the engine's linear route)."""
    d = lm.d_model
    d_mlp = lm.adapter.mlp_down[0].weight.shape[1 if type(lm.adapter.mlp_down[0]).__name__ != "Conv1D" else 0]
    weights = [torch.randn(d_mlp, d) for _ in range(60)]
    out = []
    for m in rows:
        x = torch.randn(m, d)
        t, _ = timed(lambda: [torch.nn.functional.linear(x, w) for w in weights], 3)
        out.append(f"{m} rows {t / len(weights) * 1e6:.0f} us")
    return f"{d_mlp}x{d} weight, torch's F.linear: " + ", ".join(out)


def token_flops(lm, context: int) -> float:
    """FLOPs of one token through the model (its linear layers, the unembedding, attention over ``context``)."""
    linear = sum(m.weight.numel() for m in lm.model.modules() if isinstance(m, torch.nn.Linear) or
                 type(m).__name__ == "Conv1D")
    attn = 2 * 2 * lm.n_layers * lm.n_heads * lm.d_head * context
    return 2 * linear + attn


class DecodeLoop:
    """Wall time spent inside the engine's decode loop (``generate._decode``), the tokens its steps make
    (each row's first new token comes from the prompt pass, not from a step), and the work its steps do:
    a step shared among rows of one token history (``hopscope.engine.history``) runs each block for its
    units only, so its FLOPs are counted per block from the units it ran, not per row."""

    def __init__(self, lm, context: float) -> None:
        self.lm, self.context = lm, context
        self.seconds = 0.0
        self.tokens = 0
        self.full = 0.0  # FLOPs of the steps' tokens computed one row at a time
        self.saved = 0.0  # FLOPs the shared steps did not compute

    def __enter__(self) -> "DecodeLoop":
        import sys

        self.module = sys.modules["hopscope.engine.generate"]
        self.real = real = self.module._decode
        self.real_plan = real_plan = self.module.plan_units
        lm = self.lm
        unembed = 2 * lm.model.get_output_embeddings().weight.numel()
        per_block = (token_flops(lm, self.context) - unembed) / lm.n_layers

        def timed_decode(lm, first, cache, mask, next_pos, max_new_tokens, stop, row_ids, out, edits, **kw):
            before = sum(len(out[i]) for i in row_ids)
            t = time.perf_counter()
            real(lm, first, cache, mask, next_pos, max_new_tokens, stop, row_ids, out, edits, **kw)
            self.seconds += time.perf_counter() - t
            made = sum(len(out[i]) for i in row_ids) - before - len(row_ids)
            self.tokens += made
            self.full += made * token_flops(lm, self.context)

        def counted_plan(histories, joins, n_layers, device="cpu"):
            units = real_plan(histories, joins, n_layers, device)
            if units is not None:
                rows = len(joins)
                self.saved += sum((rows - r.numel()) * per_block for r in units.rep[:-1])
                self.saved += (rows - units.rep[-1].numel()) * unembed
            return units

        self.module._decode = timed_decode
        self.module.plan_units = counted_plan
        return self

    def __exit__(self, *exc) -> None:
        self.module._decode = self.real
        self.module.plan_units = self.real_plan

    @property
    def flops(self) -> float:
        """FLOPs the steps computed."""
        return self.full - self.saved

    def share(self, peak: float) -> str:
        rate = self.flops / self.seconds / 1e9 if self.seconds else float("nan")
        return (f"decode loop alone: {self.tokens} step tokens in {self.seconds:.1f} s, {rate:.1f} GFLOP/s computed "
                f"= {rate / peak:.0%} of the matmul peak {peak:.1f} GFLOP/s (target >= 30%); steps shared among rows "
                f"of one token history computed {self.flops / self.full:.0%} of the one-row-at-a-time work")


class ModelCalls:
    """Counts the engine's model calls while the block runs: prompt passes (more than one column), the
    columns they compute (padding included), their rows (each unembeds its last column) and the tokens of
    decode steps (one column per row)."""

    MODULES = ("generate", "prefix", "runner")

    def __enter__(self) -> "ModelCalls":
        import sys

        self.modules = [sys.modules[f"hopscope.engine.{m}"] for m in self.MODULES]
        self.real = real = self.modules[0].call_model
        self.passes = self.columns = self.rows = self.steps = 0

        def counting_call(model, **kwargs):
            rows, width = kwargs["input_ids"].shape
            if width > 1:
                self.passes += 1
                self.columns += rows * width
                self.rows += rows
            else:
                self.steps += rows
            return real(model, **kwargs)

        for m in self.modules:
            m.call_model = counting_call
        return self

    def __exit__(self, *exc) -> None:
        for m in self.modules:
            m.call_model = self.real

    def counts(self) -> tuple[int, int, int, int]:
        return self.passes, self.columns, self.rows, self.steps


def report(name: str, rows: list[tuple[str, float, float | None]], baseline: float, target: str = "",
           ratios: dict[str, list[float]] | None = None) -> None:
    """One workload's table: each way's median time and its ratio to the baseline's median; ``ratios``
    (label -> per-round paired ratios) adds their range over the rounds and the number of rounds."""
    print(f"\n[{name}] {target}")
    for label, t, diff in rows:
        ratio = baseline / t if t else float("nan")
        d = "" if diff is None else f"  max|diff| {diff:.1e}"
        r = (ratios or {}).get(label)
        spread = f"  per round {min(r):.1f}-{max(r):.1f}x (n={len(r)})" if r else ""
        print(f"  {label:<56} {t * 1e3:10.1f} ms  {ratio:7.1f}x{spread}{d}")


# ---- workloads --------------------------------------------------------------------------------------------
def bench_cache(lm, repeats: int) -> None:
    prompt = "The Eiffel Tower is located in the city of Paris, which is the capital of"
    ids = torch.tensor([lm.to_ids(prompt)])
    rounds: dict[str, list[float]] = {}
    timings = timed_together({"plain": lambda: run(lm, [prompt]),
                              "cache": lambda: run_with_cache(lm, [prompt], components=("resid_post",)),
                              "hf": lambda: lm.model(input_ids=ids)}, repeats, rounds)
    (t_plain, _), (t_cache, _), (t_hf, _) = timings["plain"], timings["cache"], timings["hf"]
    r = round_ratios(rounds, "hf")
    report("cache every resid_post", [("plain forward (HF)", t_hf, None), ("hopscope run, no cache", t_plain, None),
                                       ("hopscope run_with_cache(resid_post)", t_cache, None)], t_hf,
           f"cost of caching: {t_cache / t_hf:.2f}x one plain forward (target <= 1.1x); per round "
           f"{min(1 / x for x in r['cache']):.2f}-{max(1 / x for x in r['cache']):.2f}x (n={len(r['cache'])})")


def _peer_patch_nnsight(lm, prompt: str, values: list[torch.Tensor]):
    from nnsight import NNsight

    m = NNsight(lm.model)
    layers = lm.adapter.blocks
    ids = lm.to_ids(prompt)
    n, L = len(ids), len(values)
    names = [n_ for n_, mod in lm.model.named_modules() if any(mod is b for b in layers)]

    def envoy(i):
        obj = m
        for part in names[i].split("."):
            obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
        return obj

    def fn():
        clear_prefix_cache()
        with torch.no_grad():
            pre = lm.model(input_ids=torch.tensor([ids[:-1]]), use_cache=True)
            cache = pre["cache"] if "cache" in pre.keys() else pre["past_key_values"]
            cache.batch_repeat_interleave(L)
            kw = {cache_kwarg(lm.model): cache}
            with m.trace(torch.tensor([[ids[-1]]] * L), attention_mask=torch.ones(L, n, dtype=torch.long),
                         position_ids=torch.full((L, 1), n - 1), use_cache=True, **kw):
                for l in range(L):
                    envoy(l).output[l, -1, :] = values[l]
                out = m.output.logits.save()
        return out[:, -1].float()
    return fn


def _plain_hf_patch_loop(lm, prompt: str, values: list[torch.Tensor]):
    """The script a user writes without a library: per layer, one stock HF forward (logits at every
    position, transformers' default) with a forward hook that writes the value at the last position."""
    ids = torch.tensor([lm.to_ids(prompt)])

    def fn():
        out = []
        for block, value in zip(lm.adapter.blocks, values):
            def write(module, args, output, value=value):
                hidden = output[0] if isinstance(output, tuple) else output
                hidden[:, -1] = value
                return output
            handle = block.register_forward_hook(write)
            try:
                with torch.no_grad():
                    out.append(lm.model(input_ids=ids).logits[:, -1].float())
            finally:
                handle.remove()
        return torch.cat(out)
    return fn


def _peer_patch_tl(lm, prompt: str, values: list[torch.Tensor]):
    from transformer_lens.model_bridge import TransformerBridge

    folder = lm.source if os.path.isdir(lm.source) else None
    if folder is None:
        raise RuntimeError("TransformerLens needs the model's folder")
    import copy

    # the bridge rewires the HF modules it is given: hand it a copy so later workloads measure the same model
    bridge = TransformerBridge.boot_transformers(folder, hf_model=copy.deepcopy(lm.model), tokenizer=lm.tokenizer)
    L = len(values)
    toks = torch.tensor([lm.to_ids(prompt)] * L)

    def hook(l):
        def f(x, hook):
            x = x.clone()
            x[l, -1] = values[l]
            return x
        return f

    hooks = [(f"blocks.{l}.hook_resid_post", hook(l)) for l in range(L)]

    def fn():
        with torch.no_grad():
            return bridge.run_with_hooks(toks, fwd_hooks=hooks)[:, -1].float()
    return fn


PLAIN_HF = "plain HF: forward + hook per layer, all logits"
PACKED = "hopscope prompt_pass, packed (prefix + rows, 1 forward)"


def on_torch_linear(fn: Callable[[], object]) -> Callable[[], object]:
    """``fn`` run with the engine's linear route set to torch's ``F.linear``."""
    def wrapped():
        with linear.using("torch"):
            return fn()
    return wrapped


def bench_patch(lm, repeats: int) -> None:
    clean = "The Eiffel Tower is located in the city of"
    corrupt = "The Colosseum is located in the city of"
    _, acts = run_with_cache(lm, [clean], components=("resid_post",))
    values = [acts["resid_post", l][0, -1] for l in range(lm.n_layers)]
    rows = [[replace(Site(l, "resid_post", -1), v)] for l, v in enumerate(values)]

    def naive():
        return torch.cat([run(lm, [corrupt], [r], last_only=True, share_prefix=False).logits for r in rows])

    def batched():
        return run(lm, [corrupt] * len(rows), rows, last_only=True, share_prefix=False).logits

    def fast():  # a short prompt: the prompt and the rows' last columns run packed in one forward
        return prompt_pass(lm, corrupt, rows).logits

    def two_forwards():
        clear_prefix_cache()  # count the prefix pass in every repeat
        return prompt_pass(lm, corrupt, rows, pack=False).logits

    def cached():  # the prefix stays cached between repeats
        return prompt_pass(lm, corrupt, rows, pack=False).logits

    fns = {"naive: one full forward per layer": naive,
           PLAIN_HF: _plain_hf_patch_loop(lm, corrupt, values),
           "hopscope batched run (full prompt)": batched,
           PACKED: fast,
           "hopscope prompt_pass, pack=False (prefix pass, staircase)": two_forwards,
           "hopscope prompt_pass, pack=False, prefix cached (staircase)": cached}
    if linear.route() == "onednn":  # what the engine's linear route adds: the same ways on torch's linear
        fns["naive, torch's linear (HOPSCOPE_LINEAR=torch)"] = on_torch_linear(naive)
        fns[PACKED + ", torch's linear"] = on_torch_linear(fast)
    for label, make in (("nnsight: prefix KV + batched trace", _peer_patch_nnsight),
                        ("TransformerLens bridge: batched run_with_hooks", _peer_patch_tl)):
        try:
            fns[label] = make(lm, corrupt, values)
            fns[label]()
        except Exception as err:  # noqa: BLE001 - a peer missing or failing is reported, not fatal
            fns.pop(label, None)
            print(f"  ({label}: not measured: {type(err).__name__}: {str(err)[:120]})")
    rounds: dict[str, list[float]] = {}
    timings = timed_together(fns, repeats, rounds)  # in turns: every way sees the same drift of the machine
    t_naive, ref = timings["naive: one full forward per layer"]
    out = [(label, t, (got - ref).abs().max().item()) for label, (t, got) in timings.items()]
    report(f"last-token patch at each of {lm.n_layers} layers", out, t_naive, "speed-up vs naive (target >= 20x)",
           round_ratios(rounds, "naive: one full forward per layer"))
    plain = round_ratios(rounds, PLAIN_HF)[PACKED]
    print(f"  the packed pass against the plain HF loop (what a script without a library runs): "
          f"{timings[PLAIN_HF][0] / timings[PACKED][0]:.1f}x, per round {min(plain):.1f}-{max(plain):.1f}x "
          f"(n={len(plain)}); the naive row above is stricter (hopscope's hooks, last-position logits only)")


def _backpatch_rows(lm, prompt: str, layers: list[int], seed: int = 0) -> list[list]:
    _, acts = run_with_cache(lm, [prompt], components=("resid_post",))
    _, other = run_with_cache(lm, ["The weather in the mountains was cold, so the hikers packed warm"],
                              components=("resid_post",))
    g = torch.Generator().manual_seed(seed)
    rows = []
    for cond in CONDITIONS:
        for s in layers:
            for t in layers:
                if (s > t) if cond != "forward" else (s < t):
                    h = acts["resid_post", s][0, -1]
                    if cond == "random":
                        r = torch.randn(h.shape, generator=g)
                        h = r / r.norm() * h.norm()
                    elif cond == "unrelated":
                        h = other["resid_post", s][0, -1]
                    rows.append([replace(Site(t, "resid_post", -1), h)])
    return rows


def bench_backpatch(lm, repeats: int, naive_rows: int, quick: bool) -> None:
    layers = list(range(lm.n_layers)) if not quick else list(range(0, lm.n_layers, 5))
    rows = _backpatch_rows(lm, TWO_HOP, layers)
    n_new = 10
    rule = MatchRule(max_new_tokens=n_new)
    stop = rule.stopper(lm, [ALIASES] * len(rows))
    sample = rows[:: max(1, len(rows) // naive_rows)][:naive_rows]

    def naive():
        return [generate(lm, [TWO_HOP], [r], max_new_tokens=n_new, fast=False).tokens[0] for r in sample]

    start_rule = MatchRule(max_new_tokens=n_new, anywhere=False)  # the named option: an alias at the start only
    stop_start = start_rule.stopper(lm, [ALIASES] * len(rows))
    gen_module = sys.modules["hopscope.engine.generate"]

    def unshared():  # the same, each decode step running every row through every block
        gen_module.SHARE_HISTORIES = False
        try:
            return generate(lm, TWO_HOP, rows, max_new_tokens=n_new)
        finally:
            gen_module.SHARE_HISTORIES = True

    rounds: dict[str, list[float]] = {}
    timings = timed_together({  # in turns, so the naive sample and hopscope see the same machine
        "naive": naive,
        "fast": lambda: generate(lm, TWO_HOP, rows, max_new_tokens=n_new),
        "unshared": unshared,
        "stop": lambda: generate(lm, TWO_HOP, rows, max_new_tokens=n_new, stop=stop),
        "start": lambda: generate(lm, TWO_HOP, rows, max_new_tokens=n_new, stop=stop_start)},
        max(2, repeats // 2), rounds)
    (t_sample, ref), (t_fast, gen), (t_unshared, gen_u), (t_stop, gen_s), (t_start, gen_a) = (
        timings[k] for k in ("naive", "fast", "unshared", "stop", "start"))
    t_naive = t_sample * len(rows) / len(sample)
    step = max(1, len(rows) // naive_rows)
    agree = sum(a == b for a, b in zip(ref, gen.tokens[::step][:len(sample)])) / len(sample)
    verdicts = [rule.matches(lm.tokenizer.decode(t), ALIASES) for t in gen.tokens]
    verdicts_s = [rule.matches(lm.tokenizer.decode(t), ALIASES) for t in gen_s.tokens]
    n_prompt = len(lm.to_ids(TWO_HOP))
    flops = len(rows) * sum(token_flops(lm, n_prompt + i) for i in range(n_new))
    peak = matmul_peak(lm)
    labels = {"naive": f"naive per-pair loop (timed on {len(sample)} rows, scaled)",
              "fast": "hopscope generate (shared prefix, staircase, shared decode steps)",
              "unshared": "  ... decode steps not shared (every row through every block)",
              "stop": "hopscope generate + early stopping (paper's rule)",
              "start": "  ... early stopping, alias-at-start rule (option)"}
    ratios = round_ratios(rounds, "naive", len(rows) / len(sample))
    report(f"back-patching one query: {len(rows)} rows ({len(layers)} layers, 4 conditions), {n_new} new tokens",
           [(labels[k], t, None) for k, t in (("naive", t_naive), ("fast", t_fast), ("unshared", t_unshared),
                                               ("stop", t_stop), ("start", t_start))], t_naive,
           "targets: >= 30x, >= 60x with early stopping", {labels[k]: v for k, v in ratios.items()})
    verdicts_a = [start_rule.matches(lm.tokenizer.decode(t), ALIASES) for t in gen.tokens]
    verdicts_as = [start_rule.matches(lm.tokenizer.decode(t), ALIASES) for t in gen_a.tokens]
    print(f"  identical generations on the naive sample: {agree:.0%}; with and without shared decode steps: "
          f"{sum(a == b for a, b in zip(gen.tokens, gen_u.tokens))} of {len(rows)} rows; early stopping changes "
          f"{sum(a != b for a, b in zip(verdicts, verdicts_s))} of {len(rows)} verdicts (paper's rule), "
          f"{sum(a != b for a, b in zip(verdicts_a, verdicts_as))} (start rule)")
    print(f"  tokens decoded: {sum(map(len, gen.tokens))} without stopping, {sum(map(len, gen_s.tokens))} with the "
          f"paper's rule (an alias anywhere: a row stops only once it matched), {sum(map(len, gen_a.tokens))} "
          f"with the start rule")
    with DecodeLoop(lm, n_prompt + n_new / 2) as loop:
        generate(lm, TWO_HOP, rows, max_new_tokens=n_new)
    done = flops - loop.saved  # the work the shared decode steps did not need
    print(f"  throughput of the whole generate without stopping (prompt pass included, work computed): "
          f"{done / t_fast / 1e9:.1f} GFLOP/s = {done / t_fast / 1e9 / peak:.0%} of the measured matmul peak "
          f"{peak:.1f} GFLOP/s")
    print(f"  {loop.share(peak)}")


def bench_knowledge(lm, repeats: int, quick: bool) -> None:
    from hopscope.data import build_two_hop
    from hopscope.data.builders import DEFAULT_TWO_HOP
    from hopscope.methods.hopping.knowledge import knowledge_table

    per = 4 if quick else max(1, 200 // len(DEFAULT_TWO_HOP) + 1)
    queries = [q for comp in DEFAULT_TWO_HOP for q in build_two_hop(comp, n=per, seed=0, k_shot=3)][:(20 if quick else 200)]
    prompts = [p for q in queries for p in (q.first_hop_prompt, q.second_hop_prompt, q.prompt,
                                            q.entity_shortcut_prompt, q.relation_shortcut_prompt)]
    unique = list(dict.fromkeys(prompts))  # a prompt asked twice ran once before too
    rule = MatchRule()  # the filter's rule: an alias anywhere in the first 10 greedy tokens
    n_new = rule.max_new_tokens

    def naive():  # the old filter: left-padded batches of 32, each prompt running its own few-shot prefix
        return [t for i in range(0, len(unique), 32)
                for t in generate(lm, unique[i:i + 32], max_new_tokens=n_new, first_logits=True, fast=False).tokens]

    def shared_only():  # shared prefixes, every prompt decoding its whole budget
        clear_prefix_cache()
        return generate(lm, unique, max_new_tokens=n_new, first_logits=True).tokens

    import hopscope.methods.hopping.knowledge as knowledge_module

    decoded: list[int] = []  # tokens the filter generates (rows stop early), for the least-work floor
    real_generate = knowledge_module.generate

    def counting_generate(*args, **kwargs):
        gen = real_generate(*args, **kwargs)
        decoded.append(sum(map(len, gen.tokens)))
        return gen

    work = {}  # workload -> ModelCalls.counts() while it ran

    def filter_():  # the knowledge filter's model work as `hopscope data filter` / the study runs it
        clear_prefix_cache()
        decoded.clear()
        knowledge_module.generate = counting_generate
        try:
            with ModelCalls() as calls:
                table = knowledge_table(lm, queries, rule)
            work["filter"] = calls.counts()
            return table
        finally:
            knowledge_module.generate = real_generate

    def counted_naive():
        with ModelCalls() as calls:
            out = naive()
        work["naive"] = calls.counts()
        return out

    rounds: dict[str, list[float]] = {}
    timings = timed_together({"naive": counted_naive, "shared": shared_only, "filter": filter_},
                             max(2, repeats // 2), rounds)  # in turns: each way sees the same machine
    (t_naive, ref), (t_shared, got), (t_filter, table) = (timings[k] for k in ("naive", "shared", "filter"))
    same = sum(a == b for a, b in zip(ref, got)) / len(unique)
    by_prompt = dict(zip(unique, ref))
    texts = {p: lm.tokenizer.decode(by_prompt[p], skip_special_tokens=True) for p in unique}
    verdicts = table[[c for c in table.columns if c.endswith("_correct")]].to_numpy().ravel().tolist()
    ref_verdicts = []
    for q in queries:
        from hopscope.methods.hopping import queries as Q
        for p, answers in ((q.first_hop_prompt, Q.bridges(q)), (q.second_hop_prompt, Q.answers(q)),
                           (q.prompt, Q.answers(q)), (q.entity_shortcut_prompt, Q.answers(q)),
                           (q.relation_shortcut_prompt, Q.answers(q))):
            ref_verdicts.append(rule.matches(texts[p], answers))
    agree = sum(a == b for a, b in zip(verdicts, ref_verdicts)) / len(ref_verdicts)
    ids = sorted(lm.to_ids(p) for p in unique)
    mean_len = sum(map(len, ids)) / len(ids)
    trie = len({tuple(x[:i]) for x in ids for i in range(1, len(x) + 1)})
    flops = len(unique) * sum(token_flops(lm, mean_len + i) for i in range(n_new))
    peak = matmul_peak(lm)
    labels = {"naive": "old way: each prompt its own prefix (batches of 32)",
              "shared": "hopscope generate, shared prefixes, no early stop",
              "filter": "hopscope knowledge filter (shared prefixes + early stop)"}
    ratios = round_ratios(rounds, "naive")
    report(f"knowledge filter: {len(queries)} queries x 5 three-shot prompts ({len(unique)} distinct), "
           f"{n_new} new tokens",
           [(labels[k], t, None) for k, t in (("naive", t_naive), ("shared", t_shared), ("filter", t_filter))],
           t_naive, "target >= 4x", {labels[k]: v for k, v in ratios.items()})
    print(f"  identical generations (no early stop): {same:.1%} of {len(unique)} prompts; verdicts of the filter equal "
          f"the old way's on {agree:.1%} of {len(ref_verdicts)} prompt-answer pairs; "
          f"{len(prompts) / t_filter:.1f} prompts/s")
    print(f"  prompt tokens: {sum(map(len, ids))} in all, {trie} distinct prefixes of them (the least any prefix "
          f"sharing must compute); the filter's {work['filter'][0]} prompt passes compute {work['filter'][1]} "
          f"columns (padding included: {work['filter'][1] / trie - 1:.0%} over the least), the old way's "
          f"{work['naive'][0]} compute {work['naive'][1]}")
    unembed = 2 * lm.d_model * lm.d_vocab
    least = (trie * (token_flops(lm, mean_len / 2) - unembed) + len(unique) * unembed
             + max(0, sum(decoded) - len(unique)) * token_flops(lm, mean_len + n_new / 2))
    t_least = least / (peak * 1e9)
    print(f"  the least work (each distinct prefix token once, the {sum(decoded)} tokens the filter generates) at "
          f"the matmul peak takes {t_least:.1f} s: no prefix sharing can beat {t_naive / t_least:.1f}x here; the "
          f"filter reaches {least / t_filter / 1e9 / peak:.0%} of the peak on that work")

    def gflop(counts: tuple[int, int, int, int]) -> float:
        _, cols, rows, steps = counts
        return ((cols * (token_flops(lm, mean_len / 2) - unembed) + rows * unembed
                 + steps * token_flops(lm, mean_len + n_new / 2)) / 1e9)

    g_naive, g_filter, g_least = gflop(work["naive"]), gflop(work["filter"]), least / 1e9
    print(f"  work (linear layers and attention): the old way {g_naive:,.0f} GFLOP ({work['naive'][3]} "
          f"decode-step tokens), the filter {g_filter:,.0f} ({work['filter'][3]}), the least "
          f"{g_least:,.0f}: the old way does {g_naive / g_filter:.1f}x the filter's work and {g_naive / g_least:.1f}x "
          f"the least; at the old way's own efficiency ({g_naive / t_naive:.1f} GFLOP/s) no prefix sharing beats "
          f"{g_naive / g_least:.1f}x, and the filter ran at {g_filter / t_filter:.1f} GFLOP/s")
    print(f"  throughput of the whole generate without early stop (prompt passes included, generated tokens' work "
          f"only): {flops / t_shared / 1e9:.1f} GFLOP/s = {flops / t_shared / 1e9 / peak:.0%} of the matmul peak")
    clear_prefix_cache()
    with DecodeLoop(lm, mean_len + n_new / 2) as loop:
        generate(lm, unique, max_new_tokens=n_new, first_logits=True)
    print(f"  {loop.share(peak)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model (default: the embedded SmolLM2-135M-Instruct)")
    ap.add_argument("--only", default="cache,patch,backpatch,knowledge")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--naive-rows", type=int, default=40, help="back-patching rows timed on the naive side")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    lm = hopscope.load_model(args.model)
    print(f"model {lm.name}: {lm.n_layers} layers, d_model {lm.d_model}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {platform.machine()}, load average {os.getloadavg()}")
    print(f"engine linear route: {linear.route()} (HOPSCOPE_LINEAR; hopscope.engine.linear)")
    at_256 = {k: matmul_gflops(lm, 256, k) for k in ("torch", "onednn") if k == "torch" or linear.route() == k}
    print(f"measured matmul throughput at the model's shapes, 256 rows: torch's matmul {at_256['torch']:.1f} GFLOP/s"
          + (f", oneDNN packed weights {at_256['onednn']:.1f} GFLOP/s" if "onednn" in at_256 else "") +
          f"; best of both over 256/1024/2048 rows {matmul_peak(lm, (1024, 2048), max(at_256.values())):.1f} GFLOP/s "
          f"(float32; the peak the shares below use)")
    print(f"matmuls with few rows: {few_row_matmuls(lm)}")
    work = set(args.only.split(","))
    if "cache" in work:
        bench_cache(lm, args.repeats)
    if "patch" in work:
        bench_patch(lm, args.repeats)
    if "backpatch" in work:
        bench_backpatch(lm, args.repeats, 8 if args.quick else args.naive_rows, args.quick)
    if "knowledge" in work:
        bench_knowledge(lm, args.repeats, args.quick)
    print(f"\nload average at the end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
