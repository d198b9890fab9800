"""What every analysis script shares: reading a sweep as training wrote it (never TensorBoard)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from gruv_hpc.paths import RunPaths, name_part, read_jsonl


@dataclass
class RunInfo:
    name: str
    state: str
    config: dict
    grid: dict
    paths: RunPaths
    history: list[dict] = field(default_factory=list)
    error: str | None = None
    meta: dict = field(default_factory=dict)  # config.json as training wrote it (read once, by load_runs)

    @property
    def artist(self) -> str:
        return "+".join(self.config.get("artists") or []) or "all"

    @property
    def cell(self) -> str:
        return self.config["cell"]

    @property
    def hidden(self) -> int:
        return int(self.config["hidden"])

    @property
    def seed(self) -> int:
        return int(self.config.get("seed", 0))

    @property
    def variant(self) -> str:
        """The run's other grid values (not artists, cell, hidden or seed), e.g. "lr0.01": runs are
        compared only within one variant."""
        return "-".join(name_part(k, v) for k, v in self.grid.items() if k not in ("artists", "cell", "hidden", "seed"))

    @property
    def group(self) -> str:
        """The run's name without its seed: runs that differ only in seed form one group."""
        return "-".join(name_part(k, v) for k, v in self.grid.items() if k != "seed") if "seed" in self.grid else self.name

    @property
    def has_checkpoint(self) -> bool:
        return bool(self.paths.step_ckpts()) or self.paths.best.exists()

    @property
    def best_dev(self) -> float | None:
        devs = [h["dev_loss"] for h in self.history if h.get("dev_loss") is not None]
        return min(devs) if devs else None


def load_runs(listing: list[dict], skipped: dict[str, str] | None = None) -> list[RunInfo]:
    """The runs of a sweep, from its ``listing`` (the cluster layer's ``sweep.analysis_listing``: each
    run's name, job state, error, config, grid and run directory, states read before the analysis
    starts). A run whose config.json is not valid JSON, or whose metrics.jsonl holds a line that is
    not an epoch line (no loss, a text loss), is left out, its reason put in ``skipped`` ({name:
    why}) and warned about: one damaged run never stops the analysis of the others."""
    import json
    import warnings

    from gruv_hpc.paths import metrics_problem
    runs = []
    for row in listing:
        paths = RunPaths(row["run_dir"])
        history = read_jsonl(paths.metrics)
        why = metrics_problem(history)
        why = f"{paths.metrics}: {why}" if why else None
        meta = {}
        if why is None and paths.config.exists():
            try:
                meta = json.loads(paths.config.read_text())
                if not isinstance(meta, dict):
                    why = f"{paths.config}: not a JSON object"
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
                why = f"{paths.config}: not valid JSON ({e})"
        if why:
            warnings.warn(f"run {row['name']} left out of the analysis: {why}", stacklevel=2)
            if skipped is not None:
                skipped[row["name"]] = why
            continue
        runs.append(RunInfo(row["name"], row["state"], row["config"], row["grid"], paths, history, row.get("error"), meta))
    return runs


class Datasets:
    """The datasets an analysis reads, opened once: each directory's manifest is read once, and
    one handle (its statistics) is kept per (path, artists, std_floor). The floors, Figure 3 and
    every run's loading share one; call it as ``DatasetHandle`` is called."""

    def __init__(self):
        self._manifests: dict[str, dict] = {}
        self._handles: dict[tuple, object] = {}

    def __call__(self, path, artists: list[str] | None = None, std_floor: float | None = None):
        from gruv_hpc.dataset.clips import DatasetHandle
        from gruv_hpc.dataset.manifest import STD_FLOOR, load_manifest
        std_floor = STD_FLOOR if std_floor is None else float(std_floor)
        where = str(Path(path).expanduser().resolve())
        key = (where, tuple(artists or ()), std_floor)
        if key not in self._handles:
            if where not in self._manifests:
                self._manifests[where] = load_manifest(where)
            self._handles[key] = DatasetHandle(where, artists or None, std_floor=std_floor,
                                               manifest=self._manifests[where])
        return self._handles[key]


