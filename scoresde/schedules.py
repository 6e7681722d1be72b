"""Noise schedules of the variance-preserving family: beta(t), alpha-bar(t), log-SNR(t).

A schedule describes the continuous VP process dx = -1/2 beta(t) x dt + sqrt(beta(t)) dw through
its integrated rate: alpha-bar(t) = exp(-int_0^t beta(s) ds), the squared mean coefficient of the
perturbation kernel. It also builds the discrete DDPM table beta_i, i = 0..N-1, where step i
ends at continuous time t_i = (i + 1) / N.

All arithmetic runs in float64 (float32 on devices without float64), whatever the dtype of the
data, so that a float16 state can never turn alpha-bar into 0 or a standard deviation into inf.

References:
    Ho et al. 2020, "Denoising Diffusion Probabilistic Models", Sec. 4 (linear betas).
    Nichol & Dhariwal 2021, "Improved Denoising Diffusion Probabilistic Models", Eq. (17) (cosine).
    Song et al. 2021, "Score-Based Generative Modeling through SDEs", Eq. (11), (29), App. B.
"""
from __future__ import annotations

import math

import torch

from ._checks import check_positive


def work_dtype(device: torch.device | None) -> torch.dtype:
    """The dtype of schedule arithmetic: float64, or float32 on MPS (which has no float64)."""
    if device is not None and torch.device(device).type == "mps":
        return torch.float32
    return torch.float64


def as_work(t) -> torch.Tensor:
    """``t`` (a tensor or a number) cast to the working dtype (float64 where the device has it)."""
    if not isinstance(t, torch.Tensor):
        t = torch.as_tensor(t, dtype=torch.float64)
    return t.to(work_dtype(t.device))


class LinearSchedule:
    """Linear rate beta(t) = beta_min + t (beta_max - beta_min) on t in [0, 1].

    alpha-bar(t) = exp(-beta_min t - (beta_max - beta_min) t^2 / 2).
    The discrete table is linspace(beta_min / N, beta_max / N, N), which for N = 1000 and the
    defaults (0.1, 20) is DDPM's linear schedule 1e-4 ... 0.02.

    Arguments:
        beta_min, beta_max: rates at t = 0 and t = 1, with 0 <= beta_min < beta_max.
    Raises:
        ValueError: beta_min < 0 or beta_min >= beta_max.
    Reference:
        Song et al. 2021, Eq. (11) and App. B; Ho et al. 2020, Sec. 4.
    """

    name = "linear"
    t_max = 1.0

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0):
        check_positive("beta_min", beta_min, allow_zero=True)
        check_positive("beta_max", beta_max)
        if beta_min >= beta_max:
            raise ValueError(f"beta_min must be < beta_max; got beta_min={beta_min}, beta_max={beta_max}")
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)

    def beta(self, t: torch.Tensor) -> torch.Tensor:
        """beta(t), shape of t."""
        t = as_work(t)
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def log_alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        """log alpha-bar(t) = -int_0^t beta, shape of t."""
        t = as_work(t)
        return -0.5 * t**2 * (self.beta_max - self.beta_min) - t * self.beta_min

    def t_from_log_alpha_bar(self, log_ab: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`log_alpha_bar` (the positive root of the quadratic)."""
        la = as_work(log_ab)
        d, b0 = self.beta_max - self.beta_min, self.beta_min
        return 2.0 * (-la) / (b0 + torch.sqrt(b0**2 - 2.0 * d * la))

    def discrete_betas(self, N: int) -> torch.Tensor:
        """The DDPM table beta_i = beta(i / (N - 1)) / N, float64, shape (N,)."""
        return torch.linspace(self.beta_min / N, self.beta_max / N, N, dtype=torch.float64)

    def config(self) -> dict:
        """Constructor arguments (JSON-serialisable), with "schedule": "linear"."""
        return {"schedule": "linear", "beta_min": self.beta_min, "beta_max": self.beta_max}


class CosineSchedule:
    """Improved DDPM's cosine schedule as a continuous-time VP process.

    alpha-bar(t) = f(t) / f(0) with f(t) = cos^2(((t + s) / (1 + s)) pi / 2), s = 0.008, and
    beta(t) = -d log alpha-bar / dt = pi / (1 + s) tan(((t + s) / (1 + s)) pi / 2).

    beta(t) is infinite at t = 1 (alpha-bar(1) = 0), so the continuous process is cut at
    ``t_max`` (default 0.9946, as in Lu et al. 2022, DPM-Solver, App. D): the SDE's ``T`` becomes
    ``t_max``, where alpha-bar = 7.08e-5 and half-log-SNR = -4.78, and the prior N(0, I) is
    still an excellent approximation of the marginal. The discrete table keeps Improved DDPM's
    N entries over [0, 1] with beta_i = min(1 - f((i+1)/N) / f(i/N), max_beta); for N = 1000 only
    the last entry is clipped (to 0.999).

    Arguments:
        s: the offset of Improved DDPM (0.008); must be > 0.
        t_max: end of the continuous process, in (0, 1).
        max_beta: clip of the discrete betas (0.999), in (0, 1].
    Raises:
        ValueError: an argument outside its range.
    Reference:
        Nichol & Dhariwal 2021, Eq. (17); Lu et al. 2022 (DPM-Solver), App. D (t_max).
    """

    name = "cosine"

    def __init__(self, s: float = 0.008, t_max: float = 0.9946, max_beta: float = 0.999):
        check_positive("s", s)
        check_positive("t_max", t_max)
        check_positive("max_beta", max_beta)
        if not t_max < 1.0:
            raise ValueError(f"t_max must lie in (0, 1): beta(t) is infinite at t = 1; got {t_max}")
        if max_beta > 1.0:
            raise ValueError(f"max_beta must lie in (0, 1]; got {max_beta}")
        self.s, self.t_max, self.max_beta = float(s), float(t_max), float(max_beta)
        self._log_f0 = 2.0 * math.log(math.cos(self.s / (1 + self.s) * math.pi / 2))

    def _u(self, t):
        return (t + self.s) / (1 + self.s) * (math.pi / 2)

    def beta(self, t: torch.Tensor) -> torch.Tensor:
        """beta(t), shape of t."""
        return math.pi / (1 + self.s) * torch.tan(self._u(as_work(t)))

    def log_alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        """log alpha-bar(t) = log f(t) - log f(0), shape of t."""
        return 2.0 * torch.log(torch.cos(self._u(as_work(t)))) - self._log_f0

    def t_from_log_alpha_bar(self, log_ab: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`log_alpha_bar` (closed form through arccos)."""
        la = as_work(log_ab)
        u = torch.arccos(torch.exp(0.5 * (la + self._log_f0)))
        return u * (2 * (1 + self.s) / math.pi) - self.s

    def discrete_betas(self, N: int) -> torch.Tensor:
        """Improved DDPM's table, float64, shape (N,), clipped at ``max_beta``."""
        i = torch.arange(N + 1, dtype=torch.float64)
        log_f = 2.0 * torch.log(torch.cos(self._u(i / N)))
        # cos(pi/2) rounds to 6e-17, so the last unclipped beta is 1 - 4e-33, not NaN
        betas = -torch.expm1(log_f[1:] - log_f[:-1])
        return betas.clamp(max=self.max_beta)

    def config(self) -> dict:
        """Constructor arguments (JSON-serialisable), with "schedule": "cosine"."""
        return {"schedule": "cosine", "s": self.s, "t_max": self.t_max}


SCHEDULES = ("linear", "cosine")
