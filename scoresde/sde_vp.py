"""The VP and sub-VP SDEs (Song et al. 2021, Eq. (11) and (13)), with their DDPM tables.

Part of :mod:`scoresde.sde`, where the conventions are described.
"""
from __future__ import annotations

import math

import torch

from ._checks import bcast, check_choice
from .schedules import CosineSchedule, LinearSchedule, as_work, work_dtype
from .sde_base import SDE


class _VPFamily(SDE):
    """Shared machinery of VP and sub-VP: a schedule (beta(t), alpha-bar(t)) and DDPM tables.

    Discrete step i (i = 0..N-1) ends at continuous time t_i = (i + 1) / N, so that the table's
    alpha-bar_i matches alpha-bar(t_i) of the continuous process (for the linear schedule within
    5 % in std at N = 1000, the table being a step-1/N discretization whose match degrades as N
    shrinks; exactly for the cosine one) and no step sits at t = 0, where sigma = 0.

    The discrete chain is the table steps with t_i <= T, i = 0..``chain_length`` - 1: all N for
    the linear schedule (T = 1); for the cosine one, cut at T = t_max < 1, the first
    floor(N t_max) (994 of 1000 at the defaults, alpha-bar_993 = 8.7e-5; the 6 steps beyond T,
    down to alpha-bar_999 = 2.4e-9, lie outside the process). This one rule is what the DDPM
    losses draw from, what the variational bound sums over, what the importance sampler and the
    DDPM / DDIM samplers walk, and :meth:`t_to_index` maps every t in [0, T] into it (t in
    (t_{n-1}, T] to the last step n - 1), so a network trained on the chain is never evaluated
    at a step it did not see.
    """

    def __init__(self, beta_min, beta_max, N, schedule="linear", s=0.008, t_max=0.9946):
        super().__init__(N)
        check_choice("schedule", schedule, ("linear", "cosine"))
        if schedule == "linear":
            self.schedule = LinearSchedule(beta_min, beta_max)
        else:
            self.schedule = CosineSchedule(s=s, t_max=t_max)
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)
        # the table steps with t_i = (i + 1) / N <= T (the slack absorbs rounding of T N, e.g. 0.99 * 1000)
        self._chain_length = min(self.N, int(math.floor(self.T * self.N + 1e-9)))
        if self._chain_length < 1:
            raise ValueError(f"N * t_max must be >= 1 so that the discrete chain has a step in [0, T = {self.T:g}]; "
                             f"got N = {self.N}, t_max = {self.T:g}")
        self.discrete_betas = self.schedule.discrete_betas(self.N)
        if not bool((self.discrete_betas < 1).all()):
            raise ValueError(f"N={self.N} is too small for the linear DDPM table: its betas reach beta_max / N = "
                             f"{self.beta_max / self.N:g} >= 1; use N > beta_max (= {self.beta_max:g})")
        self.alphas = 1.0 - self.discrete_betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.sqrt_alphas_cumprod = torch.sqrt(self.alphas_cumprod)
        self.sqrt_1m_alphas_cumprod = torch.sqrt(1.0 - self.alphas_cumprod)

    @property
    def T(self) -> float:
        return self.schedule.t_max

    @property
    def chain_length(self) -> int:
        """Number of table steps with t_i = (i + 1) / N <= T: N (linear), floor(N t_max) (cosine)."""
        return self._chain_length

    def log_alpha_bar(self, t):
        """log alpha-bar(t) = -int_0^t beta(s) ds of the schedule. Shape (B,)."""
        return self.schedule.log_alpha_bar(t)

    def beta(self, t):
        """beta(t) of the schedule. Shape (B,)."""
        return self.schedule.beta(t)

    def mean_coeff(self, t):
        return torch.exp(0.5 * self.log_alpha_bar(t))

    def alpha_bar(self, t):
        return torch.exp(self.log_alpha_bar(t))

    def drift_coeff(self, t):
        return -0.5 * self.beta(t)

    def t_to_index(self, t):
        # the slack of 1e-3 step absorbs float32 rounding of t for N up to ~10^4
        n = as_work(t) * self.N
        return (torch.ceil(n - 1e-3) - 1).clamp(0, self.chain_length - 1).long()

    def index_to_t(self, i):
        i = torch.as_tensor(i)
        return (i.to(work_dtype(i.device)) + 1) / self.N

    def discrete_alpha(self, t, t_next=None):
        t = as_work(torch.as_tensor(t))
        if t_next is None:
            return 1.0 - self._beta_step(t, None)
        return 1.0 - self._beta_step(t, as_work(torch.as_tensor(t_next)))

    def _beta_step(self, t, t_next):
        raise NotImplementedError

    def _base_config(self):
        cfg = {"N": self.N, **self.schedule.config()}
        if self.schedule.name == "linear":
            return cfg
        return {"beta_min": self.beta_min, "beta_max": self.beta_max, **cfg}


