"""report.html: one self-contained page a clinician or ML engineer opens in a browser.

Every picture is an inline base64 PNG and the CSS is inline: the page reaches nothing outside
itself and needs no JavaScript. With ReportConfig.thumbnails false it holds no pixel data of any
frame (burned-in text in ultrasound and X-ray frames can carry patient data). Of the header
fields it never prints any: frames are named by image_id, frame_index and source_uri only.

The `summary` dict (every key optional; a missing one renders as "not recorded"):
    run:         {name: text}, e.g. archive, out, finished: shown in one line at the top
    counts:      {name: int}, in order: the counts in and out of the run (archive_images,
                 frames_decoded, frames_embedded, error_rows, ranked, ...)
    checks:      {name: bool}: accounting checks; a failed one puts a warning at the top
    timings_s:   {stage: seconds}, in order; the report adds the total
    embedding:   {embedder, dim, active_units, participation_ratio, content_correlation,
                 distinct_frames, ...}: shown as a table and judged by collapse_warnings; the
                 median nearest-neighbour similarity is computed from `nn_similarity`
    index:       graph_recall's figures {recall_at_k, k, sample, nn_underestimate_max, ...}:
                 shown in the embedding section
    versions:    {package: version}
    config:      config_dict(cfg) of the run (secrets already redacted), shown folded; the
                 labeling-time estimate reads selection.ranker, selection.seconds_per_image and
                 selection.seconds_per_segmentation from it (defaults: SelectionConfig's)
Other keys are ignored; the redundancy shares are computed from `nn_similarity`.
"""
from __future__ import annotations

import base64
import html
import os
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd
import yaml

from enrich_ray.config import ReportConfig, SelectionConfig, StorageConfig
from enrich_ray.decode.causes import cause_of
from enrich_ray.io.fs import resolve
from enrich_ray.report.plots import (
    BUDGET_MIN_GAIN,
    BUDGET_WINDOW,
    REDUNDANCY_THRESHOLDS,
    coverage_png,
    redundancy_png,
    share_above,
    suggested_budget,
    thumbnail_png,
)

COLLAPSE_CONTENT_CORRELATION = 0.2  # below this the embedding's similarities do not track the pixels
COLLAPSE_MIN_DISTINCT_FRAMES = 10  # fewer distinct sampled frames than this: too few to judge
GROUP_MEMBERS_SHOWN = 8  # thumbnails per near-duplicate group
GROUPS_OPEN = 6  # duplicate groups shown open; the rest of the gallery is folded
ERROR_EXAMPLES = 3  # example rows per cause of error rows
MESSAGE_CHARS = 300  # an error message is cut to this many characters on the page
LABEL_COUNTS = (100, 1000)  # the "top N" rows of the labeling-time table, besides "all"

