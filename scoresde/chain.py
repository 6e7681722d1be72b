"""The discrete VP chain (DDPM / Improved DDPM), optionally respaced to a subset of its steps.

One object holds every per-step quantity that the DDPM sampler, the DDIM sampler, the DDPM
variational bound and the Improved DDPM losses need, computed once in float64 from the SDE's
``alphas_cumprod`` table: respaced betas, posterior mean coefficients and variances, the
clipped log-variance, and the fixed / learned-range model variances. Also the Gaussian KL and
the discretized Gaussian decoder likelihood of the variational bound.

Index convention: position k = 0..K-1 in the chain is discrete step ``timesteps[k]`` of the
SDE's table, at continuous time ``sde.index_to_t(timesteps[k])``; the step before position 0
has alpha-bar = 1 (the data). The chain only holds table steps inside the process, t_i <= T:
the first ``sde.chain_length`` of them (all N for the linear schedule, 994 of 1000 for the cosine
one, which stops at T = t_max = 0.9946); selections are made among those.

References: Ho et al. 2020, Eq. (5)-(7), (12), (13); Nichol & Dhariwal 2021, Eq. (15), (19) and
Sec. 4 (respacing); Kingma et al. 2021 for the KL form.
"""
from __future__ import annotations

import math

import torch

from ._checks import bcast, check_choice
from .grids import respaced_betas, select_timesteps
from .sde import _VPFamily

VARIANCES = ("fixed_small", "fixed_large", "learned_range")
ALPHAS = ("table", "continuous")


