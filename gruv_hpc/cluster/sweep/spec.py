"""The sweep file: parsed, overridden from the command line, expanded into named runs, validated.

A sweep file (TOML)::

    data = "data/corpus"            # the dataset; overridable like any key (data=...)
    [train]                         # base TrainConfig
    epochs = 2000
    [grid]                          # crossed; run names come from these values
    artists = [["aurora"], ["circuit"]]
    cell = ["lstm", "gru"]
    hidden = [256, 512]
    [slurm]                         # SlurmConfig
    partition = "gpu"
    [[slurm.when]]                  # resources of some grid points: grid keys select, slurm keys set
    hidden = 512
    mem_gb = 16.0

On the command line: ``KEY=v`` sets a train key for every run (over a grid axis of that key, it
pins the axis to one value, and the sweep says so: ``Sweep.notes``), ``grid.KEY=v1,v2`` replaces
(or adds) the grid axis KEY, ``slurm.KEY=v`` a Slurm key, ``data=DIR`` the dataset.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path

from gruv_hpc.cluster.config import SlurmConfig
from gruv_hpc.cluster.executors import scheduler
from gruv_hpc.training.config import TrainConfig, resolve
from gruv_hpc.config import build, check_keys, field_names, parse_value, parse_overrides, read_file, table, to_dict
from gruv_hpc.errors import ConfigError, GruvError
from gruv_hpc.paths import name_part

TOP_KEYS = ("data", "train", "grid", "slurm")


@dataclass
class Run:
    name: str
    grid: dict  # the run's value of each grid axis, as it trains (after command-line overrides)
    config: dict  # resolved TrainConfig as a dict
    slurm: SlurmConfig | None = None  # its resources where a [[slurm.when]] rule chose them; None: the sweep's

    @property
    def cfg(self) -> TrainConfig:
        return build(TrainConfig, self.config)


@dataclass
class Sweep:
    path: Path
    text: str
    data: str
    slurm: SlurmConfig
    runs: list[Run]
    # A dataset not built yet (a pipeline queues training behind its preprocessing): validate
    # against this manifest-like {"params": ..., "artists": ...} instead of reading one.
    planned: dict | None = None
    # What the command line changed that a reader of the file would not expect (an override that
    # pins a grid axis to one value): printed by submit and by a dry run.
    notes: list[str] = field(default_factory=list)
    overrides: dict = field(default_factory=dict)  # train keys set on the command line, for every run
    dataset_id: str | None = None  # the manifest's dataset id, once validate() has read it

    def resources(self, run: Run) -> SlurmConfig:
        """The resources of ``run``'s job: the [slurm] table, with the [[slurm.when]] rules that
        select it applied, then the command line's slurm.KEY=value."""
        return run.slurm or self.slurm

    def requests(self) -> dict[str, SlurmConfig]:
        """Each distinct job request of the sweep, named for errors: {"FILE [slurm]": the table's,
        "FILE [[slurm.when]] (run NAME)": the first run a rule gives other resources, ...}."""
        out = {f"{self.path} [slurm]": self.slurm}
        for run in self.runs:
            if run.slurm is not None and run.slurm not in out.values():
                out[f"{self.path} [[slurm.when]] (run {run.name})"] = run.slurm
        return out


def load_sweep(path: str | Path, overrides: list[str] = ()) -> Sweep:
    """Parse, override, expand and type-check a sweep file (no dataset access yet)."""
    path = Path(path)
    raw = read_file(path)
    return sweep_from_table(raw, path, path.read_text(), overrides)