ThumbnailSource = Callable[[list[int]], np.ndarray]

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:0 auto;
max-width:1150px;padding:0 1.2em 3em;color:#1d1d1f;line-height:1.45}
h1{margin:.8em 0 .2em}h2{border-bottom:2px solid #dde;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;margin:.6em 0}th,td{border:1px solid #ccd;padding:.25em .6em;
text-align:left;vertical-align:top}th{background:#f1f2f6}td.num{text-align:right;
font-variant-numeric:tabular-nums}.muted{color:#666}.note{background:#f6f7fa;border-left:4px
solid #8a94b0;padding:.5em .8em}.warning{background:#fff1e6;border:2px solid #d9480f;color:#7a2500;
padding:.7em 1em;font-weight:600}.plot{max-width:100%;height:auto;border:1px solid #eee}
.gallery{display:flex;flex-wrap:wrap;gap:10px}.gallery figure,.group figure{margin:0;width:104px;
font-size:.75em;text-align:center}.gallery img,.group img{width:96px;height:96px;
image-rendering:auto;border:1px solid #bbb;background:#000}.group{display:flex;gap:8px;
align-items:flex-start;padding:.5em 0;border-bottom:1px dashed #ccd}.group-label{width:130px;
font-size:.85em}code,.uri{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.85em;
word-break:break-all}details pre{background:#f6f7fa;padding:.8em;overflow:auto}
#summary ul.todo{font-size:1.08em;padding-left:1.2em}#summary li{margin:.3em 0}
dt{font-weight:600;margin-top:.5em}dd{margin-left:1.5em}nav#contents{font-size:.9em;margin:.8em 0}nav#contents ol{display:flex;flex-wrap:wrap;gap:.3em 1.6em;
margin:.3em 0;padding-left:1.2em}
"""


def collapse_warnings(embedding: Mapping[str, Any]) -> list[str]:
    """Why the embedding looks collapsed (empty when it does not); the one home of the rule.

    It reads the figures of embed/diagnostics.embedding_health (curate and nightly record them
    alike): the embedding is collapsed when its cosine similarities do not track image content
    (rank correlation with the raw-pixel cosine over pairs of distinct sampled frames below
    COLLAPSE_CONTENT_CORRELATION, judged on at least COLLAPSE_MIN_DISTINCT_FRAMES distinct
    frames), or when training recorded no active latent unit. Near-identical frames are dropped
    before judging, so an archive of copies is not called collapsed. The thresholds stand on
    tests/benchmarks/bench_health.py. A ranking over a collapsed embedding is no better than random.
    """
    reasons = []
    active = embedding.get("active_units")
    if isinstance(active, (int, np.integer)) and not isinstance(active, bool) and active == 0:
        reasons.append("no latent unit is active (mean KL > 0.01 nats): the encoder ignores its input")
    rho = embedding.get("content_correlation")
    distinct = embedding.get("distinct_frames") or 0
    if rho is not None and np.isfinite(rho) and distinct >= COLLAPSE_MIN_DISTINCT_FRAMES:
        if rho < COLLAPSE_CONTENT_CORRELATION:
            reasons.append(
                f"embedding similarity does not track image content: rank correlation with raw-pixel "
                f"similarity {rho:.2f} < {COLLAPSE_CONTENT_CORRELATION:g} over {distinct:,} distinct frames"
            )
    return reasons


def write_report(
    path: str,
    summary: dict,
    manifest: pd.DataFrame,
    duplicates: pd.DataFrame,
    outliers: pd.DataFrame,
    errors: pd.DataFrame,
    nn_similarity: np.ndarray,
    thumbnails: ThumbnailSource | None,
    cfg: ReportConfig,
    storage: StorageConfig | None = None,
    *,
    frames: pd.DataFrame | None = None,
) -> None:
    """Render the run's results as one self-contained HTML page at `path` (a local path or URI;
    `storage` carries an object store's endpoint and credentials). `frames`, when given, is every
    embedded frame with its group keys (modality, series_uid, study_uid, patient_key): what the archive
    section counts; without it the section counts the manifest's ranked frames."""
    page = render_report(summary, manifest, duplicates, outliers, errors, nn_similarity, thumbnails, cfg, frames=frames)
    loc = resolve(path, storage)
    if loc.is_local:
        os.makedirs(os.path.dirname(loc.path) or ".", exist_ok=True)
    with loc.fs.open(loc.path, "w", encoding="utf-8") as fh:
        fh.write(page)


def render_report(
    summary: dict,
    manifest: pd.DataFrame,
    duplicates: pd.DataFrame,
    outliers: pd.DataFrame,
    errors: pd.DataFrame,
    nn_similarity: np.ndarray,
    thumbnails: ThumbnailSource | None,
    cfg: ReportConfig,
    *,
    frames: pd.DataFrame | None = None,
) -> str:
    """The report page as a string (write_report without the writing)."""
    nn = np.asarray(nn_similarity, dtype=np.float64).ravel()
    nn = nn[np.isfinite(nn)]
    manifest = manifest.sort_values("rank", kind="stable")
    outliers = outliers.sort_values("rank", kind="stable")
    top = manifest.head(cfg.gallery_size)
    groups = [g.head(GROUP_MEMBERS_SHOWN) for g in _largest_groups(duplicates, cfg.gallery_size)]
    odd = _outliers_shown(outliers, cfg.gallery_size)
    rows = [*_rows(top), *(r for g in groups for r in _rows(g)), *_rows(odd)]
    paths = _Paths([manifest, duplicates, outliers, errors])
    thumbs = _Thumbs(thumbnails if cfg.thumbnails else None, rows, paths)
    selection = _selection_settings(summary)
    median_nn = float(np.median(nn)) if nn.size else None
    embedding = dict(summary.get("embedding") or {})
    warnings = collapse_warnings(embedding)
    curve = _coverage_curve(manifest)
    budget = suggested_budget(*curve) if curve is not None else None
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>enrich_ray report</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>enrich_ray report</h1>",
        _run_line(summary, manifest, paths),
        _collapse_banner(warnings),
        _checks_banner(summary.get("checks") or {}),
        _summary_section(manifest, budget, selection, duplicates, outliers, errors, embedding, warnings),
        _contents(),
        _thumbnail_note(cfg, thumbnails),
        _ranking_section(manifest, top, selection, thumbs, paths, summary.get("excluded_from_ranking") or {}, curve,
                         budget),
        _archive_section(manifest if frames is None else frames, frames is None, summary.get("excluded_from_ranking") or {}),
        _duplicates_section(duplicates, groups, thumbs, paths),
        _outliers_section(outliers, odd, thumbs, paths),
        _errors_section(errors, paths),
        _redundancy_section(nn),
        _embedding_section(embedding, median_nn, nn.size, warnings, summary.get("index")),
        _run_section(summary),
        _glossary(),
        "</body></html>",
    ]
    return "\n".join(p for p in parts if p)


def _rows(frames: pd.DataFrame) -> list[int]:
    """The embedding rows of a table's frames that have one (row >= 0)."""
    if "row" not in frames.columns:
        return []
    rows = pd.to_numeric(frames["row"], errors="coerce").dropna().astype(int)
    return [r for r in rows if r >= 0]


class _Paths:
    """Source paths as the page shows them: relative to the archive root (the deepest folder holding every
    source the page names), the full URI on hover (a title attribute)."""

    def __init__(self, tables: list[pd.DataFrame]):
        uris = sorted({str(u) for t in tables if "source_uri" in t.columns for u in t["source_uri"].dropna()})
        folders = [u.split("/")[:-1] for u in uris]
        common = "/".join(os.path.commonprefix(folders)) if folders else ""
        self.root = common + "/" if common.strip("/").rstrip(":") else ""

    def span(self, source_uri: Any, frame_index: Any = None) -> str:
        """The frame's name relative to the root, its full name in the title."""
        full = _frame_name(source_uri, frame_index)
        short = full[len(self.root):] if self.root and full.startswith(self.root) else full
        return f'<span class="uri" title="{_e(full)}">{_e(short)}</span>'


class _Thumbs:
    """The PNG data URIs of the frames the page shows, fetched with one call to the source."""

    def __init__(self, source: ThumbnailSource | None, rows: list[int], paths: _Paths):
        self.uris: dict[int, str] = {}
        self.paths = paths
        self.enabled = source is not None
        wanted = list(dict.fromkeys(int(r) for r in rows))
        if source is None or not wanted:
            return
        frames = np.asarray(source(wanted))
        if frames.ndim != 3 or frames.shape[0] != len(wanted):
            raise ValueError(
                f"thumbnails({len(wanted)} rows) returned an array of shape {frames.shape}; "
                f"expected ({len(wanted)}, size, size)"
            )
        for row, frame in zip(wanted, frames):
            self.uris[row] = "data:image/png;base64," + base64.b64encode(thumbnail_png(frame)).decode("ascii")

    def figure(self, row: Any, caption: str, source_uri: Any, frame_index: Any) -> str:
        """One thumbnail with its caption (HTML) and the frame's full name on hover; the frame's name and the
        caption alone for a frame without pixels."""
        uri = self.uris.get(int(row)) if row is not None and not pd.isna(row) else None
        if uri is None:
            return f"<figure><figcaption>{self.paths.span(source_uri, frame_index)}<br>{caption}</figcaption></figure>"
        title = _e(_frame_name(source_uri, frame_index))
        img = f'<img class="thumb" src="{uri}" alt="{title}" title="{title}">'
        return f"<figure>{img}<figcaption>{caption}</figcaption></figure>"


