"""The real-music experiment of docs/generation.md: the paper's settings (fft) against stft,
input_noise and own_input_prob, through the project's own pipeline on Slurm.

    python3 bench/real_music.py prepare OUT     # OUT/corpus (excerpts of real songs) and OUT/<variant>.toml
    for v in fft stft fft_noise fft_own; do
        python3 -m gruv_hpc.cli pipeline submit OUT/$v.toml --out OUT/$v --executor slurm --wait &
    done; wait
    python3 bench/real_music.py table OUT --results bench/results/real_music_DATE

``prepare`` cuts an excerpt of each song of a Debian music package (fretsonfire-songs-muldjord:
Lars Muldjord's songs, the backing track ``song.ogg`` of each) and writes it as 16 kHz mono WAV:
the corpus of one artist. Every variant gets its own pipeline (its own dataset: the transform is
a dataset parameter) with the same songs, the same split and the same training settings; the
variants differ only in the one setting named. ``table`` generates from each run's best
checkpoint (the same dev seed clips for every run), and writes the mean +- std over the training
seeds of best dev loss, loop onset, level change, click ratio and nearest-train distance.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
from gruv_hpc.training import cells

SONGS = Path("/usr/share/games/fretsonfire/data/songs/muldjord")
SAMPLE_RATE = 16000
EXCERPT = (10.0, 130.0)  # seconds of each song: past the intro, 2 minutes

# The scale (2 cores shared by several people): small, and said so in the results.
PREPROCESS = {"jobs": 1, "sample_rate": SAMPLE_RATE, "block_size": 2048, "clip_blocks": 40, "dev_fraction": 0.25}
TRAIN = {"epochs": 100, "batch_size": 5, "optimizer": "rmsprop", "lr": 1e-3, "hidden": 128, "cell": cells.PAPER_LSTM,
         "workers": 0, "gen_seconds": 0.0, "ckpt_every_epochs": 5, "keep_last": 1, "device": "cpu"}
SEEDS = [1, 2, 3]
VARIANTS = {  # name: (transform, train keys beside TRAIN)
    "fft": ("fft", {}),
    "stft": ("stft", {}),
    "fft_noise": ("fft", {"input_noise": 0.3}),
    "fft_own": ("fft", {"own_input_prob": 0.5, "own_input_ramp_epochs": 50}),
}
SEED_SECONDS = 2.56   # 20 fft frames, 40 stft frames: the same audio for both
SEED_CLIPS = 3        # dev seed clips per run
LENGTH_RATIO = 3.0


def _toml(v) -> str:
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    return repr(v)


def prepare(out: Path, train: dict, seeds: list[int]) -> None:
    import soundfile as sf
    from scipy.signal import resample_poly
    corpus = out / "corpus" / "muldjord"
    corpus.mkdir(parents=True, exist_ok=True)
    for song in sorted(SONGS.glob("*/song.ogg")):
        audio, sr = sf.read(song, dtype="float32", always_2d=True)
        audio = audio.mean(axis=1)[int(EXCERPT[0] * sr): int(EXCERPT[1] * sr)]
        g = math.gcd(sr, SAMPLE_RATE)
        sf.write(corpus / f"{song.parent.name}.wav", resample_poly(audio, SAMPLE_RATE // g, sr // g).astype(np.float32),
                 SAMPLE_RATE, subtype="PCM_16")
    for name, (transform, extra) in VARIANTS.items():
        lines = ["# written by bench/real_music.py prepare", "", "[corpus]", f"muldjord = {_toml(str(corpus))}", "",
                 "[preprocess]"]
        lines += [f"{k} = {_toml(v)}" for k, v in {**PREPROCESS, "transform": transform}.items()]
        lines += ["", "[preprocess.slurm]", "time_min = 20", "cpus_per_task = 1", "mem_gb = 2.0", "",
                  "[sweep.train]"]
        lines += [f"{k} = {_toml(v)}" for k, v in {**train, **extra}.items()]
        lines += ["", "[sweep.grid]", f"seed = {_toml(seeds)}", "", "[sweep.slurm]", "time_min = 30",
                  "cpus_per_task = 1", "mem_gb = 2.0", "signal_delay_s = 30", "",
                  "[analysis]", "seeds = 2", f"seed_seconds = {SEED_SECONDS}", "max_clips = 16", "",
                  "[analysis.slurm]", "time_min = 30", "cpus_per_task = 1", "mem_gb = 3.0", ""]
        (out / f"{name}.toml").write_text("\n".join(lines))
    (out / "experiment.json").write_text(json.dumps({"train": train, "seeds": seeds}))
    print(f"corpus: {corpus} ({len(list(corpus.glob('*.wav')))} songs); pipelines: "
          + ", ".join(str(out / f'{n}.toml') for n in VARIANTS))


def _value(v: str):
    """A command-line value as TOML would read it (a number, a bool or a string)."""
    import tomllib
    try:
        return tomllib.loads(f"v = {v}")["v"]
    except tomllib.TOMLDecodeError:
        return v


def _stat(xs: list) -> dict:
    xs = [float(x) for x in xs if x is not None and math.isfinite(float(x))]
    if not xs:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(np.mean(xs)), "std": float(np.std(xs, ddof=1)) if len(xs) > 1 else 0.0, "n": len(xs)}


def measure(out: Path, checkpoint: str = "best") -> dict:
    """Every run of every variant: its best dev loss, and the diagnostics of its continuations."""
    from gruv_hpc.analysis.audio import convergence, seed_indices
    from gruv_hpc.generation import generate, load_run
    from gruv_hpc.paths import read_jsonl
    res = {}
    for name in VARIANTS:
        runs = sorted(p for p in (out / name / "sweep" / "runs").glob("*") if (p / "config.json").exists())
        res[name] = []
        for run_dir in runs:
            hist = read_jsonl(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").exists() else []
            row = {"run": run_dir.name, "epochs": len(hist), "checkpoint": checkpoint,
                   "best_dev_loss": min((h["dev_loss"] for h in hist), default=None), "clips": []}
            try:
                lr = load_run(run_dir, checkpoint)
            except Exception as e:  # a run that did not train: in the table as missing, not dropped
                row["error"] = str(e)
                res[name].append(row)
                continue
            n_dev = len(lr.data.split("dev", normalize=False))
            for k in seed_indices(n_dev, SEED_CLIPS):
                wav = out / f"generated-{checkpoint}" / name / run_dir.name / f"seed{k}.wav"
                side = generate(run_dir, wav, seed_seconds=SEED_SECONDS, length_ratio=LENGTH_RATIO, seed_from="dev",
                                seed_index=k, run=lr, seed_out=wav.with_name(f"seed{k}_seed.wav"))
                row["clips"].append({"seed_index": k, "wav": str(wav), "seed_wav": str(wav.with_name(f"seed{k}_seed.wav")),
                                     "generated_s": side["generated_s"], **side["diagnostics"]})
            row["convergence"] = convergence(lr, [Path(c["wav"]) for c in row["clips"]],
                                             [Path(c["seed_wav"]) for c in row["clips"]])
            res[name].append(row)
    return res


COLUMNS = [("best_dev_loss", "best dev loss", "{:.4f}"), ("loop_onset_s", "loop onset (s)", "{:.2f}"),
           ("loop_fraction", "loop fraction", "{:.2f}"), ("level_change_db", "level change (dB)", "{:+.1f}"),
           ("click_ratio", "click ratio", "{:.2f}"), ("seed_click_ratio", "seed click ratio", "{:.2f}"),
           ("nearest_train_distance", "nearest-train distance", "{:.3f}"),
           ("nearest_train_relative", "nearest-train / dev-train", "{:.2f}"),
           ("flatness", "flatness (music band)", "{:.3f}")]


def _clip_value(c: dict, key: str):
    if key.startswith("nearest_train_"):
        return (c.get("nearest_train") or {}).get(key[len("nearest_train_"):])
    return c.get(key)


def summarize(res: dict) -> dict:
    """Per variant, mean +- std over the training seeds of each run's mean over its seed clips.
    A run whose continuations never loop counts as looping at the end of the continuation
    (``no_loop`` says how many clips never looped)."""
    table = {}
    for name, rows in res.items():
        per_run = {k: [] for k, _, _ in COLUMNS}
        no_loop = clips = 0
        for r in rows:
            per_run["best_dev_loss"].append(r["best_dev_loss"])
            if not r["clips"]:
                continue
            for k, _, _ in COLUMNS[1:]:
                vals = []
                for c in r["clips"]:
                    v = _clip_value(c, k)
                    if k == "loop_onset_s" and v is None:
                        v = c.get("generated_s")
                    vals.append(v)
                vals = [v for v in vals if v is not None and math.isfinite(v)]
                per_run[k].append(float(np.mean(vals)) if vals else None)
            no_loop += sum(c.get("loop_onset_s") is None for c in r["clips"])
            clips += len(r["clips"])
        table[name] = {k: _stat(v) for k, v in per_run.items()}
        conv = [r["convergence"]["converged"] for r in rows if r.get("convergence")]
        copying = sum(bool((c.get("nearest_train") or {}).get("copying")) for r in rows for c in r["clips"])
        table[name].update({"runs": len(rows), "clips": clips, "clips_without_loop": no_loop,
                            "runs_converging": sum(conv), "runs_judged": len(conv), "clips_copying": copying,
                            "transform": VARIANTS[name][0], "options": VARIANTS[name][1]})
    return table


def markdown(table: dict, meta: dict) -> str:
    head = "| variant | " + " | ".join(t for _, t, _ in COLUMNS) + " | runs whose seeds converge | clips copying |"
    lines = [f"# Real music: the paper's settings against stft, input_noise and own_input_prob ({meta['date']})", "",
             meta["scale"], "", head, "|" + "---|" * (len(COLUMNS) + 3)]
    for name, t in table.items():
        opts = ", ".join(f"{k}={v}" for k, v in t["options"].items())
        cells = []
        for k, _, f in COLUMNS:
            s = t[k]
            cells.append("–" if s["mean"] is None else f"{f.format(s['mean'])} ± {f.replace('+', '').format(s['std'])}")
        cells += [f"{t['runs_converging']} of {t['runs_judged']}", f"{t['clips_copying']} of {t['clips']}"]
        lines.append(f"| {name} ({t['transform']}{', ' + opts if opts else ''}; {t['runs']} runs) | " + " | ".join(cells) + " |")
    lines += ["", "Mean ± std over the training seeds of each run's mean over its dev seed clips (loop onset: a "
              "continuation that never loops counts at its end; "
              + ", ".join(f"{n}: {t['clips_without_loop']} of {t['clips']} clips never loop" for n, t in table.items())
              + ")."]
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["prepare", "table"])
    p.add_argument("out", type=Path)
    p.add_argument("--results", type=Path, help="write RESULTS.md and RESULTS.json (table)")
    p.add_argument("--wall-s", type=float, default=None, help="the pipelines' wall time, for the record")
    p.add_argument("--seeds", type=int, nargs="+", default=SEEDS, help="prepare: the training seeds")
    p.add_argument("--checkpoint", default="best", help="table: generate from each run's best (on dev) or last checkpoint")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="prepare: train keys beside TRAIN's")
    a = p.parse_args()
    if a.what == "prepare":
        from gruv_hpc.config import parse_overrides
        prepare(a.out, {**TRAIN, **{k: _value(v) for k, v in parse_overrides(a.overrides).items()}}, a.seeds)
        return
    exp = json.loads((a.out / "experiment.json").read_text()) if (a.out / "experiment.json").exists() else \
        {"train": TRAIN, "seeds": SEEDS}
    train, seeds = exp["train"], exp["seeds"]
    res = measure(a.out, a.checkpoint)
    table = summarize(res)
    meta = {"date": time.strftime("%Y-%m-%d", time.gmtime()), "songs": SONGS.name, "excerpt_s": EXCERPT,
            "preprocess": PREPROCESS, "train": train, "seeds": seeds, "seed_seconds": SEED_SECONDS,
            "seed_clips": SEED_CLIPS, "length_ratio": LENGTH_RATIO, "pipeline_wall_s": a.wall_s,
            "checkpoint": a.checkpoint}
    meta["scale"] = (f"Scale: 4 songs of fretsonfire-songs-muldjord (the backing track, {EXCERPT[0]:g}-{EXCERPT[1]:g} s of "
                     f"each, 16 kHz mono; 1 song held out as dev), block_size 2048 (stft: hop 1024), clip_blocks 40, "
                     f"LSTM H={train['hidden']}, {train['epochs']} epochs, {train['optimizer']} lr {train['lr']:g}, "
                     f"batch {train['batch_size']}, {len(seeds)} training seeds per variant, "
                     f"{SEED_CLIPS} dev seed clips of {SEED_SECONDS} s each continued for {LENGTH_RATIO:g}x that "
                     f"from each run's {a.checkpoint} checkpoint"
                     + (" (best on dev)" if a.checkpoint == "best" else " (the end of training)") + "; "
                     "through `gruv pipeline submit --executor slurm` on the local 2-core Slurm. This is far below "
                     "the issue's suggested scale (H up to 256, 100+ epochs)."
                     + (f" Pipelines' wall time: {a.wall_s / 60:.1f} min." if a.wall_s else ""))
    md = markdown(table, meta)
    print(md)
    if a.results:
        a.results.parent.mkdir(parents=True, exist_ok=True)
        a.results.with_suffix(".md").write_text(md)
        a.results.with_suffix(".json").write_text(json.dumps({"meta": meta, "table": table, "runs": res}, indent=1,
                                                             default=str))


if __name__ == "__main__":
    main()
