"""Benchmark: the index, the kNN graph and the analyses built by Ray tasks on a local multi-node Ray,
then the first ENRICH picks on the driver (issue 15, "Distributed where the work is"; not collected by pytest).

N synthetic frames with a known cluster structure (N/1000 components on the sphere, each a random
centre plus spread along its own 16-d subspace and a little noise, as bench_knn.py draws them;
d = 128) are written as Parquet files in the embeddings schema (schema.embeddings_schema with the
error columns, the rows of a frame scattered over the files in a random order, as embedding actors
write them; no decode). A head (no CPU: the driver, this process, runs beside it) and two worker
nodes (1 CPU each, at 127.0.0.2 and 127.0.0.3) are started with `ray start`. Then, timed step by step:

  keys     curate.embedding_files: the files' frame rows from their key columns (driver)
  index    index.partitioned.build_index_parts (tasks), then its search of the sampled frames (tasks)
  graph    index.partitioned.build_graph, the 10-NN graph (tasks; its own recall figure)
  matrix   curate.load_embeddings of the run folder: the whole matrix, what the greedy needs (driver)
  recall   exact top-10 of --sample frames by a blocked scan of the matrix (numpy, independent of
           the project's code): recall@10 of the graph and of the index (share of true neighbours found)
  driver_graph  with --driver-graph, the same graph built on the driver over the matrix (index.knn.knn_graph)
  analyses redundancy (the graph's 1-NN similarities), near-duplicates (analysis.duplicates.archive_duplicates
           with no thumbnails or pixel hashes: the graph's edges, their exact cosines from the matrix),
           the outliers' neighbourhood evidence at scale 10 (graph only: synthetic frames have no pixels)
  enrich   the first --picks of ENRICH after the default seeds (selection.enrich_greedy, exact), and how
           many of the components the first 1,000 picks reach

Peak memory per node: every 0.5 s the resident memory (VmRSS) of each node's processes (the `ray start`
process and all its descendants: raylet, GCS on the head, the workers running the tasks) is summed; the
peak of that sum and of the largest single process are printed per node, with the driver's own peak
(VmHWM, step by step). Resident memory counts pages of Ray's shared object store once in each process mapping them.
A task killed by Ray's memory monitor fails its step: the step prints FAILED with the error.

    .venv/bin/python tests/benchmarks/bench_distributed.py --n 1000000
    .venv/bin/python tests/benchmarks/bench_distributed.py --n 10000000 --skip-index   # not run on the 2-core machine (README)

The data (about 0.6 GB per million frames, and as much again for the index and the graph's scratch)
goes under --work (default: a temporary folder, removed at the end).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1_000_000, help="frames (default 1M)")
    p.add_argument("--file-rows", type=int, default=100_000, help="frames per embeddings file")
    p.add_argument("--sample", type=int, default=1000, help="frames whose exact neighbours the recall is measured on")
    p.add_argument("--picks", type=int, default=100_000, help="ENRICH picks after the seeds (0: skip)")
    p.add_argument("--skip-index", action="store_true", help="no faiss index (the graph, analyses and ENRICH only)")
    p.add_argument("--driver-graph", action="store_true",
                   help="also build the graph on the driver (index.knn.knn_graph over the matrix, --threads threads), as curate does below index.distributed_min_frames")
    p.add_argument("--threads", type=int, default=2, help="BLAS/faiss threads of the driver (the tasks use 1 each)")
    p.add_argument("--object-store-gib", type=float, default=1.0, help="Ray object store per node")
    p.add_argument("--work", help="folder for the data (kept); default a temporary folder, removed")
    return p.parse_args()


ARGS = parse() if __name__ == "__main__" else None
if ARGS is not None:
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(ARGS.threads)
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402  (after the thread settings)
import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from enrich_ray import schema  # noqa: E402
from tests.local_nodes import RAY, free_port, start_node, stop_nodes  # noqa: E402

D = 128
K = 10
WORKER_IPS = ("127.0.0.2", "127.0.0.3")


# --- the data --------------------------------------------------------------------------------------


class Mixture:
    """bench_knn.clustered_unit_vectors' model, drawn file by file: N/1000 components, a frame's
    vector from its component's centre, its 16-d basis and noise (seeded by the file)."""

    def __init__(self, n: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.components = max(10, n // 1000)
        self.centres = rng.standard_normal((self.components, D)).astype(np.float32)
        self.centres /= np.linalg.norm(self.centres, axis=1, keepdims=True)
        self.bases = rng.standard_normal((self.components, D, 16)).astype(np.float32) / np.sqrt(D)
        self.label = rng.integers(0, self.components, n)  # by frame row (the sorted image id)
        self.row_order = rng.permutation(n)  # which frame row each written row is

    def vectors(self, rows: np.ndarray, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        out = np.empty((len(rows), D), np.float32)
        for at in range(0, len(rows), 50_000):
            lab = self.label[rows[at:at + 50_000]]
            z = rng.standard_normal((len(lab), 16)).astype(np.float32)
            spread = np.einsum("nij,nj->ni", self.bases[lab], z)
            noise = rng.standard_normal((len(lab), D)).astype(np.float32) * (0.15 / np.sqrt(D))
            out[at:at + len(lab)] = self.centres[lab] + 0.5 * spread + noise
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def write_embeddings(folder: Path, mix: Mixture, n: int, file_rows: int) -> int:
    """The frames as part-*.parquet files of the embed stage's schema (image ids img000000001..., one frame each)."""
    folder.mkdir(parents=True)
    table_schema = schema.embeddings_schema(D)
    errors = schema.empty_errors()
    starts = range(0, n, file_rows)
    for i, at in enumerate(starts):
        rows = mix.row_order[at:at + file_rows]
        x = mix.vectors(rows, seed=1000 + i)
        ids = pa.array(np.char.add("img", np.char.zfill(rows.astype(str), 10)))
        cols = {
            "image_id": ids,
            "frame_index": pa.array(np.zeros(len(rows), np.int32)),
            "source_uri": pc.binary_join_element_wise("s3://synthetic/", ids, ".dcm", ""),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), D),
            "model_hash": pa.array(["synthetic"] * len(rows)),
        }
        table = pa.table({f.name: cols.get(f.name, pa.nulls(len(rows), f.type)) for f in table_schema}, schema=table_schema)
        pq.write_table(schema.combine(table, errors), folder / f"part-{i:05d}.parquet")
    return len(starts)


# --- the cluster and its memory ---------------------------------------------------------------------


@contextlib.contextmanager
def cluster(env: dict, tmp: Path, object_store: int):
    """A head with no CPU and two worker nodes with 1 CPU each; yields the GCS address and {name: root pid}."""
    gcs = free_port()
    dirs = [tempfile.mkdtemp(prefix=f"rb{i}") for i in range(3)]  # short paths: Unix sockets
    nodes: dict[str, subprocess.Popen] = {}
    store = f"--object-store-memory={object_store}"
    try:
        nodes["head"] = start_node(["--head", f"--port={gcs}", "--num-cpus=0", "--include-dashboard=false", store,
                                    f"--ray-client-server-port={free_port()}", f"--temp-dir={dirs[0]}"],
                                   {**env, "TMPDIR": str(tmp)})
        wait_for(lambda: subprocess.run([RAY, "status", f"--address=127.0.0.1:{gcs}"], env=env, capture_output=True,
                                        timeout=60).returncode == 0, "the head")
        for i, ip in enumerate(WORKER_IPS, start=1):
            nodes[f"worker{i} ({ip})"] = start_node([f"--address=127.0.0.1:{gcs}", f"--node-ip-address={ip}", "--num-cpus=1",
                                                     store, f"--temp-dir={dirs[i]}"], {**env, "TMPDIR": str(tmp)})
        yield f"127.0.0.1:{gcs}", {name: p.pid for name, p in nodes.items()}
    finally:
        stop_nodes(list(nodes.values()))  # the workers first
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)


