"""The claims the repair analysis tests, each with its rule stated before the result.

None of the four papers makes these claims: each reports repairs chosen and scored on the same prompts (an
oracle). Every claim here is measured on held-out queries (no query and no bridge entity seen when choosing),
paired per query, with the exact McNemar test on per-query correctness (value: accuracy with the policy minus
accuracy of the comparison, bootstrap interval of the paired difference):

* ``repair.<policy>_beats_none`` for ``backpatch``, ``self_injection``, ``gold_injection`` (the oracle upper
  bound: the gold bridge) and ``mitigation``: the policy raises held-out accuracy over no repair (net change:
  fixes minus breaks, over n);
* ``repair.backpatch_beats_random``, ``repair.self_injection_beats_random``, ``repair.mitigation_beats_random``:
  the policy beats its control (random vectors of the same norms at the same sites; a random memory of as many
  tokens in the same cell; a random edit of the same kind and size).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

from hopscope.methods.repair.policies import CONTROLS
from hopscope.stats import Claim, rate_vs_control

if TYPE_CHECKING:
    from hopscope.methods.repair.settings import Settings

ANALYSIS = "repair"
PAPERS = {"backpatch": "Biran et al. 2024, Hopping Too Late (EMNLP)",
          "self_injection": "Sakarvadia et al. 2023, Memory Injections (arXiv 2309.05605)",
          "gold_injection": "Sakarvadia et al. 2023, Memory Injections (arXiv 2309.05605)",
          "mitigation": "Lv et al. 2024, Interpreting Key Mechanisms of Factual Recall (arXiv 2403.19521)"}
PAPER_VALUES = {
    "backpatch": "in-sample oracle only: some (s, t), chosen per query, fixes up to 57% of the incorrect queries "
                 "(arXiv v1; v2: up to 66%; LLaMA 2/3)",
    "self_injection": "not tested in the paper (it injects the gold bridge, chosen and scored on the same prompts)",
    "gold_injection": "in-sample: injecting the bridge raises p(answer) by up to +424% (GPT-2, handwritten pairs), "
                      "the best layer and tau chosen on the same prompts",
    "mitigation": "qualitative: mitigating final-layer suppression raises recall confidence (single-hop prompts)"}
WHAT = {"backpatch": "the fixed back-patch chosen on train ({c})",
        "self_injection": "injecting the model's own first-hop answer at the cell chosen on train ({c})",
        "gold_injection": "injecting the gold bridge e2 at the self-injection's cell ({c}; the oracle upper bound)",
        "mitigation": "the recall analysis's final-layer mitigation ({c})"}
CONTROL_TEXT = {"backpatch_random": "random vectors of the same norms at the same sites",
                "random_injection": "a random memory of as many tokens in the same cell",
                "mitigation_random": "a random edit of the same kind and size"}


def claims(tables: dict[str, pd.DataFrame], settings: "Settings") -> list[Claim]:
    """The repair claims from the held-out table (a policy that did not run has no claim)."""
    ho = tables.get("heldout")
    if ho is None or not len(ho):
        return []
    wide = ho.pivot(index="qid", columns="policy", values="correct").astype(float)
    names = ho.drop_duplicates("policy").set_index("policy")["candidate"]
    out: list[Claim] = []
    measure = "held-out accuracy (alias in the first {} greedy tokens), paired per query".format(
        settings.rule.max_new_tokens)
    for policy in ("backpatch", "self_injection", "gold_injection", "mitigation"):
        if policy not in wide:
            continue
        what = WHAT[policy].format(c=names[policy])
        out.append(rate_vs_control(
            f"repair.{policy}_beats_none", wide[policy].to_numpy(), wide["none"].to_numpy(), analysis=ANALYSIS,
            statement=f"On held-out queries (no query or bridge entity seen when choosing), {what} raises accuracy "
                      "over no repair: it fixes more incorrect compositions than it breaks correct ones",
            paper=PAPERS[policy], paper_value=PAPER_VALUES[policy], measure=measure, control_label="no repair",
            seed=settings.seed))
    for policy in ("backpatch", "self_injection", "mitigation"):
        control = CONTROLS[policy]
        if policy not in wide or control not in wide:
            continue
        what = WHAT[policy].format(c=names[policy])
        out.append(rate_vs_control(
            f"repair.{policy}_beats_random", wide[policy].to_numpy(), wide[control].to_numpy(), analysis=ANALYSIS,
            statement=f"On held-out queries, {what} gives higher accuracy than {CONTROL_TEXT[control]}",
            paper=PAPERS[policy], paper_value=PAPER_VALUES[policy], measure=measure,
            control_label=CONTROL_TEXT[control], seed=settings.seed))
    return out