def sweep_from_table(raw: dict, path: Path, text: str, overrides: list[str] = (), where: str | None = None) -> Sweep:
    """A sweep from the table of a sweep file (``where`` names it in errors; default: the file)."""
    where = where or str(path)
    unknown = set(raw) - set(TOP_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown top-level key(s) {', '.join(sorted(unknown))}; valid: {', '.join(TOP_KEYS)}")
    data, train, grid, slurm = raw.get("data", ""), table(raw, "train", where), table(raw, "grid", where), table(raw, "slurm", where)
    when = slurm.pop("when", [])
    check_keys(TrainConfig, train, f"{where} [train]")
    check_keys(TrainConfig, grid, f"{where} [grid]")
    check_keys(SlurmConfig, slurm, f"{where} [slurm]")
    for k, v in grid.items():
        if not isinstance(v, list) or not v:
            raise ConfigError(f"{where} [grid] {k}: expected a non-empty list of values")
    when = when_rules(when, grid, f"{where} [[slurm.when]]")  # checked against the file's own grid
    cli_train, cli_slurm, cli_grid = {}, {}, {}
    for k, v in parse_overrides(list(overrides)).items():
        if k == "data":
            data = v
        elif k.startswith("slurm."):
            cli_slurm[k[6:]] = v
        elif k.startswith("grid."):
            cli_grid[k[5:]] = v
        else:
            cli_train[k] = v
    if not isinstance(data, str):
        raise ConfigError(f"{where}: data = {data!r}: must be a string, the dataset directory")
    if not data:
        raise ConfigError(f"{where}: no dataset: set data = \"DATA_DIR\" in the file or data=... on the command line")
    data = str(Path(data).expanduser().resolve())
    check_keys(TrainConfig, cli_train, "the command line")
    for k, v in cli_grid.items():
        if k in cli_train:
            raise ConfigError(f"the command line sets both {k}={cli_train[k]} and grid.{k}={v}; give one of them")
        grid[k] = grid_axis(k, v, list(grid))
    notes = []
    for k in cli_train:
        if k in grid:  # a command-line value pins a grid key (the run name keeps showing it)
            if len(grid[k]) > 1:
                notes.append(f"{k}={cli_train[k]} on the command line collapses the grid axis {k} = "
                             f"{_toml(grid[k])} of {where}: its {len(grid[k])} points all train {k}={cli_train[k]} "
                             f"(to sweep other values: grid.{k}=V1,V2)")
            grid[k] = grid[k][:1]
    scfg = build(SlurmConfig, slurm, cli_slurm, source=f"{where} [slurm]")
    runs, seen, matched = [], {}, set()
    keys = list(grid)
    for values in itertools.product(*(grid[k] for k in keys)):
        point = dict(zip(keys, values))
        values = {**train, "data": data, **point}
        values["data"] = str(Path(values["data"]).expanduser().resolve())  # jobs run from another directory
        cfg = build(TrainConfig, values, cli_train, source=where)
        name = "-".join(name_part(k, cfg.__dict__[k]) for k in keys).replace("/", "_") or "run"
        if name in seen:
            raise ConfigError(f"{where}: grid points {seen[name]} and {point} both get the run name {name!r}")
        seen[name] = point
        trains = {k: cfg.__dict__[k] for k in keys}  # the point as it trains, after command-line overrides
        # [[slurm.when]] rules select by what a run trains, so a pinned or replaced axis gets its resources
        hits = [i for i, (sel, _) in enumerate(when) if _selects(sel, trains)]
        matched.update(hits)
        chosen = {k: v for i in hits for k, v in when[i][1].items()}
        rcfg = None
        if chosen:
            try:
                rcfg = build(SlurmConfig, {**slurm, **chosen}, cli_slurm, source=f"{where} [[slurm.when]] (run {name})")
            except ConfigError as e:  # a value of the rule's, or the resources it makes up together
                raise ConfigError(f"{where} [[slurm.when]] (run {name}): {e}") from None
        runs.append(Run(name, trains, to_dict(cfg), rcfg))
    for i, (sel, res) in enumerate(when):
        if i not in matched:  # the grid was changed (grid.KEY=... on the command line): the rule gives nobody its resources
            notes.append(f"{where} [[slurm.when]] #{i + 1} selects {', '.join(f'{k} = {_toml(v)}' for k, v in sel.items())}"
                         f", which no run trains: its {', '.join(f'{k} = {_toml(v)}' for k, v in res.items())} go to no "
                         f"run (to give them to some: slurm.KEY=value on the command line sets every run's)")
    return Sweep(path, text, data, scfg, runs, notes=notes, overrides={k: runs[0].config[k] for k in cli_train} if runs else {})


def grid_axis(key: str, text: str, axes: list[str]) -> list:
    """``grid.KEY=v1,v2,...`` from the command line: the axis's values, each typed as the train
    key's (ints stay ints). A list key's element joins its items with '+', as run names show
    them: ``grid.artists=aurora,circuit,aurora+circuit``."""
    if key not in field_names(TrainConfig):
        raise ConfigError(f"grid.{key}: unknown grid axis; this sweep's axes: {', '.join(axes) or '(none)'}; "
                          f"any train key may be one: {', '.join(field_names(TrainConfig))}")
    is_list = typing.get_origin(typing.get_type_hints(TrainConfig)[key]) is list
    parts = [p.strip() for p in text.split(",")]
    if not text.strip() or not all(parts):
        raise ConfigError(f"grid.{key}={text}: expected comma-separated values, e.g. grid.{key}=V1,V2")
    values = []
    for p in parts:
        try:
            values.append(parse_value(TrainConfig, key, p.replace("+", ",") if is_list else p))
        except ConfigError as e:
            raise ConfigError(f"grid.{key}={text}: {e}") from None
    dup = [v for i, v in enumerate(values) if v in values[:i]]
    if dup:
        raise ConfigError(f"grid.{key}={text}: {dup[0]!r} given twice")
    return values


def _toml(values: list) -> str:
    return json.dumps(values)


def when_rules(rules, grid: dict, where: str) -> list[tuple[dict, dict]]:
    """The ``[[slurm.when]]`` tables as (selector, resources) pairs. In each table the grid's keys
    select points (a value, or a list of values: any of them) and SlurmConfig's keys give their
    resources; rules apply in file order, a later one over an earlier one, and the command line's
    slurm.KEY=value over both. A selector value not in the grid is a typo, not a rule to skip."""
    if isinstance(rules, dict):
        rules = [rules]
    if not isinstance(rules, list) or not all(isinstance(r, dict) for r in rules):
        raise ConfigError(f"{where}: expected tables ([[slurm.when]] ... ), got {rules!r}")
    slurm_keys = [f.name for f in dataclasses.fields(SlurmConfig)]
    out = []
    for i, rule in enumerate(rules, 1):
        here = f"{where} #{i}"
        unknown = [k for k in rule if k not in grid and k not in slurm_keys]
        if unknown:
            raise ConfigError(f"{here}: unknown key(s) {', '.join(map(repr, unknown))}; valid: grid keys "
                              f"({', '.join(grid) or 'none'}) to select points, slurm keys ({', '.join(slurm_keys)})")
        sel = {k: v for k, v in rule.items() if k in grid}
        res = {k: v for k, v in rule.items() if k in slurm_keys}
        if not sel or not res:
            raise ConfigError(f"{here}: needs a grid key to select points ({', '.join(grid) or 'the grid is empty'}) "
                              f"and a slurm key to set ({rule!r})")
        for k, v in sel.items():
            if v not in grid[k] and not (isinstance(v, list) and v and all(x in grid[k] for x in v)):
                raise ConfigError(f"{here}: {k} = {v!r} is not a value of [grid] {k} ({grid[k]!r})")
        check_keys(SlurmConfig, res, here)
        out.append((sel, res))
    return out


def _selects(sel: dict, point: dict) -> bool:
    return all(point[k] == v or (isinstance(v, list) and point[k] in v) for k, v in sel.items())


def validate(sweep: Sweep, sweep_dir: Path, executor: str, create: bool = True) -> None:
    """Everything that can be checked on the login node, before anything is queued: each run's
    config against the dataset (config.resolve, as the job will; the dataset's id goes to
    ``sweep.dataset_id``, for ``submit.plan`` to hold against the runs' own), and a writable SWEEP_DIR
    (``create=False``, for a dry run: one that could be made, and nothing written).

    ``executor`` is the kind that will run the jobs: only a scheduler that allocates (Slurm)
    splits a batch over slurm.nodes x slurm.tasks_per_node processes and knows the GPUs
    (slurm.gpus_per_node); the local and debug executors run one process on whatever this
    machine has."""
    from gruv_hpc.dataset.manifest import dataset_id, load_manifest  # numpy: not for `gruv sweep status`
    manifest = sweep.planned or load_manifest(sweep.data)
    # A planned dataset has no id yet (each job checks the built one when it starts).
    sweep.dataset_id = None if sweep.planned else dataset_id(manifest)
    allocates = scheduler(executor).allocates
    manifests = {sweep.data: manifest}  # a grid over data: each run is checked against its own dataset
    for run in sweep.runs:
        res = sweep.resources(run)
        world, gpus = (res.world_size, res.gpus_per_node) if allocates else (1, None)
        data = run.config.get("data") or sweep.data
        try:
            if data not in manifests:
                manifests[data] = load_manifest(data)
            run.config = to_dict(resolve(run.cfg, manifests[data], world_size=world, gpus=gpus))
        except GruvError as e:  # a DatasetError or a ConfigError, named after the run
            raise type(e)(f"run {run.name}: {e}") from None
    if "songs" in manifest:  # built (a pipeline's planned dataset has no clips yet)
        from gruv_hpc.dataset.adequacy import data_warnings
        batches = sorted({(tuple(r.config.get("artists") or ()), r.config["batch_size"]) for r in sweep.runs})
        for w in data_warnings(manifest, [(list(a), b) for a, b in batches], "the grid's "):
            if w not in sweep.notes:  # (a pipeline validates its sweep twice)
                sweep.notes.append(w)
    if not create:
        _check_could_create(sweep_dir)
        return
    try:
        sweep_dir.mkdir(parents=True, exist_ok=True)
        probe = sweep_dir / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise GruvError(f"sweep directory {sweep_dir} is not writable: {e}") from None


def _check_could_create(sweep_dir: Path) -> None:
    """SWEEP_DIR, or the nearest of its parents that exists, is a directory this user may write in."""
    p = sweep_dir
    while not p.exists() and p != p.parent:
        p = p.parent
    if not p.is_dir():
        raise GruvError(f"sweep directory {sweep_dir} cannot be made: {p} is not a directory")
    if not os.access(p, os.W_OK | os.X_OK):
        raise GruvError(f"sweep directory {sweep_dir} is not writable: no write permission on {p}")