def load_each(runs: list[RunInfo], datasets: Datasets | None = None):
    """(run, loaded, None) for each run with a checkpoint: its best checkpoint (best.pt, or the
    newest readable one) loaded once, with its model and dataset (``generation.load_run``); or
    (run, None, why) when the run cannot be read, so the report names it and analyses the
    others. One run is held at a time."""
    from gruv_hpc.errors import GruvError
    from gruv_hpc.generation import load_run
    for run in runs:
        if not run.has_checkpoint:
            continue
        try:
            loaded = load_run(run.paths.root, "best", datasets=datasets, meta=run.meta or None)
        except GruvError as e:
            yield run, None, str(e)
            continue
        yield run, loaded, None


def with_metrics(runs: list[RunInfo]) -> list[RunInfo]:
    return [r for r in runs if r.history]


def finite(values) -> list[float]:
    """The numbers among ``values``: None and NaN (a missing or failed measurement) never count."""
    import math
    return [float(v) for v in values if v is not None and v != "" and math.isfinite(float(v))]


def mean_std(values) -> tuple[float | None, float | None, int]:
    """Mean, sample standard deviation (n - 1; None for one value) and count of the finite values."""
    import statistics
    v = finite(values)
    if not v:
        return None, None, 0
    return statistics.fmean(v), (statistics.stdev(v) if len(v) > 1 else None), len(v)


def note(ax, text: str, data: dict) -> None:
    """A panel with nothing to draw says why, instead of showing empty axes (and the figure's
    data lists what it said, under "notes")."""
    data.setdefault("notes", []).append(text.replace("\n", " "))
    ax.set_axis_off()
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True, fontsize=10, color="0.35", transform=ax.transAxes)


def log_y_if_wide(ax, values, ratio: float = 10.0) -> bool:
    """A log y axis when the positive ``values`` drawn span more than ``ratio``x (a loss of 0.7
    and one of 105 on one linear axis flatten every curve but one)."""
    v = [x for x in finite(values) if x > 0]
    if v and max(v) > ratio * min(v):
        ax.set_yscale("log")
        return True
    return False


def no_offset_ticks(fig) -> None:
    """Every linear axis labels its ticks with their values: never 0.01 .. 0.09 under a
    '+1.049e2' offset a reader misses."""
    from matplotlib.ticker import ScalarFormatter
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            fmt = axis.get_major_formatter()
            if isinstance(fmt, ScalarFormatter):
                fmt.set_useOffset(False)


def literal_text(fig) -> None:
    """Titles, axis labels, legends and notes as written: an artist named ``Ke$ha_&_A$AP_Rocky``
    would otherwise start matplotlib's math mode and fail the figure (and the report). Tick labels
    keep it: a log axis writes its powers of ten in math."""
    texts = [t for t in (getattr(fig, "_suptitle", None), *fig.texts) if t is not None]
    for ax in fig.axes:
        texts += [ax.title, ax._left_title, ax._right_title, ax.xaxis.label, ax.yaxis.label, *ax.texts]
        if ax.get_legend() is not None:
            texts += [ax.get_legend().get_title(), *ax.get_legend().get_texts()]
    for t in texts:
        t.set_parse_math(False)


def save_fig(fig, out_dir: Path, stem: str) -> list[str]:
    """PNG for the page, PDF for papers; ticks without offsets; names shown as written."""
    no_offset_ticks(fig)
    literal_text(fig)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for ext in ("png", "pdf"):
        fig.savefig(out_dir / f"{stem}.{ext}", dpi=130, bbox_inches="tight")
        files.append(f"{stem}.{ext}")
    import matplotlib.pyplot as plt
    plt.close(fig)
    return files

