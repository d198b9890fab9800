"""predict = next | delta | damped | anchored: a delta model's output is added to the current frame, so with zero
output weights it is persistence exactly; its free run (GRUVModel.rollout, which generation uses)
feeds back frame + output, equal to re-feeding every prediction through forward. A damped model
adds the output to the current frame times a learned per-dimension gain (1 at the start: delta); an
anchored one damps towards the mean of the sequence's first frames instead of towards 0."""
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


@pytest.mark.parametrize("predict, anchor_frames", [("next", 64), ("delta", 64), ("damped", 64), ("anchored", 4),
                                                    ("anchored", 13)])
def test_rollout_equals_refeeding_forward(predict, anchor_frames):
    """anchored with 4 frames: the anchor is the seed's first 4; with 13: the 9 of the seed and
    then the first 4 frames fed back."""
    from gruv_hpc.generation import feedback_noise, generate_refeed, generate_stateful
    torch.manual_seed(1)
    model = GRUVModel(12, 8, "lstm", predict=predict, anchor_frames=anchor_frames).eval()
    if predict in ("damped", "anchored"):  # a gain that is not 1: the free run must apply it to the fed-back frame
        with torch.no_grad():
            model.gain.copy_(torch.linspace(0.5, 1.0, 12))
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
    with pytest.raises(ConfigError, match="predict: 'sideways' is not one of next, delta, damped, anchored"):
        tiny_config(data, predict="sideways")
    assert name_part("predict", "delta") == "delta"
    run = tmp_path / "run"
    assert main(tiny_config(data, predict="delta", epochs=1, limit_train_batches=2), run)["status"] == "done"
    assert load_run(run).model.predict == "delta"  # generation builds the model the run trained


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_damped_starts_as_persistence_and_forgets_what_is_fed_back(cell):
    from gruv_hpc.generation import feedback_noise
    torch.manual_seed(0)
    x = torch.randn(3, 7, 10)
    model = zero_output(GRUVModel(10, 6, cell, predict="damped"))
    assert torch.equal(model.gain, torch.ones(10)) and torch.equal(model(x)[0], x)  # at the start: persistence
    assert "gain" not in GRUVModel(10, 6, cell, predict="delta").state_dict()  # the other modes' checkpoints as before
    with torch.no_grad():
        model.gain.fill_(0.8)
    assert torch.allclose(model(x)[0], 0.8 * x)
    # Fed-back noise of std 1 for 400 steps: under delta (gain 1) it adds up (std ~ sqrt(400) = 20);
    # under gain 0.8 it stays an AR(1) of std 1 / sqrt(1 - 0.64) = 1.67.
    noise = feedback_noise(400, 10, 1.0, seed=3)
    delta = zero_output(GRUVModel(10, 6, cell, predict="delta"))
    seed = torch.zeros(4, 10)
    assert delta.rollout(seed, 400, noise)[-100:].std() > 8
    assert model.rollout(seed, 400, noise)[-100:].std() < 3


def test_damped_learns_a_gain_below_one_where_the_data_decays():
    """Trained on AR(1) sequences that decay to their mean (coefficient 0.5), the gain moves from
    1 towards the decay: what the linear floor knows, learned by the model."""
    torch.manual_seed(0)
    model = GRUVModel(8, 4, "lstm", predict="damped")
    with torch.no_grad():
        model.out.weight.zero_()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):
        x = [torch.randn(16, 8)]
        for _ in range(20):
            x.append(0.5 * x[-1] + 0.5 * torch.randn(16, 8))
        w = torch.stack(x, 1)
        loss = (model(w, drop_last=True)[0] - w[:, 1:]).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert 0.3 < float(model.gain.detach().mean()) < 0.75


def test_anchored_is_causal_and_damps_towards_the_sequence_not_the_train_mean():
    from gruv_hpc.generation import feedback_noise
    torch.manual_seed(0)
    x = torch.randn(2, 10, 6)
    model = zero_output(GRUVModel(6, 5, "gru", predict="anchored", anchor_frames=3))
    assert torch.allclose(model(x)[0], x, atol=1e-6)  # gain 1 at the start: persistence (to rounding: a + (x - a))
    with torch.no_grad():
        model.gain.zero_()  # the prediction is then the anchor itself
    a = model(x)[0]
    assert torch.allclose(a[:, 0], x[:, 0]) and torch.allclose(a[:, 1], x[:, :2].mean(1))
    assert torch.allclose(a[:, 2:], x[:, :3].mean(1, keepdim=True).expand(-1, 8, -1))
    later = x.clone()
    later[:, 2] += 100.0  # step t sees no frame after t: steps 0 and 1 unchanged, the anchor from 2 on moves
    b = model(later)[0]
    assert torch.equal(b[:, :2], a[:, :2]) and not torch.allclose(b[:, 2:], a[:, 2:])
    with pytest.raises(ValueError, match="whole sequences"):
        model(x, state=[None])
    # A seed around 5: with fed-back noise, anchored stays near 5 where damped falls to 0 (the train mean).
    seed = 5.0 + 0.1 * torch.randn(8, 6)
    noise = feedback_noise(300, 6, 1.0, seed=4)
    damped = zero_output(GRUVModel(6, 5, "gru", predict="damped"))
    with torch.no_grad():
        model.gain.fill_(0.8)
        damped.gain.fill_(0.8)
    tail_a, tail_d = model.rollout(seed, 300, noise)[-200:], damped.rollout(seed, 300, noise)[-200:]
    assert abs(float(tail_a.mean()) - 5.0) < 0.5 and abs(float(tail_d.mean())) < 0.5
    assert float(tail_a.std()) < 3  # bounded, as damped: the anchor is fixed, it does not follow the free run


def test_anchored_trains_and_generation_builds_it_with_its_anchor(data, tmp_path):
    from gruv_hpc.generation import load_run
    from gruv_hpc.training.trainer import main
    with pytest.raises(ConfigError, match="anchor_frames: must be >= 1"):
        tiny_config(data, predict="anchored", anchor_frames=0)
    run = tmp_path / "run"
    assert main(tiny_config(data, predict="anchored", anchor_frames=3, epochs=1, limit_train_batches=2),
                run)["status"] == "done"
    m = load_run(run).model
    assert (m.predict, m.anchor_frames) == ("anchored", 3) and "gain" in m.state_dict()
