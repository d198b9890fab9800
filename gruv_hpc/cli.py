"""The ``gruv`` command. Subcommands import their modules lazily: ``gruv preprocess`` and
``gruv sweep status`` never import torch, so they start in a fraction of a second."""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
import time
from pathlib import Path

from gruv_hpc.cluster.executors import KINDS as EXECUTORS, scheduler
from gruv_hpc.errors import ConfigError, GruvError, plain_warnings
from gruv_hpc.tbserver import DEFAULT_RELOAD_S


def _preprocess(a) -> int:
    from gruv_hpc.dataset.config import PreprocessConfig
    from gruv_hpc.config import build, parse_overrides
    from gruv_hpc.dataset.build import format_split, parse_sources, plan
    from gruv_hpc.cluster.preprocess import build as build_dataset, read_slurm_file, slurm_config
    cfg = build(PreprocessConfig, {f.name: getattr(a, f.name) for f in dataclasses.fields(PreprocessConfig)},
                source="the command line")
    sources = parse_sources([s for s in a.sources if not s.startswith("slurm.")])
    if a.print_split:
        sys.stdout.write(format_split(plan(sources, cfg, a.split_file)))
        return 0
    if not a.out:
        raise ConfigError("--out is required (except with --print-split)")
    scfg = slurm_config(read_slurm_file(a.slurm_config) if a.slurm_config else {},
                        {k[6:]: v for k, v in parse_overrides([s for s in a.sources if s.startswith("slurm.")]).items()},
                        source=f"{a.slurm_config} [slurm]" if a.slurm_config else "[slurm]")
    res = build_dataset(sources, a.out, cfg, jobs=a.jobs, executor=a.executor, slurm=scfg, overwrite=a.overwrite,
                        progress=not a.quiet, split_file=a.split_file, wait=a.wait)
    if "manifest" not in res:
        print(f"follow it with: squeue -u $USER; the dataset appears in {a.out} when merge job "
              f"{res['submission']['merge']} ends; then gruv dataset info {a.out} prints its warnings")
        return 0
    m = res["manifest"]
    _show_dataset(a.out, m)
    from gruv_hpc.dataset.adequacy import steps_warnings
    from gruv_hpc.training.config import TrainConfig
    steps = [w for artist in m["artists"] for w in steps_warnings(m, [artist], TrainConfig.batch_size,
                                                                   "gruv train's default ")]
    # Built by Slurm jobs, its warnings went to the merge job's log; the manifest records them.
    _print_warnings((m.get("warnings", []) if "submission" in res else []) + steps)
    return 0


def _show_dataset(out, m: dict) -> None:
    s = m["summary"]
    print(f"dataset {out}: {s['songs']} songs, {s['hours']:.3f} h of audio, {s['clips']} clips "
          f"({s['train_clips']} train / {s['dev_clips']} dev), {len(m['shards'])} shards, "
          f"{s['bytes_per_audio_s'] / 1000:.0f} KB per audio second, "
          f"{s['wall_s']:.1f} s ({s['hours'] * 3600 / max(s['wall_s'], 1e-9):.0f}x realtime"
          + (f", {s['tasks']} tasks)" if s.get("tasks", 1) > 1 else ")"))
    if s["skipped"]:
        print(f"skipped {s['skipped']} file(s):")
        for r in m["excluded"]:
            print(f"  {r['path']}: {r['reason']}")
        for song in m["songs"]:
            if song["skipped"]:
                print(f"  {song['path']}: {song['skipped']}")


def _print_warnings(lines) -> None:
    """Warnings recorded elsewhere (a job's, a manifest's), as the ones raised here print: one line each."""
    for w in lines:
        print(f"warning: {w}", file=sys.stderr, flush=True)


def _dataset_info(a) -> int:
    from gruv_hpc.dataset.adequacy import data_warnings, split_sizes
    from gruv_hpc.dataset.manifest import dataset_id, load_manifest
    m = load_manifest(a.data_dir)
    _show_dataset(a.data_dir, m)
    print(f"id {dataset_id(m)}; " + ", ".join(f"{k} {v}" for k, v in m["params"].items()))
    for artist in m["artists"]:
        z = split_sizes(m, artist)
        print(f"  {artist}: {z['train_clips']} train clips, {z['dev_clips']} dev clips from {len(z['dev_songs'])} "
              f"dev song(s) ({sum(t for _, t in z['dev_songs']):.0f} s)")
    _print_warnings(data_warnings(m, [([artist], a.batch_size) for artist in m["artists"]] if a.batch_size else []))
    return 0


