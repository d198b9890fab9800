"""The device-resident dataset (gruv_hpc.dataset.resident): the same batches as streaming, bitwise."""
import pytest
import torch
from torch.utils.data import DataLoader, Subset

from conftest import tiny_config
from gruv_hpc.dataset import resident
from gruv_hpc.training.checkpoint import load_checkpoint
from gruv_hpc.config import ConfigError, build
from gruv_hpc.training.config import TrainConfig
from gruv_hpc.dataset.clips import ClipDataset, batch_collate
from gruv_hpc.paths import RunPaths, read_jsonl
from gruv_hpc.training.trainer import ResumableSampler, main

from test_train import StopAfter, assert_bitwise_equal, weights

CPU = torch.device("cpu")


@pytest.mark.parametrize("world", [1, 2])
def test_same_batches_as_the_dataloader(data, world):
    """Per rank: the sampler's permutation per epoch, the skip on resume, drop_last, the dev order."""
    train, dev = ClipDataset(data, "train", as_blocks=True), ClipDataset(data, "dev", as_blocks=True)
    for rank in range(world):
        s1 = ResumableSampler(train, num_replicas=world, rank=rank, shuffle=True, seed=3, drop_last=True)
        s2 = ResumableSampler(train, num_replicas=world, rank=rank, shuffle=True, seed=3, drop_last=True)
        dev_idx = range(rank, len(dev), world)
        tr, dv = resident.build_loaders("true", CPU, world, train, dev, dev_idx, s1, 3, log=lambda _: None)
        ref_tr = DataLoader(train, batch_size=3, sampler=s2, drop_last=True, collate_fn=batch_collate)
        ref_dv = DataLoader(Subset(dev, dev_idx), batch_size=3, shuffle=False, collate_fn=batch_collate)
        for epoch, skip in ((0, 0), (1, 0), (1, 2), (2, 5)):
            for s in (s1, s2):
                s.set_epoch(epoch)
                s.skip = skip
            a, b = list(tr), list(ref_tr)
            assert len(a) == len(b) == len(tr) == len(ref_tr) and a
            for x, y in zip(a, b):
                assert x.dtype == y.dtype and torch.equal(x, y)
        a, b = list(dv), list(ref_dv)
        assert len(a) == len(b) and len(a[-1]) == len(b[-1])  # the last, partial dev batch is kept
        assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_training_is_bitwise_equal_to_streaming(data, tmp_path, capsys):
    s, r = tmp_path / "stream", tmp_path / "resident"
    main(tiny_config(data, epochs=2, data_on_device="false"), s)
    assert "data: streaming from the HDF5 shards (0 DataLoader workers per rank) (data_on_device=false)" in capsys.readouterr().out
    main(tiny_config(data, epochs=2, data_on_device="true"), r)
    assert "data: resident on cpu:" in capsys.readouterr().out
    assert_bitwise_equal(weights(s), weights(r))
    hs, hr = read_jsonl(s / "metrics.jsonl"), read_jsonl(r / "metrics.jsonl")
    assert [(h["train_loss"], h["dev_loss"]) for h in hs] == [(h["train_loss"], h["dev_loss"]) for h in hr]
    # the RNG stream too (a DataLoader iterator draws a seed from it; the resident loader does the same)
    rs, rr = (load_checkpoint(RunPaths(x).step_ckpts()[0])["ranks"][0]["rng"] for x in (s, r))
    assert torch.equal(rs["torch"], rr["torch"])
    # stopped mid-epoch and resumed (skip-on-resume), resident: still the streaming run
    b = tmp_path / "resumed"
    res = main(tiny_config(data, epochs=2, data_on_device="auto"), b, stop=StopAfter(17))
    assert res["status"] == "stopped" and res["pos"] == 5
    assert "data: resident on cpu" in capsys.readouterr().out  # auto: the tiny dataset fits
    main(tiny_config(data, epochs=2, data_on_device="true"), b)
    assert "resumed from" in capsys.readouterr().out
    assert_bitwise_equal(weights(s), weights(b))
    assert [h["train_loss"] for h in hs] == [h["train_loss"] for h in read_jsonl(b / "metrics.jsonl")]


def test_auto_streams_what_does_not_fit(data, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(resident, "FRACTION", 1e-9)
    main(tiny_config(data, epochs=1, data_on_device="auto"), tmp_path / "a")
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("data: "))
    assert line.startswith("data: streaming") and "train + " in line and "dev clips" in line and "GiB >" in line
    assert "available RAM" in line and "(data_on_device=auto)" in line
    # true loads whatever the fraction, and says it is over it
    main(tiny_config(data, epochs=1, data_on_device="true"), tmp_path / "b")
    assert "data: resident on cpu" in capsys.readouterr().out
    # ... but not more than there is
    monkeypatch.setattr(resident, "memory_budget", lambda device, world: (0, 10, "nothing"))
    with pytest.raises(ConfigError, match="data_on_device=true.*dev clips"):
        main(tiny_config(data, epochs=1, data_on_device="true"), tmp_path / "c")


def test_config_key(tmp_path):
    assert build(TrainConfig, {}).data_on_device == "auto"
    assert build(TrainConfig, {"data_on_device": True}).data_on_device == "true"  # a TOML boolean
    assert build(TrainConfig, {}, {"data_on_device": "False"}).data_on_device == "false"
    with pytest.raises(ConfigError, match="data_on_device: 'maybe' is not one of auto, true, false"):
        build(TrainConfig, {}, {"data_on_device": "maybe"})
    from gruv_hpc.training.config import RUNTIME_KEYS
    assert "data_on_device" in RUNTIME_KEYS  # a run may switch between starts


def test_budget_describes_its_source():
    budget, limit, where = resident.memory_budget(CPU, world=2)
    assert 0 < budget <= limit * resident.FRACTION + 1 and "available RAM per rank (2 ranks)" in where
