"""Classifier / classifier-free guidance, inpainting and colorization against exact answers.

* Classifier guidance with the exact noise-conditional posterior p_t(y | x) of a two-component
  Gaussian mixture (:meth:`GaussianMixture.logits_fn`) and its exact unconditional score: at
  scale 1 the guided score is exactly the score of component y, so the samples follow it.
* Classifier-free guidance: scale 0 is the conditional model bit for bit; with Gaussian
  conditional and unconditional scores of equal variance, (1 + w) s_c - w s_u is exactly the
  score of N((1 + w) mu_c - w mu_u, s^2), the tilted density p(x | y)^(1+w) / p(x)^w.
* Inpainting: known entries come back exactly; with independent coordinates the unknown ones
  keep their marginal; with correlated Gaussian data the exact conditional p(x_u | x_k) is
  closed form, replacement is biased and RePaint's resampling reduces the bias.
* Colorization: the decoupled channel 0 equals the gray input's; the basis is orthonormal.
"""
from __future__ import annotations

import pytest
import torch

import scoresde
from scoresde import VESDE, VPSDE, classifier_free_guidance, classifier_guidance, colorize, inpaint, sample
from scoresde.constrained import colorization_basis, repaint_schedule
from scoresde.oracle import GaussianData, GaussianMixture

MIX = GaussianMixture(weights=[0.6, 0.4], means=[[1.5, 0.5], [-1.0, -1.0]], stds=[0.3, 0.4])


def _moments_match(x, comp: GaussianMixture, k_se=3.0):
    n = x.shape[0]
    mean, var = x.mean(0), x.var(0)
    mu, s2 = comp.means[0], comp.stds[0].expand_as(comp.means[0]) ** 2
    se_mean = (s2 / n).sqrt()
    se_var = s2 * (2.0 / (n - 1)) ** 0.5
    # sampler discretisation adds a little on top of Monte-Carlo error: 3 SE + 1 % of the scale
    assert bool(((mean - mu).abs() <= k_se * se_mean + 0.01).all()), (mean, mu)
    assert bool(((var - s2).abs() <= k_se * se_var + 0.02 * s2).all()), (var, s2)


@pytest.mark.parametrize("sde_cls", [VPSDE, VESDE])
@pytest.mark.parametrize("method, steps", [("pc", 200), ("ode", None), ("dpmpp_2m", 30)])
@pytest.mark.parametrize("y", [0, 1])
def test_classifier_guidance_with_the_exact_posterior_samples_the_component(sde_cls, method, steps, y):
    """scale 1, exact p_t(y | x): samples of class y have component y's mean and variance (3 SE)."""
    sde = sde_cls()
    guided = classifier_guidance(MIX.score_fn(sde), MIX.logits_fn(sde), y, scale=1.0)
    x = sample(guided, sde, (6000, 2), method=method, steps=steps, generator=torch.Generator().manual_seed(y),
               dtype=torch.float64)
    _moments_match(x, MIX.component(y))


def test_classifier_guidance_checks_and_scale_zero():
    sde = VPSDE()
    score = MIX.score_fn(sde)
    x = torch.randn(5, 2, dtype=torch.float64)
    t = torch.full((5,), 0.5, dtype=torch.float64)
    assert torch.equal(classifier_guidance(score, MIX.logits_fn(sde), 1, scale=0.0)(x, t), score(x, t))
    with pytest.raises(ValueError, match="y must lie in"):
        classifier_guidance(score, MIX.logits_fn(sde), 2)(x, t)
    with pytest.raises(ValueError, match="labels but the batch"):
        classifier_guidance(score, MIX.logits_fn(sde), torch.tensor([0, 1]))(x, t)
    with pytest.raises(ValueError, match="scale"):
        classifier_guidance(score, MIX.logits_fn(sde), 0, scale=float("nan"))
    with pytest.raises(TypeError, match="integer"):
        classifier_guidance(score, MIX.logits_fn(sde), 0.5)(x, t)


