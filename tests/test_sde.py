"""Core SDE formulas: exact marginals, diffusions, priors, discrete tables (issue 2; cases C01-C03)."""
import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

import scoresde as S

T4 = torch.tensor([1e-5, 1e-3, 0.5, 1.0], dtype=torch.float64)


def _log_ab_linear(t, b0=0.1, b1=20.0):
    return -0.5 * t**2 * (b1 - b0) - t * b0


def test_vp_and_subvp_std_table_c01():
    # issue 2 / C01 table (computed from the closed forms, 4-6 significant digits)
    x = torch.zeros(4, 1, dtype=torch.float64)
    _, vp = S.VPSDE().marginal_prob(x, T4)
    _, sv = S.SubVPSDE().marginal_prob(x, T4)
    np.testing.assert_allclose(vp.numpy(), [1.0005e-3, 0.010485, 0.959654, 0.999978], rtol=5e-5)
    np.testing.assert_allclose(sv.numpy(), [1.001e-6, 1.0994e-4, 0.920936, 0.999957], rtol=5e-4)
    # and the exact closed forms to float64 precision: VP sqrt(1 - e^{-B}), sub-VP 1 - e^{-B}
    B = -_log_ab_linear(T4.numpy())
    np.testing.assert_allclose(vp.numpy(), np.sqrt(-np.expm1(-B)), rtol=1e-12)
    np.testing.assert_allclose(sv.numpy(), -np.expm1(-B), rtol=1e-12)
    # taking a square root for sub-VP would silently give the VP value at t = 0.5
    assert abs(sv[2].item() - 0.9209) < 1e-4 and abs(vp[2].item() - 0.9597) < 1e-4


def test_mean_coefficient_is_exp_minus_half_B():
    x = torch.ones(4, 3, dtype=torch.float64)
    for sde in (S.VPSDE(), S.SubVPSDE()):
        mean, _ = sde.marginal_prob(x, T4)
        np.testing.assert_allclose(mean[:, 0].numpy(), np.exp(0.5 * _log_ab_linear(T4.numpy())), rtol=1e-12)
    mean, std = S.VESDE().marginal_prob(x, T4)
    assert torch.equal(mean, x)
    np.testing.assert_allclose(std.numpy(), 0.01 * 5000 ** T4.numpy(), rtol=1e-12)


def test_ve_diffusion_has_the_log_ratio_factor_c01():
    ve = S.VESDE(0.01, 50.0)
    _, g = ve.sde(torch.zeros(1, 2), 0.5)
    assert abs(g.item() - 2.918) < 1e-3
    factor = math.sqrt(2 * math.log(50 / 0.01))
    assert abs(factor - 4.127) < 1e-3
    sigma_half = 0.01 * 5000**0.5
    assert abs(g.item() - sigma_half * factor) < 1e-5
    drift, _ = ve.sde(torch.randn(3, 2), 0.3)
    assert torch.equal(drift, torch.zeros(3, 2))


def test_subvp_diffusion_closed_form():
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    _, g = S.SubVPSDE().sde(torch.zeros(3, 1, dtype=torch.float64), t)
    tn = t.numpy()
    beta = 0.1 + tn * 19.9
    np.testing.assert_allclose(g.numpy() ** 2, beta * (1 - np.exp(-2 * 0.1 * tn - 19.9 * tn**2)), rtol=1e-12)


def test_linear_ddpm_table():
    vp = S.VPSDE()
    assert abs(vp.alphas_cumprod[999].item() - 4.0358e-5) < 5e-9
    assert abs(vp.discrete_betas.sum().item() - 10.05) < 1e-9
    assert abs(vp.discrete_betas[0].item() - 1e-4) < 1e-15 and abs(vp.discrete_betas[-1].item() - 0.02) < 1e-15
    assert torch.allclose(vp.alphas, 1 - vp.discrete_betas)


