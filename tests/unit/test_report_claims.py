"""Claims in run folders and in report.html: claims.parquet, config.json, studies gathering their
children's claims with Holm across them, claim figures, the top-down page, headline entries."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest

from hopscope.report import RunFolder, figures
from hopscope.stats import CLAIM_COLUMNS, VERDICT_RULE, mean_vs_zero, rate_vs_control, share_vs
from hopscope.stats.holm import holm

LABELS = dict(analysis="backpatch", paper="Biran et al. 2024", paper_value="up to 57%")


def claim_set(seed: int = 0, prefix: str = "hop") -> list:
    rng = np.random.default_rng(seed)
    control = rng.random(200) < 0.1
    return [
        rate_vs_control(f"{prefix}.fix", control | (rng.random(200) < 0.3), control, statement="back-patches fix",
                        measure="oracle fix rate", control_label="random patch", **LABELS),
        mean_vs_zero(f"{prefix}.order", rng.normal(0.05, 1, 50), statement="bridge before answer",
                     measure="layer difference", **LABELS),
        share_vs(f"{prefix}.share", rng.random(80) < 0.62, statement="most prompts", **LABELS),
    ]


def test_write_claims_top_level_parquet_and_config(tmp_path):
    run = RunFolder.create("backpatch", out=tmp_path / "run", seed=0)
    path = run.write_claims(claim_set())
    assert path == run.path / "claims.parquet"
    frame = pd.read_parquet(path)
    assert list(frame.columns) == CLAIM_COLUMNS and list(frame["id"]) == ["hop.fix", "hop.order", "hop.share"]
    assert list(frame["p_holm"]) == pytest.approx(holm(frame["p_value"]))   # Holm across this run's claims
    config = json.loads((run.path / "config.json").read_text())
    assert config["stats"]["n_resamples"] == 2000 and config["stats"]["verdict_rule"] == VERDICT_RULE
    pd.testing.assert_frame_equal(run.load_claims(), frame, check_dtype=False)
    assert len(RunFolder.create("x", out=tmp_path / "empty").load_claims()) == 0


def test_a_study_gathers_its_childrens_claims_with_holm_across_all(tmp_path):
    study = RunFolder.create("study", out=tmp_path / "study", seed=0)
    own = mean_vs_zero("study.own", np.linspace(1, 2, 30), analysis="study", statement="own claim")
    study.write_claims([own])                      # written before any child exists: stays the study's own
    a, b = study.child("backpatch"), study.child("recall")
    a.write_claims(claim_set(1))
    a.finish()
    b.write_claims(claim_set(2)[:2] + [share_vs("shared", [1] * 30, analysis="recall", statement="s")])
    b.finish()
    c = study.child("probe")
    c.write_claims([share_vs("shared", [1] * 20 + [0] * 10, analysis="probe", statement="s")])
    c.finish()
    study.finish()
    frame = pd.read_parquet(study.path / "claims.parquet")
    # the study's own claims first, then each child's; ids that two children share get the child's name
    assert list(frame["id"]) == ["study.own", "backpatch:hop.fix", "backpatch:hop.order", "hop.share",
                                 "recall:hop.fix", "recall:hop.order", "recall:shared", "probe:shared"]
    children = pd.concat([pd.read_parquet(study.path / n / "claims.parquet") for n in ("backpatch", "recall", "probe")])
    all_p = np.r_[[own.p_value], children["p_value"].to_numpy()]
    assert sorted(frame["p_holm"]) == pytest.approx(sorted(holm(all_p)))
    assert (frame["p_holm"].to_numpy() >= frame["p_value"].to_numpy() - 1e-12).all()
    study.render()                                 # gathering again gives the same claims
    pd.testing.assert_frame_equal(pd.read_parquet(study.path / "claims.parquet"), frame)


def test_duplicate_claim_ids_in_one_run_are_refused(tmp_path):
    run = RunFolder.create("backpatch", out=tmp_path / "run")
    with pytest.raises(ValueError, match="unique"):
        run.write_claims(claim_set() + claim_set()[:1])


def test_claim_figures_from_a_table_a_saved_name_or_a_figure(tmp_path):
    run = RunFolder.create("backpatch", out=tmp_path / "run")
    per_query = pd.DataFrame({"qid": [f"q{i}" for i in range(40)] * 2, "patch": ["oracle"] * 40 + ["random"] * 40,
                              "fixed": np.r_[np.ones(12), np.zeros(28), np.ones(3), np.zeros(37)]})
    run.write_table("per_query", per_query)
    run.save_figure("saved", figures.bar_chart({"a": 1.0}))
    claims = claim_set()
    run.write_claims(claims, figures={"hop.fix": {"table": "per_query", "value": "fixed", "by": "patch"},
                                      "hop.order": "saved", "hop.share": figures.bar_chart({"b": 2.0})})
    specs = json.loads((run.path / "claim_figures.json").read_text())
    assert specs["hop.fix"]["figure"] == "claim-hop-fix" and specs["hop.order"]["figure"] == "saved"
    live = json.loads((run.figures_dir / "claim-hop-fix.plotly.json").read_text())
    means = [t for t in live["data"] if "error_y" in t]
    assert [t["y"][0] for t in means] == pytest.approx([12 / 40, 3 / 40])   # group means, with intervals
    hover = next(t for t in live["data"] if t.get("text"))
    assert hover["text"][0] == "q0"                                       # unit ids on hover
    with pytest.raises(KeyError, match="not among the claims"):
        run.write_claims(claims, figures={"nope": "saved"})
    with pytest.raises(KeyError, match="no column"):
        run.write_claims(claims, figures={"hop.fix": {"table": "per_query", "value": "missing"}})


@pytest.fixture()
def study_report(tmp_path):
    study = RunFolder.create("study", out=tmp_path / "study", seed=0)
    study.set_model("tiny-llama", "local")
    child = study.child("backpatch")
    child.save_figure("heat", figures.heatmap(np.arange(6.0).reshape(2, 3), title="effect", colorbar_label="Δ"))
    child.add_section("Back-patching", text="detail text", figures=["heat"],
                      headline=[{"label": "oracle fix rate", "value": 0.31, "n": 200, "low": 0.25, "high": 0.37},
                                {"label": "empty card", "value": None}, {"label": "", "value": 3.0}])
    child.write_claims(claim_set())
    child.finish()
    study.finish()
    return study, (study.path / "report.html").read_text(encoding="utf-8")


def test_report_opens_with_the_claims_then_details_then_collapsed_analyses(study_report):
    study, html = study_report
    frame = study.load_claims()
    positions = [html.index(marker) for marker in ('id="claims"', 'id="claim-details"', 'id="detail"', 'id="tables"')]
    assert positions == sorted(positions)
    assert VERDICT_RULE.split(":")[0] in html
    counts = frame["verdict"].value_counts()
    assert (f"<b>{len(frame)}</b> claims" in html
            and f"<b>{counts.get('supported', 0)}</b> supported" in html
            and f"<b>{counts.get('inconclusive', 0)}</b> inconclusive" in html)
    table = html[html.index('<table class="data claims">'):html.index("</table>", html.index('id="claims"'))]
    assert re.findall(r"<th>(.*?)</th>", table) == ["claim", "paper", "this model: value [95% interval], n",
                                                    "interval vs control", "control", "verdict"]
    assert table.count("<tr>") == 1 + len(frame)
    for row in frame.itertuples():
        assert f'id="claim-{row.id.replace(".", "-")}"' in html          # one section per claim
        assert f"n = {row.n:,}" in table
    assert re.search(r'<details class="analysis" id="backpatch--run">', html)   # analyses collapsed


def test_headline_cards_are_labelled_with_n_and_never_empty(study_report):
    study, html = study_report
    cards = re.findall(r'<div class="card">(.*?)</div></div>', html)
    assert len(cards) == 1
    assert "0.31 [0.25, 0.37]" in cards[0] and "oracle fix rate" in cards[0] and "n = 200" in cards[0]
    assert "empty card" not in html
    assert RunFolder.open(study.path / "backpatch").headline == {"oracle fix rate": 0.31}


def test_headline_objects_and_the_old_plain_numbers_both_work(tmp_path):
    @dataclass
    class Headline:                      # the shape of hopscope.results.Headline
        label: str
        value: float
        n: int | None = None
        low: float | None = None
        high: float | None = None
        unit: str = ""

    run = RunFolder.create("demo", out=tmp_path / "run")
    run.add_section("A", headline=[Headline("accuracy", 0.94, n=500, unit="")])
    run.add_section("B", headline={"old style": 12000, "a nan metric": float("nan")})
    html = (run.finish()).read_text(encoding="utf-8")
    assert run.headline == {"accuracy": 0.94, "old style": 12000}
    assert "n = 500" in html and "12,000" in html and "a nan metric" not in html
    # a sections.json written by an older hopscope (headline as a dict) still renders
    sections = json.loads((run.path / "sections.json").read_text())
    sections[0]["headline"] = {"legacy": 0.5}
    (run.path / "sections.json").write_text(json.dumps(sections))
    assert "legacy" in __import__("hopscope.report.html", fromlist=["x"]).render_report(run.path)


def test_quick_runs_mark_verdicts_indicative(tmp_path):
    study = RunFolder.create("study", out=tmp_path / "q", quick=True)
    child = study.child("backpatch")
    assert child.quick
    child.write_claims(claim_set())
    child.finish()
    html = study.finish().read_text(encoding="utf-8")
    assert "(indicative)" in html and "<b>quick</b> run" in html
    plain = RunFolder.create("backpatch", out=tmp_path / "p")
    plain.write_claims(claim_set())
    assert "(indicative)" not in plain.finish().read_text(encoding="utf-8")


def test_a_figure_saved_as_claim_id_is_that_claims_figure_in_the_study(tmp_path):
    study = RunFolder.create("study", out=tmp_path / "s")
    child = study.child("backpatch")
    child.save_figure("claim-hop.fix", figures.bar_chart({"oracle": 0.3, "random": 0.1}))   # e.g. Result.save
    child.write_claims(claim_set())
    child.finish()
    html = study.finish().read_text(encoding="utf-8")
    specs = json.loads((study.path / "claim_figures.json").read_text())
    assert specs == {"hop.fix": {"figure": "claim-hop.fix", "folder": "backpatch"}}
    section = html[html.index('id="claim-hop-fix"'):html.index('id="claim-hop-order"')]
    assert section.count("<figure>") == 1 and "data:image/png;base64," in section
    assert "<figure>" not in html[html.index('id="claim-hop-order"'):html.index('id="tables"')]
    assert "<svg" in html[html.index('id="claim-hop-order"'):html.index('id="tables"')]   # its interval, drawn


def test_claim_text_is_escaped_everywhere(tmp_path):
    evil = '<script>alert("x")</script>'
    run = RunFolder.create("backpatch", out=tmp_path / "run")
    run.write_claims([share_vs("hop.evil", [1] * 20, analysis="backpatch", statement=evil, paper=evil,
                               paper_value=evil, measure=evil, control_label=evil)])
    html = run.finish().read_text(encoding="utf-8")
    assert evil not in html and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in html
