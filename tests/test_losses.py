"""Training objectives: DSM and DDPM losses against the Gaussian oracle's closed forms, L_hybrid against an
independent numpy computation (case C08 numbers), the importance sampler, and a small trained MLP."""
import math

import numpy as np
import pytest
import torch
from scipy.stats import norm
from torch import nn

import scoresde
from scoresde.losses import LossSecondMomentSampler, ddpm_loss, dsm_loss, hybrid_loss
from scoresde.metrics import sliced_wasserstein
from scoresde.models import MLP
from scoresde.oracle import GaussianData

torch.set_num_threads(1)

SDES = {"vp": lambda: scoresde.VPSDE(), "subvp": lambda: scoresde.SubVPSDE(), "ve": lambda: scoresde.VESDE()}
DATA = GaussianData(mu=torch.tensor([0.3, -0.2, 0.0, 1.0]), std=torch.tensor([0.2, 0.5, 1.0, 2.0]), shape=(4,))


def _within_3se(values: torch.Tensor, expected: float):
    mean, se = values.mean().item(), values.std().item() / math.sqrt(len(values))
    assert abs(mean - expected) < 3 * se, (mean, expected, se)


def _marginal_var(sde, t):
    tt = torch.tensor([t], dtype=torch.float64)
    a, s = sde.mean_coeff(tt), sde.marginal_std(tt)
    return a**2 * DATA.std**2 + s**2, s**2, sde.diffusion_coeff(tt) ** 2


class OracleEps(nn.Module):
    """A 'network' returning the oracle's exact eps: index input (discrete) or label input (continuous)."""

    def __init__(self, sde, discrete):
        super().__init__()
        self.sde, self.discrete = sde, discrete
        self.fn = DATA.eps_fn(sde, discrete=discrete)

    def forward(self, x, time):
        t = self.sde.index_to_t(time.round().long()) if self.discrete else time.double() / (self.sde.N - 1)
        return self.fn(x, t.clamp(max=self.sde.T))


@pytest.mark.parametrize("name", ["vp", "subvp", "ve"])
@pytest.mark.parametrize("t", [0.05, 0.5])
def test_dsm_expected_loss_matches_closed_form(name, t):
    """Issue 5: with the exact score of Gaussian data, E[dsm_loss] at fixed t (sigma^2 weighting, mean)
    is mean_d (1 - sigma(t)^2 / v_d(t)); likelihood weighting: mean_d (1 - sigma^2 / v_d) g^2 / sigma^2;
    reduce "sum": 1/2 sum_d (1 - sigma^2 / v_d). Monte Carlo with 20000 samples, within 3 SE."""
    sde = SDES[name]()
    g = torch.Generator().manual_seed(0)
    x0 = DATA.sample(20000, g)
    v, s2, g2 = _marginal_var(sde, t)
    r = 1 - s2 / v
    score = DATA.score_fn(sde)
    _within_3se(dsm_loss(score, sde, x0, t=t, generator=g, per_sample=True), r.mean().item())
    _within_3se(dsm_loss(score, sde, x0, t=t, generator=g, per_sample=True, weighting="likelihood"),
                (r.mean() * g2 / s2).item())
    _within_3se(dsm_loss(score, sde, x0, t=t, generator=g, per_sample=True, reduce="sum"), 0.5 * r.sum().item())


def test_dsm_through_score_model_and_uniform_t():
    """The same closed form through ScoreModel (eps network fed the label 999 t), at t ~ U(eps, T):
    E = int_eps^T mean_d (1 - sigma^2 / v_d) dt / (T - eps), by a 2000-point trapezoid rule."""
    sde = scoresde.VPSDE()
    model = scoresde.ScoreModel(OracleEps(sde, discrete=False), sde)
    g = torch.Generator().manual_seed(1)
    x0 = DATA.sample(20000, g, dtype=torch.float32)
    with torch.no_grad():
        per = dsm_loss(model, sde, x0, generator=g, per_sample=True)
    ts = torch.linspace(1e-5, 1.0, 2001, dtype=torch.float64)
    a, s = sde.mean_coeff(ts), sde.marginal_std(ts)
    f = (1 - s[:, None] ** 2 / (a[:, None] ** 2 * DATA.std**2 + s[:, None] ** 2)).mean(1)
    _within_3se(per.double(), torch.trapezoid(f, ts).item() / (1 - 1e-5))


