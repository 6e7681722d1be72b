"""Predictors: one step of a discretized reverse-time SDE, from grid time t to t_next < t.

Each predictor moves the state along the reverse SDE dx = [f(x, t) - g(t)^2 grad log p_t(x)] dt
+ g(t) dw-bar (Song et al. 2021, Eq. (6)) by one step of the sampler's time grid
(:func:`scoresde.grids.time_grid`) and returns both the new state and its noise-free mean
(the mean is what ``denoise=True`` returns after the last step). Every predictor makes one
score evaluation per step (``nfe_per_step = 1``).

* :class:`EulerMaruyama` ("euler_maruyama"): Euler-Maruyama with dt = t_next - t from the grid.
* :class:`ReverseDiffusion` ("reverse_diffusion"): the reverse of the SDE's own discretization
  ``sde.discretize(x, t, t_next)`` (Song et al. 2021, Eq. (46)-(47)).
* :class:`AncestralSampling` ("ancestral"): ancestral sampling of the DDPM / SMLD chain
  (Song et al. 2021, Eq. (47) and App. F), VP and VE only.

Reference: Song et al. 2021, "Score-Based Generative Modeling through Stochastic Differential
Equations", Sec. 4.2, App. E-F and Alg. 2-3; the reference code's ``sampling.py``.
"""
from __future__ import annotations

import torch

from .._checks import bcast
from ..sde import SDE, VESDE, VPSDE
from .common import ScoreEval, randn


