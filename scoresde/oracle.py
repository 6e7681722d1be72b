"""Closed forms for Gaussian data: the exact oracle that tests and tutorials check solvers against.

For data x_0 ~ N(mu, diag(s^2)) every SDE of this package has a Gaussian marginal
p_t = N(alpha(t) mu, diag(v(t))), v(t) = alpha(t)^2 s^2 + sigma(t)^2, hence an exact score
-(x - alpha mu) / v, an exact eps-predictor, an exact probability-flow map (the standardized
coordinate (x - alpha mu) / sqrt(v) is constant along the flow) and an exact log-density.

For a Gaussian mixture x_0 ~ sum_k w_k N(mu_k, diag(s_k^2)) (:class:`GaussianMixture`) the
marginal stays a mixture, p_t = sum_k w_k N(alpha(t) mu_k, diag(alpha(t)^2 s_k^2 + sigma(t)^2)),
so the score, E[x_0 | x_t] and log p_t are exact while the score is non-linear in x; the
probability-flow map has no closed form and is solved to tight tolerance (the reference solution
that fast ODE / SDE samplers are measured against).

Reference: Song et al. 2021, App. D.1 (probability flow) and Sec. 4.3 (likelihood).
"""
from __future__ import annotations

import math

import torch

from ._checks import as_time, bcast, check_positive
from .sde import SDE


def _check_args(sde, x=None, **times) -> None:
    """TypeError naming ``sde`` (not an SDE), ``x`` (not a floating tensor) or a time (not a number or tensor):
    e.g. the arguments given in another order than (sde, x, t)."""
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be a scoresde SDE (VPSDE, SubVPSDE, VESDE); got {type(sde).__name__} "
                        f"(the methods take (sde, x, t) in this order)")
    if x is not None and (not isinstance(x, torch.Tensor) or not x.is_floating_point()):
        raise TypeError(f"x must be a floating-point torch.Tensor (B, *S); got {type(x).__name__}")
    for name, t in times.items():
        if isinstance(t, bool) or not isinstance(t, (int, float, torch.Tensor)):
            raise TypeError(f"{name} must be a number or a tensor of times; got {type(t).__name__}")


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
        _check_args(sde, x_like, t=t)
        mean, var, _, _ = self._coef(sde, x_like, t)
        return mean.expand(x_like.shape), var.expand(x_like.shape)

    def score_fn(self, sde: SDE):
        """Exact score (x (B, *S), t (B,)) -> (B, *S)."""
        _check_args(sde)

        def score(x, t):
            mean, var, _, _ = self._coef(sde, x, t)
            return (-(x.to(torch.float64) - mean) / var).to(x.dtype)

        return score

    def eps_fn(self, sde: SDE, discrete: bool = False):
        """Exact E[eps | x_t], as an eps-predictor (x, t) -> (B, *S).

        With ``discrete`` (VP / sub-VP) it is the eps-predictor of the discrete DDPM chain at
        step i = ``sde.t_to_index(t)``: x_i = sqrt(ab_i) x_0 + sqrt(1 - ab_i) eps.
        """
        _check_args(sde)

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
        _check_args(sde, x, t=t)
        mean, var, _, _ = self._coef(sde, x, t)
        xd = x.to(torch.float64)
        lp = -0.5 * (torch.log(2 * math.pi * var) + (xd - mean) ** 2 / var)
        return lp.reshape(x.shape[0], -1).sum(1)

    def flow(self, sde: SDE, x: torch.Tensor, t0, t1) -> torch.Tensor:
        """Exact probability-flow map of x from time t0 to time t1 (either direction)."""
        _check_args(sde, x, t0=t0, t1=t1)
        m0, v0, _, _ = self._coef(sde, x, t0)
        m1, v1, _, _ = self._coef(sde, x, t1)
        return (m1 + torch.sqrt(v1 / v0) * (x.to(torch.float64) - m0)).to(x.dtype)

    def pf_logp(self, sde: SDE, x: torch.Tensor, eps: float) -> torch.Tensor:
        """What the probability-flow likelihood returns exactly, in nats per sample (B,):

        log prior(x_T) + 1/2 sum log(v(T) / v(eps)), x_T the exact flow of x from eps to T.
        It differs from :meth:`logp` at eps only through the prior's mismatch with p_T.
        """
        _check_args(sde, x, eps=eps)
        xT = self.flow(sde, x.to(torch.float64), eps, sde.T)
        _, vT, _, _ = self._coef(sde, x, sde.T)
        _, ve, _, _ = self._coef(sde, x, eps)
        dlogp = 0.5 * torch.log(vT / ve).expand(x.shape).reshape(x.shape[0], -1).sum(1)
        return sde.prior_logp(xT).to(torch.float64) + dlogp