@pytest.mark.parametrize("name,k", [("vp", 0), ("vp", 50), ("vp", 500), ("vp", 999), ("subvp", 300)])
def test_ddpm_loss_matches_closed_form(name, k):
    """Issue 5: with the oracle's exact discrete eps-predictor, E[ddpm_loss] at step k is
    mean_d (1 - (1 - ab_k) / (ab_k s_d^2 + 1 - ab_k)), within 3 SE (20000 samples)."""
    sde = SDES[name]()
    model = scoresde.ScoreModel(OracleEps(sde, discrete=True), sde, discrete=True)
    g = torch.Generator().manual_seed(2)
    x0 = DATA.sample(20000, g)
    per = ddpm_loss(model, sde, x0, t_index=torch.full((20000,), k), generator=g, per_sample=True)
    ab = sde.alphas_cumprod[k]
    _within_3se(per, (1 - (1 - ab) / (ab * DATA.std**2 + 1 - ab)).mean().item())


def test_ddpm_loss_uniform_steps():
    """With k ~ U{0..N-1}: E = mean over k of the closed form above, within 3 SE."""
    sde = scoresde.VPSDE()
    model = scoresde.ScoreModel(OracleEps(sde, discrete=True), sde, discrete=True)
    g = torch.Generator().manual_seed(3)
    per = ddpm_loss(model, sde, DATA.sample(20000, g), generator=g, per_sample=True)
    ab = sde.alphas_cumprod[:, None]
    _within_3se(per, (1 - (1 - ab) / (ab * DATA.std**2 + 1 - ab)).mean().item())


class ConstVariance(nn.Module):
    """eps prediction 0 and variance channels v = c everywhere."""

    def __init__(self, c):
        super().__init__()
        self.c = c

    def forward(self, x, time):
        return torch.cat([torch.zeros_like(x), torch.full_like(x, self.c)], dim=1)


def _numpy_hybrid(x0, z, k, c, N, beta_min=0.1, beta_max=20.0, lam=0.001):
    """Improved DDPM's L_hybrid written out in numpy from the paper (eps_hat = 0), one step k per sample."""
    i = np.arange(N)
    betas = beta_min / N + i * (beta_max - beta_min) / (N * (N - 1))
    ab = np.cumprod(1 - betas)
    ab_prev = np.append(1.0, ab[:-1])
    post_var = betas * (1 - ab_prev) / (1 - ab)
    log_post_clipped = np.log(np.append(post_var[1], post_var[1:]))
    a, s = np.sqrt(ab[k])[:, None], np.sqrt(1 - ab[k])[:, None]
    xk = a * x0 + s * z
    c1 = (betas * np.sqrt(ab_prev) / (1 - ab))[k][:, None]
    c2 = (np.sqrt(1 - betas) * (1 - ab_prev) / (1 - ab))[k][:, None]
    x0_hat = xk / a  # eps_hat = 0
    m_model, m_true = c1 * x0_hat + c2 * xk, c1 * x0 + c2 * xk
    f = (c + 1) / 2
    lv_model = f * np.log(betas[k]) + (1 - f) * log_post_clipped[k]
    lv_true = log_post_clipped[k]
    kl = 0.5 * (-1 + lv_model[:, None] - lv_true[:, None] + np.exp(lv_true - lv_model)[:, None]
                + (m_true - m_model) ** 2 * np.exp(-lv_model)[:, None])
    sd = np.exp(0.5 * lv_model)[:, None]
    hi = np.where(x0 > 0.999, 1.0, norm.cdf((x0 + 1 / 255 - m_model) / sd))
    lo = np.where(x0 < -0.999, 0.0, norm.cdf((x0 - 1 / 255 - m_model) / sd))
    nll = -np.log(np.maximum(hi - lo, 1e-12))
    vb = np.where(k == 0, nll.mean(1), kl.mean(1)) / np.log(2)
    return (z**2).mean(1) + lam * N * vb, betas, post_var


