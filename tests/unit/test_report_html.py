"""report.html: self-contained, escaped, truncated tables, a working table of contents, the config."""

from __future__ import annotations

import base64
import json
import re
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest

from hopscope.report import RunFolder, figures

EVIL = '<script>alert("x")</script> & "quotes"'


class Collector(HTMLParser):
    """Every tag's attributes and the text of <td>/<th> cells."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.cells: list[str] = []
        self._in_cell = False

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag in ("td", "th"):
            self._in_cell = True
            self.cells.append("")

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self._in_cell = False

    def handle_data(self, data):
        if self._in_cell:
            self.cells[-1] += data


@pytest.fixture()
def report(tmp_path):
    run = RunFolder.create("backpatch", args={"note": EVIL}, out=tmp_path / "run", seed=0)
    run.set_model("gpt2", "hub")
    run.save_figure("heat", figures.heatmap(np.arange(12.0).reshape(3, 4), title="t", colorbar_label="c"))
    pairs = pd.DataFrame({"query_id": range(120), "prompt": [f"p{i} {EVIL}" for i in range(120)],
                          "score": np.linspace(0, 1, 120), EVIL: "x"})
    with run.table("pairs", key="query_id", progress=False) as tab:
        tab.append(pairs)
    run.add_section(f"Back-patching {EVIL}", text=f"Para one {EVIL}\n\nPara two",
                    figures=["heat", figures.bar_chart({"a": 1.0, "b": 2.0})],
                    tables={"per query": "pairs", "long": pd.DataFrame({"t": ["y" * 500]})},
                    headline={"oracle fix rate": 0.3125, "queries": 12000})
    run.add_section("Second", text="more")
    path = run.finish()
    text = path.read_text(encoding="utf-8")
    parsed = Collector()
    parsed.feed(text)
    return run, text, parsed


def test_report_is_self_contained(report):
    _, text, parsed = report
    imgs = [attrs for tag, attrs in parsed.tags if tag == "img"]
    assert len(imgs) == 2
    for attrs in imgs:
        prefix = "data:image/png;base64,"
        assert attrs["src"].startswith(prefix)
        assert base64.b64decode(attrs["src"][len(prefix):])[:8] == b"\x89PNG\r\n\x1a\n"
    for tag, attrs in parsed.tags:
        for name in ("src", "href"):
            value = attrs.get(name) or ""
            assert not re.match(r"\s*(https?:)?//", value), f"<{tag} {name}={value!r}> loads from the network"
        assert tag not in ("link", "iframe")
        if tag == "script":
            assert "src" not in attrs  # scripts are inline: the page's own and, once, plotly.js
    assert not re.search(r"url\(\s*['\"]?(https?:)?//", text)  # no remote CSS resources either


def test_cells_titles_and_text_are_escaped(report):
    _, text, parsed = report
    assert '<script>alert("x")' not in text
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp;" in text
    assert any(cell == f"p0 {EVIL}" for cell in parsed.cells)  # decoded text equals the original value
    assert EVIL in parsed.cells  # a column header
    long_cell = next(c for c in parsed.cells if c.startswith("yyy"))
    assert len(long_cell) == 201 and long_cell.endswith("…")


def test_tables_are_truncated_with_counts_in_collapsible_sections(report):
    _, text, parsed = report
    assert "showing 50 of 120 rows" in text
    assert "70 more rows are in the stored table" in text
    assert sum(1 for tag, _ in parsed.tags if tag == "details") >= 3
    assert re.search(r"<summary>per query <span class=\"count\">\(showing 50 of 120 rows\)</span></summary>", text)


def test_table_of_contents_links_every_section(report):
    run, text, parsed = report
    ids = {attrs["id"] for _, attrs in parsed.tags if attrs.get("id")}
    hrefs = [attrs.get("href") or "" for tag, attrs in parsed.tags if tag == "a"]
    links = [href[1:] for href in hrefs if href.startswith("#")]
    assert set(links) <= ids
    for section in run.sections():
        assert f"s-{section['id']}" in links
    assert {"headline", "tables", "config"} <= set(links)


def test_headline_and_config_are_shown(report):
    run, text, _ = report
    assert "0.312" in text and "12,000" in text and "oracle fix rate" in text
    config = json.loads((run.path / "config.json").read_text())
    assert config["versions"]["transformers"] in text
    assert "&quot;command&quot;: &quot;backpatch&quot;" in text


def test_unfinished_run_has_a_banner_and_unmerged_parts_are_shown(tmp_path):
    run = RunFolder.create("demo", out=tmp_path / "run")
    with pytest.raises(KeyboardInterrupt):
        with run:
            with run.table("t", key="k", progress=False) as tab:
                for k in tab.pending([1, 2, 3]):
                    tab.append({"k": k})
                    if k == 3:
                        raise KeyboardInterrupt
    text = (run.path / "report.html").read_text()
    assert "interrupted" in text and "--resume" in text
    assert "unmerged part" in text and "(2 rows)" in text


def test_interactive_figures_embed_plotly_once_with_the_png_as_fallback(report):
    _, text, parsed = report
    plotly_header = re.findall(r"\* plotly\.js v[\d.]+", text)
    assert len(plotly_header) == 1                                    # inlined once for the two figures
    specs = re.findall(r'<script type="application/json" id="(spec-\d+)">(.*?)</script>', text, flags=re.S)
    assert [sid for sid, _ in specs] == ["spec-1", "spec-2"]
    heat = json.loads(specs[0][1])
    assert heat["data"][0]["type"] == "heatmap" and heat["data"][0]["z"][2] == [8.0, 9.0, 10.0, 11.0]
    divs = [attrs["data-spec"] for tag, attrs in parsed.tags if tag == "div" and "data-spec" in attrs]
    assert divs == ["spec-1", "spec-2"]
    assert sum(1 for tag, attrs in parsed.tags if tag == "img" and attrs.get("class") == "static") == 2


def test_static_only_without_interactive_figures_or_without_plotly(tmp_path, monkeypatch):
    from hopscope.report import interactive

    run = RunFolder.create("demo", out=tmp_path / "a")
    run.add_section("Box", figures=[figures.box_by_group({"a": [1.0, 2.0]})])
    text = run.finish().read_text(encoding="utf-8")
    assert "plotly.js v" not in text and 'class="plotly"' not in text and "data:image/png" in text
    monkeypatch.setattr(interactive, "plotly_js", lambda: None)      # plotly not installed
    run2 = RunFolder.create("demo", out=tmp_path / "b")
    run2.add_section("Heat", figures=[figures.heatmap(np.eye(3))])
    text2 = run2.finish().read_text(encoding="utf-8")
    assert 'class="plotly"' not in text2 and "data:image/png" in text2


def test_tables_are_marked_for_sorting_with_exact_numbers(report):
    _, text, parsed = report
    assert sum(1 for tag, attrs in parsed.tags if tag == "table" and "data" in (attrs.get("class") or "")) >= 3
    cells = [attrs["data-v"] for tag, attrs in parsed.tags if tag == "td" and "data-v" in attrs]
    assert "0.3949579831932773" in cells                              # the full value, not the shown 0.395
