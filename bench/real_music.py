"""The real-music experiment of docs/generation.md: the paper's fft against stft, logmag and
logmag_if (predict = delta, and next for logmag), LSTM and GRU, through the project's own
pipeline on Slurm, each judged against three floors and by its continuations.

    python3 bench/real_music.py prepare OUT     # OUT/corpus (excerpts of real songs) and OUT/<variant>.toml
    for v in fft stft logmag logmag_if; do
        python3 -m gruv_hpc.cli pipeline submit OUT/$v.toml --out OUT/$v --executor slurm --wait &
    done; wait
    python3 bench/real_music.py table OUT --results bench/results/real_music_DATE

``prepare`` cuts an excerpt of each song of a Debian music package and writes it as 16 kHz mono
WAV: the corpus of one artist. ``--songs muldjord`` (the default; fretsonfire-songs-muldjord: Lars
Muldjord's 4 songs, the backing track ``song.ogg`` of each) or ``--songs hyperrogue``
(hyperrogue-music: its 11 ``hr3-*`` tracks, one composer). The dev song's own audio after each
seed is measured as a reference row. Every variant gets its own pipeline (its own dataset: the transform is
a dataset parameter) with the same songs, the same split and the same training settings; its grid
crosses the cell, the training seed and, for logmag, ``predict``. ``table`` scores each run's best
checkpoint on every dev clip against three floors fitted on train (the mean, persistence, linear
per bin) at the next frame and at rollout horizons, with a bootstrap over dev songs and clips;
generates from it (the same dev seed clips for every run) at temperature 0 and 1; and measures
the WAVs both with the project's diagnostics and with this script's own code.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
from gruv_hpc.training import cells
from gruv_hpc.training.config import PREDICT

# The corpora `prepare --songs` offers: name -> (Debian package, glob of its songs). One artist each.
CORPORA = {
    "muldjord": ("fretsonfire-songs-muldjord", "/usr/share/games/fretsonfire/data/songs/muldjord/*/song.ogg"),
    "hyperrogue": ("hyperrogue-music", "/usr/share/hyperrogue/music/hr3-*.ogg"),
}
SAMPLE_RATE = 16000
EXCERPT = (10.0, 100.0)  # seconds of each song: past the intro, 90 s

# The scale (2 cores shared by several people, about 25 minutes for everything): small, and said
# so in the results. Every variant sees the same songs, split and training settings; a clip is
# about 4-5 s of audio whatever the frame, so that a 1 s teacher-forced start and a 3 s rollout fit.
PREPROCESS = {"jobs": 1, "sample_rate": SAMPLE_RATE, "dev_fraction": 0.25}
TRAIN = {"epochs": 40, "batch_size": 5, "optimizer": "adam", "lr": 1e-3, "hidden": 128,
         "workers": 0, "gen_seconds": 0.0, "ckpt_every_epochs": 5, "keep_last": 1, "device": "cpu"}
SEEDS = [1, 2, 3]
CELLS = [cells.PAPER_LSTM, cells.PAPER_GRU]
VARIANTS = {  # name: (preprocess keys beside PREPROCESS, train keys beside TRAIN, grid axes beside seed and cell)
    "fft": ({"transform": "fft", "block_size": 2048, "clip_blocks": 40}, {}, {}),
    "stft": ({"transform": "stft", "block_size": 2048, "hop": 1024, "clip_blocks": 80}, {}, {}),
    "logmag": ({"transform": "logmag", "block_size": 1024, "hop": 256, "clip_blocks": 256}, {},
               {"predict": ["delta", "next", "damped"]}),
    "logmag_if": ({"transform": "logmag_if", "block_size": 1024, "hop": 256, "clip_blocks": 256},
                  {}, {"predict": ["delta", "damped"]}),
}
SEED_SECONDS = 2.048  # 16 fft frames, 32 stft frames, 128 logmag frames: the same audio for all
SEED_CLIPS = 3        # dev seed clips per run
LENGTH_RATIO = 3.0
TEMPERATURES = [0.0, 1.0]  # the mean prediction (the paper's) and a sample at the model's own residual spread
DRAW_SEED_STRIDE = 1000  # table --draws K: draw d of seed clip k is seeded k + d * this (draw 0: k, as one draw was)
HORIZONS_S = [0.25, 1.0, 3.0]  # rollout horizons, after a teacher-forced start of ROLLOUT_CONTEXT_S
ROLLOUT_CONTEXT_S = 1.0


def _toml(v) -> str:
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    return repr(v)


def _song_files(songs: str) -> list[Path]:
    package, pattern = CORPORA[songs]
    files = sorted(Path("/").glob(pattern.lstrip("/")))
    if not files:
        raise SystemExit(f"--songs {songs}: no file matches {pattern} (apt-get install {package})")
    return files


def prepare(out: Path, train: dict, seeds: list[int], variants: list[str], predict: list[str] | None = None,
            songs: str = "muldjord") -> None:
    import soundfile as sf
    from scipy.signal import resample_poly
    corpus = out / "corpus" / songs
    corpus.mkdir(parents=True, exist_ok=True)
    for song in _song_files(songs):
        audio, sr = sf.read(song, dtype="float32", always_2d=True)
        audio = audio.mean(axis=1)[int(EXCERPT[0] * sr): int(EXCERPT[1] * sr)]
        g = math.gcd(sr, SAMPLE_RATE)
        sf.write(corpus / f"{song.parent.name if song.stem == 'song' else song.stem}.wav", resample_poly(audio, SAMPLE_RATE // g, sr // g).astype(np.float32),
                 SAMPLE_RATE, subtype="PCM_16")
    for name in variants:
        pre, extra, grid = VARIANTS[name]
        if predict and "predict" in grid:  # --predict: this experiment's predict axis
            grid = {**grid, "predict": predict}
        lines = ["# written by bench/real_music.py prepare", "", "[corpus]", f"{songs} = {_toml(str(corpus))}", "",
                 "[preprocess]"]
        lines += [f"{k} = {_toml(v)}" for k, v in {**PREPROCESS, **pre}.items()]
        lines += ["", "[preprocess.slurm]", "time_min = 20", "cpus_per_task = 1", "mem_gb = 2.0", "",
                  "[sweep.train]"]
        lines += [f"{k} = {_toml(v)}" for k, v in {**train, **extra}.items()]
        lines += ["", "[sweep.grid]", f"cell = {_toml(CELLS)}", f"seed = {_toml(seeds)}"]
        lines += [f"{k} = {_toml(v)}" for k, v in grid.items()]
        lines += ["", "[sweep.slurm]", "time_min = 60", "cpus_per_task = 1", "mem_gb = 2.0", "signal_delay_s = 30", "",
                  "[analysis]", "seed_clips = 1", f"seed_seconds = {SEED_SECONDS}", "max_clips = 16", "",
                  "[analysis.slurm]", "time_min = 30", "cpus_per_task = 1", "mem_gb = 3.0", ""]
        (out / f"{name}.toml").write_text("\n".join(lines))
    (out / "experiment.json").write_text(json.dumps({"train": train, "seeds": seeds, "variants": variants,
                                                      "predict": predict, "songs": songs}))
    print(f"corpus: {corpus} ({len(list(corpus.glob('*.wav')))} songs); pipelines: "
          + ", ".join(str(out / f'{n}.toml') for n in variants))


def _value(v: str):
    """A command-line value as TOML would read it (a number, a bool or a string)."""
    import tomllib
    try:
        return tomllib.loads(f"v = {v}")["v"]
    except tomllib.TOMLDecodeError:
        return v


# -- scoring: the floors, the next frame and the rollout, in the model's normalized units -----------
# Computed here with numpy (and the model's own rollout), per dev clip, so the bootstrap can resample
# songs and clips and every model and floor is paired clip by clip. The same definitions as the
# pipeline's analysis (gruv_hpc/generation/rollout.py): MSE over a frame's
# features after the run's normalization; the mean floor predicts 0, persistence the current frame,
# the linear floor a per-bin map fitted on train (a 2x2 map on (Re, Im) with intercept for [Re | Im]
# layouts, a scalar with intercept per feature for real ones); at a horizon, persistence repeats
# the last teacher-forced frame and the linear floor iterates its map.
COMPLEX_LAYOUT = ("fft", "rfft", "stft")  # [Re | Im]: feature d and d + D/2 are one bin's parts
BOOTSTRAP = 2000


def _normalized(ds, run, i: int) -> np.ndarray:
    return ((ds.features(i) - run.mean) / run.std).astype(np.float64)


class LinearFloor:
    """Next frame = a per-bin affine map of the current one, least squares on the train clips."""

    def __init__(self, clips: list[np.ndarray], complex_layout: bool):
        self.complex = complex_layout
        d = clips[0].shape[1]
        if complex_layout:
            k = d // 2
            xtx, xty = np.zeros((k, 3, 3)), np.zeros((k, 3, 2))
            for c in clips:
                x = np.stack([c[:-1, :k], c[:-1, k:], np.ones((len(c) - 1, k))], -1)  # (T, K, 3)
                y = np.stack([c[1:, :k], c[1:, k:]], -1)
                xtx += np.einsum("tki,tkj->kij", x, x)
                xty += np.einsum("tki,tkj->kij", x, y)
            self.w = np.linalg.solve(xtx + 1e-9 * np.eye(3), xty)  # (K, 3, 2)
        else:
            x = np.concatenate([c[:-1] for c in clips])
            y = np.concatenate([c[1:] for c in clips])
            mx, my = x.mean(0), y.mean(0)
            var = ((x - mx) ** 2).mean(0)
            self.a = np.where(var > 0, ((x - mx) * (y - my)).mean(0) / np.maximum(var, 1e-12), 0.0)
            self.b = my - self.a * mx

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if not self.complex:
            return self.a * x + self.b
        k = x.shape[-1] // 2
        z = np.stack([x[..., :k], x[..., k:], np.ones_like(x[..., :k])], -1)
        y = np.einsum("...ki,kij->...kj", z, self.w)
        return np.concatenate([y[..., 0], y[..., 1]], -1)


def horizon_frames(run) -> tuple[int, dict]:
    """The teacher-forced context and the frames ahead of each horizon, at the run's frame rate."""
    fps = run.cfg.sample_rate / run.transform.hop
    return max(1, round(ROLLOUT_CONTEXT_S * fps)), {h: max(1, round(h * fps)) for h in HORIZONS_S}


