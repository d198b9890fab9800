"""Dataset format 2: per-artist statistics, the split's rules, split files, compact storage."""
import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import TINY, preprocess_tiny, tiny_config
from gruv_hpc.dataset.audio import load_mono
from gruv_hpc.dataset.clips import ClipDataset
from gruv_hpc.errors import DatasetError
from gruv_hpc.dataset.transforms import audio_to_blocks, get_transform
from gruv_hpc.dataset.manifest import load_manifest, load_stats
from gruv_hpc.dataset.build import PreprocessConfig, format_split, parse_sources, plan, preprocess


def cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "gruv_hpc.cli", "preprocess", *map(str, args)],
                          capture_output=True, text=True, **kw)


def split_of(manifest: dict, artist: str) -> dict:
    return {s["relpath"]: s["split"] for s in manifest["songs"] if s["artist"] == artist}


# ---------------------------------------------------------------------------------------------
# Per-artist statistics

def test_one_artists_run_does_not_depend_on_the_other_artists(corpus, tmp_path):
    """The same songs and seed: a dataset of aurora alone and one of circuit and aurora give
    aurora the same split, the same statistics and the same training losses."""
    from gruv_hpc.generation import open_dataset
    from gruv_hpc.training.trainer import main
    alone, both = tmp_path / "alone", tmp_path / "both"
    cfg = PreprocessConfig(**TINY)
    preprocess(parse_sources([f"aurora={corpus / 'aurora'}"]), alone, cfg, progress=False)
    preprocess(parse_sources([f"circuit={corpus / 'circuit'}", f"aurora={corpus / 'aurora'}"]), both, cfg, progress=False)
    ma, mb = load_manifest(alone), load_manifest(both)
    assert split_of(ma, "aurora") == split_of(mb, "aurora")
    for run, data in (("a", alone), ("b", both)):
        main(tiny_config(data, artists=["aurora"], epochs=2, hidden=8), tmp_path / run)
    la, lb = ([json.loads(x) for x in (tmp_path / r / "metrics.jsonl").read_text().splitlines()] for r in "ab")
    assert len(la) == len(lb) == 2
    for x, y in zip(la, lb):
        for k in ("train_loss", "dev_loss"):
            assert x[k] == pytest.approx(y[k], rel=1e-5), (k, x[k], y[k])
    # Generation and analysis normalize with the run's statistics: aurora's, in both datasets.
    def stats(data, **kw):
        h = open_dataset(tiny_config(data, feature_dim=128, **kw))
        return h.mean, h.std
    for got, want in zip(stats(both, artists=["aurora"]), stats(alone, artists=["aurora"])):
        np.testing.assert_allclose(got, want, rtol=1e-12)
    assert not np.allclose(stats(both)[0], stats(both, artists=["aurora"])[0])


@pytest.mark.parametrize("artist", ["aurora", "circuit"])
def test_predicting_the_mean_scores_one_on_each_artists_train_split(data, artist):
    ds = ClipDataset(data, "train", [artist])
    # every train block once: x of each clip, and the last y block of each segment
    last = ds.index.start_of_clip + 9 == ds.index.end_of_clip
    y = torch.cat([ds[i][0] for i in range(len(ds))] + [ds[i][1][-1:] for i in np.nonzero(last)[0]]).double()
    assert len(y) == load_manifest(data)["stats"]["blocks"][artist]
    varying = torch.from_numpy(get_transform("fft", 64).expansion()[1] != 0)  # Im of DC and Nyquist are always 0
    assert float((y[:, varying] ** 2).mean()) == pytest.approx(1.0, abs=0.02)
    assert float((y**2).mean()) == pytest.approx(1.0, abs=0.02)


