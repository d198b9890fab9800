"""Typed configs, one dataclass per concern: ``TrainConfig`` (a run), ``SlurmConfig`` (its jobs'
resources), ``PreprocessConfig`` (a dataset). Each is built the same way: dataclass defaults, then
a file (TOML or JSON), then ``key=value`` overrides (``build``).

Every field carries its help text in ``metadata["help"]`` (shown by ``gruv train --help-config``
and by the CLI's ``--help``). An unknown key is an error that lists the valid keys.

``resolve`` turns a TrainConfig and a dataset manifest into the config a run trains with; the
sweep's validation on the login node and the training job call the same function.

This module imports neither torch nor numpy.
"""
from __future__ import annotations

import dataclasses
import json
import math
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path


from .errors import ConfigError  # noqa: F401  (re-exported)


CELLS = ("lstm", "gru", "lstm-fused")
RESUME = ("auto", "require", "never")
DATA_ON_DEVICE = ("auto", "true", "false")


def opt(default, help: str):
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    # model
    cell: str = opt("lstm", "recurrent cell: lstm (the paper's peephole LSTM), gru, or lstm-fused (torch.nn.LSTM)")
    hidden: int = opt(1024, "hidden size H (the paper goes up to 2048)")
    layers: int = opt(1, "number of stacked recurrent layers (the paper uses 1)")
    # data
    data: str = opt("", "dataset directory made by `gruv preprocess`")
    artists: list[str] = opt([], "artists of the dataset to train on; empty = all")
    sample_rate: int | None = opt(None, "expected dataset sample rate; None = take the dataset's")
    block_size: int | None = opt(None, "expected dataset block size; None = take the dataset's")
    clip_blocks: int | None = opt(None, "expected blocks per clip; None = take the dataset's")
    transform: str | None = opt(None, "expected feature transform (fft|rfft); None = take the dataset's")
    feature_dim: int | None = opt(None, "feature dimension D; filled from the dataset")
    # optimization
    epochs: int = opt(2000, "epochs to train (the paper: 2000)")
    batch_size: int = opt(5, "global batch size, split across ranks (the original code: 5)")
    optimizer: str = opt("rmsprop", "rmsprop (the original code's), adam or sgd")
    lr: float = opt(1e-3, "learning rate (the original code: 1e-3)")
    grad_clip: float = opt(0.0, "clip the global gradient norm to this value; 0 = off")
    seed: int = opt(0, "random seed; rank r uses seed + r for its own RNG")
    limit_train_batches: int = opt(0, "stop each epoch after this many batches; 0 = the whole split")
    # checkpoints and logging
    ckpt_every_min: float = opt(10.0, "also checkpoint mid-epoch after this many minutes of training")
    ckpt_every_epochs: int = opt(1, "checkpoint every N epochs (the last epoch always)")
    keep_last: int = opt(3, "keep the newest K step checkpoints (plus the best on dev)")
    log_every_steps: int = opt(20, "log train scalars to TensorBoard every N optimizer steps")
    gen_every_epochs: int = opt(0, "log a generated clip to TensorBoard every N epochs; 0 = only at the end")
    gen_seconds: float = opt(2.0, "seconds of seed for the TensorBoard audio sample; 0 = none")
    # runtime
    workers: str | int = opt("auto", "DataLoader worker processes per rank; auto: 0 on the CPU or with 4 CPUs or "
                                      "fewer per process (a worker would take a core from training), else "
                                      "min(4, CPUs - 1)")
    device: str = opt("auto", "auto (cuda if available), cpu or cuda")
    amp: bool = opt(True, "bf16 autocast and TF32 on CUDA (ignored on CPU)")
    resume: str = opt("auto", "auto: resume from the newest readable checkpoint, else start; require: a readable "
                              "checkpoint must exist; never: start over (old checkpoints, metrics and TensorBoard "
                              "files are moved to discarded-<time>/ in the run directory, never deleted)")
    data_on_device: str = opt("auto", "keep the train and dev clips in device memory and batch by on-device gathers "
                              "(no DataLoader): auto (when they fit in 25% of free GPU memory, or on the CPU of "
                              "available RAM shared by the ranks), true, or false (stream from the HDF5 shards)")

    def __post_init__(self):
        if isinstance(self.data_on_device, str):  # "False" on a command line means false
            self.data_on_device = self.data_on_device.lower()

    def validate(self) -> None:
        if self.cell not in CELLS:
            raise ConfigError(f"cell: {self.cell!r} is not one of {', '.join(CELLS)}")
        if self.optimizer not in ("rmsprop", "adam", "sgd"):
            raise ConfigError(f"optimizer: {self.optimizer!r} is not one of rmsprop, adam, sgd")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"device: {self.device!r} is not one of auto, cpu, cuda")
        if self.resume not in RESUME:
            raise ConfigError(f"resume: {self.resume!r} is not one of {', '.join(RESUME)}")
        if self.data_on_device not in DATA_ON_DEVICE:
            raise ConfigError(f"data_on_device: {self.data_on_device!r} is not one of {', '.join(DATA_ON_DEVICE)}")
        for k in ("hidden", "layers", "epochs", "batch_size", "keep_last", "ckpt_every_epochs", "log_every_steps"):
            if getattr(self, k) < 1:
                raise ConfigError(f"{k}: must be >= 1, got {getattr(self, k)}")
        for k in ("seed", "limit_train_batches", "gen_every_epochs"):
            if getattr(self, k) < 0:
                raise ConfigError(f"{k}: must be >= 0, got {getattr(self, k)}")
        if self.workers != "auto" and not (isinstance(self.workers, int) and self.workers >= 0):
            raise ConfigError(f"workers: must be auto or an integer >= 0, got {self.workers!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"lr: must be a finite number > 0, got {self.lr}")
        for k in ("grad_clip", "ckpt_every_min", "gen_seconds"):
            v = getattr(self, k)
            if not (math.isfinite(v) and v >= 0):
                raise ConfigError(f"{k}: must be a finite number >= 0, got {v}")


@dataclass
class SlurmConfig:
    partition: str | None = opt(None, "Slurm partition")
    account: str | None = opt(None, "Slurm account to charge")
    qos: str | None = opt(None, "quality of service")
    constraint: str | None = opt(None, "node feature constraint (e.g. a100)")
    time_min: int = opt(1440, "time limit per job, in minutes; longer runs requeue and resume")
    nodes: int = opt(1, "nodes per run")
    gpus_per_node: int = opt(0, "GPUs per node (one task per GPU)")
    tasks_per_node: int = opt(1, "tasks (training processes) per node")
    cpus_per_task: int = opt(2, "CPUs per task (DataLoader workers + 1)")
    mem_gb: float = opt(4.0, "memory per node, GB")
    array_parallelism: int = opt(64, "at most this many runs of one array at a time")
    signal_delay_s: int = opt(120, "USR2 this many seconds before the time limit: time to checkpoint")
    max_num_timeout: int = opt(1000, "requeues allowed on time limit/preemption (long runs cross many limits)")
    requeue: bool = opt(True, "let Slurm requeue the job on node failure or preemption")
    setup: list[str] = opt([], "shell lines run before training (module load, conda activate ...)")
    additional: dict = opt({}, "extra sbatch parameters, e.g. {exclude = 'node7'}")

    def validate(self) -> None:
        for k in ("nodes", "tasks_per_node", "cpus_per_task", "array_parallelism", "time_min"):
            if getattr(self, k) < 1:
                raise ConfigError(f"slurm.{k}: must be >= 1, got {getattr(self, k)}")
        if self.gpus_per_node < 0 or not (math.isfinite(self.mem_gb) and self.mem_gb > 0):
            raise ConfigError("slurm.gpus_per_node must be >= 0 and slurm.mem_gb > 0")
        if self.gpus_per_node and self.tasks_per_node != self.gpus_per_node:
            raise ConfigError(f"slurm.tasks_per_node ({self.tasks_per_node}) must equal slurm.gpus_per_node "
                              f"({self.gpus_per_node}): one training process per GPU")
        if self.signal_delay_s >= self.time_min * 60:
            raise ConfigError(f"slurm.signal_delay_s ({self.signal_delay_s}) must be shorter than the time limit")

    @property
    def world_size(self) -> int:
        return self.nodes * self.tasks_per_node


TRANSFORMS = ("fft", "rfft")
DTYPES = ("float32", "float16")


@dataclass
class PreprocessConfig:
    sample_rate: int = opt(44100, "target sample rate (Hz); every song is resampled to it")
    block_size: int = opt(11025, "samples per block N (11025 = 0.25 s at 44.1 kHz, the paper's)")
    clip_blocks: int = opt(40, "blocks per training clip (40 = 10 s, the paper's)")
    transform: str = opt("fft", "fft ([Re|Im] of the full DFT, 2N values, the paper's) or rfft (the non-redundant half)")
    dev_fraction: float = opt(0.2, "fraction of each artist's songs held out as the dev split")
    seed: int = opt(0, "seed of the song-level train/dev split")
    shard_mb: float = opt(512.0, "upper bound of one shard's size, MiB")
    shard_clips: int = opt(0, "upper bound of clips per shard (0: the size bound only)")
    dtype: str = opt("float32", "stored value type: float32, or float16 (half the bytes; read back as float32)")

    def validate(self) -> None:
        if self.transform not in TRANSFORMS:
            raise ConfigError(f"transform: {self.transform!r} is not one of {', '.join(TRANSFORMS)}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype: {self.dtype!r} is not one of {', '.join(DTYPES)}")
        for k, lo in (("sample_rate", 1), ("block_size", 2), ("clip_blocks", 1)):
            if getattr(self, k) < lo:
                raise ConfigError(f"{k}: must be >= {lo}, got {getattr(self, k)}")
        if not (math.isfinite(self.dev_fraction) and 0 <= self.dev_fraction < 1):
            raise ConfigError(f"dev_fraction: must be in [0, 1), got {self.dev_fraction}")
        if not (math.isfinite(self.shard_mb) and self.shard_mb > 0):
            raise ConfigError(f"shard_mb: must be a finite number > 0, got {self.shard_mb}")
        if self.shard_clips < 0:
            raise ConfigError(f"shard_clips: must be >= 0, got {self.shard_clips}")

    def params(self) -> dict:
        """The parameters a dataset records in its manifest (and a run can pin)."""
        from .features import feature_dim, storage_dim
        return {
            "sample_rate": self.sample_rate, "block_size": self.block_size, "clip_blocks": self.clip_blocks,
            "transform": self.transform, "feature_dim": feature_dim(self.transform, self.block_size),
            "storage_dim": storage_dim(self.block_size), "dtype": self.dtype,
            "dev_fraction": self.dev_fraction, "seed": self.seed,
        }


# Keys that may change between a run's starts without making it a different run.
RUNTIME_KEYS = {"data", "epochs", "workers", "device", "resume", "ckpt_every_min", "ckpt_every_epochs", "keep_last",
                "log_every_steps", "gen_every_epochs", "gen_seconds", "data_on_device"}


def field_names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def help_text(cls) -> str:
    hints = typing.get_type_hints(cls)
    lines = []
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        lines.append(f"  {f.name} ({_type_name(hints[f.name])}, default {default!r}): {f.metadata.get('help', '')}")
    return "\n".join(lines)


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(cls, key: str, value, from_string: bool):
    tp = typing.get_type_hints(cls)[key]
    args = typing.get_args(tp)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), tp) if optional else tp
    if from_string:
        if optional and value.lower() in ("none", "null", ""):
            return None
        if typing.get_origin(base) is list:
            return [s for s in (p.strip() for p in value.split(",")) if s]
        if base is bool:
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{key}: may not be None")
    if set(args) == {str, int}:  # workers: a number is an int, any other word is left to validate()
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                return value
        raise ConfigError(f"{key}: expected a word or an integer, got {value!r}")
    try:
        if typing.get_origin(base) is list:
            if isinstance(value, str):
                value = [value]
            return [str(v) for v in value]
        if base is dict:
            if not isinstance(value, dict):
                raise ValueError
            return dict(value)
        if base is bool and not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        if base is str and isinstance(value, bool):  # a TOML true for a string key such as data_on_device
            return "true" if value else "false"
        if base is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        return base(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: expected {_type_name(base)}, got {value!r}") from None


def check_keys(cls, keys, source: str) -> None:
    valid = field_names(cls)
    unknown = [k for k in keys if k not in valid]
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(map(repr, unknown))} in {source}; valid keys: {', '.join(valid)}")


