"""The `enrich-ray` command line: pack, train-vae, curate, select, nightly, export, labels, leakage, evaluate, demo.

Bad input ends with one line naming the cause (exit 2), never a traceback; a curate run in
which no frame could be embedded finishes its outputs and exits 3; a split that leaks, 4.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Iterator

from enrich_ray import __version__
from enrich_ray.config import RANKER_NAMES, Config, ConfigError, load_config, packaged_config
from enrich_ray.export import FORMATS as EXPORT_FORMATS
from enrich_ray.progress import set_console

EXIT_BAD_INPUT = 2
RUN_LOG = "run.log"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
log = logging.getLogger(__name__)

EXAMPLES = {
    "pack": """examples:
  enrich-ray pack ./scans --out ./archive
  enrich-ray pack s3://hospital/incoming/2026-11-20/ --out s3://curation/archive/2026-11-20
  ENRICH_RAY_PATIENT_KEY=... enrich-ray pack a/ b/ --out ./archive   # keyed patient_key
  enrich-ray pack "dicomweb://pacs:8042/dicom-web?StudyDate=20261120&Modality=US" --out ./archive/2026-11-20
      # a PACS: credentials in ENRICH_RAY_DICOMWEB_USER/_PASSWORD; rerun to fetch only what is missing""",
    "train-vae": """examples:
  enrich-ray train-vae --archive ./archive --out ./model
  enrich-ray train-vae --archive ./archive --out ./model --set vae.max_epochs=10 --set vae.beta=0.1""",
    "curate": """examples:
  enrich-ray curate --archive ./archive --out ./runs/first
  enrich-ray curate --archive s3://bucket/archive --out s3://bucket/runs/x --model s3://bucket/model
  enrich-ray curate --archive ./archive --out ./runs/first --set selection.k=1000 --set report.thumbnails=false""",
    "select": """examples:
  enrich-ray select --embeddings ./runs/first/embeddings --out ./ranked --ranker enrich --seed-set 1
  enrich-ray select --embeddings ./emb.parquet --out ./ranked --seed-set labeled.csv --k 500""",
    "nightly": """examples:
  enrich-ray nightly --catalog ./catalog --archive ./archive/2026-11-20 --night 2026-11-20
  enrich-ray nightly --catalog s3://curation/catalog --archive s3://curation/archive/2026-11-20 --night 2026-11-20""",
    "reembed": """examples:
  enrich-ray train-vae --archive ./archive/2026-11-20 --out ./model-v2
  enrich-ray reembed --catalog ./catalog --model ./model-v2""",
    "export": """examples:
  enrich-ray export --run ./runs/first --to labelstudio --out ./to_label   # tasks.json + images/
  enrich-ray export --run s3://curation/catalog/nights/2026-11-20 --to cvat --out s3://labeling/2026-11-20
  enrich-ray export --run ./runs/first --to csv --top 200 --out ./to_label
  enrich-ray export --run ./runs/first --to kos --title "For Research" --out ./kos   # one .dcm per study
  enrich-ray export --run ./runs/first --to kos --out dicomweb://pacs:8042/dicom-web  # stored over STOW-RS""",
    "labels": """examples:
  enrich-ray labels --catalog s3://curation/catalog --from ./label-studio-export.json
  enrich-ray labels --catalog ./catalog --from ./annotations.xml   # CVAT for images 1.1
  enrich-ray labels --catalog ./catalog --from ./to_label.csv      # image_id,label""",
    "leakage": """examples:
  enrich-ray leakage --run ./runs/first --split ./paper_split.csv   # split and image_id (or source_uri) columns
  enrich-ray leakage --run ./runs/first --split split              # a column of the run's archive
  exit code 0: the split is clean; 4: it leaks (pairs in RUN/leakage.parquet and the report)""",
    "evaluate": """examples:
  enrich-ray evaluate --dataset ../shared/data/pneumoniamnist_28/pneumoniamnist.npz --out ./eval/pneumonia
  enrich-ray evaluate --dataset ../shared/data/busi_256/Dataset_BUSI_with_GT --out ./eval  # benign/ malignant/ normal/""",
    "demo": """examples:
  enrich-ray demo --out runs/demo""",
}


