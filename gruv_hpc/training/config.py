"""``TrainConfig``: one training run; ``resolve`` turns it and a dataset manifest into the config
the run trains with (the sweep's validation on the login node and the training job call the same
function).

This module imports neither torch nor numpy.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from gruv_hpc.config import check_number, opt, to_dict
from gruv_hpc.errors import ConfigError
from gruv_hpc.training import cells
from gruv_hpc.training.optim import OPTIMIZERS

RESUME = ("auto", "require", "never")
# The largest lr accepted: the optimizers compute in float32, and a larger lr (1e308) overflowed
# inside torch's optimizer step with a traceback. Anything far below it that still diverges is
# caught by the trainer's non-finite loss check, with its own one-line message (a test drives a
# model to divergence with SGD at lr=1e30).
MAX_LR = 3.4028234663852886e38  # float32 max (this module imports no numpy)
DATA_ON_DEVICE = ("auto", "true", "false")
# What the model outputs (training/model.py): the next frame (the paper's), its change from the current
# one, or that change with a learned per-dimension gain on the current frame (a damped delta).
PREDICT = ("next", "delta", "damped")
# What the model's output says of the next frame (training/model.py): its mean alone, trained on eq. 1's L2
# loss (the paper's), or a Gaussian, mean and per-dimension log-variance, trained on its negative log-likelihood.
HEADS = ("mean", "gaussian")
STEP_GRAPHS = ("auto", "graph", "eager")


def graph_unsupported(optimizer: str, lr_schedule: str) -> str | None:
    """Why a training step with this optimizer cannot be replayed from a CUDA graph, or None
    (training/step.py)."""
    if optimizer in OPTIMIZERS and not OPTIMIZERS[optimizer].capturable and lr_schedule != "constant":
        return ("torch's SGD has no capturable form, so a graph would bake its lr in; use lr_schedule=constant, "
                "another optimizer, or step_graph=eager")
    return None


@dataclass
class TrainConfig:
    # model
    cell: str = opt(cells.DEFAULT, f"recurrent cell: {cells.describe()}")
    hidden: int = opt(1024, "hidden size H (the paper goes up to 2048)")
    layers: int = opt(1, "number of stacked recurrent layers (the paper uses 1)")
    predict: str = opt("next", "what the model outputs: next (the next frame, the paper's), delta (the change "
                               "from the current frame, added to it in normalized units: zero output weights are "
                               "persistence, next = current) or damped (delta on the current frame times a learned "
                               "per-dimension gain, 1 at the start: a free run forgets what is fed back)")
    head: str = opt("mean", "the output head: mean (the prediction alone, eq. 1's L2 loss, the paper's) or gaussian "
                            "(the mean and a per-dimension log-variance from a second affine H->D, trained on the "
                            "Gaussian negative log-likelihood; --temperature then samples at the model's own spread, "
                            "frame by frame, instead of its train residual std)")
    # data
    data: str = opt("", "dataset directory made by `gruv preprocess`")
    artists: list[str] = opt([], "artists of the dataset to train on; empty = all")
    std_floor: float = opt(0.1, "normalization: each feature's std is taken as at least this times the corpus's RMS "
                                "spread, rescaled so predicting the train mean scores 1 on train "
                                "(dataset/manifest.py floored_std); 0 = the paper's exact per-dimension z-scoring")
    sample_rate: int | None = opt(None, "expected dataset sample rate; None = take the dataset's")
    block_size: int | None = opt(None, "expected dataset block (frame) size; None = take the dataset's")
    hop: int | None = opt(None, "expected dataset hop between frames; None = take the dataset's")
    clip_blocks: int | None = opt(None, "expected blocks per clip; None = take the dataset's")
    transform: str | None = opt(None, "expected feature transform (fft, rfft, ...); None = take the dataset's")
    feature_dim: int | None = opt(None, "feature dimension D; filled from the dataset")
    # optimization
    epochs: int = opt(2000, "epochs to train (the paper: 2000)")
    batch_size: int = opt(5, "global batch size, split across ranks (the original code: 5)")
    optimizer: str = opt("rmsprop", "rmsprop (the original code's), adam or sgd")
    lr: float = opt(1e-3, "learning rate (the original code: 1e-3)")
    lr_schedule: str = opt("constant", "learning-rate schedule, a pure function of the step (training.schedule): "
                                       "constant (the paper's), cosine (to lr * lr_min_ratio over "
                                       "lr_horizon_epochs) or step (times lr_gamma every lr_step_epochs)")
    lr_horizon_epochs: int = opt(0, "cosine: the epochs over which lr decays (a fixed horizon, not `epochs`, so "
                                    "raising `epochs` on a resubmission does not bend the schedule)")
    lr_min_ratio: float = opt(0.0, "cosine: the final lr as a fraction of lr")
    lr_step_epochs: int = opt(0, "step: decay every this many epochs")
    lr_gamma: float = opt(0.1, "step: the factor of each decay")
    grad_clip: float = opt(0.0, "clip the global gradient norm to this value; 0 = off")
    seed: int = opt(0, "random seed; the data order of epoch e and rank r's RNG are hashed from (seed, e) and (seed, r)")
    # against generation loops (docs/generation.md); each off by default, and off is the paper's method
    input_noise: float = opt(0.0, "Gaussian noise of this sigma (normalized units) added to the training inputs; "
                                  "the targets stay clean; 0 = off")
    own_input_prob: float = opt(0.0, "scheduled sampling: the probability that a step's input is the model's own "
                                     "previous prediction instead of the data (Bengio et al. 2015); 0 = off")
    own_input_ramp_epochs: float = opt(0.0, "ramp own_input_prob up linearly from 0 over this many epochs; "
                                            "0 = the full probability from the start")
    rollout_frames: int = opt(0, "train on the model's own free run as well: the last N predictions of each clip come "
                                 "from feeding back its own previous predictions (gradients through the feedback), "
                                 "so the drift of a free run is in the loss; at most clip_blocks - 1; 0 = off "
                                 "(teacher forcing throughout, the paper's)")
    rollout_noise: float = opt(0.0, "rollout_frames: Gaussian noise of this sigma (normalized units) added to each "
                                    "prediction fed back, as sampled generation (--temperature) feeds back draws; "
                                    "0 = none")
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
    step_graph: str = opt("auto", "the training step (forward, backward, optimizer) replayed from one CUDA graph "
                          "(training/step.py): auto (on CUDA with one process and a capturable optimizer), graph "
                          "(on the CPU: the same buffers without a capture), or eager")

    def __post_init__(self):
        if isinstance(self.data_on_device, str):  # "False" on a command line means false
            self.data_on_device = self.data_on_device.lower()

    def validate(self) -> None:
        cells.get(self.cell)  # an unknown cell: a ConfigError naming the registered ones
        if self.predict not in PREDICT:
            raise ConfigError(f"predict: {self.predict!r} is not one of {', '.join(PREDICT)}")
        if self.head not in HEADS:
            raise ConfigError(f"head: {self.head!r} is not one of {', '.join(HEADS)}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer: {self.optimizer!r} is not one of {', '.join(OPTIMIZERS)}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"device: {self.device!r} is not one of auto, cpu, cuda")
        if self.resume not in RESUME:
            raise ConfigError(f"resume: {self.resume!r} is not one of {', '.join(RESUME)}")
        if self.step_graph not in STEP_GRAPHS:
            raise ConfigError(f"step_graph: {self.step_graph!r} is not one of {', '.join(STEP_GRAPHS)}")
        why = graph_unsupported(self.optimizer, self.lr_schedule) if self.step_graph == "graph" else None
        if why:
            raise ConfigError(f"step_graph: graph with optimizer={self.optimizer}, lr_schedule={self.lr_schedule}: {why}")
        if self.data_on_device not in DATA_ON_DEVICE:
            raise ConfigError(f"data_on_device: {self.data_on_device!r} is not one of {', '.join(DATA_ON_DEVICE)}")
        for k in ("hidden", "layers", "epochs", "batch_size", "keep_last", "ckpt_every_epochs", "log_every_steps"):
            if getattr(self, k) < 1:
                raise ConfigError(f"{k}: must be >= 1, got {getattr(self, k)}")
        for k in ("seed", "limit_train_batches", "gen_every_epochs", "lr_horizon_epochs", "lr_step_epochs",
                  "rollout_frames"):
            if getattr(self, k) < 0:
                raise ConfigError(f"{k}: must be >= 0, got {getattr(self, k)}")
        if self.seed >= 2**32:  # numpy's and the sampler's seeds are 32-bit
            raise ConfigError(f"seed: must be < 2**32, got {self.seed}")
        dup = sorted({a for a in self.artists if self.artists.count(a) > 1})
        if dup:  # it would train under another run name on the same data
            raise ConfigError(f"artists: {', '.join(dup)} given twice in {','.join(self.artists)}")
        if self.workers != "auto" and not (isinstance(self.workers, int) and self.workers >= 0):
            raise ConfigError(f"workers: must be auto or an integer >= 0, got {self.workers!r}")
        from gruv_hpc.training.schedule import SCHEDULES
        if self.lr_schedule not in SCHEDULES:
            raise ConfigError(f"lr_schedule: {self.lr_schedule!r} is not one of {', '.join(SCHEDULES)}")
        if self.lr_schedule == "cosine" and self.lr_horizon_epochs < 1:
            raise ConfigError(f"lr_horizon_epochs: lr_schedule=cosine needs a horizon >= 1, got {self.lr_horizon_epochs}")
        if self.lr_schedule == "step" and self.lr_step_epochs < 1:
            raise ConfigError(f"lr_step_epochs: lr_schedule=step needs a step >= 1, got {self.lr_step_epochs}")
        if not (math.isfinite(self.lr_min_ratio) and 0 <= self.lr_min_ratio <= 1):
            raise ConfigError(f"lr_min_ratio: must be in [0, 1], got {self.lr_min_ratio}")
        if not (math.isfinite(self.lr_gamma) and 0 < self.lr_gamma <= 1):
            raise ConfigError(f"lr_gamma: must be in (0, 1], got {self.lr_gamma}")
        if not (math.isfinite(self.lr) and 0 < self.lr <= MAX_LR):
            raise ConfigError(f"lr: must be a finite number in (0, {MAX_LR:.3g}] (the optimizers compute in "
                              f"float32), got {self.lr}")
        if not (math.isfinite(self.own_input_prob) and 0 <= self.own_input_prob <= 1):
            raise ConfigError(f"own_input_prob: must be in [0, 1], got {self.own_input_prob}")
        for k in ("grad_clip", "ckpt_every_min", "gen_seconds", "std_floor", "input_noise", "own_input_ramp_epochs",
                  "rollout_noise"):
            check_number(k, getattr(self, k))
        if self.input_noise > MAX_INPUT_NOISE:  # normalized units: 1 is the data's own spread
            raise ConfigError(f"input_noise: must be at most {MAX_INPUT_NOISE:g} (a sigma in normalized units, where 1 "
                              f"is the data's own spread), got {self.input_noise:g}")


def run_config(saved: dict) -> dict:
    """A run's saved config as TrainConfig's keys: a run saved before ``std_floor`` existed
    trained with the paper's exact z-scoring (0), not today's default."""
    return {"std_floor": 0.0, **saved}


# Keys that may change between a run's starts without making it a different run.
def command_line(cfg: "TrainConfig", run_dir, **changes) -> str:
    """The ``gruv train`` command that gives this config (every key that differs from its default),
    with ``changes``: what an error tells the user to run, so that it runs."""
    import shlex

    def word(v) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (list, tuple)):
            return ",".join(map(str, v))
        return "none" if v is None else str(v)
    default = dataclasses.asdict(TrainConfig())
    vals = {**dataclasses.asdict(cfg), **changes}
    words = ["gruv", "train", "--run-dir", str(run_dir), "--data", str(vals.pop("data"))]
    words += [f"{k}={word(v)}" for k, v in vals.items() if k in changes or v != default.get(k)]
    return shlex.join(words)


MAX_INPUT_NOISE = 10.0  # sigmas of noise beyond this drown the inputs: the model would learn the train mean


def horizon_note(cfg: "TrainConfig") -> str | None:
    """A cosine schedule whose horizon ends before ``epochs`` trains the rest at lr * lr_min_ratio:
    at lr 0 that is epochs of nothing, said (it is allowed: the horizon stays fixed when a
    resubmission raises ``epochs``)."""
    if cfg.lr_schedule == "cosine" and cfg.lr_horizon_epochs < cfg.epochs and cfg.lr_min_ratio == 0:
        return (f"lr_schedule=cosine reaches lr 0 at lr_horizon_epochs={cfg.lr_horizon_epochs}, so epochs "
                f"{cfg.lr_horizon_epochs + 1}..{cfg.epochs} train at lr 0 (nothing changes); raise "
                "lr_horizon_epochs or set lr_min_ratio above 0")
    return None


def with_defaults(recorded: dict) -> dict:
    """A recorded config (config.json, a checkpoint's, a sweep's state) with each key it predates
    given its default: new options are added at their old behaviour, so a run recorded before a key
    existed trained with the key's default (e.g. predict = next)."""
    return {**{k: v for k, v in to_dict(TrainConfig()).items() if k not in recorded}, **recorded}