class DiscreteChain:
    """The VP chain of ``sde`` restricted to ``timesteps`` (all its steps by default).

    The chain's steps are the n = ``sde.chain_length`` table steps with t_i = (i + 1) / N <= T
    (n = N, except for the cosine schedule: 994 of 1000); ``timesteps`` selects among them.

    Arguments:
        sde: a VPSDE or SubVPSDE.
        timesteps: None (all n steps) or anything :func:`~scoresde.grids.select_timesteps` takes,
            applied to the n steps (an int K, a respacing string, or a list of indices < n).
        skip: "uniform", "quadratic" or "leading", when ``timesteps`` is an int.
        alphas: where alpha-bar at the kept steps comes from: "table" (the SDE's DDPM table
            ``alphas_cumprod``, what a network trained with DDPM's discrete loss saw) or
            "continuous" (alpha-bar(t_i) of the continuous process at t_i = ``sde.index_to_t(i)``,
            what a continuous-time score model saw: the chain is then the exact discretization
            of the VP SDE at those times). They differ by up to 10 % in 1 - alpha-bar for the
            linear schedule at N = 1000 and coincide for the cosine one.
    Attributes (float64, shape (K,)):
        timesteps (int64), alphas_cumprod, alphas_cumprod_prev, betas (respaced:
        1 - ab_k / ab_{k-1}), posterior_variance (beta-tilde), posterior_log_variance_clipped
        (position 0 takes position 1's value, as Improved DDPM does, since beta-tilde_0 = 0),
        posterior_mean_coef1 (of x0), posterior_mean_coef2 (of x_t).
    Raises:
        ValueError: a VE SDE (it has no DDPM chain), bad timesteps (e.g. an index beyond T).
    """

    def __init__(self, sde, timesteps=None, skip: str = "uniform", alphas: str = "table"):
        if not isinstance(sde, _VPFamily):
            raise ValueError(f"the discrete DDPM chain needs a VPSDE or SubVPSDE; got {type(sde).__name__}")
        check_choice("alphas", alphas, ALPHAS)
        self.sde, self.alphas = sde, alphas
        n = sde.chain_length
        explicit = isinstance(timesteps, (list, tuple, torch.Tensor)) and len(timesteps) > 0
        if n < sde.N and explicit and max(int(i) for i in timesteps) >= n:
            got = timesteps.tolist() if isinstance(timesteps, torch.Tensor) else list(timesteps)
            raise ValueError(f"steps: the chain of this SDE ends at table step {n - 1} (t_i = (i + 1) / N <= "
                             f"T = {sde.T:g}); got {got}")
        ts = torch.arange(n) if timesteps is None else select_timesteps(n, timesteps, skip)
        self.timesteps = ts.long()
        if alphas == "table":
            table = sde.alphas_cumprod.to(torch.float64)[:n]
        else:
            table = sde.alpha_bar(sde.index_to_t(torch.arange(n))).to(torch.float64)
        ab = table[self.timesteps]
        self.alphas_cumprod = ab
        self.alphas_cumprod_prev = torch.cat([ab.new_ones(1), ab[:-1]])
        self.betas = respaced_betas(table, self.timesteps)
        prev = self.alphas_cumprod_prev
        self.posterior_variance = self.betas * (1.0 - prev) / (1.0 - ab)
        pv = self.posterior_variance
        first = pv[1] if len(pv) > 1 else self.betas[0]
        self.posterior_log_variance_clipped = torch.log(torch.cat([first.reshape(1), pv[1:]]))
        self.posterior_mean_coef1 = self.betas * prev.sqrt() / (1.0 - ab)
        self.posterior_mean_coef2 = (1.0 - prev) * (1.0 - self.betas).sqrt() / (1.0 - ab)
        self._dev: dict = {}

    def __len__(self) -> int:
        return len(self.timesteps)

    def times(self) -> torch.Tensor:
        """Continuous times (K,) float64 of the chain's positions."""
        return self.sde.index_to_t(self.timesteps)

    def get(self, name: str, k, x: torch.Tensor) -> torch.Tensor:
        """Attribute ``name`` at positions k (int or (B,) long), shaped to broadcast against x."""
        key = (name, str(x.device))
        if key not in self._dev:
            self._dev[key] = getattr(self, name).to(x.device)
        v = self._dev[key]
        if isinstance(k, int):
            k = torch.full((x.shape[0],), k, dtype=torch.long, device=x.device)
        return bcast(v[k.to(x.device)], x)

    def q_sample(self, x0: torch.Tensor, k, noise: torch.Tensor) -> torch.Tensor:
        """x_k = sqrt(ab_k) x0 + sqrt(1 - ab_k) noise (Ho et al. 2020, Eq. (4)); x0's dtype."""
        ab = self.get("alphas_cumprod", k, x0)
        return (ab.sqrt() * x0 + (1 - ab).sqrt() * noise).to(x0.dtype)

    def q_posterior(self, x0: torch.Tensor, xt: torch.Tensor, k):
        """Mean (B, *S), variance and clipped log-variance (broadcastable) of q(x_{k-1} | x_k, x0)."""
        mean = self.get("posterior_mean_coef1", k, xt) * x0 + self.get("posterior_mean_coef2", k, xt) * xt
        return mean.to(xt.dtype), self.get("posterior_variance", k, xt), self.get("posterior_log_variance_clipped", k, xt)

    def model_log_variance(self, k, x: torch.Tensor, variance: str, v: torch.Tensor | None = None) -> torch.Tensor:
        """log sigma_k^2 of the reverse step at positions k.

        "fixed_small": log beta-tilde (clipped at position 0); "fixed_large": log beta, with
        beta-tilde_1 at position 0 (Improved DDPM); "learned_range": with the network output
        v in [-1, 1] (B, *S), log sigma^2 = f log beta + (1 - f) log beta-tilde, f = (v + 1) / 2
        (Nichol & Dhariwal 2021, Eq. (15), interpolation in log space, respaced betas).
        """
        check_choice("variance", variance, VARIANCES)
        if variance == "fixed_small":
            return self.get("posterior_log_variance_clipped", k, x)
        if variance == "fixed_large":
            large = torch.cat([self.posterior_variance[1:2] if len(self) > 1 else self.betas[:1], self.betas[1:]])
            key = ("_log_large", str(x.device))
            if key not in self._dev:
                self._dev[key] = torch.log(large).to(x.device)
            kk = torch.full((x.shape[0],), k, dtype=torch.long, device=x.device) if isinstance(k, int) else k
            return bcast(self._dev[key][kk.to(x.device)], x)
        if v is None:
            raise ValueError("variance='learned_range' needs the model's variance output v (learn_variance=True)")
        frac = (v.to(torch.float64) + 1.0) / 2.0
        return frac * torch.log(self.get("betas", k, x)) + (1.0 - frac) * self.get("posterior_log_variance_clipped", k, x)


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor,
                                        num_levels: int = 256) -> torch.Tensor:
    """log P(x) of a Gaussian integrated over x's bin, elementwise, in nats (Ho et al. 2020, Eq. (13)).

    x holds the centres of ``num_levels`` equally spaced levels in [-1, 1] (bin half-width
    1 / (num_levels - 1)); the edge bins extend to -inf / +inf. The exact normal CDF is used
    (improved-diffusion uses a tanh approximation, which differs by up to ~1e-3 in probability),
    and probabilities are floored at 1e-12.
    """
    x = x.to(torch.float64)
    mean, log_scale = mean.to(torch.float64), log_scale.to(torch.float64)
    half = 1.0 / (num_levels - 1)
    inv_std = torch.exp(-log_scale)
    cdf_plus = torch.special.ndtr((x - mean + half) * inv_std)
    cdf_min = torch.special.ndtr((x - mean - half) * inv_std)
    lo_edge, hi_edge = x < -1.0 + half / 2, x > 1.0 - half / 2
    prob = torch.where(lo_edge, cdf_plus, torch.where(hi_edge, 1.0 - cdf_min, cdf_plus - cdf_min))
    # far in a tail the difference of CDFs underflows; use the density times the bin width there
    log_dens = -0.5 * ((x - mean) * inv_std) ** 2 - log_scale - 0.5 * math.log(2 * math.pi) + math.log(2 * half)
    logp = torch.log(prob.clamp(min=1e-12))
    return torch.where(prob > 1e-12, logp, torch.maximum(log_dens, logp))
