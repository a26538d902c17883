"""Prose, headline numbers and figures of a probe run (the only place with either)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from hopscope.methods.probe.settings import Settings
from hopscope.report.figures import bar_chart, heatmap, interval_plot, line_curves
from hopscope.results import Headline, Result, Section
from hopscope.stats import bootstrap_ci

TASK_NAMES = {"useful": "useful vs noise (P1)", "step": "depth in the tree (P2)"}


def _accuracy(result: Result) -> pd.DataFrame:
    a = result.tables.get("answers")
    if a is None or a.empty:
        return pd.DataFrame(columns=["model", "accuracy", "low", "high", "n"])
    rows = []
    for name, g in a.groupby("model", sort=False):
        v = g["correct"].to_numpy(dtype=float)
        lo, hi = bootstrap_ci(v, seed=0)
        rows.append(dict(model=name, accuracy=float(v.mean()), low=lo, high=hi, n=len(v)))
    return pd.DataFrame(rows)


def headline(result: Result, settings: Settings) -> list[Headline]:
    out = []
    acc = _accuracy(result)
    for r in acc.itertuples():
        if r.model == "model" or r.model == "random_init_0":
            label = "accuracy (probed model)" if r.model == "model" else "accuracy (random init)"
            out.append(Headline(label, r.accuracy, r.n, r.low, r.high))
    claims = result.claims
    for task in ("useful", "step"):
        c = claims[claims["id"] == f"probe.{task}"] if len(claims) else claims
        if len(c):
            r = c.iloc[0]
            out.append(Headline(f"S {TASK_NAMES[task]}", float(r["value"]), int(r["n"]), float(r["low"]),
                                float(r["high"])))
    return out


def null_figure(result: Result, task: str) -> Figure:
    """The permutation null of S (histogram) with the observed S and its bootstrap interval."""
    null = result.tables["probe_null"]
    null = null.loc[null["task"] == task, "S"].to_numpy(dtype=float)
    boot = result.tables["probe_bootstrap"]
    boot = boot.loc[boot["task"] == task, "S"].to_numpy(dtype=float)
    sc = result.tables["probe_scores"]
    observed = float(sc[(sc.task == task) & (sc.model == "model")]["S"].iloc[0])
    fig = Figure(figsize=(7.0, 3.6))
    ax = fig.subplots()
    ax.hist(null[np.isfinite(null)], bins=40, color="0.7", label="labels permuted within prompts")
    ax.axvline(observed, color="C3", linewidth=2, label=f"observed S = {observed:.3f}")
    if np.isfinite(boot).any():
        lo, hi = np.nanquantile(boot, [0.025, 0.975])
        ax.axvspan(lo, hi, color="C3", alpha=0.15, label=f"95% bootstrap interval [{lo:.3f}, {hi:.3f}]")
    ax.axvline(0.0, color="0.3", linestyle="--", linewidth=1)
    ax.set_xlabel("probing score S (0 = no better than random init)")
    ax.set_ylabel("permutations")
    ax.set_title(f"S for {TASK_NAMES[task]} against its permutation null")
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    return fig


def figures(result: Result, settings: Settings) -> dict[str, Figure]:
    t = result.tables
    figs: dict[str, Figure] = {}
    if len(result.claims):
        rows = [dict(label=TASK_NAMES[r.id.split(".")[1]], value=r.value, low=r.low, high=r.high, n=r.n)
                for r in result.claims.itertuples()]
        figs["probe_scores"] = interval_plot(rows, title="Probing scores S with 95% bootstrap intervals",
                                             xlabel="S = (F1 - F1 random init) / (1 - F1 random init)",
                                             reference=0.0, reference_label="random init (S = 0)")
    if "probe_null" in t:
        for task in ("useful", "step"):
            if (t["probe_null"]["task"] == task).any():
                figs[f"null_{task}"] = null_figure(result, task)
    if "layerwise" in t:
        for task in ("useful", "step"):
            lw = t["layerwise"][t["layerwise"]["task"] == task]
            if len(lw):
                curve = lw.pivot(index="layers", columns="model", values="f1")
                figs[f"layerwise_{task}"] = line_curves(
                    curve, title=f"Probe macro-F1 on the first l layers: {TASK_NAMES[task]}",
                    xlabel="layers used", ylabel="macro-F1")
    if "attention_profile" in t:
        for axis in ("rank", "position"):
            p = t["attention_profile"][t["attention_profile"]["axis"] == axis]
            m = p.pivot(index="index", columns="layer", values="attention")
            m.index = [str(i + 1) for i in m.index]
            m.columns = [f"L{c}" for c in m.columns]
            what = "size rank (1 = smallest)" if axis == "rank" else "position in the list"
            figs[f"attention_by_{axis}"] = heatmap(m, title=f"Mean attention from the last token by {what}",
                                                   colorbar_label="attention", xlabel="layer", ylabel=what,
                                                   annotate=False)
    if "head_entropy" in t:
        for col in ("entropy_position", "entropy_rank"):
            m = t["head_entropy"].pivot(index="layer", columns="head", values=col)
            m.index = [f"L{i}" for i in m.index]
            m.columns = [f"H{h}" for h in m.columns]
            figs[col] = heatmap(m, title=f"Normalised head entropy by {col.split('_')[1]}",
                                colorbar_label="entropy / log n", xlabel="head", ylabel="layer", vmin=0.0, vmax=1.0)
    if "masking" in t and len(t["masking"]):
        acc = (t["masking"].groupby(["strategy", "repeat", "fraction"])["correct"].mean().reset_index())
        g = acc.groupby(["strategy", "fraction"])["correct"]
        mean = g.mean().unstack("strategy")
        bands = None
        if "random" in mean:
            bands = {"random": (g.min().unstack("strategy")["random"].to_numpy(),
                                g.max().unstack("strategy")["random"].to_numpy())}
        figs["masking"] = line_curves(mean, title="Accuracy with heads masked", xlabel="fraction of heads masked",
                                      ylabel="accuracy", bands=bands)
    if "corruption" in t and len(t["corruption"]):
        c = t["corruption"]
        if settings.kth:
            kept = c.groupby("kind")["kept_answer"].mean()
            figs["corruption"] = bar_chart({f"{k} number rewritten": float(v) for k, v in kept.items()},
                                           title="Share of lists whose answer stays the original answer",
                                           ylabel="share kept")
        else:
            figs["corruption"] = bar_chart({"original": float(c["correct_before"].mean()),
                                            "'That ... is false.' inserted": float(c["correct_after"].mean())},
                                           title="True/False accuracy before and after the corruption",
                                           ylabel="accuracy")
    return figs


def _claim_text(result: Result) -> str:
    if not len(result.claims):
        return "No claim could be measured."
    parts = []
    for r in result.claims.itertuples():
        parts.append(f"{r.id}: S = {r.value:.3f} [{r.low:.3f}, {r.high:.3f}] over {r.n} prompts, "
                     f"permutation p = {r.p_value:.3g}: {r.verdict}.")
    return " ".join(parts)


def sections(result: Result, settings: Settings) -> list[Section]:
    s = settings
    t = result.tables
    sc = t.get("probe_scores")
    n_prompts = int(sc["n_prompts"].iloc[0]) if sc is not None and len(sc) else 0
    if s.kth:
        model = (f"a GPT-2 with {s.layers} layers of {s.heads} heads (width {s.width}) trained in this run for "
                 f"{s.train_steps} steps" if s.train else "the model given")
        data = (f"lists of {s.n} numbers drawn from {s.pool_size} one-token values; the answer is the {s.k}-th "
                f"smallest; {n_prompts} lists probed")
        features = "attention of the last token, averaged over heads, divided by the list's largest value"
    else:
        model = "the model given"
        data = (f"ProofWriter questions with a single proof of depth <= {s.max_depth}, {s.shots}-shot prompts "
                f"(solved questions of other theories), statements = theory sentences; {n_prompts} questions probed")
        features = ("attention of the question's tokens (max over them), averaged over heads, averaged over "
                    "each sentence's tokens, raw")
    acc = _accuracy(result)
    acc_text = "; ".join(f"{r.model}: {r.accuracy:.3f} [{r.low:.3f}, {r.high:.3f}] (n = {r.n})"
                         for r in acc.itertuples())
    scoring = ("top-1 over the whole vocabulary" if s.kth else '" True" against " False" at the last position')
    out = [
        Section("MechanisticProbe: does attention encode the reasoning tree?",
                text=(f"Probed model: {model}; data: {data}. Features: {features}, per layer. Two kNN probes "
                      f"(k = {s.n_neighbors}, distance-weighted, {s.resolved_distance} distance) are fit with "
                      f"{s.n_folds}-fold cross-validation grouped by theory: P1 tells the statements of the reasoning "
                      "tree from noise, P2 the depth of each tree statement (0 = the root). The probing score "
                      "S = (F1 - F1_random_init) / (1 - F1_random_init) compares the macro-F1 of the out-of-fold "
                      f"predictions with the same probe on {s.n_random_init} random initialisation(s) of the "
                      f"architecture. {_claim_text(result)}"),
                figures=["probe_scores", "null_useful", "null_step"],
                tables={"scores": "probe_scores", "bootstrap": "probe_bootstrap", "permutation null": "probe_null"}),
        Section("Accuracy", text=f"Share of questions answered ({scoring}), with 95% bootstrap intervals: {acc_text}.",
                tables={"per question": "answers", **({"training": "training"} if "training" in t else {})}),
    ]
    if "layerwise" in t:
        out.append(Section("Layer-wise probes", text="Macro-F1 of probes that see only the first l layers' features "
                           "(the paper's layer-wise analysis), for the probed model and one random init.",
                           figures=["layerwise_useful", "layerwise_step"], tables={"layer-wise": "layerwise"}))
    if "head_entropy" in t:
        out.append(Section("Attention and head entropy",
                           text="Mean attention from the last token to each number, by size rank and by position; "
                                "the entropy of each head's mean attention over positions and over size ranks, "
                                "divided by log n (the paper's head entropy).",
                           figures=["attention_by_rank", "attention_by_position", "entropy_position", "entropy_rank"],
                           tables={"head entropy": "head_entropy", "attention profile": "attention_profile"}))
    if "masking" in t:
        out.append(Section("Head masking", text="Accuracy with a fraction of heads masked (their outputs zeroed): the "
                           "lowest-entropy heads first (by position, by size rank) against random heads.",
                           figures=["masking"], tables={"per list": "masking"}))
    if "corruption" in t:
        if s.kth:
            text = ("A hopscope extension: one useful and one noise number of each probed list are rewritten to a "
                    "pool value above the answer (a useful number becomes noise and the answer moves; a noise "
                    "number stays noise). probe_score is P1's out-of-fold probability that the rewritten number "
                    "is useful.")
        else:
            text = ("The paper's corruption: one theory sentence that the proof does not use is replaced by "
                    "\"That <sentence> is false.\"; the answer should not change.")
        out.append(Section("Corruption", text=text, figures=["corruption"], tables={"per question": "corruption"}))
    return out