def _dataset_verify(a) -> int:
    from gruv_hpc.dataset.manifest import dataset_id, load_manifest, verify
    t0 = time.time()
    res = verify(a.data_dir, deep=not a.quick)
    wall = time.time() - t0
    songs = f", {res['songs']} songs' content hashes and the train statistics" if not a.quick else ""
    print(f"{a.data_dir}: OK, dataset {dataset_id(load_manifest(a.data_dir))}: {res['files']} files "
          f"({res['bytes'] / 2**20:.1f} MiB) match the manifest's sha256{songs} ({wall:.2f} s)")
    return 0


def _corpus_synth(a) -> int:
    from gruv_hpc.dataset.synth import make_corpus
    made = make_corpus(a.out, songs_per_artist=a.songs, min_s=a.min_seconds, max_s=a.max_seconds, seed=a.seed)
    for artist, paths in made.items():
        print(f"{artist}: {len(paths)} songs in {a.out}/{artist}")
    return 0


def _train(a) -> int:
    from gruv_hpc.training.config import TrainConfig
    from gruv_hpc.config import build, help_text, parse_overrides, read_file
    if a.help_config:
        print("gruv train config keys:\n" + help_text(TrainConfig))
        return 0
    if not a.run_dir:
        raise ConfigError("--run-dir is required")
    values = read_file(a.config) if a.config else {}
    overrides = parse_overrides(a.overrides)
    if a.data:
        overrides["data"] = a.data
    cfg = build(TrainConfig, values, overrides, source=a.config or "config")
    from gruv_hpc.training import distributed
    from gruv_hpc.training.jobcontrol import EXIT_STOPPED, StopFlag, stop_line
    from gruv_hpc.training.trainer import main as train_main
    distributed.export_env()  # side effect, stated: under plain srun, torchrun's variables from Slurm's
    distributed.prefer_huge_pages()  # side effect, stated: before torch's first large allocation
    distributed.flush_denormals()  # side effect, stated: before torch's intra-op threads start
    # TERM, INT, HUP and the preemption signal stop at the next step boundary with a checkpoint.
    from gruv_hpc.generation.tensorboard import training_hooks
    with StopFlag() as stop:
        res = train_main(cfg, a.run_dir, stop=stop, hooks=training_hooks())
    if int(os.environ.get("RANK", "0")) == 0:  # one summary line, not one per rank
        if res["status"] == "stopped":
            print(stop_line(res, requeue=False), flush=True)  # nothing requeues a plain `gruv train`
        print(json.dumps(res))
        if res["status"] == "stopped":
            print(f"gruv: stopped by {res['signal']} at epoch {res['epoch'] + 1}, step {res['step']}; the checkpoint "
                  f"is written. {_resume_hint(cfg)}", file=sys.stderr)
    return EXIT_STOPPED if res["status"] == "stopped" else 0


def _check_generate_args(a, paths) -> None:
    """What generation would fail on deep inside, or overwrite, refused by name first: a damaged
    config.json, a sidecar (OUT.json) that would replace a file
    gruv generate did not write (``--out DATA/manifest.wav`` would replace the dataset's manifest)."""
    from gruv_hpc.paths import read_run_config
    if paths.config.exists():
        read_run_config(paths.config)
    side = Path(a.out).with_suffix(".json")
    if side.exists() or side.is_symlink():
        try:
            ours = {"generated_s", "diagnostics"} <= set(json.loads(side.read_bytes()))
        except (OSError, ValueError, TypeError):
            ours = False
        if not ours:
            raise ConfigError(f"--out {a.out}: its sidecar {side} exists and is not one gruv generate wrote; it would "
                              "be replaced: give --out another name")


def _resume_hint(cfg) -> str:
    """How to resume a stopped `gruv train`: the same command, but resume=never would start over
    (and move the checkpoint just written aside), so that one gets resume=auto instead."""
    if cfg.resume != "never":
        return "Run the same command again to resume."
    args = [x for x in sys.argv[1:] if not x.startswith("resume=")] + ["resume=auto"]
    return f"To resume, run it with resume=auto (resume=never starts over): gruv {shlex.join(args)}"


