"""Prose, headline numbers and figures of the hopping and knowledge analyses (the only place with either)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from hopscope.methods.hopping.backpatch import fix_rate_matrix
from hopscope.methods.hopping.knowledge import GROUPS, accuracy_table, shortcut_report, subset_counts
from hopscope.methods.hopping.stages import STAGE_LABELS, STAGES
from hopscope.report import bar_chart, box_by_group, heatmap, line_curves
from hopscope.report.figures import interval_plot
from hopscope.results import Headline, Result, Section
from hopscope.stats import bootstrap_ci

RULE_TEXT = ("Answers are matched by one rule for the whole run: {rule}. The same rule scores the knowledge filter, "
             "back-patching, Patchscopes and knockout.")
GROUP_TEXT = ("Groups follow the paper: a query that either shortcut prompt answers (r2 applied to e1 directly, or "
              "the composition without e1) is 'shortcut' and leaves both groups; otherwise 'correct' when the "
              "composition is right, 'incorrect' when it is wrong although both hops are known, 'hops_unknown' "
              "when a hop is not known.")


def _estimate(label: str, values: Any, seed: int = 0, unit: str = "") -> Headline:
    arr = np.asarray(values, dtype=float)
    arr = arr[np.isfinite(arr)]
    if not arr.size:
        return Headline(label, float("nan"), n=0, unit=unit)
    ci = bootstrap_ci(arr, seed=seed)
    return Headline(label, float(arr.mean()), n=int(arr.size), low=ci.low, high=ci.high, unit=unit)


# ---- knowledge ------------------------------------------------------------------------------------------
def knowledge_parts(kn: pd.DataFrame, rule: dict[str, Any]) -> tuple[dict[str, pd.DataFrame], dict[str, Any],
                                                                     list[Headline], Section]:
    """Summary tables, the group figure, headline and section of a knowledge table."""
    counts = subset_counts(kn).reset_index().rename(columns={"index": "composition"})
    tables = {"group_counts": counts, "accuracy": accuracy_table(kn).reset_index(),
              "shortcuts": shortcut_report(kn)}
    overall = kn["group"].value_counts().reindex(list(GROUPS), fill_value=0)
    figures = {"knowledge_groups": bar_chart(overall.to_dict(), title=f"{len(kn)} two-hop queries by group",
                                             ylabel="queries")}
    head = [Headline(f"queries: {g}", float(v), n=len(kn)) for g, v in overall.items()]
    text = (f"{len(kn)} two-hop queries, each asked its first hop, second hop, composition and the two shortcut "
            f"prompts (greedy decoding). {RULE_TEXT.format(rule=rule.get('rule', ''))} {GROUP_TEXT}")
    section = Section("Knowledge filter", text, figures=list(figures),
                      tables={"groups by composition": "group_counts", "accuracy by composition": "accuracy",
                              "shortcuts by composition": "shortcuts", "per query": "knowledge"}, headline=head)
    return tables, figures, head, section


def complete_knowledge(result: Result) -> None:
    """Add the knowledge analysis's summary tables, figure, headline and section to ``result``."""
    tables, figures, head, section = knowledge_parts(result.tables["knowledge"], result.settings.get("match_rule", {}))
    result.tables.update(tables)
    result.figures.update(figures)
    result.headline += head
    result.sections.append(section)


# ---- hopping --------------------------------------------------------------------------------------------
def complete(result: Result, settings: Any, model: dict[str, Any]) -> None:
    """Headline, figures and sections of a hopping Result (in place)."""
    t = result.tables
    tables, figures, head, section = knowledge_parts(t["knowledge"], settings.rule.to_dict())
    result.tables.update(tables)
    result.figures.update(figures)
    result.headline += head
    result.sections.append(section)
    if "backpatch_queries" in t:
        _backpatch(result, settings)
    if "stages" in t:
        _patchscope(result, settings)
        _knockout(result, settings)
        _stages(result, settings)
    result.sections.append(Section("Claims", _claims_text(result, settings, model)))


