"""The page's CSS and its one small script (sortable and filterable tables; live Plotly figures drawn
when they become visible). Both are inlined: report.html fetches nothing."""

from __future__ import annotations

CSS = """
:root { --fg:#1f2328; --muted:#59636e; --line:#d1d9e0; --bg:#f6f8fa; --accent:#0969da;
        --good:#1a7f37; --good-bg:#dafbe1; --bad:#cf222e; --bad-bg:#ffebe9; --meh:#6e5a00; --meh-bg:#fff8c5; }
* { box-sizing: border-box; }
body { font: 15px/1.5 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: var(--fg);
       max-width: 1180px; margin: 0 auto; padding: 24px 28px 60px; }
h1 { font-size: 26px; margin: 0 0 4px; } h2 { font-size: 21px; margin: 36px 0 10px; padding-bottom: 4px;
     border-bottom: 1px solid var(--line); } h3 { font-size: 17px; margin: 26px 0 8px; }
h4 { font-size: 15px; margin: 18px 0 6px; }
a { color: var(--accent); text-decoration: none; } a:hover { text-decoration: underline; }
.meta { color: var(--muted); font-size: 14px; } .meta b { color: var(--fg); font-weight: 600; }
.status { display: inline-block; padding: 0 8px; border-radius: 10px; font-size: 12px; font-weight: 600;
          text-transform: uppercase; background: var(--good-bg); color: var(--good); }
.status.running, .status.stopped, .status.interrupted { background: var(--meh-bg); color: #9a6700; }
.status.failed { background: var(--bad-bg); color: var(--bad); }
.banner { margin: 14px 0; padding: 10px 14px; border-radius: 6px; background: var(--meh-bg); border: 1px solid #d4a72c; }
.banner.failed { background: var(--bad-bg); border-color: #ff8182; }
nav.toc { background: var(--bg); border: 1px solid var(--line); border-radius: 6px; padding: 10px 18px;
          margin: 18px 0; font-size: 14px; } nav.toc ol { margin: 4px 0; padding-left: 22px; }
nav.toc li { margin: 1px 0; } nav.toc .toc-title { font-weight: 600; }
.summary { font-size: 16px; } .summary li { margin: 3px 0; }
.rule { color: var(--muted); font-size: 13px; border-left: 3px solid var(--line); padding-left: 10px; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(210px, 1fr)); gap: 10px; margin: 10px 0; }
.card { border: 1px solid var(--line); border-radius: 6px; padding: 8px 12px; background: #fff; }
.card .value { font-size: 21px; font-weight: 600; font-variant-numeric: tabular-nums; }
.card .label { font-size: 13px; } .card .n, .card .from { font-size: 11px; color: var(--muted); }
figure { margin: 14px 0; text-align: center; } figure img { max-width: 100%; height: auto;
         border: 1px solid var(--line); border-radius: 4px; }
figure.live img.static { display: none; } div.plotly { width: 100%; }
figcaption { font-size: 13px; color: var(--muted); }
details { margin: 10px 0; border: 1px solid var(--line); border-radius: 6px; padding: 6px 12px; }
details > summary { cursor: pointer; font-weight: 600; } details[open] > summary { margin-bottom: 8px; }
details.analysis > summary { font-size: 17px; }
.count { color: var(--muted); font-weight: normal; font-size: 13px; }
.scroll { overflow-x: auto; max-height: 640px; overflow-y: auto; }
table { border-collapse: collapse; font-size: 13px; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid var(--line); padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: var(--bg); position: sticky; top: 0; z-index: 1; }
tr:nth-child(even) td { background: #fbfcfd; }
td.num { text-align: right; white-space: nowrap; } td.na { color: #b0b7be; }
table.sortable th { cursor: pointer; user-select: none; } table.sortable th:hover { background: #eaeef2; }
th[aria-sort="ascending"]::after { content: " \\25B2"; font-size: 9px; }
th[aria-sort="descending"]::after { content: " \\25BC"; font-size: 9px; }
.filter { margin: 4px 0; font-size: 13px; } .filter input { font: inherit; padding: 2px 6px; width: 240px; }
.filter .shown { color: var(--muted); margin-left: 8px; }
table.claims { width: 100%; font-size: 14px; } table.claims td { padding: 6px 8px; }
table.claims .sub { display: block; color: var(--muted); font-size: 12px; }
table.claims td.value { white-space: nowrap; }
.verdict { display: inline-block; padding: 1px 9px; border-radius: 10px; font-size: 12px; font-weight: 600;
           white-space: nowrap; }
.verdict.supported { background: var(--good-bg); color: var(--good); }
.verdict.contradicted { background: var(--bad-bg); color: var(--bad); }
.verdict.inconclusive { background: #eef1f4; color: #57606a; }
.verdict.indicative { border: 1px dashed currentColor; }
svg.interval { vertical-align: middle; } svg.interval text { font-size: 10px; fill: #57606a; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 2px 14px; font-size: 14px; margin: 8px 0; }
dl.facts dt { color: var(--muted); } dl.facts dd { margin: 0; }
.claim { border-top: 1px solid var(--line); margin-top: 18px; }
pre { background: var(--bg); border: 1px solid var(--line); border-radius: 6px; padding: 10px;
      font-size: 12px; overflow-x: auto; }
.note { color: var(--muted); font-size: 13px; margin: 4px 0; }
.child { border-left: 3px solid var(--line); padding-left: 16px; margin-left: 2px; }
footer { margin-top: 40px; color: var(--muted); font-size: 12px; }
"""