class _GaussianConditional:
    """A conditional 'model' with exact scores: class c ~ N(mu_c, s^2), unconditional N(mu_u, s^2)."""

    def __init__(self, sde, mus, mu_u, std, null_class=None):
        self.cond = [GaussianData(mu=m, std=std, shape=(2,)).score_fn(sde) for m in mus]
        self.uncond = GaussianData(mu=mu_u, std=std, shape=(2,)).score_fn(sde)
        if null_class is not None:
            self.null_class = null_class

    def __call__(self, x, t, y=None):
        if y is None:
            return self.uncond(x, t)
        out = torch.empty_like(x)
        for c in y.unique().tolist():
            sel = y == c
            fn = self.uncond if c == getattr(self, "null_class", -1) else self.cond[c]
            out[sel] = fn(x[sel], t[sel])
        return out


@pytest.mark.parametrize("null_class", [None, 2])
def test_classifier_free_guidance_scale_zero_is_the_conditional_model(null_class):
    sde = VPSDE()
    model = _GaussianConditional(sde, [1.0, -1.0], 0.0, 0.3, null_class)
    cond = lambda x, t: model(x, t, y=torch.ones(x.shape[0], dtype=torch.long))  # noqa: E731
    g = torch.Generator().manual_seed(0)
    a = sample(classifier_free_guidance(model, 1, 0.0), sde, (64, 2), method="pc", steps=20, generator=g)
    b = sample(cond, sde, (64, 2), method="pc", steps=20, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)


