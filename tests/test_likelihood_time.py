"""The probability-flow ODE in another integration variable (scoresde.likelihood_ode; issue 13, item 1).

The log-density does not depend on the variable the ODE is integrated in, so every
``time_variable`` must give the same log-density to solver tolerance: against the closed form of
Gaussian data (``GaussianData.pf_logp``), against the exact marginal density of a Gaussian
mixture (log p_eps(x) = log p_T(z) + delta_logp for the exact score) and between the variables
on a small digits UNet. The Jacobian dt/ds is checked against finite differences of t(s).
"""
import math

import pytest
import torch

from scoresde import SubVPSDE, VESDE, VPSDE
from scoresde.likelihood import bits_per_dim, decode, encode, log_likelihood
from scoresde.likelihood_ode import TIME_VARIABLES, TimeChange, flow_field, likelihood_field
from scoresde.oracle import GaussianData, GaussianMixture

EPS = 1e-5
SDES = {"vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE, "vp_cosine": lambda: VPSDE(schedule="cosine")}


def _gaussian(D=8):
    return GaussianData(mu=torch.linspace(-0.5, 0.5, D), std=torch.linspace(0.2, 0.6, D), shape=(D,))


@pytest.mark.parametrize("name", list(SDES))
def test_jacobian_is_dt_ds_and_round_trip(name):
    sde = SDES[name]()
    tc = TimeChange(sde, "lambda", EPS, sde.T)
    t = torch.tensor([1e-4, 1e-2, 0.3, 0.7, 0.95 * sde.T], dtype=torch.float64)
    s = torch.tensor([tc.s_of_t(float(v)) for v in t], dtype=torch.float64)
    assert bool((s[1:] > s[:-1]).all())  # s increases with t
    assert torch.allclose(tc.time(s), t, rtol=1e-9)
    h = 1e-6
    fd = (tc.time(s + h) - tc.time(s - h)) / (2 * h)
    assert torch.allclose(tc.dt_ds(t), fd, rtol=1e-5)
    # the clamp keeps t inside [eps, T] even for s a little outside the span
    assert float(tc.time(torch.tensor(tc.s_of_t(EPS) - 1.0))) == EPS
    assert tc.dt_ds(t) is not None and TimeChange(sde, "t", EPS, sde.T).dt_ds(t) is None


@pytest.mark.parametrize("tv", TIME_VARIABLES)
@pytest.mark.parametrize("name", ["vp", "subvp", "ve"])
def test_gaussian_closed_form_in_every_variable(name, tv):
    # |logp - pf_logp| <= 2e-4 nats per dimension at rtol = atol = 1e-5 (exact trace, float64),
    # and at 1e-8 the two variables agree with the closed form to 1e-5 nats per sample
    sde, data = SDES[name](), _gaussian()
    x = data.sample(3, torch.Generator().manual_seed(1))
    ref = data.pf_logp(sde, x, EPS)
    r = log_likelihood(data.score_fn(sde), sde, x, eps=EPS, divergence="exact", time_variable=tv)
    assert float((r.logp - ref).abs().max()) / 8 < 2e-4
    tight = log_likelihood(data.score_fn(sde), sde, x, eps=EPS, divergence="exact", rtol=1e-8, atol=1e-8,
                           time_variable=tv)
    assert float((tight.logp - ref).abs().max()) < 1e-5
    assert torch.allclose(tight.z, data.flow(sde, x, EPS, sde.T), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["vp", "ve"])
def test_gaussian_mixture_exact_density_in_every_variable(name):
    # exact score: log p_eps(x) = log p_T(z) + delta_logp; the mixture gives both sides exactly
    sde = SDES[name]()
    mix = GaussianMixture([0.3, 0.7], torch.tensor([[-1.0, 0.5], [1.0, -0.5]]), torch.tensor([0.3, 0.15]))
    x = mix.sample(5, torch.Generator().manual_seed(2))
    truth = mix.logp(sde, x, EPS)
    got = {}
    for tv in TIME_VARIABLES:
        r = log_likelihood(mix.score_fn(sde), sde, x, eps=EPS, divergence="exact", rtol=1e-7, atol=1e-7,
                           time_variable=tv)
        got[tv] = r.delta_logp + mix.logp(sde, r.z, sde.T)
        assert float((got[tv] - truth).abs().max()) < 1e-4, tv
    assert float((got["t"] - got["lambda"]).abs().max()) < 1e-4


def test_field_takes_a_scalar_or_a_per_sample_time():
    sde, data = VPSDE(), _gaussian(4)
    tc = TimeChange(sde, "lambda", EPS, sde.T)
    x = data.sample(3, torch.Generator().manual_seed(0))
    probes = torch.ones(1, *x.shape, dtype=x.dtype)
    s = torch.tensor([tc.s_of_t(0.01), tc.s_of_t(0.2), tc.s_of_t(0.9)], dtype=torch.float64)
    for field, state in ((flow_field(data.score_fn(sde), sde, tc, 3), x),
                         (likelihood_field(data.score_fn(sde), sde, tc, 3, probes), (x, torch.zeros(3)))):
        batched = field(s, state)
        for i in range(3):
            one = field(s[i], state)  # 0-d time: every sample at s[i]
            parts = (batched, one) if isinstance(batched, torch.Tensor) else zip(batched, one)
            for b, o in ((batched, one),) if isinstance(batched, torch.Tensor) else parts:
                assert torch.allclose(b[i], o[i], rtol=1e-12, atol=1e-12)
    # dx/ds = f~ dt/ds: the factor is right (VP: dt/ds = 2 sigma^2 / beta)
    t = tc.time(s)
    pf = flow_field(data.score_fn(sde), sde, TimeChange(sde, "t", EPS, sde.T), 3)(t, x)
    expect = pf * (2 * sde.marginal_std(t) ** 2 / sde.diffusion_coeff(t) ** 2)[:, None]
    assert torch.allclose(flow_field(data.score_fn(sde), sde, tc, 3)(s, x), expect, rtol=1e-12)


@pytest.mark.parametrize("name", ["vp", "ve"])
def test_encode_decode_in_lambda(name):
    sde, data = SDES[name](), _gaussian()
    x = data.sample(2, torch.Generator().manual_seed(3))
    z = encode(data.score_fn(sde), sde, x, eps=EPS, rtol=1e-7, atol=1e-7, time_variable="lambda")
    zt = data.flow(sde, x, EPS, sde.T)
    assert float((z - zt).abs().max() / zt.abs().max()) < 1e-5
    xb = decode(data.score_fn(sde), sde, z, eps=EPS, rtol=1e-7, atol=1e-7, time_variable="lambda")
    assert float((xb - x).abs().max()) < 1e-4


def _small_unet(std=0.02):
    """An untrained tiny digits UNet eps-model with a random output layer (normal, ``std``; the
    UNet's own is zero): a non-trivial non-linear field that is not stiff (a briefly trained one is)."""
    from scoresde import ScoreModel
    from scoresde.models import UNet

    torch.manual_seed(0)
    sde = VPSDE()
    net = UNet(in_channels=1, image_size=8, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=())
    torch.nn.init.normal_(net.conv_out.weight, std=std)
    return ScoreModel(net, sde, prediction="eps").double().eval(), sde


def test_digits_unet_same_log_density_in_every_variable():
    # float64, rtol = atol = 1e-6: the variables agree to 1e-5 bits/dim (measured 1.3e-6, NFE 266 in t and
    # 224 in lambda; 7.8e-9 at 1e-8); at 1e-3 they differ by 0.05 bits/dim, so the check has teeth
    from scoresde.data import digits
    from scoresde.likelihood import uniform_dequantize

    score, sde = _small_unet()
    levels = digits("test").levels[:3]
    y = uniform_dequantize(levels, num_levels=17, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    out = {tv: log_likelihood(score, sde, y, rtol=1e-6, atol=1e-6, time_variable=tv, max_nfe=3000,
                              generator=torch.Generator().manual_seed(5)) for tv in TIME_VARIABLES}
    diff = (out["t"].logp - out["lambda"].logp).abs() / (64 * math.log(2))
    assert float(diff.max()) < 1e-5
    assert float((out["t"].z - out["lambda"].z).abs().max()) < 1e-4


def test_bits_per_dim_takes_the_time_variable():
    sde, data = VPSDE(), GaussianData(0.0, 0.5, (4,))
    levels = torch.randint(0, 256, (3, 4), generator=torch.Generator().manual_seed(0))
    r = {tv: bits_per_dim(data.score_fn(sde), sde, levels.double(), dequantize=True, rtol=1e-6, atol=1e-6,
                          time_variable=tv, generator=torch.Generator().manual_seed(1)) for tv in TIME_VARIABLES}
    assert float((r["t"].bpd - r["lambda"].bpd).abs().max()) < 1e-5
    with pytest.raises(TypeError, match="unknown keyword"):
        bits_per_dim(data.score_fn(sde), sde, levels, time_varible="t")


def test_bad_time_variable():
    sde, data = VPSDE(), _gaussian(2)
    x = data.sample(2)
    with pytest.raises(ValueError, match="time_variable"):
        log_likelihood(data.score_fn(sde), sde, x, time_variable="sigma")
    with pytest.raises(ValueError, match="time_variable"):
        encode(data.score_fn(sde), sde, x, time_variable="logsnr")


@pytest.mark.parametrize("wrap", ["no_grad", "inference_mode", "detach"])
@pytest.mark.parametrize("step_control", ["batch", "per_sample"])
def test_a_score_without_a_graph_is_an_error_not_a_wrong_density(wrap, step_control):
    # a no_grad score once gave logp -21.4 where the truth is -2.75, without a word
    sde = VPSDE()
    data = GaussianData(mu=0.5, std=0.3, shape=(3,))
    sf = data.score_fn(sde)

    def f(x, t):
        if wrap == "detach":
            return sf(x, t).detach()
        ctx = torch.no_grad() if wrap == "no_grad" else torch.inference_mode()
        with ctx:
            return sf(x.detach(), t).clone() if wrap == "inference_mode" else sf(x, t)

    x = data.sample(4, generator=torch.Generator().manual_seed(0)).float()
    with pytest.raises(ValueError, match="without an autograd graph"):
        log_likelihood(f, sde, x, step_control=step_control)
    ok = log_likelihood(sf, sde, x, divergence="exact", step_control=step_control)  # the plain score: the truth
    assert torch.allclose(ok.logp, data.logp(sde, x.double(), 1e-5).float(), atol=1e-2)  # no_grad: 18 nats off
