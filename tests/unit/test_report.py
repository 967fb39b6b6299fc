"""report.html from real BUSI ultrasound frames: sections, valid inline PNGs, escaping, no-thumbnail mode."""
from __future__ import annotations

import base64
import html
import io
import re
from importlib.resources import files
from dataclasses import dataclass
from pathlib import Path

import cv2
import fsspec
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from enrich_ray.config import Config, ReportConfig, config_dict
from enrich_ray.report import collapse_warnings, write_report
from enrich_ray.report.plots import BUDGET_MIN_GAIN, project_2d, suggested_budget

SIZE = 64
N_FRAMES = 14
DATA_PNG = re.compile(r'<img class="(plot|thumb)" src="data:image/png;base64,([A-Za-z0-9+/=]+)"')
EVIL = "<script>alert('phi')</script> & <b>bold</b>"
OWN_SCRIPT = "<script>\n" + files("enrich_ray.report.templates").joinpath("report.js").read_text(encoding="utf-8").rstrip() + "</script>"


@dataclass
class ReportInputs:
    """Everything write_report takes, built from real frames."""

    frames: np.ndarray  # (n, 64, 64) float32 in [0, 1]
    summary: dict
    manifest: pd.DataFrame
    duplicates: pd.DataFrame
    outliers: pd.DataFrame
    errors: pd.DataFrame
    nn_similarity: np.ndarray
    embeddings: np.ndarray | None = None  # one code per frame, indexed by the tables' `row`: the embedding map

    def thumbnails(self, rows: list[int]) -> np.ndarray:
        return self.frames[rows]

    def write(self, path: str | Path, cfg: ReportConfig, **changes) -> str:
        """Write the report with some inputs replaced; return the page."""
        args = {
            "summary": self.summary,
            "manifest": self.manifest,
            "duplicates": self.duplicates,
            "outliers": self.outliers,
            "errors": self.errors,
            "nn_similarity": self.nn_similarity,
            "thumbnails": self.thumbnails,
            "embeddings": self.embeddings,
            **changes,
        }
        write_report(str(path), cfg=cfg, **args)
        return Path(path).read_text(encoding="utf-8")


