"""report.html: one browsable page of a localization run (`eval-localize`, `localize` on several photos).

Fed plain data: per-image rows (thumbnails already written by `write_thumbnails`, label, per-method scores)
and an optional summary table of preformatted cells. The page is self-contained: every image is a small
thumbnail in OUT/report_files/ referenced by a relative path, the style and a small vanilla script are inline,
nothing is fetched from the network, so it works opened from disk (file://). Rows are rendered server-side
(readable without JavaScript); the script sorts by any score column (click its header) and filters
spliced / authentic. Images load lazily and carry their size, so hundreds of rows stay responsive.
"""
from __future__ import annotations

import html
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence
from urllib.parse import quote

import numpy as np
from PIL import Image

THUMB = 256  # px, long side of every thumbnail (shown at 112 px: sharp on high-density screens)
FILES = "report_files"
LABELS = {1: "spliced", 0: "authentic"}
# "#" (the original order) and the image name sort lowest / A-Z first; scores highest first.
SORTS = {"#": ' class="sort" data-col="0" data-first="ascending"',
         "image": ' class="sort" data-col="1" data-type="text" data-first="ascending"'}


def _resize(image: Any, size: int) -> Any:
    w, h = image.size
    scale = min(1.0, size / max(w, h))
    return image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)


def overlay(thumb: np.ndarray, score_map: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """uint8 [h, w, 3]: the thumbnail blended with the map in the jet colormap, min-max scaled per image as
    the full-size heatmap PNGs (the sign of a consensus map is arbitrary: both ends are informative)."""
    # Lazy: matplotlib is slow to import and only drawing a figure needs it.
    import matplotlib

    h, w = thumb.shape[:2]
    small = np.asarray(Image.fromarray(np.asarray(score_map, np.float32), mode="F").resize((w, h), Image.BILINEAR))
    lo, hi = float(small.min()), float(small.max())
    norm = (small - lo) / (hi - lo) if hi > lo else np.zeros_like(small)
    color = matplotlib.colormaps["jet"](norm)[..., :3] * 255.0
    return np.clip((1 - alpha) * thumb + alpha * color, 0, 255).astype(np.uint8)


def write_thumbnails(out_dir: str, key: str, image: np.ndarray, maps: Mapping[str, np.ndarray],
                     mask: np.ndarray | None = None, size: int = THUMB) -> dict[str, Any]:
    """Write OUT/report_files/<key>_photo.jpg, _mask.png and _<method>.jpg (one overlay per map); return
    {"photo", "mask", "maps": {method: ...}}, each {"src": path relative to OUT, "width", "height"}."""
    os.makedirs(os.path.join(out_dir, FILES), exist_ok=True)

    def save(im: Any, name: str, **kw: Any) -> dict[str, Any]:
        rel = f"{FILES}/{key}_{name}"
        im.save(os.path.join(out_dir, rel), **kw)
        return {"src": rel, "width": im.size[0], "height": im.size[1]}

    thumb = _resize(Image.fromarray(np.asarray(image, np.uint8)), size)
    out: dict[str, Any] = {"photo": save(thumb, "photo.jpg", quality=85), "mask": None, "maps": {}}
    if mask is not None:
        m = Image.fromarray(np.asarray(mask, bool).astype(np.uint8) * 255)
        out["mask"] = save(m.resize(thumb.size, Image.NEAREST), "mask.png", optimize=True)
    pixels = np.asarray(thumb, np.float32)
    for method, score_map in maps.items():
        out["maps"][method] = save(Image.fromarray(overlay(pixels, score_map)), f"{method}.jpg", quality=85)
    return out


def relative_href(target: str, out_dir: str) -> str:
    """A link from OUT/report.html to a file: relative where it can be, else a file:// URI."""
    try:
        return quote(Path(os.path.relpath(os.path.abspath(target), os.path.abspath(out_dir))).as_posix())
    except ValueError:  # another drive (Windows): no relative path exists
        return Path(os.path.abspath(target)).as_uri()


def _img(img: Mapping[str, Any] | None, alt: str, href: str | None = None) -> str:
    if img is None:
        return '<td class="img none">–</td>'
    tag = (f'<img loading="lazy" decoding="async" src="{html.escape(quote(img["src"]))}" '
           f'width="{img["width"]}" height="{img["height"]}" alt="{html.escape(alt)}">')
    if href:
        tag = f'<a href="{html.escape(href)}">{tag}</a>'
    return f'<td class="img">{tag}</td>'


def _num(x: Any) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return '<td class="num na">n/a</td>'
    return f'<td class="num" data-v="{float(x)!r}">{float(x):.3f}</td>'


def _summary_html(summary: Mapping[str, Any] | None) -> str:
    if not summary:
        return ""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in summary["head"])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
                   for row in summary["rows"])
    return f'<table id="summary"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def write_html(path: str, *, title: str, models: Mapping[str, str], rows: Sequence[Mapping[str, Any]],
               columns: Sequence[tuple[str, str, str]], meta: Sequence[tuple[str, str]] = (),
               summary: Mapping[str, Any] | None = None, notes: Sequence[str] = (),
               failed: Sequence[Mapping[str, str]] = ()) -> str:
    """Write the page to path and return it.

    models: method -> the model it ran (checkpoint path or baseline name), in column order.
    rows: {"name", "label" (1 spliced, 0 authentic, None unknown), "photo", "mask", "maps" (write_thumbnails'
      output), "values": {method: {column key: float or None}}, and optional links "href" (of the photo)
      and "map_hrefs" {method: link}}.
    columns: (key, header, tooltip) of the score columns shown per method. summary: {"head", "rows"} cells.
    """
    methods = list(models)
    labelled = any(r.get("label") is not None for r in rows)
    has_mask = any(r.get("mask") for r in rows)
    fixed = ["#", "image", *(["label"] if labelled else []), "photo", *(["ground truth"] if has_mask else [])]
    # Header row 1: the fixed columns span both rows; each method spans its map and score columns.
    top = [f'<th rowspan="2"{SORTS.get(h, "")}>{h}</th>' for h in fixed]
    top += [f'<th colspan="{1 + len(columns)}" class="method">{html.escape(m)}</th>' for m in methods]
    sub, col = [], len(fixed)
    for _ in methods:
        sub.append("<th>map</th>")
        col += 1
        for key, header, tip in columns:
            sub.append(f'<th class="sort" data-col="{col}" title="{html.escape(tip)}">{html.escape(header)}</th>')
            col += 1
    body = []
    for i, r in enumerate(rows, 1):
        label = r.get("label")
        cells = [f'<td class="num" data-v="{i}">{i}</td>', f'<td class="name">{html.escape(r["name"])}</td>']
        if labelled:
            cells.append(f'<td class="label">{LABELS.get(label, "?")}</td>')
        cells.append(_img(r["photo"], r["name"], r.get("href")))
        if has_mask:
            cells.append(_img(r.get("mask"), "ground truth"))
        for m in methods:
            cells.append(_img(r["maps"].get(m), f"{m} map", r.get("map_hrefs", {}).get(m)))
            vals = r["values"].get(m, {})
            cells += [_num(vals.get(key)) for key, _, _ in columns]
        body.append(f'<tr data-label="{LABELS.get(label, "")}">{"".join(cells)}</tr>')

    n_spliced = sum(r.get("label") == 1 for r in rows)
    controls = ""
    if labelled:
        opts = (("all", f"all ({len(rows)})"), ("spliced", f"spliced ({n_spliced})"),
                ("authentic", f"authentic ({len(rows) - n_spliced})"))
        controls = "Show: " + " ".join(
            f'<label><input type="radio" name="filter" value="{v}"{" checked" if v == "all" else ""}> {t}</label>'
            for v, t in opts)
    model_line = " · ".join(f"<b>{html.escape(m)}</b>: <code>{html.escape(d)}</code>" for m, d in models.items())
    meta_html = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(str(v))}</dd>" for k, v in meta)
    notes_html = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    failed_html = ""
    if failed:
        items = "".join(f"<li><code>{html.escape(f['name'])}</code>: {html.escape(f['reason'])}</li>" for f in failed)
        failed_html = (f'<details id="failed"><summary>{len(failed)} failed (left out)</summary>'
                       f'<ul>{items}</ul></details>')
    page = _PAGE.format(
        title=html.escape(title), model_line=model_line, meta=meta_html, summary=_summary_html(summary),
        notes=(f'<details id="notes"><summary>How to read the numbers</summary><ul class="notes">{notes_html}'
               '</ul></details>' if notes_html else ""), failed=failed_html, controls=controls,
        top="".join(top), sub="".join(sub), body="\n".join(body), n=len(rows), style=_STYLE, script=_SCRIPT)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Path(path).write_text(page, encoding="utf-8")
    return path


