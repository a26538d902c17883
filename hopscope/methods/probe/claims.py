"""The claims of Hou et al. (2023) that the probe tests: attention encodes which inputs are used
(``probe.useful``) and at which step of the reasoning tree (``probe.step``).

Rule, fixed before the results: the measure is the probing score S = (F1 - F1_random_init) / (1 -
F1_random_init), the macro-F1 of the out-of-fold kNN predictions on the probed model against the mean over
random initialisations of its architecture (S = 0: no better than random weights). Its 95% interval is the
percentile interval of bootstrap replicates over prompts (both models' predictions resampled together); the
test is a permutation test: the labels are permuted within each prompt (the same permutation for the probed
model and the random inits, every probe re-voted) and S recomputed, ``n_permutations`` times; p is the
two-sided permutation p-value and the control value the null's mean (about 0). Supported = S above the
control, the interval above it and the Holm-adjusted p below 0.05 (:data:`hopscope.stats.VERDICT_RULE`).
"""

from __future__ import annotations

import pandas as pd

from hopscope.methods.probe.settings import Settings
from hopscope.stats import claims_frame, scores_vs_permutation

PAPER = "Hou et al. 2023, Towards a Mechanistic Interpretation of Multi-Step Reasoning Capabilities of LMs"
STATEMENTS = {
    "useful": "the model's attention encodes which inputs (statements) its reasoning uses: a kNN probe on "
              "attention separates the reasoning tree's statements from noise better than on a random-init model",
    "step": "the model's attention encodes at which step of the reasoning tree each used statement enters: a kNN "
            "probe on attention recovers its depth better than on a random-init model",
}
PAPER_VALUES = {
    "useful": "S_P1 well above 0: MechanisticProbe detects the tree for most examples (GPT-2 on k-th smallest; "
              "LLaMA on ProofWriter)",
    "step": "S_P2 well above 0 (same models)",
}


def claims(tables: dict[str, pd.DataFrame], settings: Settings) -> pd.DataFrame:
    """``probe.useful`` and ``probe.step`` from the ``probe_*`` tables."""
    scores, null, boot = tables.get("probe_scores"), tables.get("probe_null"), tables.get("probe_bootstrap")
    out = []
    if scores is None or null is None or boot is None:
        return claims_frame(out)
    for task in ("useful", "step"):
        row = scores[(scores["task"] == task) & (scores["model"] == "model")]
        if row.empty:
            continue
        r = row.iloc[0]
        what = "k-th smallest lists" if settings.kth else "ProofWriter questions"
        out.append(scores_vs_permutation(
            f"probe.{task}", float(r["S"]), null.loc[null["task"] == task, "S"].to_numpy(),
            observed_samples=boot.loc[boot["task"] == task, "S"].to_numpy(), n_units=int(r["n_prompts"]),
            analysis="probe", statement=STATEMENTS[task], paper=PAPER, paper_value=PAPER_VALUES[task],
            measure=f"probing score S (macro-F1 {r['f1']:.3f} vs random init {r['f1_random_mean']:.3f}; "
                    f"{int(r['n_rows'])} statements of {int(r['n_prompts'])} {what})",
            control_label=f"random-init model (S = 0; {settings.n_random_init} init(s)); null: labels permuted "
                          f"within prompts ({settings.n_permutations}x)",
            direction="greater", n_resamples=settings.n_bootstrap))
    return claims_frame(out)
