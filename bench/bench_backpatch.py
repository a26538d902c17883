"""Back-patching speed: the seed's per-pair re-run vs hopscope's shared-prefix batched path.

One two-hop query from the built-in world facts, every back pair s > t (435 on the 30-layer default
model), N = 1 and N = 10 new tokens. The naive side runs the full prompt and then decodes, once per
pair (what the seed did); ``--pairs K`` times only K evenly spaced pairs there and scales the time to
all pairs (said in the output). hopscope runs all pairs. Printed: wall times, the speed-up, the max
difference of first-token logits and the share of identical generations on the pairs both ran, and the
wall time of one query's full sweep (4 conditions + the first-hop variant).

    python3 bench/bench_backpatch.py                 # default model, all 435 pairs on both sides
    python3 bench/bench_backpatch.py --pairs 40      # naive side on 40 pairs, scaled
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model (default: embedded SmolLM2-135M-Instruct)")
    ap.add_argument("--pairs", type=int, default=None, help="naive side: time this many pairs and scale")
    ap.add_argument("--tokens", default="1,10", help="comma-separated N values")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--composition", default="capital_country_currency")
    ap.add_argument("--skip-sweep", action="store_true", help="skip the per-query full sweep timing")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice); "
                    "on a shared, oversubscribed machine 1 is often fastest for both sides")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    import hopscope
    from hopscope.data import build_two_hop
    from hopscope.engine import Site, replace, run_with_cache
    from hopscope.methods.backpatch import alias_stopper, backpatch_query, layer_pairs, naive_decode, patched_decode
    from hopscope.methods.resolution import answer_aliases

    t = time.perf_counter()
    lm = hopscope.load_model(args.model)
    print(f"model {lm.name} ({lm.n_layers} layers) loaded in {time.perf_counter() - t:.1f}s; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}, "
          f"load average {os.getloadavg()[0]:.1f}")
    q = build_two_hop(args.composition, n=1)[0]
    n_tok = len(lm.to_ids(q.prompt))
    print(f"query {q.qid}: {n_tok} prompt tokens, answer {q.e3!r}")
    _, acts = run_with_cache(lm, q.prompt)
    pairs = layer_pairs(range(lm.n_layers), "back")
    rows = [[replace(Site(t, "resid_post", -1), acts["resid_post", s][0, -1])] for s, t in pairs]
    k = len(pairs) if args.pairs is None else max(1, min(args.pairs, len(pairs)))
    sub = sorted({round(i * (len(pairs) - 1) / max(1, k - 1)) for i in range(k)}) if k < len(pairs) else list(range(len(pairs)))
    patched_decode(lm, q.prompt, rows[:2], max_new_tokens=2)  # warm-up (prefix cache, kernels)
    naive_decode(lm, q.prompt, rows[:1], max_new_tokens=2)

    for n in [int(x) for x in args.tokens.split(",")]:
        t = time.perf_counter()
        naive = naive_decode(lm, q.prompt, [rows[i] for i in sub], max_new_tokens=n)
        t_naive = (time.perf_counter() - t) * len(pairs) / len(sub)
        t = time.perf_counter()
        fast = patched_decode(lm, q.prompt, rows, max_new_tokens=n, batch_size=args.batch_size, keep_logits=True)
        t_fast = time.perf_counter() - t
        t = time.perf_counter()
        patched_decode(lm, q.prompt, rows, max_new_tokens=n, batch_size=args.batch_size,
                       stop=alias_stopper(lm, answer_aliases(q)))
        t_prune = time.perf_counter() - t
        diff = (fast.first_logits[sub] - naive.first_logits).abs().max().item()
        same = sum(fast.tokens[i] == naive.tokens[j] for j, i in enumerate(sub)) / len(sub)
        scaled = f" (timed on {len(sub)} pairs, scaled to {len(pairs)})" if len(sub) < len(pairs) else ""
        print(f"N={n:>2}: naive {t_naive:8.2f}s{scaled} | hopscope {t_fast:6.2f}s -> {t_naive / t_fast:5.1f}x"
              f" | hopscope+prune {t_prune:6.2f}s -> {t_naive / t_prune:5.1f}x"
              f" | max |first-token logit diff| {diff:.2e} | identical generations {same:.1%}")
    if not args.skip_sweep:
        t = time.perf_counter()
        df = backpatch_query(lm, q, max_new_tokens=10, batch_size=args.batch_size)
        print(f"one query, full sweep ({len(df)} rows: back/forward/random/unrelated + first-hop back, N=10, pruned): "
              f"{time.perf_counter() - t:.1f}s")


if __name__ == "__main__":
    main()
