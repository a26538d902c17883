"""The repair report: the only place with prose and figures. :func:`build_report` fills a Result's ``figures``,
``headline`` and ``sections`` from its tables and claims."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from hopscope.engine import normalise_text
from hopscope.methods.repair.summary import beats
from hopscope.report.figures import heatmap, interval_plot
from hopscope.results import Headline, Section
from hopscope.stats import VERDICT_RULE

if TYPE_CHECKING:
    from hopscope.methods.repair.settings import Settings
    from hopscope.results import Result

LABELS = {"backpatch": "fixed back-patch", "backpatch_random": "random-vector back-patch (control)",
          "self_injection": "self-injection (own first-hop answer)", "gold_injection": "gold-bridge injection (oracle)",
          "random_injection": "random-memory injection (control)", "mitigation": "final-layer mitigation",
          "mitigation_random": "random final-layer edit (control)", "none": "no repair"}


def _fmt(v: Any, signed: bool = False) -> str:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return str(v)
    if not np.isfinite(x):
        return "n/a"
    return f"{x:+.3f}" if signed else f"{x:.3f}"


# ---- figures ----------------------------------------------------------------------------------------------
def net_figure(summary: pd.DataFrame) -> Figure:
    rows = [{"label": LABELS.get(r.policy, r.policy), "value": r.net, "low": r.net_low, "high": r.net_high,
             "n": int(r.n)} for r in summary.itertuples()]
    return interval_plot(rows, title="Held-out change in accuracy (fixes minus breaks, over n), 95% interval",
                         xlabel="accuracy with the policy minus accuracy without", reference=0.0,
                         reference_label="no repair")


def fix_break_figure(summary: pd.DataFrame) -> Figure:
    """Fix rate (incorrect group) and break rate (correct group) per policy, exact 95% intervals."""
    fig = Figure(figsize=(max(6.0, 1.1 * len(summary) + 2), 4.2), layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(len(summary))
    for off, (col, label, colour) in zip((-0.2, 0.2), (("fix", "fix rate (incorrect group)", "C2"),
                                                       ("break", "break rate (correct group)", "C3"))):
        v = summary[f"{col}_rate"].to_numpy(float)
        lo, hi = summary[f"{col}_low"].to_numpy(float), summary[f"{col}_high"].to_numpy(float)
        ax.bar(x + off, np.nan_to_num(v), 0.4, yerr=[np.nan_to_num(v - lo), np.nan_to_num(hi - v)], capsize=3,
               color=colour, label=label)
    ax.set_xticks(x, [LABELS.get(p, p) for p in summary["policy"]], rotation=30, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("share of held-out queries")
    ax.set_title("Held-out fixes and breaks")
    ax.legend(fontsize=8, frameon=False)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return fig


def train_figures(candidates: pd.DataFrame) -> dict[str, Figure]:
    figs: dict[str, Figure] = {}
    bp = candidates[candidates["policy"] == "backpatch"]
    if len(bp) and bp["s"].nunique() > 1:
        m = bp.pivot_table(index="s", columns="t", values="net", aggfunc="mean").sort_index()
        m.index.name, m.columns.name = "s (source layer)", "t (patched layer)"
        figs["train_backpatch"] = heatmap(m, title="Back-patch (s, t): net accuracy gain on train",
                                          colorbar_label="net gain", center=0.0)
    inj = candidates[candidates["policy"] == "self_injection"]
    if len(inj) > 1:
        m = inj.pivot_table(index="layer", columns="tau", values="net", aggfunc="mean").sort_index()
        m.index.name, m.columns.name = "layer", "tau"
        figs["train_injection"] = heatmap(m, title="Self-injection (layer, tau): net accuracy gain on train",
                                          colorbar_label="net gain", center=0.0)
    return figs


# ---- prose --------------------------------------------------------------------------------------------------
def design_text(t: dict[str, pd.DataFrame], s: "Settings") -> str:
    kn, split = t["knowledge"], t["split"]
    counts = kn["group"].value_counts().to_dict()
    if not len(split):
        return (f"{len(kn)} two-hop queries went through the knowledge filter: {counts.get('correct', 0)} correct and "
                f"{counts.get('incorrect', 0)} incorrect with both hops known (the rest shortcut-solvable or with a hop "
                "unknown). Nothing was repaired: a split by bridge entity needs at least two such queries about two "
                "different bridges (more data, or a model that knows both hops).")
    by = split.groupby(["split", "group"]).size().to_dict()
    ents = split.groupby("split")["entity"].nunique().to_dict()
    return (f"{len(kn)} two-hop queries went through the knowledge filter ({counts.get('correct', 0)} correct, "
            f"{counts.get('incorrect', 0)} incorrect with both hops known, {counts.get('shortcut', 0)} "
            f"shortcut-solvable, {counts.get('hops_unknown', 0)} with a hop unknown). The {len(split)} correct and "
            f"incorrect ones are split by bridge entity: train {by.get(('train', 'incorrect'), 0)} incorrect + "
            f"{by.get(('train', 'correct'), 0)} correct ({ents.get('train', 0)} bridge entities), held-out "
            f"{by.get(('held-out', 'incorrect'), 0)} incorrect + {by.get(('held-out', 'correct'), 0)} correct "
            f"({ents.get('held-out', 0)} bridge entities); no bridge entity is on both sides. Answers are matched by "
            f"one rule: {s.rule.to_dict()['rule']}. Back-patches and injections act on the prompt pass only "
            f"(generated tokens see them through the KV cache), as in the papers; the mitigation is an edit of "
            f"the model, applied at every prompt position and every generated token. {memory_text(t['memories'])}")


def memory_text(mem: pd.DataFrame) -> str:
    if not len(mem):
        return ""
    own, gold = mem["self_memory"].map(normalise_text), mem["gold_memory"].map(normalise_text)
    same = (own == gold) & own.ne("")
    return (f"The model's own first-hop answer (the self memory) names the bridge e2 for "
            f"{int(mem['self_has_bridge'].sum())} of {len(mem)} queries and is exactly the gold bridge for "
            f"{int(same.sum())}; {int((mem['memory_tokens'] == 0).sum())} have no self memory (their self and "
            "random injections are no-ops).")


def choice_text(choices: pd.DataFrame) -> str:
    parts = []
    for r in choices.itertuples():
        oracle = (f"; the in-sample oracle (some candidate, chosen per query, as the papers report) fixes "
                  f"{r.oracle_fixed} of {r.oracle_n_incorrect} training incorrect queries" if r.oracle_n_incorrect
                  else "")
        parts.append(f"{r.family}: {r.chosen or 'nothing'} (of {r.candidates} candidate{'s' * (r.candidates != 1)}; "
                     f"{r.chosen_by}; net gain on "
                     f"train {_fmt(r.train_net, True)} over {r.n_train} queries, {r.train_fixed} fixed, "
                     f"{r.train_broke} broken{oracle})")
    return "Chosen on the training queries: " + "; ".join(parts) + "." if parts else "No policy ran."


def heldout_text(summary: pd.DataFrame, claims: pd.DataFrame) -> str:
    if not len(summary):
        return "No held-out queries were scored."
    lines = []
    for r in summary.itertuples():
        control = (f", p = {_fmt(r.p_vs_control)} vs its control ({LABELS.get(r.control, r.control)})"
                   if r.control else "")
        lines.append(f"{r.rank}. {LABELS.get(r.policy, r.policy)} [{r.candidate}]: net {_fmt(r.net, True)} "
                     f"[{_fmt(r.net_low, True)}, {_fmt(r.net_high, True)}] (n={r.n}); fixes {r.fixed}/{r.n_incorrect} "
                     f"({_fmt(r.fix_rate)} [{_fmt(r.fix_low)}, {_fmt(r.fix_high)}]), breaks {r.broke}/{r.n_correct} "
                     f"({_fmt(r.break_rate)} [{_fmt(r.break_low)}, {_fmt(r.break_high)}]); McNemar p = "
                     f"{_fmt(r.p_vs_none)} vs no repair{control}")
    verdicts = dict(zip(claims["id"], claims["verdict"])) if len(claims) else {}
    winners = [p for p in ("backpatch", "self_injection", "mitigation")
               if verdicts.get(f"repair.{p}_beats_none") == "supported"]
    over_control = [p for p in ("backpatch", "self_injection", "mitigation")
                    if verdicts.get(f"repair.{p}_beats_random") == "supported"]
    if winners:
        verdict = ("Policies that beat no repair on held-out queries (claim supported): "
                   + ", ".join(LABELS[p] for p in winners) + ".")
    else:
        above = [p for p in beats(summary) if p != "gold_injection"]
        verdict = ("No deployable policy beats no repair on held-out queries: no beats_none claim is supported"
                   + (f" (the interval of {', '.join(LABELS[p] for p in above)} is above zero, but the Holm-adjusted "
                      "test does not agree)" if above else "") + ".")
    if not over_control:
        verdict += " Nothing beats its control on held-out queries (no beats_random claim is supported)."
    else:
        verdict += " Beats its control: " + ", ".join(LABELS[p] for p in over_control) + "."
    if verdicts.get("repair.gold_injection_beats_none") == "supported" and "self_injection" not in winners:
        verdict += (" The gold bridge does beat no repair: the cell works when the memory is right, and the model's "
                    "own first-hop answer is not a good enough memory.")
    return ("Ranked by net held-out change in accuracy:\n" + "\n".join(lines) + "\n\n" + verdict)


def build_report(result: "Result", s: "Settings") -> None:
    t = result.tables
    summary, claims = t["summary"], result.claims
    if len(summary):
        result.figures["heldout_net"] = net_figure(summary)
        result.figures["heldout_fix_break"] = fix_break_figure(summary)
    result.figures.update(train_figures(t["candidates"]))
    ppl = t["perplexity"]
    if len(ppl) > 1:
        rest = ppl[ppl["policy"] != "none"]
        result.figures["perplexity"] = interval_plot(
            [{"label": LABELS.get(r.policy, r.policy), "value": r.nll_change, "low": r.nll_change_low,
              "high": r.nll_change_high, "n": int(r.n_windows)} for r in rest.itertuples()],
            title="Plain text: change in log-perplexity under each policy (every position), 95% interval",
            xlabel="nats per token (log of the perplexity ratio)", reference=0.0, reference_label="no repair")
    for r in summary.itertuples():
        if r.role in ("repair", "oracle"):
            result.headline.append(Headline(f"held-out net change: {r.policy}", float(r.net), int(r.n),
                                            float(r.net_low), float(r.net_high)))
    result.sections.append(Section("Design", design_text(t, s), tables={"split": "split", "memories": "memories"}))
    result.sections.append(Section(
        "Chosen on train", choice_text(t["choices"]) + " Heatmaps: every candidate's net gain on train.",
        figures=[f for f in ("train_backpatch", "train_injection") if f in result.figures],
        tables={"choices": "choices", "every candidate on train": "candidates",
                "mitigation candidates": "mitigation_candidates"}))
    result.sections.append(Section(
        "Held-out repair", heldout_text(summary, claims) + f"\n\n{VERDICT_RULE}",
        figures=[f for f in ("heldout_net", "heldout_fix_break") if f in result.figures],
        tables={"summary": "summary", "per query and policy": "heldout"}, headline=list(result.headline)))
    if len(ppl):
        lines = "; ".join(f"{LABELS.get(r.policy, r.policy)}: {r.perplexity:.4g} ({r.nll_change:+.3g} nats per token "
                          f"[{r.nll_change_low:+.3g}, {r.nll_change_high:+.3g}])" for r in ppl.itertuples())
        result.sections.append(Section(
            "Cost on plain text",
            f"Perplexity of {int(ppl['n_windows'].iloc[0])} windows of {s.window} tokens of prose (the recall "
            "analysis's text: paragraphs of Python's language reference), each policy applied at every position: "
            "a back-patch writes the window's own clean block-s states into block t everywhere, an injection adds "
            "the memory of a held-out query (window i: the i-th held-out query with a memory) everywhere, the "
            f"mitigation edits every position. {lines}.",
            figures=["perplexity"] if "perplexity" in result.figures else [], tables={"perplexity": "perplexity"}))
