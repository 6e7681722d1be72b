"""Closed forms for Gaussian data: the exact oracle that tests and tutorials check solvers against.

For data x_0 ~ N(mu, diag(s^2)) every SDE of this package has a Gaussian marginal
p_t = N(alpha(t) mu, diag(v(t))), v(t) = alpha(t)^2 s^2 + sigma(t)^2, hence an exact score
-(x - alpha mu) / v, an exact eps-predictor, an exact probability-flow map (the standardized
coordinate (x - alpha mu) / sqrt(v) is constant along the flow) and an exact log-density.

Reference: Song et al. 2021, App. D.1 (probability flow) and Sec. 4.3 (likelihood).
"""
from __future__ import annotations

import math

import torch

from ._checks import as_time, bcast
from .sde import SDE


class GaussianData:
    """Data N(mu, diag(std^2)) in a trailing shape S; ``mu`` and ``std`` broadcast to S.

    Arguments:
        mu: mean, a number or a tensor broadcastable to S.
        std: standard deviation (> 0), same rule.
        shape: S, the shape of one sample, e.g. (8,) or (1, 4, 4).
    All methods compute in float64 and return the dtype of their x input.
    """

    def __init__(self, mu=0.0, std=1.0, shape=(8,)):
        self.shape = tuple(shape)
        self.mu = torch.broadcast_to(torch.as_tensor(mu, dtype=torch.float64), self.shape).clone()
        self.std = torch.broadcast_to(torch.as_tensor(std, dtype=torch.float64), self.shape).clone()
        if not bool((self.std > 0).all()):
            raise ValueError("std must be > 0")

    @property
    def dim(self) -> int:
        return int(self.mu.numel())

    def sample(self, n: int, generator=None, dtype=torch.float64) -> torch.Tensor:
        """n samples, shape (n, *S)."""
        z = torch.randn((n, *self.shape), generator=generator, dtype=torch.float64)
        return (self.mu + self.std * z).to(dtype)

    def _coef(self, sde: SDE, x, t):
        t = as_time(t, x, sde.T).to(torch.float64)
        a, s = sde.mean_coeff(t), sde.marginal_std(t)
        mu, std = self.mu.to(x.device), self.std.to(x.device)
        a_ = bcast(a, x)
        mean = a_ * mu
        var = a_**2 * std**2 + bcast(s, x) ** 2
        return mean, var, a, s

    def marginal(self, sde: SDE, t, x_like: torch.Tensor):
        """(mean, var) of p_t, each (B, *S), for the batch of ``x_like``."""
        mean, var, _, _ = self._coef(sde, x_like, t)
        return mean.expand(x_like.shape), var.expand(x_like.shape)

    def score_fn(self, sde: SDE):
        """Exact score (x (B, *S), t (B,)) -> (B, *S)."""

        def score(x, t):
            mean, var, _, _ = self._coef(sde, x, t)
            return (-(x.to(torch.float64) - mean) / var).to(x.dtype)

        return score

    def eps_fn(self, sde: SDE, discrete: bool = False):
        """Exact E[eps | x_t], as an eps-predictor (x, t) -> (B, *S).

        With ``discrete`` (VP / sub-VP) it is the eps-predictor of the discrete DDPM chain at
        step i = ``sde.t_to_index(t)``: x_i = sqrt(ab_i) x_0 + sqrt(1 - ab_i) eps.
        """

        def eps(x, t):
            xd = x.to(torch.float64)
            if discrete:
                t_ = as_time(t, x, sde.T)
                ab = sde.alphas_cumprod.to(x.device)[sde.t_to_index(t_)]
                a, s = bcast(ab.sqrt(), x), bcast((1 - ab).sqrt(), x)
                var = a**2 * self.std.to(x.device) ** 2 + s**2
                return (s * (xd - a * self.mu.to(x.device)) / var).to(x.dtype)
            mean, var, _, s = self._coef(sde, x, t)
            return (bcast(s, x) * (xd - mean) / var).to(x.dtype)

        return eps

    def logp(self, sde: SDE, x: torch.Tensor, t) -> torch.Tensor:
        """Exact log p_t(x) in nats per sample, shape (B,)."""
        mean, var, _, _ = self._coef(sde, x, t)
        xd = x.to(torch.float64)
        lp = -0.5 * (torch.log(2 * math.pi * var) + (xd - mean) ** 2 / var)
        return lp.reshape(x.shape[0], -1).sum(1)

    def flow(self, sde: SDE, x: torch.Tensor, t0, t1) -> torch.Tensor:
        """Exact probability-flow map of x from time t0 to time t1 (either direction)."""
        m0, v0, _, _ = self._coef(sde, x, t0)
        m1, v1, _, _ = self._coef(sde, x, t1)
        return (m1 + torch.sqrt(v1 / v0) * (x.to(torch.float64) - m0)).to(x.dtype)

    def pf_logp(self, sde: SDE, x: torch.Tensor, eps: float) -> torch.Tensor:
        """What the probability-flow likelihood returns exactly, in nats per sample (B,):

        log prior(x_T) + 1/2 sum log(v(T) / v(eps)), x_T the exact flow of x from eps to T.
        It differs from :meth:`logp` at eps only through the prior's mismatch with p_T.
        """
        xT = self.flow(sde, x.to(torch.float64), eps, sde.T)
        _, vT, _, _ = self._coef(sde, x, sde.T)
        _, ve, _, _ = self._coef(sde, x, eps)
        dlogp = 0.5 * torch.log(vT / ve).expand(x.shape).reshape(x.shape[0], -1).sum(1)
        return sde.prior_logp(xT).to(torch.float64) + dlogp
