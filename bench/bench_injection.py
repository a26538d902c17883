"""Benchmark: the memory-injection grid as one forward per cell vs the batched paths, in the same run.

    python3 bench/bench_injection.py                     # default model, 1 prompt, 30 layers x taus 1..15
    python3 bench/bench_injection.py --tiny --taus 1 5   # seconds, on a tiny random Llama

Paths: ``loop`` (one engine ``run`` per cell, the naive baseline), ``engine`` (rows batched through the
engine's ``run``), ``shared`` (rows of a layer share the layers below it). The same for last-position-only
injection, where ``shared`` is the engine's ``run_last_position`` (prefix KV cache). Prints seconds,
speed-ups over the loop and the largest logit / answer-probability difference from the loop.
"""

from __future__ import annotations

import argparse
import time

import torch

from hopscope.engine import Site, add, run
from hopscope.methods.injection import MemoryBank, answer_id, inject

PROMPT = "The first president of the United States fought in the"
MEMORY, ANSWER = "George Washington", "Revolutionary War"


def loop(lm, prompt, layers, vecs, positions):
    pos = None if positions == "all" else -1
    return torch.cat([run(lm, [prompt], [[add(Site(l, "attn_out", pos), v)]], last_only=True).logits.cpu()
                      for l, v in zip(layers, vecs)])


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny random Llama instead of the default model")
    ap.add_argument("--taus", type=float, nargs="+", default=[float(t) for t in range(1, 16)])
    ap.add_argument("--layers", type=int, nargs="+", default=None, help="default: every layer")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--positions", nargs="+", default=["all", "last"], choices=["all", "last"])
    ap.add_argument("--threads", type=int, default=None, help="torch threads (1 is fastest on a busy machine)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    import hopscope
    from hopscope.models import tiny

    lm = tiny("llama", n_layers=6) if args.tiny else hopscope.load_model()
    torch.set_grad_enabled(False)
    layers_sel = args.layers if args.layers is not None else list(range(lm.n_layers))
    mem = MemoryBank(lm, "unembed").vector(MEMORY)
    layers = [l for l in layers_sel for _ in args.taus]
    vecs = torch.stack([t * mem for _ in layers_sel for t in args.taus])
    aid = answer_id(lm, ANSWER)
    print(f"model {lm.name}: {len(layers_sel)} layers x {len(args.taus)} taus = {len(layers)} cells, "
          f"prompt of {len(lm.to_ids(PROMPT))} tokens, torch threads {torch.get_num_threads()}")
    inject(lm, PROMPT, layers[:2], vecs[:2])  # warm-up
    for positions in args.positions:
        ref, t_loop = timed(lambda: loop(lm, PROMPT, layers, vecs, positions))
        p_ref = torch.softmax(ref, -1)[:, aid]
        print(f"\npositions={positions}: loop {t_loop:.2f} s ({t_loop / len(layers) * 1e3:.0f} ms/cell)")
        for method in ("engine", "shared"):
            if positions == "last" and method == "engine":
                label = "engine (batched run)"
            elif positions == "last":
                label = "shared (run_last_position)"
            else:
                label = method
            got, t = timed(lambda: inject(lm, PROMPT, layers, vecs, positions=positions, method=method,
                                          batch_size=args.batch_size))
            dlog = (got - ref).abs().max().item()
            dp = (torch.softmax(got, -1)[:, aid] - p_ref).abs().max().item()
            print(f"  {label:<28} {t:7.2f} s  speed-up x{t_loop / t:5.1f}  max |dlogit| {dlog:.2e}  "
                  f"max |dp(answer)| {dp:.2e}")


if __name__ == "__main__":
    main()
