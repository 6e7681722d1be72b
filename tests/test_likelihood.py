"""Tests of scoresde.likelihood against closed forms (issue 4; cases C10, C11, C12, C13).

The oracle: for Gaussian data N(mu, diag(s^2)) the score, the probability-flow map and the
log-density are analytic (scoresde.oracle.GaussianData), so the flow likelihood must equal
``pf_logp`` = log prior(x_T) + 1/2 sum log(v(T) / v(eps)). For data uniform on an interval under
a VE SDE, p_t(x) = prod_i [Phi((b - x_i)/sigma) - Phi((a - x_i)/sigma)] / (b - a) has a closed-form
score, which gives a model whose density is uniform over the data range.
"""
import math

import pytest
import torch

from scoresde import SubVPSDE, VESDE, VPSDE
from scoresde.likelihood import (bits_per_dim, decode, encode, log_likelihood, pf_drift, uniform_dequantize)
from scoresde.oracle import GaussianData
from scoresde.solvers.ode import ODESolverError

EPS = 1e-5
SDES = {"vp": lambda: VPSDE(), "subvp": lambda: SubVPSDE(), "ve": lambda: VESDE()}


def _anisotropic(D):
    return GaussianData(mu=torch.linspace(-0.5, 0.5, D), std=torch.linspace(0.2, 0.6, D), shape=(D,))


@pytest.mark.parametrize("D", [8, 64])
@pytest.mark.parametrize("name", ["vp", "subvp", "ve"])
def test_exact_divergence_matches_gaussian_closed_form(name, D):
    # issue 4: |logp - pf_logp| <= 2e-4 nats per dimension at rtol = atol = 1e-5 (float64)
    sde = SDES[name]()
    data = _anisotropic(D)
    x = data.sample(2, torch.Generator().manual_seed(1))
    r = log_likelihood(data.score_fn(sde), sde, x, eps=EPS, divergence="exact", rtol=1e-5, atol=1e-5)
    ref = data.pf_logp(sde, x, EPS)
    assert float((r.logp - ref).abs().max()) / D < 2e-4
    assert torch.allclose(r.logp, r.prior_logp + r.delta_logp, atol=1e-12)
    assert torch.allclose(r.prior_logp, sde.prior_logp(r.z))
    # the latent is the exact flow of x to T (relative to its scale: |z| ~ sigma_max = 50 for VE)
    zt = data.flow(sde, x, EPS, sde.T)
    assert float((r.z - zt).abs().max() / zt.abs().max()) < 1e-4


