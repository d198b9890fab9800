"""A corpus and its plan: which files are songs (every file's header is probed, nothing decoded),
each artist's train/dev split (seeded from the artist's name, over the songs' paths relative to
its folder, or pinned by a split file), and each preprocessing task's share of the songs.
Everything here is decided before any heavy work (``gruv preprocess --print-split`` prints it)."""
from __future__ import annotations

import math
import os
import stat
import time
import warnings
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from gruv_hpc.dataset.audio import AudioError, probe
from gruv_hpc.dataset.config import PreprocessConfig
from gruv_hpc.dataset.manifest import DatasetError, sha256_file

MIN_NATIVE_RATE = 2000  # Hz; below it a file's header is not to be believed (see plan)


@dataclass
class Plan:
    config: dict             # the PreprocessConfig, every field
    params: dict             # what the manifest records (PreprocessConfig.params)
    sources: dict            # artist -> its folder (absolute)
    songs: list              # the split, song id = position: artist, relpath, path, bytes, split, holdout, ...
    excluded: list           # files that never entered the split: artist, relpath, path, reason
    split_from: str          # "seed", or the split file it was read from
    started: float           # when planning began (for the summary's wall time)

    @property
    def artists(self) -> list[str]:
        return list(self.sources)


def parse_sources(specs: list[str]) -> dict[str, Path]:
    sources: dict[str, Path] = {}
    for spec in specs:
        artist, sep, d = spec.partition("=")
        if not sep or not artist or not d:
            raise DatasetError(f"source {spec!r}: expected ARTIST=DIR")
        if artist in sources:
            raise DatasetError(f"artist {artist!r} is given twice")
        if any(c in artist for c in "/\\ \t") or artist.startswith("."):
            raise DatasetError(f"artist name {artist!r} must not contain '/', '\\', spaces or tabs")
        if any(c in artist for c in ",+") or not artist.isprintable():
            raise DatasetError(f"artist name {artist!r} must not contain ',', '+' or control characters (a newline): "
                               "artists=A,B and grid values A+B select artists by name; rename it in ARTIST=DIR")
        path = Path(d)
        if not path.is_dir():
            raise DatasetError(f"source {spec!r}: {d} is not a directory")
        sources[artist] = path
    if not sources:
        raise DatasetError("no sources given; expected ARTIST=DIR [ARTIST=DIR ...]")
    return sources


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"


def walk(root: Path) -> tuple[list[str], list[tuple[str, str]]]:
    """(relative paths of the regular files under root, sorted; [(relative path, reason)] for
    entries that are not taken). Hidden entries are ignored. A symlink to a file is taken; a
    symlinked folder is not followed (a cycle, or a corpus counted twice); a FIFO, socket or
    device is never opened (reading a FIFO would wait forever)."""
    files, other = [], []
    pending = [""]
    while pending:
        rel_dir = pending.pop()
        try:
            entries = list(os.scandir(root / rel_dir))
        except OSError as e:
            other.append((rel_dir, f"cannot list this folder ({e.strerror})"))
            continue
        for e in entries:
            if e.name.startswith("."):
                continue
            rel = f"{rel_dir}/{e.name}" if rel_dir else e.name
            try:
                mode = os.stat(e.path).st_mode  # follows a symlink
            except OSError:
                other.append((rel, "broken symbolic link" if e.is_symlink() else "cannot stat"))
                continue
            if stat.S_ISDIR(mode):
                if e.is_symlink():
                    other.append((rel, "symbolic link to a folder: not followed"))
                else:
                    pending.append(rel)
            elif stat.S_ISREG(mode):
                files.append(rel)
            else:
                other.append((rel, f"{_kind(mode)}: not opened"))
    return sorted(files), sorted(other)


def assign_splits(n: int, artist: str, cfg: PreprocessConfig) -> list[str]:
    """Song-level, deterministic split of an artist's n songs (in relative-path order): a
    permutation seeded by the artist's name and the seed, dev_fraction of the songs to dev."""
    rng = np.random.default_rng([cfg.seed, zlib.crc32(artist.encode())])
    n_dev = int(round(cfg.dev_fraction * n))
    if n >= 2 and cfg.dev_fraction > 0:
        n_dev = min(max(n_dev, 1), n - 1)
    splits = ["train"] * n
    for i in rng.permutation(n)[:n_dev]:
        splits[i] = "dev"
    return splits


