"""The discrete VP chain: posterior moments, fixed / learned variances, KL and decoder terms
(cases C02, C03, C08; golden values of diffusers' scheduler tests)."""
import math

import pytest
import torch

import scoresde as S
from scoresde.chain import DiscreteChain, discretized_gaussian_log_likelihood, normal_kl


def test_posterior_variance_golden_values():
    c = DiscreteChain(S.VPSDE())
    pv = c.posterior_variance
    assert pv[0].item() == 0.0  # beta-tilde_0 = 0: its log must be clipped (C08)
    assert abs(pv[1].item() - 5.45e-5) < 5e-8
    assert abs(pv[487].item() - 0.00979) < 1e-5 and abs(pv[999].item() - 0.02) < 1e-5  # diffusers test_variance
    assert torch.isfinite(c.posterior_log_variance_clipped).all()
    assert c.posterior_log_variance_clipped[0] == c.posterior_log_variance_clipped[1]


def test_learned_range_interpolates_in_log_space_c08():
    c = DiscreteChain(S.VPSDE())
    x = torch.zeros(1, 1, dtype=torch.float64)
    k = torch.tensor([1])
    v_half = c.model_log_variance(k, x, "learned_range", torch.zeros(1, 1)).exp().item()
    assert abs(v_half - 8.09e-5) < 5e-8  # log-space; linear interpolation would give 8.72e-5
    lin = 0.5 * (c.betas[1] + c.posterior_variance[1]).item()
    assert abs(lin - 8.72e-5) < 5e-8 and abs(v_half / lin - 1) > 0.07
    # v = -1 -> beta-tilde, v = 1 -> beta of the respaced chain
    r = DiscreteChain(S.VPSDE(), "ddim50")
    k = torch.arange(1, 50)
    x = torch.zeros(49, 1, dtype=torch.float64)
    lo = r.model_log_variance(k, x, "learned_range", -torch.ones(49, 1)).squeeze(1)
    hi = r.model_log_variance(k, x, "learned_range", torch.ones(49, 1)).squeeze(1)
    assert torch.allclose(lo.exp(), r.posterior_variance[1:], rtol=1e-12)
    assert torch.allclose(hi.exp(), r.betas[1:], rtol=1e-12)
    k25 = int((r.timesteps == 500).nonzero())
    assert abs(r.betas[k25].item() - 0.1800) < 5e-4  # not betas[500] = 0.01006
    assert math.isclose(math.exp(0.5 * math.log(S.VPSDE().discrete_betas[500].item())), 0.10030, rel_tol=1e-4)


def test_fixed_variances():
    c = DiscreteChain(S.VPSDE())
    x = torch.zeros(3, 1, dtype=torch.float64)
    k = torch.tensor([0, 1, 700])
    small = c.model_log_variance(k, x, "fixed_small").squeeze(1).exp()
    large = c.model_log_variance(k, x, "fixed_large").squeeze(1).exp()
    assert torch.allclose(small, c.posterior_variance[[1, 1, 700]])
    assert torch.allclose(large, torch.stack([c.posterior_variance[1], c.betas[1], c.betas[700]]))
    with pytest.raises(ValueError, match="learn_variance"):
        c.model_log_variance(k, x, "learned_range")
    with pytest.raises(ValueError, match="variance"):
        c.model_log_variance(k, x, "fixed")


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_full_ancestral_loop_with_zero_model_stays_finite_c02(schedule):
    c = DiscreteChain(S.VPSDE(schedule=schedule))
    assert (1 - c.alphas_cumprod > 0).all()  # every index a step can receive
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 1, 4, 4, generator=g)
    for k in reversed(range(len(c))):
        ab = c.get("alphas_cumprod", k, x)
        eps = torch.zeros_like(x)
        x0 = ((x - (1 - ab).sqrt() * eps) / ab.sqrt()).clamp(-1, 1)
        mean, _, _ = c.q_posterior(x0, x, k)
        logvar = c.model_log_variance(k, x, "fixed_small")
        x = (mean + (k > 0) * torch.exp(0.5 * logvar) * torch.randn(x.shape, generator=g)).float()
    assert torch.isfinite(x).all()


