import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import soundfile as sf

from conftest import TINY, preprocess_tiny
from gruv_hpc.data import ClipDataset
from gruv_hpc.errors import DatasetError
from gruv_hpc.features import audio_to_blocks, blocks_to_features
from gruv_hpc.manifest import check_params, load_manifest
from gruv_hpc.preprocess import PreprocessConfig, assign_splits, parse_sources, preprocess

ASC = Path("/usr/share/games/asc/music")


def test_manifest_records_everything(data, corpus):
    m = load_manifest(data)
    p = m["params"]
    assert p["sample_rate"] == 8000 and p["block_size"] == 64 and p["clip_blocks"] == 8
    assert p["transform"] == "fft" and p["feature_dim"] == 128 and "seed" in p
    assert m["artists"] == ["aurora", "circuit"]
    assert len(m["songs"]) == 6
    for s in m["songs"]:
        assert s["sha256"] and s["duration_s"] > 5 and s["split"] in ("train", "dev") and s["skipped"] is None
        assert Path(s["path"]).exists()
    for sh in m["shards"]:
        f = data / sh["file"]
        assert f.exists() and f.stat().st_size == sh["bytes"]
        with h5py.File(f) as h:
            assert h["blocks"].shape == (sh["blocks"], 128)
            assert h.attrs["artist"] == sh["artist"] and h.attrs["split"] == sh["split"]
            assert h["blocks"].chunks[0] in (1, 2, 4, 8)  # divides the clip length
    assert (data / m["stats"]["file"]).exists()
    assert not list(data.rglob("*.partial"))


def test_song_level_split_is_deterministic_and_disjoint(data):
    m = load_manifest(data)
    for artist in m["artists"]:
        songs = [s for s in m["songs"] if s["artist"] == artist]
        assert sum(s["split"] == "dev" for s in songs) == 1  # round(0.2 * 3) -> at least 1
    for split in ("train", "dev"):
        ds = ClipDataset(data, split)
        songs = {int(s) for s in ds.index.song_of_clip}
        assert all(m["songs"][s]["split"] == split for s in songs)
    train_songs = set(ClipDataset(data, "train").index.song_of_clip.tolist())
    dev_songs = set(ClipDataset(data, "dev").index.song_of_clip.tolist())
    assert not train_songs & dev_songs
    cfg = PreprocessConfig()
    assert assign_splits(10, "a", cfg) == assign_splits(10, "a", cfg)
    assert assign_splits(10, "a", cfg).count("dev") == 2
    assert assign_splits(10, "a", cfg) != assign_splits(10, "a", PreprocessConfig(seed=5))


def test_clips_are_windows_over_songs(data, corpus):
    """Clip k of a song = blocks [k*C, k*C + C] of the song's audio; y is x shifted by one block."""
    from gruv_hpc.audio import load_mono
    m = load_manifest(data)
    ds = ClipDataset(data, "train", normalize=False)
    i = 3
    song = m["songs"][int(ds.index.song_of_clip[i])]
    same = np.nonzero(ds.index.song_of_clip == ds.index.song_of_clip[i])[0]
    k = int(np.searchsorted(same, i))
    audio = load_mono(song["path"], 8000)
    blocks = audio_to_blocks(audio, 64)[k * 8: k * 8 + 9]
    expect = blocks_to_features(blocks, "fft")
    np.testing.assert_allclose(ds.raw_blocks(i), expect, atol=1e-4)
    x, y = ClipDataset(data, "train")[i]
    assert x.shape == (8, 128) and y.shape == (8, 128)
    assert np.array_equal(x[1:].numpy(), y[:-1].numpy())


def test_stats_come_from_train_only(data):
    m = load_manifest(data)
    with np.load(data / "stats.npz") as z:
        mean, std = z["mean"], z["std"]
    def all_blocks(split):
        out = []
        for sh in m["shards"]:
            if sh["split"] != split:
                continue
            with h5py.File(data / sh["file"]) as h:
                for _, off, n in sh["segments"]:
                    out.append(h["blocks"][off: off + n * 8 + 1].astype(np.float64))
        return np.concatenate(out)
    train = all_blocks("train")
    np.testing.assert_allclose(mean, train.mean(0), rtol=1e-6, atol=1e-6)
    ref = train.std(0)
    ok = ref > 1e-6 * ref.max()
    np.testing.assert_allclose(std[ok], ref[ok], rtol=1e-5)
    both = np.concatenate([train, all_blocks("dev")])
    assert not np.allclose(mean, both.mean(0), atol=1e-6)  # dev would have changed them
    x, _ = ClipDataset(data, "train")[0]
    assert abs(float(x.mean())) < 3  # normalized


def test_shard_size_bound(corpus, tmp_path):
    m = preprocess_tiny(corpus, tmp_path / "ds", shard_clips=5)
    assert all(sh["clips"] <= 5 for sh in m["shards"])
    assert len(m["shards"]) > 4
    total = sum(sh["clips"] for sh in m["shards"])
    assert total == m["summary"]["clips"] == sum(s["clips"] for s in m["songs"])
    # A song split across shards loses no clip and repeats none.
    ref = ClipDataset(tmp_path / "ds", "train", normalize=False)
    assert len(ref) == m["summary"]["train_clips"]