@pytest.mark.parametrize("w", [0.5, 2.0])
@pytest.mark.parametrize("null_class", [None, 2])
def test_classifier_free_guidance_samples_the_tilted_gaussian(w, null_class):
    """Equal variances: the guided score is that of N((1 + w) mu_c - w mu_u, s^2) at every t (exact)."""
    sde = VPSDE()
    mu_c, mu_u, std = 1.0, 0.25, 0.3
    model = _GaussianConditional(sde, [mu_c, -1.0], mu_u, std, null_class)
    x = sample(classifier_free_guidance(model, 0, w), sde, (8000, 2), method="dpmpp_2m", steps=30,
               generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    target = (1 + w) * mu_c - w * mu_u
    se = std / 8000**0.5
    assert float((x.mean(0) - target).abs().max()) < 3 * se + 0.01
    assert float((x.std(0) - std).abs().max()) < 0.02


# ---- inpainting ------------------------------------------------------------------------------

IND = GaussianData(mu=torch.tensor([0.5, -0.5, 1.0, 0.0]), std=torch.tensor([0.3, 0.5, 0.2, 0.4]), shape=(4,))
MASK = torch.tensor([True, False, True, False])


@pytest.mark.parametrize("method, steps", [("pc", 100), ("euler_maruyama", 100), ("sde", 100), ("ode", None),
                                           ("ddim", 50), ("ddpm", None), ("dpmpp_2m", 20), ("unipc", 20),
                                           ("heun", 15), ("deis", 20), ("dpm_adaptive", None)])
def test_inpainting_independent_coordinates(method, steps):
    """Known entries equal y exactly. The score factorises over coordinates, so replacing the known ones must
    leave the unknown ones as the sampler makes them unconstrained: equal to the unconstrained sample from the
    same x_T for deterministic methods, with the marginal mean and variance for stochastic ones."""
    from scoresde.solvers.registry import SOLVERS

    sde = VPSDE()
    n = 4000
    y = IND.sample(n, generator=torch.Generator().manual_seed(2))
    x, info = inpaint(IND.score_fn(sde), sde, y, MASK, method=method, steps=steps, return_info=True,
                      generator=torch.Generator().manual_seed(3))
    assert torch.equal(x[:, MASK], y[:, MASK]) and x.dtype == y.dtype and info.nfe > 0
    unk = ~MASK
    if not SOLVERS[method].stochastic and method != "dpm_adaptive":  # its step control sees the known entries too
        free = sample(IND.score_fn(sde), sde, y.shape, method=method, steps=steps, dtype=y.dtype,
                      generator=torch.Generator().manual_seed(3))
        assert torch.allclose(x[:, unk], free[:, unk], atol=1e-6)
    else:
        mu, sd = IND.mu[unk], IND.std[unk]
        assert float((x[:, unk].mean(0) - mu).abs().max()) < 3 * float(sd.max()) / n**0.5 + 0.01
        assert float((x[:, unk].std(0) / sd - 1).abs().max()) < 0.05


def _correlated():
    mu = torch.tensor([0.5, -0.3, 0.2, 0.0], dtype=torch.float64)
    idx = torch.arange(4, dtype=torch.float64)
    cov = 0.25 * 0.9 ** (idx[:, None] - idx[None, :]).abs()
    return mu, cov


def _correlated_score(sde, mu, cov):
    eye = torch.eye(len(mu), dtype=torch.float64)

    def score(x, t):
        t = t.to(torch.float64)
        a, s = sde.mean_coeff(t), sde.marginal_std(t)
        c = a[:, None, None] ** 2 * cov + s[:, None, None] ** 2 * eye
        return (-torch.linalg.solve(c, (x.double() - a[:, None] * mu).unsqueeze(-1)).squeeze(-1)).to(x.dtype)

    return score


def test_repaint_resampling_reduces_the_bias_of_replacement():
    """Correlated Gaussian, x_0 known = 1.2: the exact conditional mean of the other three is closed form.
    Replacement (reverse diffusion, 100 steps) is biased by ~0.5; resampling (jump 5 x 10) reduces it
    (measured 0.52 -> 0.22)."""
    sde = VPSDE()
    mu, cov = _correlated()
    mask = torch.tensor([True, False, False, False])
    y = torch.zeros(3000, 4, dtype=torch.float64)
    y[:, 0] = 1.2
    cmean = mu[1:] + cov[1:, 0] / cov[0, 0] * (1.2 - mu[0])
    score = _correlated_score(sde, mu, cov)
    bias = {}
    for jl, jn in ((None, 1), (5, 10)):
        x, info = inpaint(score, sde, y, mask, method="reverse_diffusion", steps=100, jump_length=jl,
                          jump_n_sample=jn, return_info=True, generator=torch.Generator().manual_seed(4))
        bias[jn] = float((x[:, 1:].mean(0) - cmean).norm())
        if jn > 1:
            assert info.nfe == 100 + 9 * 5 * (100 // 5 - 1)  # every block but the last is redone 9 times
    assert bias[10] < 0.6 * bias[1], bias


def test_repaint_schedule_shape():
    ts = torch.linspace(1.0, 0.0, 11, dtype=torch.float64)
    sched = repaint_schedule(ts, 2, 3)
    assert sched[0] == 1.0 and sched[-1] == 0.0
    ups = sum(1 for a, b in zip(sched[:-1], sched[1:]) if b > a)
    assert ups == 2 * 2 * 4  # 4 interior blocks, 2 repeats, 2 steps up each
    with pytest.raises(ValueError, match="jump_length"):
        repaint_schedule(ts, 0, 2)


def test_inpaint_bad_input():
    sde = VPSDE()
    y = IND.sample(4).float()
    with pytest.raises(ValueError, match="broadcast"):
        inpaint(IND.score_fn(sde), sde, y, torch.ones(3, dtype=torch.bool), method="pc", steps=2)
    with pytest.raises(ValueError, match="0 / 1"):
        inpaint(IND.score_fn(sde), sde, y, torch.full((4,), 0.5), method="pc", steps=2)
    with pytest.raises(ValueError, match="grid sampler"):
        inpaint(IND.score_fn(sde), sde, y, MASK, method="dpmpp_2m", steps=2, jump_length=2, jump_n_sample=2)
    with pytest.raises(TypeError, match="floating"):
        inpaint(IND.score_fn(sde), sde, y.long(), MASK, method="pc", steps=2)


# ---- colorization ----------------------------------------------------------------------------

def test_colorization_basis_is_orthonormal_with_the_gray_axis_first():
    for c in (2, 3, 4):
        M = colorization_basis(c)
        assert torch.allclose(M.T @ M, torch.eye(c, dtype=torch.float64), atol=1e-12)
        assert torch.allclose(M[:, 0], torch.full((c,), c**-0.5, dtype=torch.float64), atol=1e-12)
    ref = torch.tensor([5.7735014e-01, 5.7735026e-01, 5.7735026e-01], dtype=torch.float64)  # the reference's M[:, 0]
    assert torch.allclose(colorization_basis(3)[:, 0], ref, atol=1e-6)


@pytest.mark.parametrize("method", ["pc", "dpmpp_2m"])
def test_colorize_keeps_the_gray_channel(method):
    sde = VPSDE()
    data = GaussianData(mu=torch.tensor([0.3, -0.2, 0.1]).reshape(3, 1, 1), std=0.3, shape=(3, 4, 4))
    gray = data.sample(16, generator=torch.Generator().manual_seed(5)).float().mean(1, keepdim=True)
    x, info = colorize(data.score_fn(sde), sde, gray, method=method, steps=20, return_info=True,
                       generator=torch.Generator().manual_seed(6))
    assert x.shape == (16, 3, 4, 4)
    M = colorization_basis(3, torch.float32)
    dec = torch.einsum("bihw,ij->bjhw", x, M)
    dec_gray = torch.einsum("bihw,ij->bjhw", gray.expand(-1, 3, -1, -1), M)
    assert float((dec[:, 0] - dec_gray[:, 0]).abs().max()) < 1e-6
    assert torch.allclose(x.mean(1), gray[:, 0], atol=1e-6)
    with pytest.raises(ValueError, match="equal channels"):
        colorize(data.score_fn(sde), sde, torch.randn(2, 3, 4, 4), method="pc", steps=2)


# ---- regressions from the break-test -----------------------------------------------------------

@pytest.mark.parametrize("method", ["dpmpp_2m", "heun", "pc"])
def test_colorize_in_half_precision(method):
    """float16 gray: the fast solvers hand the hook float32 states; the result is float16 with the gray axis kept."""
    sde = VPSDE()
    score = GaussianData(mu=0.2, std=0.5, shape=(3, 4, 4)).score_fn(sde)
    gray = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(0)).half()
    x = colorize(score, sde, gray, method=method, steps=5, generator=torch.Generator().manual_seed(1))
    assert x.dtype == torch.float16 and torch.allclose(x.float().mean(1), gray[:, 0].float(), atol=2e-3)


def test_inpaint_dtype_device_and_reserved_options():
    sde = VPSDE()
    y = IND.sample(8).float()
    for method in ("pc", "ddim", "dpmpp_2m"):
        x = inpaint(IND.score_fn(sde), sde, y, MASK, method=method, steps=5, dtype=torch.float16)
        assert x.dtype == torch.float16, method
    xT = sde.prior_sampling(y.shape, torch.Generator().manual_seed(0), dtype=torch.float64)
    assert inpaint(IND.score_fn(sde), sde, y, MASK, method="pc", steps=5, x_T=xT).dtype == torch.float64
    assert inpaint(IND.score_fn(sde), sde, y, MASK, method="pc", steps=5, device="cpu").shape == y.shape
    with pytest.raises(TypeError, match="step_hook"):
        inpaint(IND.score_fn(sde), sde, y, MASK, method="pc", steps=5, step_hook=lambda *a: a[:2])
    with pytest.raises(ValueError, match="jump_length=10 must be smaller"):
        inpaint(IND.score_fn(sde), sde, y, MASK, method="pc", steps=10, jump_length=10, jump_n_sample=2)


def test_guidance_arguments_are_checked_when_made():
    sde = VPSDE()
    score = MIX.score_fn(sde)
    for bad in (None, "1", 0.5, torch.tensor([0.5])):
        with pytest.raises(TypeError, match="y must be"):
            classifier_guidance(score, MIX.logits_fn(sde), bad)
    g = classifier_guidance(score, lambda x, t: MIX.logits_fn(sde)(x, t).detach(), 0)
    x, t = torch.randn(3, 2, dtype=torch.float64), torch.full((3,), 0.5, dtype=torch.float64)
    with pytest.raises(ValueError, match="do not depend on x"):
        g(x, t)
    assert classifier_guidance(score, MIX.logits_fn(sde), 0, scale=torch.tensor(2.0))(x, t).shape == (3, 2)
