"""Device check: the engine's invariants and the engine benchmarks on a GPU, in one script that finishes in
under 5 minutes, printing the benchmarks' ratios (as bench/bench_engine.py prints them on CPU) plus the peak
GPU memory of each part. Exit status 1 if any invariant fails.

Invariants, on tiny models of several families and on the default model, all on ``--device``:
  clean       no interventions == the HF forward of an untouched twin (left-padded batch, real positions)
  self-patch  replacing resid_post at every layer with its own value changes nothing
  fast path   prompt_pass (cached prefix + staircase) == every row through every block == one full run per row
  generate    the fast decoder (shared prefix, staircase) == the naive one, token for token
  heads       per-head contributions (+ output bias) sum to attn_out
  one device  cached activations and logits come back on the model's device
  float32     a bfloat16 model's logits and scores are float32, and rank the fp32 model's top token first
  offload     a device_map that offloads blocks (to CPU memory when a GPU runs them; to disk on a CPU-only
              machine) gives the plain model's logits, patched results and generations
Benchmarks: bench_engine.py's workloads (cache, patch, backpatch, knowledge) with the model on the device and
timings synchronised with it.

    python bench/device_check.py                       # cuda (needs a GPU)
    python bench/device_check.py --device cpu --quick  # the same checks on CPU at small sizes
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

import hopscope
from hopscope.engine import (Site, cache, generate, knockout, prompt_pass, replace, run, run_with_cache,
                             score_tokens, zero_ablate)
from hopscope.models import tiny

HERE = Path(__file__).resolve().parent
FAMILIES = ("llama", "gpt2", "qwen2", "gemma2", "mistral", "gpt_neox")
PROMPTS = ["The capital of France is", "Hello world, my name is Ada and I live in the city of"]
PROMPT = "The Eiffel Tower is located in the city of Paris, which is the capital of"
UNRELATED = "The weather in the mountains was cold, so the hikers packed warm"  # as in bench_engine.py
FAILED: list[str] = []


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def check(name: str, ok: bool, detail: str = "") -> None:
    print(f"  {'PASS' if ok else 'FAIL'}  {name:<58} {detail}")
    if not ok:
        FAILED.append(name)


def peak(device: torch.device, label: str) -> None:
    if device.type == "cuda":
        print(f"  peak GPU memory ({label}): {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB")
        torch.cuda.reset_peak_memory_stats(device)


def diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float().to(a.device)).abs().max().item()


def hf_twin(lm):
    """An HF model with ``lm``'s weights and the family's default attention, never touched by hopscope."""
    from transformers import AutoModelForCausalLM

    cfg = copy.deepcopy(lm.model.config)
    cfg._attn_implementation = None
    twin = AutoModelForCausalLM.from_config(cfg, dtype=lm.dtype)
    twin.load_state_dict(lm.model.state_dict())
    return twin.to(lm.device).eval()


# ---- invariants -------------------------------------------------------------------------------------------------
def invariants(lm, label: str, tol: float, exact_tokens: bool) -> None:
    print(f"\n[invariants] {label}: {lm.n_layers} layers, {lm.dtype}, on {lm.device}")
    twin = hf_twin(lm)
    b = lm.encode(PROMPTS)
    with torch.no_grad():
        ref = twin(input_ids=b.input_ids, attention_mask=b.attention_mask, position_ids=b.position_ids).logits
    got = run(lm, PROMPTS).logits
    d = max(diff(got[i, b.offsets[i]:], ref[i, b.offsets[i]:]) for i in range(len(PROMPTS)))
    check("clean run == HF forward", d <= tol, f"max|diff| {d:.1e}")
    del twin
    comps = ("resid_post", "attn_out", "head_out", "mlp_out")
    logits, acts = run_with_cache(lm, [PROMPT], components=comps)
    clean = logits[0, -1]
    rows = [[replace(Site(l, "resid_post", -1), acts["resid_post", l][0, -1])] for l in range(lm.n_layers)]
    d = diff(prompt_pass(lm, PROMPT, rows).logits, clean.expand(len(rows), -1))
    check("self-patch of resid_post at every layer changes nothing", d <= tol, f"max|diff| {d:.1e}")
    on = {t.device for t in acts.values()} | {logits.device}
    check("activations and logits on the model's device", on == {lm.device}, str(sorted(map(str, on))))
    heads = acts["head_out", lm.n_layers - 1][0].sum(-2)
    bias = lm.adapter.out_proj_bias(lm.n_layers - 1)
    d = diff(heads + (bias if bias is not None else 0), acts["attn_out", lm.n_layers - 1][0])
    check("head contributions + bias == attn_out", d <= tol * 10, f"max|diff| {d:.1e}")
    g = torch.Generator().manual_seed(0)
    rows = [[], [zero_ablate(Site(lm.n_layers // 2, "resid_post", -1))],
            [replace(Site(1, "resid_post", -2), torch.randn(lm.d_model, generator=g))],
            [knockout(lm.n_layers - 1, [0, 1]), cache(Site(lm.n_layers - 1, "head_out", -1, head=0))]]
    fast = prompt_pass(lm, PROMPT, rows, start=-3)
    full = prompt_pass(lm, PROMPT, rows, start=-3, staircase=False)
    naive = torch.cat([run(lm, [PROMPT], [r], last_only=True, share_prefix=False).logits for r in rows])
    d = max(diff(fast.logits, full.logits), diff(fast.logits, naive))
    check("prompt_pass (prefix + staircase) == full rows == naive runs", d <= tol, f"max|diff| {d:.1e}")
    gf = generate(lm, PROMPT, rows, max_new_tokens=8, start=-3).tokens
    gn = generate(lm, PROMPT, rows, max_new_tokens=8, fast=False).tokens
    gp = generate(lm, PROMPTS + [PROMPT], max_new_tokens=8).tokens
    gq = generate(lm, PROMPTS + [PROMPT], max_new_tokens=8, fast=False).tokens
    agree = sum(a == b for a, b in zip(gf + gp, gn + gq)) / len(gf + gp)
    check("fast generate == naive generate", agree == 1.0 if exact_tokens else agree >= 0.85,
          f"{agree:.0%} of rows identical")


def float32_scores(lm32, lm16, label: str) -> None:
    print(f"\n[float32 scoring] {label}: {lm16.dtype} weights")
    rows = [[], [zero_ablate(Site(1, "resid_post", -1))]]
    outs = {"run": run(lm16, PROMPTS).logits, "run last": run(lm16, PROMPTS, last_only=True).logits,
            "prompt_pass": prompt_pass(lm16, PROMPT, rows).logits,
            "generate first_logits": generate(lm16, PROMPT, rows, max_new_tokens=2, first_logits=True).first_logits}
    check("logits of every path are float32", all(o.dtype == torch.float32 for o in outs.values()),
          ", ".join(f"{k}: {str(o.dtype).replace('torch.', '')}" for k, o in outs.items()))
    ref = run(lm32, PROMPTS, last_only=True).logits
    top = ref.argmax(-1)
    s16 = score_tokens(outs["run last"], top)
    check("scores are float32", s16["logprob"].dtype == torch.float32)
    ranks = s16["rank"].tolist()
    check("the fp32 model's top token ranks near the top in half precision", max(ranks) <= 2,
          f"ranks {ranks}; logprob diff {diff(s16['logprob'], score_tokens(ref, top)['logprob']):.2e}")


def offload_map(lm, offloaded: set[int], device) -> dict[str, object]:
    """A complete device_map: blocks in ``offloaded`` to CPU memory (a GPU runs them) or disk (CPU only)."""
    gpu = device.type == "cuda"
    home: object = (device.index or 0) if gpu else "cpu"
    names = {id(m): n for n, m in lm.model.named_modules()}
    blocks = {names[id(b)]: i for i, b in enumerate(lm.adapter.blocks)}
    out: dict[str, object] = {}

    def visit(prefix: str, module) -> None:
        for name, child in module.named_children():
            path = prefix + name
            if path in blocks:
                out[path] = ("cpu" if gpu else "disk") if blocks[path] in offloaded else home
            elif any(b.startswith(path + ".") for b in blocks):
                visit(path + ".", child)
            else:
                out[path] = home
    visit("", lm.model)
    return out


def offload(folder: Path, plain, label: str, tol: float, device, scratch: Path) -> None:
    half = set(range(plain.n_layers // 2, plain.n_layers))
    dm = offload_map(plain, half, device)
    off = hopscope.load_model(str(folder), device_map=dm, offload_folder=str(scratch / f"offload-{label}"))
    where = "CPU memory" if device.type == "cuda" else "disk"
    print(f"\n[offload] {label}: blocks {min(half)}-{max(half)} offloaded to {where}, run on {off.device}")
    d = diff(run(off, PROMPTS).logits, run(plain, PROMPTS).logits)
    check("offloaded model: same logits", d <= tol, f"max|diff| {d:.1e}")
    g = torch.Generator().manual_seed(0)
    last = plain.n_layers - 1
    rows = [[], [replace(Site(last, "resid_post", -1), torch.randn(plain.d_model, generator=g))],
            [knockout(last, [0, 1]), cache(Site(last, "head_out", -1, head=0))]]
    a, b = prompt_pass(plain, PROMPT, rows, start=-3), prompt_pass(off, PROMPT, rows, start=-3)
    site = Site(last, "head_out", -1, head=0)
    d = max(diff(a.logits, b.logits), diff(a.cache[2][site], b.cache[2][site]))
    check("offloaded model: same patched logits and cached head", d <= tol, f"max|diff| {d:.1e}")
    ga, gb = (generate(m, PROMPT, rows, max_new_tokens=6).tokens for m in (plain, off))
    check("offloaded model: same generations", ga == gb)


# ---- benchmarks -------------------------------------------------------------------------------------------------
def load_bench_engine(device: torch.device):
    """bench/bench_engine.py, its timings synchronised with ``device`` and its inputs made on it."""
    spec = importlib.util.spec_from_file_location("bench_engine", HERE / "bench_engine.py")
    be = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(be)

    def timed(fn: Callable[[], object], repeats: int):
        """Median of ``repeats`` synchronised calls after a warm-up one (``repeats == 0``: that call itself;
        bench_engine's own ``timed`` cannot take 0)."""
        def once():
            sync(device)
            t = time.perf_counter()
            out = fn()
            sync(device)
            return time.perf_counter() - t, out

        first, out = once()
        times = []
        for _ in range(repeats):
            t, out = once()
            times.append(t)
        return (statistics.median(times) if times else first), out

    def matmul_gflops(lm, rows: int = 256) -> float:
        d, v = lm.d_model, lm.d_vocab
        w = lm.adapter.mlp_down[0].weight
        d_mlp = w.shape[1 if type(lm.adapter.mlp_down[0]).__name__ != "Conv1D" else 0]
        flops = secs = 0.0
        for m, k, n in [(rows, d, d_mlp), (rows, d_mlp, d), (rows, d, v)]:
            x, y = torch.randn(m, k, device=device), torch.randn(k, n, device=device)
            t, _ = timed(lambda: x @ y, 5)
            flops, secs = flops + 2 * m * k * n, secs + t
        return flops / secs / 1e9

    def bench_cache(lm, repeats: int) -> None:
        prompt = "The Eiffel Tower is located in the city of Paris, which is the capital of"
        ids = torch.tensor([lm.to_ids(prompt)], device=device)
        t_plain, _ = timed(lambda: run(lm, [prompt]), repeats)
        t_cache, _ = timed(lambda: run_with_cache(lm, [prompt], components=("resid_post",)), repeats)
        with torch.no_grad():
            t_hf, _ = timed(lambda: lm.model(input_ids=ids), repeats)
        be.report("cache every resid_post", [("plain forward (HF)", t_hf, None),
                                              ("hopscope run, no cache", t_plain, None),
                                              ("hopscope run_with_cache(resid_post)", t_cache, None)], t_hf,
                  f"cost of caching: {t_cache / t_hf:.2f}x one plain forward (target <= 1.1x)")

    def backpatch_rows(lm, prompt, layers, seed=0):
        """bench_engine's back-patching rows, its random vectors drawn on the CPU as there, then moved."""
        _, acts = run_with_cache(lm, [prompt], components=("resid_post",))
        _, other = run_with_cache(lm, [UNRELATED], components=("resid_post",))
        g = torch.Generator().manual_seed(seed)
        rows = []
        for cond in be.CONDITIONS:
            for s in layers:
                for t in layers:
                    if (s > t) if cond != "forward" else (s < t):
                        h = acts["resid_post", s][0, -1]
                        if cond == "random":
                            r = torch.randn(h.shape, generator=g).to(h.device)
                            h = r / r.norm() * h.norm()
                        elif cond == "unrelated":
                            h = other["resid_post", s][0, -1]
                        rows.append([replace(Site(t, "resid_post", -1), h)])
        return rows

    be.timed, be.matmul_gflops, be.bench_cache, be._backpatch_rows = timed, matmul_gflops, bench_cache, backpatch_rows
    return be


def benchmarks(lm, device: torch.device, quick: bool, repeats: int) -> None:
    be = load_bench_engine(device)
    print(f"\nmodel {lm.name} on {device}: {lm.n_layers} layers, d_model {lm.d_model}; "
          f"matmul throughput at its shapes {be.matmul_gflops(lm):.1f} GFLOP/s (float32)")
    # "patch" runs last: its TransformerLens peer (TransformerBridge.boot_transformers(hf_model=lm.model))
    # changes the model in place, and every workload after it would measure a different model
    steps = [("cache", lambda: be.bench_cache(lm, repeats)),
             ("backpatch", lambda: be.bench_backpatch(lm, repeats, 8 if quick else 40, quick)),
             ("knowledge", lambda: be.bench_knowledge(lm, repeats, quick)),
             ("patch", lambda: be.bench_patch(lm, repeats))]
    for name, fn in steps:
        t = time.perf_counter()
        fn()
        print(f"  ({name}: {time.perf_counter() - t:.1f} s)")
        peak(device, name)


# ---- main -------------------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    ap.add_argument("--model", default=None, help="model (default: the embedded SmolLM2-135M-Instruct)")
    ap.add_argument("--quick", action="store_true", help="small benchmark sizes")
    ap.add_argument("--skip-bench", action="store_true", help="invariants only")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda but no CUDA device is visible (use --device cpu to check the script)")
    t0 = time.perf_counter()
    torch.set_grad_enabled(False)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {device} ({name}); torch {torch.__version__}; load average {os.getloadavg()}")
    tol = 1e-4 if device.type == "cuda" else 1e-5
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        for family in FAMILIES:
            lm = tiny(family)
            lm.model.to(device)
            invariants(lm, f"tiny-{family}", tol, exact_tokens=device.type == "cpu")
        src = tiny("llama")
        folder = Path(tmp) / "tiny-llama"
        src.model.save_pretrained(folder)
        src.tokenizer.save_pretrained(folder)
        plain = hopscope.load_model(str(folder), device=device)
        offload(folder, plain, "tiny-llama", tol, device, Path(tmp))
        lm16 = tiny("llama")
        lm16.model.to(device=device, dtype=torch.bfloat16)
        float32_scores(plain, lm16, "tiny-llama")
        peak(device, "tiny models")
        lm = hopscope.load_model(args.model, device=device)
        tol = 1e-3  # a real model's logits reach ~30: float32 noise of 1e-4 is 3e-6 relative
        invariants(lm, lm.name, tol, exact_tokens=device.type == "cpu")
        float32_scores(lm, hopscope.load_model(args.model, device=device, dtype="bfloat16"), lm.name)
        folder = Path(lm.source)
        if folder.is_dir():
            offload(folder, lm, lm.name, tol, device, Path(tmp))
        peak(device, "default model")
        if not args.skip_bench:
            benchmarks(lm, device, args.quick, args.repeats)
    print(f"\n{len(FAILED)} invariant checks failed{': ' + ', '.join(FAILED) if FAILED else ''}; "
          f"total {time.perf_counter() - t0:.0f} s; load average {os.getloadavg()}")
    sys.exit(1 if FAILED else 0)


if __name__ == "__main__":
    main()