_STYLE = """
body{font:13px/1.35 system-ui,sans-serif;margin:12px;color:#222}
h1{font-size:18px;margin:0 0 4px}h2{font-size:15px;margin:18px 0 6px}
#model{margin:4px 0}code{font-size:12px;background:#f3f3f3;padding:0 3px}
dl{display:grid;grid-template-columns:max-content auto;gap:0 10px;margin:4px 0}dt{color:#666}dd{margin:0}
table{border-collapse:collapse}th,td{border:1px solid #ddd;padding:2px 5px}
th{background:#f4f4f4;font-weight:600}#summary td{text-align:right;white-space:nowrap}
#summary td:nth-child(-n+2){text-align:left}#summary th{min-width:4.5em}
.notes{color:#555;font-size:12px;max-width:1100px}details{margin:6px 0}
#rows thead{position:sticky;top:0;z-index:1}
#rows th.method{background:#e8eef8}
th.sort{cursor:pointer;user-select:none;white-space:nowrap}th.sort:hover{background:#dde6f5}
th[aria-sort=descending]::after{content:" \\25BC"}th[aria-sort=ascending]::after{content:" \\25B2"}
td.num{text-align:right;font-variant-numeric:tabular-nums}td.na{color:#aaa}
td.img{padding:1px}td.img img{display:block;width:auto;height:auto;max-width:112px;max-height:112px}
td.name{min-width:9em;max-width:16em;overflow-wrap:anywhere}
tr[data-label=spliced] td.label{color:#b00}
#controls{margin:6px 0}#controls label{margin-right:10px}
"""

