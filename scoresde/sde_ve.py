"""The VE SDE (Song et al. 2021, Eq. (9)): sigma(t) = sigma_min (sigma_max / sigma_min)^t.

Part of :mod:`scoresde.sde`, where the conventions are described.
"""
from __future__ import annotations

import math

import torch

from ._checks import check_positive
from .schedules import as_work, work_dtype
from .sde_base import SDE


class VESDE(SDE):
    """Variance-exploding SDE dx = sqrt(d sigma^2(t) / dt) dw (the SMLD / NCSN process).

    sigma(t) = sigma_min (sigma_max / sigma_min)^t, g(t) = sigma(t) sqrt(2 ln(sigma_max / sigma_min)),
    zero drift, T = 1. Perturbation kernel N(x_0, sigma(t)^2 I) in the SMLD convention (the SDE
    started at x_0 has variance sigma(t)^2 - sigma_min^2; the difference is below 1e-4 relative
    for t >= 0.5 at the defaults and is the reference code's convention). Prior N(0, sigma_max^2 I).

    Table: ``discrete_sigmas`` = geometric grid from sigma_min to sigma_max (float64, (N,));
    step i sits at t_i = i T / (N - 1).

    Arguments:
        sigma_min, sigma_max: 0 < sigma_min < sigma_max. N: number of noise levels (>= 1).
    Raises:
        ValueError: sigma_min <= 0 or sigma_min >= sigma_max, N < 1.
    Reference: Song et al. 2021, Eq. (9), App. B; Song & Ermon 2019 (SMLD).
    """

    default_eps = 1e-5

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, N: int = 1000):
        super().__init__(N)
        check_positive("sigma_min", sigma_min)
        check_positive("sigma_max", sigma_max)
        if sigma_min >= sigma_max:
            raise ValueError(f"sigma_min must be < sigma_max; got sigma_min={sigma_min}, sigma_max={sigma_max}")
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self.prior_std = self.sigma_max
        self._log_ratio = math.log(self.sigma_max / self.sigma_min)
        self.discrete_sigmas = torch.exp(torch.linspace(math.log(self.sigma_min), math.log(self.sigma_max), self.N,
                                                        dtype=torch.float64))

    @property
    def T(self) -> float:
        return 1.0

    def sigma(self, t):
        """sigma(t) = sigma_min (sigma_max / sigma_min)^t. Shape of t."""
        return self.sigma_min * torch.exp(as_work(t) * self._log_ratio)

    def mean_coeff(self, t):
        return torch.ones_like(as_work(t))

    def marginal_std(self, t):
        return self.sigma(t)

    def drift_coeff(self, t):
        return torch.zeros_like(as_work(t))

    def diffusion_coeff(self, t):
        return self.sigma(t) * math.sqrt(2.0 * self._log_ratio)

    def log_snr(self, t):
        return -2.0 * torch.log(self.sigma(t))

    def t_from_log_snr(self, lam):
        return (-0.5 * as_work(torch.as_tensor(lam)) - math.log(self.sigma_min)) / self._log_ratio

    def t_to_index(self, t):
        if self.N == 1:
            return torch.zeros_like(as_work(t)).long()
        n = as_work(t) * (self.N - 1) / self.T
        return torch.floor(n + 1e-3).clamp(0, self.N - 1).long()

    def index_to_t(self, i):
        i = torch.as_tensor(i)
        return i.to(work_dtype(i.device)) * self.T / max(self.N - 1, 1)

    def _discrete(self, x, t, t_next):
        if t_next is None:
            sig = self._table("discrete_sigmas", t.device)
            i = self.t_to_index(t)
            s_now = sig[i]
            s_prev = torch.where(i > 0, sig[(i - 1).clamp(min=0)], torch.zeros_like(s_now))
        else:
            s_now, s_prev = self.sigma(t), self.sigma(t_next)
        return torch.zeros_like(x), torch.sqrt(s_now**2 - s_prev**2)

    def config(self):
        return {"sde": "VESDE", "sigma_min": self.sigma_min, "sigma_max": self.sigma_max, "N": self.N}