def read_file(path: str | Path) -> dict:
    path = Path(path)
    try:
        if path.suffix == ".json":
            return json.loads(path.read_text())
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"{path}: cannot parse ({e})") from None


def table(raw: dict, key: str, where: str) -> dict:
    """``raw[key]`` as a dict (a TOML table), or a one-line error naming it."""
    v = raw.get(key, {})
    if not isinstance(v, dict):
        raise ConfigError(f"{where}: {key}: expected a table, got {v!r}")
    return dict(v)


def parse_overrides(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise ConfigError(f"override {item!r}: expected key=value")
        out[k.strip()] = v.strip()
    return out


def build(cls, values: dict | None = None, overrides: dict[str, str] | None = None, source: str = "config"):
    """defaults <- values (typed, e.g. from a file) <- overrides (strings from the command line)."""
    kw = {}
    values = values or {}
    check_keys(cls, values, source)
    for k, v in values.items():
        kw[k] = _coerce(cls, k, v, from_string=False)
    overrides = overrides or {}
    check_keys(cls, overrides, "the command line")
    for k, v in overrides.items():
        kw[k] = _coerce(cls, k, v, from_string=True)
    cfg = cls(**kw)
    if hasattr(cfg, "validate"):
        cfg.validate()
    return cfg


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def resolve(cfg: TrainConfig, manifest: dict, world_size: int = 1, gpus: int | None = None,
            source: str = "config") -> TrainConfig:
    """The config a run trains with, from the config asked for and the dataset's manifest.

    Dataset parameters the config left open (None) are filled in; one it pins to another value is
    refused by name, and so is an artist the dataset lacks. ``world_size`` is the number of
    training processes the batch is split over; ``gpus`` the GPUs a process will see (None: not
    known here). Pure: returns a new config and never changes ``cfg``."""
    from .manifest import PARAM_KEYS, check_params, select_artists
    check_params(manifest, {k: getattr(cfg, k) for k in PARAM_KEYS}, source=source)
    select_artists(manifest, cfg.artists)
    if cfg.batch_size % world_size:
        raise ConfigError(f"batch_size: {cfg.batch_size} is not divisible by the {world_size} training processes")
    if cfg.device == "cuda" and gpus == 0:
        raise ConfigError("device: 'cuda' is asked for, but no GPU is visible")
    return dataclasses.replace(cfg, **{k: manifest["params"][k] for k in PARAM_KEYS})


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask, and no more than Slurm's CPUs per task."""
    import os
    cpus = len(os.sched_getaffinity(0))
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "")
    return min(cpus, int(slurm)) if slurm.isdigit() and int(slurm) > 0 else cpus


def resolve_workers(workers: str | int, device_type: str, cpus: int) -> int:
    """DataLoader workers per rank. ``auto``: 0 when the model trains on the CPU or the process has
    4 CPUs or fewer (on 2 cores a worker ran at 0.60x: it takes a core from the compute threads),
    else min(4, cpus - 1), one core left to the training process."""
    if workers != "auto":
        return int(workers)
    if device_type == "cpu" or cpus <= 4:
        return 0
    return min(4, cpus - 1)


def diff(a: dict, b: dict, ignore=()) -> list[str]:
    """Keys whose values differ, as 'key: a -> b' strings."""
    keys = sorted((set(a) | set(b)) - set(ignore))
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys if a.get(k) != b.get(k)]