def wait_for(ok, what: str, tries: int = 60) -> None:
    for _ in range(tries):
        with contextlib.suppress(subprocess.TimeoutExpired):
            if ok():
                return
        time.sleep(2)
    raise RuntimeError(f"{what} did not come up")


def _proc_table() -> tuple[dict[int, int], dict[int, int]]:
    """(ppid of each pid, VmRSS in KiB of each pid) from /proc."""
    parent, rss = {}, {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
            parent[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
            for line in Path(entry.path, "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss[int(entry.name)] = int(line.split()[1])
                    break
        except (OSError, ValueError, IndexError):
            continue
    return parent, rss


class NodeMemory(threading.Thread):
    """Samples, every `every` seconds, the summed and the largest resident memory of each node's process tree."""

    def __init__(self, roots: dict[str, int], every: float = 0.5):
        super().__init__(daemon=True)
        self.roots, self.every = roots, every
        self.peak_sum = {name: 0 for name in roots}
        self.peak_one = {name: 0 for name in roots}
        self.step_peak: dict[str, int] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.every):
            parent, rss = _proc_table()
            children: dict[int, list[int]] = {}
            for pid, pp in parent.items():
                children.setdefault(pp, []).append(pid)
            for name, root in self.roots.items():
                tree, todo = [], [root]
                while todo:
                    pid = todo.pop()
                    tree.append(pid)
                    todo.extend(children.get(pid, []))
                total = sum(rss.get(p, 0) for p in tree)
                self.peak_sum[name] = max(self.peak_sum[name], total)
                self.peak_one[name] = max(self.peak_one[name], max((rss.get(p, 0) for p in tree), default=0))
                self.step_peak[name] = max(self.step_peak.get(name, 0), total)

    def take_step_peak(self) -> dict[str, int]:
        out, self.step_peak = self.step_peak, {}
        return out


def vm(field: str) -> float:
    """This process's VmRSS or VmHWM in GiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def reset_peak() -> None:
    """Start this process's peak (VmHWM) afresh, so that it measures the next step alone (Linux)."""
    Path("/proc/self/clear_refs").write_text("5")


def code_state() -> str:
    """The commit the code is at and whether enrich_ray/ or this script differ from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "enrich_ray", "tests/benchmarks/bench_distributed.py"],
                               cwd=ROOT, capture_output=True, text=True, check=True).stdout.split("\n")
    except (OSError, subprocess.CalledProcessError):
        return "not a git checkout"
    changed = [line[3:] for line in dirty if line.strip()]
    return f"commit {head}" + (f", CHANGED: {', '.join(changed)}" if changed else ", enrich_ray/ as committed")


# --- the measures -----------------------------------------------------------------------------------


def exact_top(x: np.ndarray, queries: np.ndarray, k: int, block: int = 65_536) -> np.ndarray:
    """The exact k nearest other rows of each query row (by inner product of unit rows), a block of x at a time."""
    q = x[queries]
    best_s = np.full((len(queries), 0), -np.inf, np.float32)
    best_i = np.zeros((len(queries), 0), np.int64)
    for at in range(0, len(x), block):
        s = q @ x[at:at + block].T
        ids = np.arange(at, at + s.shape[1])
        s[ids[None, :] == queries[:, None]] = -np.inf  # not itself
        top = np.argpartition(-s, min(k, s.shape[1] - 1), axis=1)[:, :k]
        best_s = np.hstack([best_s, np.take_along_axis(s, top, 1)])
        best_i = np.hstack([best_i, ids[top]])
        keep = np.argsort(-best_s, axis=1, kind="stable")[:, :k]
        best_s, best_i = np.take_along_axis(best_s, keep, 1), np.take_along_axis(best_i, keep, 1)
    return best_i


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each row's true neighbours found."""
    return float(np.mean([len(set(f.tolist()) & set(t.tolist())) / len(t) for f, t in zip(found, truth)]))


def main() -> None:
    args = ARGS
    if args.n < 2 * K or args.file_rows < 1 or args.sample < 1 or args.picks < 0:
        print("bench_distributed: --n must be at least 20, --file-rows and --sample at least 1, --picks at least 0", file=sys.stderr)
        sys.exit(2)
    token = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16), "RAY_USAGE_STATS_ENABLED": "0"}
    os.environ.update(token)  # before Ray is imported: the driver joins the cluster with the nodes' token
    os.environ.pop("RAY_ADDRESS", None)
    import faiss
    import ray

    from enrich_ray import runtime
    from enrich_ray.analysis.duplicates import archive_duplicates
    from enrich_ray.analysis.outliers import neighbour_similarities, robust_z
    from enrich_ray.analysis.redundancy import redundancy_stats
    from enrich_ray.config import AnalysisConfig, IndexConfig, SelectionConfig
    from enrich_ray.index.partitioned import build_graph, build_index_parts, read_graph, search_index_parts
    from enrich_ray.pipelines.curate import embedding_files, load_embeddings
    from enrich_ray.pipelines.run_folder import RunFolder
    from enrich_ray.selection.enrich import enrich_greedy
    from enrich_ray.selection.seeds import seed_rows

    faiss.omp_set_num_threads(args.threads)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a `timeout` still stops the nodes (the finally below)
    load = Path("/tmp/team/LOAD")
    print(f"code: {code_state()}")
    print(f"N {args.n:,} frames, d {D}, k {K}; {os.cpu_count()} cores, driver threads {args.threads}, "
          f"load average {os.getloadavg()[0]:.1f}, memory available {os.sysconf('SC_AVPHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 2**30:.1f} GiB")
    if load.exists():
        print("machine shared; /tmp/team/LOAD at start:\n  " + "\n  ".join(load.read_text().strip().splitlines()[-8:]))
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench_distributed_"))
    run_dir = work / "run"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    times: dict[str, float] = {}
    failed: dict[str, str] = {}

    driver_peak = [0.0]

    def step(name: str, fn):
        reset_peak()
        t0 = time.perf_counter()
        try:
            out = fn()
        except Exception as exc:  # a task killed for memory and the like: the step fails, the rest may go on
            failed[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
            out = None
        times[name] = time.perf_counter() - t0
        peaks = memory.take_step_peak() if memory is not None else {}
        driver_peak[0] = max(driver_peak[0], vm("VmHWM"))
        state = "FAILED " + failed[name] if name in failed else "ok"
        print(f"[{name}] {times[name]:.1f} s, {state}; load average {os.getloadavg()[0]:.1f}; driver peak {vm('VmHWM'):.2f} GiB; "
              + ", ".join(f"{k} peak {v / 2**20:.2f} GiB" for k, v in peaks.items()), flush=True)
        return out

    memory = None
    mix = Mixture(args.n)
    n_files = step("generate", lambda: write_embeddings(run_dir / "embeddings", mix, args.n, args.file_rows))
    print(f"  {n_files} files, {sum(f.stat().st_size for f in (run_dir / 'embeddings').iterdir()) / 2**30:.2f} GiB, "
          f"{mix.components} components", flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    tmp = work / "tmp"
    tmp.mkdir(exist_ok=True)
    try:
        with cluster(env, tmp, int(args.object_store_gib * 2**30)) as (address, roots):
            memory = NodeMemory(roots)
            memory.start()
            ray.init(address=address, log_to_driver=False)
            for _ in range(60):
                if sum(n["Alive"] for n in ray.nodes()) == 3:
                    break
                time.sleep(2)
            nodes = {n["NodeManagerAddress"]: n["Resources"].get("CPU", 0) for n in ray.nodes() if n["Alive"]}
            print(f"cluster: {nodes} (node address: CPUs)", flush=True)
            memory.take_step_peak()
            cfg = IndexConfig()
            run = RunFolder(str(run_dir))
            files = step("keys", lambda: embedding_files(run))
            sample = np.sort(np.random.default_rng(7).choice(args.n, min(args.sample, args.n), replace=False))
            index_ids = None
            if not args.skip_index:
                step("index", lambda: build_index_parts(files, cfg, str(run_dir / "index"), None, runtime.map_tasks))
                # the sampled frames' vectors, read by tasks, then searched by a task per shard
                from enrich_ray.index.partitioned import read_sample
                found = step("index_search", lambda: search_index_parts(
                    str(run_dir / "index"), read_sample(files, sample, None, runtime.map_tasks), K + 1, None, runtime.map_tasks))
                if found is not None:
                    index_ids = np.array([[j for j in row if j != r][:K] for r, row in zip(sample, found[1])])
            figures = step("graph", lambda: build_graph(files, K, str(run_dir / "knn"), cfg, None, runtime.map_tasks))
            if figures is not None:
                print("  build_graph: " + json.dumps({k: v for k, v in figures.items() if k != "seed"}), flush=True)
            ray.shutdown()
            memory.take_step_peak()
            graph = step("graph_read", lambda: read_graph(str(run_dir / "knn")))
            frames_emb = step("matrix", lambda: load_embeddings(run))
            emb = frames_emb[1] if frames_emb is not None else None
            del frames_emb
            if emb is not None:
                truth = step("exact_sample", lambda: exact_top(emb, sample, K))
                if graph is not None:
                    print(f"  recall@{K} of the graph on {len(sample)} sampled frames (exact scan): "
                          f"{recall(graph.neighbors[sample], truth):.4f}", flush=True)
                if index_ids is not None:
                    print(f"  recall@{K} of the index (nprobe {cfg.nprobe}) on the same frames: {recall(index_ids, truth):.4f}", flush=True)
                if args.driver_graph:
                    from enrich_ray.index.knn import knn_graph

                    single = step("driver_graph", lambda: knn_graph(emb, K, cfg))
                    if single is not None:
                        print(f"  driver graph: {json.dumps({k: v for k, v in single.recall.items() if k != 'seed'})}; recall@{K} on "
                              f"the sampled frames (exact scan) {recall(single.neighbors[sample], truth):.4f}", flush=True)
                    del single
            if graph is not None and emb is not None:
                stats = step("redundancy", lambda: redundancy_stats(graph.nn_similarity))
                print(f"  1-NN similarity: mean {stats['mean']:.3f}; " + ", ".join(
                    f"{k} {v:.3f}" for k, v in stats.items() if k.startswith("share")), flush=True)
                dups = step("duplicates", lambda: archive_duplicates(graph, emb, AnalysisConfig(), cfg))
                if dups is not None:
                    print(f"  near-duplicate groups (embeddings' cosine >= {AnalysisConfig().near_duplicate_threshold}): "
                          f"{dups['group_id'].nunique()}, {len(dups)} frames", flush=True)
                z = step("outliers", lambda: robust_z(-neighbour_similarities(graph, emb, [K]))[:, 0])
                if z is not None:
                    print(f"  outlier evidence: {(z > AnalysisConfig().outlier_mad_k).sum()} frames beyond "
                          f"{AnalysisConfig().outlier_mad_k} robust SD at neighbour {K}", flush=True)
            del graph
            if emb is not None and args.picks:
                seed = seed_rows(args.n, SelectionConfig())
                ranking = step("enrich", lambda: enrich_greedy(emb, seed, min(args.picks, args.n - len(seed)), progress=True))
                if ranking is not None:
                    first = ranking.order[ranking.n_seed:ranking.n_seed + 1000]
                    print(f"  {len(ranking.order) - ranking.n_seed} picks after {ranking.n_seed} seeds; the first 1,000 "
                          f"reach {len(np.unique(mix.label[first]))} of {mix.components} components", flush=True)
            memory.stop.set()
            memory.join()
            print("\npeak memory per node (sum of its processes' RSS; largest process):")
            for name in roots:
                print(f"  {name}: {memory.peak_sum[name] / 2**20:.2f} GiB; {memory.peak_one[name] / 2**20:.2f} GiB")
            print(f"  driver (this process, beside the head): {driver_peak[0]:.2f} GiB (its own peak, VmHWM)")
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    print("\nwall time per step: " + ", ".join(f"{k} {v:.1f} s" for k, v in times.items()))
    if failed:
        print("FAILED steps: " + "; ".join(f"{k}: {v}" for k, v in failed.items()))
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
