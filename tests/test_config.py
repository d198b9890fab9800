"""The config machinery (gruv_hpc.config): lists keep their element types, from a file and from the
command line, and a wrong element is named."""
from dataclasses import dataclass

import pytest

from gruv_hpc.config import build, opt, parse_value
from gruv_hpc.errors import ConfigError


@dataclass
class Lists:
    names: list[str] = opt([], "text")
    sizes: list[int] = opt([], "whole numbers")
    rates: list[float] = opt([], "numbers")


def test_lists_keep_their_element_types():
    c = build(Lists, {"names": ["a", "b"], "sizes": [32, 64.0], "rates": [1, 0.5]})
    assert c.names == ["a", "b"] and c.sizes == [32, 64] and c.rates == [1.0, 0.5]
    assert all(type(v) is int for v in c.sizes) and all(type(v) is float for v in c.rates)
    c = build(Lists, overrides={"sizes": "32, 128", "rates": "1e-3,2", "names": "x,y"})
    assert (c.sizes, c.rates, c.names) == ([32, 128], [1e-3, 2.0], ["x", "y"])
    assert parse_value(Lists, "sizes", "1,2") == [1, 2]


@pytest.mark.parametrize("values,msg", [({"sizes": [1, "x"]}, "sizes: expected a list of int, got element 'x'"),
                                        ({"sizes": [1.5]}, "sizes: expected a list of int, got element 1.5"),
                                        ({"names": ["a", 3]}, "names: expected a list of str, got element 3"),
                                        ({"rates": [True]}, "rates: expected a list of float, got element True")])
def test_a_wrong_element_is_named(values, msg):
    with pytest.raises(ConfigError, match=msg):
        build(Lists, values)


def test_a_wrong_element_on_the_command_line_is_named():
    with pytest.raises(ConfigError, match="sizes: expected a list of int, got element 'big'"):
        build(Lists, overrides={"sizes": "1,big"})


def test_the_optimizers_are_a_registry(monkeypatch):
    """TrainConfig's optimizer key is checked against the registry (training/optim.py), and an
    optimizer registered there is built by make_optimizer: no string switch to extend."""
    import torch

    from gruv_hpc.training import optim
    from gruv_hpc.training.config import TrainConfig
    with pytest.raises(ConfigError, match="optimizer: 'lion' is not one of rmsprop, adam, sgd"):
        build(TrainConfig, {"optimizer": "lion"})
    built = []
    monkeypatch.setitem(optim.OPTIMIZERS, "lion", optim.OptimizerSpec(
        "lion", lambda params, lr, cuda, capturable: built.append((lr, cuda, capturable)) or torch.optim.SGD(params, lr=lr),
        capturable=False))
    cfg = build(TrainConfig, {"optimizer": "lion", "lr": 0.01})
    p = torch.nn.Parameter(torch.zeros(2))
    assert isinstance(optim.make_optimizer(cfg, [p], capturable=True), torch.optim.SGD)
    assert built == [(0.01, False, False)]  # no capturable form: asked for one, built without
    rms = optim.make_optimizer(build(TrainConfig, {}), [p])
    assert isinstance(rms, torch.optim.RMSprop) and rms.defaults["alpha"] == 0.9 and rms.defaults["eps"] == 1e-7


# --- Issue 32 L4/L5: values that were taken silently, a message that blamed another key ----------

def test_a_shell_line_on_the_command_line_is_never_cut_at_its_commas():
    from gruv_hpc.cluster.config import SlurmConfig
    assert build(SlurmConfig, overrides={"setup": "export CUDA_VISIBLE_DEVICES=0,1"}).setup == \
        ["export CUDA_VISIBLE_DEVICES=0,1"]
    assert build(SlurmConfig, overrides={"setup": "['module load cuda', 'export X=0,1']"}).setup == \
        ["module load cuda", "export X=0,1"]
    assert build(Lists, overrides={"names": "x,y", "sizes": "[1, 2]"}).names == ["x", "y"]  # others still split
    with pytest.raises(ConfigError, match="setup: .* is not a TOML array"):
        build(SlurmConfig, overrides={"setup": "['unclosed"})


@pytest.mark.parametrize("values,msg", [({"mem_gb": True}, "mem_gb: expected float, got true"),
                                        ({"time_min": False}, "time_min: expected int, got false"),
                                        ({"mem_gb": 0}, "slurm.mem_gb: must be a number of GB above 0, got 0"),
                                        ({"gpus_per_node": -1}, "slurm.gpus_per_node: must be >= 0, got -1")])
def test_a_bool_is_not_a_number_and_each_bad_resource_is_named(values, msg):
    from gruv_hpc.cluster.config import SlurmConfig
    with pytest.raises(ConfigError, match=msg):
        build(SlurmConfig, values).validate()


@pytest.mark.parametrize("value,skips", [("1", True), ("true", True), ("0", False), ("", False), ("no", False),
                                         ("maybe", None)])
def test_the_resource_check_is_skipped_only_when_asked(monkeypatch, value, skips):
    from gruv_hpc.cluster.slurm import SKIP_CHECK_ENV, skip_check
    monkeypatch.setenv(SKIP_CHECK_ENV, value)
    if skips is None:
        with pytest.raises(ConfigError, match=f"{SKIP_CHECK_ENV}='maybe': set it to 1"):
            skip_check()
    else:
        assert skip_check() is skips


@pytest.mark.parametrize("value, positive, ok", [(0, False, True), (0.0, True, False), (2.5, True, True), (-1, False, False),
                                                 (float("nan"), False, False), (float("inf"), False, False),
                                                 ("1", False, False)])
def test_check_number_is_the_one_wording_of_a_finite_number_check(value, positive, ok):
    from gruv_hpc.config import ConfigError, check_number
    if ok:
        check_number("k", value, positive)
    else:
        with pytest.raises(ConfigError, match=f"^k: must be a finite number {'>' if positive else '>='} 0, got "):
            check_number("k", value, positive)


def test_the_configs_say_a_bad_number_in_the_same_words():
    from gruv_hpc.cluster.pipeline import AnalysisConfig
    from gruv_hpc.config import ConfigError, build
    from gruv_hpc.dataset.config import PreprocessConfig
    from gruv_hpc.training.config import TrainConfig
    for cls, key in ((TrainConfig, "grad_clip"), (AnalysisConfig, "temperature"), (PreprocessConfig, "shard_mb")):
        with pytest.raises(ConfigError, match=f"{key}: must be a finite number >=? 0, got -1"):
            build(cls, {key: -1.0})  # build validates
