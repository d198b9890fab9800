"""What the paper's features allow on real music: the three floors of analysis/baseline.py (the
train mean, persistence, a linear map per frequency bin) for the paper's fft features against
stft, on the songs of a Debian package, each song held out in turn.

    python3 bench/floors_real_music.py OUT [--results bench/results/floors_real_music_DATE]

The corpus is the backing track (``song.ogg``) of each song of fretsonfire-songs-muldjord (4
songs, 3-4 min each, one artist). For each song, a dataset is built by ``gruv preprocess`` with
that song as dev and the others as train (``--split-file``), then ``baseline.floor_losses``
scores the three floors on it in the model's normalized units (the train statistics, the default
std floor): exactly what ``gruv analyze`` reports as a sweep's floors. Printed relative to the
mean floor (1.0 = predicting the train mean; below 1 beats it), per held-out song and their mean.
A few minutes of one CPU core.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SONGS = Path("/usr/share/games/fretsonfire/data/songs/muldjord")
# name: gruv preprocess options. The paper's: 44.1 kHz, 0.25 s non-overlapping blocks, [Re|Im] of the
# full DFT. stft: 2048-sample sqrt-Hann frames every 1024 samples (23 ms), [Re|Im].
FEATURES = {
    "fft": ["--transform", "fft", "--block-size", "11025", "--clip-blocks", "40"],
    "stft": ["--transform", "stft", "--block-size", "2048", "--hop", "1024", "--clip-blocks", "400"],
}


def corpus(out: Path) -> list[str]:
    """OUT/corpus/muldjord/<song>.ogg links to each song's backing track (not its guitar stem: a
    stem of a dev song in train would leak it)."""
    d = out / "corpus" / "muldjord"
    d.mkdir(parents=True, exist_ok=True)
    names = []
    for song in sorted(p for p in SONGS.iterdir() if (p / "song.ogg").exists()):
        link = d / f"{song.name}.ogg"
        if not link.exists():
            link.symlink_to(song / "song.ogg")
        names.append(link.name)
    if len(names) < 2:
        sys.exit(f"{SONGS}: fewer than 2 songs (apt-get install fretsonfire-songs-muldjord)")
    return names


def fold(out: Path, feature: str, songs: list[str], dev: str) -> dict:
    from gruv_hpc.analysis.baseline import FLOORS, floor_losses
    split = out / f"split-{dev}.tsv"
    split.write_text("".join(f"muldjord\t{s}\t{'dev' if s == dev else 'train'}\n" for s in songs))
    data = out / "data" / f"{feature}-{Path(dev).stem}"
    if not (data / "manifest.json").exists():
        subprocess.run([sys.executable, "-m", "gruv_hpc.cli", "preprocess", "--out", str(data), "--quiet",
                        "--executor", "local", "--split-file", str(split), *FEATURES[feature],
                        f"muldjord={out / 'corpus' / 'muldjord'}"], check=True)
    per = floor_losses(data, None)
    return {k: float(np.mean(per[k])) for k in FLOORS} | {"dev_clips": len(per["mean"])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--results", type=Path, help="write RESULTS.json and RESULTS.md")
    a = ap.parse_args()
    t0 = time.time()
    songs = corpus(a.out)
    res: dict = {}
    for feature in FEATURES:
        res[feature] = {Path(s).stem: fold(a.out, feature, songs, s) for s in songs}
        print(f"{feature}: done ({time.time() - t0:.0f} s)", file=sys.stderr)
    lines = ["| features | held-out song | dev clips | mean (dev loss) | persistence / mean | linear / mean |",
             "|---|---|---|---|---|---|"]
    for feature, by_song in res.items():
        rel = {k: [v[k] / v["mean"] for v in by_song.values()] for k in ("persistence", "linear")}
        for song, v in by_song.items():
            lines.append(f"| {feature} | {song} | {v['dev_clips']} | {v['mean']:.3f} | {v['persistence'] / v['mean']:.3f} "
                         f"| {v['linear'] / v['mean']:.3f} |")
        lines.append(f"| {feature} | **mean of {len(by_song)}** | | | **{np.mean(rel['persistence']):.3f}** "
                     f"| **{np.mean(rel['linear']):.3f}** |")
    table = "\n".join(lines)
    print(table)
    if a.results:
        a.results.parent.mkdir(parents=True, exist_ok=True)
        a.results.with_suffix(".json").write_text(json.dumps({"features": FEATURES, "floors": res,
                                                              "seconds": time.time() - t0}, indent=1))
        a.results.with_suffix(".md").write_text(f"# The floors on real music (bench/floors_real_music.py)\n\n{table}\n\n"
                                                f"{time.time() - t0:.0f} s on this machine.\n")


if __name__ == "__main__":
    main()