def _largest_groups(duplicates: pd.DataFrame, n: int) -> list[pd.DataFrame]:
    """The n largest duplicate groups, each with its representative first."""
    if duplicates.empty:
        return []
    sizes = duplicates.groupby("group_id").size().sort_values(ascending=False, kind="stable")
    out = []
    for gid in sizes.index[:n]:
        g = duplicates[duplicates["group_id"] == gid]
        out.append(g.sort_values(["is_representative", "similarity"], ascending=[False, False], kind="stable"))
    return out


def _outliers_shown(outliers: pd.DataFrame, n: int) -> pd.DataFrame:
    """The flagged outliers, least like anything first, at most n (the top n when none is flagged)."""
    flagged = outliers[outliers["flagged"].astype(bool)]
    return (flagged if len(flagged) else outliers).head(n)


def _selection_settings(summary: dict) -> SelectionConfig:
    """The run's labeling-time settings from summary['config']['selection'], else the defaults."""
    defaults = SelectionConfig()
    sel = ((summary.get("config") or {}).get("selection")) or {}
    return SelectionConfig(
        ranker=sel.get("ranker", defaults.ranker),
        seconds_per_image=float(sel.get("seconds_per_image", defaults.seconds_per_image)),
        seconds_per_segmentation=float(sel.get("seconds_per_segmentation", defaults.seconds_per_segmentation)),
    )


def _coverage_curve(manifest: pd.DataFrame) -> tuple[np.ndarray, np.ndarray] | None:
    """The coverage curve of a rank-sorted manifest: (frames labeled, coverage radius 1 − similarity), seed rows
    left out; None when the manifest records no coverage."""
    curve = manifest.reindex(columns=["rank", "coverage_similarity"]).dropna()
    if curve.empty:
        return None
    return curve["rank"].to_numpy(dtype=np.int64), 1.0 - curve["coverage_similarity"].to_numpy(dtype=np.float64)


def _budget_frames(manifest: pd.DataFrame, budget: int | None) -> int:
    """How many of the manifest's frames the budget asks to label: those ranked up to it (all without one)."""
    return len(manifest) if budget is None else int((manifest["rank"] <= budget).sum())


def _duplicate_savings(duplicates: pd.DataFrame) -> tuple[int, int]:
    """(groups, frames one need not label): groups sharing a frame form one family, of which one frame is labeled.

    A frame's exact group and its near group share its row; byte copies at several paths share one
    row; rows below 0 (files that gave no frame) are no frames to label.
    """
    if duplicates.empty:
        return 0, 0
    parent: dict[Any, Any] = {}

    def find(x: Any) -> Any:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    framed = duplicates[pd.to_numeric(duplicates["row"], errors="coerce") >= 0]
    for gid, row in zip(framed["group_id"], framed["row"].astype(int)):
        parent[find(("row", row))] = find(("group", gid))
    rows = {int(r) for r in framed["row"]}
    families = {find(("row", r)) for r in rows}
    return int(duplicates["group_id"].nunique()), len(rows) - len(families)


def _health_sentence(embedding: Mapping[str, Any], warnings: list[str]) -> str:
    """The embedding-health verdict in one plain sentence (collapse_warnings's rule)."""
    if warnings:
        return f"The embedding looks collapsed ({warnings[0]}): the ranking may be no better than random."
    rho = embedding.get("content_correlation")
    distinct = embedding.get("distinct_frames") or 0
    if rho is None or not np.isfinite(rho):
        return "The embedding's health was not measured in this run."
    if distinct < COLLAPSE_MIN_DISTINCT_FRAMES:
        return f"The embedding's health could not be judged: only {distinct:,} distinct frames to compare."
    return (
        f"The embedding looks healthy: frames it calls alike also look alike (agreement with pixel similarity "
        f"{rho:.2f} over {distinct:,} distinct frames; below {COLLAPSE_CONTENT_CORRELATION:g} would mean collapsed)."
    )


CONTENTS = [
    ("summary", "What to do now"),
    ("ranking", "What to label first"),
    ("archive", "What is in the archive"),
    ("duplicates", "Duplicates"),
    ("outliers", "Foreign and blank frames"),
    ("errors", "Files that gave no frame, by cause"),
    ("redundancy", "How redundant the archive is"),
    ("embedding", "Embedding health"),
    ("run", "Run facts"),
    ("glossary", "Glossary"),
]


def _contents() -> str:
    links = "".join(f'<li><a href="#{anchor}">{_e(title)}</a></li>' for anchor, title in CONTENTS[1:])
    return f'<nav id="contents" aria-label="Contents"><b>Contents</b><ol>{links}</ol></nav>'