def _common(p: argparse.ArgumentParser, config: str) -> None:
    p.add_argument("--config", default=packaged_config(config),
                   help=f"YAML config file (default: the {config} installed with enrich_ray, configs/ in its repository)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one setting; repeatable")
    talk = p.add_mutually_exclusive_group()
    talk.add_argument("-v", "--verbose", action="store_true",
                      help="debug logging, with Ray's and the libraries' messages on the console too")
    talk.add_argument("-q", "--quiet", action="store_true",
                      help="print only the result lines and errors (curate, demo and nightly still write run.log)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand and its examples."""
    parser = argparse.ArgumentParser(
        prog="enrich-ray",
        description="Rank medical images by how much new information each adds (ENRICH), as a Ray job.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_: str, config: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_, epilog=EXAMPLES[name],
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        _common(p, config)
        return p

    curate_yaml = "curate.yaml"
    archive_help = "archive folder written by `enrich-ray pack` (local or s3://)"
    p = add("pack", "pack folders or buckets of DICOM/PNG/JPEG into a Parquet archive", curate_yaml)
    p.add_argument("sources", nargs="+", metavar="SRC",
                   help="local folders/files or s3:// prefixes; or dicomweb[s]://HOST[:PORT]/PATH?Keyword=value queries")
    p.add_argument("--out", required=True, help="archive folder (local or s3://)")

    p = add("train-vae", "train the β-VAE on a seeded sample of an archive's frames", curate_yaml)
    p.add_argument("--archive", required=True, help=archive_help)
    p.add_argument("--out", required=True, help="model folder (local or s3://)")

    p = add("curate", "archive to ranked manifest and report: decode, embed, index, analyse, rank", curate_yaml)
    p.add_argument("--archive", required=True, help=archive_help)
    p.add_argument("--out", required=True, help="run folder; rerunning with the same folder resumes")
    p.add_argument("--model", help="a trained model folder (default: train one in the run)")
    p.add_argument("--force", action="store_true", help="recompute every stage")

    p = add("select", "rank an existing embeddings table", curate_yaml)
    p.add_argument("--embeddings", required=True, help="Parquet file or folder with image_id, frame_index, embedding")
    p.add_argument("--out", required=True, help="folder for manifest.parquet and manifest.csv")
    p.add_argument("--ranker", choices=RANKER_NAMES,
                   help="ranker (default: selection.ranker); smi also needs selection.smi_query, a file of image ids")
    p.add_argument("--seed-set", "--seed", dest="seed_set", metavar="SEED_SET",
                   help="the frames ranked first: a count (5), a fraction (0.01) or a file of labeled image ids "
                        "(--seed is the old name; the random seed is selection.random_seed)")
    p.add_argument("--k", type=int, help="how many to rank after the seed set (default: all)")

    p = add("nightly", "rank tonight's new scans against everything seen and labeled before", "nightly.yaml")
    p.add_argument("--catalog", required=True, help="catalog folder of every night so far (local or s3://); created on the first night")
    p.add_argument("--archive", required=True, help="tonight's archive, written by `enrich-ray pack` (local or s3://)")
    p.add_argument("--night", required=True, help="the night's date, YYYY-MM-DD")
    p.add_argument("--model", help="a trained model folder for the first night (default: train one)")
    p.add_argument("--force", action="store_true", help="redo a night already in the catalog")

    p = add("reembed", "embed every night of a catalog again with another model (an explicit model change)", "nightly.yaml")
    p.add_argument("--catalog", required=True, help="catalog folder written by `enrich-ray nightly` (local or s3://)")
    p.add_argument("--model", required=True, help="the new model folder")

    p = add("export", "send a run's selection to a labeling tool (Label Studio, CVAT, CSV) or to the PACS (DICOM KOS)", curate_yaml)
    p.add_argument("--run", required=True, help="a curate run folder, or a nightly night folder (CATALOG/nights/NIGHT)")
    p.add_argument("--to", required=True, choices=EXPORT_FORMATS,
                   help="labelstudio: tasks.json and PNGs; cvat: PNGs and manifest.jsonl; csv: to_label.csv; "
                        "kos: a DICOM Key Object Selection document per study")
    p.add_argument("--top", type=int, help="how many frames of the ranking (default: the run's list: a curate run's frames "
                                           "up to the report's suggested budget, a night's top.csv)")
    p.add_argument("--out", required=True, help="folder for the export (local or s3://); for --to kos also a PACS, "
                                                "dicomweb[s]://HOST[:PORT]/PATH, stored to over STOW-RS")
    p.add_argument("--title", help="kos: the document title, from DICOM CID 7010 (default 'Of Interest'; e.g. 'For Research')")
    p.add_argument("--document-root", help="labelstudio with a local --out: Label Studio's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT, "
                                           "which the image URLs are relative to (default: that variable if set, else /)")

    p = add("labels", "put a labeling tool's export into the catalog's labeled set, so the next night seeds from it", "nightly.yaml")
    p.add_argument("--catalog", required=True, help="catalog folder written by `enrich-ray nightly` (local or s3://)")
    p.add_argument("--from", dest="source", required=True, metavar="FILE",
                   help="Label Studio JSON export (.json), CVAT for images 1.1 XML (.xml) or a CSV of image_id,label (.csv)")

    p = add("leakage", "check a train/val/test split of a finished curate run for frames on two sides: exact or near "
                       "duplicates, the same patient, the same study", curate_yaml)
    p.add_argument("--run", required=True, help="a finished curate run folder (local or s3://)")
    p.add_argument("--split", required=True, metavar="SPLIT",
                   help="a .csv or .parquet file with a split column (train, val, test) and an image_id or a source_uri "
                        "column, or the name of a column of the run's archive")

    p = add("evaluate", "show on a labeled dataset whether ranking pays off (paper Fig. 1 and 3)", "evaluate.yaml")
    p.add_argument("--dataset", required=True, help="MedMNIST .npz, an archive with label and split columns, "
                   "or a folder of class subfolders (packed into OUT/<name>/archive, labels from the folder names)")
    p.add_argument("--out", required=True, help="folder for the figures, tables and summary")

    p = add("demo", "pack pydicom's real test DICOM files and curate them on a local Ray", "demo.yaml")
    p.add_argument("--out", default="runs/demo", help="folder for the demo's archive and run (default: runs/demo)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of `enrich-ray` and `python -m enrich_ray`."""
    args = build_parser().parse_args(argv)
    from botocore.exceptions import BotoCoreError, ClientError

    from enrich_ray.io.fs import StorageError, unreachable_store

    root = logging.getLogger()
    root.setLevel(logging.DEBUG if args.verbose else logging.INFO)
    console = Console(sys.stderr, verbose=args.verbose, quiet=args.quiet, plain=args.command in RUN_FOLDERS)
    root.addHandler(console)
    set_console(None, args.quiet)
    refused = (ConfigError, StorageError, OSError, BotoCoreError, ClientError)
    try:
        cfg = load_config(args.config, args.overrides)
        with _run_log(args, cfg, console) as run_log:
            try:
                return COMMANDS[args.command](args, cfg)
            except refused:
                run_log.discard()  # a refused run leaves nothing behind
                raise
    except (ConfigError, StorageError) as exc:
        print(f"enrich-ray {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (OSError, BotoCoreError, ClientError) as exc:
        print(f"enrich-ray {args.command}: error: {unreachable_store(exc) or f'{type(exc).__name__}: {exc}'}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"enrich-ray {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    finally:
        root.removeHandler(console)


class Console(logging.StreamHandler):
    """The lines a person reads on stderr.

    Plain (curate, demo, nightly, not --verbose): enrich_ray's own messages and anyone's errors,
    without level or logger names; a stage's "running" line is redrawn in place as its result
    (a carriage return, as a progress bar does). --quiet: errors only. --verbose: every record.
    """

    def __init__(self, stream, *, verbose: bool, quiet: bool, plain: bool):
        super().__init__(stream)
        self.plain = plain and not verbose
        self.pending = ""  # the running stage's line, not yet ended
        self.setLevel(logging.ERROR if quiet else logging.DEBUG if verbose else logging.INFO)
        self.setFormatter(logging.Formatter("%(message)s" if self.plain else "%(levelname)s %(name)s: %(message)s"))
        if self.plain:
            self.addFilter(lambda r: r.name.startswith("enrich_ray") or r.levelno >= logging.ERROR)
        elif not verbose:  # which SIMD build faiss found (and the ones it did not) is library chatter
            self.addFilter(lambda r: r.name != "faiss.loader" or r.levelno >= logging.WARNING)

    def emit(self, record: logging.LogRecord) -> None:
        if not self.plain:
            return super().emit(record)
        try:
            stage, marker = getattr(record, "stage", None), getattr(record, "marker", None)
            end = "\n" if self.pending else ""
            if marker is not None:
                result = stage_result(stage, marker)
                redraw = self.pending.startswith(f"{stage}:")  # over its own running line, padded to cover it
                text = ("\r" + result.ljust(len(self.pending)) if redraw else end + result) + "\n"
                self.pending = ""
            else:
                line = self.format(record)
                if record.levelno >= logging.WARNING:
                    line = f"{record.levelname.lower()}: {line}"
                text = end + line + ("" if stage is not None else "\n")
                self.pending = line if stage is not None else ""
            self.stream.write(text)
            self.flush()
        except Exception:  # logging's contract: a broken console never stops the run
            self.handleError(record)

    def end_line(self) -> None:
        """End a stage line left running (the run stopped inside the stage), so what follows starts a line."""
        if self.pending:
            self.stream.write("\n")
            self.pending = ""


def stage_result(stage: str, marker: dict) -> str:
    """A finished stage of curate or nightly in a few words, from its marker (enrich_ray/pipelines/stages.py)."""
    m = marker
    words = {
        "decode": lambda: f"{m['frames']} frames, {m['errors']} error rows",
        "train": lambda: _training(m),
        "embed": lambda: f"{m['embedded']} frames embedded, {m['errors']} error rows",
        "select": lambda: f"{m['new_images']} new images, {m['resent']} re-sent",
        "index": lambda: f"{m['k']}-NN graph of {m['frames']} frames" + (
            f", recall@{m['recall']['k']} {m['recall']['recall_at_k']:.3f}" if m.get("recall") else ""),
        "analyze": lambda: f"{m['duplicate_groups']} duplicate groups, {m['outliers_flagged']} outliers flagged",
        "rank": lambda: f"{m['ranked']} frames ranked, {sum(m.get('excluded', {}).values())} left out as junk" + _quota(m),
        "report": lambda: "written",
    }
    try:
        said = words[stage]()
    except (KeyError, TypeError, ValueError):  # a stage or marker this console does not know: the time alone
        said = "done"
    return f"{stage}: {said} ({m.get('seconds', 0.0):.1f} s)"


def _quota(m: dict) -> str:
    """', quota reached (...)' for a rank marker under selection.quota, else nothing."""
    if not m.get("quota"):
        return ""
    from enrich_ray.selection.quota import quota_line

    return f", {quota_line(m['quota'])}"


def _training(m: dict) -> str:
    if "copied_from" in m:
        return f"none: the model given, {m['copied_from']}"
    if not m["trained"]:
        return f"not trained: {m['frames']} decoded frame(s) are too few"
    metrics = m["metrics"]
    best = next(h for h in metrics["history"] if h["epoch"] == metrics["best_epoch"])
    return (f"{metrics['epochs']} epochs (stopped: {metrics['stopped']}), validation loss {best['val_loss']:.1f} nats "
            f"per image at the best epoch, {metrics['best_epoch']}")


# The folder whose run.log takes a run's Ray and library messages, by command.
RUN_FOLDERS = {
    "curate": lambda args: args.out,
    "demo": lambda args: f"{args.out}/run",
    "nightly": lambda args: args.catalog,
}


class RunLog:
    """A run's log file, as far as a refused run must take it back (nothing, for commands without one)."""

    def __init__(self, created: list[Path] | None = None):
        self.created = created or []  # what opening it made: the file and any folders above it
        self.discarded = False

    def discard(self) -> None:
        """Remove the file and the folders that opening it created (a refused run writes nothing)."""
        self.discarded = True
        for p in self.created:
            if p.is_dir():
                with contextlib.suppress(OSError):  # a folder the run filled meanwhile stays
                    p.rmdir()
            else:
                p.unlink(missing_ok=True)


def run_log_path(args: argparse.Namespace, cfg: Config) -> Path | None:
    """run.log in a local run folder; for an object-store run folder, a local file under the system temp dir."""
    from enrich_ray.io.fs import resolve

    folder = RUN_FOLDERS[args.command](args) if args.command in RUN_FOLDERS else None
    if folder is None:
        return None
    loc = resolve(folder, cfg.storage)
    if loc.is_local:
        return Path(loc.path) / RUN_LOG
    return Path(tempfile.gettempdir()) / f"enrich-ray-{args.command}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"


class _ResultsOnStdout:
    """sys.stdout while a run logs: the main thread's writes (the result lines) reach stdout, any
    other thread's the log.

    Ray prints its workers' and raylet's lines to sys.stdout from its listener threads (a raylet
    warning such as "8 PYTHON worker processes have been started" among them); on the console
    they would break the promise that stdout holds the results and nothing else.
    """

    def __init__(self, stdout, log_file):
        self.stdout, self.log_file = stdout, log_file

    def write(self, text: str) -> int:
        main = threading.current_thread() is threading.main_thread()
        return (self.stdout if main else self.log_file).write(text)

    def flush(self) -> None:
        self.stdout.flush()
        self.log_file.flush()

    def __getattr__(self, name: str):  # isatty, fileno, encoding...: those of stdout
        return getattr(self.stdout, name)


@contextlib.contextmanager
def _run_log(args: argparse.Namespace, cfg: Config, console: Console) -> Iterator[RunLog]:
    """While the command runs, send Ray's and the libraries' messages to run.log, not the console.

    The log takes every log record at INFO and up; without --verbose it also takes whatever else
    reaches stderr: Python's sys.stderr (Ray's lines from its workers, progress bars, warnings)
    and, through file descriptor 2, native writes (Ray's core worker). The console handler keeps
    the terminal.
    """
    path = run_log_path(args, cfg)
    if path is None:
        yield RunLog()
        return
    created = [p for p in [path, *path.parents] if not p.exists()]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", buffering=1, encoding="utf-8", errors="backslashreplace") as file:
        file.write(f"--- enrich-ray {args.command} {__version__}, {time.strftime('%Y-%m-%d %H:%M:%S %z')}\n")
        handler = logging.StreamHandler(file)
        handler.setLevel(logging.INFO)  # never DEBUG: request logs of the storage clients carry signed headers
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        root = logging.getLogger()
        root.addHandler(handler)
        redirect = not args.verbose
        if redirect:
            sys.stderr.flush()
            terminal = os.fdopen(os.dup(2), "w", buffering=1, encoding=sys.stderr.encoding or "utf-8",
                                 errors="backslashreplace")
            stderr, console_stream = sys.stderr, console.setStream(terminal)
            os.dup2(file.fileno(), 2)
            sys.stderr, stdout, sys.stdout = file, sys.stdout, _ResultsOnStdout(sys.stdout, file)
            # Ray holds back repeated worker lines and prints them at exit, on the main thread
            # and after this log has closed; unheld, each reaches the log as it comes.
            os.environ.setdefault("RAY_DEDUP_LOGS", "0")
            set_console(terminal, args.quiet)  # our own progress bars stay on the console
        run_log = RunLog(created)
        try:
            yield run_log
        except Exception:
            if not run_log.discarded:  # a crash's traceback, beside the messages that led to it
                traceback.print_exc(file=file)
            raise
        finally:
            console.end_line()
            if not run_log.discarded:
                log.info("log: %s", path)
            if redirect:
                file.flush()
                os.dup2(terminal.fileno(), 2)
                sys.stderr, sys.stdout = stderr, stdout
                console.setStream(console_stream)
                set_console(None, args.quiet)
                terminal.close()
            root.removeHandler(handler)


def _pack(args: argparse.Namespace, cfg: Config) -> int:
    from enrich_ray.io.pack import pack

    summary = pack(args.sources, args.out, cfg.pack, cfg.storage, progress=not args.quiet)
    print("\n".join(["packed into " + args.out, *("  " + line for line in summary.lines())]))
    return 0


def _train(args: argparse.Namespace, cfg: Config) -> int:
    from enrich_ray.pipelines.curate import train_model

    result = train_model(args.archive, args.out, cfg)
    m = result.metrics
    print(f"model written to {args.out} (hash {result.model_hash[:12]})")
    print(f"  validation reconstruction {m.get('val_recon', float('nan')):.4f} nats/pixel-sum, KL {m.get('val_kl', float('nan')):.2f} nats")
    print(f"  active units {m.get('active_units')} of {cfg.vae.latent_dim}, participation ratio {m.get('participation_ratio', float('nan')):.1f}")
    return 0


def _curate(args: argparse.Namespace, cfg: Config) -> int:
    from enrich_ray.pipelines.curate import curate

    result = curate(args.archive, args.out, cfg, model=args.model, force=args.force)
    _print_result(result)
    return result.exit_code


def _print_result(result) -> None:
    c = result.counts
    print(f"\nimages in: {c['archive_images']}; frames decoded: {c['frames_decoded']}; embedded: {c['frames_embedded']}; "
          f"unreadable: {c.get('unreadable_rows', c['error_rows'])}, without an image: {c.get('no_image_rows', 0)} "
          f"(errors.parquet); ranked: {c['ranked']}")  # .get: a run folder finished by an older version lacks the split
    if not c["frames_embedded"]:
        print("no frame could be embedded: see errors.parquet and the report")
    print(f"report: {result.report}")


def _select(args: argparse.Namespace, cfg: Config) -> int:
    from enrich_ray.pipelines.select import select

    n, quota = select(args.embeddings, args.out, cfg, ranker=args.ranker, seed_set=args.seed_set, k=args.k)
    print(f"ranked {n} frames into {args.out}/manifest.parquet and manifest.csv" + (f" ({quota})" if quota else ""))
    return 0


def _nightly(args: argparse.Namespace, cfg: Config) -> int:
    from enrich_ray.pipelines.nightly import nightly

    result = nightly(args.catalog, args.archive, args.night, cfg, model=args.model, force=args.force)
    print(result.message)
    return result.exit_code


def _reembed(args: argparse.Namespace, cfg: Config) -> int:
    from enrich_ray.pipelines.nightly import reembed

    result = reembed(args.catalog, args.model, cfg)
    print(result.message)
    return result.exit_code


def _export(args: argparse.Namespace, cfg: Config) -> int:
    from enrich_ray.export.job import export_selection

    result = export_selection(args.run, args.to, args.out, cfg, top=args.top, title=args.title, document_root=args.document_root)
    print("\n".join(result.lines))
    return 0


def _labels(args: argparse.Namespace, cfg: Config) -> int:
    from enrich_ray.export.job import labels_into_catalog

    print("\n".join(labels_into_catalog(args.catalog, args.source, cfg).lines()))
    return 0


def _leakage(args: argparse.Namespace, cfg: Config) -> int:
    from enrich_ray.pipelines.leakage import check_run

    result = check_run(args.run, args.split, cfg)
    print("\n".join(result.lines))
    return result.exit_code


def _evaluate(args: argparse.Namespace, cfg: Config) -> int:
    from enrich_ray.pipelines.evaluate import run_evaluation

    result = run_evaluation(args.dataset, cfg, args.out)
    print(f"evaluation written to {args.out}: {result.get('summary', '')}")
    return 0


def _demo(args: argparse.Namespace, cfg: Config) -> int:
    from enrich_ray.pipelines.curate import curate
    from enrich_ray.io.pack import SUMMARY_NAME, pack
    from enrich_ray.pipelines.demo import demo_sources

    sources = demo_sources()
    archive = f"{args.out}/archive"
    log.info("packing pydicom's real test files from %s", ", ".join(sources))
    s = pack(sources, archive, cfg.pack, cfg.storage)
    log.info("pack: %d of %d files as %d distinct images into %s (%d skipped, %d unreadable; details in %s/%s)",
             s.files_packed, s.files_seen, s.images, archive, sum(s.skipped.values()), s.unreadable, archive,
             SUMMARY_NAME)
    result = curate(archive, f"{args.out}/run", cfg)
    _print_result(result)
    return result.exit_code


COMMANDS = {
    "pack": _pack,
    "train-vae": _train,
    "curate": _curate,
    "select": _select,
    "nightly": _nightly,
    "reembed": _reembed,
    "export": _export,
    "labels": _labels,
    "leakage": _leakage,
    "evaluate": _evaluate,
    "demo": _demo,
}
