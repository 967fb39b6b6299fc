"""Every repository path cited in code comments, docstrings and docs exists; nothing cites the old design notes.

Citations are paths that start at the repository root (`enrich_ray/...`, `tests/...`, `configs/...`,
`docs/...`, `jobs/...`, `infra/...`), package paths (`selection/enrich.py`, read as under
enrich_ray/) and the targets of relative Markdown links. Python files are read through their
comments and docstrings only: string literals in code are data, not citations.
"""
from __future__ import annotations

import ast
import io
import os
import re
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOP = ("enrich_ray", "tests", "configs", "docs", "jobs", "infra")
PACKAGES = tuple(sorted(p.name for p in (ROOT / "enrich_ray").iterdir() if (p / "__init__.py").is_file()))
SKIP_DIRS = {"__pycache__", "build", "dist", "runs", "node_modules"}  # and every hidden or *.egg-info folder
OLD_DESIGN = "DESIGN" + ".md"  # spelled apart, so this file does not cite it

# A path starts where no word character, slash, dot or dash precedes it (not inside a URL or a
# longer path); it is word characters, dots, dashes, slashes and glob stars.
_LEAD = r"(?<![\w/.\-$])"
_BODY = r"(?:/[\w.*\-]+)+/?"
ROOTED = re.compile(_LEAD + r"(?:" + "|".join(TOP) + r")" + _BODY)
PACKAGED = re.compile(_LEAD + r"(?:" + "|".join(PACKAGES) + r")/[\w\-]+\.py\b")
MD_LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def repo_files(suffix: str, under: Path = ROOT) -> list[Path]:
    """Files whose names end with suffix under a folder, leaving out virtual envs, caches and build output."""
    out = []
    for folder, dirs, names in os.walk(under):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.startswith(".") and not d.endswith(".egg-info")]
        out += [Path(folder) / n for n in names if n.endswith(suffix)]
    return sorted(out)


def python_files() -> list[Path]:
    return [p for top in ("enrich_ray", "tests", "jobs") for p in repo_files(".py", ROOT / top)]


def markdown_files() -> list[Path]:
    return [ROOT / "README.md"] + [p for top in ("docs", "infra") for p in repo_files(".md", ROOT / top)]


def comments_and_docstrings(path: Path) -> str:
    """The comments and docstrings of a Python file, one per line."""
    text = path.read_text(encoding="utf-8")
    parts = [tok.string for tok in tokenize.generate_tokens(io.StringIO(text).readline) if tok.type == tokenize.COMMENT]
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                parts.append(doc)
    return "\n".join(parts)


def citations(text: str) -> list[str]:
    """Repository-rooted paths cited in a text (package paths resolved under enrich_ray/)."""
    found = [m.group(0).rstrip(".") for m in ROOTED.finditer(text)]
    found += ["enrich_ray/" + m.group(0) for m in PACKAGED.finditer(text)]
    return found


def link_targets(path: Path, text: str) -> list[str]:
    """Relative Markdown link targets of a document, as repository-rooted paths."""
    out = []
    for target in MD_LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.\-]*:", target):  # https:, mailto:, s3: ...
            continue
        out.append((path.parent / target).resolve().relative_to(ROOT).as_posix())
    return out


def exists(cited: str) -> bool:
    """The path exists (a glob matches at least one path)."""
    if "*" in cited:
        return any(ROOT.glob(cited.rstrip("/")))
    return (ROOT / cited).exists()


def all_citations() -> list[tuple[str, str]]:
    """(citing file, cited path) for every citation in the code and the docs."""
    out = []
    for path in python_files():
        out += [(path.relative_to(ROOT).as_posix(), c) for c in citations(comments_and_docstrings(path))]
    for path in markdown_files():
        text = path.read_text(encoding="utf-8")
        rel = path.relative_to(ROOT).as_posix()
        out += [(rel, c) for c in citations(text) + link_targets(path, text)]
    return out


def test_finds_citations_in_comments_docstrings_and_markdown(tmp_path):
    assert citations("see enrich_ray/selection/enrich.py, `configs/*.yaml` and selection/smi.py.") == [
        "enrich_ray/selection/enrich.py", "configs/*.yaml", "enrich_ray/selection/smi.py"
    ]
    assert citations("https://github.com/x/y/tree/main/docs/a.md and /abs/tests/x.py") == []
    src = '"""Module, see docs/a.md."""\nX = "jobs/not_a_citation.py"  # cf. infra/b.yaml\n'
    (tmp_path / "probe.py").write_text(src, encoding="utf-8")
    assert sorted(citations(comments_and_docstrings(tmp_path / "probe.py"))) == ["docs/a.md", "infra/b.yaml"]
    assert link_targets(ROOT / "docs" / "x.md", "[a](evaluation.md#top) [b](https://e.org) [c](../README.md)") == [
        "docs/evaluation.md", "README.md"
    ]


def test_every_cited_path_exists():
    found = all_citations()
    assert len(found) > 60, f"only {len(found)} citations found: the scanner is not reading the sources"
    assert {f for f, _ in found} >= {"README.md", "docs/architecture.md", "enrich_ray/schema.py"}
    missing = sorted({f"{f}: {c}" for f, c in found if not exists(c)})
    assert not missing, "cited paths that do not exist:\n" + "\n".join(missing)


@pytest.mark.parametrize("suffix", [".py", ".md", ".yaml", ".toml", "Makefile", "Dockerfile"])
def test_nothing_cites_the_old_design_notes(suffix):
    files = repo_files(suffix)
    assert files, f"no {suffix} files found"
    citing = sorted(p.relative_to(ROOT).as_posix() for p in files if OLD_DESIGN in p.read_text(encoding="utf-8", errors="replace"))
    assert not citing, f"{OLD_DESIGN} is not in the repository; cite docs/architecture.md instead: {citing}"


def test_cited_sections_of_the_architecture_exist():
    doc = ROOT / "docs" / "architecture.md"
    sections = set(re.findall(r"^## (\d+)\. ", doc.read_text(encoding="utf-8"), flags=re.M))
    assert len(sections) >= 5, f"docs/architecture.md has sections {sorted(sections)}"
    texts = [(p, comments_and_docstrings(p)) for p in python_files()]
    texts += [(p, p.read_text(encoding="utf-8")) for p in markdown_files()]
    cited = [(p.relative_to(ROOT).as_posix(), n) for p, t in texts for n in re.findall(r"docs/architecture\.md §(\d+)", t)]
    assert len(cited) >= 5, f"only {len(cited)} section citations found"
    wrong = sorted(f"{p}: §{n}" for p, n in cited if n not in sections)
    assert not wrong, f"sections not in docs/architecture.md (it has {sorted(sections)}): {wrong}"