def _rotated(data, sde, seed=0):
    """Data R N(mu, diag s^2): score R s(R^T x); non-diagonal Jacobian, logp(x) = logp_data(R^T x)."""
    D = data.dim
    R, _ = torch.linalg.qr(torch.randn(D, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    base = data.score_fn(sde)
    return (lambda x, t: base(x @ R, t) @ R.T), R


@pytest.mark.parametrize("kind", ["hutchinson_rademacher", "hutchinson_gaussian"])
def test_hutchinson_unbiased_within_3_se(kind):
    # case C12: the mean of independent Hutchinson estimates is within 3 standard errors of the closed form
    sde, D, M = VPSDE(), 8, 48
    data = _anisotropic(D)
    score, R = _rotated(data, sde)
    x0 = data.sample(1, torch.Generator().manual_seed(2))
    x = (x0 @ R.T).expand(M, D).contiguous()
    ref = float(data.pf_logp(sde, x0, EPS))
    r = log_likelihood(score, sde, x, eps=EPS, divergence=kind, generator=torch.Generator().manual_seed(3))
    se = float(r.logp.std()) / math.sqrt(M)
    assert se > 1e-3  # the estimator has variance here (non-diagonal Jacobian), so the check has teeth
    assert abs(float(r.logp.mean()) - ref) < 3 * se
    # averaging 4 probes per evaluation divides the variance by 4 (std ratio 0.5; loose bounds for M = 48)
    r4 = log_likelihood(score, sde, x, eps=EPS, divergence=kind, n_probes=4, generator=torch.Generator().manual_seed(4))
    ratio = float(r4.logp.std() / r.logp.std())
    assert 0.3 < ratio < 0.75
    assert abs(float(r4.logp.mean()) - ref) < 3 * float(r4.logp.std()) / math.sqrt(M)


def test_probes_drawn_once_per_solve():
    # case C12: one probe draw per solve; the generator advances by exactly one draw of (n_probes, B, *S)
    sde, data = VPSDE(), _anisotropic(8)
    x = data.sample(3, torch.Generator().manual_seed(0))
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    r = log_likelihood(data.score_fn(sde), sde, x, divergence="hutchinson_gaussian", n_probes=2, generator=g1)
    assert r.nfe > 10
    torch.randn((2, 3, 8), generator=g2, dtype=x.dtype)
    assert torch.equal(g1.get_state(), g2.get_state())


def _counting(score):
    calls = []

    def f(x, t):
        calls.append(1)
        return score(x, t)

    return f, calls


def test_nfe_increases_with_tolerance_and_is_counted():
    # case C13: Gaussian toy N(0, 0.25 I), D = 8, VP: NFE(1e-3) < NFE(1e-5) < NFE(1e-8), NFE(1e-5) < 100
    # (scipy RK45 in the case: 26 / 44 / 158; dopri5 here: 26 / 44 / 140); NFE == score calls
    sde, data = VPSDE(), GaussianData(0.0, 0.5, (8,))
    x = data.sample(4, torch.Generator().manual_seed(0))
    nfes = []
    for tol in (1e-3, 1e-5, 1e-8):
        score, calls = _counting(data.score_fn(sde))
        r = log_likelihood(score, sde, x, divergence="exact", rtol=tol, atol=tol)
        assert r.nfe == len(calls)
        nfes.append(r.nfe)
    assert nfes[0] < nfes[1] < nfes[2] and nfes[1] < 100


def test_max_nfe_guard():
    # case C13: near-point-mass data (std 0.001) is stiff near t = 0: 620 evaluations at tol 1e-9 from
    # eps = 1e-5 (152 at 1e-5), so max_nfe = 500 must raise a clear error instead of running on
    sde, data = VPSDE(), GaussianData(0.0, 0.001, (8,))
    x = data.sample(4, torch.Generator().manual_seed(0))
    score, calls = _counting(data.score_fn(sde))
    with pytest.raises(ODESolverError, match="max_nfe=500"):
        log_likelihood(score, sde, x, eps=1e-5, divergence="exact", rtol=1e-9, atol=1e-9, max_nfe=500)
    assert len(calls) == 500


def _uniform_score(sde, a, b):
    """Exact score of data uniform on [a, b]^D under a VE SDE (a model with uniform density)."""

    def score(x, t):
        s = sde.marginal_std(t.to(torch.float64)).to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
        za, zb = (a - x) / s, (b - x) / s
        mass = torch.special.ndtr(zb) - torch.special.ndtr(za)
        dens = lambda z: torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)  # noqa: E731
        return (dens(za) - dens(zb)) / (s * mass)

    return score


@pytest.mark.parametrize("data_range", [(-1.0, 1.0), (0.0, 1.0)])
def test_uniform_model_gives_exactly_8_bits(data_range):
    # case C10: a density uniform over the data range gives -log p / (D ln 2) + log2(256 / width) = 8.000
    # ([-1, 1]: 1 + 7; [0, 1]: 0 + 8). sigma_max = 1e4 makes the prior N(0, sigma_max^2) match p_T to 1e-4 bits.
    sde = VESDE(sigma_min=1e-3, sigma_max=1e4)
    x = torch.randint(8, 248, (6, 4), generator=torch.Generator().manual_seed(0))  # away from the edge bins
    r = bits_per_dim(_uniform_score(sde, *data_range), sde, x.to(torch.float64), data_range=data_range,
                     divergence="exact", generator=torch.Generator().manual_seed(1))
    assert r.offset == pytest.approx({(-1.0, 1.0): 7.0, (0.0, 1.0): 8.0}[data_range])
    assert float((r.bpd - 8.0).abs().max()) < 5e-4


def test_bpd_same_for_01_and_m11_models():
    # case C10: the same model expressed on [0, 1] or [-1, 1] data gives the same bits/dim (to 1e-3).
    # VE with sigma_max = 1e4: the prior N(0, sigma_max^2) then matches p_T of both models to ~1e-4 bits
    # (under VP the prior mismatch alpha(T) mu x_T depends on where the data sit: ~5e-3 bits apart here)
    sde, D = VESDE(sigma_min=1e-3, sigma_max=1e4), 4
    mu, std = torch.tensor([-0.3, 0.0, 0.2, 0.5]), torch.tensor([0.3, 0.4, 0.25, 0.35])
    m11 = GaussianData(mu, std, (D,))
    m01 = GaussianData((mu + 1) / 2, std / 2, (D,))
    # float64 levels -> float64 dequantized data (integer levels would give the default float32)
    x = torch.randint(0, 256, (4, D), generator=torch.Generator().manual_seed(0)).to(torch.float64)
    kw = dict(divergence="exact", n_dequant=2)
    a = bits_per_dim(m11.score_fn(sde), sde, x, data_range=(-1, 1), generator=torch.Generator().manual_seed(7), **kw)
    b = bits_per_dim(m01.score_fn(sde), sde, x, data_range=(0, 1), generator=torch.Generator().manual_seed(7), **kw)
    assert float((a.bpd - b.bpd).abs().max()) < 1e-3
    assert a.nfe > 0 and b.nfe > 0
    # an offset that ignores the scaling (the C10 bug) would be 1 bit off
    assert abs(float(a.bpd.mean() - (b.bpd.mean() - 1.0))) > 0.9


def test_narrow_density_negative_without_dequantization():
    # case C11: a Gaussian of std 1e-3 centred on pixel values: 5.989 nats/dim -> -0.640 bpd without
    # dequantization ([0, 1] data); with dequantization bpd >= 0 (here 0.28, and exactly the closed form)
    sde, D = VESDE(sigma_min=1e-4, sigma_max=50.0), 4
    k = torch.tensor([[10, 100, 128, 240], [3, 77, 200, 251]], dtype=torch.float64)
    centres = (k + 0.5) / 256
    data = GaussianData(centres[0], 1e-3, (D,))
    x = centres[:1]
    r = bits_per_dim(data.score_fn(sde), sde, x, data_range=(0, 1), dequantize=False, divergence="exact")
    exact = -float(data.pf_logp(sde, x, EPS)) / (D * math.log(2)) + 8.0
    assert float(r.bpd) == pytest.approx(exact, abs=1e-3)
    assert float(r.bpd) == pytest.approx(-0.640, abs=0.02) and float(r.bpd) < 0
    xi = k[:1].expand(16, D).contiguous()
    rq = bits_per_dim(data.score_fn(sde), sde, xi, data_range=(0, 1), divergence="exact",
                      generator=torch.Generator().manual_seed(3))
    y = uniform_dequantize(xi, data_range=(0, 1), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    exact_q = -data.pf_logp(sde, y, EPS) / (D * math.log(2)) + 8.0
    assert float((rq.bpd - exact_q).abs().max()) < 1e-3
    # single draws can dip below 0 (y near a bin centre); the expectation over u cannot: it is
    # 8 - [-1/2 log(2 pi v) - (1/256)^2 / 12 / (2 v)] / ln 2 = 0.276 with v = v(eps) of the model
    _, v = data.marginal(sde, EPS, y[:1])
    expected = 8.0 - float((-0.5 * torch.log(2 * math.pi * v) - (1 / 256) ** 2 / 12 / (2 * v)).mean()) / math.log(2)
    assert expected == pytest.approx(0.276, abs=0.01)
    se = float(rq.bpd.std()) / math.sqrt(len(rq.bpd))
    assert abs(float(rq.bpd.mean()) - expected) < 3 * se + 0.01
    assert float(rq.bpd.mean()) + 3 * se >= 0


@pytest.mark.parametrize("data_range,var", [((0.0, 1.0), 1.27e-6), ((-1.0, 1.0), 5.09e-6)])
def test_dequantization_noise_variance(data_range, var):
    # case C11: uniform noise of one bin, (width / 256)^2 / 12: 1.27e-6 on [0, 1], 5.09e-6 on [-1, 1] (within 5 %)
    k = torch.randint(0, 256, (20000,), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    y = uniform_dequantize(k[:, None], data_range=data_range, generator=torch.Generator().manual_seed(1),
                           dtype=torch.float64)
    low, high = data_range
    centre = low + (high - low) * (k[:, None].double() + 0.5) / 256
    assert float((y - centre).var()) == pytest.approx(var, rel=0.05)
    assert float(y.min()) >= low and float(y.max()) < high


@pytest.mark.parametrize("name", ["vp", "ve"])
def test_encode_decode_round_trip(name):
    # issue 4: decode(encode(x)) == x within 1e-3 (max abs) at rtol = atol = 1e-5; encode is the exact flow
    sde, data = SDES[name](), _anisotropic(8)
    x = data.sample(4, torch.Generator().manual_seed(0))
    score = data.score_fn(sde)
    z = encode(score, sde, x)
    zt = data.flow(sde, x, EPS, sde.T)
    assert float((z - zt).abs().max() / zt.abs().max()) < 1e-4
    x_back = decode(score, sde, z)
    assert float((x_back - x).abs().max()) < 1e-3
    # the drift is the probability-flow drift of ReverseSDE
    t = torch.full((4,), 0.3, dtype=torch.float64)
    assert torch.allclose(pf_drift(score, sde, x, t), sde.reverse(score, probability_flow=True).sde(x, t)[0])


def test_float32_model_path():
    # a float32 state works end to end and agrees with the float64 closed form to float32-level accuracy
    sde, data = VPSDE(), _anisotropic(8)
    x = data.sample(2, torch.Generator().manual_seed(0), dtype=torch.float32)
    r = log_likelihood(data.score_fn(sde), sde, x, divergence="exact")
    assert r.logp.dtype == torch.float32
    assert float((r.logp.double() - data.pf_logp(sde, x.double(), EPS)).abs().max()) / 8 < 1e-3


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_input_is_solved_in_float32(dtype):
    # break-test: float16 x ended in "t contains NaN"; now solved in float32: logp (float32) equals
    # the closed form at the rounded input within 1e-3 nats per dimension, z (cast back) equals
    # GaussianData.flow within the dtype's rounding (|z| < 4: half 2e-3, bfloat16 1.6e-2)
    sde, data = VPSDE(), GaussianData(0.5, 0.1, (4,))
    x = data.sample(3, torch.Generator().manual_seed(0)).to(dtype)
    score = data.score_fn(sde)
    r = log_likelihood(score, sde, x, divergence="exact")
    assert r.logp.dtype == torch.float32 and r.z.dtype == dtype
    assert float((r.logp.double() - data.pf_logp(sde, x.double(), EPS)).abs().max()) / 4 < 1e-3
    tol = 4e-3 if dtype == torch.float16 else 3.2e-2
    z = encode(score, sde, x)
    assert z.dtype == dtype
    assert float((z.double() - data.flow(sde, x.double(), EPS, sde.T)).abs().max()) < tol
    assert decode(score, sde, z).dtype == dtype


def test_bad_input():
    sde, data = VPSDE(), _anisotropic(4)
    score = data.score_fn(sde)
    x = data.sample(2)
    for kw, word in [(dict(eps=0.0), "eps"), (dict(eps=1.0), "eps"), (dict(eps=-1e-3), "eps"),
                     (dict(divergence="hutchinson"), "divergence"), (dict(method="rk45"), "method"),
                     (dict(rtol=0.0), "rtol"), (dict(atol=-1e-5), "atol"), (dict(n_probes=0), "n_probes")]:
        with pytest.raises(ValueError, match=word):
            log_likelihood(score, sde, x, **kw)
    with pytest.raises(ValueError, match="hutchinson_rademacher"):  # lists the valid names
        log_likelihood(score, sde, x, divergence="bogus")
    with pytest.raises(TypeError, match="generator"):  # break-test: was AttributeError
        log_likelihood(score, sde, x, generator=5)
    with pytest.raises(TypeError, match="generator"):
        bits_per_dim(score, sde, torch.tensor([[0, 5, 255, 3]]), generator=5)
    xn = x.clone()
    xn[0, 0] = float("nan")
    with pytest.raises(ValueError, match="x"):
        log_likelihood(score, sde, xn)
    with pytest.raises(ValueError, match="z"):
        decode(score, sde, xn)
    with pytest.raises(ValueError, match="eps"):
        encode(score, sde, x, eps=2.0)

    levels = torch.tensor([[0, 5, 255, 3]])
    for bad in (torch.tensor([[0, 5, 256, 3]]), torch.tensor([[-1, 5, 25, 3]])):
        with pytest.raises(ValueError, match="num_levels"):
            bits_per_dim(score, sde, bad)
    with pytest.raises(ValueError, match="integer"):
        bits_per_dim(score, sde, levels.double() + 0.5)
    with pytest.raises(ValueError, match="NaN"):
        bits_per_dim(score, sde, torch.tensor([[0.0, float("nan"), 1.0, 2.0]]))
    for rng in [(1.0, -1.0), (0.0, 0.0), (0.0, float("inf"))]:
        with pytest.raises(ValueError, match="data_range"):
            bits_per_dim(score, sde, levels, data_range=rng)
    with pytest.raises(ValueError, match="num_levels"):  # digits have 17 levels: 20 is out of range
        bits_per_dim(score, sde, torch.tensor([[0, 5, 20, 3]]), num_levels=17)
    with pytest.raises(ValueError, match="data_range"):  # continuous data must lie in the range
        bits_per_dim(score, sde, torch.tensor([[0.0, 1.5, 0.2, 0.1]]), data_range=(0, 1), dequantize=False)
    with pytest.raises(ValueError, match="eps"):
        bits_per_dim(score, sde, levels, eps=0.0)
    with pytest.raises(ValueError, match="n_dequant"):
        bits_per_dim(score, sde, levels, n_dequant=0)
    with pytest.raises(TypeError, match="unknown keyword"):
        bits_per_dim(score, sde, levels, data_rnage=(0, 1))


def test_bits_per_dim_warns_when_the_data_use_few_of_the_declared_levels():
    """17-level data (the digits) declared as 256 levels: a LevelsWarning naming both counts (issue 10, item 7);
    the same batch with num_levels=17 is silent."""
    import warnings

    from scoresde._levels import LevelsWarning

    sde = VPSDE()
    data = GaussianData(mu=0.0, std=0.5, shape=(4,))
    x = torch.randint(0, 17, (64, 4), generator=torch.Generator().manual_seed(0)).float()
    with pytest.warns(LevelsWarning, match="17 distinct values.*num_levels=256"):
        bits_per_dim(data.score_fn(sde), sde, x, num_levels=256, rtol=1e-3, atol=1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LevelsWarning)
        bits_per_dim(data.score_fn(sde), sde, x, num_levels=17, rtol=1e-3, atol=1e-3)


def test_half_precision_levels_are_dequantized_in_float32():
    # float16 has about 8 values per bin at 256 levels: the noise must not be drawn in it
    sde = VPSDE()
    data = GaussianData(mu=0.0, std=0.5, shape=(4,))
    levels = torch.randint(0, 256, (3, 4), generator=torch.Generator().manual_seed(0))
    kw = dict(num_levels=256, divergence="exact", rtol=1e-4, atol=1e-4)
    a = bits_per_dim(data.score_fn(sde), sde, levels.half(), generator=torch.Generator().manual_seed(1), **kw)
    b = bits_per_dim(data.score_fn(sde), sde, levels.float(), generator=torch.Generator().manual_seed(1), **kw)
    assert torch.equal(a.bpd, b.bpd)
