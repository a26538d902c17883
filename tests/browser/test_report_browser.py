"""Open a rendered report in headless Chromium: the page loads offline and its figures are drawn.

CI needs the browser: ``apt-get install -y chromium`` (Debian; the binary is /usr/bin/chromium).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hopscope.report import RunFolder, figures

CHROMIUM = next((p for p in (os.environ.get("HOPSCOPE_CHROMIUM"), shutil.which("chromium"),
                             shutil.which("chromium-browser"), "/usr/bin/chromium") if p and Path(p).is_file()), None)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (apt-get install -y chromium)"),
]

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--hide-scrollbars"]

# Injected into a *copy* of the report: writes each image's decoded width into the title on load.
PROBE = ("<script>window.addEventListener('load', () => { document.title = 'IMGS:' + "
         "Array.from(document.images).map(i => i.complete ? i.naturalWidth : -1).join(','); });</script>")


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=120, check=False)


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
    result = chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,2200", report.as_uri())
    assert shot.is_file(), f"no screenshot; stderr tail: {result.stderr[-800:]}"
    image = np.asarray(Image.open(shot).convert("RGB"))
    assert image.shape[:2] == (2200, 1200)
    non_white = (image < 235).any(axis=2).mean()
    colours = len(np.unique(image.reshape(-1, 3), axis=0))
    assert non_white > 0.05, f"page looks blank ({non_white:.1%} non-white pixels)"
    # measured: ~9,500 colours with the two figures, ~1,200 (text anti-aliasing) when they fail to decode
    assert colours > 3000, f"only {colours} distinct colours: figures not drawn"
