"""Nothing trained on silently (issue 22, N1): every shard and stats.npz read is checked against
the manifest's sha256, the dataset id comes from the content (the same for any --jobs), and a
loss that turns non-finite names the damaged shard."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import TINY, preprocess_tiny, tiny_config
from gruv_hpc.dataset import manifest as M
from gruv_hpc.dataset.clips import ClipDataset
from gruv_hpc.errors import DatasetError, TrainingError


def copy(data, tmp_path, name="ds") -> Path:
    d = tmp_path / name
    shutil.copytree(data, d)
    return d


def first_train_shard(d: Path) -> Path:
    m = M.load_manifest(d)
    return d / next(sh["file"] for sh in m["shards"] if sh["split"] == "train")


def reverse_rows(shard: Path) -> None:
    """The damage the issue found: the same bytes in another order, same file size."""
    size = shard.stat().st_size
    with h5py.File(shard, "r+") as f:
        f["blocks"][:] = f["blocks"][:][::-1]
    assert shard.stat().st_size == size


def rehash(d: Path) -> None:
    """What a buggy tool (or a hand edit) would do: make the manifest agree with damaged files."""
    m = json.loads((d / "manifest.json").read_text())
    for sh in m["shards"]:
        sh["sha256"], sh["bytes"] = M.sha256_file(d / sh["file"]), (d / sh["file"]).stat().st_size
    m["stats"]["sha256"] = M.sha256_file(d / m["stats"]["file"])
    (d / "manifest.json").write_text(json.dumps(m))


def cli(*args):
    return subprocess.run([sys.executable, "-m", "gruv_hpc.cli", *map(str, args)], capture_output=True, text=True)


def test_a_shard_with_its_rows_shuffled_is_refused_naming_it(data, tmp_path):
    d = copy(data, tmp_path)
    shard = first_train_shard(d)
    reverse_rows(shard)
    with pytest.raises(DatasetError, match=f"{shard}.*damaged or modified"):
        ClipDataset(d, "train")
    from gruv_hpc.training.trainer import main
    with pytest.raises(DatasetError, match=shard.name):
        main(tiny_config(d, epochs=1), tmp_path / "run")
    r = cli("dataset", "verify", d)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and shard.name in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_the_undamaged_dataset_verifies(data):
    r = cli("dataset", "verify", data)
    assert r.returncode == 0 and "OK" in r.stdout and M.dataset_id(M.load_manifest(data)) in r.stdout, r.stderr
    res = M.verify(data)
    assert res["files"] == len(M.load_manifest(data)["shards"]) + 1 and res["songs"] > 0


def test_a_rewritten_stats_file_is_refused(data, tmp_path):
    d = copy(data, tmp_path)
    with np.load(d / "stats.npz") as z:
        stats = {k: z[k] for k in z.files}
    stats["m2"] = stats["m2"] * 100  # losses would come out 100x too small
    np.savez(d / "stats.npz", **stats)
    with pytest.raises(DatasetError, match="stats.npz.*damaged or modified"):
        M.load_stats(d, M.load_manifest(d))
    with pytest.raises(DatasetError, match="stats.npz"):
        ClipDataset(d, "dev")


def test_a_corrupt_stats_file_is_one_line_even_when_its_hash_was_updated(data, tmp_path):
    d = copy(data, tmp_path)
    (d / "stats.npz").write_bytes(b"PK\x03\x04 not a zip at all")
    rehash(d)
    with pytest.raises(DatasetError, match="stats.npz: cannot read normalization stats"):
        M.load_stats(d, M.load_manifest(d))
    r = cli("train", "--data", d, "--run-dir", tmp_path / "run", "epochs=1", "workers=0", "hidden=4")
    assert r.returncode == 2 and "Traceback" not in r.stderr and "stats.npz" in r.stderr, r.stderr


def test_a_corrupt_stats_file_is_one_line_in_generate_and_analyze(data, tmp_path):
    """The issue's BadZipFile in generate and analyze (train: above), for a run trained before the
    damage: one line naming the file, and no ResourceWarning after it (np.load leaked its handle)."""
    from conftest import write_sweep
    from gruv_hpc.cluster import sweep
    d = copy(data, tmp_path)
    f = write_sweep(tmp_path / "s.toml", d, {"epochs": 1, "batch_size": 4, "workers": 0, "gen_seconds": 0.0,
                                             "hidden": 4, "limit_train_batches": 2}, {"cell": ["lstm"]})
    assert not sweep.submit(f, tmp_path / "sw", executor="debug", progress=False, out=lambda *a: None)["failed"]
    (d / "stats.npz").write_bytes(b"PK\x03\x04 not a zip at all")
    rehash(d)
    r = cli("generate", tmp_path / "sw" / "runs" / "lstm", "--out", tmp_path / "g.wav", "--seed-seconds", "0.2",
            "--length-ratio", "1")
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "stats.npz: cannot read normalization stats" in r.stderr, r.stderr
    r = cli("analyze", tmp_path / "sw", "--out", tmp_path / "rep", "--seed-clips", "1", "--seed-seconds", "0.2")
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "stats.npz: cannot read normalization stats" in r.stderr, r.stderr


def test_each_file_is_hashed_once_per_process(data, tmp_path, monkeypatch):
    d = copy(data, tmp_path)
    hashed = []
    real = M.sha256_file
    monkeypatch.setattr(M, "sha256_file", lambda p, *a: hashed.append(Path(p).name) or real(p, *a))
    for _ in range(3):
        ClipDataset(d, "train")
        ClipDataset(d, "dev")
    assert len(hashed) == len(set(hashed)) == len(M.load_manifest(d)["shards"]) + 1
    # a rebuilt dataset (a new manifest) is hashed again
    (d / "manifest.json").write_text((d / "manifest.json").read_text() + " ")
    ClipDataset(d, "train")
    assert len(hashed) > len(set(hashed))


def test_dataset_id_is_the_same_for_serial_and_parallel_builds(corpus, data, tmp_path):
    from gruv_hpc.cluster import preprocess as PJ
    from gruv_hpc.dataset.build import PreprocessConfig, parse_sources
    src = parse_sources([f"aurora={corpus / 'aurora'}", f"circuit={corpus / 'circuit'}"])
    par = tmp_path / "par"
    PJ.build(src, par, PreprocessConfig(**TINY), jobs=3, executor="local", progress=False, say=lambda *a: None)
    ms, mp = M.load_manifest(data), M.load_manifest(par)
    assert [sh["sha256"] for sh in ms["shards"]] != [sh["sha256"] for sh in mp["shards"]]  # other shard files
    assert M.dataset_id(ms) == M.dataset_id(mp)
    # ... and the songs' content hashes are what the shards hold, in both
    for d, m in ((data, ms), (par, mp)):
        assert M.song_content_hashes(d, m) == {s["id"]: s["content_sha256"] for s in m["songs"] if not s["skipped"]}


def test_dataset_id_differs_for_other_content(corpus, data, tmp_path):
    other = tmp_path / "corpus"
    shutil.copytree(corpus, other)
    song = sorted((other / "aurora").iterdir())[0]
    raw = bytearray(song.read_bytes())
    raw[-200] ^= 0x40  # one sample of one song
    song.write_bytes(bytes(raw))
    preprocess_tiny(other, tmp_path / "ds2")
    assert M.dataset_id(M.load_manifest(tmp_path / "ds2")) != M.dataset_id(M.load_manifest(data))
    # same content, another float storage: another id
    preprocess_tiny(corpus, tmp_path / "ds16", dtype="float16")
    assert M.dataset_id(M.load_manifest(tmp_path / "ds16")) != M.dataset_id(M.load_manifest(data))


def test_deep_verify_catches_damage_the_manifest_was_made_to_agree_with(data, tmp_path):
    d = copy(data, tmp_path)
    shard = first_train_shard(d)
    reverse_rows(shard)
    rehash(d)
    M.verify(d, deep=False)  # the files' hashes agree now ...
    with pytest.raises(DatasetError, match="its rows in the shards hash to"):
        M.verify(d)  # ... the songs' content does not
    r = cli("dataset", "verify", d)
    assert r.returncode == 2 and "hash to" in r.stderr and "Traceback" not in r.stderr


def test_deep_verify_is_no_ok_for_songs_without_a_content_hash(data, tmp_path):
    """Issue 32 L5: a manifest without content_sha256 (older, or edited) verified 'OK' while
    checking no row; the --quick command the error suggests works."""
    import shlex
    d = copy(data, tmp_path)
    m = json.loads((d / "manifest.json").read_text())
    for song in m["songs"]:
        song.pop("content_sha256", None)
    (d / "manifest.json").write_text(json.dumps(m))
    r = cli("dataset", "verify", d)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "songs record no content_sha256" in r.stderr
    quick = shlex.split(r.stderr.split("the files alone: gruv ", 1)[1].split(";", 1)[0])
    ok = cli(*quick)
    assert ok.returncode == 0 and ": OK" in ok.stdout, ok.stderr


def test_deep_verify_recomputes_the_stats_from_the_rows(data, tmp_path):
    """Issue 32 L5: stats.npz was checked against its sha256 only, which a rewrite can update too."""
    d = copy(data, tmp_path)
    M.verify(d)  # the stats the build pooled agree with the rows, to float64 rounding
    with np.load(d / "stats.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays["mean"] = arrays["mean"] * 1.01
    np.savez(d / "stats.npz", **arrays)
    rehash(d)
    M.verify(d, deep=False)  # its hash agrees now ...
    with pytest.raises(DatasetError, match="stats.npz: artist .* train statistics .* are not those of its train rows"):
        M.verify(d)  # ... the rows do not


def test_a_non_finite_loss_names_the_damaged_shard(data, tmp_path):
    d = copy(data, tmp_path)
    shard = first_train_shard(d)
    with h5py.File(shard, "r+") as f:
        f["blocks"][:] = 1e30
    rehash(d)  # a damage that passed the hash check (written so by the build, say)
    from gruv_hpc.training.trainer import main
    with pytest.raises(TrainingError, match=f"loss became .*the data is damaged: {shard}: row 0, value 1e\\+30"):
        main(tiny_config(d, epochs=2, log_every_steps=1), tmp_path / "run")


def test_a_diverging_model_on_sound_data_says_so(data, tmp_path):
    from gruv_hpc.training.trainer import main
    with pytest.raises(TrainingError, match="no non-finite or extreme values, so the model diverged"):
        main(tiny_config(data, epochs=2, log_every_steps=1, lr=1e30, optimizer="sgd"), tmp_path / "run")