def _generate(a) -> int:
    from gruv_hpc.generation import describe, generate
    from gruv_hpc.paths import RunPaths
    from gruv_hpc.training import distributed
    distributed.flush_denormals()  # side effect, stated: before torch's intra-op threads start
    _check_generate_args(a, RunPaths(a.run_dir))
    side = generate(a.run_dir, a.out, seed_seconds=a.seed_seconds, length_ratio=a.length_ratio, seed_from=a.seed_from,
                    seed_index=a.seed_index, seed_start=a.seed_start, algorithm=a.algorithm, checkpoint=a.checkpoint,
                    with_seed=a.with_seed, float32=a.float, normalize=a.normalize, device=a.device, noise=a.noise,
                    noise_seed=a.noise_seed, temperature=a.temperature)
    print(f"wrote {a.out}: {side['generated_s']:.2f} s generated from {side['seed']['seconds']:.2f} s of seed "
          f"({side['algorithm']}, {side['wall_s']:.2f} s); {describe(side['diagnostics'], side['clipped_samples'])}")
    return 0


def _sweep(a) -> int:
    from gruv_hpc.cluster import sweep
    if a.sweep_cmd == "submit":
        res = sweep.submit(a.sweep_file, a.out, executor=a.executor, dry_run=a.dry_run, overrides=a.overrides,
                           max_parallel=a.max_parallel, progress=not a.quiet, canary=a.canary)
        if a.dry_run:
            return 1 if res.get("failing") else 0  # a run would refuse the submission
        rows = sweep.wait(a.out, progress=not a.quiet) if a.wait else sweep.status(a.out)
        print(sweep.format_status(rows))
        _print_canary(a.out)
        if a.wait:
            return 0 if all(r["state"] == "COMPLETED" for r in rows) else 1
        return 1 if res.get("failed") else 0  # a local submission has waited for its runs
    if a.sweep_cmd == "status":
        while True:
            rows = sweep.status(a.sweep_dir)
            if a.json:
                print(json.dumps({"runs": rows}, indent=1))
            else:
                print(sweep.format_status(rows), flush=True)
                _print_canary(a.sweep_dir)
            if not a.watch or all(r["state"] not in sweep.ACTIVE for r in rows):
                return 0
            time.sleep(a.interval)
            print()
    if a.sweep_cmd == "cancel":
        sweep.cancel(a.sweep_dir, a.run)
        return 0
    if a.sweep_cmd == "preempt":
        sweep.preempt(a.sweep_dir, a.run)
        return 0
    if a.sweep_cmd == "logs":
        from gruv_hpc.cluster.sweep.logs import show_logs
        return show_logs(a.sweep_dir, a.run, err=a.err, follow=a.follow)
    if a.sweep_cmd == "best":
        from gruv_hpc.cluster.sweep.best import best_runs, format_best
        res = best_runs(a.sweep_dir, by=a.by, artist=a.artist, cell=a.cell, top=a.top, highest=a.highest)
        print(json.dumps(res, indent=1) if a.json else format_best(res))
        return 0 if res["runs"] else 1
    if a.sweep_cmd == "wait":
        rows = sweep.wait(a.sweep_dir, poll_s=a.interval)
        print(sweep.format_status(rows))
        return 0 if all(r["state"] == "COMPLETED" for r in rows) else 1
    return 2


def _print_canary(sweep_dir) -> None:
    from gruv_hpc.cluster.sweep.status import canary_line
    line = canary_line(sweep_dir)
    if line:
        print(line, flush=True)


def _pipeline(a) -> int:
    from gruv_hpc.cluster import pipeline
    if a.pipeline_cmd == "submit" and a.dry_run:
        res = pipeline.dry_run(a.pipeline_file, a.out, executor=a.executor, overrides=a.overrides,
                               max_parallel=a.max_parallel)
        return 1 if res["train"].get("failing") else 0  # a run would refuse the submission
    if a.pipeline_cmd == "submit":
        sub = pipeline.submit(a.pipeline_file, a.out, executor=a.executor, overrides=a.overrides,
                              max_parallel=a.max_parallel, progress=not a.quiet, canary=a.canary)
        foreground = scheduler(sub["executor"]).foreground
        if not foreground and a.wait:
            st = pipeline.wait(a.out, say=None if a.quiet else print)
            print(pipeline.format_status(st))
            return 0 if st["analysis"]["state"] == "COMPLETED" else 1
        if foreground:
            print(pipeline.format_status(pipeline.status(a.out)))
            return 1 if sub["train"].get("failed") else 0
        return 0
    st = pipeline.status(a.dir)
    print(json.dumps(st, indent=1) if a.json else pipeline.format_status(st))
    return 0