class VPSDE(_VPFamily):
    """Variance-preserving SDE dx = -1/2 beta(t) x dt + sqrt(beta(t)) dw (the DDPM process).

    Perturbation kernel N(alpha(t) x_0, (1 - alpha(t)^2) I) with alpha(t)^2 = alpha-bar(t):
    linear schedule alpha-bar(t) = exp(-beta_min t - (beta_max - beta_min) t^2 / 2), T = 1;
    cosine schedule alpha-bar(t) = f(t) / f(0) (Improved DDPM), cut at T = t_max = 0.9946
    because beta(t) is infinite at t = 1 (see :class:`~scoresde.schedules.CosineSchedule`).
    Prior N(0, I).

    Discrete tables (float64, shape (N,)): ``discrete_betas``, ``alphas`` = 1 - beta,
    ``alphas_cumprod`` (alpha-bar_i), ``sqrt_alphas_cumprod``, ``sqrt_1m_alphas_cumprod``.
    Step i of the table ends at t_i = (i + 1) / N (:meth:`index_to_t`); the discrete chain is the
    ``chain_length`` steps with t_i <= T (all N, or 994 of 1000 for the cosine schedule).

    Arguments:
        beta_min, beta_max: linear-schedule rates (ignored by the cosine schedule).
        N: number of discrete steps (>= 1).
        schedule: "linear" or "cosine".
        s, t_max: cosine offset and cut-off (cosine only).
    Raises:
        ValueError: beta_min >= beta_max, beta_min < 0, N < 1, unknown schedule, t_max not in (0, 1).
        TypeError: N not an integer.
    Reference: Song et al. 2021, Eq. (11), (29); Ho et al. 2020; Nichol & Dhariwal 2021, Eq. (17).
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, N: int = 1000, schedule: str = "linear",
                 s: float = 0.008, t_max: float = 0.9946):
        super().__init__(beta_min, beta_max, N, schedule, s, t_max)

    def marginal_std(self, t):
        return torch.sqrt(-torch.expm1(self.log_alpha_bar(t)))

    def diffusion_coeff(self, t):
        return torch.sqrt(self.beta(t))

    def drift_and_diffusion_sq(self, t):
        b = self.beta(t)
        return -0.5 * b, b

    def log_snr(self, t):
        la = self.log_alpha_bar(t)
        return la - torch.log(-torch.expm1(la))

    def t_from_log_snr(self, lam):
        return self.schedule.t_from_log_alpha_bar(torch.nn.functional.logsigmoid(as_work(torch.as_tensor(lam))))

    def _beta_step(self, t, t_next):
        if t_next is None:
            return self._table("discrete_betas", t.device)[self.t_to_index(t)]
        return -torch.expm1(self.log_alpha_bar(t) - self.log_alpha_bar(t_next))

    def _discrete(self, x, t, t_next):
        beta = self._beta_step(t, t_next)
        f = bcast(torch.sqrt(1.0 - beta) - 1.0, x) * x
        return f, torch.sqrt(beta)

    def config(self):
        return {"sde": "VPSDE", **self._base_config()}


class SubVPSDE(_VPFamily):
    """Sub-VP SDE dx = -1/2 beta(t) x dt + sqrt(beta(t) (1 - alpha-bar(t)^2)) dw.

    Same drift and mean as VP; the marginal std is 1 - alpha-bar(t) (no square root: the
    variance is (1 - alpha-bar(t))^2, always below VP's). Prior N(0, I). ``discretize`` is
    Euler-Maruyama (the reference code's default), with dt = T / N or t - t_next.

    Arguments: as :class:`VPSDE` (the cosine schedule is accepted too).
    Raises: as :class:`VPSDE`.
    Reference: Song et al. 2021, Eq. (12), (30).
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, N: int = 1000, schedule: str = "linear",
                 s: float = 0.008, t_max: float = 0.9946):
        super().__init__(beta_min, beta_max, N, schedule, s, t_max)

    def marginal_std(self, t):
        return -torch.expm1(self.log_alpha_bar(t))

    def diffusion_coeff(self, t):
        return torch.sqrt(self.beta(t) * -torch.expm1(2.0 * self.log_alpha_bar(t)))

    def log_snr(self, t):
        la = self.log_alpha_bar(t)
        return la - 2.0 * torch.log(-torch.expm1(la))

    def t_from_log_snr(self, lam):
        # solve e^lam (1 - a)^2 = a for the root a = alpha-bar in (0, 1)
        e = torch.exp(as_work(torch.as_tensor(lam)))
        a = 2.0 * e / ((2.0 * e + 1.0) + torch.sqrt(4.0 * e + 1.0))
        return self.schedule.t_from_log_alpha_bar(torch.log(a))

    def _dt(self, t, t_next):
        return torch.full_like(t, self.T / self.N) if t_next is None else t - t_next

    def _beta_step(self, t, t_next):
        # 1 - alpha-bar(t) / alpha-bar(t - dt): beta(t) dt to first order, and inside (0, 1] on any
        # grid (beta(t) dt itself exceeds 1 on grids coarser than 1 / beta_max)
        t_prev = (t - self._dt(t, t_next)).clamp(min=0.0)
        return -torch.expm1(self.log_alpha_bar(t) - self.log_alpha_bar(t_prev))

    def _discrete(self, x, t, t_next):
        dt = self._dt(t, t_next)
        f = bcast(self.drift_coeff(t) * dt, x) * x
        return f, self.diffusion_coeff(t) * torch.sqrt(dt)

    def config(self):
        return {"sde": "SubVPSDE", **self._base_config()}
