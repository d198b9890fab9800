"""The ``gruv`` command. Subcommands import their modules lazily: ``gruv preprocess`` and
``gruv sweep status`` never import torch, so they start in a fraction of a second."""
from __future__ import annotations

import argparse
import json
import sys
import warnings

from .config import ConfigError
from .manifest import DatasetError


def _preprocess(a) -> int:
    from .preprocess import PreprocessConfig, parse_sources, preprocess
    cfg = PreprocessConfig(sample_rate=a.sample_rate, block_size=a.block_size, clip_blocks=a.clip_blocks,
                           transform=a.transform, dev_fraction=a.dev_fraction, seed=a.seed,
                           shard_mb=a.shard_mb, shard_clips=a.shard_clips)
    warnings.simplefilter("always")
    warnings.formatwarning = lambda msg, *args, **kw: f"warning: {msg}\n"
    m = preprocess(parse_sources(a.sources), a.out, cfg, overwrite=a.overwrite, progress=not a.quiet)
    s = m["summary"]
    print(f"dataset {a.out}: {s['songs']} songs, {s['hours']:.3f} h of audio, {s['clips']} clips "
          f"({s['train_clips']} train / {s['dev_clips']} dev), {len(m['shards'])} shards, "
          f"{s['wall_s']:.1f} s ({s['hours'] * 3600 / max(s['wall_s'], 1e-9):.0f}x realtime)")
    if s["skipped"]:
        print(f"skipped {s['skipped']} file(s):")
        for song in m["songs"]:
            if song["skipped"]:
                print(f"  {song['path']}: {song['skipped']}")
    return 0


def _corpus_synth(a) -> int:
    from .synth import make_corpus
    made = make_corpus(a.out, songs_per_artist=a.songs, min_s=a.min_seconds, max_s=a.max_seconds, seed=a.seed)
    for artist, paths in made.items():
        print(f"{artist}: {len(paths)} songs in {a.out}/{artist}")
    return 0


def _train(a) -> int:
    from .config import TrainConfig, build, help_text, parse_overrides, read_file
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
    from .train import main as train_main
    res = train_main(cfg, a.run_dir)
    print(json.dumps(res))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gruv", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    pp = sub.add_parser("preprocess", help="audio folders -> sharded HDF5 spectral dataset")
    pp.add_argument("sources", nargs="+", metavar="ARTIST=DIR")
    pp.add_argument("--out", required=True, help="dataset directory (DATA_DIR)")
    pp.add_argument("--sample-rate", type=int, default=44100)
    pp.add_argument("--block-size", type=int, default=11025, help="samples per block (N)")
    pp.add_argument("--clip-blocks", type=int, default=40, help="blocks per clip")
    pp.add_argument("--transform", choices=["fft", "rfft"], default="fft")
    pp.add_argument("--dev-fraction", type=float, default=0.2)
    pp.add_argument("--seed", type=int, default=0, help="seed of the song-level split")
    pp.add_argument("--shard-mb", type=float, default=512.0, help="max shard size in MiB")
    pp.add_argument("--shard-clips", type=int, default=0, help="max clips per shard (0: size bound only)")
    pp.add_argument("--overwrite", action="store_true", help="replace a dataset with other parameters")
    pp.add_argument("--quiet", action="store_true", help="no progress bar")
    pp.set_defaults(fn=_preprocess)

    cp = sub.add_parser("corpus", help="corpus utilities")
    csub = cp.add_subparsers(dest="corpus_cmd", required=True)
    cs = csub.add_parser("synth", help="write a synthetic two-artist corpus (no download needed)")
    cs.add_argument("--out", required=True)
    cs.add_argument("--songs", type=int, default=6, help="songs per artist")
    cs.add_argument("--min-seconds", type=float, default=30)
    cs.add_argument("--max-seconds", type=float, default=60)
    cs.add_argument("--seed", type=int, default=0)
    cs.set_defaults(fn=_corpus_synth)

    tp = sub.add_parser("train", help="train (or resume) one run")
    tp.add_argument("--data", help="dataset directory (same as data=...)")
    tp.add_argument("--run-dir", help="run directory; an existing one is resumed")
    tp.add_argument("--config", help="config file (TOML or JSON)")
    tp.add_argument("--help-config", action="store_true", help="list every config key")
    tp.add_argument("overrides", nargs="*", metavar="key=value")
    tp.set_defaults(fn=_train)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args) or 0
    except (DatasetError, ConfigError) as e:
        print(f"gruv: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gruv: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