def test_pooled_stats_are_the_stats_of_the_pooled_blocks(data):
    """Pooled per-artist moments (Chan) = statistics computed directly over all their train blocks."""
    m = load_manifest(data)
    idx, sign = get_transform("fft", 64).expansion()
    blocks = {}
    for a in m["artists"]:
        out = []
        for sh in m["shards"]:
            if sh["split"] == "train" and sh["artist"] == a:
                with h5py.File(data / sh["file"]) as h:
                    for _, off, n, first in sh["segments"]:
                        out.append(h["blocks"][off + (first > 0): off + n * 8 + 1].astype(np.float64))
        blocks[a] = np.concatenate(out)[:, idx] * sign
    for chosen in (["aurora"], ["circuit"], ["aurora", "circuit"], None):
        x = np.concatenate([blocks[a] for a in chosen or m["artists"]])
        mean, std = load_stats(data, m, chosen, std_floor=0.0)  # the paper's z-scoring
        ref_std = x.std(0)
        assert mean.shape == std.shape == (128,) and mean.dtype == std.dtype == np.float64
        # relative to each value's scale: a mean of ~0 has no relative digits of its own
        assert np.all(np.abs(mean - x.mean(0)) <= 1e-12 * (np.abs(x.mean(0)) + ref_std))
        varying = ref_std > 1e-6 * ref_std.max()
        np.testing.assert_allclose(std[varying], ref_std[varying], rtol=1e-12)
        assert np.all(std[~varying] == 1.0)  # the floor: never divide by ~0
        # The default: at least 0.1 x the RMS spread of the features that vary, then one factor
        # that makes the train mean's loss exactly 1 on train.
        live = sign != 0
        s = np.where(live, np.maximum(ref_std, 0.1 * np.sqrt(np.mean(ref_std[live] ** 2))), 1.0)
        s *= np.sqrt((ref_std[live] ** 2 / s[live] ** 2).sum() / len(s))
        floored = load_stats(data, m, chosen)[1]
        np.testing.assert_allclose(floored, s, rtol=1e-9)
        assert np.mean(ref_std ** 2 / floored ** 2) == pytest.approx(1.0, rel=1e-9)
        assert (ref_std[live] < 0.1 * np.sqrt(np.mean(ref_std[live] ** 2))).any()  # the floor does bite here
    assert not np.allclose(load_stats(data, m, ["aurora"])[1], load_stats(data, m, ["circuit"])[1])


# ---------------------------------------------------------------------------------------------
# The split

def _songs(root: Path, names: list[str], seed: int = 0) -> None:
    """Short distinct songs (two clips at TINY) named by path; created in the order given."""
    for k, name in enumerate(names):
        rng = np.random.default_rng(seed + k)
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        sf.write(p, (0.1 * rng.standard_normal(20 * 64)).astype(np.float32), 8000)


NAMES = [f"disc{d}/track{t:02d}.wav" for d in (1, 2) for t in range(6)] + ["single.wav"]


def test_split_depends_only_on_the_artists_songs_and_the_seed(tmp_path, monkeypatch):
    cfg = PreprocessConfig(**TINY)
    _songs(tmp_path / "a", NAMES)
    _songs(tmp_path / "b", NAMES, seed=100)
    _songs(tmp_path / "a_reversed", NAMES[::-1])  # the same songs, written in the other order
    (tmp_path / "link").symlink_to(tmp_path / "a")
    monkeypatch.chdir(tmp_path)

    def split(*specs, seed=0):
        p = plan(parse_sources(list(specs)), PreprocessConfig(**{**TINY, "seed": seed}))
        return {s["relpath"]: s["split"] for s in p.songs if s["artist"] == "x"}

    ref = split(f"x={tmp_path / 'a'}")
    assert sorted(ref) == sorted(NAMES) and list(ref.values()).count("dev") == round(0.2 * len(NAMES))
    assert split("x=a") == ref                                  # relative path
    assert split(f"x={tmp_path / 'a'}/") == ref                 # trailing slash
    assert split("x=link") == ref                               # a symlink to the same folder
    assert split(f"x={tmp_path / 'a_reversed'}") == ref         # files created in another order
    assert split(f"y={tmp_path / 'b'}", f"x={tmp_path / 'a'}") == ref  # another artist beside it
    assert split(f"x={tmp_path / 'a'}", seed=1) != ref          # the seed does change it
    assert cfg.seed == 0


def test_print_split_then_split_file_pins_the_split(corpus, tmp_path):
    srcs = [f"aurora={corpus / 'aurora'}", f"circuit={corpus / 'circuit'}"]
    r = cli(*srcs, "--out", tmp_path / "never", "--print-split", *sum((["--" + k.replace("_", "-"), v] for k, v in TINY.items()), []))
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / "never").exists() and not list(tmp_path.glob(".never*"))  # nothing written
    lines = [x for x in r.stdout.splitlines() if x and not x.startswith("#")]
    assert len(lines) == 6 and all(len(x.split("\t")) == 3 for x in lines)
    split_file = tmp_path / "split.tsv"
    split_file.write_text(r.stdout)
    m = preprocess_tiny(corpus, tmp_path / "ds")
    pinned = preprocess(parse_sources(srcs), tmp_path / "pinned", PreprocessConfig(**TINY), progress=False,
                        split_file=split_file)
    assert [(s["artist"], s["relpath"], s["split"]) for s in pinned["songs"]] == \
        [(s["artist"], s["relpath"], s["split"]) for s in m["songs"]]
    assert pinned["split_from"] == str(split_file)

    # Editing one line moves that song (and only it); a comment or blank line is fine.
    artist, rel, split = lines[0].split("\t")
    other = "dev" if split == "train" else "train"
    edited = "# edited\n\n" + "\n".join([f"{artist}\t{rel}\t{other}"] + lines[1:]) + "\n"
    split_file.write_text(edited)
    moved = preprocess(parse_sources(srcs), tmp_path / "moved", PreprocessConfig(**TINY), progress=False, split_file=split_file)
    changed = {(s["artist"], s["relpath"]) for s, t in zip(moved["songs"], m["songs"]) if s["split"] != t["split"]}
    assert changed == {(artist, rel)}


