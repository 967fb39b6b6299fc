"""The only module that imports Ray: it maps the plain stages onto Ray.

Stages are plain functions or classes over Arrow tables that return (results, errors);
here each writes tables that hold both, told apart by the error columns (`stage` is null on
a result row), so one pass writes one Parquet folder. Decoding is a Ray Data `map_batches`
step; embedding is a pool of actors of our own, one decoded file per call (`embed`).
"""
from __future__ import annotations

import logging
import os
import sys
from collections import Counter
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import ray
from ray.data import DataContext, Dataset

from enrich_ray.schema import combine, result_rows
from enrich_ray.config import Config, DecodeConfig, EmbedConfig, RuntimeConfig, StorageConfig
from enrich_ray.io.fs import resolve

log = logging.getLogger(__name__)

def init(cfg: RuntimeConfig) -> None:
    """Connect to the cluster named by config or RAY_ADDRESS, else start a local Ray.

    Ray's log records go where the caller's logging sends them (the command line: run.log, and
    the console with --verbose), rather than straight to stderr.
    """
    if not ray.is_initialized():
        _ray_logs_to_root()
        address = cfg.address or os.environ.get("RAY_ADDRESS")
        if address:
            log.info("ray: joining the cluster at %s", address)
            ray.init(address=address, log_to_driver=True)
        else:
            log.info("ray: starting a local Ray with %s CPUs", cfg.num_cpus or os.cpu_count())
            ray.init(num_cpus=cfg.num_cpus, include_dashboard=False, log_to_driver=True)
    ctx = DataContext.get_current()
    ctx.execution_options.verbose_progress = False
    # Ray Data draws progress bars on sys.stderr when stdout is a terminal, and logs progress
    # when it is not; bars only where a person watches them, never redrawn into a log file.
    ctx.enable_progress_bars = sys.stderr.isatty() or not sys.stdout.isatty()
    ctx.execution_no_progress_timeout_s = cfg.no_progress_timeout_s


class _RayDataErrorsAsWarnings(logging.Handler):
    """Passes Ray Data's records on to the root logger's handlers, its errors as warnings.

    Ray Data raises every error that stops it (no block may fail: max_errored_blocks stays 0),
    after logging it, with its traceback, more than once: the caller reports that one exception
    (the command line in one line), and these records stay in the log beside it.
    """

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno > logging.WARNING:  # a copy: Ray's own file handler keeps the level
            record = logging.makeLogRecord({**record.__dict__, "levelno": logging.WARNING, "levelname": "WARNING"})
        logging.getLogger().handle(record)


def _ray_logs_to_root() -> None:
    """Ray's and Ray Data's loggers print to stderr through handlers of their own: send their records to the root's."""
    for name in ("ray", "ray.data"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):  # Ray's own files (ray-data.log in the session folder) stay
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                logger.removeHandler(handler)
    logging.getLogger("ray").propagate = True
    data = logging.getLogger("ray.data")
    if not any(isinstance(h, _RayDataErrorsAsWarnings) for h in data.handlers):
        data.addHandler(_RayDataErrorsAsWarnings())
    data.propagate = False  # its records reach the root through that handler


def shutdown() -> None:
    """Stop the local Ray this process started (a no-op on a cluster we only joined)."""
    if ray.is_initialized():
        ray.shutdown()


def run_task(fn, *args, num_gpus: float = 0.0, **kwargs):
    """fn(*args, **kwargs) as one Ray task, on a GPU node when num_gpus > 0; returns its result.

    Training runs this way so that on a cluster whose head has no GPU it still gets one.
    """
    return _get(ray.remote(num_cpus=1, num_gpus=num_gpus)(fn).remote(*args, **kwargs))


def map_tasks(fn, calls: list[tuple]) -> list:
    """fn(*call) for every call, one Ray task (one CPU) each, all in flight at once; results in call order.

    The index and the kNN graph built in parts (index.partitioned) run their steps this way: each task
    reads its own files from the store, so what travels is settings, URIs and small arrays. An array of
    100 kB or more (centroids, queries), or a list, tuple or dict that several calls share (every file's
    row ids, handed to each file's exact scan), is put in the object store once, not once per call.
    """
    remote = ray.remote(num_cpus=1)(fn)
    shared: dict[int, Any] = {}
    uses = Counter(id(a) for call in calls for a in call)

    def arg(value: Any) -> Any:
        large = getattr(value, "nbytes", 0) >= 100_000
        if not large and not (isinstance(value, (list, tuple, dict)) and uses[id(value)] > 1):
            return value
        if id(value) not in shared:
            shared[id(value)] = ray.put(value)
        return shared[id(value)]

    refs = [remote.remote(*[arg(a) for a in call]) for call in calls]
    return [_get(ref) for ref in refs]


def read_parquet(uris: list[str], storage: StorageConfig | None, columns: list[str] | None = None) -> Dataset:
    """A Ray dataset over Parquet files on local disk or an object store."""
    loc = resolve(uris[0], storage)
    paths = [resolve(u, storage).path for u in uris]
    return ray.data.read_parquet(paths, filesystem=loc.arrow_fs(), columns=columns)