def floor_scores(run) -> dict:
    """Per dev clip: the three floors at the next frame and at each horizon (persistence, mean,
    linear). Depends on the dataset only; the first run of a variant computes it."""
    train, dev = run.data.split("train", normalize=False), run.data.split("dev", normalize=False)
    lin = LinearFloor([_normalized(train, run, i) for i in range(len(train))], run.cfg.transform in COMPLEX_LAYOUT)
    ctx, ahead = horizon_frames(run)
    out = {"songs": [], "next": {"mean": [], "persistence": [], "linear": []},
           "horizon": {h: {"mean": [], "persistence": [], "linear": []} for h in ahead}}
    for i in range(len(dev)):
        c = _normalized(dev, run, i)
        out["songs"].append(int(dev.index.song_of_clip[i]))
        out["next"]["mean"].append(float((c[1:] ** 2).mean()))
        out["next"]["persistence"].append(float(((c[1:] - c[:-1]) ** 2).mean()))
        out["next"]["linear"].append(float(((c[1:] - lin(c[:-1])) ** 2).mean()))
        x, last = c[ctx - 1], c[ctx - 1]
        for n in range(1, max(ahead.values()) + 1):
            x = lin(x)
            for h, m in ahead.items():
                if m == n and ctx + n - 1 < len(c):
                    true = c[ctx + n - 1]
                    out["horizon"][h]["linear"].append(float(((x - true) ** 2).mean()))
                    out["horizon"][h]["persistence"].append(float(((last - true) ** 2).mean()))
                    out["horizon"][h]["mean"].append(float((true ** 2).mean()))
    out["context_frames"], out["horizon_frames"] = ctx, ahead
    return out


