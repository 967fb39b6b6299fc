"""Put an evaluation run's results into docs/evaluation.md: the summary.md of every dataset
(verbatim, headings demoted) between the <!-- results:start --> and <!-- results:end --> markers,
and its plots copied to docs/evaluation/. Nothing is typed by hand.

    .venv/bin/python jobs/evaluation_tables.py runs/evaluation/protocol30 [--doc docs/evaluation.md]
"""
from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path

START, END = "<!-- results:start -->", "<!-- results:end -->"
ORDER = ("pneumoniamnist", "breastmnist", "Dataset_BUSI_with_GT")  # the order of jobs/evaluate_all.sh


def results_markdown(out: Path, figures: Path, doc_dir: Path) -> str:
    """Every finished dataset's summary.md under out, its plot beside it, and the redundancy plot."""
    runs = sorted((p.parent for p in out.glob("*/summary.md")),
                  key=lambda p: (ORDER.index(p.name) if p.name in ORDER else len(ORDER), p.name))
    if not runs:
        raise SystemExit(f"no finished dataset under {out} (no */summary.md yet)")
    figures.mkdir(parents=True, exist_ok=True)
    parts = []
    for run in runs:
        plot = figures / f"{run.name}_auc.png"
        shutil.copyfile(run / "auc_curves.png", plot)
        text = re.sub(r"^(#+) ", lambda m: "#" * (len(m.group(1)) + 2) + " ", (run / "summary.md").read_text(), flags=re.M)
        parts.append(f"{text.strip()}\n\n![{run.name}, Fig. 3 style]({plot.relative_to(doc_dir).as_posix()})")
    if (out / "redundancy.png").exists():
        shutil.copyfile(out / "redundancy.png", figures / "redundancy.png")
        parts.append(f"### Redundancy (Fig. 1)\n\n![Redundancy curves]({(figures / 'redundancy.png').relative_to(doc_dir).as_posix()})")
    pending = [name for name in ORDER if not (out / name / "summary.md").exists()]
    if pending:
        parts.append(f"Results pending: run in progress for {', '.join(pending)}.")
    return "\n\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the --out folder of the evaluation run")
    parser.add_argument("--doc", type=Path, default=Path("docs/evaluation.md"))
    args = parser.parse_args(argv)
    doc = args.doc.read_text()
    if START not in doc or END not in doc:
        print(f"{args.doc}: the markers {START} and {END} are missing", file=sys.stderr)
        return 2
    body = results_markdown(args.out, args.doc.parent / "evaluation", args.doc.parent)
    head, rest = doc.split(START, 1)
    args.doc.write_text(f"{head}{START}\n\n{body}\n\n{END}{rest.split(END, 1)[1]}")
    print(f"{args.doc}: results of {args.out} written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
