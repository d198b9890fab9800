import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from conftest import tiny_config
from gruv_hpc.training.checkpoint import load_checkpoint, load_latest
from gruv_hpc.config import ConfigError, build, parse_overrides, read_file
from gruv_hpc.training.config import TrainConfig
from gruv_hpc.errors import DatasetError, TrainingError
from gruv_hpc.paths import RunPaths, read_jsonl
from gruv_hpc.training.trainer import StopFlag, main


def weights(run_dir, which="last"):
    p = RunPaths(run_dir)
    st = load_checkpoint(p.step_ckpts()[0]) if which == "last" else load_checkpoint(p.best)
    return st["model"]


def assert_bitwise_equal(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


def test_config_precedence_and_unknown_keys(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('hidden = 64\ncell = "gru"\nartists = ["a", "b"]\n')
    cfg = build(TrainConfig, read_file(f), parse_overrides(["hidden=32", "lr=0.01", "amp=false"]))
    assert (cfg.hidden, cfg.cell, cfg.artists, cfg.lr, cfg.amp) == (32, "gru", ["a", "b"], 0.01, False)
    assert cfg.epochs == 2000 and cfg.optimizer == "rmsprop" and cfg.batch_size == 5
    with pytest.raises(ConfigError, match="hiden.*valid keys: cell, hidden"):
        build(TrainConfig, {}, {"hiden": "3"})
    f.write_text("nope = 1\n")
    with pytest.raises(ConfigError, match=r"nope.*c\.toml"):
        build(TrainConfig, read_file(f), source=str(f))
    with pytest.raises(ConfigError, match="hidden: expected int"):
        build(TrainConfig, {}, {"hidden": "big"})
    with pytest.raises(ConfigError, match="cell"):
        build(TrainConfig, {}, {"cell": "transformer"})


def test_loss_decreases_and_outputs(data, tmp_path):
    run = tmp_path / "r"
    res = main(tiny_config(data, epochs=4, hidden=16, limit_train_batches=0), run)
    assert res["status"] == "done"
    hist = read_jsonl(run / "metrics.jsonl")
    assert [h["epoch"] for h in hist] == [1, 2, 3, 4]
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert hist[-1]["dev_loss"] < hist[0]["dev_loss"]
    for k in ("step", "train_loss", "dev_loss", "lr", "grad_norm", "frames_per_s", "wall", "peak_mem_mb"):
        assert k in hist[0]
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["config"]["feature_dim"] == 128 and cfg["config"]["block_size"] == 64  # resolved from the dataset
    assert "sha" in cfg["git"] and "dirty" in cfg["git"]
    done = json.loads((run / "done.json").read_text())
    assert done["final"]["epoch"] == 4
    st = load_checkpoint(RunPaths(run).step_ckpts()[0])
    for k in ("model", "optimizer", "train", "ranks", "config", "git", "world_size"):
        assert k in st
    # the training state is the TrainState dataclass, field for field (loss sums and RNG per rank)
    from dataclasses import fields

    from gruv_hpc.training.trainer import TrainState
    assert set(st["train"]) | set(TrainState.PER_RANK) == {f.name for f in fields(TrainState)}
    assert st["train"]["epoch"] == 4 and len(st["train"]["history"]) == 4
    assert set(st["ranks"][0]) == {*TrainState.PER_RANK, "pending_loss", "pending_n", "rng"}
    assert len(RunPaths(run).step_ckpts()) == 3  # keep_last
    assert RunPaths(run).best.exists()


def test_bitwise_resume_at_epoch_boundary(data, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    main(tiny_config(data, epochs=3), a)
    main(tiny_config(data, epochs=1), b)  # "interrupted" after epoch 1 ...
    assert len(read_jsonl(b / "metrics.jsonl")) == 1
    main(tiny_config(data, epochs=3), b)  # ... and resumed, without any flag
    assert_bitwise_equal(weights(a), weights(b))
    ha, hb = read_jsonl(a / "metrics.jsonl"), read_jsonl(b / "metrics.jsonl")
    assert [h["train_loss"] for h in ha] == [h["train_loss"] for h in hb]
    assert [h["dev_loss"] for h in ha] == [h["dev_loss"] for h in hb]


class StopAfter(StopFlag):
    """Requests a stop at the n-th check, i.e. between two optimizer steps, mid-epoch."""

    def __init__(self, n):
        super().__init__()
        self.n = n

    @property
    def requested(self):
        self.n -= 1
        return self.n < 0

    @requested.setter
    def requested(self, v):
        pass


@pytest.mark.parametrize("schedule", [{}, {"lr_schedule": "cosine", "lr_horizon_epochs": 2, "lr_min_ratio": 0.1}],
                         ids=["constant", "cosine"])
def test_bitwise_resume_mid_epoch_after_stop(data, tmp_path, schedule):
    a, b = tmp_path / "a", tmp_path / "b"
    main(tiny_config(data, epochs=2, **schedule), a)
    res = main(tiny_config(data, epochs=2, **schedule), b, stop=StopAfter(17))
    assert res["status"] == "stopped" and res["pos"] == 5  # 12 batches per epoch: stopped in epoch 2
    assert not (b / "done.json").exists()
    main(tiny_config(data, epochs=2, **schedule), b)
    assert_bitwise_equal(weights(a), weights(b))
    assert [h["train_loss"] for h in read_jsonl(a / "metrics.jsonl")] == [h["train_loss"] for h in read_jsonl(b / "metrics.jsonl")]
    lrs = [h["lr"] for h in read_jsonl(a / "metrics.jsonl")]
    assert lrs == [h["lr"] for h in read_jsonl(b / "metrics.jsonl")]
    assert (lrs[0] == lrs[1] == 1e-3) if not schedule else (lrs[0] > lrs[1] >= 1e-4)


def test_lr_is_a_pure_function_of_the_step():
    """cosine falls from lr to lr * lr_min_ratio over its own horizon, then stays; step decays by
    lr_gamma every lr_step_epochs; raising epochs (a runtime key) changes neither."""
    from gruv_hpc.config import build
    from gruv_hpc.training.config import TrainConfig
    from gruv_hpc.training.schedule import lr_at
    cos = build(TrainConfig, {"lr_schedule": "cosine", "lr_horizon_epochs": 4, "lr_min_ratio": 0.1})
    assert lr_at(cos, 0, 10) == 1e-3 and lr_at(cos, 20, 10) == pytest.approx(0.55e-3)
    assert lr_at(cos, 40, 10) == lr_at(cos, 400, 10) == pytest.approx(1e-4)
    assert lr_at(cos, 20, 10) == lr_at(build(TrainConfig, {**vars(cos), "epochs": 9000}), 20, 10)
    st = build(TrainConfig, {"lr_schedule": "step", "lr_step_epochs": 2, "lr_gamma": 0.5})
    assert [lr_at(st, k * 10, 10) for k in range(5)] == [1e-3, 1e-3, 5e-4, 5e-4, 2.5e-4]
    assert lr_at(build(TrainConfig), 12345, 10) == 1e-3
    with pytest.raises(Exception, match="lr_horizon_epochs"):
        build(TrainConfig, {"lr_schedule": "cosine"})
    with pytest.raises(Exception, match="lr_schedule: 'linear' is not one of constant, cosine, step"):
        build(TrainConfig, {"lr_schedule": "linear"})


def test_corrupt_newest_checkpoint_falls_back(data, tmp_path):
    run = tmp_path / "r"
    main(tiny_config(data, epochs=2), run)
    ckpts = RunPaths(run).step_ckpts()
    with open(ckpts[0], "r+b") as f:
        f.truncate(100)
    with pytest.warns(UserWarning, match=ckpts[0].name):
        st, path = load_latest(RunPaths(run))
    assert path == ckpts[1] and st["train"]["epoch"] == 1
    with pytest.warns(UserWarning):
        res = main(tiny_config(data, epochs=2), run)  # resumes from epoch 1 and finishes
    assert res["status"] == "done" and read_jsonl(run / "metrics.jsonl")[-1]["epoch"] == 2


def test_checkpoint_atomic_under_sigkill(tmp_path):
    """Kill the process while it is writing checkpoints: every checkpoint under its final name loads."""
    run = tmp_path / "r"
    code = textwrap.dedent(f"""
        import torch, sys
        from gruv_hpc.training.checkpoint import Checkpointer
        from gruv_hpc.paths import RunPaths
        c = Checkpointer(RunPaths({str(run)!r}), every_epochs=1, every_min=10, keep_last=3)
        big = torch.randn(4_000_000)
        for step in range(1, 10_000):
            c.save({{"model": {{"w": big + step}}, "step": step}}, step, is_best=step % 2 == 1)
            print(step, flush=True)
    """)
    for trial in range(4):
        p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        p.stdout.readline()  # at least one checkpoint exists
        time.sleep(0.05 + 0.07 * trial)
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        p.stdout.close()
        paths = RunPaths(run)
        for c in paths.step_ckpts():
            st = load_checkpoint(c)
            assert float(st["model"]["w"][0] - st["model"]["w"][1]) == pytest.approx(0, abs=10)  # loads whole
        st, path = load_latest(paths)
        assert st is not None and path == paths.step_ckpts()[0]
        assert load_checkpoint(paths.best)["step"] % 2 == 1


def test_checkpoint_cannot_run_code(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))
    p = tmp_path / "step_0000000001.pt"
    torch.save({"model": Evil()}, p)
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(p)
    assert not (tmp_path / "pwned").exists()


def test_nan_loss_stops_and_keeps_last_good_checkpoint(data, tmp_path, monkeypatch):
    run = tmp_path / "r"
    main(tiny_config(data, epochs=1), run)
    before = {p.name: p.read_bytes() for p in RunPaths(run).ckpt_dir.iterdir()}
    real = torch.nn.functional.mse_loss
    monkeypatch.setattr(torch.nn.functional, "mse_loss", lambda a, b, **kw: real(a, b, **kw) * float("nan"))
    with pytest.raises(TrainingError, match="nan"):
        main(tiny_config(data, epochs=3), run)
    after = {p.name: p.read_bytes() for p in RunPaths(run).ckpt_dir.iterdir()}
    assert before == after  # no NaN checkpoint, the good one untouched
    assert "TrainingError" in (run / "error.txt").read_text()
    st, _ = load_latest(RunPaths(run))
    assert all(torch.isfinite(v).all() for v in st["model"].values())


def test_dataset_and_run_dir_mismatches(data, tmp_path):
    with pytest.raises(DatasetError, match="block_size"):
        main(tiny_config(data, block_size=11025), tmp_path / "r0")
    run = tmp_path / "r"
    main(tiny_config(data, epochs=1, hidden=8), run)
    with pytest.raises(ConfigError, match="hidden: 8 -> 16"):
        main(tiny_config(data, epochs=1, hidden=16), run)
    res = main(tiny_config(data, epochs=2, hidden=8), run)  # more epochs is the same run, extended
    assert res["epoch"] == 2


def test_tensorboard_scalars_hparams_and_purge(data, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from gruv_hpc.dataset.clips import ClipDataset
    from gruv_hpc.paths import metrics_problem
    run = tmp_path / "r"
    main(tiny_config(data, epochs=1), run)
    from gruv_hpc.generation.tensorboard import training_hooks  # the audio sample is the entry points' epoch-end hook
    main(tiny_config(data, epochs=2, gen_seconds=0.1), run, hooks=training_hooks())  # resumed: purge_step keeps curves from doubling back
    ea = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0, "images": 0})
    ea.Reload()
    tags = ea.Tags()["scalars"]
    hist = read_jsonl(run / "metrics.jsonl")
    assert metrics_problem(hist) is None  # what the old readers check still holds
    artists = ["aurora", "circuit"]
    for t in ["loss/train_step", "epoch/step"] + [f"epoch/{k}" for k in ("train_loss", "dev_loss", "best_dev_loss", "lr",
                                                   "grad_norm", "frames_per_s", "peak_mem_mb")] + \
             [f"epoch/dev_loss/{a}" for a in artists]:
        assert t in tags, t
    # Epoch scalars are on the epoch axis (step = epoch), the train loss per log interval on the step axis.
    dev = ea.Scalars("epoch/dev_loss")
    assert [e.step for e in dev] == [h["epoch"] for h in hist] == [1, 2]
    assert [round(e.value, 5) for e in dev] == [round(h["dev_loss"], 5) for h in hist]
    assert [e.value for e in ea.Scalars("epoch/step")] == [h["step"] for h in hist]
    assert max(e.step for e in ea.Scalars("loss/train_step")) > 2
    # Dev loss per artist: in metrics.jsonl and TensorBoard, and the clip-weighted mean of the
    # artists' losses is the dev loss.
    ds = ClipDataset(data, "dev")
    counts = {a: int((ds.clip_artists() == i).sum()) for i, a in enumerate(ds.artists)}
    assert ds.artists == artists and min(counts.values()) > 0
    for h in hist:
        by = h["dev_loss_by_artist"]
        assert set(by) == set(artists) and by["aurora"] != by["circuit"]
        assert sum(by[a] * counts[a] for a in artists) / sum(counts.values()) == pytest.approx(h["dev_loss"], rel=1e-6)  # float32 sums
    for a in artists:
        assert [round(e.value, 5) for e in ea.Scalars(f"epoch/dev_loss/{a}")] == \
            [round(h["dev_loss_by_artist"][a], 5) for h in hist]
    assert "generated/audio" in ea.Tags()["audio"] and [e.step for e in ea.Audio("generated/audio")] == [2]
    img = ea.Images("generated/spectrogram")  # a readable, labelled picture, not a (bins x frames) one
    assert [(e.step, e.width, e.height) for e in img] == [(2, 800, 400)]
    import glob
    raw = b"".join(open(f, "rb").read() for f in glob.glob(str(run / "tb" / "events.*")))
    assert b"_hparams_/session_start_info" in raw and b"hidden" in raw


def test_one_artists_run_logs_its_dev_loss_per_artist(data, tmp_path):
    run = tmp_path / "r"
    main(tiny_config(data, epochs=1, artists=["circuit"]), run)
    h = read_jsonl(run / "metrics.jsonl")[0]
    assert h["dev_loss_by_artist"] == {"circuit": pytest.approx(h["dev_loss"], rel=1e-6)}


DDP_WORKER = textwrap.dedent("""
    import json, os, sys, torch
    import torch.distributed as dist
    from conftest import tiny_config
    from gruv_hpc.training.trainer import StopFlag, main
    rank, world, data, run, port, stop_after = int(sys.argv[1]), int(sys.argv[2]), *sys.argv[3:6], int(sys.argv[6])
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    torch.set_num_threads(1)

    class StopAfter(StopFlag):  # a stop request on this rank only, after n checks
        n = stop_after
        @property
        def requested(self):
            self.n -= 1
            return 0 <= stop_after and self.n < 0
        @requested.setter
        def requested(self, v):
            pass

    calls = 0
    real = dist.all_reduce
    def counting(*a, **kw):  # the loop's own collectives (DDP's gradient buckets go through C++)
        global calls
        calls += 1
        return real(*a, **kw)
    dist.all_reduce = counting
    res = main(tiny_config(data, epochs=2, batch_size=4, limit_train_batches=0, log_every_steps=5), run, stop=StopAfter())
    print(json.dumps({**res, "all_reduce_calls": calls}))
""")


def _ddp(data, run, world, port, stop_after=-1, env=None):
    procs = [subprocess.Popen([sys.executable, "-c", DDP_WORKER, str(r), str(world), str(data), str(run), port, str(stop_after)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(world)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def _port():
    import random
    return str(random.randint(20000, 40000))


def test_ddp_two_processes_equal_one(data, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    _ddp(data, tmp_path / "one", 1, _port(), env=env)
    res = _ddp(data, tmp_path / "two", 2, _port(), env=env)
    # The loop's own collectives are cheap: stop agreement once per log interval (not per step),
    # plus per epoch the dev loss and the train-loss mean; not one per step.
    steps = res[0]["step"]
    assert steps > 10 and res[0]["all_reduce_calls"] <= steps // 5 + 2 * 2 + 2, res[0]
    a, b = weights(tmp_path / "one"), weights(tmp_path / "two")
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4), k
    # only rank 0 wrote: one metrics line per epoch, one event file
    assert len(read_jsonl(tmp_path / "two" / "metrics.jsonl")) == 2
    assert len(list((tmp_path / "two" / "tb").glob("events.*"))) == 1
    assert json.loads((tmp_path / "two" / "config.json").read_text())["world_size"] == 2


def test_ddp_resume_is_exact_on_every_rank(data, tmp_path):
    """A 2-rank run stopped mid-epoch (by rank 1's signal) and resumed equals one left alone:
    each rank's own loss sums and RNG states come back, not rank 0's on every rank."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    _ddp(data, tmp_path / "a", 2, _port(), env=env)
    # rank 1 asks to stop at its 12th check: every rank stops at the next agreement (step 15 here)
    stopped = _ddp(data, tmp_path / "b", 2, _port(), stop_after=12, env=env)
    assert all(r["status"] == "stopped" for r in stopped) and stopped[0]["step"] == stopped[1]["step"]
    st = load_checkpoint(RunPaths(tmp_path / "b").step_ckpts()[0])
    assert st["train"]["pos"] > 0 and len(st["ranks"]) == 2  # mid-epoch, one entry per rank
    assert st["ranks"][0]["loss_sum"] != st["ranks"][1]["loss_sum"]
    _ddp(data, tmp_path / "b", 2, _port(), env=env)
    assert_bitwise_equal(weights(tmp_path / "a"), weights(tmp_path / "b"))
    ha, hb = read_jsonl(tmp_path / "a" / "metrics.jsonl"), read_jsonl(tmp_path / "b" / "metrics.jsonl")
    assert [h["train_loss"] for h in ha] == [h["train_loss"] for h in hb]
    assert [h["dev_loss"] for h in ha] == [h["dev_loss"] for h in hb]


# ---------------------------------------------------------------------------------------------
# Seeds are independent replicates

def test_no_two_seeds_share_a_data_order():
    """DistributedSampler's seed + epoch gave seed 2's epoch e the order of seed 1's epoch e + 1."""
    from gruv_hpc.training.trainer import ResumableSampler
    orders = {}
    for seed in (1, 2, 3, 4):
        s = ResumableSampler(range(24), num_replicas=1, rank=0, shuffle=True, seed=seed, drop_last=True)
        for epoch in range(10):
            s.set_epoch(epoch)
            orders[(seed, epoch)] = tuple(s)
            assert sorted(orders[(seed, epoch)]) == list(range(24))
    assert len(set(orders.values())) == len(orders) == 40
    # The same (seed, epoch) is the same order (resume depends on it), and ranks split one order.
    s = ResumableSampler(range(24), num_replicas=2, rank=1, shuffle=True, seed=3, drop_last=True)
    s.set_epoch(7)
    assert tuple(s) == orders[(3, 7)][1::2]
    s.skip = 5
    assert tuple(s) == orders[(3, 7)][1::2][5:]


def test_rank_streams_do_not_alias_across_seeds(data, tmp_path, monkeypatch):
    """seed + rank gave rank 1 of seed 1 the RNG of rank 0 of seed 2."""
    import gruv_hpc.training.trainer as trainer
    from gruv_hpc.training.checkpoint import RANK, derive_seed
    seen = []
    monkeypatch.setattr(trainer, "seed_everything", lambda s: (seen.append(s), torch.manual_seed(s)))
    main(tiny_config(data, epochs=1, seed=2, limit_train_batches=1), tmp_path / "r")
    assert seen == [derive_seed(2, RANK, 0)]
    streams = {derive_seed(seed, RANK, rank) for seed in range(1, 9) for rank in range(8)}
    assert len(streams) == 64 and derive_seed(1, RANK, 1) != derive_seed(2, RANK, 0)


# ---------------------------------------------------------------------------------------------
# Options against generation loops: input_noise and own_input_prob (scheduled sampling)

def _record_steps(monkeypatch, n_steps=3):
    """Each of the first steps' (data inputs, inputs the model saw, targets the loss saw, the
    model's teacher-forced predictions of the data at that step)."""
    from gruv_hpc.training import trainer as T
    seen, orig = [], T.Trainer._inputs
    real_mse = torch.nn.functional.mse_loss

    def inputs(self, win):
        out, drop_last = orig(self, win)
        x = win[:, :-1]
        if len(seen) < n_steps:
            with torch.no_grad():
                own, _ = self.model(x)
            used = out[:, :-1] if drop_last else out
            seen.append({"x": x.clone(), "used": used.clone(), "own": own.clone(), "step": self.state.step})
        return out, drop_last

    def mse(pred, y, *a, **kw):
        if seen and "y" not in seen[-1]:
            seen[-1]["y"] = y.clone()
        return real_mse(pred, y, *a, **kw)

    monkeypatch.setattr(T.Trainer, "_inputs", inputs)
    monkeypatch.setattr(torch.nn.functional, "mse_loss", mse)
    return seen


def test_options_off_leave_the_inputs_alone(data, tmp_path, monkeypatch):
    seen = _record_steps(monkeypatch)
    main(tiny_config(data, epochs=1, limit_train_batches=3), tmp_path / "r")
    for s in seen:
        assert torch.equal(s["x"], s["used"])


def test_input_noise_perturbs_inputs_by_sigma_and_leaves_targets(data, tmp_path, monkeypatch):
    seen = _record_steps(monkeypatch)
    main(tiny_config(data, epochs=1, limit_train_batches=3, input_noise=0.5), tmp_path / "r")
    assert len(seen) == 3
    for s in seen:
        noise = s["used"] - s["x"]
        assert abs(float(noise.std()) - 0.5) < 0.02 and abs(float(noise.mean())) < 0.02
        # the targets are the data's next frames: y[:, :-1] is x[:, 1:] of the same clips
        assert torch.equal(s["y"][:, :-1], s["x"][:, 1:])
    assert not torch.equal(seen[0]["used"] - seen[0]["x"], seen[1]["used"] - seen[1]["x"])  # fresh noise each step


def test_own_input_prob_one_feeds_the_models_predictions(data, tmp_path, monkeypatch):
    seen = _record_steps(monkeypatch)
    main(tiny_config(data, epochs=1, limit_train_batches=3, own_input_prob=1.0), tmp_path / "r")
    for s in seen:
        assert torch.equal(s["used"][:, 0], s["x"][:, 0])  # the first frame has no prediction before it
        assert torch.allclose(s["used"][:, 1:], s["own"][:, :-1], atol=1e-6)
        assert not torch.allclose(s["used"][:, 1:], s["x"][:, 1:])
        assert torch.equal(s["y"][:, :-1], s["x"][:, 1:])  # targets: still the data


def test_own_input_prob_mixes_and_ramps(data, tmp_path, monkeypatch):
    seen = _record_steps(monkeypatch, n_steps=12)
    main(tiny_config(data, epochs=1, limit_train_batches=12, own_input_prob=0.5), tmp_path / "a")
    frac = [float((s["used"][:, 1:] != s["x"][:, 1:]).any(-1).float().mean()) for s in seen]
    assert 0.35 < sum(frac) / len(frac) < 0.65
    seen.clear()
    # Ramped over 2 epochs: step k of 12 in epoch 1 uses p = (k / 12) / 2, from 0 at the start.
    main(tiny_config(data, epochs=1, limit_train_batches=12, own_input_prob=1.0, own_input_ramp_epochs=2),
         tmp_path / "b")
    frac = [float((s["used"][:, 1:] != s["x"][:, 1:]).any(-1).float().mean()) for s in seen]
    assert frac[0] == 0.0 and sum(frac[:6]) < sum(frac[6:])
    assert sum(frac) / len(frac) < 0.4


@pytest.mark.parametrize("opts", [{"input_noise": 0.3}, {"own_input_prob": 0.7, "own_input_ramp_epochs": 1.5},
                                  {"predict": "damped", "rollout_frames": 4, "rollout_noise": 0.5},
                                  {"predict": "damped", "head": "gaussian", "rollout_frames": 4}],
                         ids=["input_noise", "own_input_prob", "rollout_noise", "gaussian_head"])
def test_bitwise_resume_with_loop_options(data, tmp_path, opts):
    a, b = tmp_path / "a", tmp_path / "b"
    main(tiny_config(data, epochs=2, **opts), a)
    res = main(tiny_config(data, epochs=2, **opts), b, stop=StopAfter(17))
    assert res["status"] == "stopped"
    main(tiny_config(data, epochs=2, **opts), b)
    assert_bitwise_equal(weights(a), weights(b))
    # and the option did change the training: the paper's method ends elsewhere
    main(tiny_config(data, epochs=2), tmp_path / "c")
    assert not all(torch.equal(x, y) for x, y in zip(weights(a).values(), weights(tmp_path / "c").values()))


def test_loop_option_values_are_checked():
    for bad in ({"own_input_prob": 1.5}, {"input_noise": -1.0}, {"own_input_ramp_epochs": float("nan")},
                {"rollout_noise": -0.1}, {"rollout_frames": -1}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            build(TrainConfig, bad).validate()


def test_a_run_from_before_the_loop_options_resumes(data, tmp_path):
    run = tmp_path / "r"
    main(tiny_config(data, epochs=1), run)
    meta = json.loads((run / "config.json").read_text())
    for k in ("input_noise", "own_input_prob", "own_input_ramp_epochs"):
        del meta["config"][k]
    (run / "config.json").write_text(json.dumps(meta))
    assert main(tiny_config(data, epochs=2), run)["status"] == "done"
    with pytest.raises(ConfigError, match="input_noise"):
        main(tiny_config(data, epochs=3, input_noise=0.1), run)


def test_the_trainer_and_its_model_are_freed_when_training_returns(data, tmp_path, monkeypatch):
    """No reference cycle keeps the trainer alive after main() returns: under DDP it holds the
    process group, which must go while the interpreter is whole (teardown), not in its
    finalization, where gloo's threads abort the process ("terminate called without an active
    exception", once on rank 1 under srun). The cyclic collector is off, so only plain reference
    counting may free it. A first run goes before: torch's lazy imports inside the first optimizer
    leave a collectable cycle of frames once per process (distributed.teardown collects it)."""
    import gc
    import weakref
    from gruv_hpc.training import trainer as T
    made, init = [], T.Trainer.__init__

    def record(self, *a, **kw):
        init(self, *a, **kw)
        made.append((weakref.ref(self), weakref.ref(self.model), weakref.ref(self.optimizer)))

    monkeypatch.setattr(T.Trainer, "__init__", record)
    main(tiny_config(data, epochs=1), tmp_path / "warm")
    made.clear()
    gc.collect()
    gc.disable()
    try:
        res = main(tiny_config(data, epochs=1), tmp_path / "run")
        assert res["status"] == "done" and len(made) == 1
        alive = [name for name, ref in zip(("trainer", "model", "optimizer"), made[0]) if ref() is not None]
    finally:
        gc.enable()
    assert alive == [], f"still alive after main() returned, held by a reference cycle: {alive}"