def model_scores(run) -> dict:
    """Per dev clip: the model's next-frame MSE (teacher-forced, as the dev loss) and its error at
    each horizon of a free-run (the model's own rollout, as generation) after the context."""
    import torch
    dev = run.data.split("dev", normalize=False)
    ctx, ahead = horizon_frames(run)
    out = {"next": [], "horizon": {h: [] for h in ahead}}
    with torch.no_grad():
        for i in range(len(dev)):
            c = _normalized(dev, run, i)
            t = torch.from_numpy(c.astype(np.float32))
            y, _ = run.model(t[None, :-1])
            out["next"].append(float(((y[0].double().numpy() - c[1:]) ** 2).mean()))
            pred = run.model.rollout(t[:ctx], max(ahead.values())).double().numpy()
            for h, n in ahead.items():
                if ctx + n - 1 < len(c):
                    out["horizon"][h].append(float(((pred[n - 1] - c[ctx + n - 1]) ** 2).mean()))
    return out


def _resamples(songs: list[int], b: int = BOOTSTRAP, seed: int = 0) -> list[np.ndarray]:
    """Clip indices of ``b`` bootstrap resamples: dev songs with replacement, then each chosen song's
    clips with replacement (one dev song: the clips alone)."""
    rng = np.random.default_rng(seed)
    by_song = {}
    for i, s in enumerate(songs):
        by_song.setdefault(s, []).append(i)
    groups = list(by_song.values())
    out = []
    for _ in range(b):
        pick = rng.integers(len(groups), size=len(groups))
        out.append(np.concatenate([rng.choice(groups[g], size=len(groups[g])) for g in pick]))
    return out


def ratio_stat(models: list[list[float]], floor: list[float], resamples: list[np.ndarray]) -> dict:
    """Model over floor (ratio of the mean MSEs over the same clips), the mean over the training
    seeds, with a 95% bootstrap interval (songs and clips resampled, paired across seeds and floor)
    and the seeds' std."""
    f = np.asarray(floor)
    ms = [np.asarray(m) for m in models if len(m) == len(f) and len(f)]
    if not ms:
        return {"mean": None}
    per_seed = [float(m.mean() / f.mean()) for m in ms]
    boots = np.array([np.mean([m[idx].mean() / f[idx].mean() for m in ms]) for idx in resamples])
    return {"mean": float(np.mean(per_seed)), "lo": float(np.percentile(boots, 2.5)),
            "hi": float(np.percentile(boots, 97.5)), "seed_std": float(np.std(per_seed, ddof=1)) if len(ms) > 1 else 0.0,
            "per_seed": per_seed, "floor_mse": float(f.mean()), "clips": int(len(f)), "songs": None}


# -- the generated WAVs, measured with this script's own code (independent of the diagnostics) ------
OWN_FRAME, OWN_HOP = 1024, 256
OWN_LOOP_CORR = 0.98   # a frame repeats an earlier one: its log spectrum correlates above this
OWN_LOOP_LAG_S = 0.1   # with a frame at least this far back


def _own_log_spectra(audio: np.ndarray) -> np.ndarray:
    """dB magnitude of Hann frames (OWN_FRAME / OWN_HOP), (frames, bins)."""
    audio = np.asarray(audio, np.float64)
    if len(audio) < OWN_FRAME:
        audio = np.pad(audio, (0, OWN_FRAME - len(audio)))
    n = 1 + (len(audio) - OWN_FRAME) // OWN_HOP
    idx = np.arange(OWN_FRAME)[None, :] + OWN_HOP * np.arange(n)[:, None]
    return 20 * np.log10(np.abs(np.fft.rfft(audio[idx] * np.hanning(OWN_FRAME), axis=1)) + 1e-9)


def own_level_db(gen: np.ndarray, seed: np.ndarray) -> float | None:
    rg, rs = np.sqrt(np.mean(np.square(gen, dtype=np.float64))), np.sqrt(np.mean(np.square(seed, dtype=np.float64)))
    return float(20 * np.log10(rg / rs)) if rg > 0 and rs > 0 else None


def own_click_ratio(audio: np.ndarray, hop: int) -> float | None:
    """The jump across each frame edge over the mean jump in the 8 samples either side of it: a
    local comparison (the diagnostic's compares with the whole signal)."""
    d = np.abs(np.diff(np.asarray(audio, np.float64)))
    edges = np.arange(hop - 1, len(d) - 9, hop)
    edges = edges[edges >= 9]
    if not len(edges):
        return None
    near = np.concatenate([edges + k for k in range(-8, 9) if k])
    return float(d[edges].mean() / d[near].mean()) if d[near].mean() > 0 else None


def own_loops(audio: np.ndarray, sample_rate: int) -> dict:
    """Self-similarity: the fraction of frames whose log band spectrum correlates above OWN_LOOP_CORR
    with some frame at least OWN_LOOP_LAG_S earlier, and the first such frame's time (s). A loop of
    the models here is a whole number of their frames, each a multiple of OWN_HOP, so its repeats
    fall on this analysis' frame grid."""
    p = 10 ** (_own_log_spectra(audio)[:, :512] / 10)  # power; then 64 bands of 8 bins, so that a repeat
    s = 10 * np.log10(p.reshape(len(p), 64, 8).mean(2) + 1e-18)  # off the hop grid still correlates
    s = s - s.mean(1, keepdims=True)
    s /= np.maximum(np.linalg.norm(s, axis=1, keepdims=True), 1e-12)
    sim = s @ s.T
    lag = max(1, round(OWN_LOOP_LAG_S * sample_rate / OWN_HOP))
    rep = np.array([t >= lag and sim[t, : t - lag + 1].max() > OWN_LOOP_CORR for t in range(len(s))])
    first = int(np.argmax(rep)) if rep.any() else None
    return {"own_loop_fraction": float(rep.mean()),
            "own_loop_onset_s": None if first is None else first * OWN_HOP / sample_rate,
            # looping over the whole continuation: nearly every frame after the first lag repeats
            "own_loops_whole": bool(rep[lag:].mean() >= 0.9) if len(rep) > lag else False}


