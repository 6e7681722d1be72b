"""scoresde.oracle.GaussianMixture: the exact non-linear-score oracle.

Checks: K = 1 reduces to GaussianData (score, E[x0 | x_t], logp, flow) for VP, sub-VP and VE;
the score is the autograd gradient of logp (2-D 8-mode and 64-D 3-component mixtures);
marginal_sample has the closed-form mixture moments; the reference flow is reversible and
carries exact samples at eps to the marginal at T; bad arguments raise ValueError naming them.
"""
import math

import pytest
import scipy.integrate
import torch

from scoresde import VESDE, VPSDE, SubVPSDE
from scoresde.oracle import GaussianData, GaussianMixture

SDES = {"vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE}
TIMES = (1e-3, 0.3, 1.0)


def ring8():
    """8 means on a circle of radius 2, std 0.2, unequal weights (so that the mean is not 0)."""
    ang = torch.arange(8, dtype=torch.float64) * 2 * math.pi / 8
    means = 2.0 * torch.stack([ang.cos(), ang.sin()], 1)
    return GaussianMixture(torch.arange(1.0, 9.0), means, 0.2)


def mix64():
    """64-D, 3 components, diagonal stds."""
    g = torch.Generator().manual_seed(1)
    means = torch.randn((3, 64), generator=g, dtype=torch.float64)
    stds = 0.3 + torch.rand((3, 64), generator=g, dtype=torch.float64)
    return GaussianMixture([0.2, 0.5, 0.3], means, stds)


def closed_moments(mix, sde, t):
    """Exact per-coordinate mean, variance and 4th central moment of p_t, each (*S)."""
    tt = torch.tensor([float(t)], dtype=torch.float64)
    a, s = float(sde.mean_coeff(tt)[0]), float(sde.marginal_std(tt)[0])
    w = mix.weights.reshape(-1, *([1] * len(mix.shape)))
    m_k, v_k = a * mix.means, a**2 * mix.stds**2 + s**2
    mean = (w * m_k).sum(0)
    d = m_k - mean
    var = (w * (v_k + d**2)).sum(0)
    m4 = (w * (d**4 + 6 * d**2 * v_k + 3 * v_k**2)).sum(0)
    return mean, var, m4


@pytest.mark.parametrize("name", list(SDES))
def test_single_component_equals_gaussian_data(name):
    sde = SDES[name]()
    mu, std = torch.tensor([1.0, -0.5, 0.25]), torch.tensor([0.5, 1.5, 0.8])
    gd = GaussianData(mu=mu, std=std, shape=(3,))
    gm = GaussianMixture([2.5], mu[None], std[None])
    assert gm.K == 1 and gm.shape == (3,) and gm.dim == 3
    g = torch.Generator().manual_seed(0)
    for t in (0.0, *TIMES):
        x = 2.0 * torch.randn((16, 3), generator=g, dtype=torch.float64)
        torch.testing.assert_close(gm.score_fn(sde)(x, t), gd.score_fn(sde)(x, t), rtol=1e-8, atol=1e-8)
        torch.testing.assert_close(gm.logp(sde, x, t), gd.logp(sde, x, t), rtol=1e-8, atol=1e-8)
        # E[x0 | x_t] of a Gaussian: mu + alpha s^2 / v (x - alpha mu)
        mean, var = gd.marginal(sde, t, x)
        tt = torch.full((16,), float(t), dtype=torch.float64)
        a = sde.mean_coeff(tt)[:, None]
        torch.testing.assert_close(gm.x0_fn(sde)(x, t), mu.double() + a * std.double() ** 2 / var * (x - mean),
                                   rtol=1e-8, atol=1e-8)
    # float32 in, float32 out; per-sample t tensors accepted
    x32 = torch.randn((4, 3), generator=g)
    assert gm.score_fn(sde)(x32, torch.full((4,), 0.5)).dtype == torch.float32
    x = gd.sample(32, generator=g)
    eps = sde.default_eps
    torch.testing.assert_close(gm.flow(sde, x, eps, sde.T), gd.flow(sde, x, eps, sde.T), rtol=1e-8, atol=1e-8)
    xT = gd.flow(sde, x, eps, sde.T)
    torch.testing.assert_close(gm.flow(sde, xT, sde.T, 0.3), gd.flow(sde, xT, sde.T, 0.3), rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("name", list(SDES))
@pytest.mark.parametrize("which", ["ring8", "mix64"])
def test_score_is_grad_logp(which, name):
    mix, sde = (ring8() if which == "ring8" else mix64()), SDES[name]()
    g = torch.Generator().manual_seed(2)
    score = mix.score_fn(sde)
    for t in TIMES:
        # exact samples of p_t plus far-off points, where the responsibilities saturate
        x = mix.marginal_sample(sde, t, 24, generator=g)
        x = torch.cat([x, 4.0 * x[:8]]).requires_grad_(True)
        (grad,) = torch.autograd.grad(mix.logp(sde, x, t).sum(), x)
        s = score(x.detach(), t)
        assert torch.isfinite(s).all()
        torch.testing.assert_close(s, grad, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("name", list(SDES))
@pytest.mark.parametrize("which", ["ring8", "mix64"])
def test_logp_matches_torch_distributions(which, name):
    """logp against an independent implementation of the same mixture (torch.distributions)."""
    mix, sde = (ring8() if which == "ring8" else mix64()), SDES[name]()
    D = torch.distributions
    g = torch.Generator().manual_seed(7)
    for t in TIMES:
        tt = torch.tensor([t], dtype=torch.float64)
        a, s = sde.mean_coeff(tt)[0], sde.marginal_std(tt)[0]
        ref = D.MixtureSameFamily(D.Categorical(probs=mix.weights),
                                  D.Independent(D.Normal(a * mix.means, (a**2 * mix.stds**2 + s**2).sqrt()), 1))
        x = mix.marginal_sample(sde, t, 32, generator=g)
        lp = mix.logp(sde, x, t)
        assert lp.shape == (32,) and lp.dtype == torch.float64
        torch.testing.assert_close(lp, ref.log_prob(x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", ["vp", "ve"])
@pytest.mark.parametrize("t", [0.0, 0.3, 1.0])
def test_marginal_sample_moments(name, t):
    mix, sde, n = ring8(), SDES[name](), 20_000
    x = mix.marginal_sample(sde, t, n, generator=torch.Generator().manual_seed(3))
    assert x.shape == (n, 2) and x.dtype == torch.float64
    mean, var, m4 = closed_moments(mix, sde, t)
    se_mean, se_var = (var / n).sqrt(), ((m4 - var**2) / n).sqrt()
    assert ((x.mean(0) - mean).abs() <= 4 * se_mean).all(), (x.mean(0), mean)
    assert ((x.var(0) - var).abs() <= 4 * se_var).all(), (x.var(0), var)


def test_sample_matches_weights():
    mix, n = ring8(), 20_000
    x = mix.sample(n, generator=torch.Generator().manual_seed(4), dtype=torch.float32)
    assert x.shape == (n, 2) and x.dtype == torch.float32
    k = torch.cdist(x.double(), mix.means).argmin(1)  # modes are 1.5 apart, std 0.2: no confusion
    freq = torch.bincount(k, minlength=8).double() / n
    se = (mix.weights * (1 - mix.weights) / n).sqrt()
    assert ((freq - mix.weights).abs() <= 4 * se).all(), (freq, mix.weights)


@pytest.mark.parametrize("name", list(SDES))
def test_flow_round_trip(name):
    mix, sde = ring8(), SDES[name]()
    eps = sde.default_eps
    x = mix.marginal_sample(sde, eps, 64, generator=torch.Generator().manual_seed(5))
    xT = mix.flow(sde, x, eps, sde.T)
    assert not torch.allclose(xT, x, atol=1e-2)
    torch.testing.assert_close(mix.flow(sde, xT, sde.T, eps), x, rtol=0, atol=1e-7)
    # float32 in, float32 out; t0 == t1 is the identity
    assert mix.flow(sde, x.float(), eps, 0.5).dtype == torch.float32
    torch.testing.assert_close(mix.flow(sde, x, 0.5, 0.5), x)


def test_flow_carries_samples_to_the_marginal_at_T():
    """Exact samples at eps, flowed to T, have the moments of p_T (the flow preserves marginals)."""
    mix, sde, n = ring8(), VPSDE(), 5000
    eps = sde.default_eps
    x = mix.marginal_sample(sde, eps, n, generator=torch.Generator().manual_seed(6))
    xT = mix.flow(sde, x, eps, sde.T, rtol=1e-8, atol=1e-8)
    mean, var, _ = closed_moments(mix, sde, sde.T)
    assert ((xT.mean(0) - mean).abs() <= 0.05).all(), (xT.mean(0), mean)
    assert ((xT.std(0) / var.sqrt() - 1).abs() <= 0.05).all(), (xT.std(0), var.sqrt())
    # the flow is not the identity nor a plain rescaling: the 8 modes are gone at T
    assert (xT.std(0) / x.std(0) - 1).abs().max() > 0.2


def test_flow_raises_on_solver_failure(monkeypatch):
    class Failed:
        status, success, message = -1, False, "Required step size is less than spacing between numbers."

    monkeypatch.setattr(scipy.integrate, "solve_ivp", lambda *a, **k: Failed())
    mix, sde = ring8(), VPSDE()
    with pytest.raises(RuntimeError, match="status -1"):
        mix.flow(sde, torch.zeros((2, 2), dtype=torch.float64), 1e-3, 1.0)


def test_bad_inputs():
    means = torch.zeros((3, 2))
    with pytest.raises(ValueError, match="weights"):
        GaussianMixture([0.5, -0.1, 0.6], means, 1.0)
    with pytest.raises(ValueError, match="weights"):
        GaussianMixture([0.5, 0.0, 0.5], means, 1.0)
    with pytest.raises(ValueError, match="weights"):
        GaussianMixture([0.5, 0.5], means, 1.0)  # mismatched K
    with pytest.raises(ValueError, match="means"):
        GaussianMixture([1.0, 1.0, 1.0], torch.zeros(3), 1.0)
    for stds in (0.0, -1.0, [1.0, 0.0, 1.0], torch.tensor([[1.0, 1.0], [1.0, -0.1], [1.0, 1.0]])):
        with pytest.raises(ValueError, match="stds"):
            GaussianMixture([1.0, 1.0, 1.0], means, stds)
    with pytest.raises(ValueError, match="stds"):
        GaussianMixture([1.0, 1.0, 1.0], means, [1.0, 1.0])  # mismatched K
    mix, sde = GaussianMixture([1.0, 1.0, 1.0], means, [1.0, 2.0, 3.0]), VPSDE()
    x = torch.zeros((4, 2))
    with pytest.raises(ValueError, match="t must lie"):
        mix.score_fn(sde)(x, 1.5)
    with pytest.raises(ValueError, match="t1"):
        mix.flow(sde, x, 0.5, -0.1)
    with pytest.raises(ValueError, match="x must have shape"):
        mix.logp(sde, torch.zeros((4, 3)), 0.5)


def test_oracle_methods_type_check_sde_x_and_t_at_entry():
    """Arguments swapped (logp(x, sde, t)) or of the wrong type are a TypeError naming the argument, not an
    AttributeError deep in _checks."""
    from scoresde import VPSDE
    from scoresde.oracle import GaussianData, GaussianMixture
    sde, x = VPSDE(), torch.zeros(4, 3, dtype=torch.float64)
    gd = GaussianData(mu=0.5, std=0.3, shape=(3,))
    gm = GaussianMixture([1.0, 2.0], torch.zeros(2, 3), 0.5)
    for data in (gd, gm):
        with pytest.raises(TypeError, match="sde must be a scoresde SDE .*got Tensor"):
            data.logp(x, sde, 0.5)
        with pytest.raises(TypeError, match="x must be a floating-point torch.Tensor .*got VPSDE"):
            data.logp(sde, sde, 0.5)
        with pytest.raises(TypeError, match="t must be a number or a tensor of times; got VPSDE"):
            data.logp(sde, x, sde)
        with pytest.raises(TypeError, match="t1 must be a number or a tensor"):
            data.flow(sde, x, 0.1, "0.5")
        for make in ("score_fn",):
            with pytest.raises(TypeError, match="sde must be a scoresde SDE"):
                getattr(data, make)(x)
        assert data.logp(sde, x, 0.5).shape == (4,)
    for bad in (gd.eps_fn, gm.x0_fn, gm.logits_fn):
        with pytest.raises(TypeError, match="sde must be a scoresde SDE"):
            bad("vp")
    with pytest.raises(TypeError, match="sde must be"):
        gd.marginal(x, 0.5, x)
    with pytest.raises(TypeError, match="sde must be"):
        gm.marginal_sample(0.5, sde, 4)
    with pytest.raises(TypeError, match="eps must be a number"):
        gd.pf_logp(sde, x, None)
