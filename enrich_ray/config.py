"""Typed, validated configuration: YAML files in configs/, `--set section.key=value` overrides.

Every section is a dataclass; loading walks the YAML against the dataclass fields, so an
unknown key or a wrong type stops the run before any work, with a message naming the key.
Ranges live in one table (RANGES) and cross-checks in check_settings. Plain dataclasses rather
than pydantic models: the sections travel to Ray workers and actors as they are, the stages take
them without a validation layer, and the loader (about 60 lines) already names key, value and
what is allowed in one line, which is all pydantic would add here.
"""
from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the offending key."""


@dataclass
class RuntimeConfig:
    """Where and how Ray runs."""

    address: str | None = None  # None: RAY_ADDRESS, else start a local Ray
    num_cpus: int | None = None  # for a local Ray only; None: all cores
    no_progress_timeout_s: float = 600.0  # a stuck Ray Data job fails after this


@dataclass
class StorageConfig:
    """Object-store access; credentials fall back to the standard AWS environment variables."""

    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    session_token: str | None = None
    # How long the nightly catalog's lock holds before another run may take it over (a crashed run's
    # lock): longer than any night's run (the RayJob's deadline, 12 h), shorter than a day.
    lock_expiry_s: float = 43200.0


@dataclass
class PackConfig:
    """How sources become Parquet archive shards."""

    shard_max_bytes: int = 256 * 1024 * 1024
    row_group_bytes: int = 32 * 1024 * 1024
    patient_key_env: str = "ENRICH_RAY_PATIENT_KEY"  # the HMAC key's environment variable
    require_patient_key: bool = False  # true (production: the nightly CronJob): refuse to pack without the key
    # the environment variable holding a DICOMweb bearer token (Authorization: Bearer) for dicomweb:// sources and
    # export --to kos; the token itself never goes in a config. Unset or empty: HTTP basic, or no credentials
    dicomweb_bearer_env: str = "ENRICH_RAY_DICOMWEB_TOKEN"


@dataclass
class DecodeConfig:
    """Decoding and preprocessing of every image and frame to size x size float32 in [0, 1]."""

    size: int = 64
    crop: Literal["none", "center", "trim"] = "trim"
    trim_tolerance: float = 0.04  # a border row/column whose spread is below this is trimmed
    percentile_low: float = 0.5  # robust scaling when DICOM has no window
    percentile_high: float = 99.5
    reduced_resolution: bool = True  # JPEG 2000 / JPEG decode at reduced size where faithful
    max_image_pixels: int = 200_000_000  # decompression-bomb limit
    batch_size: int = 64


@dataclass
class VAEConfig:
    """The β-VAE (Burgess et al. 2018) and its training."""

    latent_dim: int = 128
    loss: Literal["beta", "capacity"] = "beta"
    beta: float = 0.1
    gamma: float = 100.0
    capacity_max: float = 100.0  # nats: about the KL that β = 0.1 settles at on BUSI / PneumoniaMNIST
    capacity_iters: int = 2_000  # steps; 5,000 frames at batch 32 take ~140 steps an epoch
    lr: float = 1e-3
    batch_size: int = 32  # more steps per epoch: this small VAE leaves the mean image only after ~200
    max_epochs: int = 30
    # the training's budget in optimiser steps (None: max_epochs alone); bench_curate prints the steps
    # taken and the median step time, so a budget can be set from the seconds a user will wait
    max_steps: int | None = None
    patience: int = 4
    sample_size: int = 5000
    val_fraction: float = 0.1
    seed: int = 0


@dataclass
class EmbedConfig:
    """The embedding stage: which embedder, and its actor pool."""

    embedder: Literal["vae", "pixels", "precomputed"] = "vae"
    model: str | None = None  # a trained model folder; None: train one in the run
    precomputed_column: str = "embedding"
    pixel_size: int = 16  # side of the raw-pixel baseline
    pixel_center: bool = True  # subtract the mean image before normalising
    num_actors: int = 1
    num_gpus: float = 0.0
    batch_size: int = 256
    amp: bool = True  # mixed precision on GPU (bfloat16 autocast)
    fail_after_batches: int | None = None  # fault injection for tests: an actor dies once


@dataclass
class IndexConfig:
    """The sharded similarity index and the kNN graph."""

    kind: Literal["auto", "flat", "ivf", "hnsw"] = "auto"
    k: int = 10
    shard_size: int = 1_000_000
    nlist: int | None = None  # None: about 4*sqrt(N)
    nprobe: int = 16
    hnsw_m: int = 32
    train_sample: int = 100_000
    # from this many frames curate builds the index and the graph in Ray tasks that read the embeddings
    # files themselves (index/partitioned.py); below it, on the driver. 0: always in tasks
    distributed_min_frames: int = 1_000_000


@dataclass
class AnalysisConfig:
    """Redundancy, near-duplicates and outliers."""

    near_duplicate_threshold: float = 0.975  # embeddings' cosine a near member reaches (analysis/duplicates.py)
    near_duplicate_content_threshold: float = 0.90  # and its thumbnails' cross-correlation, both to the representative
    near_duplicate_content_alone: float = 0.99  # or the thumbnails' cross-correlation alone reaches this
    outlier_mad_k: float = 3.5
    outlier_tail_share: float | None = 0.03  # the archive's cut-off: see analysis/outliers.py cutoff (None: outlier_mad_k alone)
    outlier_space: Literal["both", "content", "embedding"] = "both"  # where outliers' neighbourhoods are read (analysis/outliers.py)
    outlier_max_share: float = 0.05  # at most this share of the frames is flagged: foreign frames are a minority
    outlier_scales: list[int] = field(default_factory=lambda: [10, 50])  # k-th neighbours read (see analysis/outliers.py)
    outlier_rare_share: float = 0.05  # a header value held by fewer frames than this share is rare
    outlier_colour_min: float = 0.1  # decode's colorfulness (mean max-min channel, 0-1) above which a frame is in colour
    leakage_split: str | None = None  # a train/val/test split to check for leaks: a .csv/.parquet file or an archive column (pipelines/leakage.py)


Ranker = Literal["enrich", "random", "examine", "smi", "typiclust", "typiclust_enrich"]  # selection/rankers.py
RANKER_NAMES: tuple[str, ...] = typing.get_args(Ranker)


@dataclass
class SelectionConfig:
    """The ranker and its seed set."""

    ranker: Ranker = "enrich"
    k: int | None = None  # None: rank every frame
    # The seed set: a random draw of seed_fraction of the frames (at least one), or seed_count frames
    # when that is set. 2% is the seed set the evaluation measured; grown from one frame, ENRICH was
    # worse than random at small budgets on the ultrasound sets (docs/evaluation.md, the seventh run).
    seed_count: int | None = None
    seed_fraction: float | None = 0.02
    seed_manifest: str | None = None  # image ids already labeled
    random_seed: int = 0
    # typiclust_enrich: TypiClust's typical round picks this share of the frames (at least as many as the
    # seed set; 0: as many as the seed set), then ENRICH; 0.02 is the round the evaluation measured (a 2% seed set, doubled)
    typiclust_fraction: float = 0.02
    examine_exact: bool = True
    examine_exponential: bool = False
    examine_most_valuable_first: bool = True
    smi_function: Literal["flvmi", "gcmi", "flqmi", "logdetmi"] = "flvmi"
    smi_query: str | None = None  # image ids (a file) or a folder of exemplar images
    smi_eta: float = 1.0  # FLVMI and FLQMI: weight of the query term, >= 0 (above 1 is usual)
    logdet_eta: float = 1.0  # LogDetMI: query coupling in [0, 1] (above 1 its kernel is indefinite)
    smi_lambda: float = 1.0
    smi_pool: int = 2000  # FLQMI and LogDetMI rank only the pool of frames nearest the query
    seconds_per_image: float = 3.0  # classification label time; the paper used 3 s
    seconds_per_segmentation: float = 300.0
    exclude_junk: bool = True  # flagged foreign frames, blank frames and exact copies leave the ranking
    # balanced selection (selection/quota.py): at most n ranked frames per group of a key column, e.g.
    # {patient_key: 2, modality: 100, station: 50}; the seeds count; enrich only
    quota: dict[Literal["patient_key", "study_uid", "series_uid", "modality", "station"], int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.smi_eta < 0:
            raise ConfigError(f"selection.smi_eta: {self.smi_eta} must be >= 0")
        if not 0 <= self.logdet_eta <= 1:
            raise ConfigError(f"selection.logdet_eta: {self.logdet_eta} must lie in [0, 1] (LogDetMI's kernel is indefinite above 1)")
        if self.smi_lambda <= 0:
            raise ConfigError(f"selection.smi_lambda: {self.smi_lambda} must be > 0")
        if self.smi_pool < 1:
            raise ConfigError(f"selection.smi_pool: {self.smi_pool} must be at least 1")
        for column, n in self.quota.items():
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ConfigError(f"selection.quota.{column}: {n!r} must be a whole number of frames, at least 1")
        if self.quota and self.ranker != "enrich":
            raise ConfigError(f"selection.quota holds for the enrich ranker only (the quota greedy is ENRICH's), "
                              f"not {self.ranker}: drop the quota or rank with enrich")


@dataclass
class ReportConfig:
    """The human-readable report."""

    thumbnails: bool = True  # burned-in text can carry patient data: switch off to omit images
    gallery_size: int = 24


@dataclass
class EvaluateConfig:
    """The evaluation job (paper Fig. 1 and 3): does ranking help on a labeled dataset, and how much labeling does it save?"""

    rankers: list[Literal[Ranker, "enrich_clean"]] = field(default_factory=lambda: ["enrich", "random", "examine"])
    embedders: list[Literal["vae", "vae_ensemble", "pixels"]] = field(default_factory=lambda: ["vae", "pixels"])
    ensemble_size: int = 3  # vae_ensemble: β-VAEs trained apart (seeds vae.seed + 10, + 20, ...), their unit codes joined
    fractions: list[float] = field(default_factory=lambda: [0.02, 0.05, 0.1, 0.2, 0.4])  # the first: the random seed set
    increment: int | None = None  # the paper's fixed increments: seed set, then +increment images until the full set
    replicates: int = 3  # seed sets, each ranked by every ranker
    # each seed set trains its own β-VAE (seed vae.seed + 100 x replicate), so the AUCs of a point span the
    # embedder's training variance too; false: one β-VAE (vae.seed) for every seed set. A given embed.model serves all
    vae_per_replicate: bool = True
    models_per_replicate: int = 10  # classifiers trained on each ranked subset, seeded apart
    query_label: int | str | None = None  # smi's query: the seed set's images of this class
    # a safety cap per classifier, set so that early stopping ends the training, not the cap: this many epochs of its subset ...
    max_epochs: int = 200
    min_steps: int = 1000  # ... but at least this many steps
    max_steps: int = 3000  # ... and at most this many
    check_every: int = 25  # validation check every max(one epoch, this many) steps
    patience: int = 4  # checks without a higher validation AUC before stopping
    batch_size: int = 64
    lr: float = 2e-3
    width: int = 16  # channels of the classifier's first stage
    threads: int = 0  # torch CPU threads; 0: torch's default (OMP_NUM_THREADS, else the cores)
    alpha: float = 0.05  # Mann-Whitney level for the marks and for 'matches the full set'
    power: float = 0.8  # for the smallest detectable difference reported beside each p
    natural_images: bool = True  # Fig. 1: embed scikit-image's bundled faces and photographs the same way
    label_column: str = "label"  # archives only
    split_column: str = "split"  # archives only: train | val | test
    val_fraction: float = 0.1  # data without a val split: this share of train (per class, seeded) validates
    test_fraction: float = 0.2  # a folder of class subfolders: this share (per class, seeded) is the test split
    seed: int = 0


@dataclass
class Config:
    """The whole configuration of a job."""

    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    pack: PackConfig = field(default_factory=PackConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)


SECRET_WORDS = ("secret", "token", "password", "access_key", "credential", "key_id")


def _check_value(path: str, value: Any, hint: Any) -> Any:
    """Return value coerced to hint, or raise ConfigError naming path."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_value(path, value, arg)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{path}: {value!r} fits none of {hint}")
    if origin is Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            raise ConfigError(f"{path}: {value!r} is not one of {', '.join(map(repr, allowed))}")
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        key_hint, value_hint = typing.get_args(hint)
        return {_check_value(path, k, key_hint): _check_value(f"{path}.{k}", v, value_hint) for k, v in value.items()}
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        return [_check_value(f"{path}[{i}]", item, typing.get_args(hint)[0]) for i, item in enumerate(value)]
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping of settings, got {type(value).__name__}")
        return _build(hint, value, path)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):  # PyYAML reads 3e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{path}: unsupported setting type {hint}")