def _own_mean_spectrum(audio: np.ndarray) -> np.ndarray:
    return _own_log_spectra(audio).mean(0)


def own_spectral_distance(gen: np.ndarray, seed: np.ndarray, ref: np.ndarray) -> float | None:
    """RMS dB difference of the mean log spectrum from the dev songs' (floored 80 dB below the
    reference's peak), the continuation's over the seed's."""
    lo = ref.max() - 80.0

    def dist(a):
        return float(np.sqrt(np.mean((np.maximum(_own_mean_spectrum(a), lo) - np.maximum(ref, lo)) ** 2)))
    own = dist(seed)
    return dist(gen) / own if own > 0 else None


def dev_reference_spectrum(run) -> np.ndarray:
    """The dev songs' mean log spectrum, from the corpus WAVs themselves (not the dataset)."""
    import soundfile as sf
    dev = run.data.split("dev", normalize=False)
    songs = sorted({dev.manifest["songs"][int(s)]["path"] for s in set(dev.index.song_of_clip.tolist())})
    spectra = [_own_log_spectra(sf.read(p, dtype="float64")[0]) for p in songs]
    return np.concatenate(spectra).mean(0)


def truth_clips(run, ref: np.ndarray) -> list[dict]:
    """The reference every continuation is held to: for each seed clip the tables use, the dev song's
    own audio after the seed (as long as a continuation), decoded from the corpus file and measured by
    this script's own measures against the seed's own audio. What the checks give the music itself."""
    import soundfile as sf
    from gruv_hpc.analysis.audio import seed_indices
    from gruv_hpc.generation.synthesis import seed_features
    sr = run.cfg.sample_rate
    out, songs = [], {}
    dev = run.data.split("dev", normalize=False)
    for k in seed_indices(len(dev), SEED_CLIPS):
        _, info = seed_features(run, "dev", k, SEED_SECONDS, split=dev)
        if info["song"] not in songs:  # each song decoded once, however many seeds it holds
            songs[info["song"]] = sf.read(info["song"], dtype="float64")[0]
        audio = songs[info["song"]]
        a = int(round(info["start_s"] * sr))
        n_seed, n_gen = int(round(info["seconds"] * sr)), int(round(info["seconds"] * LENGTH_RATIO * sr))
        seed, truth = audio[a: a + n_seed], audio[a + n_seed: a + n_seed + n_gen]
        out.append({"seed_index": k, "start_s": info["start_s"], "generated_s": len(truth) / sr,
                    "own_level_change_db": own_level_db(truth, seed), "own_click_ratio": own_click_ratio(truth, run.transform.hop),
                    "own_seed_click_ratio": own_click_ratio(seed, run.transform.hop),
                    "own_spectral_distance": own_spectral_distance(truth, seed, ref), **own_loops(truth, sr),
                    **{"own_seed_" + k2[4:]: v for k2, v in own_loops(seed, sr).items()}})
    return out


# -- measuring every run ----------------------------------------------------------------------------
def _run_dirs(out: Path, name: str) -> list[Path]:
    return sorted(p for p in (out / name / "sweep" / "runs").glob("*") if (p / "config.json").exists())