def _summary_section(manifest: pd.DataFrame, budget: int | None, sel: SelectionConfig, duplicates: pd.DataFrame,
                     outliers: pd.DataFrame, errors: pd.DataFrame, embedding: Mapping[str, Any],
                     warnings: list[str]) -> str:
    """The first screen: what to do now, each item a link to its section."""
    items = []
    if len(manifest) == 0:
        items.append('<a href="#ranking">No frame was ranked</a>: there is nothing to label yet.')
    else:
        n = _budget_frames(manifest, budget)
        why = (
            f": after them the next {BUDGET_WINDOW} frames add little (they shrink the coverage radius by at most "
            f"{BUDGET_MIN_GAIN:.0%} of its whole drop)" if budget is not None else " (no coverage curve to suggest fewer)"
        )
        items.append(
            f'<a href="#budget">Label these {n:,} frames first</a> ({_duration(n * sel.seconds_per_image)} at '
            f"{sel.seconds_per_image:g} s a frame, of {len(manifest):,} ranked){why}."
        )
    groups, saved = _duplicate_savings(duplicates)
    items.append(
        f'<a href="#duplicates">{groups:,} duplicate group{"s" * (groups != 1)}</a>: '
        f"{saved:,} frames you need not label (copies or near copies of a frame kept)."
    )
    flagged = outliers[outliers["flagged"].astype(bool)] if len(outliers) else outliers
    blank = int(flagged["is_constant"].astype(bool).sum()) if "is_constant" in flagged.columns else 0
    items.append(
        f'<a href="#outliers">{len(flagged):,} foreign or blank frames to check</a>'
        + (f" ({blank:,} blank)" if blank else "") + "."
    )
    causes = _error_causes(errors)
    for no_image, anchor in ((False, "errors-unreadable"), (True, "errors-no-image")):
        part = causes[causes["no_image"] == no_image]
        total = int(part["rows"].sum())
        by_cause = ", ".join(f"{int(c.rows):,} {_e(c.short)}" for c in part.itertuples(index=False))
        if no_image:
            if total:
                items.append(f'<a href="#{anchor}">{total:,} files hold no image</a> ({by_cause}): skipped, not errors.')
        elif total:
            items.append(f'<a href="#{anchor}">{total:,} files or frames unreadable</a>: {by_cause}.')
        else:
            items.append('<a href="#errors">No file was unreadable.</a>')
    items.append(f'<a href="#embedding">Embedding health</a>: {_e(_health_sentence(embedding, warnings))}')
    body = "".join(f"<li>{item}</li>" for item in items)
    return f'<section id="summary"><h2>What to do now</h2><ul class="todo">{body}</ul></section>'


# ---------------------------------------------------------------- sections


def _run_line(summary: dict, manifest: pd.DataFrame, paths: _Paths) -> str:
    run = summary.get("run") or {}
    facts = [f"{_e(k)}: {_e(v)}" for k, v in run.items()]
    ranker = ", ".join(sorted(manifest["ranker"].dropna().astype(str).unique())) if len(manifest) else ""
    if ranker:
        facts.append(f"ranker: {_e(ranker)}")
    if paths.root:
        facts.append(f'paths below are relative to <span class="uri" id="archive-root">{_e(paths.root)}</span> '
                     "(hover for the full one)")
    return f'<p class="muted">{" · ".join(facts)}</p>' if facts else ""


def _collapse_banner(warnings: list[str]) -> str:
    if not warnings:
        return ""
    items = "".join(f"<li>{_e(w)}</li>" for w in warnings)
    return (
        '<div class="warning" id="collapse-warning">The embedding looks collapsed: a ranking over it '
        f"may be no better than random. Check it against the raw-pixel baseline.<ul>{items}</ul></div>"
    )


def _checks_banner(checks: dict) -> str:
    failed = [name for name, ok in checks.items() if not ok]
    if not failed:
        return ""
    return (
        '<div class="warning" id="checks-failed">Accounting checks failed: '
        + ", ".join(_e(f) for f in failed)
        + ". Some inputs ended neither as an embedding nor as an error row (see Run facts).</div>"
    )


def _thumbnail_note(cfg: ReportConfig, thumbnails: ThumbnailSource | None) -> str:
    if not cfg.thumbnails:
        return (
            '<p class="note" id="thumbnails-off">Thumbnails were switched off (report.thumbnails: false): '
            "burned-in text in ultrasound and X-ray frames can carry patient data, so this page holds "
            "no pixel data of any frame. Frames are listed by source file and frame index.</p>"
        )
    if thumbnails is None:
        return '<p class="note" id="thumbnails-off">No thumbnails: the run passed no source of frames.</p>'
    return ""


def _redundancy_section(nn: np.ndarray) -> str:
    head = '<section id="redundancy"><h2>How redundant the archive is</h2>'
    if nn.size == 0:
        return head + '<p class="muted">No frame has a neighbour to compare with.</p></section>'
    shares = share_above(nn, REDUNDANCY_THRESHOLDS)
    rows = "".join(
        f'<tr><td>&gt; {t:g}</td><td class="num">{shares[t]:.1%}</td>'
        f'<td class="num">{int(round(shares[t] * nn.size)):,}</td></tr>'
        for t in REDUNDANCY_THRESHOLDS
    )
    return (
        head
        + "<p>For every frame, its similarity to the most similar other frame in the archive. A curve that "
        "stays low until near 1 means most frames have a near twin somewhere in the archive: labeling all of "
        "them repeats work.</p>"
        + _plot(redundancy_png(nn), "Cumulative fraction of frames by maximum similarity to any other frame")
        + "<table><tr><th>similarity to the most similar other frame (cosine, −1 to 1)</th>"
        "<th>share of frames (%)</th><th>frames (count)</th></tr>"
        + rows
        + f'</table><p class="muted">{nn.size:,} frames; median similarity {np.median(nn):.3f}.</p></section>'
    )


