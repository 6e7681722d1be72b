"""The variational bound of DDPM / Improved DDPM, in bits per dimension.

For the discrete VP chain (:class:`~scoresde.chain.DiscreteChain`, all its steps or a respaced
subset of K steps) and data x_0:

    -log p(x_0) <= L_prior + sum_{k=1}^{K-1} L_k + L_0
    L_prior = KL(q(x_{K-1} | x_0) || N(0, I))
    L_k     = KL(q(x_{k-1} | x_k, x_0) || p(x_{k-1} | x_k)),   x_k ~ q(x_k | x_0)
    L_0     = -log p(x_0 | x_1), the discretized Gaussian decoder at position 0

(Ho et al. 2020, Eq. (5), (13); Nichol & Dhariwal 2021, Eq. (4)-(6), (15)). The model
p(x_{k-1} | x_k) = N(mu~(x_k, x0_hat), sigma_k^2) uses the posterior mean with
x0_hat = (x_k - sqrt(1 - ab_k) eps_hat) / sqrt(ab_k) and a fixed ("fixed_small": beta-tilde,
"fixed_large": beta) or learned ("learned_range") variance, all taken from ``DiscreteChain``.
Each term is estimated with one draw of x_k per sample (the standard Monte-Carlo estimate of
``calc_bpd_loop``), so the total is an unbiased estimate of the bound.

Data convention: x holds integer levels k in [0, num_levels - 1], mapped to the centres
x_0 = (2k + 1) / L - 1 of the L equal cells of [-1, 1] (:func:`scoresde.data.levels_to_float`, the
map the training data use), and the decoder integrates its Gaussian over cell k,
[-1 + 2k / L, -1 + 2(k + 1) / L], the two end cells extending to -inf / +inf (Ho et al. 2020,
Eq. (13), with the cells of the package's data convention instead of Ho et al.'s centres
-1 + 2k / (L - 1); ``discretized_gaussian_log_likelihood`` is evaluated in coordinates scaled by
L / (L - 1), where the two conventions coincide). These are exactly the cells
:func:`scoresde.bits_per_dim` dequantizes into (data_range (-1, 1)), so both numbers are upper
bounds, in expectation, on the same quantity, -log2 P(k) per dimension of the L-level data,
and can be reported side by side.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from ._checks import check_choice, check_positive
from .chain import VARIANCES, DiscreteChain, discretized_gaussian_log_likelihood, normal_kl
from .data import levels_to_float
from .dequantize import _check_levels
from .score import ScoreModel, to_eps
from .sde import SDE


@dataclass
class VLBResult:
    """Result of :func:`ddpm_vlb`; all values in bits per dimension.

    A dataclass made by :func:`ddpm_vlb`: its arguments below are also its attributes.

    Arguments:
        bpd: (B,) the bound per sample: prior_bpd + terms.sum(1).
        prior_bpd: (B,) L_prior = KL(q(x_{K-1} | x_0) || N(0, I)).
        terms: (B, K) per-position terms: terms[:, 0] is the decoder NLL L_0, terms[:, k] the KL
            L_k at chain position k (step ``timesteps[k]`` of the SDE's table).
        timesteps: (K,) int64, the steps of the chain.
        variance: the variance used ("fixed_small", "fixed_large" or "learned_range").
    """

    bpd: torch.Tensor
    prior_bpd: torch.Tensor
    terms: torch.Tensor
    timesteps: torch.Tensor
    variance: str

    @property
    def decoder_bpd(self) -> torch.Tensor:
        """(B,) the decoder term L_0."""
        return self.terms[:, 0]


def _eps_and_v(eps_model, x_k: torch.Tensor, t: torch.Tensor, ab: torch.Tensor, want_v: bool):
    """eps-prediction (B, *S) and variance output (or None) of the model at (x_k, t)."""
    if isinstance(eps_model, ScoreModel):
        pred, v, _ = eps_model.raw(x_k, t)
        a, s = ab.sqrt(), (1.0 - ab).sqrt()
        return to_eps(pred, eps_model.prediction, x_k, a.to(x_k.dtype), s.to(x_k.dtype)), v
    if want_v:
        raise ValueError("variance='learned_range' needs a ScoreModel with learn_variance=True (its net gives v); "
                         "a plain eps callable has fixed variance only")
    return eps_model(x_k, t), None


def ddpm_vlb(eps_model: Callable, sde: SDE, x: torch.Tensor, *, num_levels: int = 256, timesteps=None,
             variance: str | None = None, clip_denoised: bool = False,
             generator: torch.Generator | None = None, alphas: str | None = None) -> VLBResult:
    """The DDPM / Improved DDPM variational bound on -log2 p(x) per dimension.

    Arguments:
        eps_model: a :class:`~scoresde.ScoreModel` (any ``prediction``; its output is converted
            to eps with the discrete alpha-bar of each step, and with ``learn_variance=True`` it
            also supplies v for "learned_range"), or a callable (x (B, *S), t (B,)) -> eps (B, *S)
            called at the continuous time t = ``sde.index_to_t(step)`` of each chain step.
        sde: a VPSDE or SubVPSDE (its DDPM table ``alphas_cumprod`` defines the chain).
        x: (B, *S) integer levels in [0, num_levels - 1] (uint8, int or integer-valued float),
            mapped to the cell centres (2k + 1) / num_levels - 1 (see the module docstring).
        num_levels: number of levels L (>= 2): 256 for 8-bit images, 17 for scikit-learn's digits.
        timesteps: None (all steps of the chain: the ``sde.chain_length`` table steps with
            t_i <= T, N, or 994 of 1000 for the cosine VP, whose L_prior is then taken at
            alpha-bar_993 = 8.7e-5) or a respacing for
            :class:`~scoresde.chain.DiscreteChain` (an int K, "ddim50", "10,15,20", a list);
            the bound of the respaced chain (Nichol & Dhariwal 2021, Sec. 4).
        variance: "fixed_small" (beta-tilde), "fixed_large" (beta) or "learned_range"; None
            picks "learned_range" for a ScoreModel with ``learn_variance=True``, else
            "fixed_small".
        clip_denoised: clamp x0_hat to [-1, 1] before forming the posterior mean (as
            improved-diffusion's ``image_nll.py`` does by default); off by default.
        generator: ``torch.Generator`` for the draws of x_k.
        alphas: "table" (the SDE's DDPM table) or "continuous" (alpha-bar(t_i) of the continuous
            SDE; see :class:`~scoresde.chain.DiscreteChain`). Default: "continuous" for a
            ``ScoreModel`` that is not ``discrete`` (a continuous-time model), else "table".
    Returns:
        :class:`VLBResult` with bpd (B,), prior_bpd (B,), terms (B, K) in bits per dimension
        (nats / (D ln 2)), timesteps (K,) and the variance used.
    Raises:
        ValueError: a VE SDE; x not of shape (B, *S) (at least 2-d), outside [0, L - 1],
            non-integer or NaN; num_levels < 2; unknown
            variance (the message lists them); "learned_range" without a variance output;
            an eps prediction of the wrong shape or with NaN / inf; bad timesteps.
        TypeError: eps_model not callable.
    Reference:
        Ho et al. 2020, Eq. (5), (12), (13); Nichol & Dhariwal 2021, Eq. (4)-(6), (15) and
        improved-diffusion ``GaussianDiffusion.calc_bpd_loop``.
    """
    if not callable(eps_model):
        raise TypeError(f"eps_model must be callable (x, t) -> eps or a ScoreModel; got {type(eps_model).__name__}")
    check_positive("num_levels", num_levels, integer=True)
    if num_levels < 2:
        raise ValueError(f"num_levels must be >= 2; got {num_levels}")
    _check_levels(x, num_levels)
    if x.dim() < 2:
        raise ValueError(f"x must have shape (B, *S) with a batch dimension and at least one data dimension; got "
                         f"shape {tuple(x.shape)} (a single sample needs x[None])")
    learned = isinstance(eps_model, ScoreModel) and eps_model.learn_variance
    if variance is None:
        variance = "learned_range" if learned else "fixed_small"
    check_choice("variance", variance, VARIANCES)
    if alphas is None:  # the alpha-bar the model's eps was formed with
        alphas = "continuous" if isinstance(eps_model, ScoreModel) and not eps_model.discrete else "table"
    chain = DiscreteChain(sde, timesteps, alphas=alphas)
    K = len(chain)
    dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()
    x0 = levels_to_float(x.long(), num_levels).to(device=x.device, dtype=dtype)
    r = num_levels / (num_levels - 1)  # scaling to the coordinates of discretized_gaussian_log_likelihood
    B, D = x0.shape[0], x0[0].numel()
    to_bits = 1.0 / (D * math.log(2.0))
    per_sample = lambda v: v.reshape(B, -1).sum(1) * to_bits  # noqa: E731
    times = chain.times().to(x0.device)
    device = generator.device if generator is not None else x0.device

    terms = torch.zeros(B, K, dtype=torch.float64, device=x0.device)
    with torch.no_grad():
        for k in range(K):
            noise = torch.randn(x0.shape, generator=generator, device=device, dtype=dtype).to(x0.device)
            x_k = chain.q_sample(x0, k, noise)
            ab = chain.get("alphas_cumprod", k, x0).reshape(B)
            t = times[k].expand(B).to(dtype)
            eps_hat, v = _eps_and_v(eps_model, x_k, t, ab, variance == "learned_range")
            if not isinstance(eps_hat, torch.Tensor) or eps_hat.shape != x0.shape:
                got = tuple(eps_hat.shape) if isinstance(eps_hat, torch.Tensor) else type(eps_hat).__name__
                raise ValueError(f"eps_model returned shape {got} for x of shape {tuple(x0.shape)}")
            if not bool(torch.isfinite(eps_hat).all()):
                raise ValueError(f"eps_model returned NaN or inf at step {int(chain.timesteps[k])}")
            a_ = chain.get("alphas_cumprod", k, x0)
            x0_hat = (x_k.to(torch.float64) - (1 - a_).sqrt() * eps_hat.to(torch.float64)) / a_.sqrt()
            if clip_denoised:
                x0_hat = x0_hat.clamp(-1.0, 1.0)
            mean, _, logvar = chain.q_posterior(x0_hat, x_k.to(torch.float64), k)
            model_logvar = chain.model_log_variance(k, x_k, variance, v)
            if k == 0:
                nll = -discretized_gaussian_log_likelihood(r * x0, r * mean, 0.5 * model_logvar + math.log(r),
                                                           num_levels)
                terms[:, 0] = per_sample(nll.expand(x0.shape))
            else:
                true_mean, _, true_logvar = chain.q_posterior(x0.to(torch.float64), x_k.to(torch.float64), k)
                kl = normal_kl(true_mean, true_logvar, mean, model_logvar)
                terms[:, k] = per_sample(kl.expand(x0.shape))
        abK = chain.get("alphas_cumprod", K - 1, x0)
        prior = normal_kl(abK.sqrt() * x0.to(torch.float64), torch.log1p(-abK), 0.0, torch.zeros(()))
        prior_bpd = per_sample(prior.expand(x0.shape))
    return VLBResult(bpd=prior_bpd + terms.sum(1), prior_bpd=prior_bpd, terms=terms, timesteps=chain.timesteps,
                     variance=variance)