def test_rfft_dataset(corpus, tmp_path):
    m = preprocess_tiny(corpus, tmp_path / "ds", transform="rfft")
    assert m["params"]["feature_dim"] == 2 * 33
    x, y = ClipDataset(tmp_path / "ds", "dev")[0]
    assert x.shape == (8, 66)


def test_param_mismatch_names_the_parameter(data):
    with pytest.raises(DatasetError, match="block_size"):
        ClipDataset(data, "train", expect={"block_size": 11025})
    with pytest.raises(DatasetError, match="transform"):
        check_params(load_manifest(data), {"transform": "rfft"})
    with pytest.raises(DatasetError, match="nobody"):
        ClipDataset(data, "train", artists=["nobody"])


def test_bad_files_are_skipped_and_recorded(corpus, tmp_path):
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    for p in sorted((corpus / "aurora").iterdir()):
        (src / "a" / p.name).write_bytes(p.read_bytes())
    (src / "a" / "corrupt.wav").write_bytes(b"RIFF" + os.urandom(3000))
    (src / "a" / "notes.txt").write_text("not audio")
    sf.write(src / "a" / "short.wav", np.zeros(100, np.float32), 8000)
    with pytest.warns(UserWarning) as w:
        m = preprocess(parse_sources([f"a={src / 'a'}"]), tmp_path / "ds", PreprocessConfig(**TINY), progress=False)
    skipped = {Path(s["path"]).name: s["skipped"] for s in m["songs"] if s["skipped"]}
    assert set(skipped) == {"corrupt.wav", "notes.txt", "short.wav"}
    assert "shorter than one clip" in skipped["short.wav"]
    assert "corrupt.wav" in skipped["corrupt.wav"]
    assert any("notes.txt" in str(x.message) for x in w)
    assert m["summary"]["songs"] == 3


