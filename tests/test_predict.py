"""predict = next | delta: a delta model's output is added to the current frame, so with zero
output weights it is persistence exactly; its free run (GRUVModel.rollout, which generation uses)
feeds back frame + output, equal to re-feeding every prediction through forward."""
import pytest
import torch

from conftest import tiny_config
from gruv_hpc.errors import ConfigError
from gruv_hpc.training.model import GRUVModel


def zero_output(model: GRUVModel) -> GRUVModel:
    with torch.no_grad():
        model.out.weight.zero_()
        model.out.bias.zero_()
    return model


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_delta_with_zero_output_weights_is_persistence(cell):
    torch.manual_seed(0)
    x = torch.randn(3, 7, 10)
    model = zero_output(GRUVModel(10, 6, cell, predict="delta"))
    y, _ = model(x)
    assert torch.equal(y, x)  # next = current, exactly
    y, _ = model(x, drop_last=True)
    assert torch.equal(y, x[:, :-1])
    assert torch.equal(model.rollout(x[0], 5), x[0, -1].expand(5, 10))  # a free run holds the last frame
    # the paper's next: the same weights predict zeros (the train mean), whatever the input
    nxt = zero_output(GRUVModel(10, 6, cell))
    assert nxt.predict == "next" and torch.equal(nxt(x)[0], torch.zeros_like(x))


@pytest.mark.parametrize("predict", ["next", "delta"])
def test_rollout_equals_refeeding_forward(predict):
    from gruv_hpc.generation import feedback_noise, generate_refeed, generate_stateful
    torch.manual_seed(1)
    model = GRUVModel(12, 8, "lstm", predict=predict).eval()
    seed = torch.randn(9, 12)
    for noise in (None, feedback_noise(15, 12, 0.3, seed=2)):
        a, b = generate_stateful(model, seed, 15, noise), generate_refeed(model, seed, 15, noise)
        assert a.shape == (15, 12) and (a - b).abs().max() <= 1e-5
    if predict == "delta":  # not the composition of the next model: feeding back frame + output matters
        nxt = GRUVModel(12, 8, "lstm").eval()
        nxt.load_state_dict(model.state_dict())
        assert (nxt.rollout(seed, 15) - model.rollout(seed, 15)).abs().max() > 1e-2


def test_predict_is_a_checked_config_key_and_a_grid_axis(data, tmp_path):
    from gruv_hpc.cluster.sweep.spec import name_part
    from gruv_hpc.generation import load_run
    from gruv_hpc.training.trainer import main
    with pytest.raises(ConfigError, match="predict: 'sideways' is not one of next, delta"):
        tiny_config(data, predict="sideways")
    assert name_part("predict", "delta") == "delta"
    run = tmp_path / "run"
    assert main(tiny_config(data, predict="delta", epochs=1, limit_train_batches=2), run)["status"] == "done"
    assert load_run(run).model.predict == "delta"  # generation builds the model the run trained