def test_split_file_errors_name_the_line(corpus, tmp_path):
    srcs = parse_sources([f"aurora={corpus / 'aurora'}", f"circuit={corpus / 'circuit'}"])
    lines = [x for x in format_split(plan(srcs, PreprocessConfig(**TINY))).splitlines() if not x.startswith("#")]
    f = tmp_path / "s.tsv"
    for text, match in (
        ("\n".join(lines[1:]), "no line for 1 song"),                                    # a song missing
        ("\n".join(lines + ["aurora\tnot-there.wav\ttrain"]), "not-there.wav is not found"),
        ("\n".join(lines + ["nobody\tx.wav\ttrain"]), r"s.tsv:7: artist 'nobody'"),
        ("\n".join(lines + [lines[0]]), "s.tsv:7: .* listed twice"),
        ("\n".join(lines[:-1] + [lines[-1].rsplit("\t", 1)[0] + "\tholdout"]), "s.tsv:6: split 'holdout'"),
        ("\n".join(lines[:-1] + [lines[-1].replace("\t", " ")]), "s.tsv:6: expected ARTIST<TAB>"),
        ("\n".join(x.rsplit("\t", 1)[0] + "\tdev" if x.startswith("aurora") else x for x in lines),
         "artist aurora: no song in the train split"),
    ):
        f.write_text(text + "\n")
        with pytest.raises(DatasetError, match=match):
            plan(srcs, PreprocessConfig(**TINY), split_file=f)
    r = cli(f"aurora={corpus / 'aurora'}", "--print-split", "--split-file", tmp_path / "missing.tsv", "--block-size", 64)
    assert r.returncode == 2 and "missing.tsv" in r.stderr and "Traceback" not in r.stderr


# ---------------------------------------------------------------------------------------------
# Compact storage

def _old_pipeline(data: Path, split: str, artist: str, transform: str):
    """Features the way format 1 stored them (blocks_to_features of the audio), with their train
    statistics over all D dimensions computed directly: {song id: features}, mean, std."""
    m = load_manifest(data)
    feats = {}
    for s in m["songs"]:
        if s["artist"] == artist:
            blocks = audio_to_blocks(load_mono(s["path"], 8000), 64)[: s["clips"] * 8 + 1]
            feats[s["id"]] = get_transform(transform, 64).features(blocks.reshape(-1))
    train = np.concatenate([feats[s["id"]] for s in m["songs"] if s["artist"] == artist and s["split"] == "train"])
    std = train.astype(np.float64).std(0)
    std = np.where(std > 1e-6 * std.max(), std, 1.0)
    return feats, train.astype(np.float64).mean(0), std


