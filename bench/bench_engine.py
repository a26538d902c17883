"""Engine benchmarks on the default model, each a ratio against the naive way measured in the same run.

1. Caching every layer's resid_post vs a plain forward (target <= 1.3x).
2. Patching the last-token residual of a clean prompt into a corrupted prompt at each of the L layers:
   naive (L separate full forwards) vs the engine's batched run vs the last-position fast path
   (target: fast path >= 10x faster than naive), with the max abs logit difference between them.

Usage: python bench/bench_engine.py [--model NAME] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import hopscope
from hopscope.engine import Site, replace, run, run_last_position, run_with_cache


def best_of(fn, repeats: int) -> float:
    """Median wall time of ``fn`` over ``repeats`` calls (after one warm-up)."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    lm = hopscope.load_model(args.model)
    clean = "The Eiffel Tower is located in the city of"
    corrupt = "The Colosseum is located in the city of"
    L = lm.n_layers
    print(f"model {lm.name} ({L} layers), torch threads {torch.get_num_threads()}")

    ids = torch.tensor([lm.to_ids(clean)])
    plain = best_of(lambda: lm.model(input_ids=ids), args.repeats)
    cached = best_of(lambda: run_with_cache(lm, [clean], components=("resid_post",)), args.repeats)
    print(f"[cache] plain forward {plain * 1e3:.1f} ms | cache all resid_post {cached * 1e3:.1f} ms | "
          f"ratio {cached / plain:.2f}x (target <= 1.3x)")

    _, acts = run_with_cache(lm, [clean], components=("resid_post",))
    rows = [[replace(Site(l, "resid_post", -1), acts["resid_post", l][0, -1])] for l in range(L)]

    def naive():
        return torch.cat([run(lm, [corrupt], [r], last_only=True).logits for r in rows])

    def batched():
        return run(lm, [corrupt] * L, rows, last_only=True).logits

    def fast():
        from hopscope.engine import fast as fast_mod

        fast_mod._PREFIX_CACHE.clear()  # count the prefix pass in every repeat
        return run_last_position(lm, corrupt, rows).logits

    t_naive, t_batched, t_fast = (best_of(f, args.repeats) for f in (naive, batched, fast))
    a, b, c = naive(), batched(), fast()
    print(f"[patch x{L} layers] naive {t_naive * 1e3:.1f} ms | batched {t_batched * 1e3:.1f} ms "
          f"({t_naive / t_batched:.1f}x) | fast path {t_fast * 1e3:.1f} ms ({t_naive / t_fast:.1f}x, target >= 10x)")
    print(f"  max |logit diff| naive-batched {(a - b).abs().max().item():.2e}, naive-fast {(a - c).abs().max().item():.2e}")


if __name__ == "__main__":
    main()