def test_empty_or_all_skipped_corpus_fails(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no files"):
        preprocess(parse_sources([f"a={tmp_path / 'empty'}"]), tmp_path / "o1", PreprocessConfig(**TINY), progress=False)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.mp3").write_text("nope")
    with pytest.warns(UserWarning), pytest.raises(DatasetError, match="every file was skipped"):
        preprocess(parse_sources([f"a={tmp_path / 'junk'}"]), tmp_path / "o2", PreprocessConfig(**TINY), progress=False)
    r = subprocess.run([sys.executable, "-m", "gruv_hpc.cli", "preprocess", f"a={tmp_path / 'junk'}", "--out", str(tmp_path / "o3"), "--quiet"],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "every file was skipped" in r.stderr and "x.mp3" in r.stderr
    with pytest.raises(DatasetError, match="not a directory"):
        parse_sources([f"a={tmp_path / 'missing'}"])


def test_existing_dataset_with_other_params_is_refused(corpus, tmp_path):
    preprocess_tiny(corpus, tmp_path / "ds")
    with pytest.raises(DatasetError, match="block_size"):
        preprocess_tiny(corpus, tmp_path / "ds", block_size=32)
    m = load_manifest(tmp_path / "ds")
    assert m["params"]["block_size"] == 64  # untouched
    from gruv_hpc.preprocess import parse_sources as ps
    m = preprocess(ps([f"aurora={corpus / 'aurora'}"]), tmp_path / "ds", PreprocessConfig(**{**TINY, "block_size": 32}),
                   overwrite=True, progress=False)
    assert load_manifest(tmp_path / "ds")["params"]["block_size"] == 32
    assert all(sh["artist"] == "aurora" for sh in m["shards"])
    assert len(list((tmp_path / "ds" / "shards").iterdir())) == len(m["shards"])  # old shards gone


def test_interrupted_run_never_reads_as_complete(corpus, tmp_path):
    """Kill preprocessing mid-way: no manifest, so nothing reads the directory as a dataset."""
    big = tmp_path / "big"
    from gruv_hpc.synth import make_corpus
    make_corpus(big, songs_per_artist=6, min_s=20, max_s=25, seed=3)
    out = tmp_path / "ds"
    p = subprocess.Popen([sys.executable, "-m", "gruv_hpc.cli", "preprocess", f"a={big / 'aurora'}", f"c={big / 'circuit'}",
                          "--out", str(out), "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(400):
        if (out / "shards").exists() and any((out / "shards").iterdir()):
            break
        time.sleep(0.01)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not (out / "manifest.json").exists()
    with pytest.raises(DatasetError, match="did not finish"):
        load_manifest(out)
    # A rerun cleans up and completes.
    r = subprocess.run([sys.executable, "-m", "gruv_hpc.cli", "preprocess", f"a={big / 'aurora'}", f"c={big / 'circuit'}",
                        "--out", str(out), "--quiet"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert not list(out.rglob("*.partial"))
    assert len(ClipDataset(out, "train")) > 0


def test_truncated_shard_is_a_clear_error(corpus, tmp_path):
    preprocess_tiny(corpus, tmp_path / "ds")
    m = load_manifest(tmp_path / "ds")
    shard = tmp_path / "ds" / next(sh["file"] for sh in m["shards"] if sh["split"] == "train")
    with open(shard, "r+b") as f:
        f.truncate(shard.stat().st_size // 2)
    ds = ClipDataset(tmp_path / "ds", "train")
    with pytest.raises(DatasetError, match=shard.name):
        for i in range(len(ds)):
            ds[i]


def test_dataloader_workers_open_files_after_fork(data):
    import torch
    ds = ClipDataset(data, "train")
    assert ds._files == {}
    dl = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2)
    n = sum(x.shape[0] for x, _ in dl)
    assert n == len(ds)
    assert ds._files == {}  # the parent never opened a shard


def test_dataloader_spawn_workers_get_no_open_handles(data):
    """spawn/forkserver pickle the dataset into each worker: an open h5py handle must not travel."""
    import torch

    from gruv_hpc.data import batch_collate
    ds = ClipDataset(data, "train", as_blocks=True)
    first = ds[0]  # the parent opens a shard
    assert ds._files
    dl = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=1, multiprocessing_context="spawn",
                                     collate_fn=batch_collate)
    batches = list(dl)
    assert sum(b.shape[0] for b in batches) == len(ds)
    assert torch.equal(batches[0][0], first)
    assert ds._files  # the parent's own handle is still open and usable
    assert torch.equal(ds[0], first)


def _peak_rss_mb(args) -> float:
    code = ("import resource, sys; from gruv_hpc.cli import main; main(sys.argv[1:]); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)")
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True)
    return float(r.stdout.strip().splitlines()[-1])


def test_memory_does_not_grow_with_corpus(tmp_path):
    from gruv_hpc.synth import make_corpus
    small, big = tmp_path / "s", tmp_path / "b"
    make_corpus(small, songs_per_artist=2, min_s=30, max_s=30, seed=0)
    make_corpus(big, songs_per_artist=8, min_s=30, max_s=30, seed=0)
    rss = []
    for c in (small, big):
        rss.append(_peak_rss_mb(["preprocess", f"a={c / 'aurora'}", f"b={c / 'circuit'}", "--out", str(c / "ds"), "--quiet"]))
    assert rss[1] < rss[0] * 1.15 + 10, f"peak RSS grew from {rss[0]:.0f} MB to {rss[1]:.0f} MB with a 4x corpus"


def test_preprocess_and_status_do_not_import_torch(data, tmp_path):
    code = ("import sys; from gruv_hpc.cli import main\n"
            f"main(['preprocess', 'a={data.parent.parent}', '--out', '{tmp_path / 'x'}', '--quiet'])\n"
            "assert 'torch' not in sys.modules, 'preprocess imported torch'\n")
    # (a folder of HDF5 files is 'not audio': it fails cleanly, and must still not import torch)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "imported torch" not in r.stderr, r.stderr
    sweep_dir = tmp_path / "sw"
    sweep_dir.mkdir()
    (sweep_dir / "sweep.json").write_text(json.dumps({"version": 1, "submissions": [], "runs": {
        "r": {"config": {"epochs": 1}, "jobs": [], "run_dir": str(tmp_path / "r")}}}))
    code = ("import sys; from gruv_hpc.cli import main\n"
            f"main(['sweep', 'status', '{sweep_dir}', '--json'])\n"
            "assert 'torch' not in sys.modules, 'status imported torch'\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert '"NOT_SUBMITTED"' in r.stdout


def test_real_recorded_music_asc(tmp_path):
    """Debian's asc-music: 3 MP3 tracks at 22.05 kHz stereo, recorded music nobody here wrote."""
    if not ASC.is_dir():
        if os.environ.get("CI"):
            pytest.fail("asc-music is not installed (tests/run.sh installs it)")
        pytest.skip("asc-music not installed")
    m = preprocess(parse_sources([f"asc={ASC}"]), tmp_path / "ds", PreprocessConfig(), progress=False)
    used = [s for s in m["songs"] if not s["skipped"]]
    assert len(used) == 3
    for s in used:
        info = sf.info(s["path"])
        assert info.samplerate == 22050 and info.channels == 2
        # resampled to 44.1 kHz, same duration (an MP3 header's frame count is only an estimate)
        assert abs(s["duration_s"] - info.frames / info.samplerate) < 0.01 * s["duration_s"]
        assert s["clips"] == (int(s["duration_s"] * 44100) // 11025 - 1) // 40
    ds = ClipDataset(tmp_path / "ds", "train", normalize=False)
    assert len(ds) > 0
    blk = ds.raw_blocks(0)
    assert blk.shape == (41, 22050) and np.all(np.isfinite(blk))
    audio = np.concatenate([np.fft.ifft(b[:11025] + 1j * b[11025:]).real for b in blk[:4]])
    rms = np.sqrt(np.mean(audio**2))
    assert 1e-3 < rms < 1.0  # real music, neither silence nor garbage