def _backpatch(result: Result, s: Any) -> None:
    t = result.tables
    bq, pairs = t["backpatch_queries"], t["backpatch"]
    wrong = bq[(bq["group"] == "incorrect") & (bq["variant"] == "last")]
    right = bq[(bq["group"] == "correct") & (bq["variant"] == "last") & (bq["condition"] == "back")]
    rows = []
    for cond, g in wrong.groupby("condition", sort=False):
        h = _estimate(f"oracle fix rate ({cond})", g["fixed"], s.seed)
        result.headline.append(h)
        rows.append({"label": cond, "value": h.value, "low": h.low, "high": h.high, "n": h.n})
    for variant in [v for v in s.variants if v != "last"]:
        g = bq[(bq["group"] == "incorrect") & (bq["variant"] == variant) & (bq["condition"] == "back")]
        h = _estimate(f"oracle fix rate (back, at {variant})", g["fixed"], s.seed)
        result.headline.append(h)
        rows.append({"label": f"back at {variant}", "value": h.value, "low": h.low, "high": h.high, "n": h.n})
    result.headline.append(_estimate("break rate (back, correct group)", right["break_frac"], s.seed))
    figs = []
    rows = [r for r in rows if r["low"] is not None]
    if rows:
        result.figures["oracle_fix_rate"] = interval_plot(
            rows, title=f"Oracle fix rate of {wrong['qid'].nunique()} incorrect compositions (95% interval)",
            xlabel="share fixed by some (s, t)")
        figs.append("oracle_fix_rate")
    for name, ids, what in (("fix_rate_matrix", wrong["qid"].unique(), "incorrect: share fixed"),
                            ("keep_rate_matrix", right["qid"].unique(), "correct: share still right")):
        if len(ids):
            m = fix_rate_matrix(pairs, ids)
            result.figures[name] = heatmap(m, title=f"Back (s > t, below the diagonal) and forward patching, {what}",
                                           colorbar_label=f"share of {len(ids)} queries answered right",
                                           vmin=0.0, vmax=1.0)
            figs.append(name)
    text = (
        "Each row of 'backpatch' re-runs the composed prompt with the output of block t at the patched position "
        "replaced by the output of block s of the clean run, then greedy-decodes (the patch acts on the prompt "
        "pass only). 'back' (s > t) is the paper's back-patch; 'forward' (s < t), 'random' (a random vector of the "
        "same norm) and 'unrelated' (the state of another query's prompt) are hopscope's controls, run on the "
        "incorrect group at the last position. The oracle fix rate is the share of incorrect shortcut-free "
        "compositions that some pair makes right (the paper's back-patching success); the break rate, per correct "
        "query, the share of its back-patches that make it wrong. Matrices: rows s, columns t; the cells below "
        "the diagonal are back-patches, above it forward patches. "
        f"Layer grid: {_grid(s.layers)}; positions: {', '.join(s.variants)} (last = the last token t2, e1 = e1's "
        "last token t1).")
    result.sections.append(Section("Back-patching", text, figures=figs,
                                   tables={"per query": "backpatch_queries", "per pair": "backpatch"}))


def _patchscope(result: Result, s: Any) -> None:
    t = result.tables
    rows = t["patchscope"]
    target = s.patchscope_targets[0]
    figs = []
    for source, label, name in (("e1", "e2", "patchscope_e1_e2"), ("last", "e3", "patchscope_last_e3"),
                                ("last", "e2", "patchscope_last_e2")):
        g = rows[(rows["target"] == target) & (rows["source"] == source)]
        if not len(g):
            continue
        m = (g["label"] == label).groupby([g["s"], g["t"]]).mean().unstack("t")
        m.index.name, m.columns.name = "s (source layer)", "t (target layer)"
        result.figures[name] = heatmap(m, title=f"Patchscope ({target}) from {source}: share decoding {label}",
                                       colorbar_label=f"share of {g['qid'].nunique()} queries", vmin=0.0, vmax=1.0)
        figs.append(name)
    st = t["stages"]
    layers = sorted(rows["s"].unique())
    if len(st) and layers:
        series = {"e2 decoded from t1": [float((st["e1_resolved_layer"] <= l).mean()) for l in layers],
                  "e3 decoded from the last token": [float((st["e3_resolved_layer"] <= l).mean()) for l in layers]}
        result.figures["first_decodable_layer"] = line_curves(
            series, x=layers, title="Share of queries whose entity is decodable from source layer <= s",
            xlabel="source layer s", ylabel="share of queries")
        figs.append("first_decodable_layer")
    text = (
        f"The hidden state of source layer s at e1's last token (t1) or at the last token replaces the output of "
        f"block t at the placeholder x of the '{target}' target prompt, for every (s, t) of the grid "
        f"({_grid(s.patchscope_layers)}); the model greedy-decodes and the text is labelled e1, e2, e3 (in that "
        "precedence, the paper's) or other, by the run's answer rule. 'patchscope_layers' gives per query and "
        "source layer the first target layer that decodes each entity; the first source layer that decodes it "
        "at all is its resolution layer. The paper samples three generations per pair; hopscope decodes greedily "
        "once.")
    result.sections.append(Section("Patchscopes", text, figures=figs,
                                   tables={"first target layer": "patchscope_layers", "per (s, t)": "patchscope"}))