def _ranking_section(manifest: pd.DataFrame, top: pd.DataFrame, sel: SelectionConfig, thumbs: _Thumbs,
                     paths: _Paths, excluded: Mapping[str, int], curve: tuple[np.ndarray, np.ndarray] | None,
                     budget: int | None) -> str:
    out = ['<section id="ranking"><h2>What to label first</h2>']
    if excluded:
        listed = ", ".join(f"{int(n):,} {_e(why)}" for why, n in sorted(excluded.items()))
        out.append(
            f'<p id="excluded">{sum(map(int, excluded.values())):,} frames left the ranking ({listed}): '
            "blank frames and frames flagged as foreign are listed under Foreign and blank frames, exact copies "
            "under Duplicates, and all of them in excluded.parquet with the reason. "
            "<code>--set selection.exclude_junk=false</code> ranks them too.</p>"
        )
    n = len(manifest)
    if n == 0:
        out.append('<p class="muted">No frame was ranked.</p></section>')
        return "".join(out)
    n_seed = int(manifest["is_seed"].astype(bool).sum())
    out.append(
        f"<p>{n:,} frames ranked by <b>{_e(sel.ranker)}</b>"
        + (f", after a starting set of {n_seed:,} (already labeled or drawn at random)" if n_seed else "")
        + ". Label them in this order: each next frame is the one least like everything before it.</p>"
    )
    out.append('<h3 id="budget">How many to label: the coverage curve</h3>')
    if curve is None:
        out.append('<p class="muted">No coverage curve: the manifest records no coverage.</p>')
    else:
        radius_at = dict(zip(*curve))
        k = _budget_frames(manifest, budget)
        out.append(
            f"<p><b>Suggested budget: the first {k:,} frames</b> ({_duration(k * sel.seconds_per_image)} at "
            f"{sel.seconds_per_image:g} s a frame; coverage radius {radius_at[budget]:.3f} there). The rule: the budget "
            f"is the first point where the next {BUDGET_WINDOW} frames shrink the coverage radius by at most "
            f"{BUDGET_MIN_GAIN:.0%} of its whole drop over the ranking; labeling beyond it still helps, but little.</p>"
            "<p>The coverage radius after labeling the first N frames is the distance (1 − similarity) from the "
            "worst-covered frame of the archive to its nearest labeled frame. It falls quickly while labels add new "
            "information and flattens once the archive is covered.</p>"
        )
        out.append(
            _plot(coverage_png(*curve, sel.seconds_per_image, budget),
                  f"Coverage radius against the number of frames labeled; the suggested budget, {k:,} frames, marked")
        )
    out.append(_labeling_table(manifest, sel))
    out.append(f"<h3>The first {len(top)} frames to label</h3>")
    if thumbs.enabled:
        out.append('<div class="gallery" id="gallery-top">')
        for r in top.itertuples(index=False):
            caption = f"#{int(r.rank)} · {'start' if r.is_seed else _num(r.score)}"
            out.append(thumbs.figure(getattr(r, "row", None), caption, r.source_uri, r.frame_index))
        out.append("</div>")
    out.append(
        _table(
            ["rank", "source", "frame (index in file)", "modality",
             "similarity to the frames ranked before (cosine, −1 to 1)", "starting set"],
            [
                [str(int(r.rank)), paths.span(r.source_uri), str(int(r.frame_index)), _e(_known(getattr(r, "modality", None))),
                 _num(r.score), "yes" if r.is_seed else ""]
                for r in top.itertuples(index=False)
            ],
        )
    )
    out.append("</section>")
    return "".join(out)


SERIES_SIZES = [(1, 1), (2, 10), (11, 100), (101, 1000), (1001, None)]  # frames per series, the archive table's bins


def _archive_section(frames: pd.DataFrame, ranked_only: bool, excluded: Mapping[str, int]) -> str:
    """Frames by modality, by series size, and the patients, studies and series they come from (counts only)."""
    out = ['<section id="archive"><h2>What is in the archive</h2>']
    n = len(frames)
    if n == 0:
        out.append('<p class="muted">No frame to count.</p></section>')
        return "".join(out)
    left = sum(map(int, excluded.values()))
    scope = (f"the {n:,} ranked frames" + (f" (the {left:,} left out of the ranking are not counted here)" if left else "")
             if ranked_only else f"all {n:,} embedded frames")
    out.append(f"<p>Counted over {scope}. Patients, studies and series are counted by their keys; no identifier "
               "is shown.</p>")
    keys = frames.reindex(columns=["modality", "series_uid", "study_uid", "patient_key"]).astype(object)
    keys = keys.where(keys.notna() & (keys != ""), None)
    modality = keys["modality"].fillna("not recorded")
    rows = []
    for name, count in modality.value_counts(sort=True).items():
        group = keys[modality == name]
        rows.append([_e(name), f"{count:,}", f"{count / n:.1%}", f"{group['series_uid'].nunique():,}",
                     f"{group['study_uid'].nunique():,}"])
    out.append('<h3 id="archive-modality">Frames by modality</h3>')
    out.append(_table(["modality", "frames (count)", "share of frames (%)", "series (count)", "studies (count)"], rows))
    sizes = keys["series_uid"].dropna().value_counts()
    size_rows = []
    for low, high in SERIES_SIZES:
        inside = sizes[(sizes >= low) & (sizes <= high)] if high is not None else sizes[sizes >= low]
        label = f"{low:,}" if low == high else (f"{low:,}–{high:,}" if high is not None else f"over {low - 1:,}")
        size_rows.append([label, f"{len(inside):,}", f"{int(inside.sum()):,}"])
    no_series = int(keys["series_uid"].isna().sum())
    if no_series:
        size_rows.append(["no series recorded", "–", f"{no_series:,}"])
    out.append('<h3 id="archive-series">Frames by series size</h3>')
    out.append(_table(["frames in the series (count)", "series (count)", "frames in them (count)"], size_rows))
    group_rows = []
    for key, what in (("patient_key", "patients"), ("study_uid", "studies"), ("series_uid", "series")):
        known = keys[key].dropna()
        per = known.value_counts()
        group_rows.append([what, f"{known.nunique():,}", f"{int(per.max()):,}" if len(per) else "–",
                           f"{n - len(known):,}"])
    out.append('<h3 id="archive-groups">Patients, studies and series</h3>')
    out.append(_table(["group", "distinct (count)", "most frames in one (count)", "frames without the key (count)"],
                      group_rows))
    if keys["patient_key"].isna().all():
        out.append('<p class="muted">No patient key: pack ran without ENRICH_RAY_PATIENT_KEY set, so frames are '
                   "not linked to patients (README, Patient keys).</p>")
    out.append("</section>")
    return "".join(out)


def _hours(seconds: float) -> str:
    """Hours with one decimal, or two below ten hours."""
    hours = seconds / 3600.0
    return f"{hours:,.1f}" if hours >= 10 else f"{hours:.2f}"


def _duration(seconds: float) -> str:
    """A labeling time in hours, with minutes beside it below one hour."""
    return f"{_hours(seconds)} h" + (f" ({seconds / 60.0:,.0f} min)" if seconds < 3600.0 else "")