RUNTIME_KEYS = {"data", "epochs", "workers", "device", "resume", "ckpt_every_min", "ckpt_every_epochs", "keep_last",
                "log_every_steps", "gen_every_epochs", "gen_seconds", "data_on_device", "step_graph"}


def resolve(cfg: TrainConfig, manifest: dict, world_size: int = 1, gpus: int | None = None,
            source: str = "config") -> TrainConfig:
    """The config a run trains with, from the config asked for and the dataset's manifest.

    Dataset parameters the config left open (None) are filled in; one it pins to another value is
    refused by name, and so is an artist the dataset lacks. ``world_size`` is the number of
    training processes the batch is split over; ``gpus`` the GPUs a process will see (None: not
    known here). Pure: returns a new config and never changes ``cfg``."""
    from gruv_hpc.dataset.manifest import PARAM_KEYS, check_params, select_artists
    check_params(manifest, {k: getattr(cfg, k) for k in PARAM_KEYS}, source=source)
    select_artists(manifest, cfg.artists)
    if cfg.batch_size % world_size:
        raise ConfigError(f"batch_size: {cfg.batch_size} is not divisible by the {world_size} training processes")
    if cfg.step_graph == "graph" and world_size > 1:
        raise ConfigError(f"step_graph: graph needs one training process (DDP's all-reduce is not captured), "
                          f"not {world_size}; use auto or eager")
    clip = manifest["params"]["clip_blocks"]
    if cfg.rollout_frames >= clip:
        raise ConfigError(f"rollout_frames: {cfg.rollout_frames} must be below the dataset's {clip} frames a clip "
                          "(one frame of data starts the free run)")
    if cfg.device == "cuda" and gpus == 0:
        raise ConfigError("device: 'cuda' is asked for, but no GPU is visible")
    if (note := horizon_note(cfg)) is not None:
        import warnings
        warnings.warn(note, stacklevel=2)
    if cfg.rollout_noise > 0 and cfg.rollout_frames == 0:  # a grid may pair them so: said, not refused
        import warnings
        warnings.warn(f"rollout_noise={cfg.rollout_noise:g} does nothing with rollout_frames=0 (no free run to feed "
                      "draws into)", stacklevel=2)
    return dataclasses.replace(cfg, **{k: manifest["params"][k] for k in PARAM_KEYS})


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask, and no more than Slurm's CPUs per task."""
    import os  # noqa
    from gruv_hpc import jobenv
    cpus = len(os.sched_getaffinity(0))
    given = jobenv.cpus_per_task()
    return min(cpus, given) if given else cpus


def resolve_workers(workers: str | int, device_type: str, cpus: int) -> int:
    """DataLoader workers per rank. ``auto``: 0 when the model trains on the CPU or the process has
    4 CPUs or fewer (on 2 cores a worker ran at 0.60x: it takes a core from the compute threads),
    else min(4, cpus - 1), one core left to the training process."""
    if workers != "auto":
        return int(workers)
    if device_type == "cpu" or cpus <= 4:
        return 0
    return min(4, cpus - 1)