def measure(out: Path, checkpoint: str = "best", draws: int = 1) -> dict:
    """Every run of every variant: its best dev loss, its per-clip next-frame and rollout scores, and
    its continuations' diagnostics and this script's own measures of them; and each variant's floors.
    ``draws``: sampled continuations (temperature > 0) per seed clip, each with its own draws: one
    sample says little of a sampler, and the checks' verdicts on it vary from draw to draw."""
    import soundfile as sf
    from gruv_hpc.analysis.audio import convergence, seed_indices
    from gruv_hpc.generation import generate, load_run
    from gruv_hpc.paths import read_jsonl
    res = {"floors": {}, "runs": {}, "truth": {}}
    for name in (n for n in VARIANTS if (out / n / "sweep" / "runs").is_dir()):
        res["runs"][name] = []
        ref = None
        for run_dir in _run_dirs(out, name):
            hist = read_jsonl(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").exists() else []
            meta = json.loads((run_dir / "config.json").read_text()).get("config", {})
            row = {"run": run_dir.name, "cell": meta.get("cell"), "predict": meta.get("predict", "next"),
                   "head": meta.get("head", "mean"),
                   "seed": meta.get("seed"), "epochs": len(hist), "checkpoint": checkpoint,
                   "best_dev_loss": min((h["dev_loss"] for h in hist), default=None), "clips": []}
            try:
                lr = load_run(run_dir, checkpoint)
            except Exception as e:  # a run that did not train: in the table as missing, not dropped
                row["error"] = str(e)
                res["runs"][name].append(row)
                continue
            row["checkpoint_epoch"] = lr.epoch
            if name not in res["floors"]:
                res["floors"][name] = floor_scores(lr)
                ref = dev_reference_spectrum(lr)
                res["truth"][name] = truth_clips(lr, ref)
            row["scores"] = model_scores(lr)
            n_dev = len(lr.data.split("dev", normalize=False))
            for temp in TEMPERATURES:
                audios = []
                for k, d in ((k, d) for k in seed_indices(n_dev, SEED_CLIPS) for d in range(draws if temp > 0 else 1)):
                    wav = out / f"generated-{checkpoint}" / name / run_dir.name / f"T{temp:g}_seed{k}{f'_d{d}' if d else ''}.wav"
                    aud = {}
                    side = generate(run_dir, wav, seed_seconds=SEED_SECONDS, length_ratio=LENGTH_RATIO, seed_from="dev",
                                    seed_index=k, run=lr, seed_out=wav.with_name(f"T{temp:g}_seed{k}_seed.wav"),
                                    temperature=temp, noise_seed=k + d * DRAW_SEED_STRIDE, audio_out=aud)
                    gen_w = sf.read(wav, dtype="float64")[0]  # the WAV as written, read back
                    seed_w = sf.read(wav.with_name(f"T{temp:g}_seed{k}_seed.wav"), dtype="float64")[0]
                    sr, hop = lr.cfg.sample_rate, lr.transform.hop
                    own = {"own_level_change_db": own_level_db(gen_w, seed_w),
                           "own_click_ratio": own_click_ratio(gen_w, hop),
                           "own_seed_click_ratio": own_click_ratio(seed_w, hop),
                           "own_spectral_distance": own_spectral_distance(gen_w, seed_w, ref),
                           **own_loops(gen_w, sr), **{"own_seed_" + k2[4:]: v for k2, v in own_loops(seed_w, sr).items()}}
                    row["clips"].append({"temperature": temp, "seed_index": k, "draw": d, "wav": str(wav),
                                         "generated_s": side["generated_s"], "clipped_samples": side["clipped_samples"],
                                         **side["diagnostics"], **own})
                    if d == 0:  # convergence: do continuations from different seed clips meet (one draw each)
                        audios.append((aud["continuation"], aud["seed"]))
                row.setdefault("convergence", {})[f"T{temp:g}"] = convergence(lr, [a for a, _ in audios],
                                                                             [s for _, s in audios])
            res["runs"][name].append(row)
            print(f"measured {name}/{run_dir.name}", flush=True)
    return res


def _group(row: dict) -> str:
    head = row.get("head", "mean")
    return f"{row['cell']}, predict={row['predict']}" + ("" if head == "mean" else f", head={head}")


def summarize(res: dict) -> dict:
    """Per variant and cell (and predict): the model against each floor, next frame and horizons
    (mean over seeds, bootstrap interval); the continuations' diagnostics and own measures per
    temperature (mean +- std over the seeds' clip means), and how many clips meet each goal."""
    table = {}
    for name, rows in res["runs"].items():
        fl = res["floors"].get(name)
        if fl is None:
            continue
        boots = _resamples(fl["songs"])
        n_songs = len(set(fl["songs"]))
        groups = {}
        for r in rows:
            groups.setdefault(_group(r), []).append(r)
        for g, rs in groups.items():
            ok = [r for r in rs if "scores" in r]
            t = {"transform": VARIANTS[name][0]["transform"], "runs": len(rs), "runs_scored": len(ok),
                 "dev_songs": n_songs, "dev_clips": len(fl["songs"]),
                 "best_dev_loss": _stat([r["best_dev_loss"] for r in rs]),
                 "next_model_mse": _stat([np.mean(r["scores"]["next"]) for r in ok]),
                 "floors_next": {f: float(np.mean(v)) for f, v in fl["next"].items()},
                 "next": {f: ratio_stat([r["scores"]["next"] for r in ok], v, boots) for f, v in fl["next"].items()},
                 "horizons": {}}
            for h, floors in fl["horizon"].items():
                t["horizons"][f"{h:g}s"] = {f: ratio_stat([r["scores"]["horizon"][h] for r in ok], v, boots)
                                            for f, v in floors.items()}
                t["horizons"][f"{h:g}s"]["floor_mse"] = {f: float(np.mean(v)) if v else None for f, v in floors.items()}
            t["continuations"] = {}
            for temp in TEMPERATURES:
                per = {k: _stat([_clip_mean([c for c in r["clips"] if c["temperature"] == temp], k) for r in ok])
                       for k in CONT_KEYS}
                clips = [c for r in ok for c in r["clips"] if c["temperature"] == temp]
                per["goals"], per["goals_all"] = _goal_counts(clips, GOALS)
                per["own_goals"], per["own_goals_all"] = _goal_counts(clips, OWN_GOALS)
                per["clips"] = len(clips)
                per["clips_without_loop"] = sum(c.get("loop_onset_s") is None for c in clips)
                per["goals_all_by_seed_clip"] = goals_by_seed_clip(clips)
                conv = [r["convergence"].get(f"T{temp:g}") for r in ok if r.get("convergence")]
                per["runs_converging"] = sum(bool(c and c.get("converged")) for c in conv)
                t["continuations"][f"T{temp:g}"] = per
            table[f"{name} ({g})"] = t
    for name, truth in res.get("truth", {}).items():
        if truth:  # the dev song's own continuation: one "run", the same at every temperature
            # this script's own measures only: the diagnostics need a run, and there is none here
            per = {k: _stat([_clip_mean(truth, k) if k.startswith("own_") else None]) for k in CONT_KEYS}
            per["own_goals"], per["own_goals_all"] = _goal_counts(truth, OWN_GOALS)
            per["clips"] = len(truth)
            per["per_clip_own_spectral_distance"] = [c.get("own_spectral_distance") for c in truth]
            table[f"{name} (the dev song's own continuation)"] = {"truth": True, "continuations": {
                f"T{temp:g}": per for temp in TEMPERATURES}}
    return table


def _stat(xs: list) -> dict:
    xs = [float(x) for x in xs if x is not None and math.isfinite(float(x))]
    if not xs:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(np.mean(xs)), "std": float(np.std(xs, ddof=1)) if len(xs) > 1 else 0.0, "n": len(xs)}


def _clip_mean(clips: list[dict], key: str) -> float | None:
    """The mean of ``key`` over ``clips`` (finite values only), or None when none has one."""
    vals = [float(v) for v in (_clip_value(c, key) for c in clips) if v is not None and math.isfinite(float(v))]
    return float(np.mean(vals)) if vals else None


def goals_by_seed_clip(clips: list[dict], goals: dict | None = None) -> dict:
    """{seed clip: [continuations meeting all of ``goals`` (default GOALS), continuations]}, over
    the runs and draws: whether the failures are spread or one seed clip's."""
    goals = GOALS if goals is None else goals
    return {str(k): [_goal_counts([c for c in clips if c["seed_index"] == k], goals)[1],
                     sum(c["seed_index"] == k for c in clips)] for k in sorted({c["seed_index"] for c in clips})}


