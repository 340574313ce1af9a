"""report.html of `exif-jax eval-localize` and `exif-jax localize FOLDER`: its files and numbers, then the page
in headless Chromium (Debian's `chromium`): rows, sorting by a click on a score header, the spliced filter,
every image loaded from disk, and a screenshot."""
import csv
import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
from headless_chromium import Browser, find_chromium
from PIL import Image

from exif_jax import cli
from exif_jax.eval.splices import make_splices

PHOTOS = Path(__file__).resolve().parents[1] / "exif_jax" / "assets" / "photos"
METHODS = ("learned", "classical", "random")


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """8 generated 160x128 images (4 spliced) and one broken file listed in the manifest."""
    bench = tmp_path_factory.mktemp("bench")
    make_splices(PHOTOS, bench, 8, seed=1, size=(160, 128), progress=False)
    (bench / "images" / "broken.png").write_bytes(b"not an image")
    with open(bench / "manifest.jsonl", "a") as f:
        f.write(json.dumps({"image": "images/broken.png", "label": 0, "name": "broken"}) + "\n")
    return bench


@pytest.fixture(scope="module")
def eval_out(bench, tiny_workdir, tmp_path_factory):
    """`exif-jax eval-localize --all-methods` on the bench (the tiny config's crop size: 32)."""
    out = tmp_path_factory.mktemp("eval")
    rc = cli.main(["eval-localize", "--dataset", f"folder:{bench}", "--checkpoint", str(tiny_workdir[0]),
                   "--out", str(out), "--all-methods", "--stride", "16", "--show", "0", "--no-progress"])
    assert rc == 0
    return out


@pytest.fixture(scope="module")
def localize_out(bench, tmp_path_factory):
    """`exif-jax localize FOLDER --baseline noise` on a folder of 3 photos, a broken one and a text file.
    (The bench's size, crop size and stride: the compiled functions of eval_out's classical row are reused.)"""
    folder = tmp_path_factory.mktemp("photos")
    for p in sorted((bench / "images").glob("*.png"))[:3]:
        shutil.copy(p, folder / p.name)
    (folder / "zz_broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    (folder / "notes.txt").write_text("not a photo: not listed")
    out = tmp_path_factory.mktemp("localize")
    rc = cli.main(["localize", str(folder), "--baseline", "noise", "--crop-size", "32", "--stride", "16",
                   "-o", str(out)])
    assert rc == 1  # the broken file
    return out


class _Page(HTMLParser):
    """The report's tags of interest: image sources, links, table rows and the summary cells."""

    def __init__(self):
        super().__init__()
        self.srcs, self.hrefs, self.rows, self.summary, self._in, self._cell = [], [], [], [], [], False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.srcs.append(a["src"])
            assert a.get("loading") == "lazy" and a.get("width") and a.get("height"), a
        if tag in ("a", "link", "script") and (a.get("href") or a.get("src")):
            self.hrefs.append(a.get("href") or a.get("src"))
        if tag == "table":
            self._in.append(a.get("id"))
        if tag == "tr" and self._in and self._in[-1] == "rows" and "data-label" in a:
            self.rows.append(a["data-label"])
        if tag == "tr" and self._in and self._in[-1] == "summary":
            self.summary.append([])
        if tag in ("td", "th") and self._in and self._in[-1] == "summary":
            self.summary[-1].append("")
            self._cell = True

    def handle_endtag(self, tag):
        if tag == "table":
            self._in.pop()
        if tag in ("td", "th"):
            self._cell = False

    def handle_data(self, data):
        if self._cell:
            self.summary[-1][-1] += data


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text())
    return page


def _md_cells(md: str) -> list[list[str]]:
    """The cells of a Markdown table's header and body rows (not the |---| divider)."""
    return [[c.strip() for c in line.strip().strip("|").split("|")] for line in md.splitlines()
            if line.startswith("| ")]


