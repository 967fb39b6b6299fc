"""report.html: one self-contained page a clinician or ML engineer opens in a browser.

This module computes what the page shows; enrich_ray/report/templates/report.html.j2 lays it out
(Jinja2 with autoescape on: every value handed over is escaped by the template, none is marked
safe). Every picture is an inline base64 PNG and the CSS (templates/report.css) and the one script
(templates/report.js: sortable, filterable tables) are inline: the page reaches nothing outside
itself and reads whole without JavaScript. With ReportConfig.thumbnails false it
holds no pixel data of any frame (burned-in text in ultrasound and X-ray frames can carry patient
data). Of the header fields it never prints any: frames are named by image_id, frame_index and
source_uri only.

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
import os
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd
import yaml
from jinja2 import Environment, PackageLoader, StrictUndefined

from enrich_ray.analysis.leakage import PAIRS_PER_GROUP, SPLITS, unchecked, verdict
from enrich_ray.config import ReportConfig, SelectionConfig, StorageConfig
from enrich_ray.decode.causes import cause_of
from enrich_ray.io.fs import resolve
from enrich_ray.report.plots import (
    BUDGET_MIN_GAIN,
    BUDGET_WINDOW,
    MAP_MAX_POINTS,
    MODALITY_COLORS,
    REDUNDANCY_THRESHOLDS,
    coverage_png,
    project_2d,
    redundancy_png,
    share_above,
    budget_frames,
    manifest_coverage,
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
MAP_SIZE = (720, 480)  # the embedding map's SVG canvas, in CSS pixels
MAP_PAD = 12  # CSS pixels between the canvas edge and the outermost point
SERIES_SIZES = [(1, 1), (2, 10), (11, 100), (101, 1000), (1001, None)]  # frames per series, the archive table's bins
LEAK_PAIRS_SHOWN = 100  # rows of the table of pairs across the split (leakage.parquet holds every listed pair)
LEAK_PAIRS_PICTURED = 12  # of them, the pairs shown side by side as thumbnails

ThumbnailSource = Callable[[list[int]], np.ndarray]

# Every value reaches the page through the template's autoescape; nothing is marked safe.
_TEMPLATES = Environment(
    loader=PackageLoader("enrich_ray.report", "templates"),
    autoescape=True,
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)

CONTENTS = [
    ("summary", "What to do now"),
    ("ranking", "What to label first"),
    ("map", "Embedding map: every frame at a glance"),
    ("archive", "What is in the archive"),
    ("duplicates", "Duplicates"),
    ("leakage", "Leakage across the split"),
    ("outliers", "Foreign and blank frames"),
    ("errors", "Files that gave no frame, by cause"),
    ("redundancy", "How redundant the archive is"),
    ("embedding", "Embedding health"),
    ("run", "Run facts"),
    ("glossary", "Glossary"),
]


NIGHT_CONTENTS = ("night", "What the night added to the catalog")
# The night section: write_report's `night` keys in plain words, with their units; a missing key shows "not recorded".
NIGHT_LABELS = {
    "night": ("night", "date"),
    "frames_added": ("frames the night added to the catalog", "frames"),
    "catalog_frames_before": ("frames in the catalog before the night", "frames"),
    "catalog_frames_after": ("frames in the catalog after the night", "frames"),
    "nights_in_catalog": ("nights in the catalog, this one included", "nights"),
    "resent_images": ("images sent again: already in the catalog, not added twice", "images"),
    "exact_against_earlier": ("the night's frames that exactly duplicate a frame of an earlier night", "frames"),
    "near_against_earlier": ("the night's frames that nearly duplicate a frame of an earlier night", "frames"),
    "labeled_frames": ("frames of the catalog already labeled: the night's ranking starts from them", "frames"),
}


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
    embeddings: np.ndarray | None = None,
    night: Mapping[str, Any] | None = None,
    leakage: pd.DataFrame | None = None,
) -> None:
    """Render the run's results as one self-contained HTML page at `path` (a local path or URI;
    `storage` carries an object store's endpoint and credentials). `frames`, when given, is every
    embedded frame with its group keys (modality, series_uid, study_uid, patient_key): what the archive
    section counts; without it the section counts the manifest's ranked frames. `embeddings`, when
    given, holds one code per embedded frame (the tables' `row` indexes it): the embedding map; without
    it the page says there is no map. `night`, given for a nightly run, is what the night added to the
    catalog (NIGHT_LABELS' keys, each optional): its own section, linked from the first screen. `leakage`, given
    with summary['leakage'] (a split checked for leaks: pipelines/leakage.py), is leakage.parquet: its first pairs
    are shown; without a checked split the page says in one line that none was."""
    page = render_report(summary, manifest, duplicates, outliers, errors, nn_similarity, thumbnails, cfg, frames=frames,
                         embeddings=embeddings, night=night, leakage=leakage)
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
    embeddings: np.ndarray | None = None,
    night: Mapping[str, Any] | None = None,
    leakage: pd.DataFrame | None = None,
) -> str:
    """The report page as a string (write_report without the writing): templates/report.html.j2 over the
    figures this module computes."""
    nn = np.asarray(nn_similarity, dtype=np.float64).ravel()
    nn = nn[np.isfinite(nn)]
    manifest = manifest.sort_values("rank", kind="stable")
    outliers = outliers.sort_values("rank", kind="stable")
    top = manifest.head(cfg.gallery_size)
    groups = [g.head(GROUP_MEMBERS_SHOWN) for g in _largest_groups(duplicates, cfg.gallery_size)]
    odd = _outliers_shown(outliers, cfg.gallery_size)
    checked = summary.get("leakage")
    crossing = leakage.head(LEAK_PAIRS_SHOWN) if checked and leakage is not None else None
    pictured = crossing.head(LEAK_PAIRS_PICTURED) if crossing is not None else pd.DataFrame(columns=["row_a", "row_b"])
    rows = [*_rows(top), *(r for g in groups for r in _rows(g)), *_rows(odd),
            *(int(r) for pair in zip(pictured["row_a"], pictured["row_b"]) for r in pair)]
    paths = _Paths([manifest, duplicates, outliers, errors])
    thumbs = _Thumbs(thumbnails if cfg.thumbnails else None, rows, paths)
    selection = _selection_settings(summary)
    embedding = dict(summary.get("embedding") or {})
    warnings = collapse_warnings(embedding)
    curve = manifest_coverage(manifest)
    budget = suggested_budget(*curve) if curve is not None else None
    excluded = summary.get("excluded_from_ranking") or {}
    causes = _error_causes(errors)
    page = {
        "run_facts": _run_facts(summary, manifest),
        "root": paths.root,
        "collapse": warnings,
        "checks_failed": [name for name, ok in (summary.get("checks") or {}).items() if not ok],
        "night": None if night is None else _night(night),
        "summary": ([_night_item(night)] if night is not None else []) + ([_leakage_item(checked)] if checked else [])
        + _summary_items(manifest, budget, selection, duplicates, outliers, causes, embedding, warnings),
        "contents": ([NIGHT_CONTENTS] if night is not None else []) + [c for c in CONTENTS[1:] if checked or c[0] != "leakage"],
        "thumbnail_note": None if cfg.thumbnails and thumbnails is not None else ("off" if not cfg.thumbnails else "none"),
        "ranking": _ranking(manifest, top, selection, thumbs, paths, excluded, curve, budget),
        "map": None if embeddings is None else _embedding_map(np.asarray(embeddings), manifest, outliers, frames,
                                                              budget, cfg.gallery_size, thumbs, paths),
        "archive": _archive(manifest if frames is None else frames, frames is None, excluded),
        "duplicates": _duplicates(duplicates, groups, thumbs),
        "leakage": _leakage(checked, crossing, len(pictured), thumbs, paths) if checked else None,
        "outliers": _outliers(outliers, odd, thumbs, paths),
        "errors": _errors(causes, paths),
        "redundancy": _redundancy(nn, frames),
        "embedding": _embedding(embedding, float(np.median(nn)) if nn.size else None, nn.size, warnings,
                                summary.get("index") or {}),
        "run": _run(summary),
        "glossary": GLOSSARY,
    }
    return _TEMPLATES.get_template("report.html.j2").render(page=page)


def _rows(frames: pd.DataFrame) -> list[int]:
    """The embedding rows of a table's frames that have one (row >= 0)."""
    if "row" not in frames.columns:
        return []
    rows = pd.to_numeric(frames["row"], errors="coerce").dropna().astype(int)
    return [r for r in rows if r >= 0]


class _Paths:
    """Source paths as the page shows them: relative to the archive root (the deepest folder holding every
    source the page names), the full URI on hover (the template's title attribute)."""

    def __init__(self, tables: list[pd.DataFrame]):
        uris = sorted({str(u) for t in tables if "source_uri" in t.columns for u in t["source_uri"].dropna()})
        folders = [u.split("/")[:-1] for u in uris]
        common = "/".join(os.path.commonprefix(folders)) if folders else ""
        self.root = common + "/" if common.strip("/").rstrip(":") else ""

    def name(self, source_uri: Any, frame_index: Any = None) -> dict:
        """{full, short}: the frame's name, and the same relative to the root."""
        full = _frame_name(source_uri, frame_index)
        return {"full": full, "short": full[len(self.root):] if self.root and full.startswith(self.root) else full}


class _Thumbs:
    """The PNG data URIs of the frames the page shows, fetched with one call to the source."""

    def __init__(self, source: ThumbnailSource | None, rows: list[int], paths: _Paths):
        self.uris: dict[int, str] = {}
        self.paths = paths
        self.enabled = source is not None
        self.shown = 0  # figures made so far: each gets its own id, the target of its enlarged view
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
            self.uris[row] = _data_uri(thumbnail_png(frame))

    def figure(self, row: Any, caption: str, source_uri: Any, frame_index: Any, why: str) -> dict:
        """One gallery figure: {id, src (None for a frame without pixels), caption, name, why}; `why` (why the
        frame is shown) goes with the path into the caption of its enlarged view."""
        self.shown += 1
        src = self.uris.get(int(row)) if row is not None and not pd.isna(row) else None
        return {"id": f"view-{self.shown}", "src": src, "caption": caption, "name": self.paths.name(source_uri, frame_index),
                "why": why}


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


# ---------------------------------------------------------------- the page's parts, as the template reads them


def _run_facts(summary: dict, manifest: pd.DataFrame) -> list[str]:
    """The line under the title: the run's facts and the ranker."""
    facts = [f"{k}: {v}" for k, v in (summary.get("run") or {}).items()]
    ranker = ", ".join(sorted(manifest["ranker"].dropna().astype(str).unique())) if len(manifest) else ""
    return facts + ([f"ranker: {ranker}"] if ranker else [])


def _night(night: Mapping[str, Any]) -> dict:
    """What the night added to the catalog: its date and the table of NIGHT_LABELS (and any other key as given)."""
    rows = [[label, _value(night[key]) if night.get(key) is not None else "not recorded", unit]
            for key, (label, unit) in NIGHT_LABELS.items()]
    rows += [[str(k), _value(v), ""] for k, v in night.items() if k not in NIGHT_LABELS]
    return {"date": str(night["night"]) if night.get("night") not in (None, "") else None, "rows": rows}


def _night_item(night: Mapping[str, Any]) -> dict:
    """The first screen's line for a nightly run: what the night added, linked to its section; figures it does not
    record are left out here (the section says "not recorded")."""
    known = {k: _value(v) for k, v in night.items() if v is not None}
    night_of = f" {known['night']}" if known.get("night") else ""
    link = (f"The night{night_of} added {known['frames_added']} frames to the catalog" if "frames_added" in known
            else f"What the night{night_of} added to the catalog")
    parts = []
    if "catalog_frames_before" in known and "catalog_frames_after" in known:
        parts.append(f"{known['catalog_frames_before']} → {known['catalog_frames_after']} frames in the catalog")
    if "nights_in_catalog" in known:
        parts.append(f"{known['nights_in_catalog']} nights in it")
    if "resent_images" in known:
        parts.append(f"{known['resent_images']} images sent again (not added twice)")
    copies = [f"{known[key]} {kind}" for key, kind in (("exact_against_earlier", "exact"), ("near_against_earlier", "near"))
              if key in known]
    if copies:
        parts.append(" and ".join(copies) + " duplicates of earlier nights' frames")
    return {"href": "night", "link": link, "rest": (": " + "; ".join(parts) if parts else "") + "."}


def _summary_items(manifest: pd.DataFrame, budget: int | None, sel: SelectionConfig, duplicates: pd.DataFrame,
                   outliers: pd.DataFrame, causes: pd.DataFrame, embedding: Mapping[str, Any],
                   warnings: list[str]) -> list[dict]:
    """The first screen, what to do now: items of {href, link, rest}, each a link to its section."""
    items = []
    if len(manifest) == 0:
        items.append({"href": "ranking", "link": "No frame was ranked", "rest": ": there is nothing to label yet."})
    else:
        n = budget_frames(manifest, budget)
        why = (
            f": after them the next {BUDGET_WINDOW} frames add little (they shrink the coverage radius by at most "
            f"{BUDGET_MIN_GAIN:.0%} of its whole drop)" if budget is not None else " (no coverage curve to suggest fewer)"
        )
        items.append({"href": "budget", "link": f"Label these {n:,} frames first",
                      "rest": f" ({_duration(n * sel.seconds_per_image)} at {sel.seconds_per_image:g} s a frame, "
                              f"of {len(manifest):,} ranked){why}."})
    groups, saved = _duplicate_savings(duplicates)
    items.append({"href": "duplicates", "link": f"{groups:,} duplicate group{'s' * (groups != 1)}",
                  "rest": f": {saved:,} frames you need not label (copies or near copies of a frame kept)."})
    flagged = outliers[outliers["flagged"].astype(bool)] if len(outliers) else outliers
    blank = int(flagged["is_constant"].astype(bool).sum()) if "is_constant" in flagged.columns else 0
    items.append({"href": "outliers", "link": f"{len(flagged):,} foreign or blank frames to check",
                  "rest": (f" ({blank:,} blank)" if blank else "") + "."})
    for no_image in (False, True):
        part = causes[causes["no_image"] == no_image]
        total = int(part["rows"].sum())
        by_cause = ", ".join(f"{int(c.rows):,} {c.short}" for c in part.itertuples(index=False))
        if no_image and total:
            items.append({"href": "errors-no-image", "link": f"{total:,} files hold no image",
                          "rest": f" ({by_cause}): skipped, not errors."})
        elif not no_image:
            items.append({"href": "errors-unreadable", "link": f"{total:,} files or frames unreadable", "rest": f": {by_cause}."}
                         if total else {"href": "errors", "link": "No file was unreadable.", "rest": ""})
    items.append({"href": "embedding", "link": "Embedding health", "rest": f": {_health_sentence(embedding, warnings)}"})
    return items


def _ranking(manifest: pd.DataFrame, top: pd.DataFrame, sel: SelectionConfig, thumbs: _Thumbs, paths: _Paths,
             excluded: Mapping[str, int], curve: tuple[np.ndarray, np.ndarray] | None, budget: int | None) -> dict:
    """What to label first: the ranking's size, the budget under the coverage curve, labeling time, the top frames."""
    out: dict = {
        "excluded": (f"{sum(map(int, excluded.values())):,} frames left the ranking ("
                     + ", ".join(f"{int(n):,} {why}" for why, n in sorted(excluded.items())) + ")") if excluded else None,
        "n": len(manifest),
        "ranker": sel.ranker,
        "n_seed": int(manifest["is_seed"].astype(bool).sum()) if len(manifest) else 0,
        "budget": None,
        "curve": None,
    }
    if not len(manifest):
        return out
    if curve is not None:
        k = budget_frames(manifest, budget)
        out["budget"] = {
            "frames": f"{k:,}", "duration": _duration(k * sel.seconds_per_image),
            "seconds_per_image": f"{sel.seconds_per_image:g}", "radius": f"{dict(zip(*curve))[budget]:.3f}",
            "window": BUDGET_WINDOW, "gain": f"{BUDGET_MIN_GAIN:.0%}",
        }
        out["curve"] = _data_uri(coverage_png(*curve, sel.seconds_per_image, budget))
        out["curve_alt"] = f"Coverage radius against the number of frames labeled; the suggested budget, {k:,} frames, marked"
    n = len(manifest)
    counts = [(f"top {k:,}", k) for k in LABEL_COUNTS if k < n] + [(f"all {n:,}", n)]
    out["labeling_header"] = ["frames", "count (frames)", f"hours to classify ({sel.seconds_per_image:g} s each)",
                              f"hours to segment ({sel.seconds_per_segmentation:g} s each)"]
    out["labeling"] = [[label, f"{k:,}", _hours(k * sel.seconds_per_image), _hours(k * sel.seconds_per_segmentation)]
                       for label, k in counts]
    out["gallery"] = [
        thumbs.figure(getattr(r, "row", None), f"#{int(r.rank)} · {'start' if r.is_seed else _num(r.score)}",
                      r.source_uri, r.frame_index,
                      f"rank {int(r.rank)}: " + ("in the starting set (already labeled or drawn at random)" if r.is_seed else
                                                 f"similarity to the frames ranked before {_num(r.score)} (cosine)"))
        for r in top.itertuples(index=False)
    ] if thumbs.enabled else None
    out["top"] = [
        {"rank": int(r.rank), "name": paths.name(r.source_uri, r.frame_index),
         "modality": _known(getattr(r, "modality", None)), "score": _num(r.score), "seed": "yes" if r.is_seed else ""}
        for r in top.itertuples(index=False)
    ]
    return out


def _embedding_map(embeddings: np.ndarray, manifest: pd.DataFrame, outliers: pd.DataFrame, frames: pd.DataFrame | None,
                   budget: int | None, gallery_size: int, thumbs: _Thumbs, paths: _Paths) -> dict:
    """The embedding map: each drawn frame's point on the SVG canvas, its kind (flagged: a flagged outlier, to check
    first; top: among the first to label, the suggested budget or else the first gallery_size; other), tooltip and
    thumbnail."""
    first = manifest[manifest["rank"] <= budget] if budget is not None else manifest.head(gallery_size)
    top, flagged = set(_rows(first)), set(_rows(outliers[outliers["flagged"].astype(bool)]) if len(outliers) else [])
    rows, xy = project_2d(embeddings, sorted(top | flagged))
    ranked = manifest.reindex(columns=["row", "rank"]).dropna()
    ranked = ranked[ranked["row"] >= 0]
    rank = dict(zip(ranked["row"].astype(int), ranked["rank"].astype(int)))
    where = {}
    for table in ([] if frames is None else [frames.assign(row=np.arange(len(frames)))]) + [outliers, manifest]:
        if {"row", "source_uri"} <= set(table.columns):
            where.update((int(r), (u, f)) for r, u, f in zip(table["row"], table["source_uri"], table["frame_index"])
                         if not pd.isna(r) and r >= 0)
    (width, height), pad = MAP_SIZE, MAP_PAD
    low = xy.min(axis=0) if len(xy) else np.zeros(2)
    span = np.ptp(xy, axis=0) if len(xy) else np.ones(2)
    span = np.where(span > 0, span, 1.0)
    canvas = pad + (xy - low) / span * [width - 2 * pad, height - 2 * pad]
    points = []
    for row, (x, y) in zip(rows.tolist(), canvas):
        kind = "flagged" if row in flagged else ("top" if row in top else "other")
        name = paths.name(*where.get(row, (None, None)))["short"]
        title = f"{name} · " + (f"rank {rank[row]:,}" if row in rank else "not ranked") + (" · flagged as foreign or blank"
                                                                                             if row in flagged else "")
        src = thumbs.uris.get(row) if kind != "other" else None
        points.append({"kind": kind, "x": f"{x:.1f}", "y": f"{height - y:.1f}", "title": title, "src": src,
                       "tx": f"{min(x + 6, width - 96):.1f}", "ty": f"{min(max(height - y - 48, 0), height - 96):.1f}"})
    points.sort(key=lambda p: ("other", "flagged", "top").index(p["kind"]))  # marked points drawn last, on top
    count = {k: sum(p["kind"] == k for p in points) for k in ("top", "flagged", "other")}
    return {
        "width": width, "height": height, "points": points, "count": {k: f"{v:,}" for k, v in count.items()},
        "top_what": f"the suggested budget, rank ≤ {budget:,}" if budget is not None else f"the first {gallery_size:,} ranked",
        "scope": (f"all {len(embeddings):,} embedded frames" if len(rows) == len(embeddings) else
                  f"a seeded sample of {len(rows):,} of {len(embeddings):,} embedded frames (at most {MAP_MAX_POINTS:,}; "
                  f"every marked frame included)"),
    }


def _archive(frames: pd.DataFrame, ranked_only: bool, excluded: Mapping[str, int]) -> dict:
    """Frames by modality, by series size, and the patients, studies and series they come from (counts only)."""
    n = len(frames)
    if n == 0:
        return {"n": 0}
    left = sum(map(int, excluded.values()))
    scope = (f"the {n:,} ranked frames" + (f" (the {left:,} left out of the ranking are not counted here)" if left else "")
             if ranked_only else f"all {n:,} embedded frames")
    keys = frames.reindex(columns=["modality", "series_uid", "study_uid", "patient_key"]).astype(object)
    keys = keys.where(keys.notna() & (keys != ""), None)
    modality = keys["modality"].fillna("not recorded")
    by_modality = []
    for name, count in modality.value_counts(sort=True).items():
        group = keys[modality == name]
        by_modality.append([name, f"{count:,}", f"{count / n:.1%}", f"{group['series_uid'].nunique():,}",
                            f"{group['study_uid'].nunique():,}"])
    sizes = keys["series_uid"].dropna().value_counts()
    by_size = []
    for low, high in SERIES_SIZES:
        inside = sizes[(sizes >= low) & (sizes <= high)] if high is not None else sizes[sizes >= low]
        label = f"{low:,}" if low == high else (f"{low:,}–{high:,}" if high is not None else f"over {low - 1:,}")
        by_size.append([label, f"{len(inside):,}", f"{int(inside.sum()):,}"])
    no_series = int(keys["series_uid"].isna().sum())
    if no_series:
        by_size.append(["no series recorded", "–", f"{no_series:,}"])
    by_group = []
    for key, what in (("patient_key", "patients"), ("study_uid", "studies"), ("series_uid", "series")):
        known = keys[key].dropna()
        per = known.value_counts()
        by_group.append([what, f"{known.nunique():,}", f"{int(per.max()):,}" if len(per) else "–", f"{n - len(known):,}"])
    return {"n": n, "scope": scope, "by_modality": by_modality, "by_size": by_size, "by_group": by_group,
            "no_patient_key": bool(keys["patient_key"].isna().all())}


def _duplicates(duplicates: pd.DataFrame, groups: list[pd.DataFrame], thumbs: _Thumbs) -> dict:
    """The duplicate groups: counts by kind and the largest groups' figures."""
    if duplicates.empty:
        return {"empty": True}
    # A group's kind is its representative's (each row's kind is its own; see analysis.duplicates).
    rep_kind = duplicates[duplicates["is_representative"].astype(bool)].groupby("group_id")["kind"].first()
    per_group = duplicates.groupby("group_id").agg(size=("row", "size")).assign(kind=rep_kind)
    by_kind = []
    for kind in ("exact", "near"):
        g = per_group[per_group["kind"] == kind]
        by_kind.append([kind, f"{len(g):,}", f"{int(g['size'].sum()):,}", f"{int((g['size'] - 1).sum()):,}"])
    shown = []
    for g in groups:
        gid = g.iloc[0].group_id
        size = int(per_group.at[gid, "size"])
        kind = per_group.at[gid, "kind"]
        figures = [thumbs.figure(r.row, "representative" if r.is_representative else f"similarity {_num(r.similarity)}",
                                 r.source_uri, r.frame_index,
                                 f"group {gid} ({kind}, {size} frames): " + ("the representative, the one frame to label"
                                 if r.is_representative else f"similarity to the representative {_num(r.similarity)} (cosine)"))
                   for r in g.itertuples(index=False)]
        shown.append({"id": gid, "kind": kind, "size": size, "figures": figures,
                      "more": size - len(g)})
    return {"empty": False, "by_kind": by_kind, "groups": shown, "open": GROUPS_OPEN}


def _leakage_item(counts: Mapping[str, Any]) -> dict:
    """The first screen's line for a checked split: the verdict, linked to its section."""
    said = verdict(counts)
    head, _, rest = said.partition(": ")
    return {"href": "leakage", "link": head, "rest": ": " + rest}


def _leakage(counts: Mapping[str, Any], pairs: pd.DataFrame | None, pictured: int, thumbs: _Thumbs, paths: _Paths) -> dict:
    """The split checked for leaks (summary['leakage']): the verdict, counts by side and relation, what was not seen,
    and the first pairs of leakage.parquet (the first `pictured` of them side by side)."""
    pairs = pairs if pairs is not None else pd.DataFrame()
    shown, gallery = [], []
    for i, r in enumerate(pairs.itertuples(index=False)):
        kind = str(r.kind).replace("_", " ")
        also = [w for w, flag in (("same patient", r.same_patient), ("same study", r.same_study)) if flag and w != kind]
        label = kind + (f" ({', '.join(also)})" if also else "")
        shown.append({"kind": label, "similarity": _num(r.similarity), "a": r.split_a, "a_name": paths.name(r.source_uri_a, r.frame_index_a),
                      "b": r.split_b, "b_name": paths.name(r.source_uri_b, r.frame_index_b)})
        if i < pictured and thumbs.enabled:
            why = f"{label} across the split, similarity {_num(r.similarity)} (cosine)"
            gallery.append({"id": i + 1, "kind": label, "similarity": _num(r.similarity), "figures": [
                thumbs.figure(r.row_a, r.split_a, r.source_uri_a, r.frame_index_a, f"{r.split_a} side of a pair: {why}"),
                thumbs.figure(r.row_b, r.split_b, r.source_uri_b, r.frame_index_b, f"{r.split_b} side of a pair: {why}")]})
    frames, leaking = counts["frames"], counts["frames_leaking"]
    return {
        "leaks": any(leaking.values()),
        "verdict": verdict(counts),
        "split": str(counts.get("split", "")),
        "sides": [[s, f"{frames[s]:,}", f"{leaking[s]:,}"] for s in SPLITS],
        "by_kind": [[k.replace("_", " "), f"{v['pairs']:,}", f"{v['frames']:,}", f"{v['groups']:,}"] for k, v in counts["by_kind"].items()],
        "notes": unchecked(counts),
        "pairs": shown,
        "listed": f"{int(counts.get('pairs_listed', len(shown))):,}",
        "cap": PAIRS_PER_GROUP,
        "gallery": gallery,
    }


def _outliers(outliers: pd.DataFrame, shown: pd.DataFrame, thumbs: _Thumbs, paths: _Paths) -> dict:
    """The frames least like the archive: how many are flagged, their gallery and table."""
    if outliers.empty:
        return {"empty": True}
    return {
        "empty": False,
        "flagged": int(outliers["flagged"].astype(bool).sum()),
        "shown": len(shown),
        "gallery": [thumbs.figure(r.row, f"#{int(r.rank)} · nearest {_num(r.nn_similarity)}", r.source_uri, r.frame_index,
                                  _outlier_why(r)) for r in shown.itertuples(index=False)] if thumbs.enabled else None,
        "rows": [{"rank": int(r.rank), "name": paths.name(r.source_uri, r.frame_index), "score": _num(r.score),
                  "nn": _num(r.nn_similarity), "flagged": "yes" if r.flagged else "", "why": _outlier_why(r)}
                 for r in shown.itertuples(index=False)],
    }


def _outlier_why(r: Any) -> str:
    """Why an outlier row is on the page: its flag's reason (analysis.outliers), or that it is only among the least
    like the rest."""
    reason = getattr(r, "reason", None)
    reason = "" if reason is None or pd.isna(reason) else str(reason)
    if r.flagged:
        return reason or "flagged (no reason recorded)"
    return "not flagged: among the frames least like the rest"


def _errors(causes: pd.DataFrame, paths: _Paths) -> dict:
    """The error rows by cause: unreadable apart from 'no image here', each cause with counts and examples."""
    if causes.empty:
        return {"empty": True}
    parts = []
    for no_image, title, anchor in ((False, "Unreadable", "errors-unreadable"),
                                    (True, "No image here (skipped, not errors)", "errors-no-image")):
        part = causes[causes["no_image"] == no_image]
        parts.append({
            "title": title, "anchor": anchor, "rows": f"{int(part['rows'].sum()):,}",
            "files": f"{int(part['files'].sum()):,}", "frames": f"{int(part['frames'].sum()):,}",
            "causes": [{"label": c.label, "name": c.name, "files": f"{c.files:,}", "frames": f"{c.frames:,}",
                        "examples": [{"name": paths.name(r.source_uri, r.frame_index), "message": _clip(r.message)}
                                     for r in c.examples.itertuples(index=False)]}
                       for c in part.itertuples(index=False)],
        })
    return {"empty": False, "unreadable": parts[0], "no_image": parts[1]}


def _redundancy(nn: np.ndarray, frames: pd.DataFrame | None) -> dict:
    """Each frame's similarity to its most similar other frame: the curve and the shares above the thresholds,
    and per modality when the archive holds several (frames: the rows of nn, with their modality)."""
    if nn.size == 0:
        return {"n": 0}
    shares = share_above(nn, REDUNDANCY_THRESHOLDS)
    by_modality: dict[str, np.ndarray] = {}
    if frames is not None and len(frames) == nn.size and "modality" in frames.columns:
        modality = frames["modality"].astype(object).where(frames["modality"].notna(), "not recorded").to_numpy()
        names = pd.Series(modality).value_counts()
        if len(names) > 1:
            by_modality = {str(name): nn[modality == name] for name in names.index[:len(MODALITY_COLORS)]}
    per_modality = []
    for name, values in by_modality.items():
        part = share_above(values, REDUNDANCY_THRESHOLDS)
        per_modality.append([name, f"{values.size:,}", f"{np.median(values):.3f}", *(f"{part[t]:.1%}" for t in REDUNDANCY_THRESHOLDS)])
    return {
        "n": f"{nn.size:,}",
        "median": f"{np.median(nn):.3f}",
        "plot": _data_uri(redundancy_png(nn, by_modality or None)),
        "rows": [[f"{t:g}", f"{shares[t]:.1%}", f"{int(round(shares[t] * nn.size)):,}"] for t in REDUNDANCY_THRESHOLDS],
        "share_headers": [f"share above {t:g} (%)" for t in REDUNDANCY_THRESHOLDS],
        "per_modality": per_modality,
    }


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


def _embedding(embedding: dict, median_nn: float | None, n: int, warnings: list[str], index: dict) -> dict:
    """The embedding-health verdict and the table of its figures, in plain words with units."""
    rows = [[label, _value(embedding.get(key, "not recorded")), unit, False]
            for key, (label, unit) in EMBEDDING_LABELS.items()]
    rows += [[k, _value(v), "", False] for k, v in embedding.items() if k not in EMBEDDING_LABELS]
    rows.append([f"median similarity of a frame to its nearest frame ({n:,} frames)", _num(median_nn), "cosine, −1 to 1",
                 False])
    if "recall_at_k" not in index:
        rows.append(["nearest-neighbour search recall", "not recorded", "", False])
    else:
        rows.append([f"nearest-neighbour search recall: share of each frame's {index.get('k', '?')} true nearest frames "
                     f"the search found ({index.get('sample', '?')} sampled frames, {index.get('method', '?')} graph)",
                     _num(index["recall_at_k"]), "share, 0 to 1", index["recall_at_k"] < 0.95])
        rows.append(["how far the search underestimates a frame's similarity to its nearest frame, max / mean",
                     f"{_num(index.get('nn_underestimate_max'))} / {_num(index.get('nn_underestimate_mean'))}", "cosine",
                     False])
    return {
        "warnings": warnings,
        "sentence": _health_sentence(embedding, warnings),
        "rule": f"The rule: collapsed when embedding similarity agrees with pixel similarity below "
                f"{COLLAPSE_CONTENT_CORRELATION:g} over at least {COLLAPSE_MIN_DISTINCT_FRAMES} distinct frames, or "
                "when no latent unit is in use.",
        "rows": rows,
    }


def _run(summary: dict) -> dict:
    """Run facts: counts, accounting checks, stage timings, versions, the configuration."""
    timings = summary.get("timings_s") or {}
    config = summary.get("config")
    return {
        "counts": [[k, _value(v)] for k, v in (summary.get("counts") or {}).items()],
        "checks": [[k, bool(ok)] for k, ok in (summary.get("checks") or {}).items()],
        "timings": [[k, f"{float(v):,.1f}"] for k, v in {**timings, "total": sum(map(float, timings.values()))}.items()]
        if timings else [],
        "versions": [[k, str(v)] for k, v in (summary.get("versions") or {}).items()],
        "config": yaml.safe_dump(config, sort_keys=False) if config else None,
    }


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
    ("starting set", "The frames a ranking starts from: frames already labeled, or a random 2% of the frames "
     "(selection.seed_fraction; selection.seed_count sets a number instead); also called the seed set."),
    ("exact duplicate", "Frames with identical decoded pixels, or one file stored at several paths."),
    ("near-duplicate", "A frame whose code and small thumbnail both match a group's representative closely "
     "(analysis.near_duplicate_threshold and near_duplicate_content_threshold)."),
    ("leakage", "Frames on different sides of a train/val/test split that are one picture (an exact or a near "
     "duplicate) or come from one patient or one study: a model tested on them has seen them, or their patient, in "
     "training (enrich_ray/analysis/leakage.py)."),
    ("foreign score", "How far a frame lies beyond the archive's median, in robust spreads (median absolute "
     "deviation scaled to a standard deviation; a robust z-score): of its distance to its 10th and 50th nearest "
     "frames, its image statistics, or a rare header value. Flagged beyond the archive's cut-off (at least "
     "analysis.outlier_mad_k, higher where the archive's ordinary frames vary widely: analysis.outlier_tail_share) "
     "and among the analysis.outlier_max_share highest."),
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


# ---------------------------------------------------------------- small helpers


def _hours(seconds: float) -> str:
    """Hours with one decimal, or two below ten hours."""
    hours = seconds / 3600.0
    return f"{hours:,.1f}" if hours >= 10 else f"{hours:.2f}"


def _duration(seconds: float) -> str:
    """A labeling time in hours, with minutes beside it below one hour."""
    return f"{_hours(seconds)} h" + (f" ({seconds / 60.0:,.0f} min)" if seconds < 3600.0 else "")


def _num(value: Any) -> str:
    """A similarity or score with three decimals; a dash when missing."""
    if value is None:
        return "–"
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    return f"{v:.3f}" if np.isfinite(v) else "–"


def _value(value: Any) -> str:
    """A number with sensible precision, or the value as text."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        return str(value)
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


def _data_uri(png: bytes) -> str:
    """PNG bytes as a data: URI, so the page holds its pictures."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