def _goal_counts(clips: list[dict], goals: dict) -> tuple[dict, int]:
    """How many ``clips`` meet each of ``goals``, and how many meet all of them."""
    return ({g: sum(bool(fn(c)) for c in clips) for g, fn in goals.items()},
            sum(all(fn(c) for fn in goals.values()) for c in clips))


def _clip_value(c: dict, key: str):
    if key.startswith("nearest_train_"):
        return (c.get("nearest_train") or {}).get(key[len("nearest_train_"):])
    if key == "loop_onset_s" and c.get(key) is None:
        return c.get("generated_s")  # never loops: counts at the continuation's end
    if key == "own_loop_onset_s" and c.get(key) is None:
        return c.get("generated_s")
    return c.get(key)


CONT_KEYS = ["clipped_samples", "level_change_db", "own_level_change_db", "loop_onset_s", "own_loop_onset_s", "loop_fraction",
             "own_loop_fraction", "click_ratio", "own_click_ratio", "seed_click_ratio", "own_seed_click_ratio",
             "nearest_train_relative", "spectral_distance", "own_spectral_distance", "own_seed_loop_fraction"]


def _ok(v, test) -> bool:
    return v is not None and math.isfinite(float(v)) and test(float(v))


# The issue's goals for a sampled continuation of 3x the seed, by the diagnostics and by our own measures.
GOALS = {
    "level within 6 dB": lambda c: _ok(c.get("level_change_db"), lambda v: abs(v) <= 6),
    "no whole loop": lambda c: (c.get("loop_fraction") or 0.0) < 0.9,
    "clicks <= 1.5": lambda c: _ok(c.get("click_ratio"), lambda v: v <= 1.5),
    "not copying (rel >= 1)": lambda c: _ok((c.get("nearest_train") or {}).get("relative"), lambda v: v >= 1.0),
    "spectral <= 2x seed": lambda c: _ok(c.get("spectral_distance"), lambda v: v <= 2.0),
}
OWN_GOALS = {
    "level within 6 dB": lambda c: _ok(c.get("own_level_change_db"), lambda v: abs(v) <= 6),
    "no whole loop": lambda c: not c.get("own_loops_whole"),
    "clicks <= 1.5": lambda c: _ok(c.get("own_click_ratio"), lambda v: v <= 1.5),
    "spectral <= 2x seed": lambda c: _ok(c.get("own_spectral_distance"), lambda v: v <= 2.0),
}


def _r(s: dict) -> str:
    if not s or s.get("mean") is None:
        return "–"
    return f"{s['mean']:.3f} [{s['lo']:.3f}, {s['hi']:.3f}]"


def _m(s: dict, f: str = "{:.2f}") -> str:
    if not s or s.get("mean") is None:
        return "–"
    return f"{f.format(s['mean'])} ± {f.replace('+', '').format(s['std'])}"