def _build(cls: type, data: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(
            f"unknown setting '{where}{unknown[0]}' (known in {prefix or 'the top level'}: {', '.join(sorted(names))})"
        )
    kwargs = {k: _check_value(f"{prefix}.{k}" if prefix else k, v, hints[k]) for k, v in data.items()}
    return cls(**kwargs)


def _parse_scalar(text: str) -> Any:
    """A --set value as YAML reads it, so numbers, booleans and null work."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `section.key=value` overrides to a raw config mapping."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected section.key=value")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {part} is not a section")
        node[parts[-1]] = _parse_scalar(text)
    return data


def packaged_config(name: str) -> Traversable:
    """The default config `name` (e.g. 'curate.yaml'): package data of an installed enrich_ray, else the
    repository's configs/ folder, for a source tree run as is (`python jobs/curate.py` in a Ray job)."""
    try:
        return resources.files("enrich_ray.configs") / name
    except ModuleNotFoundError:
        return Path(__file__).resolve().parents[1] / "configs" / name


def load_config(path: str | Path | Traversable | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (a path, or a packaged_config) or the defaults, apply overrides, validate every key and type."""
    data: dict = {}
    if path is not None:
        p = Path(path) if isinstance(path, (str, os.PathLike)) else path
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: expected a mapping of sections at the top level")
    data = apply_overrides(data, overrides or [])
    return check_settings(_build(Config, data))


def check_analysis(cfg: AnalysisConfig) -> None:
    """The ranges of the duplicate and outlier settings (analysis/duplicates.py, analysis/outliers.py)."""
    for key in ("near_duplicate_threshold", "near_duplicate_content_threshold", "near_duplicate_content_alone"):
        if not -1.0 <= getattr(cfg, key) <= 1.0:
            raise ConfigError(f"analysis.{key} must be a similarity in [-1, 1], got {getattr(cfg, key)}")
    if cfg.near_duplicate_content_alone < cfg.near_duplicate_content_threshold:
        raise ConfigError(f"analysis.near_duplicate_content_alone ({cfg.near_duplicate_content_alone}) must be at least "
                          f"analysis.near_duplicate_content_threshold ({cfg.near_duplicate_content_threshold})")
    if cfg.outlier_mad_k <= 0:
        raise ConfigError(f"analysis.outlier_mad_k must be positive (a cut-off beyond the median), got {cfg.outlier_mad_k}")
    if cfg.outlier_tail_share is not None and not 0 < cfg.outlier_tail_share < 0.5:
        raise ConfigError(f"analysis.outlier_tail_share must lie in (0, 0.5) or be null, got {cfg.outlier_tail_share}")
    if not cfg.outlier_scales or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in cfg.outlier_scales):
        raise ConfigError(f"analysis.outlier_scales must be positive integers, got {cfg.outlier_scales!r}")
    if not 0 < cfg.outlier_rare_share < 0.5:
        raise ConfigError(f"analysis.outlier_rare_share must lie in (0, 0.5), got {cfg.outlier_rare_share}")
    if not 0 < cfg.outlier_max_share <= 1:
        raise ConfigError(f"analysis.outlier_max_share must lie in (0, 1], got {cfg.outlier_max_share}")
    if cfg.outlier_colour_min < 0:
        raise ConfigError(f"analysis.outlier_colour_min must be non-negative, got {cfg.outlier_colour_min}")


# The range of every numeric setting: (lowest, highest, lowest excluded); None is no bound. A setting
# whose value may be None (e.g. selection.k) is checked only when set. Kept beside the dataclasses
# rather than in a typed-settings library: the sections stay plain dataclasses every stage imports,
# and one table says every range once (the evaluation job's own cross-checks are in
# pipelines/evaluate.check_evaluate_config).
RANGES: dict[str, tuple[float | None, float | None, bool]] = {
    "runtime.num_cpus": (1, None, False),
    "storage.lock_expiry_s": (0, None, True),
    "runtime.no_progress_timeout_s": (0, None, True),
    "pack.shard_max_bytes": (1, None, False),
    "pack.row_group_bytes": (1, None, False),
    "decode.size": (8, 4096, False),
    "decode.trim_tolerance": (0, 1, False),
    "decode.percentile_low": (0, 100, False),
    "decode.percentile_high": (0, 100, False),
    "decode.max_image_pixels": (1, None, False),
    "decode.batch_size": (1, None, False),
    "vae.latent_dim": (1, None, False),
    "vae.beta": (0, None, False),
    "vae.gamma": (0, None, False),
    "vae.capacity_max": (0, None, False),
    "vae.capacity_iters": (1, None, False),
    "vae.lr": (0, None, True),
    "vae.batch_size": (1, None, False),
    "vae.max_epochs": (1, None, False),
    "vae.max_steps": (1, None, False),
    "vae.patience": (1, None, False),
    "vae.sample_size": (2, None, False),
    "vae.val_fraction": (0, 1, True),
    "embed.pixel_size": (1, None, False),
    "embed.num_actors": (1, None, False),
    "embed.num_gpus": (0, None, False),
    "embed.batch_size": (1, None, False),
    "embed.fail_after_batches": (1, None, False),
    "index.k": (1, None, False),
    "index.shard_size": (1, None, False),
    "index.nlist": (1, None, False),
    "index.nprobe": (1, None, False),
    "index.hnsw_m": (2, None, False),
    "index.train_sample": (1, None, False),
    "index.distributed_min_frames": (0, None, False),
    "selection.k": (0, None, False),
    "selection.seed_count": (1, None, False),
    "selection.seed_fraction": (0, 1, True),
    "selection.typiclust_fraction": (0, 1, False),
    "selection.seconds_per_image": (0, None, False),
    "selection.seconds_per_segmentation": (0, None, False),
    "report.gallery_size": (0, None, False),
}


def check_ranges(cfg: Config) -> None:
    """Every setting of RANGES within its range, else one ConfigError naming the key, the value and the range."""
    for key, (low, high, open_low) in RANGES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value is None:
            continue
        below = value <= low if open_low else value < low
        if (low is not None and below) or (high is not None and value > high):
            lo = "" if low is None else f"{'>' if open_low else '>='} {low}"
            hi = "" if high is None else f"<= {high}"
            raise ConfigError(f"{key}: {value!r} is out of range (allowed: {' and '.join(b for b in (lo, hi) if b)})")
    if cfg.decode.percentile_low >= cfg.decode.percentile_high:
        raise ConfigError(f"decode.percentile_low ({cfg.decode.percentile_low}) must be below decode.percentile_high "
                          f"({cfg.decode.percentile_high})")


def check_settings(cfg: Config) -> Config:
    """Cross-checks between sections and ranges, before any work: what could only hang or fail later."""
    check_ranges(cfg)
    check_analysis(cfg.analysis)
    cpus, actors = cfg.runtime.num_cpus, cfg.embed.num_actors
    if cpus is not None and cfg.runtime.address is None and cpus <= actors:
        raise ConfigError(
            f"runtime.num_cpus={cpus} leaves no CPU beside the {actors} embedding actor(s) (embed.num_actors): "
            f"the reads that feed them could never start; allow at least {actors + 1}"
        )
    if cfg.embed.num_gpus > 0 and cfg.runtime.address is None and not os.environ.get("RAY_ADDRESS"):
        import torch

        if torch.cuda.device_count() < cfg.embed.num_gpus:
            raise ConfigError(
                f"embed.num_gpus={cfg.embed.num_gpus:g} but this machine has {torch.cuda.device_count()} GPU(s) and no "
                f"cluster is named (runtime.address, RAY_ADDRESS): the embedding actors would wait forever; set embed.num_gpus=0"
            )
    return cfg


def config_dict(cfg: Any, redact: bool = True) -> dict:
    """The config as plain data; secrets replaced by '***' when redact is true."""
    out = dataclasses.asdict(cfg)
    if redact:
        _redact(out)
    return out


def _redact(node: dict) -> None:
    for key, value in node.items():
        if isinstance(value, dict):
            _redact(value)
        elif value is not None and any(word in key.lower() for word in SECRET_WORDS):
            node[key] = "***"


def config_yaml(cfg: Config) -> str:
    """The effective config as YAML text, secrets redacted: what a run saves as config.yaml."""
    return yaml.safe_dump(config_dict(cfg), sort_keys=False)