@pytest.mark.slow
def test_eval_report_files_and_numbers(eval_out, tiny_workdir):
    report = json.loads((eval_out / "metrics.json").read_text())
    html = eval_out / "report.html"
    assert report["report_html"] == str(html)
    page = _parse(html)
    text = html.read_text()
    # The model is named in the header; the dataset too.
    assert re.search(r'<p id="model">Model: .*learned.*model:' + re.escape(str(tiny_workdir[0])), text)
    assert f"<dd>{report['dataset']}</dd>" in text
    assert "noise" in text and "broken" in text  # the baseline's name; the failed image listed
    # One row per evaluated image (the broken one is left out), labels from the manifest.
    assert len(page.rows) == 8 and page.rows.count("spliced") == 4
    # Self-contained: every image is a small thumbnail next to the page; nothing from the network.
    assert len(page.srcs) == 8 * (2 + len(METHODS))  # photo, mask, one overlay per method
    for src in page.srcs:
        assert not re.match(r"[a-z]+:|//", src) and (eval_out / src).is_file(), src
        assert max(Image.open(eval_out / src).size) <= 256
    assert not re.search(r"(src|href)=\"(https?:)?//", text)
    # The summary table holds exactly the cells metrics.md prints (both rows per method).
    md = _md_cells((eval_out / "metrics.md").read_text())
    assert page.summary == md
    assert [r[:2] for r in page.summary[1:]] == [[m, k] for m in METHODS for k in ("spliced only", "all images")]
    # Per-image numbers are the CSV's.
    with open(eval_out / "per_image.csv") as f:
        learned_ap = [r["ap"] for r in csv.DictReader(f) if r["method"] == "learned"]
    assert len(learned_ap) == 8 and sum(ap != "nan" for ap in learned_ap) == 4  # authentic: undefined
    for ap in (ap for ap in learned_ap if ap != "nan"):
        assert f'data-v="{ap}"' in text, ap


@pytest.mark.slow
def test_localize_folder_report(localize_out):
    html = localize_out / "report.html"
    page = _parse(html)
    text = html.read_text()
    assert '<p id="model">Model: <b>classical</b>: <code>noise</code>' in text
    assert len(page.rows) == 3 and set(page.rows) == {""}  # labels unknown: no filter, no label column
    assert 'name="filter"' not in text and "zz_broken.jpg" in text and "notes.txt" not in text
    for src in page.srcs:
        assert (localize_out / src).is_file()
    # The overlays link to the full-size heatmaps, the photos to the originals (relative links).
    lines = [json.loads(x) for x in (localize_out / "scores.jsonl").read_text().splitlines()]
    want = [Path(r[k]).resolve() for r in lines for k in ("photo", "png")]
    assert [(localize_out / unquote(h)).resolve() for h in page.hrefs] == want
    assert [f'data-v="{r["score_ms"]!r}"' in text for r in lines] == [True] * 3


def test_localize_empty_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert cli.main(["localize", str(tmp_path / "empty"), "--baseline", "noise", "-o", str(tmp_path / "o")]) == 2
    assert "empty: folder holds no photos" in capsys.readouterr().err


@pytest.fixture(scope="module")
def browser():
    binary = find_chromium()
    if not binary:
        pytest.skip("no Chromium browser on this machine (apt-get install chromium; or set $CHROMIUM)")
    with Browser(binary, width=1500, height=2600) as b:  # tall: every lazy image of 8 rows is in view
        yield b


def _column(b: Browser, header: str, method: str = "learned") -> list[float | None]:
    """The values of one method's score column, in the row order shown (None where n/a)."""
    return b.js(f"""(() => {{
        const ths = [...document.querySelectorAll('#rows th.sort')].filter(th => th.textContent.startsWith({header!r}));
        const methods = [...document.querySelectorAll('#rows th.method')].map(th => th.textContent);
        const th = ths[methods.indexOf({method!r})];
        return [...document.querySelectorAll('#rows tbody tr')].filter(r => !r.hidden).map(r => {{
            const v = r.cells[+th.dataset.col].dataset.v; return v === undefined ? null : parseFloat(v); }});
    }})()""")


def _click(b: Browser, header: str, method: str = "learned") -> None:
    b.js(f"""(() => {{
        const ths = [...document.querySelectorAll('#rows th.sort')].filter(th => th.textContent.startsWith({header!r}));
        const methods = [...document.querySelectorAll('#rows th.method')].map(th => th.textContent);
        ths[methods.indexOf({method!r})].click(); }})()""")