def test_cosine_table_c03():
    vp = S.VPSDE(schedule="cosine")
    b = vp.discrete_betas
    assert abs(b[0].item() - 4.1284e-5) < 5e-9
    assert b[-1].item() == 0.999
    assert int((b >= 0.999).sum()) == 1 and b.max().item() <= 0.999  # only the last entry clipped
    np.testing.assert_allclose(b[-5:].numpy(), [0.360, 0.437, 0.556, 0.750, 0.999], atol=1e-3)
    assert abs(vp.alphas_cumprod[-1].item() - 2.4288e-9) < 1e-12
    # C03: 1/sqrt(ab_T) = 20291 after clipping, 641.7 one step earlier
    assert abs((1 / vp.alphas_cumprod[-1].sqrt()).item() - 20291) < 1
    assert abs((1 / vp.alphas_cumprod[-2].sqrt()).item() - 641.7) < 0.1
    # continuous alpha-bar(0.5) = f(0.5)/f(0) = 0.4938, the table entry of step 499 (t = 500/1000)
    ab = vp.alpha_bar(torch.tensor([0.5], dtype=torch.float64))
    assert abs(ab.item() - 0.4938) < 1e-4
    i = torch.arange(1000)
    np.testing.assert_allclose(vp.alphas_cumprod[:-1].numpy(), vp.alpha_bar(vp.index_to_t(i[:-1])).numpy(), rtol=1e-9)


def test_cosine_cut_at_t_max_c03():
    vp = S.VPSDE(schedule="cosine")
    assert vp.T == 0.9946
    T = torch.tensor([vp.T], dtype=torch.float64)
    assert abs(vp.alpha_bar(T).item() - 7.08e-5) < 1e-7
    assert abs(0.5 * vp.log_snr(T).item() - (-4.78)) < 5e-3
    _, g = vp.sde(torch.zeros(1, 1), vp.T)
    assert torch.isfinite(g).all()
    with pytest.raises(ValueError, match="t must lie in"):
        vp.sde(torch.zeros(1, 1), 1.0)
    with pytest.raises(ValueError, match="t_max"):
        S.VPSDE(schedule="cosine", t_max=1.0)


