"""The claims of Biran et al. 2024 ("Hopping Too Late") that the hopping analysis tests.

* ``hop.resolve_order`` - the bridge e2 is decodable (Patchscope from t1) at an earlier layer than the answer
  e3 (Patchscope from the last token): per query, ``e3_resolved_layer - e1_resolved_layer``, mean against 0
  (queries where both resolve; both groups).
* ``hop.backpatch_fix`` - some back-patch (s > t, last position) fixes a share of the incorrect shortcut-free
  compositions: the per-query oracle verdict against the same oracle over the random-vector control, paired
  per query (exact McNemar); ``hop.backpatch_fix.unrelated`` and ``hop.backpatch_fix.forward`` against the
  unrelated-prompt and forward-patch controls. The controls go beyond the paper.
* ``hop.backpatch_break`` - back-patches rarely break correct compositions: per correct shortcut-free query, the
  share of its back-patches that make it wrong, mean against 0.5 (direction: less).
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from hopscope.stats import Claim, mean_vs_zero, rate_vs_control

ANALYSIS = "hopping"
PAPER = "Biran et al. 2024, Hopping Too Late (EMNLP)"
FIX_PAPER_VALUE = ("up to 57% of incorrect queries are fixed by some back-patch (arXiv v1 abstract; v2 says up to "
                   "66%), over LLaMA 2 7B/13B and LLaMA 3 8B/70B")
ORDER_PAPER_VALUE = ("e2 is decoded from t1 in early layers, e3 from the last token only in later layers "
                     "(LLaMA 2 7B/13B, LLaMA 3 8B/70B; Fig. 3)")
CONTROL_LABELS = {"random": "random vector of the same norm", "unrelated": "states of an unrelated prompt",
                  "forward": "the same states patched forward (s < t)"}


def claims(tables: dict[str, pd.DataFrame], settings: Any, n_layers: int | None = None) -> list[Claim]:
    """The hopping claims from the finished tables (``backpatch_queries``, ``stages``); a claim whose stage did
    not run (``resolve=False`` / ``backpatch=False``) is left out, one without units has n = 0."""
    out: list[Claim] = []
    grid = _grid_note(settings, n_layers)
    if settings.resolve:
        stages = tables.get("stages", pd.DataFrame(columns=["e1_resolved_layer", "e3_resolved_layer"]))
        diff = (stages["e3_resolved_layer"] - stages["e1_resolved_layer"]).to_numpy(dtype=float)
        out.append(mean_vs_zero(
            "hop.resolve_order", diff, analysis=ANALYSIS, paper=PAPER, paper_value=ORDER_PAPER_VALUE,
            statement="The bridge e2 is decodable from e1's last token at an earlier layer than the answer e3 "
                      "from the last token.",
            measure="per-query layer of e3 (Patchscope at the last token) minus layer of e2 (Patchscope at t1)",
            control_label="no difference (0 layers)", seed=settings.seed))
    if not settings.backpatch:
        return out
    bq = tables.get("backpatch_queries", pd.DataFrame(columns=["qid", "group", "variant", "condition", "fixed",
                                                                "break_frac"]))
    last = bq[bq["variant"] == "last"]
    wrong = last[last["group"] == "incorrect"]
    back = wrong[wrong["condition"] == "back"].set_index("qid")["fixed"].astype(float)
    controls = [c for c in ("random", "unrelated", "forward") if c in settings.controls and "last" in
                settings.control_variants]
    statement = ("Some back-patch (s > t, at the last token) fixes a share of the incorrect shortcut-free "
                 "compositions, more often than {} does.")
    measure = f"oracle fix rate (some (s, t) answers right{grid})"
    for i, control in enumerate(controls):
        ctrl = wrong[wrong["condition"] == control].set_index("qid")["fixed"].astype(float)
        ctrl = ctrl.reindex(back.index)  # a query without this control (no unrelated partner) drops out
        out.append(rate_vs_control(
            "hop.backpatch_fix" + ("" if i == 0 else f".{control}"), back.to_numpy(), ctrl.to_numpy(dtype=float),
            analysis=ANALYSIS, paper=PAPER, paper_value=FIX_PAPER_VALUE,
            statement=statement.format(f"the control with {CONTROL_LABELS[control]}"), measure=measure,
            control_label=CONTROL_LABELS[control], seed=settings.seed))
    if not controls:
        out.append(rate_vs_control(
            "hop.backpatch_fix", back.to_numpy(), null=0.0, analysis=ANALYSIS, paper=PAPER,
            paper_value=FIX_PAPER_VALUE, statement=statement.format("chance (no control was run)"),
            measure=measure, seed=settings.seed))
    right = last[(last["group"] == "correct") & (last["condition"] == "back")]
    out.append(mean_vs_zero(
        "hop.backpatch_break", right["break_frac"].to_numpy(dtype=float), null=0.5, direction="less",
        analysis=ANALYSIS, paper=PAPER, paper_value="(not a figure of the paper: hopscope's check of the method)",
        statement="Back-patches rarely break correct compositions: fewer than half of the back-patches (s > t, at "
                  "the last token) of a correct shortcut-free composition make it wrong.",
        measure=f"per-query share of back-patches that make a correct composition wrong{grid}",
        control_label="half of the back-patches", seed=settings.seed))
    return out


def _grid_note(settings: Any, n_layers: int | None) -> str:
    spec = getattr(settings, "layers", None)
    if spec is None:
        return ", every layer pair"
    k = spec if isinstance(spec, int) else len(spec)
    return f", over a {k}-layer grid" + (f" of {n_layers} layers; the paper uses every pair" if n_layers else "")