def _tensorboard(a) -> int:
    from gruv_hpc.tbserver import serve
    return serve(a.sweep_dir, a.host, a.port, out=lambda line: print(line, flush=True), reload_s=a.reload_interval)


def _analyze(a) -> int:
    from gruv_hpc.analysis.report import analyze_atomic
    from gruv_hpc.cluster.sweep import analysis_listing
    from gruv_hpc.training import distributed
    distributed.flush_denormals()  # side effect, stated: before torch's intra-op threads start
    t = time.time()
    print(f"analyzing {a.sweep_dir}")
    analyze_atomic(a.sweep_dir, a.out, lambda: analysis_listing(a.sweep_dir), hidden=a.hidden, n_seed_clips=a.seed_clips, seed_seconds=a.seed_seconds,
                   max_clips=a.max_clips, temperature=a.temperature)
    print(f"report ({time.time() - t:.1f} s): {Path(a.out).resolve() / 'index.html'}")
    return 0


def add_config_options(p: argparse.ArgumentParser, cls) -> None:
    """One --option per field of a config dataclass, with its type, default and help taken from
    the dataclass: the CLI never repeats a default."""
    import functools

    from gruv_hpc.config import parse_value
    from gruv_hpc.dataset.config import DTYPES
    choices = {"dtype": DTYPES}
    for f in dataclasses.fields(cls):
        kw = {"choices": choices[f.name]} if f.name in choices else {}
        tp = functools.partial(parse_value, cls, f.name)
        tp.__name__ = f.name  # argparse names the option's type in its error
        p.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=tp, default=f.default,
                       help=f"{f.metadata.get('help', '')} (default: {f.default})", **kw)