def _labeling_table(manifest: pd.DataFrame, sel: SelectionConfig) -> str:
    """Hours an expert needs for the top 100, 1,000 and all ranked frames."""
    n = len(manifest)
    counts = [(f"top {k:,}", k) for k in LABEL_COUNTS if k < n] + [(f"all {n:,}", n)]
    rows = [
        [label, f"{k:,}", _hours(k * sel.seconds_per_image), _hours(k * sel.seconds_per_segmentation)]
        for label, k in counts
    ]
    return (
        "<h3>Labeling time</h3>"
        + _table(
            [
                "frames",
                "count (frames)",
                f"hours to classify ({sel.seconds_per_image:g} s each)",
                f"hours to segment ({sel.seconds_per_segmentation:g} s each)",
            ],
            rows,
        )
    )


def _duplicates_section(duplicates: pd.DataFrame, groups: list[pd.DataFrame], thumbs: _Thumbs, paths: _Paths) -> str:
    out = ['<section id="duplicates"><h2>Duplicates and near-duplicates</h2>']
    if duplicates.empty:
        out.append('<p class="muted">No duplicate or near-duplicate frames were found.</p></section>')
        return "".join(out)
    # A group's kind is its representative's (each row's kind is its own; see analysis.duplicates).
    rep_kind = duplicates[duplicates["is_representative"].astype(bool)].groupby("group_id")["kind"].first()
    per_group = duplicates.groupby("group_id").agg(size=("row", "size")).assign(kind=rep_kind)
    sizes = per_group["size"]
    out.append(
        "<p>Exact duplicates hold identical pixels (or the same file at several paths); near-duplicates look "
        "alike at a glance (re-encoded, resized, shifted in brightness). Label one frame of each group.</p>"
    )
    summary_rows = []
    for kind in ("exact", "near"):
        g = per_group[per_group["kind"] == kind]
        summary_rows.append([kind, f"{len(g):,}", f"{int(g['size'].sum()):,}", f"{int((g['size'] - 1).sum()):,}"])
    out.append(
        _table(["kind", "groups (count)", "frames in groups (count)", "frames beyond one per group (count)"], summary_rows)
    )
    out.append(f"<h3>The {len(groups)} largest groups (representative first)</h3>")
    for i, g in enumerate(groups):
        if i == GROUPS_OPEN:
            out.append(f"<details><summary>The next {len(groups) - GROUPS_OPEN} groups</summary>")
        first = g.iloc[0]
        label = (
            f'<div class="group-label"><b>group {_e(first.group_id)}</b><br>{_e(per_group.at[first.group_id, "kind"])}, '
            f"{int(sizes[first.group_id])} frames</div>"
        )
        figures = []
        for r in g.itertuples(index=False):
            tag = "representative" if r.is_representative else f"similarity {_num(r.similarity)}"
            figures.append(thumbs.figure(r.row, _e(tag), r.source_uri, r.frame_index))
        more = int(sizes[first.group_id]) - len(g)
        extra = f'<p class="muted">+{more} more</p>' if more > 0 else ""
        out.append(f'<div class="group">{label}{"".join(figures)}{extra}</div>')
    if len(groups) > GROUPS_OPEN:
        out.append("</details>")
    out.append("</section>")
    return "".join(out)


def _outliers_section(outliers: pd.DataFrame, shown: pd.DataFrame, thumbs: _Thumbs, paths: _Paths) -> str:
    out = ['<section id="outliers"><h2>Foreign and blank frames</h2>']
    if outliers.empty:
        out.append('<p class="muted">No outlier list was computed.</p></section>')
        return "".join(out)
    n_flagged = int(outliers["flagged"].astype(bool).sum())
    out.append(
        "<p>Frames least like the rest of the archive: unlike their nearest frames (a bad series of "
        "near-identical frames is found too), with image statistics unlike the archive's, of a modality, body "
        "part or colour rare in it, or blank. A frame is flagged when one of these is far beyond what is usual "
        "in this archive; a group of near twins is flagged whole or not at all. "
        + (
            f"{n_flagged:,} are flagged: check them for a wrong modality, corrupt pixels or rare findings.</p>"
            if n_flagged
            else f"None is flagged; the {len(shown):,} least like the rest are shown.</p>"
        )
    )
    if thumbs.enabled:
        out.append('<div class="gallery" id="gallery-outliers">')
        for r in shown.itertuples(index=False):
            caption = f"#{int(r.rank)} · nearest {_num(r.nn_similarity)}"
            out.append(thumbs.figure(r.row, caption, r.source_uri, r.frame_index))
        out.append("</div>")
    out.append(
        _table(
            ["rank (1: most foreign)", "source", "frame (index in file)", "foreign score (usual spreads beyond the median)",
             "similarity to the nearest frame (cosine, −1 to 1)", "flagged", "why"],
            [
                [str(int(r.rank)), paths.span(r.source_uri), str(int(r.frame_index)), _num(r.score),
                 _num(r.nn_similarity), "yes" if r.flagged else "", _e(getattr(r, "reason", ""))]
                for r in shown.itertuples(index=False)
            ],
        )
    )
    out.append("</section>")
    return "".join(out)


def _error_causes(errors: pd.DataFrame) -> pd.DataFrame:
    """One row per cause of the error rows (decode/causes.py): name, label, short, no_image, files, frames, rows, examples.

    `files` counts whole-file rows, `frames` single-frame rows; `examples` holds up to
    ERROR_EXAMPLES rows of the cause with distinct messages first. Unreadable causes come first,
    most rows first; then the causes that mean 'no image here'.
    """
    columns = ["name", "label", "short", "no_image", "files", "frames", "rows", "examples"]
    if errors.empty:
        return pd.DataFrame(columns=columns)
    found = [cause_of(t, st) for t, st in zip(errors["error_type"], errors["stage"])]
    keyed = errors.assign(_cause=[c.name for c in found]).reset_index(drop=True)
    by_name = {c.name: c for c in found}
    out = []
    for name, rows in keyed.groupby("_cause", sort=False):
        distinct = rows.drop_duplicates("message")
        examples = pd.concat([distinct, rows.drop(distinct.index)]).head(ERROR_EXAMPLES)
        single = rows["frame_index"].notna()
        cause = by_name[name]
        out.append([name, cause.label, cause.short, cause.no_image, int((~single).sum()), int(single.sum()), len(rows),
                    examples])
    table = pd.DataFrame(out, columns=columns)
    return table.sort_values(["no_image", "rows"], ascending=[True, False], kind="stable").reset_index(drop=True)