@pytest.mark.parametrize("transform", ["fft", "rfft"])
def test_expanded_batch_is_the_old_pipelines_normalized_features(corpus, tmp_path, transform):
    """Half the bytes on disk, and the model sees exactly the features (and normalization) it saw."""
    data = tmp_path / "ds"
    preprocess(parse_sources([f"aurora={corpus / 'aurora'}"]), data, PreprocessConfig(**TINY, transform=transform),
               progress=False)
    feats, mean, std = _old_pipeline(data, "train", "aurora", transform)
    for split in ("train", "dev"):
        ds = ClipDataset(data, split, ["aurora"], as_blocks=True, std_floor=0.0)  # the paper's z-scoring
        idxs = list(range(len(ds)))
        batch = ds.__getitems__(idxs)
        assert batch.shape == (len(ds), 9, 64) and batch.dtype == torch.float32
        got = ds.normalizer("cpu")(batch).numpy()
        want = np.stack([feats[int(ds.index.song_of_clip[i])][ds.index.clip_of_song[i] * 8:][:9] for i in idxs])
        np.testing.assert_allclose(got, (want - mean) / std, rtol=1e-4, atol=1e-4)
        # the per-item path and the raw features agree with it
        plain = ClipDataset(data, split, ["aurora"], std_floor=0.0)
        x, y = plain[0]
        np.testing.assert_allclose(torch.cat([x, y[-1:]]).numpy(), got[0], atol=1e-5)
        np.testing.assert_allclose(plain.features(0), want[0], rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("n", [64, 63])
@pytest.mark.parametrize("transform", ["fft", "rfft"])
def test_normalizer_on_every_path_is_normalize_then_expand(n, transform):
    """The CPU path (numpy views), the GPU path (torch slices and flips, run here on the CPU, and on
    CUDA where there is one), float32 and float16 input: all = (sign * stored[index] - mean) / std."""
    from gruv_hpc.dataset.clips import Normalizer
    rng = np.random.default_rng(n)
    idx, sign = get_transform(transform, n).expansion()
    m_s, s_s = rng.standard_normal(n), rng.random(n) + 0.5  # stats of the stored values
    mean, std = m_s[idx] * sign, np.where(sign != 0, s_s[idx], 1.0)
    norm = Normalizer(idx, sign, mean, std)
    for dtype in (torch.float32, torch.float16):
        x = torch.randn(3, 9, n).to(dtype)
        want = (x.double().numpy()[..., idx] * sign - mean) / std
        got = {"cpu": norm(x), "torch path": norm.expand_torch(
            torch.addcmul(norm.shift, x.reshape(-1, n).float(), norm.scale)).view(3, 9, -1)}
        if torch.cuda.is_available():
            got["cuda"] = Normalizer(idx, sign, mean, std, "cuda")(x.cuda()).cpu()
        for name, g in got.items():
            assert g.dtype == torch.float32 and g.shape == want.shape, name
            np.testing.assert_allclose(g.numpy(), want, rtol=1e-5, atol=1e-5, err_msg=name)


def test_float16_storage_halves_the_bytes_and_trains_the_same(corpus, tmp_path):
    from gruv_hpc.training.trainer import main
    m32 = preprocess_tiny(corpus, tmp_path / "f32")
    m16 = preprocess_tiny(corpus, tmp_path / "f16", dtype="float16")
    assert m16["params"]["dtype"] == "float16"
    with h5py.File(tmp_path / "f16" / m16["shards"][0]["file"]) as h:
        assert h["blocks"].dtype == np.float16
    b32, b16 = (sum(sh["bytes"] for sh in m["shards"]) for m in (m32, m16))
    assert b16 < 0.55 * b32
    d32, d16 = ClipDataset(tmp_path / "f32", "dev", as_blocks=True), ClipDataset(tmp_path / "f16", "dev", as_blocks=True)
    batch16 = d16.__getitems__([0, 1])
    assert batch16.dtype == torch.float16  # the batch moves as float16; the Normalizer casts on the device
    a, b = d32.normalizer("cpu")(d32.__getitems__([0, 1])), d16.normalizer("cpu")(batch16)
    assert b.dtype == torch.float32
    assert float((a - b).pow(2).mean().sqrt()) < 2e-3 * float(a.pow(2).mean().sqrt())
    # Audio back from float16 features: relative RMS error about float16's precision.
    f32 = ClipDataset(tmp_path / "f32", "dev", normalize=False).features(0)
    f16 = d16.features(0)
    assert f16.dtype == np.float32
    x32, x16 = get_transform("fft", 64).to_frames(f32), get_transform("fft", 64).to_frames(f16)
    assert np.sqrt(np.mean((x16 - x32) ** 2)) < 1e-3 * np.sqrt(np.mean(x32**2))
    for run, data in (("r32", "f32"), ("r16", "f16")):
        main(tiny_config(tmp_path / data, epochs=2), tmp_path / run)
    l32, l16 = ([json.loads(x) for x in (tmp_path / r / "metrics.jsonl").read_text().splitlines()] for r in ("r32", "r16"))
    for x, y in zip(l32, l16):
        assert x["train_loss"] == pytest.approx(y["train_loss"], rel=1e-2)
        assert x["dev_loss"] == pytest.approx(y["dev_loss"], rel=1e-2)


def test_version_1_dataset_is_refused_with_what_to_do(data, tmp_path):
    old = tmp_path / "v1"
    old.mkdir()
    m = json.loads((data / "manifest.json").read_text())
    (old / "manifest.json").write_text(json.dumps({**m, "version": 1}))
    for fn in (lambda: load_manifest(old), lambda: ClipDataset(old, "train")):
        with pytest.raises(DatasetError, match=r"v1/manifest.json: dataset format version 1.*gruv preprocess"):
            fn()
    # gruv preprocess rebuilds it when asked to
    srcs = parse_sources([f"aurora={m['sources']['aurora']}"])
    with pytest.raises(DatasetError, match="format version 1; pass --overwrite"):
        preprocess(srcs, old, PreprocessConfig(**TINY), progress=False)
    preprocess(srcs, old, PreprocessConfig(**TINY), overwrite=True, progress=False)
    assert load_manifest(old)["version"] == 2
