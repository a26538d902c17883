"""Open rendered reports in headless Chromium, with the network blocked (a dead proxy): the page loads
offline, its figures are drawn, the claims table renders, sorts and filters, and hovering a heatmap cell
shows that cell's value.

CI needs the browser: ``apt-get install -y chromium`` (Debian; the binary is /usr/bin/chromium).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hopscope.report import RunFolder, figures
from hopscope.report.interactive import plotly_js
from hopscope.stats import mean_vs_zero, rate_vs_control, share_vs

CHROMIUM = next((p for p in (os.environ.get("HOPSCOPE_CHROMIUM"), shutil.which("chromium"),
                             shutil.which("chromium-browser"), "/usr/bin/chromium") if p and Path(p).is_file()), None)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (apt-get install -y chromium)"),
]

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--hide-scrollbars", "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>"]

# Injected into a *copy* of the report: writes each image's decoded width into the title on load.
PROBE = ("<script>window.addEventListener('load', () => { document.title = 'IMGS:' + "
         "Array.from(document.images).map(i => i.complete ? i.naturalWidth : -1).join(','); });</script>")

# Injected into a copy of the claims report: reads the claims table, sorts it by value, filters it, opens
# the collapsed analyses (which draws their figures) and moves the mouse over one heatmap cell.
INTERACT = r"""<script>
window.addEventListener('load', function () {
  var out = {};
  function ids() {
    return Array.prototype.map.call(document.querySelectorAll('table.claims tbody tr'), function (r) {
      return r.cells[0].querySelector('b').textContent; });
  }
  out.claims = Array.prototype.map.call(document.querySelectorAll('table.claims tbody tr'), function (r) {
    return [r.cells[0].querySelector('b').textContent, r.cells[5].querySelector('.verdict').textContent]; });
  out.header = Array.prototype.map.call(document.querySelectorAll('table.claims thead th'), function (h) {
    return h.textContent; });
  document.querySelectorAll('table.claims thead th')[2].click();
  out.ascending = ids();
  document.querySelectorAll('table.claims thead th')[2].click();
  out.descending = ids();
  var box = document.querySelector('#claims .filter input');
  box.value = 'order'; box.dispatchEvent(new Event('input'));
  out.filtered = Array.prototype.filter.call(document.querySelectorAll('table.claims tbody tr'), function (r) {
    return r.style.display !== 'none'; }).length;
  out.plotly = typeof window.Plotly;
  document.querySelectorAll('details.analysis').forEach(function (d) { d.open = true; });
  var tries = 0;
  function hover() {
    var gd = Array.prototype.find.call(document.querySelectorAll('div.plotly'), function (d) {
      return d.data && d.data[0] && d.data[0].type === 'heatmap'; });
    if (!gd || !gd._fullLayout || !gd.querySelector('.nsewdrag')) {
      if (tries++ < 100) { setTimeout(hover, 100); return; }
      out.hover = 'heatmap never drawn'; finish(); return;
    }
    var drag = gd.querySelector('.nsewdrag'), box = drag.getBoundingClientRect();
    var x = box.left + gd._fullLayout.xaxis.d2p('L2'), y = box.top + gd._fullLayout.yaxis.d2p('h1');
    drag.dispatchEvent(new MouseEvent('mousemove', {bubbles: true, clientX: x, clientY: y, view: window}));
    setTimeout(function () {
      var label = gd.querySelector('.hoverlayer .hovertext');
      out.hover = label ? label.textContent : 'no hover label';
      out.live = gd.parentNode.classList.contains('live');
      finish();
    }, 300);
  }
  function finish() {
    var pre = document.createElement('pre'); pre.id = 'probe'; pre.textContent = JSON.stringify(out);
    document.body.appendChild(pre);
  }
  hover();
});
</script>"""


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=180, check=False)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("browser")
    run = RunFolder.create("backpatch", out=tmp / "run", seed=0)
    run.set_model("gpt2", "hub")
    rng = np.random.default_rng(0)
    run.save_figure("heat", figures.heatmap(rng.random((8, 12)), title="Patch effect", colorbar_label="Δ logprob"))
    run.save_figure("curves", figures.line_curves({"oracle": np.linspace(0, 0.3, 12), "random": rng.random(12) * 0.1},
                                                  title="Fix rate by layer", ylabel="fraction"))
    run.write_table("pairs", pd.DataFrame({"query_id": range(30), "prompt": ["<b>not bold</b>"] * 30}))
    run.add_section("Back-patching", text="Two figures and a table.", figures=["heat", "curves"],
                    tables={"per query": "pairs"}, headline={"oracle fix rate": 0.31})
    return run.finish()


@pytest.fixture(scope="module")
def claims_report(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("claims")
    study = RunFolder.create("study", out=tmp / "study", seed=0)
    study.set_model("tiny-llama", "local")
    child = study.child("backpatch")
    matrix = np.arange(12.0).reshape(3, 4) / 10                  # cell (h1, L2) holds 0.6
    child.save_figure("heat", figures.heatmap(matrix, ["L0", "L1", "L2", "L3"], ["h0", "h1", "h2"], "Fix rate",
                                              "fix rate", xlabel="target layer", ylabel="source layer"))
    child.add_section("Back-patching", figures=["heat"], headline=[{"label": "oracle fix rate", "value": 0.3, "n": 100}])
    rng = np.random.default_rng(0)
    control = rng.random(200) < 0.1
    labels = dict(analysis="backpatch", paper="Biran et al. 2024")
    child.write_claims([
        rate_vs_control("hop.fix", control | (rng.random(200) < 0.3), control, statement="fixes", **labels),
        mean_vs_zero("hop.order", rng.normal(2.0, 1.0, 80), statement="bridge first", **labels),
        share_vs("hop.share", rng.random(50) < 0.5, statement="a coin", **labels),
        *[share_vs(f"hop.more{i}", rng.random(40) < 0.2 * i, statement=f"claim {i}", **labels) for i in range(1, 5)],
    ])
    child.finish()
    return study.finish()


def test_every_image_decodes(report, tmp_path):
    probe = tmp_path / "probe.html"
    probe.write_text(report.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8")
    result = chromium(tmp_path, "--virtual-time-budget=5000", "--dump-dom", probe.as_uri())
    match = re.search(r"<title>IMGS:([-\d,]*)</title>", result.stdout)
    assert match, f"page did not load; stderr tail: {result.stderr[-800:]}"
    widths = [int(w) for w in match.group(1).split(",") if w]
    assert len(widths) == 2 and all(w > 100 for w in widths), widths
    assert "&lt;b&gt;not bold&lt;/b&gt;" in result.stdout  # cell text stays text in the live DOM


def test_screenshot_shows_the_figures(report, tmp_path):
    from PIL import Image

    shot = tmp_path / "shot.png"
    result = chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,2200", "--virtual-time-budget=5000",
                      report.as_uri())
    assert shot.is_file(), f"no screenshot; stderr tail: {result.stderr[-800:]}"
    image = np.asarray(Image.open(shot).convert("RGB"))
    assert image.shape[:2] == (2200, 1200)
    non_white = (image < 235).any(axis=2).mean()
    colours = len(np.unique(image.reshape(-1, 3), axis=0))
    assert non_white > 0.05, f"page looks blank ({non_white:.1%} non-white pixels)"
    # measured: ~9,500 colours with the two figures, ~1,200 (text anti-aliasing) when they fail to decode
    assert colours > 3000, f"only {colours} distinct colours: figures not drawn"


@pytest.mark.skipif(plotly_js() is None, reason="the plotly package is not installed (pip install plotly)")
def test_claims_table_renders_sorts_filters_and_a_heatmap_hover_shows_the_value(claims_report, tmp_path):
    frame = pd.read_parquet(claims_report.parent / "claims.parquet")
    probe = tmp_path / "interact.html"
    probe.write_text(claims_report.read_text(encoding="utf-8").replace("</body>", INTERACT + "</body>"),
                     encoding="utf-8")
    result = chromium(tmp_path, "--virtual-time-budget=20000", "--dump-dom", probe.as_uri())
    match = re.search(r'<pre id="probe">(.*?)</pre>', result.stdout, flags=re.S)
    assert match, f"probe did not finish; stderr tail: {result.stderr[-800:]}"
    out = json.loads(match.group(1).replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<")
                     .replace("&gt;", ">"))
    assert out["header"][:3] == ["claim", "paper", "this model: value [95% interval], n"]
    assert out["claims"] == [[r.id, r.verdict] for r in frame.itertuples()]
    value = dict(zip(frame["id"], frame["value"], strict=True))
    assert sorted(out["ascending"]) == sorted(value) and frame["value"].nunique() > 3
    assert [value[i] for i in out["ascending"]] == sorted(value.values())            # numeric, not text, order
    assert [value[i] for i in out["descending"]] == sorted(value.values(), reverse=True)
    assert out["filtered"] == 1
    assert out["plotly"] == "object"
    hover = out["hover"]
    assert "target layer: L2" in hover and "source layer: h1" in hover and "fix rate: 0.6" in hover, hover
    assert out["live"] is True                          # the live figure replaced its PNG fallback
