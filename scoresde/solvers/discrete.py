"""DDPM ancestral sampling and DDIM on the discrete VP chain, as discretizations of the VP SDE.

Both samplers walk a :class:`scoresde.chain.DiscreteChain` (all N steps of the SDE's table, or
a respaced subset from :func:`scoresde.grids.select_timesteps`) from its last position K-1 down
to position 0 and then onto alpha-bar = 1 (the data). Position k is discrete step
``timesteps[k]`` of the table, evaluated at continuous time ``sde.index_to_t(timesteps[k])``.

The network's noise prediction at position k is eps = -sigma_k s(x, t_k), with
sigma_k = sqrt(1 - alpha-bar_k) of the chain; for a :class:`scoresde.ScoreModel` built with
``discrete=True`` the score was formed with the same table, so eps is the network's own output
(up to rounding). With ``variance="learned_range"`` the model must be a ``ScoreModel`` with
``learn_variance=True``: its raw output (prediction, v) is read and the prediction converted
to eps with the chain's alpha_k, sigma_k (:func:`scoresde.score.to_eps`).

* DDPM (Ho et al. 2020, Alg. 2; Nichol & Dhariwal 2021, Sec. 4 for respacing):
  x0 = (x - sigma_k eps) / alpha_k, x <- posterior mean of q(x_{k-1} | x_k, x0) + sigma z, with
  sigma^2 = beta-tilde_k ("fixed_small"), beta_k ("fixed_large") or the learned log-space
  interpolation ("learned_range"); no noise at the last step. NFE per step: 1. The chain is the
  VP SDE's own discretization (``VPSDE.discretize``: x_i = sqrt(1 - beta_i) x_{i-1} + sqrt(beta_i) z,
  Song et al. 2021, Eq. (46)-(47)); its reverse is the reverse SDE's ancestral discretization.
* DDIM (Song, Meng & Ermon 2021, Eq. (12) and (16)):
  x <- sqrt(ab_prev) x0 + sqrt(1 - ab_prev - s^2) eps + s z, s^2 = eta^2 beta-tilde_k
  (beta-tilde on the respaced chain: (1 - ab_prev) / (1 - ab) (1 - ab / ab_prev)). eta = 0 is
  Euler's method for the probability-flow ODE in the variables (x / alpha, sigma / alpha)
  (Song et al. 2021 (DDIM), Eq. (14); Lu et al. 2022, DPM-Solver-1), a first-order method;
  eta = 1 on consecutive steps is DDPM "fixed_small". NFE per step: 1.

Optional x0 clipping to [-1, 1] (``clip_x0``, off by default: it is only right for image data
scaled to [-1, 1]); DDIM then re-derives eps from the clipped x0, as Improved DDPM does.
"""
from __future__ import annotations

import torch

from .._checks import check_choice, check_positive
from ..chain import VARIANCES, DiscreteChain
from ..score import ScoreModel, to_eps
from ..sde import VPSDE
from .base import Plan, Solver, register
from .common import ScoreEval, randn


def make_chain(sde, steps=None, skip: str = "uniform", alphas: str = "table") -> DiscreteChain:
    """The chain a DDPM / DDIM sampler walks: all its steps (steps=None) or a selection.

    The chain is :class:`~scoresde.chain.DiscreteChain`'s: the ``sde.chain_length`` table steps
    with t_i = (i + 1) / N <= T (for the cosine VP, T = t_max < 1, 994 of 1000 at the defaults),
    and a selection is taken among those.

    Raises: ValueError for an SDE other than :class:`scoresde.VPSDE` (sub-VP's marginals are not
    those of the DDPM table, VE has no such chain) and for bad ``steps`` / ``skip``.
    """
    if type(sde) is not VPSDE:
        raise ValueError(f"methods 'ddpm' and 'ddim' discretize the VP SDE (VPSDE); got {type(sde).__name__}. "
                         "Use 'reverse_diffusion' or 'pc' (any SDE), or 'ancestral' for VESDE")
    return DiscreteChain(sde, timesteps=steps, skip=skip, alphas=alphas)