def _forward_em(sde, n_paths, n_steps, t_end, x0=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.full((n_paths, 1), x0, dtype=torch.float64)
    ts = torch.linspace(0, t_end, n_steps + 1, dtype=torch.float64)
    for k in range(n_steps):
        t, dt = ts[k].item(), (ts[k + 1] - ts[k]).item()
        drift, diff = sde.sde(x, t)
        x = x + drift * dt + diff[:, None] * math.sqrt(dt) * torch.randn(x.shape, generator=g, dtype=x.dtype)
    return x


@pytest.mark.parametrize("sde", [S.VPSDE(), S.SubVPSDE(), S.VESDE(), S.VPSDE(schedule="cosine")], ids=repr)
def test_marginal_prob_matches_monte_carlo_c01(sde):
    # 10 000 scalar paths, 2 000 Euler-Maruyama steps from x0 = 1 to t = 0.5
    x = _forward_em(sde, 10_000, 2000, 0.5, x0=1.0)
    t = torch.tensor([0.5], dtype=torch.float64)
    mean, std = sde.marginal_prob(torch.ones(1, 1, dtype=torch.float64), t)
    target = std.item()
    if isinstance(sde, S.VESDE):  # the SDE started at x0 has variance sigma^2 - sigma_min^2
        target = math.sqrt(std.item() ** 2 - sde.sigma_min**2)
    assert abs(x.std().item() / target - 1) < 0.02
    assert abs(x.mean().item() - mean.item()) < 4 * target / 100 + 1e-3


@pytest.mark.parametrize("sde", [S.VPSDE(), S.SubVPSDE(), S.VESDE(), S.VPSDE(schedule="cosine")], ids=repr)
def test_marginal_variance_solves_the_variance_ode(sde):
    # dSigma/dt = 2 f(t) Sigma + g(t)^2, Sigma(0) = 0 (VE: sigma_min^2 in the SMLD convention)
    def rhs(t, v):
        tt = torch.tensor([t], dtype=torch.float64)
        return [2 * sde.drift_coeff(tt).item() * v[0] + sde.diffusion_coeff(tt).item() ** 2]

    v0 = sde.sigma_min**2 if isinstance(sde, S.VESDE) else 0.0
    ts = [0.1, 0.5, sde.T]
    sol = integrate.solve_ivp(rhs, (0, sde.T), [v0], t_eval=ts, rtol=1e-10, atol=1e-12)
    std = sde.marginal_std(torch.tensor(ts, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(sol.y[0], std**2, rtol=1e-6)
    if isinstance(sde, S.SubVPSDE):  # C01's RK45 numbers
        np.testing.assert_allclose(sol.y[0], [0.010757, 0.848123, 0.999914], atol=5e-7)


@pytest.mark.parametrize("sde", [S.VPSDE(), S.SubVPSDE(), S.VESDE()], ids=repr)
def test_prior_logp_matches_scipy(sde):
    z = torch.randn(5, 3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 3
    expected = stats.norm.logpdf(z.numpy(), 0, sde.prior_std).reshape(5, -1).sum(1)
    np.testing.assert_allclose(sde.prior_logp(z).numpy(), expected, rtol=1e-12)


def test_ve_prior_logp_at_zero_c01():
    # N(0, sigma_max^2 I) at z = 0, D = 3072: independent of any x0
    lp = S.VESDE().prior_logp(torch.zeros(1, 3, 32, 32, dtype=torch.float64))
    assert abs(lp.item() - (-14840.714)) < 1e-3


def test_prior_sampling_shape_scale_and_determinism():
    ve = S.VESDE()
    z1 = ve.prior_sampling((4000, 2), generator=torch.Generator().manual_seed(3))
    z2 = ve.prior_sampling((4000, 2), generator=torch.Generator().manual_seed(3))
    assert torch.equal(z1, z2) and z1.shape == (4000, 2) and z1.dtype == torch.float32
    assert abs(z1.std().item() / 50 - 1) < 0.05
    assert S.VPSDE().prior_sampling((2, 3), dtype=torch.float64).dtype == torch.float64
    with pytest.raises(ValueError, match="shape"):
        ve.prior_sampling((0, 3))


def test_float16_keeps_schedule_arithmetic_exact():
    vp = S.VPSDE(schedule="cosine")
    x = torch.ones(2, 3, dtype=torch.float16)
    mean, std = vp.marginal_prob(x, torch.tensor([vp.T, 1e-5]))
    assert std.dtype == torch.float32 and torch.isfinite(std).all() and std[1] > 0
    assert mean.dtype == torch.float16 and (mean[0] > 0).all()  # alpha(T) = 8.4e-3, not 0
    _, s_ve = S.VESDE(sigma_max=378.0).marginal_prob(x, 1.0)
    assert torch.isfinite(s_ve).all() and abs(s_ve[0].item() - 378) < 1e-3


def test_discretize_rules():
    vp, ve, sv = S.VPSDE(), S.VESDE(), S.SubVPSDE()
    x = torch.ones(2, 3, dtype=torch.float64)
    t = torch.tensor([0.5, 1.0], dtype=torch.float64)
    f, G = vp.discretize(x, t)  # DDPM rule with beta_i of the table
    i = vp.t_to_index(t)
    beta = vp.discrete_betas[i]
    np.testing.assert_allclose(G.numpy(), beta.sqrt().numpy(), rtol=1e-12)
    np.testing.assert_allclose(f[:, 0].numpy(), (torch.sqrt(1 - beta) - 1).numpy(), rtol=1e-12)
    f, G = ve.discretize(x, t)  # SMLD rule
    sig = ve.discrete_sigmas
    j = ve.t_to_index(t)
    np.testing.assert_allclose(G.numpy(), (sig[j] ** 2 - sig[j - 1] ** 2).sqrt().numpy(), rtol=1e-12)
    assert torch.equal(f, torch.zeros_like(x))
    f, G = ve.discretize(x[:1], 0.0)  # sigma_{-1} := 0
    assert abs(G.item() - 0.01) < 1e-12
    f, G = sv.discretize(x, t)  # Euler-Maruyama with dt = 1/N
    _, g = sv.sde(x, t)
    np.testing.assert_allclose(G.numpy(), g.numpy() * math.sqrt(1e-3), rtol=1e-12)


def test_discretize_on_a_coarse_grid_telescopes():
    # with t_next the VP steps multiply to alpha-bar(eps)/alpha-bar(T) and VE variances add up
    grid = S.time_grid(S.VPSDE(), 7, eps=1e-3)
    x = torch.ones(1, 1, dtype=torch.float64)
    prod = 1.0
    for a, b in zip(grid[:-1], grid[1:]):
        _, G = S.VPSDE().discretize(x, a, b)
        prod *= 1 - G.item() ** 2
    vp = S.VPSDE()
    assert abs(prod - (vp.alpha_bar(grid[[0]]) / vp.alpha_bar(grid[[-1]])).item()) < 1e-12
    ve = S.VESDE()
    grid = S.time_grid(ve, 5)
    total = sum(ve.discretize(x, a, b)[1].item() ** 2 for a, b in zip(grid[:-1], grid[1:]))
    assert abs(total - (ve.sigma(grid[0]) ** 2 - ve.sigma(grid[-1]) ** 2).item()) < 1e-9
    with pytest.raises(ValueError, match="t_next"):
        vp.discretize(x, 0.2, 0.5)


def test_reverse_sde_and_probability_flow():
    vp = S.VPSDE()
    x = torch.randn(3, 2, dtype=torch.float64)
    score = lambda x, t: -2.0 * x  # noqa: E731
    drift, g = vp.sde(x, 0.3)
    rd, rg = vp.reverse(score).sde(x, 0.3)
    assert torch.allclose(rd, drift - g[:, None] ** 2 * (-2 * x)) and torch.equal(rg, g)
    pd, pg = vp.reverse(score, probability_flow=True).sde(x, 0.3)
    assert torch.allclose(pd, drift - 0.5 * g[:, None] ** 2 * (-2 * x))
    assert isinstance(pg, torch.Tensor) and pg.shape == (3,) and (pg == 0).all()  # a tensor, not 0.
    f, G = vp.discretize(x, 0.3)
    rf, rG = vp.reverse(score).discretize(x, 0.3)
    assert torch.allclose(rf, f - G[:, None] ** 2 * (-2 * x)) and torch.equal(rG, G)
    pf, pG = vp.reverse(score, True).discretize(x, 0.3)
    assert torch.allclose(pf, f - 0.5 * G[:, None] ** 2 * (-2 * x)) and (pG == 0).all()
    with pytest.raises(ValueError, match="shape"):
        vp.reverse(lambda x, t: x[:, :1]).sde(x, 0.3)
    with pytest.raises(ValueError, match="NaN"):
        vp.reverse(lambda x, t: x * float("nan")).sde(x, 0.3)


@pytest.mark.parametrize("kwargs, match", [
    (dict(beta_min=1.0, beta_max=1.0), "beta_min"),
    (dict(beta_min=-0.1), "beta_min"),
    (dict(N=0), "N"),
    (dict(N=8), "N=8 is too small"),  # betas up to 20/8 = 2.5 would make alpha-bar negative
    (dict(schedule="quadratic"), "schedule"),
])
def test_vp_constructor_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        S.VPSDE(**kwargs)


def test_other_constructor_errors():
    with pytest.raises(ValueError, match="sigma_min"):
        S.VESDE(sigma_min=50, sigma_max=50)
    with pytest.raises(ValueError, match="sigma_min"):
        S.VESDE(sigma_min=0.0)
    with pytest.raises(TypeError, match="N"):
        S.VESDE(N=10.5)
    with pytest.raises(ValueError, match="beta_min"):
        S.SubVPSDE(beta_min=30.0)


def test_time_and_state_validation():
    vp = S.VPSDE()
    x = torch.zeros(3, 2)
    with pytest.raises(ValueError, match=r"t must lie in \[0, T=1\]"):
        vp.marginal_prob(x, torch.tensor([0.1, 0.2, 1.5]))
    with pytest.raises(ValueError, match="t must lie in"):
        vp.sde(x, -0.1)
    with pytest.raises(ValueError, match="batch size"):
        vp.sde(x, torch.tensor([0.1, 0.2]))
    with pytest.raises(ValueError, match="x contains NaN"):
        vp.marginal_prob(torch.full((3, 2), float("nan")), 0.5)
    with pytest.raises(ValueError, match="t contains NaN"):
        vp.sde(x, torch.tensor([0.1, float("nan"), 0.2]))
    with pytest.raises(ValueError, match="shape"):
        vp.sde(x, torch.zeros(3, 1))
    with pytest.raises(TypeError, match="t must be"):
        vp.sde(x, "0.5")
    with pytest.raises(ValueError, match="z contains NaN"):
        vp.prior_logp(torch.full((1, 2), float("inf")))


def test_config_round_trip():
    for sde in (S.VPSDE(0.2, 15.0, 500), S.VPSDE(schedule="cosine", t_max=0.99), S.SubVPSDE(N=30), S.VESDE(0.02, 90, 7)):
        again = S.sde_from_config(sde.config())
        assert type(again) is type(sde) and again.config() == sde.config()
    with pytest.raises(ValueError, match="unknown sde"):
        S.sde_from_config({"sde": "Foo"})


def test_log_snr_inverse_round_trip():
    t = torch.tensor([1e-3, 0.1, 0.5, 0.9], dtype=torch.float64)
    for sde in (S.VPSDE(), S.SubVPSDE(), S.VESDE(), S.VPSDE(schedule="cosine")):
        lam = sde.log_snr(t)
        assert (lam[1:] < lam[:-1]).all()
        np.testing.assert_allclose(sde.t_from_log_snr(lam).numpy(), t.numpy(), rtol=1e-8)
        np.testing.assert_allclose(lam.numpy(),
                                   (2 * torch.log(sde.mean_coeff(t) / sde.marginal_std(t))).numpy(), rtol=1e-10)