def write_parquet(ds: Dataset, uri: str, storage: StorageConfig | None) -> None:
    """Write a dataset as a Parquet folder."""
    loc = resolve(uri, storage)
    ds.write_parquet(loc.path, filesystem=loc.arrow_fs())


def _decode_batch(batch: pa.Table, cfg: DecodeConfig) -> pa.Table:
    from enrich_ray.decode.stage import decode_batch

    return combine(*decode_batch(batch, cfg))


def decode(ds: Dataset, cfg: DecodeConfig) -> Dataset:
    """Every archive row to frames (one per image/cine frame) or error rows, in Ray tasks."""
    return ds.map_batches(_decode_batch, fn_kwargs={"cfg": cfg}, batch_size=cfg.batch_size, batch_format="pyarrow")


class _EmbedActor:
    """An actor of the embedding pool: builds its embedder on its first file, then embeds file after file.

    Its constructor takes only settings and URIs, a few KB that travel inside the creation task:
    the model (embed.model) and a fitted state (embed_state.json) are read from the store by the
    actor itself. A restarted actor (Ray restarts a killed one and retries its file) so needs
    nothing from the object store, where an argument may be gone by then.
    """

    def __init__(self, cfg: EmbedConfig, decode_cfg: DecodeConfig, storage: StorageConfig | None, state_uri: str | None):
        self.cfg, self.decode_cfg, self.storage, self.state_uri = cfg, decode_cfg, storage, state_uri
        self.embedder = None

    def embed_file(self, src: str, dst: str) -> None:
        """Embed one decoded Parquet file batch by batch; write embeddings and error rows to dst in one write."""
        from enrich_ray.embed.registry import make_embedder, state_from_json

        if self.embedder is None:
            state = None
            if self.state_uri:
                loc = resolve(self.state_uri, self.storage)
                state = state_from_json(loc.fs.cat_file(loc.path).decode())
            self.embedder = make_embedder(self.cfg, self.decode_cfg, storage=self.storage, state=state)
        loc = resolve(src, self.storage)
        with loc.fs.open(loc.path, "rb") as fh:
            parts = [
                combine(*self.embedder.embed_batch(result_rows(pa.Table.from_batches([batch]))))
                for batch in pq.ParquetFile(fh).iter_batches(batch_size=self.cfg.batch_size)
            ]
        if parts:
            sink = pa.BufferOutputStream()
            pq.write_table(pa.concat_tables(parts), sink)
            resolve(dst, self.storage).write_bytes(sink.getvalue().to_pybytes())


def embed(frames: list[str], out: str, cfg: Config, state_uri: str | None = None) -> None:
    """Embed the decoded Parquet files `frames` into a file each under `out`, on a pool of actors.

    GPU actors when embed.num_gpus > 0. A file whose actor dies is embedded again by the restarted
    actor; a file that fails raises its own error here. No file finished within
    runtime.no_progress_timeout_s stops the stage.
    """
    emb = cfg.embed
    folder = resolve(out, cfg.storage)
    folder.fs.makedirs(folder.path, exist_ok=True)
    remote = ray.remote(_EmbedActor).options(
        num_gpus=emb.num_gpus, num_cpus=0 if emb.num_gpus else 1, max_restarts=-1, max_task_retries=-1
    )
    todo = [(src, f"{out.rstrip('/')}/part-{i:05d}.parquet") for i, src in enumerate(frames)][::-1]
    actors = [remote.remote(emb, cfg.decode, cfg.storage, state_uri) for _ in range(min(emb.num_actors, len(todo)))]
    running: dict[ray.ObjectRef, Any] = {}
    try:
        for actor in actors:
            running[actor.embed_file.remote(*todo.pop())] = actor
        while running:
            done, _ = ray.wait(list(running), num_returns=1, timeout=cfg.runtime.no_progress_timeout_s)
            if not done:
                gpus = f"; does the cluster have the {emb.num_gpus:g} GPU(s) an actor asks for (embed.num_gpus)?"
                raise TimeoutError(f"embed: no file embedded in {cfg.runtime.no_progress_timeout_s:g} s "
                                   f"(runtime.no_progress_timeout_s){gpus if emb.num_gpus else ''}")
            actor = running.pop(done[0])
            _get(done[0])
            if todo:
                running[actor.embed_file.remote(*todo.pop())] = actor
    finally:
        for actor in actors:
            ray.kill(actor, no_restart=True)
        for ref in running:  # fetched, so Ray does not report them as unhandled errors
            try:
                ray.get(ref)
            except ray.exceptions.RayError:
                pass


def _get(ref: ray.ObjectRef) -> Any:
    """The value of a task or actor call; its own exception when it failed (not Ray's wrapper, whose text is a traceback)."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        if exc.cause is None:
            raise
        raise exc.cause from exc