def _knockout(result: Result, s: Any) -> None:
    t = result.tables
    ko = t["knockout"]
    groups = dict(zip(t["knowledge"]["qid"], t["knowledge"]["group"]))
    w = ko[ko["centre"] >= 0].assign(group=lambda d: d["qid"].map(groups))
    figs = []
    if len(w):
        series = {g: d.groupby("centre")["effect"].mean().reindex(sorted(w["centre"].unique())).tolist()
                  for g, d in w.groupby("group")}
        result.figures["knockout_effect"] = line_curves(
            series, x=sorted(w["centre"].unique()), title="Share of queries whose generation the t1 knockout changes",
            xlabel=f"window centre (layers c-{s.knockout_window}..c+{s.knockout_window})",
            ylabel="share with an effect")
        figs.append("knockout_effect")
    text = (
        "The last position's attention to t1 (e1's last token) is blocked in every layer of a window of "
        f"{2 * s.knockout_window + 1} layers around each centre ({_grid(s.knockout_layers)}); a window has an "
        "effect when the generation changes and the two are not both correct (the paper's criterion: for a correct "
        "query, changed and now wrong). The first centre with an effect enters the information-propagation stage.")
    result.sections.append(Section("Attention knockout", text, figures=figs,
                                   tables={"first effect": "knockout_layers", "per window": "knockout"}))


def _stages(result: Result, s: Any) -> None:
    st = result.tables["stages"]
    data: dict[str, list[float]] = {}
    for col in STAGES:
        for g in ("correct", "incorrect"):
            v = st.loc[st["group"] == g, col].dropna().tolist()
            n = int((st["group"] == g).sum())
            if n:
                data[f"{STAGE_LABELS[col]}\n{g} ({len(v)}/{n})"] = v
            if v:
                result.headline.append(Headline(f"median {STAGE_LABELS[col]} layer ({g})", float(np.median(v)),
                                                n=len(v)))
    figs = []
    if any(data.values()):
        result.figures["resolution_stages"] = box_by_group(
            data, title="Layer of each resolution stage (resolved / queries per box)", ylabel="layer")
        figs.append("resolution_stages")
    text = (
        "Per query (tidy columns of 'stages'): first hop resolved = the first source layer whose Patchscope at t1 "
        "decodes e2; information propagation = the mean of the first t1-knockout window with an effect, the first "
        "layer whose attention output at the last token ranks e2 top-1, and the first source layer whose Patchscope "
        "at the last token decodes e2; second hop resolved = the first source layer whose Patchscope at the last "
        "token decodes e3; prediction extracted = the first layer whose MLP output at the last token ranks the "
        "model's own first generated token top-1 (defined on incorrect queries too). Sublayer outputs are read "
        "through the final norm and the unembedding ('projections'; resid_post, the logit lens, goes beyond the "
        "paper). A stage a query never reaches is left out of its box.")
    result.sections.append(Section("Resolution stages", text, figures=figs,
                                   tables={"per query": "stages", "sublayer projections": "projections"}))


def _claims_text(result: Result, s: Any, model: dict[str, Any]) -> str:
    n = model.get("n_layers")
    return (
        f"Protocol '{s.protocol}' on {model.get('name', 'the model')} ({n} layers), seed {s.seed}. hop.resolve_order: "
        "per query, the layer of e3 minus the layer of e2, mean against 0 (queries where both resolve). "
        "hop.backpatch_fix: the per-query oracle verdict of the back-patches against the same oracle over each "
        "control, paired per query (exact McNemar on the discordant queries; the interval is the paired bootstrap "
        "of the rate difference). hop.backpatch_break: the per-query share of back-patches that break a correct "
        "composition, mean against 0.5. A claim is supported when the effect has the paper's direction and its 95% "
        "interval excludes the control value, contradicted when the interval excludes the paper's direction, "
        "inconclusive otherwise.")


def _grid(spec: Any) -> str:
    if spec is None:
        return "every layer"
    if isinstance(spec, int):
        return f"{spec} evenly spaced layers"
    return "layers " + ", ".join(map(str, spec))