class GaussianMixture:
    """Data sum_k w_k N(mu_k, diag(s_k^2)), K components in a trailing shape S.

    Under the linear-Gaussian forward kernel N(alpha(t) x_0, sigma(t)^2 I) of every SDE here a
    mixture stays a mixture: p_t = sum_k w_k N(alpha(t) mu_k, diag(alpha(t)^2 s_k^2 + sigma(t)^2)).
    Hence exact scores (responsibility-weighted component scores, the responsibilities taken with
    logsumexp), exact E[x_0 | x_t] (Tweedie) and exact log p_t; the probability-flow map is
    non-linear and :meth:`flow` solves it numerically to tight tolerance.

    Arguments:
        weights: (K,) positive mixture weights, normalised internally.
        means: (K, *S) component means; S = ``means.shape[1:]``, e.g. (K, 2) for 2-D data.
        stds: component standard deviations (> 0): a number (shared), a (K,) tensor (isotropic
            per component) or a (K, *S) tensor (diagonal).
    Raises:
        ValueError: ``weights`` not 1-D of length K, not finite or not all > 0; ``means`` with no
            data dimension or non-finite; ``stds`` of another shape, non-finite or not all > 0.
    Attributes:
        weights (K,), means (K, *S), stds (K, *S): float64 tensors (weights normalised).
    All methods compute in float64; ``score_fn`` / ``x0_fn`` / ``flow`` / ``marginal_sample``
    return the dtype of their x input (or ``dtype``), ``logp`` returns float64.
    Reference: Song et al. 2021, App. D.1 (probability flow), Eq. (13).
    """

    def __init__(self, weights, means, stds):
        means = torch.as_tensor(means, dtype=torch.float64)
        if means.dim() < 2:
            raise ValueError(f"means must have shape (K, *S) with at least one data dimension (use (K, 1) for 1-D "
                             f"data); got shape {tuple(means.shape)}")
        if not bool(torch.isfinite(means).all()):
            raise ValueError("means contains NaN or infinite values")
        K, shape = means.shape[0], tuple(means.shape[1:])
        w = torch.as_tensor(weights, dtype=torch.float64)
        if w.dim() != 1 or w.shape[0] != K:
            raise ValueError(f"weights must have shape (K,) = ({K},) to match means {tuple(means.shape)}; "
                             f"got shape {tuple(w.shape)}")
        if not bool(torch.isfinite(w).all()) or not bool((w > 0).all()):
            raise ValueError(f"weights must be finite and > 0; got {w.tolist()}")
        s = torch.as_tensor(stds, dtype=torch.float64)
        if s.dim() == 0:
            s = s.expand(K, *shape)
        elif s.dim() == 1 and s.shape[0] == K:
            s = s.reshape(K, *([1] * len(shape))).expand(K, *shape)
        elif tuple(s.shape) != (K, *shape):
            raise ValueError(f"stds must be a number, shape (K,) = ({K},) or (K, *S) = {(K, *shape)}; "
                             f"got shape {tuple(s.shape)}")
        if not bool(torch.isfinite(s).all()) or not bool((s > 0).all()):
            raise ValueError("stds must be finite and > 0")
        self._shape = shape
        self.weights = w / w.sum()
        self.means = means.clone()
        self.stds = s.clone()
        self._logw = torch.log(self.weights)

    @property
    def shape(self) -> tuple:
        """S, the shape of one sample."""
        return self._shape

    @property
    def dim(self) -> int:
        """D, the number of elements of one sample."""
        return math.prod(self._shape)

    @property
    def K(self) -> int:
        """The number of components."""
        return int(self.weights.shape[0])

    # ---- sampling ---------------------------------------------------------------------------
    def sample(self, n: int, generator=None, dtype=torch.float64) -> torch.Tensor:
        """n exact data samples, shape (n, *S), in ``dtype`` (on the generator's device, CPU by default)."""
        check_positive("n", n, integer=True)
        device = generator.device if generator is not None else None
        k = torch.multinomial(self.weights.to(device), n, replacement=True, generator=generator)
        z = torch.randn((n, *self._shape), generator=generator, dtype=torch.float64, device=device)
        return (self.means.to(device)[k] + self.stds.to(device)[k] * z).to(dtype)

    def marginal_sample(self, sde: SDE, t, n: int, generator=None, dtype=torch.float64) -> torch.Tensor:
        """n exact samples of p_t, shape (n, *S): alpha(t) x_0 + sigma(t) z with x_0 from :meth:`sample`.

        Arguments: t: a number or an (n,) tensor of times in [0, T].
        Raises: ValueError for t outside [0, T] or of the wrong batch size; TypeError for an sde
        that is not an SDE or a t that is not a number or tensor.
        """
        _check_args(sde, t=t)
        x0 = self.sample(n, generator=generator, dtype=torch.float64)
        t = as_time(t, x0, sde.T).to(torch.float64)
        a, s = sde.mean_coeff(t).to(torch.float64), sde.marginal_std(t).to(torch.float64)
        z = torch.randn(x0.shape, generator=generator, dtype=torch.float64, device=x0.device)
        return (bcast(a, x0) * x0 + bcast(s, x0) * z).to(dtype)

    # ---- exact marginal quantities ----------------------------------------------------------
    def _check_x(self, x):
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"x must be a floating-point torch.Tensor; got {type(x).__name__}")
        if tuple(x.shape[1:]) != self._shape or x.dim() < 1:
            raise ValueError(f"x must have shape (B, *S) = (B, {', '.join(map(str, self._shape))}); "
                             f"got {tuple(x.shape)}")

    def _coef(self, sde: SDE, x, t, name="t"):
        t = as_time(t, x, sde.T, name=name).to(torch.float64)
        return t, sde.mean_coeff(t).to(torch.float64), sde.marginal_std(t).to(torch.float64)

    def _components(self, xd, a, s):
        """Per-component log-densities (B, K) and the exact score (B, *S), for float64 x (B, *S)
        and per-sample alpha, sigma (B,)."""
        B, K = xd.shape[0], self.K
        ones = [1] * len(self._shape)
        a_, s_ = a.reshape(B, 1, *ones), s.reshape(B, 1, *ones)
        mu, var0 = self.means.to(xd.device), self.stds.to(xd.device) ** 2
        var = a_**2 * var0 + s_**2  # (B, K, *S)
        diff = xd.unsqueeze(1) - a_ * mu
        logn = -0.5 * (torch.log(2 * math.pi * var) + diff**2 / var).reshape(B, K, -1).sum(-1)
        logits = self._logw.to(xd.device) + logn  # (B, K)
        r = torch.softmax(logits, dim=1).reshape(B, K, *ones)
        score = -(r * diff / var).sum(1)
        return logits, score

    def score_fn(self, sde: SDE):
        """Exact score grad_x log p_t(x): (x (B, *S), t (B,) or number) -> (B, *S) in x's dtype.

        At t = 0 with sigma(0) = 0 it is the data score (component variances s_k^2 > 0).
        Raises (when called): ValueError for t outside [0, T] or x of the wrong shape.
        """
        _check_args(sde)

        def score(x, t):
            self._check_x(x)
            _, a, s = self._coef(sde, x, t)
            return self._components(x.to(torch.float64), a, s)[1].to(x.dtype)

        return score

    def x0_fn(self, sde: SDE):
        """Exact E[x_0 | x_t] = (x + sigma(t)^2 score(x, t)) / alpha(t) (Tweedie):
        (x (B, *S), t (B,) or number) -> (B, *S) in x's dtype."""
        _check_args(sde)

        def x0(x, t):
            self._check_x(x)
            _, a, s = self._coef(sde, x, t)
            xd = x.to(torch.float64)
            sc = self._components(xd, a, s)[1]
            return ((xd + bcast(s**2, xd) * sc) / bcast(a, xd)).to(x.dtype)

        return x0

    def logits_fn(self, sde: SDE):
        """The exact noise-conditional classifier: (x (B, *S), t (B,)) -> logits (B, K) of p_t(k | x),
        log w_k + log N(x; alpha mu_k, alpha^2 s_k^2 + sigma^2) (float64, differentiable in x); for
        testing classifier guidance, whose exact guided score is then the score of component k."""
        _check_args(sde)

        def logits(x, t):
            self._check_x(x)
            _, a, s = self._coef(sde, x, t)
            return self._components(x.to(torch.float64), a, s)[0]

        return logits

    def component(self, k: int) -> "GaussianMixture":
        """Component k alone, as a one-component mixture (its exact score, samples and flow)."""
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < self.K:
            raise ValueError(f"k must be an integer in [0, {self.K - 1}]; got {k!r}")
        return GaussianMixture([1.0], self.means[k:k + 1], self.stds[k:k + 1])

    def logp(self, sde: SDE, x: torch.Tensor, t) -> torch.Tensor:
        """Exact log p_t(x) in nats per sample, shape (B,), float64 (differentiable in x).

        Raises: ValueError for t outside [0, T] or x of the wrong shape; TypeError naming ``sde``,
        ``x`` or ``t`` when one is not an SDE / floating tensor / time (e.g. arguments swapped).
        """
        _check_args(sde, x, t=t)
        self._check_x(x)
        _, a, s = self._coef(sde, x, t)
        logits, _ = self._components(x.to(torch.float64), a, s)
        return torch.logsumexp(logits, dim=1)

    # ---- reference probability flow ---------------------------------------------------------
    def flow(self, sde: SDE, x: torch.Tensor, t0, t1, rtol: float = 1e-10, atol: float = 1e-10) -> torch.Tensor:
        """Probability-flow map of x from time t0 to t1 (either direction), the reference solution.

        Integrates dx/dt = f(t) x - 1/2 g(t)^2 score(x, t) with the exact score in float64 by
        ``scipy.integrate.solve_ivp(method="DOP853", rtol=rtol, atol=atol)`` on the flattened
        batch (one system, so the step size is shared by all samples). It has no closed form.

        Arguments:
            x: (B, *S) states at t0. t0, t1: numbers, or (B,) tensors holding one value.
            rtol, atol: solver tolerances (> 0).
        Returns: (B, *S) at t1, in x's dtype and on x's device.
        Raises:
            ValueError: t0 / t1 outside [0, T] or not one value per batch; x of the wrong shape.
            TypeError: sde not an SDE, x not a floating tensor, t0 / t1 not numbers or tensors.
            RuntimeError: solve_ivp fails (the message names its status).
        Reference: Song et al. 2021, Eq. (13) and App. D.1.
        """
        _check_args(sde, x, t0=t0, t1=t1)
        from scipy.integrate import solve_ivp

        self._check_x(x)
        check_positive("rtol", rtol)
        check_positive("atol", atol)
        ta, tb = (self._coef(sde, x, t, name=nm)[0] for t, nm in ((t0, "t0"), (t1, "t1")))
        for tt, nm in ((ta, "t0"), (tb, "t1")):
            if bool((tt != tt[0]).any()):
                raise ValueError(f"{nm} must take one value for the whole batch (one ODE solve)")
        ta, tb = float(ta[0]), float(tb[0])
        xd = x.detach().to(device="cpu", dtype=torch.float64)
        if ta == tb:
            return xd.to(device=x.device, dtype=x.dtype)
        B = xd.shape[0]

        def rhs(t, y):
            xt = torch.from_numpy(y).reshape(xd.shape)
            tt = torch.full((B,), t, dtype=torch.float64)
            a, s = sde.mean_coeff(tt).to(torch.float64), sde.marginal_std(tt).to(torch.float64)
            f = float(sde.drift_coeff(tt[:1])[0])
            g2 = float(sde.diffusion_coeff(tt[:1])[0]) ** 2
            dx = f * xt - 0.5 * g2 * self._components(xt, a, s)[1]
            return dx.reshape(-1).numpy()

        sol = solve_ivp(rhs, (ta, tb), xd.reshape(-1).numpy(), method="DOP853", rtol=rtol, atol=atol, t_eval=[tb])
        if sol.status != 0 or not sol.success:
            raise RuntimeError(f"solve_ivp (DOP853) failed with status {sol.status}: {sol.message}")
        out = torch.from_numpy(sol.y[:, -1].copy()).reshape(xd.shape)
        return out.to(device=x.device, dtype=x.dtype)
