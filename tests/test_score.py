"""Score parameterizations and the one t -> network-input map (issue 2, item 4; cases C02, C09)."""
import pytest
import torch
from torch import nn

import scoresde as S
from scoresde.oracle import GaussianData
from scoresde.score import from_eps, network_time, to_eps


class EpsOracleNet(nn.Module):
    """A 'network' that returns the oracle's exact prediction for the time it is given."""

    def __init__(self, data, sde, target="eps", discrete=False):
        super().__init__()
        self.data, self.sde, self.target, self.discrete = data, sde, target, discrete
        self.seen = []

    def forward(self, x, time):
        self.seen.append(time.clone())
        if self.discrete:
            t = self.sde.index_to_t(time.long())
            eps = self.data.eps_fn(self.sde, discrete=True)(x, t)
            ab = self.sde.alphas_cumprod[time.long()]
            a, s = ab.sqrt(), (1 - ab).sqrt()
        else:
            t = time.to(torch.float64) / (self.sde.N - 1)
            eps = self.data.eps_fn(self.sde)(x, t)
            a, s = self.sde.mean_coeff(t), self.sde.marginal_std(t)
        return from_eps(eps, self.target, x, a, s)


@pytest.mark.parametrize("prediction", ["eps", "score", "x0", "v"])
def test_every_parameterization_gives_the_exact_score(prediction):
    sde, data = S.VPSDE(), GaussianData(0.5, 0.3, (4,))
    model = S.ScoreModel(EpsOracleNet(data, sde, prediction), sde, prediction=prediction)
    x = torch.randn(6, 4, dtype=torch.float64)
    t = torch.linspace(0.05, 1.0, 6, dtype=torch.float64)
    assert torch.allclose(model(x, t), data.score_fn(sde)(x, t), rtol=1e-9, atol=1e-9)
    assert torch.allclose(model.predict(x, t, "eps"), data.eps_fn(sde)(x, t), rtol=1e-9, atol=1e-9)


def test_conversions_round_trip():
    g = torch.Generator().manual_seed(0)
    x, out = torch.randn(5, 3, generator=g, dtype=torch.float64), torch.randn(5, 3, generator=g, dtype=torch.float64)
    alpha, sigma = torch.rand(5, generator=g, dtype=torch.float64) + 0.1, torch.rand(5, generator=g, dtype=torch.float64) + 0.1
    for p in ("eps", "score", "x0", "v"):
        eps = to_eps(out, p, x, alpha, sigma)
        assert torch.allclose(from_eps(eps, p, x, alpha, sigma), out, rtol=1e-10, atol=1e-12)
    # x0 and eps are consistent with x = alpha x0 + sigma eps
    x0 = from_eps(out, "x0", x, alpha, sigma)
    assert torch.allclose(alpha[:, None] * x0 + sigma[:, None] * out, x)


def test_default_time_inputs_follow_the_reference_code_c09():
    t = torch.tensor([1e-3, 0.5, 1.0], dtype=torch.float64)
    vp, ve = S.VPSDE(), S.VESDE()
    assert torch.allclose(network_time(vp, t, "label").double(), 999 * t)
    assert torch.allclose(network_time(ve, t, "sigma").double(), ve.sigma(t), rtol=1e-6)
    assert S.ScoreModel(nn.Identity(), vp).time_input == "label"
    assert S.ScoreModel(nn.Identity(), ve).time_input == "sigma"
    assert S.ScoreModel(nn.Identity(), vp, discrete=True).time_input == "index"
    # N = 4000 nets see (N-1) t, not a hard-coded 999 t
    assert network_time(S.VPSDE(N=4000), torch.tensor([1.0]), "label").item() == 3999


@pytest.mark.parametrize("N", [1000, 4000])
def test_discrete_label_round_trip_c09(N):
    vp = S.VPSDE(N=N)
    i = torch.arange(N)
    t = vp.index_to_t(i)  # (i + 1) / N, never 0
    assert t.min() > 0 and torch.equal(network_time(vp, t, "index"), i.float())
    # and in float32, as a sampler may pass it
    assert torch.equal(vp.t_to_index(t.float()), i)


def test_continuous_std_near_the_discrete_table_c09():
    vp = S.VPSDE()
    i = torch.arange(1000)
    cont = vp.marginal_std(vp.index_to_t(i))
    disc = (1 - vp.alphas_cumprod).sqrt()
    rel = (cont / disc - 1).abs()
    assert rel.max() < 0.05 and abs(rel[0].item() - 0.0485) < 1e-3  # 0.010485 vs 0.010000


def test_discrete_model_recovers_network_eps_exactly():
    sde, data = S.VPSDE(), GaussianData(0.0, 0.5, (3,))
    net = EpsOracleNet(data, sde, discrete=True)
    model = S.ScoreModel(net, sde, discrete=True)
    x = torch.randn(4, 3, dtype=torch.float64)
    t = sde.index_to_t(torch.tensor([0, 10, 500, 999]))
    eps = data.eps_fn(sde, discrete=True)(x, t)
    assert torch.allclose(model.predict(x, t, "eps"), eps)
    sigma = (1 - sde.alphas_cumprod[[0, 10, 500, 999]]).sqrt()
    assert torch.allclose(-model(x, t) * sigma[:, None], eps, rtol=1e-12)
    assert torch.equal(net.seen[-1], torch.tensor([0.0, 10.0, 500.0, 999.0]))


def test_score_at_t_zero_raises_instead_of_inf_c02():
    sde = S.VPSDE()
    model = S.ScoreModel(_Zero(), sde)
    with pytest.raises(ValueError, match="t = 0"):
        model(torch.zeros(2, 3), 0.0)
    assert torch.isfinite(model(torch.zeros(2, 3), 1e-5)).all()
    for sde in (S.VPSDE(), S.SubVPSDE(), S.VESDE()):
        assert sde.default_eps > 0


class _Zero(nn.Module):
    def forward(self, x, t):
        return torch.zeros_like(x)


class _Double(nn.Module):
    def forward(self, x, t):
        return torch.cat([x, x], dim=1)


def test_learn_variance_splits_channels_and_shape_errors():
    sde = S.VPSDE()
    m = S.ScoreModel(_Double(), sde, learn_variance=True, discrete=True)
    x = torch.randn(2, 3, 4, 4)
    pred, var, t = m.raw(x, 0.5)
    assert pred.shape == x.shape and var.shape == x.shape
    with pytest.raises(ValueError, match="net returned shape"):
        S.ScoreModel(_Double(), sde)(x, 0.5)
    with pytest.raises(ValueError, match="prediction"):
        S.ScoreModel(_Zero(), sde, prediction="noise")
    with pytest.raises(ValueError, match="time_input"):
        S.ScoreModel(_Zero(), sde, time_input="step")
    with pytest.raises(ValueError, match="discrete"):
        S.ScoreModel(_Zero(), S.VESDE(), discrete=True)
