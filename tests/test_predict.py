"""predict = next | delta | damped: a delta model's output is added to the current frame, so with zero
output weights it is persistence exactly; its free run (GRUVModel.rollout, which generation uses)
feeds back frame + output, equal to re-feeding every prediction through forward. A damped model
adds the output to the current frame times a learned per-dimension gain (1 at the start: delta)."""
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


@pytest.mark.parametrize("predict", ["next", "delta", "damped"])
def test_rollout_equals_refeeding_forward(predict):
    from gruv_hpc.generation import feedback_noise, generate_refeed, generate_stateful
    torch.manual_seed(1)
    model = GRUVModel(12, 8, "lstm", predict=predict).eval()
    if predict == "damped":  # a gain that is not 1: the free run must apply it to the fed-back frame
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
    with pytest.raises(ConfigError, match="predict: 'sideways' is not one of next, delta, damped"):
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


@pytest.mark.parametrize("predict", ["next", "delta", "damped"])
def test_training_on_the_free_run_feeds_back_as_generation_does(predict):
    """rollout_frames: forward(free=n) predicts the last n frames from the model's own free run:
    its last n + 1 predictions are the model's rollout from the first T - n frames, and the
    feedback carries gradients (the last prediction's gradient reaches the output bias through
    every fed-back step, not only directly)."""
    torch.manual_seed(2)
    model = GRUVModel(6, 5, "lstm", predict=predict)
    if predict == "damped":
        with torch.no_grad():
            model.gain.fill_(0.7)
    x = torch.randn(1, 12, 6)
    y, _ = model(x, free=4)
    assert y.shape == (1, 12, 6)
    assert torch.equal(y[:, :8], model(x[:, :8])[0])  # the teacher-forced part as forward gives it
    assert (y[0, 7:] - model.rollout(x[0, :8], 5)).abs().max() < 1e-5
    assert torch.equal(model(x, free=4, drop_last=True)[0], model(x[:, :-1], free=4)[0])
    assert torch.equal(model(x, free=50)[0][:, :1], model(x[:, :1])[0])  # at most T - 1: one data frame starts it
    bias = model.out.bias
    g_free = torch.autograd.grad(y[0, -1].sum(), bias)[0]
    g_tf = torch.autograd.grad(model(x)[0][0, -1].sum(), bias)[0]
    if predict == "next":
        assert torch.allclose(g_tf, torch.ones(6))  # teacher forced: only the direct path
    assert (g_free - g_tf).abs().max() > 1e-3  # free: the fed-back path as well


def test_rollout_frames_is_checked_against_the_clip_and_trains(data, tmp_path):
    import json
    from gruv_hpc.training.trainer import main
    clip = json.loads((data / "manifest.json").read_text())["params"]["clip_blocks"]
    with pytest.raises(ConfigError, match=f"rollout_frames: {clip} must be below the dataset's {clip} frames"):
        main(tiny_config(data, rollout_frames=clip, epochs=1), tmp_path / "too_long")
    with pytest.raises(ConfigError, match="rollout_frames: must be >= 0"):
        tiny_config(data, rollout_frames=-1)
    with pytest.warns(UserWarning, match="rollout_noise=0.5 does nothing with rollout_frames=0"):
        main(tiny_config(data, rollout_noise=0.5, epochs=1, limit_train_batches=1), tmp_path / "noise_alone")
    a = main(tiny_config(data, predict="damped", rollout_frames=clip - 2, epochs=1, limit_train_batches=3), tmp_path / "free")
    b = main(tiny_config(data, predict="damped", epochs=1, limit_train_batches=3), tmp_path / "forced")
    assert a["status"] == b["status"] == "done"
    assert a["train_loss"] != b["train_loss"]  # the free run's loss is what it trained on
    assert a["dev_loss"] != b["dev_loss"]


def test_rollout_noise_feeds_back_draws_and_resumes_from_the_saved_generator():
    """rollout_noise: the fed-back frames carry Gaussian draws of that sigma from the generator
    given (the trainer's, seeded by the step): the same seed, the same step; another, another;
    sigma 0 is the noiseless free run."""
    torch.manual_seed(3)
    model = GRUVModel(6, 5, "gru", predict="damped")
    x = torch.randn(2, 10, 6)
    quiet = model(x, free=5)[0]
    assert torch.equal(model(x, free=5, free_noise=0.0)[0], quiet)

    def g(seed):
        return torch.Generator().manual_seed(seed)
    a = model(x, free=5, free_noise=0.5, generator=g(1))[0]
    b = model(x, free=5, free_noise=0.5, generator=g(2))[0]
    assert torch.equal(model(x, free=5, free_noise=0.5, generator=g(1))[0], a) and not torch.equal(a, b)
    assert torch.equal(a[:, :5], quiet[:, :5])  # the teacher-forced part draws nothing
    assert (a[:, 5:] - quiet[:, 5:]).abs().min() > 0