def _errors_section(errors: pd.DataFrame, paths: _Paths) -> str:
    out = ['<section id="errors"><h2>Files and frames that gave no frame, by cause</h2>']
    if errors.empty:
        out.append('<p class="muted">None: every input became an embedding.</p></section>')
        return "".join(out)
    causes = _error_causes(errors)
    unreadable, no_image = causes[~causes["no_image"]], causes[causes["no_image"]]
    out.append(
        f"<p>{int(unreadable['rows'].sum()):,} unreadable ({int(unreadable['files'].sum()):,} files, "
        f"{int(unreadable['frames'].sum()):,} single frames) and {int(no_image['rows'].sum()):,} files with no "
        "image in them (skipped: not errors). Every input ends either as a frame or as one row of errors.parquet, "
        "whose <code>error_type</code> names the cause.</p>"
    )
    for part, title, anchor in ((unreadable, "Unreadable", "errors-unreadable"),
                                (no_image, "No image here (skipped, not errors)", "errors-no-image")):
        if part.empty:
            continue
        out.append(f'<h3 id="{anchor}">{title}: {int(part["rows"].sum()):,}</h3>')
        rows = []
        for c in part.itertuples(index=False):
            examples = "".join(
                f"<li>{paths.span(r.source_uri, r.frame_index)}: {_e(_clip(r.message))}</li>"
                for r in c.examples.itertuples(index=False)
            )
            rows.append([_e(c.label), f"<code>{_e(c.name)}</code>", f"{c.files:,}", f"{c.frames:,}", f"<ul>{examples}</ul>"])
        out.append(_table(["cause", "error_type", "files (count)", "single frames (count)", "examples (path: message)"], rows))
    out.append("</section>")
    return "".join(out)


# The embedding table: summary['embedding'] keys in plain words, with their units (the glossary has the terms).
EMBEDDING_LABELS = {
    "embedder": ("embedder", ""),
    "dim": ("dimensions of each frame's code", "dimensions"),
    "active_units": ("latent units in use (see glossary: active units)", "units"),
    "participation_ratio": ("dimensions the codes really use, all frames (effective dimension)", "dimensions"),
    "participation_ratio_distinct": ("dimensions the codes really use, distinct sampled frames", "dimensions"),
    "pixel_participation_ratio_distinct": ("dimensions the raw pixels use, distinct sampled frames", "dimensions"),
    "content_correlation": ("agreement of embedding similarity with pixel similarity, distinct sampled frames",
                            "rank correlation, −1 to 1"),
    "health_frames_sampled": ("frames sampled for the health check", "frames"),
    "distinct_frames": ("distinct frames in the health sample (pixel correlation < 0.98)", "frames"),
    "val_recon": ("reconstruction error on held-out frames (val_recon; lower is better)", "nats per frame"),
    "val_kl": ("information the codes carry about held-out frames (val_kl)", "nats per frame"),
}


def _embedding_section(embedding: dict, median_nn: float | None, n: int, warnings: list[str], index: dict | None = None) -> str:
    known = [[_e(label), _value(embedding.get(key, "not recorded")), _e(unit)]
             for key, (label, unit) in EMBEDDING_LABELS.items()]
    other = [[_e(k), _value(v), ""] for k, v in embedding.items() if k not in EMBEDDING_LABELS]
    rows = [*known, *other,
            [f"median similarity of a frame to its nearest frame ({n:,} frames)", _num(median_nn), "cosine, −1 to 1"]]
    rows += _knn_recall_rows(index or {})
    verdict = (
        '<p class="warning">Looks collapsed: ' + "; ".join(_e(w) for w in warnings) + ".</p>"
        if warnings
        else f'<p class="muted">{_e(_health_sentence(embedding, warnings))} The rule: collapsed when embedding '
        f"similarity agrees with pixel similarity below {COLLAPSE_CONTENT_CORRELATION:g} over at least "
        f"{COLLAPSE_MIN_DISTINCT_FRAMES} distinct frames, or when no latent unit is in use.</p>"
    )
    return (
        '<section id="embedding"><h2>Embedding health</h2>'
        + "<p>Each frame is turned into a short code (its embedding); similar codes should mean similar images. "
        "If they do not, the ranking and the duplicate search are no better than chance.</p>"
        + verdict
        + _table(["measure", "value", "unit"], rows)
        + "</section>"
    )


def _knn_recall_rows(index: dict) -> list[list[str]]:
    """The kNN graph's measured recall (graph_recall's figures in summary['index'])."""
    if "recall_at_k" not in index:
        return [["nearest-neighbour search recall", "not recorded", ""]]
    low = ' <b class="warning">below 0.95</b>' if index["recall_at_k"] < 0.95 else ""
    return [
        [f"nearest-neighbour search recall: share of each frame's {_e(index.get('k', '?'))} true nearest frames "
         f"the search found ({_e(index.get('sample', '?'))} sampled frames, {_e(index.get('method', '?'))} graph)",
         _num(index["recall_at_k"]) + low, "share, 0 to 1"],
        ["how far the search underestimates a frame's similarity to its nearest frame, max / mean",
         f"{_num(index.get('nn_underestimate_max'))} / {_num(index.get('nn_underestimate_mean'))}", "cosine"],
    ]


def _run_section(summary: dict) -> str:
    out = ['<section id="run"><h2>Run facts</h2>']
    counts = summary.get("counts") or {}
    out.append("<h3>Counts</h3>")
    out.append(_kv_table(counts, _value, "count"))
    timings = summary.get("timings_s") or {}
    checks = summary.get("checks") or {}
    if checks:
        out.append("<h3>Accounting checks</h3>")
        out.append(_kv_table(checks, lambda ok: "passed" if ok else "<b>FAILED</b>", "result"))
    out.append("<h3>Stage timings</h3>")
    if timings:
        total = sum(float(v) for v in timings.values())
        out.append(_kv_table({**timings, "total": total}, lambda v: f"{float(v):,.1f}", "seconds"))
    else:
        out.append('<p class="muted">not recorded</p>')
    out.append("<h3>Versions</h3>")
    out.append(_kv_table(summary.get("versions") or {}, _e, "version"))
    config = summary.get("config")
    if config:
        out.append(
            "<details><summary>Configuration of the run (secrets redacted)</summary><pre>"
            + _e(yaml.safe_dump(config, sort_keys=False))
            + "</pre></details>"
        )
    out.append("</section>")
    return "".join(out)