@pytest.mark.browser
def test_eval_report_in_chromium(eval_out, browser, tmp_path):
    b = browser
    b.open((eval_out / "report.html").as_uri())
    assert b.js("document.querySelectorAll('#rows tbody tr').length") == 8
    assert b.js("document.getElementById('count').textContent") == "showing 8 of 8"
    assert "learned" in b.js("document.getElementById('model').textContent")
    widths = b.images_in_view()  # every thumbnail loads from disk (file://)
    assert len(widths) == 8 * 5 and min(widths) > 0
    summary = b.js("[...document.querySelectorAll('#summary tbody tr')].map(r => r.cells[0].textContent"
                   " + '/' + r.cells[1].textContent)")
    assert summary == [f"{m}/{k}" for m in METHODS for k in ("spliced only", "all images")]

    # A click on a score header sorts by it, highest first; n/a (authentic p-mAP) last; again: lowest first.
    before = _column(b, "ms", "classical")
    _click(b, "ms", "classical")
    after = _column(b, "ms", "classical")
    assert after == sorted(before, reverse=True) and after != before
    _click(b, "ms", "classical")
    assert _column(b, "ms", "classical") == sorted(before)
    _click(b, "p-mAP")
    ap = _column(b, "p-mAP")
    known = [x for x in ap if x is not None]
    assert len(known) == 4 and ap == sorted(known, reverse=True) + [None] * 4
    b.screenshot(str(tmp_path / "report_sorted.png"))

    # The filter leaves the spliced rows only, then all again.
    b.js("document.querySelector('input[name=filter][value=spliced]').click()")
    shown = b.js("[...document.querySelectorAll('#rows tbody tr')].filter(r => !r.hidden)"
                 ".map(r => r.dataset.label)")
    assert shown == ["spliced"] * 4 and b.js("document.getElementById('count').textContent") == "showing 4 of 8"
    assert _column(b, "p-mAP") == sorted(known, reverse=True)  # the sort order holds under the filter
    b.js("document.querySelector('input[name=filter][value=authentic]').click()")
    assert b.js("[...document.querySelectorAll('#rows tbody tr')].filter(r => !r.hidden).length") == 4
    b.js("document.querySelector('input[name=filter][value=all]').click()")
    assert b.js("[...document.querySelectorAll('#rows tbody tr')].filter(r => !r.hidden).length") == 8
    b.js("document.querySelector('#rows th[data-col=\"0\"]').click()")  # "#": back to the original order
    assert _column(b, "ms", "classical") == before
    png = b.screenshot(str(tmp_path / "report.png"), full_page=True)
    assert Image.open(png).size[0] >= 1000 and np.asarray(Image.open(png).convert("L")).std() > 10


@pytest.mark.browser
def test_localize_report_in_chromium(localize_out, browser):
    b = browser
    b.open((localize_out / "report.html").as_uri())
    assert b.js("document.querySelectorAll('#rows tbody tr').length") == 3
    assert b.js("document.querySelectorAll('input[name=filter]').length") == 0
    assert min(b.images_in_view()) > 0
    _click(b, "ncut", "classical")
    ncut = _column(b, "ncut", "classical")
    assert ncut == sorted(ncut, reverse=True) and None not in ncut


def test_single_photo_has_no_report_but_a_folder_has(bench, tmp_path):
    one = sorted((bench / "images").glob("*.png"))[0]
    args = ["--baseline", "noise", "--crop-size", "32", "--stride", "16", "-o"]
    assert cli.main(["localize", str(one), *args, str(tmp_path / "a")]) == 0
    assert not (tmp_path / "a" / "report.html").exists()  # one photo: its PNG is the result, as before
    (tmp_path / "f").mkdir()
    shutil.copy(one, tmp_path / "f" / one.name)
    assert cli.main(["localize", str(tmp_path / "f"), *args, str(tmp_path / "b")]) == 0
    assert len(_parse(tmp_path / "b" / "report.html").rows) == 1


@pytest.mark.browser
def test_hundreds_of_rows_stay_responsive(browser, tmp_path):
    """400 rows: only the images near the view load, and a sort is quick."""
    from exif_jax.eval import report

    rng = np.random.default_rng(0)
    rows = []
    for i in range(400):
        img = rng.integers(0, 255, (96, 128, 3), np.uint8)
        thumbs = report.write_thumbnails(str(tmp_path), f"{i:05d}", img, {"learned": rng.normal(size=(96, 128))})
        rows.append({"name": f"img{i}", "label": i % 2, **thumbs,
                     "values": {"learned": {"ap": float(rng.uniform()) if i % 2 else None, "score_ms": i / 7}}})
    cols = (("ap", "p-mAP", ""), ("score_ms", "ms", ""))
    page = report.write_html(str(tmp_path / "report.html"), title="t", models={"learned": "model:x"}, rows=rows,
                             columns=cols)
    b = browser
    b.open(Path(page).as_uri())
    assert b.js("document.querySelectorAll('#rows tbody tr').length") == 400
    loaded = b.js("[...document.images].filter(i => i.complete && i.naturalWidth > 0).length")
    assert 0 < loaded < 400, loaded  # lazy: the rows near the window only, not the page's 800 images
    ms = b.js("(() => { const t = performance.now(); [...document.querySelectorAll('#rows th.sort')]"
              ".find(th => th.textContent === 'ms').click(); return performance.now() - t; })()")
    assert ms < 2000, ms  # ~10 ms on a 2-core machine
    values = _column(b, "ms")
    assert values == sorted(values, reverse=True) and len(values) == 400