def test_first_reverse_step_of_the_clipped_cosine_schedule_c03():
    """C03 on the cosine chain, which holds the table steps with t_i <= T = 0.9946 (issue 10, item 1):
    it starts at step 993 (alpha-bar 8.74e-5, x0 amplification 1/sqrt(ab) = 106.9), not at the
    clipped step 999 beyond T (2.43e-9, amplification 20291), and its first reverse step is finite."""
    sde = S.VPSDE(schedule="cosine")
    c = DiscreteChain(sde)
    assert len(c) == sde.chain_length == 994 and int(c.timesteps[-1]) == 993
    assert float(c.times()[-1]) <= sde.T
    g = torch.Generator().manual_seed(1)
    xT = torch.randn(2000, 1, dtype=torch.float64, generator=g)
    eps = xT + 0.1 * torch.randn(xT.shape, dtype=torch.float64, generator=g)
    k = len(c) - 1
    ab = c.get("alphas_cumprod", k, xT)
    assert abs(1 / float(ab[0]) ** 0.5 - 106.95) < 0.01
    x0 = (xT - (1 - ab).sqrt() * eps) / ab.sqrt()
    assert x0.abs().max() > 10  # the 1/sqrt(ab_T) amplification of C03
    mean, _, _ = c.q_posterior(x0.clamp(-1, 1), xT, k)
    c1, c2 = float(c.posterior_mean_coef1[k]), float(c.posterior_mean_coef2[k])
    assert torch.isfinite(mean).all() and mean.abs().max() <= c1 + c2 * xT.abs().max() + 1e-9
    # if eps equals x_T exactly, x0 = x_T (1 - sqrt(1 - ab)) / sqrt(ab) and the mean is x_T times 0.857
    x0 = (xT - (1 - ab).sqrt() * xT) / ab.sqrt()
    mean, _, _ = c.q_posterior(x0, xT, k)
    assert abs(mean.std().item() / xT.std().item() - 0.8571) < 1e-3


def test_normal_kl_closed_form():
    d = dict(dtype=torch.float64)
    kl = normal_kl(torch.tensor(1.0, **d), torch.tensor(0.0, **d), torch.tensor(0.0, **d), torch.tensor(math.log(4.0), **d))
    assert abs(kl.item() - (math.log(2) + (1 + 1) / 8 - 0.5)) < 1e-12
    assert normal_kl(torch.tensor(0.3), torch.tensor(-1.0), torch.tensor(0.3), torch.tensor(-1.0)).item() == 0


@pytest.mark.parametrize("levels", [256, 17])
def test_discretized_gaussian_is_a_distribution_over_levels(levels):
    centres = torch.linspace(-1, 1, levels, dtype=torch.float64)[:, None]
    for mu, ls in ((0.1, -2.0), (0.9, -4.0), (-1.3, 0.5)):
        lp = discretized_gaussian_log_likelihood(centres, torch.full_like(centres, mu), torch.full_like(centres, ls),
                                                 num_levels=levels)
        assert abs(lp.exp().sum().item() - 1) < 1e-9


def test_the_cosine_chain_is_its_steps_inside_T_issue10():
    """One rule for the cosine VP (T = t_max = 0.9946): the chain is the table steps with
    t_i = (i + 1) / N <= T, so every position's time lies in [0, T]; selections are among them,
    explicit indices beyond are a named error, and t_to_index maps all of [0, T] into the chain."""
    sde = S.VPSDE(schedule="cosine")
    for alphas in ("table", "continuous"):
        for steps in (None, 10, "50", [0, 993]):
            c = DiscreteChain(sde, timesteps=steps, alphas=alphas)
            assert float(c.times().max()) <= sde.T and int(c.timesteps.max()) == 993
    torch.testing.assert_close(DiscreteChain(sde, alphas="continuous").alphas_cumprod,
                               sde.alphas_cumprod[:994], rtol=1e-9, atol=0)
    with pytest.raises(ValueError, match="ends at table step 993"):
        DiscreteChain(sde, timesteps=[0, 500, 999])
    assert sde.t_to_index(torch.tensor([sde.T, 0.994, 0.5], dtype=torch.float64)).tolist() == [993, 993, 499]
    assert S.VPSDE(schedule="cosine", N=4000).chain_length == 3978
    assert S.VPSDE(schedule="cosine", t_max=0.99).chain_length == 990
    with pytest.raises(ValueError, match="N \\* t_max"):
        S.VPSDE(schedule="cosine", N=2, t_max=0.4)
