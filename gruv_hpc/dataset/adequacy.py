"""Whether a dataset is enough to learn from and to judge by, said before compute is spent: each
artist's dev split (one song, or under a minute, and every dev number rests on it), the songs
that were dropped (how many, which, why), and the optimizer steps an epoch its train split gives
at a batch size. Each warning names the artist and says what to do.

The build records the first two in the manifest (``warnings``, beside the bandwidth warning), so
that a build that ran as Slurm jobs still reaches the user: ``gruv preprocess --wait``,
``gruv dataset info``, ``gruv pipeline status``, and a sweep's dry run and submission print them.
The steps depend on the grid's batch size, so they are computed where it is known
(``steps_warnings``)."""
from __future__ import annotations

from pathlib import Path

# An artist's dev split of fewer songs, or less audio, is warned about: one song's dev loss is
# that song's, not the artist's.
MIN_DEV_SONGS = 2
MIN_DEV_S = 60.0
# An epoch of fewer optimizer steps than this (at the batch size) is warned about: a few steps an
# epoch and the dev loss moves in jumps; the checkpoint "best" picks among a handful of models.
MIN_STEPS = 10


def _name(s: dict) -> str:
    return Path(s.get("relpath") or s["path"]).name


def split_sizes(manifest: dict, artist: str) -> dict:
    """{"train_clips", "dev_clips", "dev_songs": [(name, seconds)]} of one artist, from the
    manifest's songs (a one-song artist's held-out tail counts as a dev song of its share)."""
    train = dev = 0
    dev_songs = []
    for s in manifest["songs"]:
        if s["artist"] != artist or s.get("skipped") or not s.get("clips"):
            continue
        if s["split"] == "dev":
            dev += s["clips"]
            dev_songs.append((_name(s), float(s["duration_s"])))
        else:
            train += s["clips"] - s.get("dev_clips", 0)
            if s.get("dev_clips"):
                dev += s["dev_clips"]
                dev_songs.append((_name(s) + " (its held-out end)", float(s["duration_s"]) * s["dev_clips"] / s["clips"]))
    return {"train_clips": train, "dev_clips": dev, "dev_songs": dev_songs}


def dev_warnings(manifest: dict) -> list[str]:
    """One warning per artist whose dev split is one song or under MIN_DEV_S seconds."""
    out = []
    for a in manifest["artists"]:
        z = split_sizes(manifest, a)
        secs = sum(t for _, t in z["dev_songs"])
        if len(z["dev_songs"]) >= MIN_DEV_SONGS and secs >= MIN_DEV_S:
            continue
        n = len(z["dev_songs"])
        fix = "Give dev more songs with --dev-fraction or a --split-file, or add more music"
        if not n:
            out.append(f"artist {a}: its dev split has no song: {a} has no dev loss (no best checkpoint, floor or "
                       f"figure line). {fix}")
            continue
        what = (f"{'one song' if n == 1 else f'{n} songs'}, {secs:.0f} s, {z['dev_clips']} clip(s): "
                + ", ".join(name for name, _ in z["dev_songs"]))
        out.append(f"artist {a}: its dev split is {what}; every dev loss of {a} (best checkpoint, floor, figures) "
                   f"rests on it. {fix}")
    return out


def dropped_warnings(manifest: dict) -> list[str]:
    """One warning per artist that lost files: how many of its files, which, and why."""
    out = []
    for a in manifest["artists"]:
        mine = [s for s in manifest["songs"] if s["artist"] == a]
        gone = [(_name(r), r["reason"]) for r in manifest.get("excluded", []) if r["artist"] == a]
        gone += [(_name(s), s["skipped"]) for s in mine if s.get("skipped")]
        if not gone:
            continue
        short = any(why.startswith("shorter than one clip") for _, why in gone)
        fix = ("a shorter --clip-blocks keeps short songs (or add longer ones)" if short
               else "fix or replace those files, or add more music")
        out.append(f"artist {a}: {len(gone)} of {len(mine) + sum(r['artist'] == a for r in manifest.get('excluded', []))}"
                   f" file(s) dropped: " + "; ".join(f"{n} ({why})" for n, why in gone) + f"; {fix}")
    return out


def steps_warnings(manifest: dict, artists: list[str] | None, batch_size: int, whose: str = "") -> list[str]:
    """The warning when the train split of ``artists`` (None or []: all of the dataset's) gives
    fewer than MIN_STEPS optimizer steps an epoch at ``batch_size`` (full batches only, as the
    trainer draws them), or [] when it gives enough."""
    artists = list(artists or manifest["artists"])
    clips = sum(split_sizes(manifest, a)["train_clips"] for a in artists)
    steps = clips // max(batch_size, 1)
    if steps >= MIN_STEPS:
        return []
    who = f"artist {artists[0]}" if len(artists) == 1 else f"artists {','.join(artists)}"
    return [f"{who}: its train split is {clips} clip(s), {steps} optimizer step(s) an epoch at {whose}batch_size "
            f"{batch_size}, fewer than {MIN_STEPS}; add more music, a shorter --clip-blocks (more clips of each song), "
            "or a smaller batch_size"]


def planned_manifest(p) -> dict:
    """A manifest-like {"params", "artists", "songs", "excluded"} of a build's plan (a
    ``corpus.Plan``), each song's length and clips estimated from its header: what the adequacy
    checks can say before a queued build has decoded anything (a pipeline's sweep, a Slurm build
    that does not wait). The merge's own warnings, from the decoded songs, replace these."""
    from gruv_hpc.dataset.config import PreprocessConfig
    cfg = PreprocessConfig(**p.config)
    transform = cfg.make_transform()
    songs = []
    for s in p.songs:
        n = int(s.get("est_s", 0.0) * cfg.sample_rate)
        clips = max(0, (transform.n_frames(n) - 1) // cfg.clip_blocks)
        dev = (max(1, int(round(cfg.dev_fraction * clips))) if clips >= 2 else 0) if s.get("holdout") else 0
        songs.append({**s, "duration_s": s.get("est_s", 0.0), "clips": clips, "dev_clips": dev, "skipped": None})
    return {"params": p.params, "artists": p.artists, "songs": songs, "excluded": p.excluded}


def build_warnings(manifest: dict) -> list[str]:
    """What the build knows without a batch size: the dev splits and the dropped files."""
    return dev_warnings(manifest) + dropped_warnings(manifest)


def data_warnings(manifest: dict, batches: list[tuple[list[str] | None, int]] = (), whose: str = "") -> list[str]:
    """Everything to warn about a dataset before training on it: what its build recorded (the
    manifest's ``warnings``; computed afresh for a dataset built before they were recorded), and
    the steps an epoch of each (artists, batch_size) a grid trains with, once each."""
    out = list(manifest["warnings"]) if "warnings" in manifest else build_warnings(manifest)
    if batches and all(a for a, _ in batches):  # only the artists trained on (a run of all artists: all)
        mine = {x for a, _ in batches for x in a}
        out = [w for w in out if not w.startswith("artist ") or w.split(":", 1)[0].removeprefix("artist ") in mine]
    for artists, bs in batches:
        for w in steps_warnings(manifest, artists, bs, whose):
            if w not in out:
                out.append(w)
    return out
