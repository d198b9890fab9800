"""head = mean | gaussian (issue 30, item 4): a gaussian head adds a per-dimension log-variance to each
prediction, trained on the Gaussian negative log-likelihood; ``gruv generate --temperature`` then
samples each fed-back frame at the model's own spread for that frame. The mean head is the paper's
model, its parameters and checkpoints unchanged."""
import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import tiny_config
from gruv_hpc.errors import ConfigError
from gruv_hpc.training.model import GRUVModel


def test_the_gaussian_head_predicts_the_mean_heads_mean_and_nothing_else_changes():
    torch.manual_seed(0)
    mean = GRUVModel(10, 6, "lstm", predict="damped")
    torch.manual_seed(0)
    gauss = GRUVModel(10, 6, "lstm", predict="damped", head="gaussian")
    # the same initial draws for every shared parameter; the log-variance comes last, at zero (variance 1)
    shared = mean.state_dict()
    assert set(gauss.state_dict()) - set(shared) == {"logvar.weight", "logvar.bias"}
    assert all(torch.equal(v, gauss.state_dict()[k]) for k, v in shared.items())
    x = torch.randn(3, 7, 10)
    with torch.no_grad():
        gauss.logvar.weight.normal_()
        mu, logvar, _ = gauss(x, logvar=True)
        assert torch.equal(mu, mean(x)[0]) and torch.equal(mu, gauss(x)[0])
        assert logvar.shape == mu.shape and logvar.std() > 0
        # the free run (rollout_frames) gives the log-variance of its own hidden states too
        free_mu, free_lv, _ = gauss(x, free=3, logvar=True)
        assert torch.equal(free_mu, mean(x, free=3)[0]) and free_lv.shape == free_mu.shape
        assert torch.allclose(free_lv[:, :4], logvar[:, :4], atol=1e-6)  # teacher-forced frames (another GEMM shape)
        assert not torch.allclose(free_lv[:, 4:], logvar[:, 4:], atol=1e-3)
    with pytest.raises(ValueError, match="head is 'mean', which has no variance"):
        mean(x, logvar=True)
    with pytest.raises(ValueError, match="head: 'wide' is not one of mean, gaussian"):
        GRUVModel(10, 6, "lstm", head="wide")


@pytest.mark.parametrize("predict", ["next", "damped"])
def test_sampling_draws_each_frame_at_the_models_own_spread(predict):
    """Frame k of a sample is the prediction from the frames sampled before it plus exp(logvar/2)
    times its draw: checked against re-running forward on the sampled sequence (the paper's
    refeed). Zero draws are the mean prediction's free run."""
    from gruv_hpc.generation.algorithms import sample_refeed, sample_stateful
    torch.manual_seed(1)
    m = GRUVModel(12, 8, "gru", predict=predict, head="gaussian").eval()
    with torch.no_grad():
        m.logvar.weight.normal_(std=0.3)
        m.logvar.bias.fill_(-1.0)
    seed, n = torch.randn(5, 12), 6
    draws = torch.randn(n, 12)
    s = sample_stateful(m, seed, n, draws)
    assert torch.allclose(s, sample_refeed(m, seed, n, draws), atol=1e-5)
    with torch.no_grad():
        seq = torch.cat([seed, s])
        mu, logvar, _ = m(seq[None, :-1], logvar=True)
    std = (0.5 * logvar[0, -n:]).exp()
    assert torch.allclose(s, mu[0, -n:] + std * draws, atol=1e-5)
    assert std.std() > 0.01  # a spread per frame and dimension, not one number
    assert torch.allclose(sample_stateful(m, seed, n, torch.zeros(n, 12)), m.rollout(seed, n), atol=1e-5)
    with pytest.raises(ValueError, match="no variance"):
        GRUVModel(12, 8, "gru").sample(seed, n, draws)


def test_the_nll_learns_each_dimensions_spread():
    """Targets with a known per-dimension noise std (0.2 in half the dimensions, 1.0 in the other):
    the trained step's objective is the Gaussian NLL, and the head's std comes out at those values
    while the loss it returns is the mean's MSE (what dev loss and the floors measure)."""
    from gruv_hpc.training.step import TrainStep
    torch.manual_seed(0)
    m = GRUVModel(8, 6, "lstm", head="gaussian")
    opt = torch.optim.Adam(m.parameters(), lr=3e-2)
    step = TrainStep(m, opt, mode="eager", device="cpu")  # the step asks the model for its head
    sigma = torch.tensor([0.2] * 4 + [1.0] * 4)
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        win = torch.randn(16, 9, 8, generator=g) * sigma  # every frame independent: nothing to predict but the spread
        loss, _ = step(win, win[:, 1:], True)
    with torch.no_grad():
        win = torch.randn(64, 9, 8, generator=g) * sigma
        mu, logvar, _ = m(win, drop_last=True, logvar=True)
    learned = (0.5 * logvar).exp().mean((0, 1))
    assert torch.allclose(learned, sigma, rtol=0.15), learned
    assert float(loss) == pytest.approx(float(((mu - win[:, 1:]) ** 2).mean()), rel=0.3)  # the MSE, not the NLL
    # the mean head's step on the same data learns no spread, and its loss is eq. 1's
    plain = GRUVModel(8, 6, "lstm")
    assert not hasattr(plain, "logvar")


def test_head_is_a_checked_config_key_a_grid_axis_and_sampled_by_generate(data, tmp_path):
    """``head`` is refused by name when unknown, names a run on a grid, trains end to end, and
    ``gruv generate --temperature`` samples at the model's own spread (the sidecar says so);
    temperature 0 is the mean prediction, bitwise the same as rollout's."""
    from gruv_hpc.analysis.collect import param_count
    from gruv_hpc.cluster.sweep.spec import name_part
    from gruv_hpc.generation import generate, load_run
    from gruv_hpc.training.trainer import main
    with pytest.raises(ConfigError, match="head: 'wide' is not one of mean, gaussian"):
        tiny_config(data, head="wide")
    assert name_part("head", "gaussian") == "gaussian"
    run = tmp_path / "run"
    res = main(tiny_config(data, head="gaussian", predict="damped", epochs=1, limit_train_batches=3), run)
    assert res["status"] == "done" and np.isfinite(res["train_loss"])
    loaded = load_run(run)
    assert loaded.model.head == "gaussian" and loaded.model.logvar.bias.abs().sum() > 0  # it trained
    cfg = loaded.cfg.__dict__
    assert param_count(cfg) == sum(p.numel() for p in loaded.model.parameters())
    kw = dict(seed_seconds=0.32, length_ratio=2, float32=True, run=loaded)
    hot = generate(run, tmp_path / "h.wav", temperature=1.0, noise_seed=3, **kw)
    again = generate(run, tmp_path / "h2.wav", temperature=1.0, noise_seed=3, algorithm="refeed", **kw)
    cold = generate(run, tmp_path / "c.wav", temperature=0.0, **kw)
    assert hot["spread"] == "the model's own (head = gaussian)" and hot["residual_std_mean"] is None
    assert cold["spread"] is None
    h, c = sf.read(tmp_path / "h.wav")[0], sf.read(tmp_path / "c.wav")[0]
    assert not np.allclose(h, c)
    assert np.allclose(h, sf.read(tmp_path / "h2.wav")[0], atol=1e-4) and again["algorithm"] == "refeed"