def load_busi_frames(busi_dir: Path, n: int) -> tuple[np.ndarray, list[str]]:
    """n BUSI PNGs spread over the three classes: grey, area-resized to 64x64, floats in [0, 1]."""
    paths = sorted(busi_dir.rglob("*.png"))
    picks = [paths[i] for i in np.linspace(0, len(paths) - 1, n).astype(int)]
    frames = []
    for p in picks:
        grey = cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
        assert grey is not None, f"cannot read {p}"
        frames.append(cv2.resize(grey, (SIZE, SIZE), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0)
    return np.stack(frames), [p.relative_to(busi_dir).as_posix() for p in picks]


def farthest_first(unit: np.ndarray, seed: int) -> tuple[list[int], list[float], list[float]]:
    """Plain ENRICH order, each pick's max similarity to the picks before, and the coverage after each
    (the smallest max-similarity of any frame to the ranked set; NaN on the seed row, as the manifest has it)."""
    sim = unit @ unit.T
    order, scores, coverage = [seed], [np.nan], [np.nan]
    m = sim[seed].copy()
    for _ in range(len(unit) - 1):
        masked = np.where(np.isin(np.arange(len(unit)), order), np.inf, m)
        nxt = int(np.argmin(masked))
        order.append(nxt)
        scores.append(float(m[nxt]))
        m = np.maximum(m, sim[nxt])
        coverage.append(float(m.min()))
    return order, scores, coverage


def synthetic_frames(n: int) -> tuple[np.ndarray, list[str]]:
    """n ultrasound-like frames (enrich_ray.truth's synthetic base, seeded), area-resized to 64x64: for a fresh clone."""
    from enrich_ray.truth.planted import synthetic_ultrasound

    rng = np.random.default_rng(0)
    frames = [cv2.resize(synthetic_ultrasound(rng), (SIZE, SIZE), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
              for _ in range(n)]
    classes = ("benign", "malignant", "normal")  # named as BUSI names its files, class folders and "(N)"
    return np.stack(frames), [f"{classes[i % 3]}/{classes[i % 3]} ({i + 1}).png" for i in range(n)]


def build_inputs(busi_dir: Path | None, n: int = N_FRAMES) -> ReportInputs:
    """Report inputs from n real frames (BUSI; synthetic ones when busi_dir is None): a pixel embedding,
    its 1-NN similarities, a ranking, groups, outliers."""
    frames, names = load_busi_frames(busi_dir, n) if busi_dir is not None else synthetic_frames(n)
    frames[1] = frames[0]  # the same scan stored under a second name: an exact duplicate
    uris = [f"s3://archive/busi/{name}" for name in names]
    uris[1] = "s3://archive/copies/" + names[0]
    flat = frames.reshape(n, -1).astype(np.float64)
    flat -= flat.mean(axis=0)
    unit = flat / np.linalg.norm(flat, axis=1, keepdims=True)
    sim = unit @ unit.T
    np.fill_diagonal(sim, -np.inf)
    nn = sim.max(axis=1)
    image_ids = [f"{i:064x}" for i in range(n)]
    order, scores, coverage = farthest_first(unit, seed=0)
    manifest = pd.DataFrame(
        {
            "rank": np.arange(1, n + 1),
            "image_id": [image_ids[r] for r in order],
            "frame_index": 0,
            "source_uri": [uris[r] for r in order],
            "ranker": "enrich",
            "score": scores,
            "is_seed": [i == 0 for i in range(n)],
            "coverage_similarity": coverage,
            "row": order,
        }
    ).sample(frac=1.0, random_state=0)  # any row order: the report sorts by rank
    a, b = np.unravel_index(np.argmax(sim[2:, 2:]), (n - 2, n - 2))  # the closest pair besides the copies
    near = sorted({int(a) + 2, int(b) + 2})
    dup_rows = [(0, r, "exact", 1.0, r == 0) for r in (0, 1)] + [
        (1, r, "near", 1.0 if r == near[0] else float(sim[near[0], r]), r == near[0]) for r in near
    ]
    duplicates = pd.DataFrame(dup_rows, columns=["group_id", "row", "kind", "similarity", "is_representative"])
    duplicates = duplicates.assign(
        image_id=[image_ids[r] for r in duplicates["row"]],
        frame_index=0,
        source_uri=[uris[r] for r in duplicates["row"]],
    )
    by_isolation = np.argsort(nn, kind="stable")
    outliers = pd.DataFrame(
        {
            "rank": np.arange(1, n + 1),
            "row": by_isolation,
            "image_id": [image_ids[r] for r in by_isolation],
            "frame_index": 0,
            "source_uri": [uris[r] for r in by_isolation],
            "score": 1.0 - nn[by_isolation],
            "nn_similarity": nn[by_isolation],
            "flagged": np.arange(n) < 3,
            # analysis.outliers' wording: the evidence that flagged a frame, '' when not flagged
            "reason": [f"no close match (similarity {nn[r]:.2f} at neighbour 1, archive median {np.median(nn):.2f})"
                       if i < 3 else "" for i, r in enumerate(by_isolation)],
        }
    )
    errors = pd.DataFrame(
        [
            {"image_id": None, "source_uri": "s3://archive/bad/<c>&d.dcm", "frame_index": None, "stage": "pack",
             "error_type": "PermissionError", "message": EVIL},
            {"image_id": "ab" * 32, "source_uri": "s3://archive/bad/trunc.png", "frame_index": None, "stage": "decode",
             "error_type": "Truncated", "message": "truncated PNG of 256 x 256: the file ends before its IEND chunk"},
            {"image_id": "cd" * 32, "source_uri": "s3://archive/bad/cine.dcm", "frame_index": 3, "stage": "decode",
             "error_type": "CorruptPixelData", "message": "frame 3 of 10: corrupt pixel data, the decoder rejects it"},
            *[{"image_id": f"{i:02x}" * 32, "source_uri": f"s3://archive/plans/rtplan{i}.dcm", "frame_index": None,
               "stage": "decode", "error_type": "NonImageObject",
               "message": "no image here: this RT Plan Storage object (modality RTPLAN) holds no pixel data"}
              for i in range(4)],
            {"image_id": "ef" * 32, "source_uri": "s3://archive/sr/report.dcm", "frame_index": None, "stage": "decode",
             "error_type": "NonImageObject",
             "message": "no image here: this Comprehensive SR Storage object (modality SR) holds no pixel data"},
        ]
    )
    config = config_dict(Config())
    config["selection"]["seconds_per_image"] = 3600.0  # one hour a frame: hours equal frame counts
    summary = {
        "run": {"archive": "s3://archive", "finished": "2026-11-21T22:00:00Z"},
        "counts": {"archive_images": n + 2, "frames_embedded": n, "error_rows": len(errors), "ranked": n},
        "checks": {"every_image_decoded_or_error": True},
        "embedding": {"embedder": "pixels", "dim": SIZE * SIZE, "participation_ratio": 9.5},
        "timings_s": {"decode": 1.25, "embed": 2.5},
        "versions": {"enrich_ray": "0.1.0", "ray": "2.60.0"},
        "config": config,
    }
    return ReportInputs(frames, summary, manifest, duplicates, outliers, errors, nn, unit)


@pytest.fixture(scope="module")
def inputs(busi_dir: Path) -> ReportInputs:
    return build_inputs(busi_dir)


def inline_pngs(page: str) -> list[tuple[str, Image.Image]]:
    """Every inline PNG <img> of the page, decoded: (class, image)."""
    out = []
    for cls, data in DATA_PNG.findall(page):
        img = Image.open(io.BytesIO(base64.b64decode(data, validate=True)))
        img.load()  # raises on a broken PNG
        assert img.format == "PNG"
        out.append((cls, img))
    return out


def without_own_script(page: str) -> str:
    """The page without its one script (templates/report.js, verbatim), which it must hold exactly once."""
    assert page.count(OWN_SCRIPT) == 1, "the page holds report.js once, unchanged"
    return page.replace(OWN_SCRIPT, "")


def test_page_has_every_section_and_only_inline_resources(inputs, tmp_path):
    page = inputs.write(tmp_path / "report.html", ReportConfig())
    for section in ("summary", "redundancy", "ranking", "duplicates", "outliers", "errors", "embedding", "run"):
        assert f'<section id="{section}">' in page
    assert "<script" not in without_own_script(page), "no script but the page's own"
    assert not re.search(r'(src|href)="(?!data:|#)', page), "the page must not load anything from outside"
    links = set(re.findall(r'href="#([\w-]+)"', page))
    assert links and links <= set(re.findall(r'id="([\w-]+)"', page)), "every in-page link has its target"
    # labeling time at 3600 s a frame: 14 frames take 14.0 hours
    assert f"<td>all {N_FRAMES}</td><td>{N_FRAMES}</td><td>{N_FRAMES}.0</td><td>1.17</td>" in page
    assert "decode" in page and "1.2" in page and "2.60.0" in page
    assert 'id="collapse-warning"' not in page


def test_images_are_valid_pngs_and_thumbnails_show_the_frames(inputs, tmp_path):
    cfg = ReportConfig(gallery_size=5)
    page = inputs.write(tmp_path / "report.html", cfg)
    images = inline_pngs(page)
    plots = [img for cls, img in images if cls == "plot"]
    thumbs = [img for cls, img in images if cls == "thumb"]
    assert len(plots) == 2  # redundancy and coverage curves
    assert all(p.size[0] >= 400 and p.size[1] >= 300 for p in plots)
    # 5 top-ranked + 2 groups of 2 + 3 flagged outliers
    assert len(thumbs) == 5 + 4 + 3
    assert all(t.size == (96, 96) and t.mode == "L" for t in thumbs)
    # the first thumbnail is the rank-1 frame, area-resized to 96 px
    first_row = int(inputs.manifest.sort_values("rank")["row"].iloc[0])
    grey = (inputs.frames[first_row] * 255 + 0.5).astype(np.uint8)
    expected = cv2.resize(grey, (96, 96), interpolation=cv2.INTER_AREA)
    assert np.abs(np.asarray(thumbs[0], dtype=int) - expected.astype(int)).max() <= 1


FIGURE = re.compile(r'<figure class="zoom" id="(view-\d+)"><a class="close" href="#([\w-]+)" title="close">close ✕</a>'
                    r'<a class="enlarge" href="#([\w-]+)" title="([^"]*) \(click to enlarge\)"><img class="thumb" src="data:image/png;base64,'
                    r'[A-Za-z0-9+/=]+" alt="[^"]*"></a><figcaption>(.*?)<span class="why" title="[^"]*">(.*?)</span>'
                    r'<span class="where"><span class="uri" title="([^"]*)">([^<]*)</span></span></figcaption></figure>')


def test_every_thumbnail_opens_its_enlarged_view_with_path_and_why(inputs, tmp_path):
    cfg = ReportConfig(gallery_size=5)
    page = inputs.write(tmp_path / "report.html", cfg)
    figures = FIGURE.findall(page)
    assert len(figures) == page.count('class="thumb"') == 5 + 4 + 3
    ids = [f[0] for f in figures]
    assert len(set(ids)) == len(ids) and all(own == target for own, _, target, *_ in figures), "each links to itself"
    anchors = set(re.findall(r'id="([\w-]+)"', page))
    for _, back, _, full, caption, why, hover, short in figures:
        assert back in anchors and full == hover and short == html.escape(html.unescape(hover).removeprefix("s3://archive/"))
    by_back = {}
    for f in figures:
        by_back.setdefault(f[1], []).append(f)
    assert sorted(by_back) == ["gallery-outliers", "gallery-top", "group-0", "group-1"]
    # duplicate groups: side by side in one row each, the representative first, then each member's similarity
    near = inputs.duplicates[inputs.duplicates["group_id"] == 1].sort_values("is_representative", ascending=False)
    (_, _, _, _, rep_caption, rep_why, _, _), (_, _, _, _, caption, why, _, _) = by_back["group-1"]
    assert rep_caption == "representative" and rep_why == "group 1 (near, 2 frames): the representative, the one frame to label"
    assert caption == f"similarity {near['similarity'].iloc[1]:.3f}"
    assert why == f"group 1 (near, 2 frames): similarity to the representative {near['similarity'].iloc[1]:.3f} (cosine)"
    # outliers: why each was flagged, the reason analysis.outliers gave, in order of rank
    flagged = inputs.outliers[inputs.outliers["flagged"]].sort_values("rank")
    assert [html.unescape(f[5]) for f in by_back["gallery-outliers"]] == list(flagged["reason"])
    assert [html.unescape(f[3]) for f in by_back["gallery-outliers"]] == list(flagged["source_uri"])
    table = page.split('<section id="outliers">')[1].split("</section>")[0].split("<tbody>")[1]
    assert re.findall(r"<td>yes</td><td>(.*?)</td>", table) == [html.escape(r) for r in flagged["reason"]]
    # the first to label: rank and score
    assert by_back["gallery-top"][0][5] == "rank 1: in the starting set (already labeled or drawn at random)"
    # without a reason (an older outliers table) a flagged frame says so; an unflagged one shown says it is not flagged
    none_flagged = inputs.outliers.drop(columns=["reason"]).assign(flagged=np.arange(N_FRAMES) == 0)
    page = inputs.write(tmp_path / "old.html", cfg, outliers=none_flagged)
    assert [f[5] for f in FIGURE.findall(page) if f[1] == "gallery-outliers"] == ["flagged (no reason recorded)"]
    page = inputs.write(tmp_path / "none.html", cfg, outliers=inputs.outliers.assign(flagged=False, reason=""))
    assert {f[5] for f in FIGURE.findall(page) if f[1] == "gallery-outliers"} == {"not flagged: among the frames least like the rest"}


def test_files_without_frames_get_no_thumbnail_request(inputs, tmp_path):
    # byte-identical copies of a file that never decoded: a duplicate group whose rows are -1
    orphans = pd.DataFrame(
        {"group_id": 7, "row": -1, "kind": "exact", "similarity": 1.0, "is_representative": [True, False],
         "image_id": "ef" * 32, "frame_index": 0, "source_uri": ["s3://archive/x/a.dcm", "s3://archive/y/a.dcm"]}
    )
    asked: list[int] = []

    def thumbnails(rows):
        asked.extend(rows)
        return inputs.frames[rows]

    dups = pd.concat([inputs.duplicates, orphans], ignore_index=True)
    page = inputs.write(tmp_path / "report.html", ReportConfig(), duplicates=dups, thumbnails=thumbnails)
    assert asked and min(asked) >= 0 and len(asked) == len(set(asked))
    group = page.split("<b>group 7</b>")[1].split("</div>")[1]  # the group's figures
    assert "s3://archive/y/a.dcm" in group and "<img" not in group


def test_error_messages_and_uris_are_escaped(inputs, tmp_path):
    page = without_own_script(inputs.write(tmp_path / "report.html", ReportConfig()))
    assert "<script>" not in page and "<b>bold</b>" not in page
    assert "&lt;script&gt;alert(&#39;phi&#39;)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;" in page
    assert "s3://archive/bad/&lt;c&gt;&amp;d.dcm" in page
    errors_section = page.split('<section id="errors">')[1].split("</section>")[0]
    assert "could not be read from storage (PermissionError)" in errors_section and "cine.dcm #frame 3" in errors_section


def test_paths_are_relative_to_the_archive_root_with_the_full_uri_on_hover(inputs, tmp_path):
    page = inputs.write(tmp_path / "report.html", ReportConfig(thumbnails=False))
    assert '<span class="uri" id="archive-root">s3://archive/</span>' in page
    top = inputs.manifest.sort_values("rank").iloc[0]["source_uri"]
    assert f'<span class="uri" title="{html.escape(top)}">{html.escape(top.removeprefix("s3://archive/"))}</span>' in page
    errors = page.split('<section id="errors">')[1]
    assert '<span class="uri" title="s3://archive/bad/cine.dcm #frame 3">bad/cine.dcm #frame 3</span>' in errors
    # every shown path is relative: no cell text starts with the root
    assert not re.search(r'<span class="uri"(?: title="[^"]*")?>s3://archive/', page.replace('id="archive-root"', ""))


def test_jargon_sits_in_the_glossary_and_every_header_has_its_unit(inputs, tmp_path):
    embedding = {"embedder": "vae", "dim": 128, "active_units": 128, "participation_ratio": 2.4,
                 "content_correlation": 0.86, "distinct_frames": 107, "val_recon": 1651.805, "val_kl": 106.7}
    page = inputs.write(tmp_path / "report.html", ReportConfig(), summary={**inputs.summary, "embedding": embedding})
    main, glossary = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page).split('<section id="glossary">')
    for jargon in ("participation ratio", "KL", "kNN", "recall@"):
        assert jargon not in main and jargon in glossary, jargon
    for term in ("nats", "val_recon", "coverage radius", "suggested budget", "foreign score", "no image here"):
        assert f"<dt>{term}" in glossary
    row = re.search(r"<tr><td>reconstruction error on held-out frames[^<]*</td><td>(.*?)</td><td>(.*?)</td></tr>", main)
    assert row and row.groups() == ("1651.805", "nats per frame")
    # a table's header names the unit of a number column: count, hours, seconds, cosine, share, or a unit column
    headers = re.findall(r"<table[^>]*><thead><tr>(.*?)</tr></thead>", main)
    assert len(headers) == main.count("<table") >= 12
    for header in headers:
        cells = re.findall(r"<th>(.*?)</th>", header)
        assert any(u in " ".join(cells) for u in ("count", "hours", "(s)", "cosine", "%", "unit", "version", "result")), cells
    # a column of numbers names its unit (or what its numbers count) in its own header
    for cells in (re.findall(r"<th>(.*?)</th>", h) for h in headers):
        for cell in cells:
            if cell.startswith(("rank", "frames (", "files (", "time", "hours", "similarity", "share", "foreign score")):
                assert re.search(r"\(.+\)", cell), cell


def test_every_table_is_a_data_table_the_script_sorts_and_filters(inputs, tmp_path):
    page = inputs.write(tmp_path / "report.html", ReportConfig())
    tables = re.findall(r"<table.*?</table>", page, flags=re.S)
    assert len(tables) == page.count("<table") >= 12
    for table in tables:
        head, body = re.fullmatch(r'<table class="data"><thead><tr>((?:<th>.*?</th>)+)</tr></thead><tbody>(.*)</tbody></table>',
                                  table, flags=re.S).groups()
        width = head.count("<th>")
        rows = re.findall(r"<tr>(.*?)</tr>", body, flags=re.S)
        assert rows and all(len(re.findall(r"<td[ >]", row)) == width for row in rows), head
    assert 'document.querySelectorAll("table.data")' in OWN_SCRIPT and page.index(OWN_SCRIPT) > page.index('id="glossary"')


def test_suggested_budget_follows_its_rule():
    # radius e^(-n/50): the next 100 frames shrink it by e^(-n/50) (1 - e^(-2)); the rule stops at the first n
    # where that is at most BUDGET_MIN_GAIN of the whole drop e^(-1/50) - e^(-20).
    n = np.arange(1, 1001)
    radius = np.exp(-n / 50.0)
    whole = radius[0] - radius[-1]
    expected = int(np.ceil(50.0 * np.log((1 - np.exp(-2.0)) / (BUDGET_MIN_GAIN * whole))))
    assert suggested_budget(n, radius) == expected
    assert suggested_budget(n, np.full(n.size, 0.3)) == 1  # nothing to gain: the first frame
    assert suggested_budget(np.array([], np.int64), np.array([])) is None


def test_first_screen_says_what_to_do_and_links_each_item(inputs, tmp_path):
    page = inputs.write(tmp_path / "report.html", ReportConfig())
    assert page.index('<section id="summary">') < min(page.index(f'<section id="{s}">') for s in ("ranking", "errors"))
    first = page.split('<section id="summary">')[1].split("</section>")[0]
    items = re.findall(r"<li>(.*?)</li>", first)
    # the budget by the rule, computed here over the manifest's coverage (one hour a frame: hours = frames)
    curve = inputs.manifest.dropna(subset=["coverage_similarity"]).sort_values("rank")
    ranks, radius = curve["rank"].to_numpy(), 1 - curve["coverage_similarity"].to_numpy()
    settled = [i for i in range(len(ranks)) if radius[i] - radius[-1] <= BUDGET_MIN_GAIN * (radius[0] - radius[-1])]
    budget = int(ranks[settled[0]])  # 14 frames: the next 100 always reach the end
    hours = f"{budget:.1f}" if budget >= 10 else f"{budget:.2f}"
    assert items[0].startswith(f'<a href="#budget">Label these {budget} frames first</a> ({hours} h at 3600 s a frame')
    assert items[1] == '<a href="#duplicates">2 duplicate groups</a>: 2 frames you need not label (copies or near copies of a frame kept).'
    assert items[2] == '<a href="#outliers">3 foreign or blank frames to check</a>.'
    assert items[3] == '<a href="#errors-unreadable">3 files or frames unreadable</a>: 1 PermissionError, 1 truncated, 1 corrupt.'
    assert items[4].startswith('<a href="#errors-no-image">5 files hold no image</a> (5 not images): skipped')
    assert items[5] == '<a href="#embedding">Embedding health</a>: The embedding&#39;s health was not measured in this run.'
    healthy = {**inputs.summary, "embedding": {"content_correlation": 0.86, "distinct_frames": 107}}
    page = inputs.write(tmp_path / "report.html", ReportConfig(), summary=healthy)
    assert "The embedding looks healthy: frames it calls alike also look alike (agreement with pixel similarity 0.86 over 107" in page
    assert 'nav id="contents"' in page and '<a href="#errors">' in page


def test_errors_are_grouped_by_cause_with_no_image_apart(inputs, tmp_path):
    page = inputs.write(tmp_path / "report.html", ReportConfig())
    section = page.split('<section id="errors">')[1].split("</section>")[0]
    unreadable, no_image = section.split('<h3 id="errors-unreadable">')[1].split('<h3 id="errors-no-image">')
    assert unreadable.startswith("Unreadable: 3</h3>") and no_image.startswith("No image here (skipped, not errors): 5</h3>")
    for name in ("Truncated", "CorruptPixelData", "PermissionError"):
        assert f"<code>{name}</code>" in unreadable and f"<code>{name}</code>" not in no_image
    # one row per cause: the five non-image objects are one row, 5 files, 0 single frames
    rows = re.findall(r'<tr><td>(.*?)</td><td><code>(\w+)</code></td><td class="num">(\d+)</td><td class="num">(\d+)</td><td><ul>(.*?)</ul>', no_image)
    assert [(name, files, frames) for _, name, files, frames, _ in rows] == [("NonImageObject", "5", "0")]
    examples = re.findall(r"<li>", rows[0][4])
    assert len(examples) == 3  # at most three examples, the distinct messages first
    assert "Comprehensive SR Storage" in rows[0][4] and rows[0][4].count("RT Plan Storage") == 2
    assert '<code>CorruptPixelData</code></td><td class="num">0</td><td class="num">1</td>' in unreadable


def test_every_text_the_page_shows_is_escaped_by_the_template(inputs, tmp_path):
    # markup in every field a run can carry: the template escapes each, no caller has to
    manifest = inputs.manifest.assign(modality=EVIL, ranker=EVIL, source_uri=[f"s3://archive/{EVIL}/{i}.png" for i in range(N_FRAMES)])
    outliers = inputs.outliers.assign(reason=EVIL)
    dups = inputs.duplicates.assign(kind=inputs.duplicates["kind"], source_uri=f"s3://archive/{EVIL}.png")
    summary = {**inputs.summary, "run": {EVIL: EVIL}, "versions": {EVIL: EVIL}, "counts": {EVIL: 1},
               "embedding": {"embedder": EVIL, EVIL: EVIL}, "excluded_from_ranking": {EVIL: 2},
               "index": {"recall_at_k": 0.5, "k": EVIL, "sample": EVIL, "method": EVIL},
               "config": {**inputs.summary["config"], "notes": EVIL}}
    page = inputs.write(tmp_path / "report.html", ReportConfig(), summary=summary, manifest=manifest, outliers=outliers,
                        duplicates=dups)
    page = without_own_script(page)
    assert "<script" not in page and "<b>bold</b>" not in page
    assert page.count("&lt;script&gt;alert(&#39;phi&#39;)&lt;/script&gt;") >= 12


def test_thumbnails_off_leaves_no_pixel_data_of_any_frame(inputs, tmp_path):
    def refuse(rows):
        raise AssertionError("thumbnails must not be read when switched off")

    page = inputs.write(tmp_path / "report.html", ReportConfig(thumbnails=False), thumbnails=refuse)
    assert 'class="thumb"' not in page
    assert [cls for cls, _ in inline_pngs(page)] == ["plot", "plot"]
    assert page.count("data:image/png") == 2
    assert 'id="thumbnails-off"' in page and "patient data" in page
    # frames are still listed by source
    assert inputs.manifest.sort_values("rank")["source_uri"].iloc[0] in page


def test_every_file_corrupt_still_renders(inputs, tmp_path):
    empty = {
        # the columns the pipeline writes when nothing could be embedded
        "manifest": pd.DataFrame(
            columns=["rank", "image_id", "frame_index", "source_uri", "ranker", "score", "is_seed"]
        ),
        "duplicates": pd.DataFrame(columns=["group_id", "row", "kind", "similarity", "is_representative"]),
        "outliers": pd.DataFrame(columns=["rank", "row", "score", "nn_similarity", "flagged"]),
        "nn_similarity": np.zeros(0, np.float32),
        "summary": {"counts": {"archive_images": 3, "frames_embedded": 0, "error_rows": 3}},
        "thumbnails": None,
        "embeddings": np.zeros((0, 0), np.float32),
    }
    page = inputs.write(tmp_path / "report.html", ReportConfig(), **empty)
    assert "No frame was ranked" in page
    assert "data:image/png" not in page
    assert page.count("<section") == 11
    assert "No frame to draw" in map_section(page)
    assert "the file ends before its IEND chunk" in page


def test_manifest_without_coverage_says_so(inputs, tmp_path):
    manifest = inputs.manifest.drop(columns=["coverage_similarity"])
    page = inputs.write(tmp_path / "report.html", ReportConfig(thumbnails=False), manifest=manifest)
    assert [cls for cls, _ in inline_pngs(page)] == ["plot"]
    assert "No coverage curve" in page


def test_collapsed_embedding_shows_a_banner(inputs, tmp_path):
    collapsed = {"embedder": "vae", "participation_ratio": 1.7, "content_correlation": 0.03, "distinct_frames": 120}
    page = inputs.write(tmp_path / "report.html", ReportConfig(), summary={**inputs.summary, "embedding": collapsed})
    assert 'id="collapse-warning"' in page and "raw-pixel similarity 0.03 &lt; 0.2 over 120 distinct frames" in page
    # Near twins everywhere (an archive of copies) and a low participation ratio are not collapse.
    twins = np.full(len(inputs.nn_similarity), 0.99)
    healthy = {"embedder": "vae", "participation_ratio": 2.4, "content_correlation": 0.8, "distinct_frames": 40}
    page = inputs.write(tmp_path / "report.html", ReportConfig(), summary={**inputs.summary, "embedding": healthy}, nn_similarity=twins)
    assert 'id="collapse-warning"' not in page and "The embedding looks healthy" in page


def test_collapse_rule_thresholds():
    assert collapse_warnings({}) == []
    assert collapse_warnings({"content_correlation": 0.2, "distinct_frames": 10}) == []
    assert len(collapse_warnings({"content_correlation": 0.19, "distinct_frames": 10})) == 1
    assert collapse_warnings({"content_correlation": 0.0, "distinct_frames": 9}) == []  # too few to judge
    assert collapse_warnings({"content_correlation": float("nan"), "distinct_frames": 50}) == []
    assert len(collapse_warnings({"active_units": 0, "content_correlation": 0.0, "distinct_frames": 50})) == 2


def test_report_shows_the_knn_recall(inputs, tmp_path):
    index = {"recall_at_k": 0.912, "k": 10, "sample": 300, "method": "clustered", "nn_underestimate_max": 0.21, "nn_underestimate_mean": 0.01}
    page = inputs.write(tmp_path / "report.html", ReportConfig(), summary={**inputs.summary, "index": index})
    assert "share of each frame&#39;s 10 true nearest frames the search found (300 sampled frames, clustered graph)" in page
    assert "0.912" in page and "below 0.95" in page and "0.210 / 0.010" in page
    page = inputs.write(tmp_path / "report.html", ReportConfig())
    assert "nearest-neighbour search recall</td><td>not recorded" in page


def test_redundancy_table_matches_a_plain_count(inputs, tmp_path):
    page = inputs.write(tmp_path / "report.html", ReportConfig())
    section = page.split('<section id="redundancy">')[1].split("</section>")[0]
    for t in (0.5, 0.7, 0.9):
        share = float(np.mean(inputs.nn_similarity > t))
        count = int(np.sum(inputs.nn_similarity > t))
        assert f'<td>&gt; {t:g}</td><td class="num">{share:.1%}</td><td class="num">{count}</td>' in section


def test_writes_to_an_fsspec_uri(inputs):
    uri = "memory://reports/run-1/report.html"
    write_report(
        uri, inputs.summary, inputs.manifest, inputs.duplicates, inputs.outliers, inputs.errors,
        inputs.nn_similarity, None, ReportConfig(),
    )
    with fsspec.open(uri, "r", encoding="utf-8") as fh:
        assert fh.read().startswith("<!DOCTYPE html>")


def test_thumbnail_source_of_the_wrong_shape_is_a_clear_error(inputs, tmp_path):
    with pytest.raises(ValueError, match="thumbnails"):
        inputs.write(tmp_path / "report.html", ReportConfig(), thumbnails=lambda rows: inputs.frames[rows][:, 0])


def test_a_groups_kind_is_its_representatives_not_its_first_rows(inputs, tmp_path):
    # Group 1: a near representative listed after its members; group 0: exact, a near member listed first.
    dups = inputs.duplicates.copy()
    dups.loc[(dups["group_id"] == 0) & ~dups["is_representative"], "kind"] = "near"
    dups = dups.sort_values("is_representative", kind="stable").reset_index(drop=True)
    assert dups.groupby("group_id")["kind"].first().tolist() == ["near", "near"]
    page = inputs.write(tmp_path / "report.html", ReportConfig(), duplicates=dups)
    assert "<tr><td>exact</td><td>1</td><td>2</td><td>1</td></tr>" in page
    assert "<tr><td>near</td><td>1</td><td>2</td><td>1</td></tr>" in page
    assert page.split("<b>group 0</b><br>")[1].startswith("exact,")


# Real pydicom files: images of five modalities, objects with no image, and broken files of four causes.
REAL_IMAGES = ["CT_small.dcm", "MR_small.dcm", "emri_small.dcm", "US1_UNCR.dcm", "SC_rgb.dcm", "rtdose.dcm"]
REAL_NO_IMAGE = ["rtplan.dcm", "test-SR.dcm", "waveform_ecg.dcm", "IM000000", "IM000001"]
REAL_BROKEN = ["MR_truncated.dcm", "JPEG-lossy.dcm", "badVR.dcm", "no_meta.dcm"]


def real_archive_inputs(tmp_path: Path) -> ReportInputs:
    """Report inputs from real DICOM decoded by the decode stage: frames, error rows, a pixel-cosine ENRICH ranking."""
    import pyarrow as pa
    import pydicom
    from pydicom.uid import UID

    from enrich_ray import schema
    from enrich_ray.config import DecodeConfig
    from enrich_ray.decode.dicom import read_header
    from enrich_ray.decode.stage import decode_batch
    from tests.conftest import testdata_path

    blobs = {name: testdata_path(name).read_bytes() for name in REAL_IMAGES + REAL_NO_IMAGE + REAL_BROKEN}
    ds = pydicom.dcmread(testdata_path("emri_small_RLE.dcm"))
    ds.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.4.100")  # MPEG2: no decoder for video
    video = io.BytesIO()
    ds.save_as(video)
    blobs["video/emri_mpeg2.dcm"] = video.getvalue()
    rows = []
    for name, data in blobs.items():
        try:
            header = read_header(data, None)
        except ValueError:  # unparseable: the decode stage says why
            header = {}
        rows.append({"image_id": f"{len(rows):064x}", "source_uri": f"/archive/in/{name}", "source_uris": [f"/archive/in/{name}"],
                     "format": "dicom", "size_bytes": len(data), "data": data,
                     **{k: header.get(k) for k in schema.HEADER_NAMES}})
    frames, errors = decode_batch(pa.Table.from_pylist(rows, schema=schema.ARCHIVE), DecodeConfig(reduced_resolution=False))
    frames = schema.result_rows(frames).to_pandas()
    pixels = np.stack(frames["pixels"].to_numpy()).reshape(len(frames), SIZE, SIZE).astype(np.float32)
    flat = pixels.reshape(len(frames), -1).astype(np.float64)
    flat -= flat.mean(axis=0)
    unit = flat / np.maximum(np.linalg.norm(flat, axis=1, keepdims=True), 1e-12)
    order, scores, coverage = farthest_first(unit, seed=0)
    picked = frames.iloc[order].reset_index(drop=True)
    manifest = picked[["image_id", "frame_index", "source_uri", "modality", "series_uid", "study_uid", "patient_key"]].assign(
        rank=np.arange(1, len(frames) + 1), ranker="enrich", score=scores, is_seed=[i == 0 for i in range(len(frames))],
        coverage_similarity=coverage, row=order)
    sim = unit @ unit.T
    np.fill_diagonal(sim, -np.inf)
    nn = sim.max(axis=1)
    outliers = frames[["image_id", "frame_index", "source_uri"]].assign(
        rank=np.arange(1, len(frames) + 1), row=np.arange(len(frames)), score=0.0, nn_similarity=nn, flagged=False)
    duplicates = pd.DataFrame(columns=["group_id", "row", "kind", "similarity", "is_representative", "source_uri", "frame_index"])
    summary = {"run": {"archive": "/archive/packed"}, "counts": {"frames_embedded": len(frames)}}
    return ReportInputs(pixels, summary, manifest, duplicates, outliers, errors.to_pandas(), nn)


def test_a_real_archive_shows_each_modality_and_each_cause(tmp_path):
    inputs = real_archive_inputs(tmp_path)
    page = inputs.write(tmp_path / "report.html", ReportConfig(thumbnails=False))
    # every modality of the decoded frames, with its frame count
    archive = page.split('<section id="archive">')[1].split("</section>")[0]
    modalities = inputs.manifest["modality"].value_counts()
    assert {"CT", "MR", "US", "OT", "RTDOSE"} <= set(modalities.index)
    for modality, count in modalities.items():
        assert f"<tr><td>{modality}</td><td>{count}</td>" in archive, modality
    emri = int((inputs.manifest["source_uri"] == "/archive/in/emri_small.dcm").sum())
    assert emri == 10  # a 10-frame series: counted in the 2-10 bin
    sizes = inputs.manifest["series_uid"].value_counts()
    assert f"<tr><td>2–10</td><td>{int(((sizes >= 2) & (sizes <= 10)).sum())}</td>" in archive
    # every cause of the real error rows, in its part, with its count
    errors = page.split('<section id="errors">')[1].split("</section>")[0]
    unreadable, no_image = errors.split('<h3 id="errors-no-image">')
    expected = inputs.errors["error_type"].value_counts()
    assert set(expected.index) == {"Truncated", "CorruptPixelData", "InvalidHeader", "NotDicom", "UnsupportedCompression",
                                   "NonImageObject", "ImageWithoutPixels"}
    for name, count in expected.items():
        part = no_image if name in ("NonImageObject", "ImageWithoutPixels") else unreadable
        files = int(inputs.errors.loc[inputs.errors["error_type"] == name, "frame_index"].isna().sum())
        assert f'<code>{name}</code></td><td class="num">{files}</td><td class="num">{count - files}</td>' in part, name
    assert "RT Plan Storage" in no_image and "12-lead ECG Waveform Storage" in no_image and "CT Image Storage" in no_image
    assert "not an image object" not in page
    # the first screen adds them up by cause and links each part
    first = page.split('<section id="summary">')[1].split("</section>")[0]
    assert f'<a href="#errors-unreadable">{len(REAL_BROKEN) + 1} files or frames unreadable</a>' in first
    assert f'<a href="#errors-no-image">{len(REAL_NO_IMAGE)} files hold no image</a> (3 not images, 2 image headers without pixels)' in first
    # paths relative to the archive root, the full path on hover
    assert '<span class="uri" title="/archive/in/video/emri_mpeg2.dcm">video/emri_mpeg2.dcm</span>' in errors


def test_frames_one_need_not_label_count_each_family_of_overlapping_groups_once(inputs, tmp_path):
    # rows 0-1 exact, rows 1-3 near (row 1 in both: one family of 4); one file at two paths (row 5 twice: one frame);
    # a byte-copied file that gave no frame (row -1)
    dups = pd.DataFrame(
        {"group_id": [0, 0, 1, 1, 1, 2, 2, 3, 3], "row": [0, 1, 1, 2, 3, 5, 5, -1, -1],
         "kind": ["exact", "exact", "near", "near", "near", "exact", "exact", "exact", "exact"],
         "similarity": 1.0, "is_representative": [True, False, True, False, False, True, False, True, False],
         "image_id": "ab" * 32, "frame_index": 0, "source_uri": [f"s3://archive/d/{i}.dcm" for i in range(9)]}
    )
    page = inputs.write(tmp_path / "report.html", ReportConfig(thumbnails=False), duplicates=dups)
    assert '<a href="#duplicates">4 duplicate groups</a>: 3 frames you need not label' in page


def test_archive_counts_every_frame_when_the_frames_are_given(inputs, tmp_path):
    ranked = inputs.manifest.assign(modality="US", series_uid="s1", study_uid="t1", patient_key=None)
    every = pd.concat([ranked, ranked.head(3).assign(modality="CT", series_uid="s2")], ignore_index=True)
    summary = {**inputs.summary, "excluded_from_ranking": {"exact duplicate": 3}}
    page = inputs.write(tmp_path / "r.html", ReportConfig(thumbnails=False), manifest=ranked, summary=summary)
    archive = page.split('<section id="archive">')[1].split("</section>")[0]
    assert f"the {N_FRAMES} ranked frames (the 3 left out of the ranking are not counted here)" in archive
    assert "<tr><td>CT</td>" not in archive and "ENRICH_RAY_PATIENT_KEY" in archive
    page = write_and_read(tmp_path / "r2.html", inputs, ranked, summary, every)
    archive = page.split('<section id="archive">')[1].split("</section>")[0]
    assert f"all {N_FRAMES + 3} embedded frames" in archive
    assert f"<tr><td>US</td><td>{N_FRAMES}</td>" in archive and "<tr><td>CT</td><td>3</td>" in archive
    assert f"<tr><td>2–10</td><td>1</td><td>3</td></tr><tr><td>11–100</td><td>1</td><td>{N_FRAMES}</td></tr>" in archive


def write_and_read(path: Path, inputs: ReportInputs, manifest: pd.DataFrame, summary: dict, frames: pd.DataFrame) -> str:
    """write_report with its optional `frames` argument."""
    write_report(str(path), summary, manifest, inputs.duplicates, inputs.outliers, inputs.errors, inputs.nn_similarity,
                 None, ReportConfig(thumbnails=False), frames=frames)
    return path.read_text(encoding="utf-8")


def test_coverage_axis_starts_at_the_data_and_marks_the_budget():
    from enrich_ray.report.plots import coverage_figure

    n = np.arange(2, 302)
    radius = 1.05 * np.exp(-n / 20.0) + 0.3  # starts above 1, never below 0.3
    budget = suggested_budget(n, radius)
    ax = coverage_figure(n, radius, 36.0, budget).axes[0]
    low, high = ax.get_ylim()
    assert radius.min() - 0.05 < low < radius.min() and radius.max() < high < radius.max() + 0.05
    assert ax.get_xlim() == (2.0, 301.0)
    marks = [line for line in ax.get_lines() if list(line.get_xdata()) == [budget, budget]]
    assert marks, "the budget is marked by a vertical line"
    (note,) = ax.texts
    hours = budget * 36 / 3600
    assert hours < 1 and note.get_text() == f"suggested budget: {budget} frames, {hours:.2g} h ({hours * 60:.0f} min)"


def map_section(page: str) -> str:
    return page.split('<section id="map">')[1].split("</section>")[0]


def test_embedding_map_draws_every_frame_marks_the_first_to_label_and_the_flagged(inputs, tmp_path):
    cfg = ReportConfig(gallery_size=4)
    manifest = inputs.manifest.sort_values("rank")
    evil_row = int(manifest["row"].iloc[-1])  # the last ranked frame: neither marked nor (usually) flagged
    manifest = manifest.assign(source_uri=np.where(manifest["row"] == evil_row, f"s3://archive/busi/{EVIL}.png",
                                                   manifest["source_uri"]))
    page = inputs.write(tmp_path / "report.html", cfg, manifest=manifest)
    assert '<a href="#map">' in page.split('<nav id="contents"')[1].split("</nav>")[0]
    svg = map_section(page)
    assert svg.count("<circle ") == N_FRAMES
    budget = int(re.search(r"rank ≤ (\d+)", svg).group(1))
    flagged = set(inputs.outliers.loc[inputs.outliers["flagged"], "row"])
    top = set(manifest.loc[manifest["rank"] <= budget, "row"]) - flagged
    assert top and flagged
    assert svg.count('<g class="map-top">') == len(top)
    assert svg.count('<g class="map-flagged">') == len(flagged)
    assert svg.count('<g class="map-other">') == N_FRAMES - len(top) - len(flagged)
    for row in top:
        rank = int(manifest.loc[manifest["row"] == row, "rank"].iloc[0])
        assert re.search(rf'<g class="map-top"><circle [^>]*><title>[^<]* · rank {rank}(?: ·[^<]*)?</title>', svg)
    # the top gallery's frames carry their thumbnail (shown on hover); the thumbnails are the gallery's, reused
    gallery_top = set(manifest["row"].iloc[: cfg.gallery_size]) - flagged
    assert svg.count('<image class="map-thumb" href="data:image/png;base64,') >= len(gallery_top) + len(flagged)
    assert "<script" not in without_own_script(page) and "<b>bold</b>" not in page
    escaped = "&lt;script&gt;alert(&#39;phi&#39;)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;"
    assert f"<title>busi/{escaped}.png · rank {N_FRAMES}" in svg


def test_embedding_map_holds_no_pixels_with_thumbnails_off_and_is_absent_without_embeddings(inputs, tmp_path):
    page = inputs.write(tmp_path / "off.html", ReportConfig(thumbnails=False))
    assert map_section(page).count("<circle ") == N_FRAMES and "<image" not in page
    none = map_section(inputs.write(tmp_path / "none.html", ReportConfig(), embeddings=None))
    assert "<circle" not in none and "No embedding map: the run passed no embeddings" in none


def test_projection_separates_planted_clusters_is_deterministic_and_capped():
    rng = np.random.default_rng(7)
    codes = rng.normal(size=(3000, 32))
    codes[1500:] += 6.0 * rng.normal(size=32) / np.sqrt(32)  # the second cluster, shifted along one direction
    rows, xy = project_2d(codes, keep=[3, 2999], max_points=500, seed=1)
    assert len(rows) == 500 and len(set(rows)) == 500 and {3, 2999} <= set(rows)
    second = rows >= 1500
    assert 0 < second.sum() < 500
    gap = abs(xy[second, 0].mean() - xy[~second, 0].mean())
    assert gap > 3 * max(xy[second, 0].std(), xy[~second, 0].std()), "the first component must split the clusters"
    again = project_2d(codes, keep=[3, 2999], max_points=500, seed=1)
    assert np.array_equal(rows, again[0]) and np.array_equal(xy, again[1])
    all_rows, _ = project_2d(codes[:400], max_points=500)
    assert np.array_equal(all_rows, np.arange(400))


NIGHT = {"night": "2026-11-20", "frames_added": 1234, "catalog_frames_before": 20000, "catalog_frames_after": 21234,
         "nights_in_catalog": 6, "resent_images": 3, "exact_against_earlier": 12, "near_against_earlier": 40,
         "labeled_frames": 500}


def night_rows(page: str) -> dict[str, tuple[str, str]]:
    """The night section's table: label -> (value, unit)."""
    section = page.split('<section id="night">')[1].split("</section>")[0]
    return {label: (value, unit) for label, value, unit in
            re.findall(r'<tr><td>(.*?)</td><td class="num">(.*?)</td><td>(.*?)</td></tr>', section)}


def test_a_nightly_report_says_what_the_night_added_to_the_catalog(inputs, tmp_path):
    page = inputs.write(tmp_path / "night.html", ReportConfig(thumbnails=False), night=NIGHT)
    assert "<title>enrich_ray nightly report, night 2026-11-20</title>" in page
    assert "<h1>enrich_ray nightly report: night 2026-11-20</h1>" in page
    # the night's section comes first, then every section a curate report has
    sections = re.findall(r'<section id="([\w-]+)">', page)
    assert sections[:2] == ["summary", "night"]
    curate = re.findall(r'<section id="([\w-]+)">', inputs.write(tmp_path / "curate.html", ReportConfig(thumbnails=False)))
    assert sections == curate[:1] + ["night"] + curate[1:]
    contents = re.findall(r'<li><a href="#([\w-]+)">', page.split('<nav id="contents"')[1].split("</nav>")[0])
    assert contents[0] == "night" and contents[1:] == [s for s in curate if s != "summary"]
    first = re.findall(r"<li>(.*?)</li>", page.split('<section id="summary">')[1].split("</section>")[0])
    assert first[0] == ('<a href="#night">The night 2026-11-20 added 1,234 frames to the catalog</a>: 20,000 → 21,234 '
                        "frames in the catalog; 6 nights in it; 3 images sent again (not added twice); 12 exact and 40 "
                        "near duplicates of earlier nights&#39; frames.")
    assert first[1].startswith('<a href="#budget">Label these ')
    rows = night_rows(page)
    assert len(rows) == len(NIGHT)
    assert rows["night"] == ("2026-11-20", "date")
    assert rows["frames the night added to the catalog"] == ("1,234", "frames")
    assert rows["frames in the catalog before the night"] == ("20,000", "frames")
    assert rows["frames in the catalog after the night"] == ("21,234", "frames")
    assert rows["nights in the catalog, this one included"] == ("6", "nights")
    assert rows["images sent again: already in the catalog, not added twice"] == ("3", "images")
    assert rows["the night&#39;s frames that exactly duplicate a frame of an earlier night"] == ("12", "frames")
    assert rows["the night&#39;s frames that nearly duplicate a frame of an earlier night"] == ("40", "frames")
    assert rows["frames of the catalog already labeled: the night&#39;s ranking starts from them"] == ("500", "frames")


def test_a_night_that_records_little_says_not_recorded_and_escapes_what_it_is_given(inputs, tmp_path):
    night = {"night": EVIL, "frames_added": 7, "catalog_frames_after": None, "pixels_checked": 3}
    page = without_own_script(inputs.write(tmp_path / "night.html", ReportConfig(thumbnails=False), night=night))
    assert "<script" not in page and "<b>bold</b>" not in page
    escaped = "&lt;script&gt;alert(&#39;phi&#39;)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;"
    rows = night_rows(page)
    assert rows["night"] == (escaped, "date") and rows["frames the night added to the catalog"] == ("7", "frames")
    assert rows["pixels_checked"] == ("3", "")  # a key the report does not know is still shown
    unknown = [label for label, (value, _) in rows.items() if value == "not recorded"]
    assert len(unknown) == 7 and "frames in the catalog after the night" in unknown
    first = re.findall(r"<li>(.*?)</li>", page.split('<section id="summary">')[1].split("</section>")[0])[0]
    assert first == f'<a href="#night">The night {escaped} added 7 frames to the catalog</a>.'
    page = inputs.write(tmp_path / "empty.html", ReportConfig(thumbnails=False), night={})
    assert '<a href="#night">What the night added to the catalog</a>.' in page and "<h1>enrich_ray nightly report</h1>" in page
    assert [v for v, _ in night_rows(page).values()] == ["not recorded"] * len(NIGHT)
    page = inputs.write(tmp_path / "exact.html", ReportConfig(thumbnails=False), night={"exact_against_earlier": 2})
    assert ('<a href="#night">What the night added to the catalog</a>: 2 exact duplicates of earlier nights&#39; frames.'
            in page)
    # a curate run passes no night: no such section, link or title
    page = inputs.write(tmp_path / "curate.html", ReportConfig(thumbnails=False))
    assert 'id="night"' not in page and 'href="#night"' not in page and "<title>enrich_ray report</title>" in page


def test_redundancy_is_shown_per_modality_when_the_archive_holds_several(tmp_path):
    inputs = real_archive_inputs(tmp_path)
    frames = inputs.manifest.sort_values("row").reset_index(drop=True)  # the rows of nn_similarity
    page = inputs.write(tmp_path / "report.html", ReportConfig(thumbnails=False), frames=frames)
    part = page.split('<section id="redundancy">')[1].split("</section>")[0]
    assert "<h3>By modality</h3>" in part
    nn = inputs.nn_similarity
    for modality, count in frames["modality"].value_counts().items():
        median = np.median(nn[(frames["modality"] == modality).to_numpy()])
        assert f'<tr><td>{modality}</td><td class="num">{count}</td><td class="num">{median:.3f}</td>' in part, modality
    one = inputs.write(tmp_path / "one.html", ReportConfig(thumbnails=False), frames=frames.assign(modality="US"))
    assert "By modality" not in one.split('<section id="redundancy">')[1].split("</section>")[0]


def leak_inputs(inputs: ReportInputs, split: list[str], patient: list) -> tuple[dict, pd.DataFrame]:
    """summary['leakage'] and leakage.parquet, as pipelines/leakage.py writes them, for a split of the inputs' frames."""
    from enrich_ray.analysis.leakage import crossing_pairs

    frames = inputs.manifest.sort_values("row")
    n = len(frames)
    leak = crossing_pairs(np.arange(n), split, inputs.duplicates, patient, [None] * n, inputs.embeddings)
    sides = {}
    for end in ("a", "b"):
        rows = leak.pairs[end].to_numpy()
        sides[end] = pd.DataFrame({f"split_{end}": np.asarray(split, dtype=object)[rows],
                                   f"image_id_{end}": frames["image_id"].to_numpy()[rows], f"frame_index_{end}": 0,
                                   f"source_uri_{end}": frames["source_uri"].to_numpy()[rows], f"row_{end}": rows})
    table = pd.concat([leak.pairs[["kind", "similarity", "same_patient", "same_study"]], sides["a"], sides["b"]], axis=1)
    return {"split": "paper_split.csv", "leaks": bool(len(table)), **leak.counts, "split_rows_not_in_archive": 3}, table


def test_a_split_that_leaks_says_so_plainly_with_its_pairs_side_by_side(tmp_path):
    inputs = build_inputs(None)
    n = N_FRAMES
    split = ["train"] * 8 + ["test"] * (n - 8)
    split[1] = "test"  # the exact copy of frame 0 on the other side
    patient = [None] * n
    patient[3], patient[12] = "p7", "p7"  # one patient on both sides
    counts, pairs = leak_inputs(inputs, split, patient)
    assert set(pairs["kind"]) >= {"exact_duplicate", "same_patient"}
    page = inputs.write(tmp_path / "leaks.html", ReportConfig(), summary={**inputs.summary, "leakage": counts}, leakage=pairs)
    test_frames = split.count("test")
    leaking = counts["frames_leaking"]["test"]
    said = f"This split leaks: {leaking} of {test_frames} test frames have an exact duplicate"
    warning = page.split('id="leakage-warning">')[1].split("</div>")[0]
    assert warning.startswith(said) and "overstate" in warning
    first = re.findall(r"<li>(.*?)</li>", page.split('<section id="summary">')[1].split("</section>")[0])[0]
    assert first.startswith('<a href="#leakage">This split leaks</a>: ')
    section = page.split('<section id="leakage">')[1].split("</section>")[0]
    assert "paper_split.csv" in section and "3 rows of the split name no image of the archive" in section
    assert "No frame of the split has a patient key" not in section and "12 of 14 frames of the split have no patient key" in section
    assert section.count('class="thumb"') == 2 * len(pairs) and len(pairs) <= 12
    rows = re.findall(r"<tr><td>(exact duplicate|near duplicate|same patient|same study)[^<]*</td><td class=\"num\">([^<]*)</td>"
                      r"<td>(train|test)</td><td>.*?</td><td>(train|test)</td>", section)
    assert len(rows) == len(pairs) and all(a == "train" and b == "test" for _, _, a, b in rows)
    assert ("same patient", f"{pairs.loc[pairs['kind'] == 'same_patient', 'similarity'].iloc[0]:.3f}", "train", "test") in rows
    assert '<a href="#leakage">Leakage across the split</a>' in page and 'id="leakage-unchecked"' not in page
    # thumbnails off: the pairs are listed, no pixel of them shown
    page = inputs.write(tmp_path / "off.html", ReportConfig(thumbnails=False), summary={**inputs.summary, "leakage": counts},
                        leakage=pairs)
    section = page.split('<section id="leakage">')[1].split("</section>")[0]
    assert 'class="thumb"' not in page and len(re.findall(r"<tr><td>(?:exact duplicate|same patient)[^<]*</td><td class=\"num\">[^<]*</td><td>train", section)) == len(pairs)


def test_a_clean_split_says_it_was_checked_and_no_split_says_so_in_one_line(tmp_path):
    inputs = build_inputs(None)
    n = N_FRAMES
    grouped = set(inputs.duplicates["row"])  # every duplicate on one side, every frame its own patient
    split = ["train" if r in grouped else "test" for r in range(n)]
    counts, pairs = leak_inputs(inputs, split, [f"p{i}" for i in range(n)])
    assert pairs.empty and not any(counts["frames_leaking"].values())
    page = inputs.write(tmp_path / "clean.html", ReportConfig(), summary={**inputs.summary, "leakage": counts}, leakage=pairs)
    assert 'id="leakage-warning"' not in page
    verdict = page.split('id="leakage-verdict">')[1].split("</p>")[0]
    assert verdict == (f"This split is clean: no exact or near duplicate, patient or study crosses it ({len(grouped)} train, "
                       f"{n - len(grouped)} test frames checked).")
    page = inputs.write(tmp_path / "none.html", ReportConfig())
    assert 'id="leakage"' not in page and 'href="#leakage"' not in page
    assert page.count('id="leakage-unchecked"') == 1 and "No train/test split was checked for leaks" in page
