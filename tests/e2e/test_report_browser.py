"""report.html in a real browser: headless Chromium decodes every plot and thumbnail and paints the page.

Needs the Debian package `chromium` (/usr/bin/chromium); skips with the reason when it is absent.
"""
from __future__ import annotations

import html
import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from enrich_ray.config import ReportConfig
from tests.unit.test_report import build_inputs

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Appended to a copy of the page (after the page's own script): after load, each <img> records what
# the browser decoded, so --dump-dom shows it.
PROBE = """<script>
window.addEventListener("load", () => {
  for (const img of document.images) {
    img.setAttribute("data-natural", img.naturalWidth + "x" + img.naturalHeight);
    img.setAttribute("data-shown", img.width + "x" + img.height);
  }
  document.body.setAttribute("data-probed", String(document.images.length));
});
</script>"""

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason=f"{CHROMIUM} not found: install the Debian package chromium to run browser tests"
)


def chromium(tmp_path: Path, *args: str) -> str:
    """Run headless Chromium with a throwaway profile; return its stdout."""
    profile = tmp_path / "profile"
    result = subprocess.run(
        [str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.fixture(scope="module")
def frames_dir(request) -> Path | None:
    """BUSI's folder when ../shared/data holds it, else None: the page is built from synthetic frames, so the
    browser test runs on a fresh clone too."""
    try:
        return request.getfixturevalue("busi_dir")
    except pytest.skip.Exception:
        return None


@pytest.fixture(scope="module")
def report(frames_dir: Path | None, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("report") / "report.html"
    build_inputs(frames_dir, n=20).write(path, ReportConfig(gallery_size=8))
    return path


def test_every_image_decodes_in_the_browser(report: Path, tmp_path: Path):
    page = report.read_text(encoding="utf-8")
    n_images = page.count("<img ")
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    dom = chromium(tmp_path, "--virtual-time-budget=5000", "--dump-dom", probe.as_uri())
    assert f'data-probed="{n_images}"' in dom, "the load handler did not run or saw a different page"
    imgs = re.findall(r"<img [^>]*>", dom)
    assert len(imgs) == n_images
    natural = [re.search(r'data-natural="(\d+)x(\d+)"', tag) for tag in imgs]
    assert all(m is not None for m in natural), "an <img> was never probed"
    sizes = [(int(m.group(1)), int(m.group(2))) for m in natural]
    assert all(w > 0 and h > 0 for w, h in sizes), f"an image failed to decode: {sizes}"
    plots = [s for tag, s in zip(imgs, sizes) if 'class="plot"' in tag]
    thumbs = [s for tag, s in zip(imgs, sizes) if 'class="thumb"' in tag]
    assert len(plots) == 2 and all(w >= 400 for w, _ in plots)
    assert len(thumbs) >= 8 and all(s == (96, 96) for s in thumbs)


def test_screenshot_shows_plots_and_galleries(report: Path, tmp_path: Path):
    shot = tmp_path / "shot.png"
    chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,3000", report.as_uri())
    grey = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert grey.shape == (3000, 1200)
    assert grey.std() > 20, "the page looks blank"
    # ultrasound thumbnails are dark squares on a white page: count 96x96-ish tiles that are mostly dark
    tiles = grey[: 3000 // 50 * 50, : 1200 // 50 * 50].reshape(60, 50, 24, 50).mean(axis=(1, 3))
    assert (tiles < 110).sum() >= 8, "too few dark regions: the galleries did not paint"
    assert (tiles > 245).sum() >= 100, "no white page around them"
    # the plots' blue (redundancy) and red (coverage) curves are painted
    rgb = np.asarray(Image.open(shot).convert("RGB"), dtype=np.int32)
    blue = (rgb[..., 2] - rgb[..., 0] > 80).sum()
    red = (rgb[..., 0] - rgb[..., 2] > 80).sum()
    assert blue > 200 and red > 200, (blue, red)


def test_embedding_map_paints_its_marked_and_grey_points(report: Path, tmp_path: Path):
    # a copy of the page showing the map section alone, so it sits on the first screen
    alone = tmp_path / "map.html"
    hide = "<style>body > :not(#map), .map-legend { display: none; }</style></head>"
    alone.write_text(report.read_text(encoding="utf-8").replace("</head>", hide), encoding="utf-8")
    shot = tmp_path / "map.png"
    chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,900", alone.as_uri())
    rgb = np.asarray(Image.open(shot).convert("RGB"), dtype=np.int32)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    orange = ((abs(r - 0xE0) < 25) & (abs(g - 0x7B) < 25) & (b < 40)).sum()  # frames to label first
    purple = ((abs(r - 0x8E) < 25) & (abs(g - 0x24) < 25) & (abs(b - 0xAA) < 25)).sum()  # flagged
    grey = ((abs(r - 0xB0) < 6) & (abs(g - 0xB0) < 6) & (abs(b - 0xB0) < 6)).sum()  # the other frames
    assert orange > 200 and purple > 40 and grey > 10, (orange, purple, grey)


# Appended to a copy of the page: sorts the first-to-label table by its similarity column (up, then
# down) and by source, and filters it, recording each result in the DOM for --dump-dom.
SORT_PROBE = """<script>
window.addEventListener("load", () => {
  const table = document.querySelector("#ranking table.data:last-of-type");
  const head = table.tHead.rows[0].cells;
  const column = (i) => Array.from(table.tBodies[0].rows).filter((r) => !r.hidden).map((r) => r.cells[i].textContent.trim());
  const record = (name, values) => document.body.setAttribute("data-" + name, JSON.stringify(values));
  head[3].click(); record("up", column(3));
  head[3].click(); record("down", column(3)); record("sorted", head[3].getAttribute("aria-sort"));
  head[1].click(); record("by-source", column(1));
  const box = table.previousElementSibling.querySelector("input[type=search]");
  box.value = "BENIGN"; box.dispatchEvent(new Event("input"));
  record("filtered", column(1)); record("count", table.previousElementSibling.textContent.trim());
  record("boxes", [document.querySelectorAll("table.data").length, document.querySelectorAll(".table-filter input").length]);
});
</script>"""


def dom_attribute(dom: str, name: str):
    """A JSON value the probe wrote into the body's data-NAME attribute."""
    match = re.search(rf'data-{name}="([^"]*)"', dom)
    assert match, f"the probe recorded no {name}"
    return json.loads(html.unescape(match.group(1)))


def test_tables_sort_by_a_clicked_header_and_filter_by_the_box(report: Path, tmp_path: Path):
    page = report.read_text(encoding="utf-8")
    probe = tmp_path / "sort.html"
    probe.write_text(page.replace("</body>", SORT_PROBE + "</body>"), encoding="utf-8")
    dom = chromium(tmp_path, "--virtual-time-budget=5000", "--dump-dom", probe.as_uri())
    rendered = re.findall(r"<tr><td class=\"num\">\d+</td><td><span class=\"uri\" title=\"[^\"]*\">([^<]*)</span></td>"
                          r"<td>[^<]*</td><td class=\"num\">([^<]*)</td>", page.split('<section id="ranking">')[1])
    sources, scores = [html.unescape(s) for s, _ in rendered], [s for _, s in rendered]
    assert len(rendered) == 8 and scores[0] == "–"  # the starting frame has no score: sorted last either way
    numbers = sorted(float(s) for s in scores[1:])
    assert dom_attribute(dom, "up") == [f"{v:.3f}" for v in numbers] + ["–"]
    assert dom_attribute(dom, "down") == [f"{v:.3f}" for v in reversed(numbers)] + ["–"]
    assert dom_attribute(dom, "sorted") == "descending"
    assert dom_attribute(dom, "by-source") == sorted(sources, key=lambda s: [int(t) if t.isdigit() else t.lower()
                                                                              for t in re.split(r"(\d+)", s)])
    benign = sorted((s for s in sources if "benign" in s), key=lambda s: int(re.search(r"\((\d+)\)", s).group(1)))
    assert 0 < len(benign) < 8 and dom_attribute(dom, "filtered") == benign
    assert dom_attribute(dom, "count") == f"{len(benign)} of 8 rows"
    tables, boxes = dom_attribute(dom, "boxes")
    assert tables == page.count('<table class="data">') and 0 < boxes < tables  # a box above each table of 4 rows or more


# Appended to a copy of the page: clicks the first outlier's thumbnail, then records the enlarged view's
# box and caption and a thumbnail left small; clicks "close" and records the box again.
ZOOM_PROBE = """<script>
window.addEventListener("load", () => {
  const figure = document.querySelector("#gallery-outliers figure.zoom");
  const other = document.querySelector("#gallery-top figure.zoom img");
  const box = (el) => { const r = el.getBoundingClientRect(); return [r.left, r.top, el.clientWidth, el.clientHeight]; };
  const record = (name, value) => document.body.setAttribute("data-" + name, JSON.stringify(value));
  figure.querySelector("a.enlarge").click();
  setTimeout(() => {
    record("hash", location.hash);
    record("open", box(figure.querySelector("img")));
    record("overlay", [box(figure), getComputedStyle(figure).position, document.documentElement.clientWidth, document.documentElement.clientHeight]);
    record("caption", figure.querySelector("figcaption").innerText);
    record("other", box(other));
    figure.querySelector("a.close").click();
    setTimeout(() => { record("closed", [location.hash, box(figure.querySelector("img"))]); }, 50);
  }, 50);
});
</script>"""


def test_a_clicked_thumbnail_opens_its_enlarged_view_with_its_caption(report: Path, tmp_path: Path):
    page = report.read_text(encoding="utf-8")
    probe = tmp_path / "zoom.html"
    probe.write_text(page.replace("</body>", ZOOM_PROBE + "</body>"), encoding="utf-8")
    dom = chromium(tmp_path, "--window-size=1280,800", "--virtual-time-budget=5000", "--dump-dom", probe.as_uri())
    first = re.search(r'<div class="gallery" id="gallery-outliers"><figure class="zoom" id="(view-\d+)"', page).group(1)
    assert dom_attribute(dom, "hash") == f"#{first}"
    (left, top, width, height), position = dom_attribute(dom, "open"), dom_attribute(dom, "overlay")
    assert width == height >= 400, "the enlarged view is at least four times the thumbnail"
    overlay, style, win_w, win_h = position
    assert style == "fixed" and overlay == [0, 0, win_w, win_h], "the view covers the window"
    assert 0 <= left and left + width <= win_w and 0 <= top and top + height <= win_h
    caption = dom_attribute(dom, "caption")
    assert caption.startswith("#1 · nearest ") and "no close match (similarity" in caption and ".png" in caption
    assert dom_attribute(dom, "other")[2:] == [96, 96], "the other thumbnails stay small"
    hash_after, (_, _, w, h) = dom_attribute(dom, "closed")
    assert hash_after == "#gallery-outliers" and (w, h) == (96, 96)


WIDTHS = [(1440, 900), (1024, 768)]  # a desktop and a small laptop screen
# Appended to a copy of the page: after load, the box (left, top, width, height in page pixels) of each part the
# reader must see, the rightmost edge of every table, picture, map and section, and the page's scroll size.
LAYOUT_PROBE = """<script>
window.addEventListener("load", () => {
  const box = (el) => { const r = el.getBoundingClientRect(); return [r.left + scrollX, r.top + scrollY, r.width, r.height]; };
  const parts = {first_screen: "#summary", contents: "#contents", night: "#night", map: "#embedding-map",
                 gallery: "#gallery-top", groups: "#duplicates .group", outliers: "#gallery-outliers", errors: "#errors table.data"};
  const boxes = {};
  for (const [name, selector] of Object.entries(parts)) {
    const el = document.querySelector(selector);
    boxes[name] = el ? box(el) : null;
  }
  const right = Math.max(...Array.from(document.querySelectorAll("table, img, svg, pre, section")).map((el) => el.getBoundingClientRect().right + scrollX));
  const page = document.documentElement;
  document.body.setAttribute("data-layout", JSON.stringify({boxes, right, viewport: [page.clientWidth, innerHeight],
                                                            scroll: [page.scrollWidth, page.scrollHeight]}));
});
</script>"""
# The tall screenshot (the whole page in one window) keeps the scrollbar the real window has, so its layout is the
# probe's and each part can be cut out of it at the probe's box (headless Chromium paints no scrolled screenshot).
KEEP_SCROLLBAR = "<style>html { overflow-y: scroll; }</style></head>"


@pytest.fixture(scope="module")
def nightly_report(frames_dir: Path | None, tmp_path_factory) -> Path:
    """A nightly run's report: every curate section and what the night added to the catalog."""
    path = tmp_path_factory.mktemp("nightly") / "report.html"
    night = {"night": "2026-11-20", "frames_added": 20, "catalog_frames_before": 1480, "catalog_frames_after": 1500,
             "nights_in_catalog": 6, "resent_images": 2, "exact_against_earlier": 1, "near_against_earlier": 3}
    build_inputs(frames_dir, n=20).write(path, ReportConfig(gallery_size=8), night=night)
    return path


def screenshot(tmp_path: Path, url: str, width: int, height: int, name: str) -> np.ndarray:
    """A screenshot of a window of that size at url, as RGB; it must be a PNG of the window's size and not blank."""
    shot = tmp_path / f"{name}-{width}x{height}.png"
    chromium(tmp_path, f"--screenshot={shot}", f"--window-size={width},{height}", url)
    image = Image.open(shot)
    assert image.format == "PNG" and image.size == (width, height)
    rgb = np.asarray(image.convert("RGB"), dtype=np.int32)
    assert not_blank(rgb), f"{shot.name} looks blank"
    return rgb


def not_blank(rgb: np.ndarray) -> bool:
    """Whether a picture shows something: contrast, and some of it far from the white page."""
    grey = rgb.mean(axis=2)
    return bool(grey.std() > 20 and (grey < 200).mean() > 0.01)


def cut(rgb: np.ndarray, found: list[float]) -> np.ndarray:
    left, top, w, h = (int(round(v)) for v in found)
    return rgb[top: top + h, left: left + w]


@pytest.mark.parametrize(("width", "height"), WIDTHS, ids=[f"{w}x{h}" for w, h in WIDTHS])
def test_first_screen_map_galleries_and_errors_render_at_desktop_and_laptop_widths(nightly_report: Path, tmp_path: Path,
                                                                                     width: int, height: int):
    page = nightly_report.read_text(encoding="utf-8")
    probe = tmp_path / "layout.html"
    probe.write_text(page.replace("</body>", LAYOUT_PROBE + "</body>"), encoding="utf-8")
    dom = chromium(tmp_path, f"--window-size={width},{height}", "--virtual-time-budget=5000", "--dump-dom", probe.as_uri())
    layout = dom_attribute(dom, "layout")
    (view_width, view_height), (scroll_width, scroll_height) = layout["viewport"], layout["scroll"]
    assert width - 20 <= view_width <= width and scroll_height > view_height
    assert scroll_width <= view_width and layout["right"] <= view_width, "something is wider than the window"
    boxes = layout["boxes"]
    for name, found in boxes.items():
        assert found is not None, f"{name} is missing"
        left, top, w, h = found
        assert w > 0 and h > 0 and left >= 0 and left + w <= view_width, (name, found)
    _, top, _, h = boxes["first_screen"]
    assert top + h <= view_height, "'What to do now' does not fit the first screen"
    assert boxes["contents"][1] < view_height, "the contents start below the first screen"
    assert boxes["map"][2] >= min(720, view_width - 60), "the map is squeezed"
    # what the reader sees on opening the page: the first screen with its links
    first = screenshot(tmp_path, nightly_report.as_uri(), width, height, "first-screen")
    link_blue = ((first[..., 2] > 180) & (first[..., 0] < 60) & (first[..., 1] < 60)).sum()
    assert link_blue > 500, "the first screen's links did not paint"
    # and further down, each part cut out of the whole page at the probe's box
    tall = tmp_path / "tall.html"
    tall.write_text(page.replace("</head>", KEEP_SCROLLBAR), encoding="utf-8")
    whole = screenshot(tmp_path, tall.as_uri(), width, scroll_height, "whole-page")
    for name, found in boxes.items():
        assert (cut(whole, found).mean(axis=2) < 200).sum() > 200, f"{name} did not paint"
    r, g, b = (cut(whole, boxes["map"])[..., i] for i in range(3))
    assert ((abs(r - 0xE0) < 25) & (abs(g - 0x7B) < 25) & (b < 40)).sum() > 200, "the map's marked frames did not paint"
    for name in ("gallery", "groups", "outliers"):
        part = cut(whole, boxes[name]).mean(axis=2)
        dark = part[: part.shape[0] // 24 * 24, : part.shape[1] // 24 * 24]
        tiles = dark.reshape(dark.shape[0] // 24, 24, dark.shape[1] // 24, 24).mean(axis=(1, 3))
        assert (tiles < 140).sum() >= 4, f"the {name} thumbnails did not paint"
    errors = cut(whole, boxes["errors"])
    header = (abs(errors - np.array([0xF1, 0xF2, 0xF6])) < 3).all(axis=2).sum()
    assert header > 2000, "the error table's header row did not paint"