def read_split_file(path: str | Path, artists: list[str]) -> dict[tuple[str, str], str]:
    """{(artist, relative path): split} from a split file (the format ``format_split`` writes)."""
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"split file {path}: cannot read it ({e})") from None
    out: dict[tuple[str, str], str] = {}
    for no, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) != 3:
            raise DatasetError(f"{path}:{no}: expected ARTIST<TAB>PATH<TAB>train|dev, got {line!r}")
        artist, rel, split = parts[0], parts[1], parts[2].strip()
        if artist not in artists:
            raise DatasetError(f"{path}:{no}: artist {artist!r} is not one of the sources ({', '.join(artists)})")
        if split not in ("train", "dev"):
            raise DatasetError(f"{path}:{no}: split {split!r} is neither train nor dev")
        if (artist, rel) in out:
            raise DatasetError(f"{path}:{no}: {artist}\t{rel} is listed twice")
        out[(artist, rel)] = split
    return out


def _expected_clips(info, cfg: PreprocessConfig) -> int | None:
    """Clips of a file going by its header; None where the header's length is only an estimate (MP3)."""
    if info.format == "MPEG" or info.frames <= 0 or info.samplerate <= 0:
        return None
    g = math.gcd(info.samplerate, cfg.sample_rate)
    up, down = cfg.sample_rate // g, info.samplerate // g
    n = info.frames if up == down else -(-info.frames * up // down)  # resample_poly's output length
    return (cfg.make_transform().n_frames(n) - 1) // cfg.clip_blocks


def plan(sources: dict[str, Path], cfg: PreprocessConfig, split_file: str | Path | None = None) -> Plan:
    """List, probe and split; reads file headers only. Raises DatasetError for what cannot work."""
    cfg.validate()
    started = time.time()
    pinned = read_split_file(split_file, list(sources)) if split_file else None
    songs, excluded = [], []
    per_artist: dict[str, list[dict]] = {}
    by_file: dict[str, dict] = {}
    min_s = cfg.make_transform().n_samples(cfg.clip_blocks + 1) / cfg.sample_rate
    for artist, root in sources.items():
        root = Path(os.path.abspath(root))
        files, other = walk(root)
        for rel, reason in other:
            excluded.append({"artist": artist, "relpath": rel, "path": str(root / rel), "reason": reason})
        mine = per_artist.setdefault(artist, [])
        for rel in files:
            path = root / rel
            rec = {"artist": artist, "relpath": rel, "path": str(path)}
            real = os.path.realpath(path)
            if real in by_file:
                first = by_file[real]
                if first["artist"] != artist:
                    raise DatasetError(f"{path} (artist {artist}) and {first['path']} (artist {first['artist']}) are "
                                       "the same file; a song may belong to one artist only")
                excluded.append({**rec, "reason": f"the same file as {first['relpath']}"})
                continue
            try:
                info = probe(path)
            except AudioError as e:
                excluded.append({**rec, "reason": str(e).removeprefix(f"{path}: ")})
                continue
            if 0 < info.samplerate < MIN_NATIVE_RATE:
                # A header may declare any rate: a 40 KB file at 1 Hz "lasts" hours, and resampled
                # to the dataset's rate would fill shards with it (and take most of the dev split).
                excluded.append({**rec, "reason": f"native sample rate {info.samplerate} Hz is below {MIN_NATIVE_RATE} Hz"
                                                  f" (it would decode to {info.frames / info.samplerate / 3600:.1f} h): "
                                                  "not a music recording, or a damaged header"})
                continue
            clips = _expected_clips(info, cfg)
            if clips is not None and clips < 1:
                excluded.append({**rec, "reason": f"shorter than one clip: {info.frames / info.samplerate:.2f} s, "
                                                  f"needs {min_s:.2f} s"})
                continue
            rec.update(bytes=os.stat(path).st_size, native_rate=info.samplerate,
                       est_s=info.frames / info.samplerate if info.samplerate > 0 else 0.0)
            by_file[real] = rec
            mine.append(rec)
    for rec in excluded:
        warnings.warn(f"skipping {rec['path']}: {rec['reason']}", stacklevel=2)
    if not any(per_artist.values()):
        if not excluded:
            raise DatasetError(f"no files found under {', '.join(str(p) for p in sources.values())}")
        raise DatasetError("every file was skipped; no dataset written. Reasons:\n" +
                           "\n".join(f"  {r['path']}: {r['reason']}" for r in excluded))
    for artist, recs in per_artist.items():
        if not recs:
            raise DatasetError(f"artist {artist}: no usable audio under {sources[artist]}" +
                               "".join(f"\n  {r['path']}: {r['reason']}" for r in excluded if r["artist"] == artist))
    _refuse_copies_across_artists(per_artist, excluded)

    if pinned is not None:
        planned = {(r["artist"], r["relpath"]) for recs in per_artist.values() for r in recs}
        why = {(r["artist"], r["relpath"]): r["reason"] for r in excluded}
        extra = [k for k in pinned if k not in planned]
        if extra:
            a, rel = extra[0]
            what = f"is not a song: {why[(a, rel)]}" if (a, rel) in why else "is not found"
            raise DatasetError(f"split file {split_file}: {a}\t{rel} {what} (under {sources[a]})"
                               + (f"; and {len(extra) - 1} more such line(s)" if len(extra) > 1 else ""))
        missing = [k for k in sorted(planned) if k not in pinned]
        if missing:
            raise DatasetError(f"split file {split_file} has no line for {len(missing)} song(s), e.g. "
                               + ", ".join(f"{a}\t{rel}" for a, rel in missing[:3]))
    for artist, recs in per_artist.items():
        splits = [pinned[(artist, r["relpath"])] for r in recs] if pinned else assign_splits(len(recs), artist, cfg)
        if "train" not in splits:
            raise DatasetError(f"artist {artist}: no song in the train split"
                               + (f" of split file {split_file}" if pinned else ""))
        for r, s in zip(recs, splits):
            r["split"], r["holdout"] = s, False
        if len(recs) == 1 and cfg.dev_fraction > 0:
            recs[0]["holdout"] = True
            warnings.warn(f"artist {artist} has one song ({recs[0]['path']}): the last {cfg.dev_fraction:.0%} of its "
                          "clips are held out as its dev split", stacklevel=2)
        for r in recs:
            if r["native_rate"] < cfg.sample_rate:
                warnings.warn(f"{r['path']}: native sample rate {r['native_rate']} Hz is below the dataset's "
                              f"{cfg.sample_rate} Hz: its spectrum above {r['native_rate'] / 2:.0f} Hz is empty, and "
                              "stored all the same", stacklevel=2)
            songs.append({"id": len(songs), **r})
    return Plan(asdict(cfg), cfg.params(), {a: str(Path(os.path.abspath(p))) for a, p in sources.items()}, songs, excluded,
                str(Path(split_file).resolve()) if split_file else "seed", started)


def _refuse_copies_across_artists(per_artist: dict[str, list[dict]], excluded: list[dict]) -> None:
    """The same content under two artists would put one song in both artists' data: refused.
    Within one artist, a copy (under another name) would land in train and dev alike, so dev
    would score the train song: the copy is excluded (merged into the first, by path), with its
    reason, as the same file reached twice through a link is. Only files whose size matches
    another file's are read, and only those whose first 64 KiB match too are hashed whole, so
    this costs (almost) nothing, even for a corpus of clips of one length (planning is the part
    of a parallel build that does not split)."""
    def head(r):
        with open(r["path"], "rb") as f:
            return f.read(1 << 16)

    def groups(recs, key):
        out: dict = {}
        for r in recs:
            out.setdefault(key(r), []).append(r)
        return [g for g in out.values() if len(g) > 1]

    copies = []
    for same_size in groups([r for recs in per_artist.values() for r in recs], lambda r: r["bytes"]):
        for group in groups(same_size, head):
            seen: dict[str, dict] = {}
            for r in sorted(group, key=lambda r: (r["artist"], r["relpath"])):
                h = sha256_file(r["path"])
                o = seen.setdefault(h, r)
                if o["artist"] != r["artist"]:
                    raise DatasetError(f"{r['path']} (artist {r['artist']}) and {o['path']} (artist {o['artist']}) "
                                       "have the same content; a song may belong to one artist only")
                if o is not r:
                    copies.append((r, o))
    for r, o in copies:
        per_artist[r["artist"]].remove(r)
        rec = {k: r[k] for k in ("artist", "relpath", "path")}
        excluded.append({**rec, "reason": f"the same content as {o['relpath']} (a copy)"})
        warnings.warn(f"skipping {r['path']}: the same content as {o['path']} (a copy would put one song in both "
                      "train and dev)", stacklevel=3)


def format_split(p: Plan) -> str:
    """The split as a split file: one ``artist<TAB>path<TAB>train|dev`` line per song."""
    lines = ["# gruv split file: ARTIST<TAB>PATH (relative to the artist's folder)<TAB>train|dev",
             f"# split from {p.split_from}; seed {p.params['seed']}, dev fraction {p.params['dev_fraction']}"]
    for s in p.songs:
        lines.append(f"{s['artist']}\t{s['relpath']}\t{s['split']}")
        if s["holdout"]:
            lines.append(f"# ({s['artist']} has one song: the last {p.params['dev_fraction']:.0%} of its clips are dev)")
    for r in p.excluded:
        lines.append(f"# excluded: {r['artist']}\t{r['relpath']}: {r['reason']}")
    return "\n".join(lines) + "\n"


def task_songs(p: Plan, task: int, n_tasks: int) -> list[dict]:
    """Task ``task``'s share: a contiguous run of songs, of about 1/n_tasks of the audio."""
    dur = np.array([max(s["est_s"], 1e-3) for s in p.songs])
    mid = (np.cumsum(dur) - dur / 2) / dur.sum()
    return [s for s, m in zip(p.songs, mid) if task <= m * n_tasks < task + 1]
