"""Two toy analyses with claims, for testing the study loop, resume and sweeps without real model work."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import torch

from hopscope.engine import run
from hopscope.pipeline import Analysis, Context, Stage
from hopscope.results import Headline, Result, Section
from hopscope.stats import claims_frame, share_vs

PROMPTS = ["The capital of France is", "One, two, three,", "The sky is", "Water boils at", "My name is",
           "The Eiffel Tower is in", "Cats are", "The best way to"]


@dataclass
class ToySettings:
    prompts: int = 8
    per_shard: int = 2
    seed: int = 0

    @classmethod
    def quick(cls) -> "ToySettings":
        return cls(prompts=4)

    @classmethod
    def study(cls) -> "ToySettings":
        return cls()

    def to_dict(self) -> dict:
        return asdict(self)


def _plan(ctx: Context) -> list[list[int]]:
    n, k = ctx.settings.prompts, ctx.settings.per_shard
    return [list(range(i, min(i + k, n))) for i in range(0, n, k)]


def _work(lm, ctx: Context, shard) -> dict[str, pd.DataFrame]:
    prompts = [PROMPTS[i % len(PROMPTS)] for i in shard.payload]
    logits = run(lm, prompts, last_only=True).logits
    g = torch.Generator().manual_seed(shard.seed)
    noise = torch.rand(len(prompts), generator=g)
    return {"scores": pd.DataFrame({"qid": [f"p{i}" for i in shard.payload], "top": logits.argmax(-1).tolist(),
                                    "entropy": torch.distributions.Categorical(logits=logits).entropy().tolist(),
                                    "noise": noise.tolist()})}


def _finish(name: str):
    def finish(ctx: Context) -> Result:
        t = ctx.tables["scores"]
        claim = share_vs(id=f"{name}.noise_high", analysis=name, statement="noise exceeds one half",
                         paper="none", paper_value="", measure="share of prompts with noise > 0.5",
                         flags=(t["noise"] > 0.5).to_numpy(), null=0.5, seed=ctx.settings.seed)
        return Result(name, ctx.settings.to_dict(), {"scores": t},
                      headline=[Headline("mean entropy", float(np.mean(t["entropy"])), n=len(t))],
                      claims=claims_frame([claim]),
                      sections=[Section(f"{name} scores", "Entropy of each prompt's next token.",
                                        tables={"per prompt": "scores"})])
    return finish


TOY_A = Analysis("toy_a", ToySettings, [Stage("scores", _plan, _work)], _finish("toy_a"))
TOY_B = Analysis("toy_b", ToySettings, [Stage("scores", _plan, _work)], _finish("toy_b"))
ANALYSES = {"toy_a": TOY_A, "toy_b": TOY_B}