GLOSSARY = [
    ("similarity", "How alike two frames are to the embedding: the cosine of their codes, from −1 (opposite) "
     "through 0 (unrelated) to 1 (the same)."),
    ("coverage radius", "After labeling some frames: the largest distance (1 − similarity) from any frame of the "
     "archive to its nearest labeled frame. Small means every frame has a labeled frame like it."),
    ("suggested budget", f"The first point of the coverage curve where the next {BUDGET_WINDOW} frames shrink the "
     f"coverage radius by at most {BUDGET_MIN_GAIN:.0%} of its whole drop over the ranking "
     "(enrich_ray/report/plots.py, suggested_budget)."),
    ("ENRICH ranking", "Greedy farthest-first order: each next frame is the one least similar to every frame "
     "ranked before it, so the first frames span the archive."),
    ("starting set", "The frames a ranking starts from: frames already labeled, or a few drawn at random "
     "(selection.seed_count); also called the seed set."),
    ("exact duplicate", "Frames with identical decoded pixels, or one file stored at several paths."),
    ("near-duplicate", "A frame whose code and small thumbnail both match a group's representative closely "
     "(analysis.near_duplicate_threshold and near_duplicate_content_threshold)."),
    ("foreign score", "How far a frame lies beyond the archive's median, in robust spreads (median absolute "
     "deviation scaled to a standard deviation; a robust z-score): of its distance to its 10th and 50th nearest "
     "frames, its image statistics, or a rare header value. Flagged beyond analysis.outlier_mad_k and among the "
     "analysis.outlier_max_share highest."),
    ("no image here", "A DICOM object that stores no pixels: an RT plan or structure set, a structured report, a "
     "waveform such as an ECG, a DICOMDIR, or an image header whose pixels were stripped. Skipped and counted."),
    ("unreadable", "An image file that cannot be decoded: truncated, corrupt, compressed in a way no installed "
     "decoder reads, a broken header, or over the size limit."),
    ("embedding, code", "The short vector the β-VAE (a variational autoencoder) computes for each frame."),
    ("active units", "Latent units of the β-VAE whose mean KL divergence (the information a unit carries about "
     "the frame, measured in nats) is above 0.01 nats. None active: the encoder ignores its input."),
    ("nats", "The unit of information with the natural logarithm (1 nat = 1.44 bits)."),
    ("effective dimension", "The participation ratio (Σλ)² / Σλ² of the covariance eigenvalues λ of the codes: "
     "how many dimensions the codes really spread over."),
    ("agreement with pixel similarity", "The Spearman rank correlation, over pairs of distinct sampled frames, "
     "between the embedding's cosine and the raw pixels' cosine (content_correlation)."),
    ("val_recon, val_kl", "The β-VAE's loss on held-out frames at the end of training: reconstruction error "
     "(negative log-likelihood of the frame, nats per frame) and KL divergence of the codes from the prior "
     "(nats per frame)."),
    ("nearest-neighbour search recall", "Over sampled frames, the share of each frame's k true nearest frames "
     "(exact search) that the fast search over the index found (the k-nearest-neighbour, kNN, graph); recall@k."),
    ("redundancy", "For each frame, its similarity to the most similar other frame (the ENRICH paper's Fig. 1)."),
]


def _glossary() -> str:
    """The terms the page uses, in one place at its end."""
    items = "".join(f"<dt>{_e(term)}</dt><dd>{_e(text)}</dd>" for term, text in GLOSSARY)
    return f'<section id="glossary"><h2>Glossary</h2><dl>{items}</dl></section>'


# ---------------------------------------------------------------- small helpers


def _e(value: Any) -> str:
    """Text escaped for HTML, quotes included."""
    return html.escape(str(value), quote=True)


def _num(value: Any) -> str:
    """A similarity or score with three decimals; a dash when missing."""
    if value is None:
        return "–"
    try:
        v = float(value)
    except (TypeError, ValueError):
        return _e(value)
    return f"{v:.3f}" if np.isfinite(v) else "–"


def _value(value: Any) -> str:
    """A number with sensible precision, or escaped text."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        return _e(value)
    return f"{value:,}" if isinstance(value, (int, np.integer)) else _num(value)


def _clip(text: Any) -> str:
    text = "" if text is None or (isinstance(text, float) and np.isnan(text)) else str(text)
    return text if len(text) <= MESSAGE_CHARS else text[:MESSAGE_CHARS] + "…"


def _frame_name(source_uri: Any, frame_index: Any) -> str:
    """source_uri, with '#frame' for frames of multi-frame files."""
    name = "(unknown source)" if source_uri is None or pd.isna(source_uri) else str(source_uri)
    if frame_index is not None and not pd.isna(frame_index) and int(frame_index) > 0:
        name += f" #frame {int(frame_index)}"
    return name


def _known(value: Any) -> str:
    """A header value, or 'not recorded' when it is missing."""
    return "not recorded" if value is None or (isinstance(value, float) and np.isnan(value)) or value == "" else str(value)


def _plot(png: bytes, alt: str) -> str:
    uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    return f'<p><img class="plot" src="{uri}" alt="{_e(alt)}"></p>'


def _table(header: list[str], rows: list[list[str]]) -> str:
    """An HTML table; the cells are HTML already (the caller escaped every value in them)."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _kv_table(data: Mapping[str, Any], fmt: Callable[[Any], str], value_name: str) -> str:
    if not data:
        return '<p class="muted">not recorded</p>'
    rows = "".join(f'<tr><td>{_e(k)}</td><td class="num">{fmt(v)}</td></tr>' for k, v in data.items())
    return f"<table><tr><th>name</th><th>{_e(value_name)}</th></tr>{rows}</table>"