@pytest.mark.parametrize("N", [1000, 250])
@pytest.mark.parametrize("c", [0.0, -0.6, 0.9])
def test_hybrid_loss_matches_independent_numpy(N, c):
    """L_hybrid per sample equals a numpy transcription of Nichol & Dhariwal 2021, Eq. (15)-(16) with
    improved-diffusion's RESCALED_MSE weight lambda N = 0.001 N (bits per dimension), at steps 0 (decoder),
    1 (clipped beta-tilde_0, case C08), 2, N/2 and N-1, to 1e-6 relative."""
    sde = scoresde.VPSDE(N=N)
    model = scoresde.ScoreModel(ConstVariance(c), sde, discrete=True, learn_variance=True)
    g = torch.Generator().manual_seed(4)
    k = torch.tensor([0, 1, 2, N // 2, N - 1, 0, 1])
    x0 = (torch.randint(0, 256, (7, 6), generator=g).double() / 127.5 - 1)  # 8-bit grid in [-1, 1]
    z = torch.randn(7, 6, generator=g, dtype=torch.float64)
    got = hybrid_loss(model, sde, x0, t_index=k, noise=z, per_sample=True)
    want, _, _ = _numpy_hybrid(x0.numpy(), z.numpy(), k.numpy(), c, N)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-6)
    assert torch.isfinite(got).all()


def test_c08_learned_range_numbers():
    """Case C08 (linear, T = 1000): beta-tilde_1 = 5.45e-5, and v = 0.5 at step 1 gives the log-space
    interpolation 8.09e-5 (not the linear 8.72e-5); the numpy transcription used above reproduces
    them, and hybrid_loss with v = 0.5 differs from the value with the linear interpolation."""
    _, betas, post_var = _numpy_hybrid(np.zeros((1, 1)), np.zeros((1, 1)), np.array([1]), 0.0, 1000)
    assert abs(post_var[1] - 5.45e-5) < 0.01e-5
    assert abs(math.sqrt(betas[1] * post_var[1]) - 8.09e-5) < 0.01e-5
    assert abs((betas[1] + post_var[1]) / 2 - 8.72e-5) < 0.01e-5
    # the loss uses the log-space value: its KL at step 1 equals the one with variance 8.09e-5
    sde = scoresde.VPSDE()
    model = scoresde.ScoreModel(ConstVariance(0.0), sde, discrete=True, learn_variance=True)
    x0, z = torch.full((1, 1), 0.5, dtype=torch.float64), torch.full((1, 1), 0.3, dtype=torch.float64)
    got = hybrid_loss(model, sde, x0, t_index=torch.tensor([1]), noise=z, per_sample=True).item()
    ab = sde.alphas_cumprod
    xk = ab[1].sqrt() * 0.5 + (1 - ab[1]).sqrt() * 0.3
    c1, c2 = betas[1] * ab[0].sqrt() / (1 - ab[1]), (1 - betas[1]) ** 0.5 * (1 - ab[0]) / (1 - ab[1])
    dm = c1 * (xk / ab[1].sqrt() - 0.5)

    def kl(var):
        return 0.5 * (-1 + math.log(var / post_var[1]) + post_var[1] / var + dm**2 / var) / math.log(2)
    assert abs(got - (0.09 + kl(8.0878e-5))) < 1e-3 * abs(got)
    assert abs(got - (0.09 + kl(8.72e-5))) > 1e-2 * abs(got)


def test_hybrid_vlb_term_trains_only_the_variance():
    """The mean's gradient is stopped in L_vlb (improved-diffusion's frozen_out): the vlb term's
    gradient on the output rows producing eps is exactly 0, on the variance rows it is not."""
    torch.manual_seed(0)
    sde = scoresde.VPSDE()
    net = MLP(3, hidden=16, num_layers=2, embed_dim=16, learn_variance=True)
    with torch.no_grad():
        net.out.weight.normal_(0, 0.1)
    model = scoresde.ScoreModel(net, sde, discrete=True, learn_variance=True)
    x0 = torch.rand(32, 3) * 2 - 1
    k = torch.randint(0, 1000, (32,), generator=torch.Generator().manual_seed(0))
    z = torch.randn(32, 3)
    vb = hybrid_loss(model, sde, x0, t_index=k, noise=z, vlb_weight=1.0) - ddpm_loss(model, sde, x0, t_index=k, noise=z)
    vb.backward()
    assert torch.all(net.out.weight.grad[:3] == 0) and torch.all(net.out.bias.grad[:3] == 0)
    assert net.out.weight.grad[3:].abs().max() > 1e-6


def test_loss_bad_input():
    """Bad input: a model without the variance channels, a continuous model given to the DDPM loss,
    a VE SDE, steps out of range, unknown weighting / reduce, eps outside (0, T), t = 0."""
    vp = scoresde.VPSDE()
    x0 = torch.zeros(4, 2)
    plain = scoresde.ScoreModel(MLP(2, hidden=8, num_layers=1, embed_dim=8), vp, discrete=True)
    with pytest.raises(ValueError, match="learn_variance"):
        hybrid_loss(plain, vp, x0)
    with pytest.raises(ValueError, match="discrete=True"):
        ddpm_loss(scoresde.ScoreModel(MLP(2, hidden=8, num_layers=1, embed_dim=8), vp), vp, x0)
    with pytest.raises(ValueError, match="VPSDE"):
        ddpm_loss(plain, scoresde.VESDE(), x0)
    with pytest.raises(ValueError, match="t_index"):
        ddpm_loss(plain, vp, x0, t_index=torch.tensor([0, 1, 2, 1000]))
    with pytest.raises(ValueError, match="t_index"):
        ddpm_loss(plain, vp, x0, t_index=torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="t_index"):
        ddpm_loss(plain, vp, x0, t_index=torch.tensor([0.0, 1.0, 2.0, 3.0]))
    score = DATA.score_fn(vp)
    with pytest.raises(ValueError, match="weighting"):
        dsm_loss(score, vp, torch.zeros(4, 4), weighting="snr")
    with pytest.raises(ValueError, match="reduce"):
        dsm_loss(score, vp, torch.zeros(4, 4), reduce="max")
    with pytest.raises(ValueError, match="eps"):
        dsm_loss(score, vp, torch.zeros(4, 4), eps=2.0)
    with pytest.raises(ValueError, match="t"):
        dsm_loss(score, vp, torch.zeros(4, 4), t=0.0)
    with pytest.raises(ValueError, match="x0"):
        dsm_loss(score, vp, torch.full((4, 4), float("nan")))


def test_dsm_dequantize_draws_a_uniform_point_of_the_bin():
    # dequantize=L: the loss sees x0 + u, u ~ U(-1/L, 1/L) (a uniform point of the bin of width 2/L around each
    # centre): |u| <= 1/L, E[u] = 0, Var[u] = (1/L)^2 / 3. Read back from x_t = alpha(t) (x0 + u) with z = 0.
    vp, L, n = scoresde.VPSDE(), 17, 200000
    x0 = torch.zeros(n, 1, dtype=torch.float64)  # 0 is the centre of level 8 of 17
    seen = []

    def score(x, t):
        seen.append(x)
        return torch.zeros_like(x)

    dsm_loss(score, vp, x0, t=0.5, noise=torch.zeros_like(x0), dequantize=L, generator=torch.Generator().manual_seed(0))
    alpha = vp.mean_coeff(torch.tensor([0.5], dtype=torch.float64))
    u = seen[0] / alpha
    assert float(u.abs().max()) <= 1 / L
    assert abs(float(u.mean())) < 4 * (1 / L) / math.sqrt(3) / math.sqrt(n)
    assert float(u.var()) == pytest.approx((1 / L) ** 2 / 3, rel=0.02)
    # the draws come first from the generator, then t and z as without dequantize: same seed, other stream
    a = dsm_loss(lambda x, t: -x, vp, x0[:64], generator=torch.Generator().manual_seed(1), dequantize=L)
    b = dsm_loss(lambda x, t: -x, vp, x0[:64], generator=torch.Generator().manual_seed(1))
    assert torch.isfinite(a) and not torch.equal(a, b)


def test_dsm_dequantize_errors_name_the_argument():
    vp, score = scoresde.VPSDE(), (lambda x, t: -x)
    for bad in (1, 2.5, True, "17"):
        with pytest.raises(ValueError, match="dequantize must be the number of levels"):
            dsm_loss(score, vp, torch.zeros(4, 4), dequantize=bad)
    with pytest.raises(ValueError, match=r"bin centres .* in \(-1, 1\)"):
        dsm_loss(score, vp, torch.full((4, 4), 1.0), dequantize=17)


def test_dsm_dequantize_checks_x0_sits_on_the_bin_centres():
    """dequantize=L needs x0 on (2k + 1)/L - 1: 17-level data with L = 256, or [0, 1]-scaled data with L = 17,
    is a ValueError naming dequantize and the levels it implies (the check shares dequantize's one host read)."""
    vp, score = scoresde.VPSDE(), (lambda x, t: -x)
    digits = (2 * torch.arange(17.0) + 1) / 17 - 1
    x0 = digits.repeat(4).reshape(4, 17)
    assert torch.isfinite(dsm_loss(score, vp, x0, dequantize=17))
    assert torch.isfinite(dsm_loss(score, vp, x0.double(), dequantize=17))
    assert torch.isfinite(dsm_loss(score, vp, x0.half(), dequantize=17))  # fp16 rounding of the centres passes
    with pytest.raises(ValueError, match=r"dequantize=256 implies 256 levels"):
        dsm_loss(score, vp, x0, dequantize=256)
    with pytest.raises(ValueError, match=r"dequantize=17 implies 17 levels"):
        dsm_loss(score, vp, torch.arange(17.0).repeat(4, 1) / 16 * 0.99, dequantize=17)


def test_importance_sampler_uniform_until_warm():
    """Uniform (p = 1/N, weights 1) until every step holds `history` losses, even when some steps are full."""
    s = LossSecondMomentSampler(20, history=10)
    for rep in range(10):
        ks = torch.arange(19) if rep == 9 else torch.arange(20)  # step 19 ends with 9 losses
        s.update(ks, (ks.double() + 1) ** 2)
    assert not s.warmed_up()
    assert torch.equal(s.weights(), torch.full((20,), 1 / 20, dtype=torch.float64))
    _, w = s.sample(64, torch.Generator().manual_seed(0))
    assert torch.all(w == 1)
    s.update(torch.tensor([19]), torch.tensor([400.0]))
    assert s.warmed_up() and not torch.allclose(s.weights(), torch.full((20,), 1 / 20, dtype=torch.float64))


def test_importance_sampler_probabilities_and_history():
    """Warm: p_k = 0.999 sqrt(mean of the last 10 L_k^2) / sum + 0.001 / N (Nichol & Dhariwal 2021,
    Eq. (18) and improved-diffusion); losses older than the last 10 are dropped."""
    N = 5
    s = LossSecondMomentSampler(N)
    base = torch.tensor([1.0, 1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    spread = torch.tensor([0.0, 0.5, 0.0, 0.9, 0.2], dtype=torch.float64)
    for rep in range(12):
        # step 0 first sees 100 twice; only its last 10 losses must count. Losses alternate
        # base * (1 +- spread), so sqrt(E[L^2]) = base * sqrt(1 + spread^2), not E[L] = base
        loss = base * (1 + (spread if rep % 2 else -spread))
        if rep < 2:
            loss[0] = 100.0
        s.update(torch.arange(N), loss)
    w = base * torch.sqrt(1 + spread**2)
    assert torch.allclose(s.weights(), 0.999 * w / w.sum() + 0.001 / N, rtol=1e-12)
    s2 = LossSecondMomentSampler(N, uniform_prob=0.5)
    for rep in range(10):
        s2.update(torch.arange(N), base * (1.5 if rep % 2 else 0.5) * torch.tensor([1.0, 1, 1, 1, 3]))
    w2 = base * torch.tensor([1.0, 1, 1, 1, 3])
    assert torch.allclose(s2.weights(), 0.5 * w2 / w2.sum() + 0.5 / N, rtol=1e-12)


def test_importance_sampler_is_unbiased():
    """Warm sampler: the mean of weight * L_k over 200000 draws estimates the uniform mean of L_k
    (within 3 SE), while the unweighted mean is biased (by far more than 3 SE)."""
    N = 100
    g = torch.Generator().manual_seed(5)
    base = torch.exp(torch.linspace(0, 4, N, dtype=torch.float64))  # losses over 1.7 decades
    s = LossSecondMomentSampler(N)
    for _ in range(10):
        s.update(torch.arange(N), base * (1 + 0.1 * torch.randn(N, generator=g, dtype=torch.float64)))
    k, w = s.sample(200000, g)
    assert k.dtype == torch.long and w.shape == (200000,)
    lk = base[k] * (1 + 0.1 * torch.randn(200000, generator=g, dtype=torch.float64))
    _within_3se(w.double() * lk, base.mean().item())
    se = (w.double() * lk).std().item() / math.sqrt(200000)
    assert abs(lk.mean().item() - base.mean().item()) > 30 * se


def test_importance_sampler_state_round_trip():
    """state_dict / load_state_dict restore the same probabilities (for checkpoints)."""
    s = LossSecondMomentSampler(4, history=2)
    for _ in range(2):
        s.update(torch.arange(4), torch.tensor([1.0, 2.0, 3.0, 4.0]))
    s2 = LossSecondMomentSampler(4, history=2)
    s2.load_state_dict(s.state_dict())
    assert s2.warmed_up() and torch.equal(s2.weights(), s.weights())
    with pytest.raises(ValueError, match="shape"):
        LossSecondMomentSampler(5, history=2).load_state_dict(s.state_dict())


def test_losses_pass_class_labels_to_the_network():
    """y= reaches a class-conditional UNet in all three losses (the loss changes with y once the
    output layer is non-zero)."""
    torch.manual_seed(0)
    from scoresde.models import UNet

    sde = scoresde.VPSDE()
    net = UNet(in_channels=1, image_size=8, ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(),
               num_classes=3, learn_variance=True)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.1)
    x0 = torch.rand(2, 1, 8, 8) * 2 - 1
    y0, y1 = torch.tensor([0, 0]), torch.tensor([2, 2])
    disc = scoresde.ScoreModel(net, sde, discrete=True, learn_variance=True)
    cont = scoresde.ScoreModel(net, sde, learn_variance=True)
    k = torch.tensor([3, 800])
    for f in (lambda y: dsm_loss(cont, sde, x0, t=0.5, generator=torch.Generator().manual_seed(0), y=y),
              lambda y: ddpm_loss(disc, sde, x0, t_index=k, generator=torch.Generator().manual_seed(0), y=y),
              lambda y: hybrid_loss(disc, sde, x0, t_index=k, generator=torch.Generator().manual_seed(0), y=y)):
        assert abs(f(y0).item() - f(y1).item()) > 1e-6  # float32 round-off is ~1e-7 here
    null = torch.tensor([3, 3])  # no y: the null class, index num_classes (issue 12)
    assert ddpm_loss(disc, sde, x0, t_index=k, generator=torch.Generator().manual_seed(0)).item() == \
        ddpm_loss(disc, sde, x0, t_index=k, generator=torch.Generator().manual_seed(0), y=null).item()


def test_importance_sampler_bad_input():
    s = LossSecondMomentSampler(10)
    with pytest.raises(ValueError, match="t_index"):
        s.update(torch.tensor([10]), torch.tensor([1.0]))
    with pytest.raises(ValueError, match="losses"):
        s.update(torch.tensor([1]), torch.tensor([float("nan")]))
    with pytest.raises(ValueError, match="uniform_prob"):
        LossSecondMomentSampler(10, uniform_prob=1.5)


def _mixture(n, g, stratified=False):
    """4 Gaussians (std 0.1) at radius 1.5; ``stratified``: exactly n / 4 points per mode."""
    ang = torch.arange(4) * math.pi / 2
    centres = 1.5 * torch.stack([ang.cos(), ang.sin()], 1)
    idx = torch.arange(n) % 4 if stratified else torch.randint(0, 4, (n,), generator=g)
    return centres[idx] + 0.1 * torch.randn(n, 2, generator=g)


def _em_samples(model, sde, n, seed):
    """n samples by scoresde.sample's Euler-Maruyama predictor, 200 steps to eps = 1e-3."""
    return scoresde.sample(model, sde, (n, 2), method="euler_maruyama", steps=200,
                           generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("embedding", ["sinusoidal", "fourier"])
def test_mlp_trained_with_dsm_learns_a_2d_mixture(embedding):
    """Issue 5: an MLP trained 400 Adam steps (lr 5e-3, batch 256) with dsm_loss on a 4-mode 2-D
    mixture lowers the held-out loss (fixed t and z) below 0.5 of its initial value (measured
    ~0.99 -> ~0.2), and 1000 Euler-Maruyama samples (200 steps) have a sliced Wasserstein distance
    to 4000 fresh points below 0.3 (measured 0.11-0.19 over 3 seeds x 2 embeddings; 1000 fresh data
    points score 0.10-0.17). Neither the untrained model (score 0: samples blown up by
    exp(int beta / 2) ~ 150, SW ~ 200) nor a Gaussian with the mixture's mean and covariance
    (no modes, SW ~ 0.43) gets below it."""
    torch.manual_seed(0)
    sde = scoresde.VPSDE()
    g = torch.Generator().manual_seed(0)
    net = MLP(2, hidden=128, num_layers=3, embedding=embedding, embed_dim=64)
    model = scoresde.ScoreModel(net, sde)
    held = _mixture(2000, torch.Generator().manual_seed(1))

    def held_loss():
        with torch.no_grad():
            return dsm_loss(model, sde, held, generator=torch.Generator().manual_seed(5)).item()

    fresh = _mixture(4000, torch.Generator().manual_seed(3), stratified=True)

    def sw(x):
        return sliced_wasserstein(x, fresh, n_projections=64, generator=torch.Generator().manual_seed(0))

    sw0, l0 = sw(_em_samples(model, sde, 1000, 2)), held_loss()
    opt = torch.optim.Adam(net.parameters(), lr=5e-3)
    for _ in range(400):
        loss = dsm_loss(model, sde, _mixture(256, g), generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    l1 = held_loss()
    sw1 = sw(_em_samples(model, sde, 1000, 2))
    cov = torch.cov(_mixture(20000, torch.Generator().manual_seed(9)).T)
    gauss = torch.randn(1000, 2, generator=torch.Generator().manual_seed(2)) @ torch.linalg.cholesky(cov).T
    assert l1 < 0.5 * l0, (l0, l1)
    assert sw1 < 0.3 < sw(gauss) and sw0 > 10, (sw1, sw(gauss), sw0)


def test_hybrid_with_importance_sampling_trains_a_learned_variance_mlp():
    """Improved DDPM end to end on the 2-D mixture (N = 100 steps): 400 Adam steps of L_hybrid with
    t drawn by LossSecondMomentSampler (weights applied to the per-sample losses) lower the
    importance-weighted loss (mean of the last 50 steps below 0.6 of the first 50); the sampler
    leaves its uniform phase; the "ddpm" sampler with the learned-range variance, on all 100 steps
    and on 25 respaced steps, gives a sliced Wasserstein distance to fresh data below 0.3 (measured
    0.13-0.15; the moment-matched Gaussian scores ~0.43, see the test above)."""
    torch.manual_seed(0)
    sde = scoresde.VPSDE(N=100)
    g = torch.Generator().manual_seed(0)
    net = MLP(2, hidden=128, num_layers=3, embed_dim=64, learn_variance=True)
    model = scoresde.ScoreModel(net, sde, discrete=True, learn_variance=True)
    sampler = LossSecondMomentSampler(sde.N)
    opt = torch.optim.Adam(net.parameters(), lr=5e-3)
    history = []
    for _ in range(400):
        k, w = sampler.sample(256, g)
        per = hybrid_loss(model, sde, _mixture(256, g), t_index=k, generator=g, per_sample=True)
        loss = (per * w).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sampler.update(k, per.detach())
        history.append(loss.item())
    assert sampler.warmed_up()
    assert np.mean(history[-50:]) < 0.6 * np.mean(history[:50]), (np.mean(history[:50]), np.mean(history[-50:]))
    fresh = _mixture(4000, torch.Generator().manual_seed(3), stratified=True)
    for steps in (None, 25):
        x = scoresde.sample(model, sde, (1000, 2), method="ddpm", steps=steps, variance="learned_range",
                            generator=torch.Generator().manual_seed(2))
        d = sliced_wasserstein(x, fresh, n_projections=64, generator=torch.Generator().manual_seed(0))
        assert d < 0.3, (steps, d)


def test_integer_x0_is_a_type_error_naming_x0():
    sde = scoresde.VPSDE()
    with pytest.raises(TypeError, match="x0"):
        scoresde.dsm_loss(lambda x, t: -x, sde, torch.ones(4, 2, dtype=torch.long))