def ddim_coefficients(chain: DiscreteChain, eta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """DDIM's noise variance s_k^2 and the coefficient of eps, sqrt(1 - ab_prev - s_k^2), per position.

    s_k^2 = eta^2 (1 - ab_prev) / (1 - ab) (1 - ab / ab_prev) = eta^2 beta-tilde_k of the
    (respaced) chain; always in [0, 1 - ab_prev].
    Returns: two (K,) float64 tensors. Reference: Song, Meng & Ermon 2021, Eq. (16).
    """
    var = eta**2 * chain.posterior_variance
    coef = torch.sqrt((1.0 - chain.alphas_cumprod_prev - var).clamp(min=0.0))
    return var, coef


class _Eps:
    """eps prediction at chain position k (and the variance channels v for learned_range)."""

    def __init__(self, score: ScoreEval, chain: DiscreteChain, variance: str | None):
        self.score, self.chain, self.sde = score, chain, chain.sde
        model = score.score_fn
        self.learned = isinstance(model, ScoreModel) and model.learn_variance
        if variance is None:
            variance = "learned_range" if self.learned else "fixed_small"
        self.variance = check_choice("variance", variance, VARIANCES)
        if self.variance == "learned_range" and not self.learned:
            raise ValueError("variance='learned_range' needs score_fn to be a scoresde.ScoreModel built with "
                             "learn_variance=True; use 'fixed_small' or 'fixed_large' otherwise")
        self.times = chain.times().tolist()  # floats: the per-step work stays in Python numbers
        self.ab = chain.alphas_cumprod.tolist()

    def __call__(self, x: torch.Tensor, k: int):
        """(eps (B, *S), v or None, alpha_k, sigma_k); alpha_k, sigma_k as Python floats (one k per batch)."""
        ab = self.ab[k]
        alpha, sigma = ab**0.5, (1.0 - ab) ** 0.5
        t = self.score.time(self.times[k], x)
        if self.variance == "learned_range":
            pred, v = self.score.raw(x, t)
            a, s = (torch.full((x.shape[0],), c, dtype=torch.float64, device=x.device) for c in (alpha, sigma))
            return to_eps(pred, self.score.score_fn.prediction, x, a, s).to(x.dtype), v, alpha, sigma
        s = self.score(x, t)
        return -sigma * s, None, alpha, sigma


def _chain_hook(hook, x, x_mean, ab: float):
    """The step hook at a chain state with alpha-bar ``ab``: x ~ sqrt(ab) x0 + sqrt(1 - ab) z."""
    if hook is None:
        return x, x_mean
    return hook(x, x_mean, ab**0.5, max(1.0 - ab, 0.0) ** 0.5)


def ddpm_sample(score: ScoreEval, x: torch.Tensor, chain: DiscreteChain, *, variance: str | None = None,
                clip_x0: bool = False, generator=None, hook=None) -> torch.Tensor:
    """DDPM ancestral sampling from x = x_{K-1} (B, *S) down to alpha-bar = 1; see the module docstring.

    Arguments:
        score: the checked, counted score. x: the start, a sample of the prior N(0, I).
        chain: the (respaced) chain. variance: "fixed_small", "fixed_large", "learned_range"
            (default: "learned_range" for a learned-variance ScoreModel, else "fixed_small").
        clip_x0: clip the x0 prediction to [-1, 1]. generator: see :func:`scoresde.sample`.
        hook: optional step hook (:data:`scoresde.solvers.base.StepHook`), on the start and after each step.
    Returns: (B, *S) sample in x's dtype. NFE: K (one per position).
    Reference: Ho et al. 2020, Alg. 2 and Eq. (6)-(7); Nichol & Dhariwal 2021, Eq. (15) and Sec. 4.
    """
    eps_fn = _Eps(score, chain, variance)
    K = len(chain)
    c1, c2 = chain.posterior_mean_coef1.tolist(), chain.posterior_mean_coef2.tolist()
    ab_prev = chain.alphas_cumprod_prev.tolist()
    stds = None
    if eps_fn.variance != "learned_range":  # the same for the whole batch at each position: all K at once
        probe = torch.zeros((K, 1), dtype=torch.float64)
        stds = torch.exp(0.5 * chain.model_log_variance(torch.arange(K), probe, eps_fn.variance)).reshape(-1).tolist()
    x, _ = _chain_hook(hook, x, x, float(chain.alphas_cumprod[-1]))
    for k in reversed(range(K)):
        eps, v, alpha, sigma = eps_fn(x, k)
        x0 = (x - sigma * eps) / alpha
        if clip_x0:
            x0 = x0.clamp(-1.0, 1.0)
        # posterior mean of q(x_{k-1} | x_k, x0) (Ho et al. 2020, Eq. (7)), the chain's coefficients
        mean = torch.add(c1[k] * x0, x, alpha=c2[k])
        if k == 0:
            x, _ = _chain_hook(hook, mean, mean, 1.0)
            continue
        z = randn(x.shape, generator, x.device, x.dtype)
        if stds is None:
            std = torch.exp(0.5 * chain.model_log_variance(k, x, "learned_range", v)).to(x.dtype)
            x = mean + std * z
        else:
            x = torch.add(mean, z, alpha=stds[k])
        x, _ = _chain_hook(hook, x, mean, ab_prev[k])
    return x


def ddim_sample(score: ScoreEval, x: torch.Tensor, chain: DiscreteChain, *, eta: float = 0.0, clip_x0: bool = False,
                generator=None, hook=None) -> torch.Tensor:
    """DDIM from x = x_{K-1} (B, *S) down to alpha-bar = 1; see the module docstring.

    Arguments:
        score: the checked, counted score. x: the start, a sample of the prior N(0, I).
        chain: the (respaced) chain; the previous step of position k is position k - 1 (the
            selection), and the step after position 0 lands on alpha-bar = 1.
        eta: in [0, 1]; 0 deterministic (the probability-flow ODE's first-order discretization),
            1 the DDPM "fixed_small" variance. clip_x0: clip x0 to [-1, 1] (eps re-derived).
    Returns: (B, *S) sample in x's dtype. NFE: K.
    Reference: Song, Meng & Ermon 2021, Eq. (12), (16), App. C.1.
    """
    eps_fn = _Eps(score, chain, "fixed_small")
    var, coef = (v.tolist() for v in ddim_coefficients(chain, eta))
    abs_prev = chain.alphas_cumprod_prev.tolist()
    x, _ = _chain_hook(hook, x, x, float(chain.alphas_cumprod[-1]))
    for k in reversed(range(len(chain))):
        eps, _, alpha, sigma = eps_fn(x, k)
        x0 = (x - sigma * eps) / alpha
        if clip_x0:
            x0 = x0.clamp(-1.0, 1.0)
            eps = (x - alpha * x0) / sigma
        ab_prev = abs_prev[k]
        x_new = torch.add(ab_prev**0.5 * x0, eps, alpha=coef[k])
        if eta > 0 and k > 0:
            x_new = torch.add(x_new, randn(x.shape, generator, x.device, x.dtype), alpha=var[k] ** 0.5)
        x, _ = _chain_hook(hook, x_new.to(x.dtype), x_new.to(x.dtype), ab_prev)
    return x


def resolve_alphas(alphas, score_fn) -> str:
    """``alphas`` option: None picks "table" for a ``ScoreModel(discrete=True)`` (or a wrapper of one,
    e.g. a guided score, that carries ``discrete = True``), else "continuous"."""
    if alphas is None:  # the alpha-bar the model's score was formed with
        return "table" if getattr(score_fn, "discrete", False) is True else "continuous"
    return alphas


class _ChainSampler(Solver):
    """A sampler that walks the discrete VP chain and ends on alpha-bar = 1 (no ``eps``)."""

    def plan(self, score_fn, sde, steps, eps):
        if eps is not None:
            raise ValueError(f"eps does not apply to method {self.name!r}: it ends on alpha-bar = 1 (t = 0)")
        chain = make_chain(sde, steps, self.opts["skip"], resolve_alphas(self.opts["alphas"], score_fn))
        self.validate()
        return Plan(nfe=len(chain), steps=len(chain), times=chain.timesteps, data={"chain": chain})

    def validate(self) -> None:
        """Check the method's own options."""


@register
class DDPMSampler(_ChainSampler):
    """``method="ddpm"``: :func:`ddpm_sample`; options ``variance``, ``skip``, ``clip_x0``, ``alphas``."""

    name = "ddpm"
    summary = "DDPM ancestral sampling on the VP chain (Ho et al. 2020, Alg. 2)"
    options = {"variance": None, "skip": "uniform", "clip_x0": False, "alphas": None}
    order = 1
    stochastic = True

    def solve(self, score, sde, x, plan, *, generator=None, denoise=True, hook=None):
        return ddpm_sample(score, x, plan.data["chain"], variance=self.opts["variance"],
                           clip_x0=bool(self.opts["clip_x0"]), generator=generator, hook=hook)


@register
class DDIMSampler(_ChainSampler):
    """``method="ddim"``: :func:`ddim_sample`; options ``eta`` in [0, 1], ``skip``, ``clip_x0``, ``alphas``."""

    name = "ddim"
    summary = "DDIM on the VP chain (Song, Meng & Ermon 2021, Eq. (12)); eta = 0: first-order PF-ODE solver"
    options = {"eta": 0.0, "skip": "uniform", "clip_x0": False, "alphas": None}
    order = 1
    stochastic = False  # with the default eta = 0; eta > 0 draws noise

    def validate(self):
        eta = self.opts["eta"]
        check_positive("eta", eta, allow_zero=True)
        if eta > 1:
            raise ValueError(f"eta must lie in [0, 1]; got {eta}")

    def solve(self, score, sde, x, plan, *, generator=None, denoise=True, hook=None):
        return ddim_sample(score, x, plan.data["chain"], eta=float(self.opts["eta"]),
                           clip_x0=bool(self.opts["clip_x0"]), generator=generator, hook=hook)