class _DefaultsFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, unless it names it already or has none worth
    showing (None: "not given"; a flag's False)."""

    def _get_help_string(self, action):
        h = action.help or ""
        d = action.default
        if not action.option_strings or "default" in h.lower() or d is None or d is False or d is argparse.SUPPRESS:
            return h
        return f"{h} (default: %(default)s)".lstrip()


class _Parser(argparse.ArgumentParser):
    """The ``gruv`` parser and, through add_subparsers, every subcommand's: defaults in --help."""

    def __init__(self, *args, **kw):
        kw.setdefault("formatter_class", _DefaultsFormatter)
        super().__init__(*args, **kw)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="gruv", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    pp = sub.add_parser("preprocess", help="audio folders -> sharded HDF5 spectral dataset")
    pp.add_argument("sources", nargs="+", metavar="ARTIST=DIR", help="one per artist; also slurm.KEY=value "
                    "(resources of the Slurm jobs)")
    pp.add_argument("--out", help="dataset directory (DATA_DIR)")
    from gruv_hpc.dataset.config import PreprocessConfig
    add_config_options(pp, PreprocessConfig)
    pp.add_argument("--split-file", help="take the train/dev split from FILE: one line per song, "
                    "ARTIST<TAB>PATH relative to the artist's folder<TAB>train|dev ('#' comments)")
    pp.add_argument("--print-split", action="store_true",
                    help="print the split in the --split-file format and stop (reads file headers only, writes nothing)")
    pp.add_argument("--overwrite", action="store_true", help="replace a dataset with other songs or parameters")
    pp.add_argument("--quiet", action="store_true", help="no progress bar")
    pp.add_argument("--jobs", type=int, default=1, help="split the songs into N tasks of about equal audio, run at "
                    "once (the result is the same for any N); a rerun of the same command resumes, keeping finished "
                    "tasks (default: 1)")
    pp.add_argument("--executor", choices=EXECUTORS, default="local",
                    help="local: N processes here (default; debug: the same); slurm: a job array of N tasks and a "
                    "merge job after them, then return (or --wait); auto: slurm where a cluster answers")
    pp.add_argument("--slurm-config", metavar="FILE", help="Slurm resources of the jobs: the [slurm] table of FILE "
                    "(or the whole file), keys as in a sweep's [slurm]; slurm.KEY=value overrides")
    pp.add_argument("--wait", action="store_true", help="slurm: wait until the dataset is built")
    pp.set_defaults(fn=_preprocess)

    dp = sub.add_parser("dataset", help="dataset utilities")
    dsub = dp.add_subparsers(dest="dataset_cmd", required=True)
    dv = dsub.add_parser("verify", help="check every shard and stats.npz against the manifest's sha256, and every "
                         "song's rows against its content hash (what the dataset id is made of)")
    dv.add_argument("data_dir")
    dv.add_argument("--quick", action="store_true", help="the files' sha256 only (what training checks)")
    dv.set_defaults(fn=_dataset_verify)
    di = dsub.add_parser("info", help="a dataset's summary, each artist's split, and its warnings (thin dev "
                         "splits, dropped files, bandwidth: also those of a build that ran as Slurm jobs)")
    di.add_argument("data_dir")
    di.add_argument("--batch-size", type=int, default=None, help="also warn when an artist's train split gives "
                    "fewer than 10 optimizer steps an epoch at this batch size")
    di.set_defaults(fn=_dataset_info)

    cp = sub.add_parser("corpus", help="corpus utilities")
    csub = cp.add_subparsers(dest="corpus_cmd", required=True)
    cs = csub.add_parser("synth", help="write a synthetic two-artist corpus (no download needed)")
    cs.add_argument("--out", required=True)
    cs.add_argument("--songs", type=int, default=6, help="songs per artist")
    cs.add_argument("--min-seconds", type=float, default=30, help="shortest song")
    cs.add_argument("--max-seconds", type=float, default=60, help="longest song")
    cs.add_argument("--seed", type=int, default=0)
    cs.set_defaults(fn=_corpus_synth)

    tp = sub.add_parser("train", help="train (or resume) one run")
    tp.add_argument("--data", help="dataset directory (same as data=...)")
    tp.add_argument("--run-dir", help="run directory; an existing one is resumed")
    tp.add_argument("--config", help="config file (TOML or JSON)")
    tp.add_argument("--help-config", action="store_true", help="list every config key")
    tp.add_argument("overrides", nargs="*", metavar="key=value")
    tp.set_defaults(fn=_train)
    gp = sub.add_parser("generate", help="generate audio from a trained run")
    gp.add_argument("run_dir")
    gp.add_argument("--out", required=True, help="output WAV; a .json sidecar is written beside it")
    gp.add_argument("--seed-seconds", type=float, default=10.0, help="seconds of seed audio the model continues")
    gp.add_argument("--length-ratio", type=float, default=3.0, help="continuation length / seed length")
    gp.add_argument("--seed-from", default="dev", help="dev (default), train, or an audio FILE")
    gp.add_argument("--seed-index", type=int, default=None, help="dev/train seed: the clip's index in the split (default 0)")
    gp.add_argument("--seed-start", type=float, default=None, metavar="SECONDS",
                    help="seed file: where in it the seed starts (default 0)")
    gp.add_argument("--algorithm", choices=["stateful", "refeed"], default="stateful",
                    help="stateful (linear) or refeed (the paper's, quadratic): equal up to float rounding, which a "
                         "trained recurrent model can amplify")
    gp.add_argument("--checkpoint", default="best", help="best, last, or a checkpoint PATH")
    gp.add_argument("--with-seed", action="store_true", help="prepend the seed audio")
    gp.add_argument("--float", action="store_true", help="32-bit float WAV instead of 16-bit PCM")
    gp.add_argument("--normalize", action="store_true", help="peak-normalize instead of clipping")
    gp.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    gp.add_argument("--noise", type=float, default=0.0, metavar="SIGMA",
                    help="add Gaussian noise of SIGMA (normalized units) to each fed-back prediction, against "
                         "generation loops; the output is the predictions themselves (default 0: off)")
    gp.add_argument("--temperature", type=float, default=0.0, metavar="T",
                    help="sample each frame from a Gaussian around the prediction, per dimension T x the model's "
                         "residual std on the train set; the sample is fed back (0: the mean prediction, the paper's)")
    gp.add_argument("--noise-seed", type=int, default=0, help="seed of --noise's and --temperature's draws")
    gp.set_defaults(fn=_generate)
    sp = sub.add_parser("sweep", help="grid sweeps on Slurm (or locally)")
    ssub = sp.add_subparsers(dest="sweep_cmd", required=True)
    s1 = ssub.add_parser("submit", help="validate and submit a sweep file; resubmits what needs it")
    s1.add_argument("sweep_file")
    s1.add_argument("--out", required=True, help="sweep directory (SWEEP_DIR)")
    s1.add_argument("--executor", choices=EXECUTORS, default="auto", help="slurm: queue job arrays and return; "
                    "local: run here, --max-parallel at a time (debug: in this process); auto: slurm where a cluster "
                    "answers")
    s1.add_argument("--dry-run", action="store_true", help="print the runs with their values, what becomes of each "
                    "(start, continue from epoch E, skip, fail) and the sbatch script; write nothing; exit 1 when a "
                    "run would fail")
    s1.add_argument("--max-parallel", type=int, default=2, help="local executor: runs at a time")
    s1.add_argument("--canary", action="store_true", help="first one short job with the same resources and setup "
                    "lines (imports, the dataset, one training step); the runs wait for it to succeed")
    s1.add_argument("--wait", action="store_true", help="then wait until every run has ended, as `gruv sweep wait` "
                    "(local runs have ended when submit returns); exit 1 unless all completed")
    s1.add_argument("--quiet", action="store_true")
    s1.add_argument("overrides", nargs="*", metavar="key=value", help="train keys (KEY=v: every run), grid axes "
                    "(grid.KEY=v1,v2: replaces that axis), data=..., slurm.KEY=...")
    s2 = ssub.add_parser("status", help="one row per run")
    s2.add_argument("sweep_dir")
    s2.add_argument("--json", action="store_true")
    s2.add_argument("--watch", action="store_true", help="refresh until every run has ended")
    s2.add_argument("--interval", type=float, default=10.0, help="--watch: seconds between refreshes")
    s3 = ssub.add_parser("cancel", help="cancel the sweep's jobs (or one run's)")
    s3.add_argument("sweep_dir")
    s3.add_argument("--run")
    s7 = ssub.add_parser("preempt", help="send a running run's job the preemption signal (USR2) once, as a "
                         "preemption would: it checkpoints, is requeued and resumes; returns at once; refuses a run "
                         "that is not running (Slurm only)")
    s7.add_argument("sweep_dir")
    s7.add_argument("run")
    s4 = ssub.add_parser("wait", help="wait (with a progress bar) until every run has ended")
    s4.add_argument("sweep_dir")
    s4.add_argument("--interval", type=float, default=5.0, help="seconds between looks")
    s5 = ssub.add_parser("logs", help="a run's job output (stdout, or --err), every attempt, oldest first")
    s5.add_argument("sweep_dir")
    s5.add_argument("run")
    s5.add_argument("--err", action="store_true", help="stderr instead of stdout (tracebacks, warnings)")
    s5.add_argument("--follow", "-f", action="store_true", help="keep printing the newest attempt's output "
                    "until its job ends (or Ctrl-C)")
    s6 = ssub.add_parser("best", help="the best run(s) by a metric (best_dev_loss), with the run directory, the "
                         "checkpoint and the gruv generate command line")
    s6.add_argument("sweep_dir")
    s6.add_argument("--by", default="best_dev_loss", metavar="METRIC",
                    help="a key of the runs' metrics.jsonl lines; a run's value is its lowest over its epochs "
                    "(default: best_dev_loss)")
    s6.add_argument("--highest", action="store_true", help="rank by the highest value instead (a metric where more "
                    "is better)")
    s6.add_argument("--artist", help="only runs trained on this artist (alone or with others)")
    s6.add_argument("--cell", help="only runs of this cell (lstm, gru, ...)")
    s6.add_argument("--top", type=int, default=1, metavar="N", help="the N best (default: 1)")
    s6.add_argument("--json", action="store_true")
    sp.set_defaults(fn=_sweep)

    an = sub.add_parser("analyze", help="figures, results table, generated audio and an HTML report for a sweep")
    an.add_argument("sweep_dir")
    an.add_argument("--out", required=True, help="report directory")
    an.add_argument("--hidden", type=int, default=None, help="hidden size for figures 1 and 3 (default: largest)")
    an.add_argument("--seed-clips", type=int, default=2, help="dev clips each run continues, for the generated audio "
                    "(not the grid's random seeds)")
    an.add_argument("--seed-seconds", type=float, default=10.0,
                    help="seconds of seed audio each continuation starts from")
    an.add_argument("--max-clips", type=int, default=64, help="dev clips averaged in figure 3")
    an.add_argument("--temperature", type=float, default=0.0, help="sample the continuations at this temperature "
                    "(as gruv generate --temperature; 0: the mean prediction, the paper's)")
    an.set_defaults(fn=_analyze)

    pl = sub.add_parser("pipeline", help="corpus -> dataset -> trained grid -> report in one submission")
    plsub = pl.add_subparsers(dest="pipeline_cmd", required=True)
    pl1 = plsub.add_parser("submit", help="submit (or run) every stage of a pipeline file; resubmitting resumes")
    pl1.add_argument("pipeline_file")
    pl1.add_argument("--out", required=True, help="pipeline directory: data/, sweep/, report/")
    pl1.add_argument("--executor", choices=EXECUTORS, default="auto",
                     help="slurm: queue the three stages and return; local: run them here in order (debug: the runs "
                     "inside this process); auto: slurm where a cluster answers")
    pl1.add_argument("--max-parallel", type=int, default=2, help="local executor: training runs at a time")
    pl1.add_argument("--dry-run", action="store_true", help="print every stage: its sbatch scripts and what each "
                     "waits for (Slurm), or what runs here in order (local); check what submit checks; write nothing")
    pl1.add_argument("--canary", action="store_true", help="first one short job with the training resources and "
                     "setup lines (imports, one training step); every stage waits for it to succeed")
    pl1.add_argument("--wait", action="store_true", help="slurm: then wait for the report (exit 1 without one)")
    pl1.add_argument("--quiet", action="store_true")
    pl1.add_argument("overrides", nargs="*", metavar="key=value", help="corpus.ARTIST=DIR, preprocess[.slurm].KEY=v, "
                     "sweep.KEY=v, sweep.grid.KEY=v1,v2, sweep.slurm.KEY=v, analysis[.slurm].KEY=v")
    pl2 = plsub.add_parser("status", help="each stage: preprocess tasks and merge, runs by state, analysis and report")
    pl2.add_argument("dir")
    pl2.add_argument("--json", action="store_true")
    pl.set_defaults(fn=_pipeline)

    tb = sub.add_parser("tensorboard", help="TensorBoard over every run of a sweep")
    tb.add_argument("sweep_dir")
    tb.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this node only; from a laptop, "
                    "go through the ssh -L tunnel it prints)")
    tb.add_argument("--port", type=int, default=6006, help="port to listen on")
    tb.add_argument("--reload-interval", type=float, default=DEFAULT_RELOAD_S, metavar="S",
                    help="seconds between looks for new runs and new data (default: %(default)s, TensorBoard's own)")
    tb.set_defaults(fn=_tensorboard)
    return p


def main(argv: list[str] | None = None) -> int:
    plain_warnings()  # side effect, stated: every warning prints as one line, every time
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides (and preprocess's ARTIST=DIR) may follow options (argparse stops filling a
    # positional list at the first option).
    listed = "overrides" if hasattr(args, "overrides") else "sources" if hasattr(args, "sources") else None
    if extra:
        if listed and all("=" in e and not e.startswith("-") for e in extra):
            setattr(args, listed, list(getattr(args, listed)) + extra)
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.fn(args) or 0
    except GruvError as e:
        print(f"gruv: error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 2)
    except KeyboardInterrupt:
        print("gruv: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `gruv sweep status | head`: the reader has what it wanted. Point stdout at /dev/null so
        # that the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as e:
        if type(e).__name__ == "FailedJobError":  # submitit: sbatch refused the job (a bad partition, ...)
            lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
            why = next((ln for ln in reversed(lines) if "error" in ln.lower()), lines[-1] if lines else "")
            print(f"gruv: error: sbatch refused the job: {why}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