# Sorting moves the existing <tr> elements (no re-render); rows without a number sort last either way.
_SCRIPT = """
(function () {
  var tbody = document.querySelector('#rows tbody');
  var rows = Array.prototype.slice.call(tbody.rows);
  rows.forEach(function (r, i) { r.dataset.i = i; });
  function key(r, col, text) {
    var td = r.cells[col];
    if (text) return td.textContent;
    var v = td.dataset.v;
    return v === undefined ? NaN : parseFloat(v);
  }
  document.querySelectorAll('#rows th.sort').forEach(function (th) {
    th.addEventListener('click', function () {
      var col = +th.dataset.col, text = th.dataset.type === 'text';
      var now = th.getAttribute('aria-sort');
      var dir = now ? (now === 'descending' ? 'ascending' : 'descending') : (th.dataset.first || 'descending');
      document.querySelectorAll('#rows th[aria-sort]').forEach(function (o) { o.removeAttribute('aria-sort'); });
      th.setAttribute('aria-sort', dir);
      var sign = dir === 'ascending' ? 1 : -1;
      var sorted = rows.slice().sort(function (a, b) {
        var x = key(a, col, text), y = key(b, col, text);
        if (!text) {
          var nx = isNaN(x), ny = isNaN(y);
          if (nx || ny) return nx === ny ? a.dataset.i - b.dataset.i : (nx ? 1 : -1);
        }
        var c = text ? x.localeCompare(y) : x - y;
        return c ? sign * c : a.dataset.i - b.dataset.i;
      });
      var frag = document.createDocumentFragment();
      sorted.forEach(function (r) { frag.appendChild(r); });
      tbody.appendChild(frag);
    });
  });
  var count = document.getElementById('count');
  function filter(value) {
    var shown = 0;
    rows.forEach(function (r) {
      r.hidden = !(value === 'all' || r.dataset.label === value);
      if (!r.hidden) shown++;
    });
    count.textContent = 'showing ' + shown + ' of ' + rows.length;
  }
  document.querySelectorAll('input[name=filter]').forEach(function (inp) {
    inp.addEventListener('change', function () { if (inp.checked) filter(inp.value); });
  });
  filter('all');
})();
"""

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width,initial-scale=1"><style>{style}</style></head>
<body>
<header><h1>{title}</h1><p id="model">Model: {model_line}</p><dl>{meta}</dl></header>
{summary}{notes}{failed}
<h2>Images</h2>
<div id="controls">{controls} <span id="count">{n} images</span></div>
<table id="rows"><thead><tr>{top}</tr><tr>{sub}</tr></thead>
<tbody>
{body}
</tbody></table>
<script>{script}</script>
</body></html>
"""
