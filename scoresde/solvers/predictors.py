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

    Arguments:
        sde: the forward SDE. score: a :class:`~scoresde.solvers.common.ScoreEval`.
    Shapes: x (B, *S); t, t_next numbers or (B,) tensors with t_next < t; outputs (B, *S).
    """

    name = ""
    nfe_per_step = 1

    def __init__(self, sde: SDE, score: ScoreEval):
        self.sde, self.score = sde, score

    def step(self, x: torch.Tensor, t, t_next, generator=None):
        raise NotImplementedError


class EulerMaruyama(Predictor):
    """Euler-Maruyama step of the reverse SDE with dt = t_next - t < 0 taken from the grid.

    x_mean = x + [f(x, t) - g(t)^2 s(x, t)] dt,   x = x_mean + g(t) sqrt(-dt) z,   z ~ N(0, I).

    NFE per step: 1. Reference: Song et al. 2021, Eq. (6) and the reference code's
    ``EulerMaruyamaPredictor`` (which uses dt = -1/N whatever the grid; here dt is the grid's).
    """

    name = "euler_maruyama"

    def step(self, x, t, t_next, generator=None):
        tb, tn = self.score.time(t, x), self.score.time(t_next, x)
        drift, g = self.sde.sde(x, tb)
        s = self.score(x, tb)
        rev_drift = drift - bcast(g**2, x).to(x.dtype) * s
        dt = tn - tb
        x_mean = x + bcast(dt, x).to(x.dtype) * rev_drift
        z = randn(x.shape, generator, x.device, x.dtype)
        return x_mean + bcast(g * torch.sqrt(-dt).to(g.dtype), x).to(x.dtype) * z, x_mean


class ReverseDiffusion(Predictor):
    """Reverse-diffusion step: the forward discretization x_t = x_{t_next} + f + G z, reversed.

    (f, G) = ``sde.discretize(x, t, t_next)`` (VP: DDPM's rule with beta = 1 - alpha-bar(t) /
    alpha-bar(t_next); VE: SMLD's G^2 = sigma(t)^2 - sigma(t_next)^2; sub-VP: Euler-Maruyama
    with dt = t - t_next), then

    x_mean = x - f + G^2 s(x, t),   x = x_mean + G z.

    NFE per step: 1. Reference: Song et al. 2021, Eq. (46)-(47), App. E.
    """

    name = "reverse_diffusion"

    def step(self, x, t, t_next, generator=None):
        tb, tn = self.score.time(t, x), self.score.time(t_next, x)
        f, G = self.sde.discretize(x, tb, tn)
        s = self.score(x, tb)
        x_mean = x - f + bcast(G**2, x).to(x.dtype) * s
        z = randn(x.shape, generator, x.device, x.dtype)
        return x_mean + bcast(G, x).to(x.dtype) * z, x_mean


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

    def step(self, x, t, t_next, generator=None):
        tb, tn = self.score.time(t, x), self.score.time(t_next, x)
        s = self.score(x, tb)
        z = randn(x.shape, generator, x.device, x.dtype)
        if isinstance(self.sde, VPSDE):
            beta = 1.0 - self.sde.discrete_alpha(tb, tn)
            x_mean = (x + bcast(beta, x).to(x.dtype) * s) / bcast(torch.sqrt(1.0 - beta), x).to(x.dtype)
            std = torch.sqrt(beta)
        else:
            s2, sp2 = self.sde.sigma(tb) ** 2, self.sde.sigma(tn) ** 2
            x_mean = x + bcast(s2 - sp2, x).to(x.dtype) * s
            std = torch.sqrt(sp2 * (s2 - sp2) / s2)
        return x_mean + bcast(std, x).to(x.dtype) * z, x_mean


PREDICTORS = {cls.name: cls for cls in (EulerMaruyama, ReverseDiffusion, AncestralSampling)}