SCRIPT = r"""
(function () {
  "use strict";
  function cellValue(td) {
    var v = td.getAttribute("data-v");
    return v === null ? null : parseFloat(v);
  }
  function sortable(table) {
    var head = table.tHead, body = table.tBodies[0];
    if (!head || !body) return;
    Array.prototype.forEach.call(head.rows[0].cells, function (th, col) {
      th.title = "click to sort";
      th.addEventListener("click", function () {
        var asc = th.getAttribute("aria-sort") !== "ascending";
        Array.prototype.forEach.call(head.rows[0].cells, function (o) { o.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", asc ? "ascending" : "descending");
        var rows = Array.prototype.slice.call(body.rows);
        var numeric = rows.every(function (r) {
          var td = r.cells[col]; return !td || td.textContent.trim() === "" || cellValue(td) !== null;
        });
        rows.sort(function (a, b) {
          var x = a.cells[col], y = b.cells[col], d;
          if (numeric) {
            var p = x ? cellValue(x) : null, q = y ? cellValue(y) : null;
            if (p === null || isNaN(p)) return 1;
            if (q === null || isNaN(q)) return -1;
            d = p - q;
          } else {
            d = (x ? x.textContent : "").localeCompare(y ? y.textContent : "", undefined, {numeric: true});
          }
          return asc ? d : -d;
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
    table.classList.add("sortable");
  }
  function filterable(table) {
    var body = table.tBodies[0];
    if (!body || body.rows.length < 6) return;
    var box = document.createElement("div"), input = document.createElement("input"), shown = document.createElement("span");
    box.className = "filter"; input.type = "search"; input.placeholder = "filter rows\u2026"; shown.className = "shown";
    box.appendChild(input); box.appendChild(shown);
    var holder = table.parentNode.classList.contains("scroll") ? table.parentNode : table;
    holder.parentNode.insertBefore(box, holder);
    input.addEventListener("input", function () {
      var q = input.value.toLowerCase(), n = 0;
      Array.prototype.forEach.call(body.rows, function (r) {
        var hit = r.textContent.toLowerCase().indexOf(q) >= 0;
        r.style.display = hit ? "" : "none"; if (hit) n += 1;
      });
      shown.textContent = q ? n + " of " + body.rows.length + " rows" : "";
    });
  }
  document.querySelectorAll("table.data").forEach(function (t) { sortable(t); filterable(t); });

  function draw(div) {
    if (div.getAttribute("data-drawn") || div.offsetParent === null || !window.Plotly) return;
    div.setAttribute("data-drawn", "1");
    var spec = JSON.parse(document.getElementById(div.getAttribute("data-spec")).textContent);
    var layout = spec.layout || {};
    layout.autosize = true;
    window.Plotly.newPlot(div, spec.data, layout, {displaylogo: false, responsive: true}).then(function () {
      div.parentNode.classList.add("live");
    });
  }
  function drawVisible() { document.querySelectorAll("div.plotly").forEach(draw); }
  document.addEventListener("toggle", drawVisible, true);
  drawVisible();
})();
"""