def markdown(table: dict, meta: dict) -> str:
    lines = [f"# Real music: {', '.join(meta.get('ran') or VARIANTS)}, LSTM and GRU, against three floors ({meta['date']})", "",
             meta["scale"], "",
             "## A. Against the floors: model MSE over floor MSE (< 1 beats the floor)", "",
             "Mean over the training seeds of (model's mean MSE / floor's mean MSE) on the same dev clips, in the "
             "model's normalized units, from each run's best-on-dev checkpoint; [95% bootstrap interval] resampling "
             "the dev songs and their clips, paired across seeds and floor. Next frame: teacher-forced. Horizons: "
             f"{ROLLOUT_CONTEXT_S:g} s teacher-forced, then the model's own rollout; persistence repeats the last seen "
             "frame, the linear floor iterates its map.", "",
             "| variant (cell, predict) | best dev loss (training) / next-frame MSE (here) | next: / mean | next: / persistence | next: / linear | "
             + " | ".join(f"{h:g} s: / persistence | {h:g} s: / mean" for h in HORIZONS_S) + " |",
             "|---|" + "---|" * (4 + 2 * len(HORIZONS_S))]
    for name, t in ((n, t) for n, t in table.items() if not t.get("truth")):
        cells = [_m(t["best_dev_loss"], "{:.4f}") + " / " + _m(t["next_model_mse"], "{:.4f}"), _r(t["next"]["mean"]), _r(t["next"]["persistence"]),
                 _r(t["next"]["linear"])]
        for h in HORIZONS_S:
            hz = t["horizons"].get(f"{h:g}s", {})
            cells += [_r(hz.get("persistence")), _r(hz.get("mean"))]
        lines.append(f"| {name} ({t['runs_scored']} of {t['runs']} runs) | " + " | ".join(cells) + " |")
    lines += ["", "The floors themselves (MSE, normalized units; the mean floor is ~1 on train by construction):", "",
              "| variant | dev songs / clips | next: mean | next: persistence | next: linear | "
              + " | ".join(f"{h:g} s: persistence / mean / linear" for h in HORIZONS_S) + " |",
              "|---|---|---|---|---|" + "---|" * len(HORIZONS_S)]
    seen = set()
    for name, t in ((n, t) for n, t in table.items() if not t.get("truth")):
        v = name.split(" (")[0]
        if v in seen:
            continue
        seen.add(v)
        f = t["floors_next"]
        hs = []
        for h in HORIZONS_S:
            fm = t["horizons"].get(f"{h:g}s", {}).get("floor_mse", {})
            hs.append(" / ".join("–" if fm.get(k) is None else f"{fm[k]:.3f}" for k in ("persistence", "mean", "linear")))
        lines.append(f"| {v} | {t['dev_songs']} / {t['dev_clips']} | {f['mean']:.3f} | {f['persistence']:.3f} | "
                     f"{f['linear']:.3f} | " + " | ".join(hs) + " |")
    for temp in TEMPERATURES:
        lines += ["", f"## {'B' if temp == 0 else 'C'}. Continuations, temperature {temp:g}"
                  + (" (the mean prediction, the paper's)" if temp == 0 else " (sampled: at the model's train residual spread, or a gaussian head's own)"),
                  "", f"{SEED_CLIPS} dev seed clips of {SEED_SECONDS:g} s per run, continued for {LENGTH_RATIO:g}x that. "
                  "Mean ± std over the seeds of each run's clip mean; 'diag' is the project's diagnostic, 'own' this "
                  "script's own measure of the WAV read back (loop onset: a continuation that never loops counts at its end). "
                  "'the dev song's own continuation': the song's real audio after each seed, by this script's measures "
                  "(what the checks give the music itself; no diagnostics, which need a run).",
                  "", "| variant | level change dB (diag / own) | loop onset s (diag / own) | loop fraction (diag / own; "
                  "own seed) | click ratio (diag / own; seed diag / own) | nearest-train / dev-train | spectral distance "
                  "(diag / own) | goals met, diag (clips) | goals met, own (clips) |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for name, t in table.items():
            c = t["continuations"].get(f"T{temp:g}")
            if not c:
                continue
            by_clip = ", ".join(f"clip {k}: {a} of {n}" for k, (a, n) in c.get("goals_all_by_seed_clip", {}).items())
            goals = ("– (no diagnostics: not a run)" if t.get("truth") else
                     "; ".join(f"{k}: {v}" for k, v in c["goals"].items()) + f"; **all: {c['goals_all']} of {c['clips']}**"
                     + (f" (by seed clip: {by_clip})" if by_clip else ""))
            own = "; ".join(f"{k}: {v}" for k, v in c["own_goals"].items()) + f"; **all: {c['own_goals_all']} of {c['clips']}**"
            lines.append(f"| {name} | {_m(c['level_change_db'], '{:+.1f}')} / {_m(c['own_level_change_db'], '{:+.1f}')} | "
                         f"{_m(c['loop_onset_s'])} / {_m(c['own_loop_onset_s'])} | {_m(c['loop_fraction'])} / "
                         f"{_m(c['own_loop_fraction'])}; {_m(c['own_seed_loop_fraction'])} | {_m(c['click_ratio'])} / "
                         f"{_m(c['own_click_ratio'])}; {_m(c['seed_click_ratio'])} / {_m(c['own_seed_click_ratio'])} | "
                         f"{_m(c['nearest_train_relative'])} | {_m(c['spectral_distance'])} / "
                         f"{_m(c['own_spectral_distance'])} | {goals} | {own} |")
    return "\n".join(lines) + "\n"


# -- the pipeline analysis' own floors and rollouts (gruv analyze: results.csv), beside ours --------
def analysis_rows(out: Path, report: str) -> dict:
    """Per variant and group (cell, predict): the mean over the seeds of results.csv's floors, the
    checkpoint's dev loss as the analysis measured it, each floor's paired difference (model minus
    floor) with the seeds' bootstrap intervals, and the rollout horizons."""
    import csv
    table = {}
    for name in VARIANTS:
        path = out / name / report / "results.csv"
        if not path.exists():
            continue
        rows = list(csv.DictReader(path.open()))
        for r in rows:
            cfg = json.loads((out / name / "sweep" / "runs" / r["name"] / "config.json").read_text())["config"]
            group = _group({"cell": r["cell"], "predict": cfg.get("predict", "next"), "head": cfg.get("head", "mean")})
            table.setdefault(f"{name} ({group})", []).append(r)
    return table


def _f(v):
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def analysis_markdown(table: dict, report: str) -> str:
    cols = ["baseline_dev_loss", "persistence_dev_loss", "linear_dev_loss", "eval_dev_loss"]
    lines = ["", f"## D. The same runs by the pipeline's analysis (`gruv analyze` of each pipeline: `{report}/results.csv`)",
             "", "Mean over the 3 seeds. Floors and the checkpoint's dev loss (normalized units); for each floor the "
             "paired per-clip difference model minus floor, mean over seeds, with the lowest low and highest high of the "
             "seeds' 95% bootstrap intervals (dev songs, then clips), and in how many seeds the whole interval is below 0; "
             "rollout horizons as the analysis takes them (context: half the clip, so 3 s fits only the logmag clips).",
             "", "| variant | mean / persistence / linear floor | model | − mean | − persistence | − linear | "
             + " | ".join(f"{h:g} s: model / persistence / mean" for h in HORIZONS_S) + " |",
             "|---|---|---|---|---|---|" + "---|" * len(HORIZONS_S)]
    for g, rows in table.items():
        m = {c: np.mean([_f(r[c]) for r in rows if _f(r[c]) is not None] or [np.nan]) for c in cols}
        cells = [f"{m['baseline_dev_loss']:.4f} / {m['persistence_dev_loss']:.4f} / {m['linear_dev_loss']:.4f}",
                 f"{m['eval_dev_loss']:.4f}"]
        for k in ("mean", "persistence", "linear"):
            d = [_f(r[f"{k}_diff"]) for r in rows]
            lo = [_f(r[f"{k}_diff_low"]) for r in rows]
            hi = [_f(r[f"{k}_diff_high"]) for r in rows]
            if any(v is None for v in d + lo + hi):
                cells.append("–")
                continue
            below = sum(h < 0 for h in hi)
            cells.append(f"{np.mean(d):+.4f} [{min(lo):+.4f}, {max(hi):+.4f}], below in {below} of {len(rows)}")
        for h in HORIZONS_S:
            v = [np.mean([_f(r[f"rollout_{h:g}s_{k}"]) for r in rows if _f(r[f"rollout_{h:g}s_{k}"]) is not None] or [np.nan])
                 for k in ("model", "persistence", "mean")]
            cells.append("–" if not np.isfinite(v[0]) else " / ".join(f"{x:.3f}" for x in v))
        lines.append(f"| {g} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["prepare", "table", "analysis"])
    p.add_argument("out", type=Path)
    p.add_argument("--results", type=Path, help="write RESULTS.md and RESULTS.json (table)")
    p.add_argument("--wall-s", type=float, default=None, help="the pipelines' wall time, for the record")
    p.add_argument("--seeds", type=int, nargs="+", default=SEEDS, help="prepare: the training seeds")
    p.add_argument("--checkpoint", default="best", help="table: generate from each run's best (on dev) or last checkpoint")
    p.add_argument("--draws", type=int, default=1, help="table: sampled continuations per seed clip at temperature > 0, "
                   "each with its own draws (the first seeded as a single draw is)")
    p.add_argument("--report", default="report", help="analysis: the report directory of each variant's pipeline "
                   "(e.g. one rebuilt with `gruv analyze`) whose results.csv is added to RESULTS.md and .json")
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS),
                   help="prepare: the variants (pipelines) to write; table measures those that ran")
    p.add_argument("--predict", nargs="+", choices=list(PREDICT), default=None,
                   help="prepare: the predict axis of the variants that have one (default: each variant's own)")
    p.add_argument("--songs", choices=list(CORPORA), default="muldjord",
                   help="prepare: the corpus (one artist; its Debian package must be installed)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="prepare: train keys beside TRAIN's")
    a = p.parse_args()
    if a.what == "prepare":
        from gruv_hpc.config import parse_overrides
        prepare(a.out, {**TRAIN, **{k: _value(v) for k, v in parse_overrides(a.overrides).items()}}, a.seeds,
                a.variants, a.predict, a.songs)
        return
    if a.what == "analysis":
        rows = analysis_rows(a.out, a.report)
        md = analysis_markdown(rows, a.report)
        print(md)
        if a.results:
            with a.results.with_suffix(".md").open("a") as f:
                f.write(md)
            j = json.loads(a.results.with_suffix(".json").read_text())
            j["analysis"] = {"report": a.report, "rows": rows}
            a.results.with_suffix(".json").write_text(json.dumps(j, indent=1, default=str))
        return
    exp = json.loads((a.out / "experiment.json").read_text()) if (a.out / "experiment.json").exists() else \
        {"train": TRAIN, "seeds": SEEDS}
    train, seeds = exp["train"], exp["seeds"]
    ran = [n for n in exp.get("variants", VARIANTS) if (a.out / n / "sweep" / "runs").is_dir()]

    def predicts(n):  # what each variant's grid crossed: this experiment's --predict, else the variant's own
        own = VARIANTS[n][2].get("predict", [VARIANTS[n][1].get("predict", "next")])
        return exp.get("predict") if exp.get("predict") and "predict" in VARIANTS[n][2] else own
    res = measure(a.out, a.checkpoint, a.draws)
    table = summarize(res)
    songs = exp.get("songs", "muldjord")
    n_songs = len(list((a.out / "corpus" / songs).glob("*.wav")))
    meta = {"date": time.strftime("%Y-%m-%d", time.gmtime()), "songs": songs, "excerpt_s": EXCERPT,
            "preprocess": PREPROCESS, "variants": VARIANTS, "cells": CELLS, "train": train, "seeds": seeds,
            "seed_seconds": SEED_SECONDS, "seed_clips": SEED_CLIPS, "length_ratio": LENGTH_RATIO,
            "temperatures": TEMPERATURES, "horizons_s": HORIZONS_S, "rollout_context_s": ROLLOUT_CONTEXT_S,
            "pipeline_wall_s": a.wall_s, "checkpoint": a.checkpoint, "ran": ran, "draws": a.draws}
    said = ("hidden", "epochs", "optimizer", "lr", "batch_size")  # in the line below already
    extra = {k: v for k, v in train.items() if k not in said and TRAIN.get(k) != v}  # prepare's KEY=VALUE train keys
    meta["scale"] = (f"Scale: the {n_songs} songs of {CORPORA[songs][0]}"
                     f"{' (the backing track' if songs == 'muldjord' else ' (' + CORPORA[songs][1]}, "
                     f"{EXCERPT[0]:g}-{EXCERPT[1]:g} s of each, 16 kHz mono; {PREPROCESS['dev_fraction']:g} of the songs "
                     "held out as dev, and the bootstrap resamples the dev songs and their clips); "
                     "fft block 2048 (40-block clips), stft 2048/hop 1024 (80), logmag and logmag_if frame 1024/hop 256 "
                     f"(256-frame clips: about 5 s, 5 s and 4 s); {' and '.join(c.upper() for c in CELLS)} "
                     f"H={train['hidden']}, {train['epochs']} epochs, {train['optimizer']} lr {train['lr']:g}, "
                     f"batch {train['batch_size']}"
                     + "".join(f", {k}={v}" for k, v in extra.items())
                     + f", {len(seeds)} training seeds per cell; variants: "
                     + "; ".join(f"{n} (predict {', '.join(predicts(n))})" for n in ran) + "; "
                     f"{SEED_CLIPS} dev seed clips of {SEED_SECONDS:g} s each continued for {LENGTH_RATIO:g}x that "
                     f"from each run's {a.checkpoint} checkpoint"
                     + (" (best on dev)" if a.checkpoint == "best" else " (the end of training)")
                     + f" at temperature {' and '.join(f'{t:g}' for t in TEMPERATURES)}"
                     + (f" ({a.draws} draws per seed clip when sampled)" if a.draws > 1 else "") + "; "
                     "through `gruv pipeline submit --executor slurm` on the local 2-core Slurm, shared with other work. "
                     "Far below the issue's scale (an hour, more music, H up to 256, 100+ epochs)."
                     + (f" Pipelines' wall time: {a.wall_s / 60:.1f} min." if a.wall_s else ""))
    md = markdown(table, meta)
    print(md)
    if a.results:
        a.results.parent.mkdir(parents=True, exist_ok=True)
        a.results.with_suffix(".md").write_text(md)
        a.results.with_suffix(".json").write_text(json.dumps({"meta": meta, "table": table, "runs": res["runs"],
                                                              "floors": res["floors"]}, indent=1, default=str))


if __name__ == "__main__":
    main()