class Predictor:
    """Base class: ``step(x, t, t_next, generator) -> (x_next, x_next_mean)``.

    Every predictor here is affine in the state and the score: x_mean = a x + b s(x, t) and
    x_next = x_mean + c z, z ~ N(0, I), with scalars (a, b, c) of the step that
    :meth:`coefficients` computes from the SDE, for a whole grid at once (the samplers do so
    before the loop, so a step costs the score call, one noise draw and three tensor
    operations; no validation of x, no host-device synchronisation).

    Arguments:
        sde: the forward SDE. score: a :class:`~scoresde.solvers.common.ScoreEval`.
    Shapes: x (B, *S); t, t_next numbers or (B,) tensors with t_next < t; outputs (B, *S).
    """

    name = ""
    nfe_per_step = 1

    def __init__(self, sde: SDE, score: ScoreEval):
        self.sde, self.score = sde, score

    def coefficients(self, t: torch.Tensor, t_next: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(a, b, c), each (K,) float64, of the K steps t[k] -> t_next[k] ((K,) float64 tensors)."""
        raise NotImplementedError

    def step(self, x: torch.Tensor, t, t_next, generator=None, coef=None):
        """One step from t to t_next; ``coef`` an (a, b, c) row of :meth:`coefficients` (computed here if None)."""
        if coef is None:
            tb, tn = self.score.time(t, x).cpu(), self.score.time(t_next, x).cpu()
            per_sample = isinstance(t, torch.Tensor) and t.dim() > 0 or isinstance(t_next, torch.Tensor) and t_next.dim() > 0
            a, b, c = self.coefficients(tb if per_sample else tb[:1], tn if per_sample else tn[:1])
            coef = (a.to(x.device), b.to(x.device), c.to(x.device)) if per_sample else (float(a), float(b), float(c))
        a, b, c = coef
        s = self.score(x, t)
        z = randn(x.shape, generator, x.device, x.dtype)
        if isinstance(a, torch.Tensor):  # per-sample times
            a, b, c = (bcast(v, x).to(x.dtype) for v in (a, b, c))
            x_mean = a * x + b * s
            return x_mean + c * z, x_mean
        x_mean = torch.add(x if a == 1.0 else x * a, s, alpha=b)
        return torch.add(x_mean, z, alpha=c), x_mean


class EulerMaruyama(Predictor):
    """Euler-Maruyama step of the reverse SDE with dt = t_next - t < 0 taken from the grid.

    x_mean = x + [f(x, t) - g(t)^2 s(x, t)] dt,   x = x_mean + g(t) sqrt(-dt) z,   z ~ N(0, I),
    i.e. a = 1 + f(t) dt, b = -g(t)^2 dt, c = g(t) sqrt(-dt).

    NFE per step: 1. Reference: Song et al. 2021, Eq. (6) and the reference code's
    ``EulerMaruyamaPredictor`` (which uses dt = -1/N whatever the grid; here dt is the grid's).
    """

    name = "euler_maruyama"

    def coefficients(self, t, t_next):
        f, g = self.sde.drift_coeff(t), self.sde.diffusion_coeff(t)
        dt = t_next - t
        return 1.0 + f * dt, -(g**2) * dt, g * torch.sqrt(-dt)


class ReverseDiffusion(Predictor):
    """Reverse-diffusion step: the forward discretization x_t = x_{t_next} + f + G z, reversed.

    (f, G) = ``sde.discretize(x, t, t_next)`` (VP: DDPM's rule with beta = 1 - alpha-bar(t) /
    alpha-bar(t_next); VE: SMLD's G^2 = sigma(t)^2 - sigma(t_next)^2; sub-VP: Euler-Maruyama
    with dt = t - t_next), then

    x_mean = x - f + G^2 s(x, t),   x = x_mean + G z

    (f is linear in x, f = k x: a = 1 - k, b = G^2, c = G).

    NFE per step: 1. Reference: Song et al. 2021, Eq. (46)-(47), App. E.
    """

    name = "reverse_diffusion"

    def coefficients(self, t, t_next):
        f, G = self.sde.discretize(torch.ones((t.shape[0], 1), dtype=torch.float64), t, t_next)
        return 1.0 - f[:, 0].to(torch.float64), G**2, G


class AncestralSampling(Predictor):
    """Ancestral sampling step of the DDPM (VP) or SMLD (VE) chain, on the sampler's grid.

    VP, with beta = 1 - ``sde.discrete_alpha(t, t_next)`` (= 1 - alpha-bar(t) / alpha-bar(t_next)):
        x_mean = (x + beta s(x, t)) / sqrt(1 - beta),   x = x_mean + sqrt(beta) z.
    VE, with sigma = sigma(t), sigma' = sigma(t_next):
        x_mean = x + (sigma^2 - sigma'^2) s(x, t),
        x = x_mean + sqrt(sigma'^2 (sigma^2 - sigma'^2) / sigma^2) z.

    NFE per step: 1.
    Raises: ValueError for any other SDE (sub-VP has no ancestral chain; use
        "reverse_diffusion" or "euler_maruyama").
    Reference: Song et al. 2021, Eq. (47) and App. F (Eq. (48)-(49)); Ho et al. 2020, Alg. 2.
    """

    name = "ancestral"

    def __init__(self, sde, score):
        if not isinstance(sde, (VPSDE, VESDE)):
            raise ValueError(f"predictor 'ancestral' is defined for VPSDE and VESDE only, not {type(sde).__name__}; "
                             "use 'reverse_diffusion' or 'euler_maruyama'")
        super().__init__(sde, score)

    def coefficients(self, t, t_next):
        if isinstance(self.sde, VPSDE):
            beta = 1.0 - self.sde.discrete_alpha(t, t_next)
            r = 1.0 / torch.sqrt(1.0 - beta)
            return r, beta * r, torch.sqrt(beta)
        s2, sp2 = self.sde.sigma(t) ** 2, self.sde.sigma(t_next) ** 2
        return torch.ones_like(s2), s2 - sp2, torch.sqrt(sp2 * (s2 - sp2) / s2)


def step_coefficients(predictor: Predictor, pairs) -> list[tuple[float, float, float]]:
    """(a, b, c) of ``predictor`` for each step (t, t_next) of ``pairs``, as Python floats (one vectorised call).

    Arguments:
        predictor: a :class:`Predictor`. pairs: a list of (t, t_next) numbers, t_next < t.
    Returns:
        A list of len(pairs) tuples (a, b, c) of floats, the rows :meth:`Predictor.step` takes as ``coef``.
    """
    if not pairs:
        return []
    t = torch.tensor([p[0] for p in pairs], dtype=torch.float64)
    tn = torch.tensor([p[1] for p in pairs], dtype=torch.float64)
    a, b, c = (torch.as_tensor(v, dtype=torch.float64).expand(len(pairs)).tolist()
               for v in predictor.coefficients(t, tn))
    return list(zip(a, b, c))


PREDICTORS = {cls.name: cls for cls in (EulerMaruyama, ReverseDiffusion, AncestralSampling)}
