"""The forward SDEs of score-based generative modelling: VP, sub-VP and VE.

Every SDE here has a linear drift f(x, t) = f(t) x and a state-independent diffusion g(t), so
its perturbation kernel is Gaussian, p_0t(x_t | x_0) = N(alpha(t) x_0, sigma(t)^2 I), with
closed-form ``alpha`` (the mean coefficient) and ``sigma`` (the marginal standard deviation).
The classes keep the reference code's names: ``T``, ``N``, ``sde``, ``marginal_prob``,
``prior_sampling``, ``prior_logp``, ``discretize`` and ``reverse``.

Shapes: x is (B, *S) for any trailing shape S; t is a (B,) tensor or a scalar broadcast to the
batch. Per-sample coefficients are returned as (B,) tensors in float32 (float64 when x is
float64); schedule arithmetic runs in float64 whatever the dtype of x.

Reference: Song et al. 2021, "Score-Based Generative Modeling through Stochastic Differential
Equations" (ICLR), Sec. 3.4, Eq. (5)-(6), (9), (11), (13) and App. B, C, E.
"""
from __future__ import annotations

import abc
import math
from typing import Callable

import torch

from ._checks import as_time, bcast, check_batch, check_choice, check_device, check_positive
from .schedules import CosineSchedule, LinearSchedule, as_work, work_dtype

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _out_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


class SDE(abc.ABC):
    """Base class of a forward SDE dx = f(t) x dt + g(t) dw on t in [0, T].

    The per-time coefficient methods take t as a tensor or number and do not validate it (they
    sit on samplers' hot paths); the public methods below validate t and x.

    Subclasses implement the per-time coefficients :meth:`mean_coeff`, :meth:`marginal_std`,
    :meth:`drift_coeff`, :meth:`diffusion_coeff` and :meth:`log_snr`; the public methods
    (``sde``, ``marginal_prob``, ``discretize`` ...) validate their inputs and build on them.

    Attributes:
        N: number of discretization steps of the discrete chain (DDPM / SMLD tables).
        T: end time of the process.
        default_eps: the last time of a sampler (1e-3 for VP / sub-VP, 1e-5 for VE, as in the
            reference code); likelihood code uses 1e-5 for every SDE.
    """

    default_eps: float = 1e-3
    prior_std: float = 1.0

    def __init__(self, N: int):
        check_positive("N", N, integer=True)
        if N < 2:
            raise ValueError(f"N must be an integer >= 2 (network labels (N - 1) t and the discrete tables need two "
                             f"steps); got {N}")
        self.N = int(N)
        self._cache: dict = {}

    # ---- per-time coefficients: t (B,) -> (B,) in the working dtype -------------------------
    @property
    @abc.abstractmethod
    def T(self) -> float:
        """End time of the SDE."""

    @abc.abstractmethod
    def mean_coeff(self, t: torch.Tensor) -> torch.Tensor:
        """alpha(t): mean of p_0t(x_t | x_0) is alpha(t) x_0. Shape (B,)."""

    @abc.abstractmethod
    def marginal_std(self, t: torch.Tensor) -> torch.Tensor:
        """sigma(t): standard deviation of p_0t(x_t | x_0). Shape (B,)."""

    @abc.abstractmethod
    def drift_coeff(self, t: torch.Tensor) -> torch.Tensor:
        """f(t) with drift f(x, t) = f(t) x. Shape (B,)."""

    @abc.abstractmethod
    def diffusion_coeff(self, t: torch.Tensor) -> torch.Tensor:
        """g(t), the diffusion coefficient. Shape (B,)."""

    @abc.abstractmethod
    def log_snr(self, t: torch.Tensor) -> torch.Tensor:
        """log(alpha(t)^2 / sigma(t)^2), the log signal-to-noise ratio. Shape (B,)."""

    @abc.abstractmethod
    def t_from_log_snr(self, lam: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`log_snr` (closed form)."""

    @abc.abstractmethod
    def t_to_index(self, t: torch.Tensor) -> torch.Tensor:
        """Index (int64, (B,)) into the discrete table of the step that continuous time t falls in."""

    @abc.abstractmethod
    def index_to_t(self, i: torch.Tensor) -> torch.Tensor:
        """Continuous time (float64) of discrete step i; ``t_to_index(index_to_t(i)) == i``."""

    @abc.abstractmethod
    def _discrete(self, x, t, t_next):
        """(f, G) of one discrete forward step from t_next to t (see :meth:`discretize`)."""

    @abc.abstractmethod
    def config(self) -> dict:
        """Constructor arguments as a JSON-serialisable dict (with the class under "sde")."""

    @property
    def chain_length(self) -> int:
        """Number of steps of the discrete chain that lie in [0, T]: all N here (see :class:`_VPFamily`)."""
        return self.N

    def t_to_label(self, t: torch.Tensor) -> torch.Tensor:
        """The continuous network label (N - 1) t, the reference code's 999 t at N = 1000."""
        return as_work(t) * (self.N - 1)

    def alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        """alpha(t)^2, the squared mean coefficient ("alpha-bar" of DDPM). Shape (B,)."""
        return self.mean_coeff(t) ** 2

    def discrete_alpha(self, t: torch.Tensor, t_next: torch.Tensor | None = None) -> torch.Tensor:
        """alpha_i = 1 - beta_i of this SDE's own discretization of the step at t (1 for VE).

        Used by the Langevin corrector's step size (Song et al. 2021, Alg. 5); with ``t_next`` it
        is the step from t to t_next of a respaced grid rather than a step of length T / N.
        """
        return torch.ones_like(as_work(t))

    # ---- validation -------------------------------------------------------------------------
    def _time(self, t, x=None, name="t"):
        return as_work(as_time(t, x, self.T, name=name))

    # ---- public API -------------------------------------------------------------------------
    def sde(self, x: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor]:
        """Drift and diffusion of the forward SDE.

        Arguments:
            x: (B, *S) state. t: (B,) or scalar times in [0, T].
        Returns:
            drift (B, *S) in x's dtype and diffusion g(t) of shape (B,).
        Raises:
            ValueError: t outside [0, T] or of the wrong batch size, non-finite, empty or "meta" x.
            TypeError: x not a floating-point tensor.
        Reference: Song et al. 2021, Eq. (5), (9), (11).
        """
        check_batch("x", x)
        t = self._time(t, x)
        drift = (bcast(self.drift_coeff(t), x) * x).to(x.dtype)
        return drift, self.diffusion_coeff(t).to(_out_dtype(x))

    def marginal_prob(self, x: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and standard deviation of the perturbation kernel p_0t(x_t | x_0).

        Arguments:
            x: (B, *S) clean data x_0. t: (B,) or scalar times in [0, T].
        Returns:
            mean alpha(t) x_0 (B, *S) in x's dtype, std sigma(t) of shape (B,).
        Raises:
            ValueError: t outside [0, T] or of the wrong batch size, non-finite, empty (batch size
                0) or "meta" x.
            TypeError: x not a floating-point tensor.
        Reference: Song et al. 2021, Eq. (29) (VP), (30) (sub-VP), App. B (VE).
        """
        check_batch("x", x)
        t = self._time(t, x)
        mean = (bcast(self.mean_coeff(t), x) * x).to(x.dtype)
        return mean, self.marginal_std(t).to(_out_dtype(x))

    def prior_sampling(self, shape, generator: torch.Generator | None = None, device=None, dtype=None) -> torch.Tensor:
        """Draw x_T from the prior N(0, prior_std^2 I).

        Arguments:
            shape: (B, *S). generator: optional ``torch.Generator`` (its device is used when
            ``device`` is None). device, dtype: of the result (float32 by default).
        Returns: a (B, *S) tensor.
        """
        shape = tuple(int(s) for s in shape)
        if len(shape) < 1 or any(s < 1 for s in shape):
            raise ValueError(f"shape must be a non-empty tuple of positive sizes (B, ...); got {shape}")
        if device is None and generator is not None:
            device = generator.device
        if device is not None:
            device = check_device("device", device)
        z = torch.randn(shape, generator=generator, device=device, dtype=dtype or torch.float32)
        return z * self.prior_std if self.prior_std != 1.0 else z

    def prior_logp(self, z: torch.Tensor) -> torch.Tensor:
        """Log-density of the prior at z, in nats per sample (summed over the D dimensions).

        log p_T(z) = -D/2 log(2 pi s^2) - ||z||^2 / (2 s^2), s = ``prior_std``; it does not
        depend on the data (the prior approximates the marginal at T, Song et al. 2021, Sec. 3).

        Arguments: z: (B, *S). Returns: (B,) float64 if z is float64, else float32.
        Raises: ValueError for non-finite, empty (batch size 0) or "meta" z; TypeError for
            integer z.
        """
        check_batch("z", z)
        zz = z.reshape(z.shape[0], -1).to(work_dtype(z.device))
        D = zz.shape[1]
        s2 = self.prior_std**2
        logp = -0.5 * D * math.log(2 * math.pi * s2) - zz.pow(2).sum(1) / (2 * s2)
        return logp.to(_out_dtype(z))

    def discretize(self, x: torch.Tensor, t, t_next=None) -> tuple[torch.Tensor, torch.Tensor]:
        """One discrete forward step x_{i} = x_{i-1} + f_i + G_i z, evaluated at time t.

        With ``t_next=None`` the step is the i-th step of the N-step chain (i = ``t_to_index(t)``):
        DDPM's rule for VP (f = (sqrt(1 - beta_i) - 1) x, G = sqrt(beta_i)), SMLD's rule for VE
        (f = 0, G = sqrt(sigma_i^2 - sigma_{i-1}^2)) and Euler-Maruyama with dt = T / N for
        sub-VP. With ``t_next`` (< t, e.g. the next point of a sampler's grid) the same rules are
        applied to the step between t_next and t of the continuous process (VP:
        beta = 1 - alpha-bar(t) / alpha-bar(t_next); VE: sigma(t)^2 - sigma(t_next)^2;
        sub-VP: dt = t - t_next), so a sampler on a coarse grid stays consistent.

        Returns:
            f (B, *S) in x's dtype and G (B,).
        Raises:
            ValueError: t or t_next outside [0, T], t_next > t, wrong batch size, non-finite x.
        Reference: Song et al. 2021, Eq. (46)-(47) (reverse diffusion), App. E.
        """
        check_batch("x", x)
        t = self._time(t, x)
        if t_next is not None:
            t_next = self._time(t_next, x, name="t_next")
            if bool((t_next > t).any()):
                raise ValueError("t_next must not exceed t (a step goes backwards in time)")
        f, G = self._discrete(x, t, t_next)
        return f.to(x.dtype), G.to(_out_dtype(x))

    def reverse(self, score_fn: ScoreFn, probability_flow: bool = False) -> "ReverseSDE":
        """The reverse-time SDE (or, with ``probability_flow``, the probability-flow ODE).

        Arguments:
            score_fn: callable (x (B, *S), t (B,)) -> (B, *S), an estimate of grad_x log p_t(x).
            probability_flow: if True, drift f - 1/2 g^2 score and zero diffusion.
        Returns:
            A :class:`ReverseSDE` with the same ``sde`` / ``discretize`` interface.
        Reference: Song et al. 2021, Eq. (6) (reverse SDE) and Eq. (13) (probability flow).
        """
        return ReverseSDE(self, score_fn, probability_flow)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "sde")
        return f"{type(self).__name__}({args})"

    def _table(self, name: str, device) -> torch.Tensor:
        key = (name, str(device))
        if key not in self._cache:
            self._cache[key] = getattr(self, name).to(device=device, dtype=work_dtype(device))
        return self._cache[key]


def reverse_drift(sde: "SDE", score_fn: ScoreFn, x: torch.Tensor, t: torch.Tensor,
                  probability_flow: bool = False) -> torch.Tensor:
    """Drift of the reverse-time SDE, f(t) x - g(t)^2 score(x, t), or with ``probability_flow``
    of the probability-flow ODE, f(t) x - 1/2 g(t)^2 score(x, t).

    The one implementation used by :class:`ReverseSDE`, the ODE sampler and the likelihood code.
    It does not validate t (it sits in solvers' inner loops); the score receives t in float64
    (so that discrete models map it to the right table step) and is checked for shape and NaN.

    Arguments:
        score_fn: callable (x (B, *S), t (B,)) -> (B, *S). x: (B, *S). t: (B,) times in [0, T].
    Returns: (B, *S) in x's dtype (one call of ``score_fn``).
    Raises: ValueError when the score has the wrong shape or holds NaN / inf.
    Reference: Song et al. 2021, Eq. (6) and Eq. (13).
    """
    from .score import call_score  # score.py imports this module

    tw = as_work(t)
    f = bcast(sde.drift_coeff(tw), x).to(x.dtype)
    g2 = bcast(sde.diffusion_coeff(tw) ** 2, x).to(x.dtype)
    w = 0.5 if probability_flow else 1.0
    return f * x - w * g2 * call_score(score_fn, x, tw).to(x.dtype)


class ReverseSDE:
    """Reverse-time SDE dx = [f - g^2 score] dt + g dw-bar, or the probability-flow ODE.

    ``sde(x, t)`` returns (drift, diffusion) of the reverse process in forward-time notation (the
    solver integrates with dt < 0); for the probability flow the drift is f - 1/2 g^2 score and
    the diffusion a zero tensor of shape (B,). ``discretize(x, t, t_next=None)`` returns
    (f_rev, G_rev) with f_rev = f - G^2 score (1/2 G^2 score for the flow) and G_rev = G (zeros
    for the flow); the reverse-diffusion predictor moves x -> x - f_rev + G_rev z.

    Each call of ``sde`` or ``discretize`` evaluates ``score_fn`` once.

    Reference: Song et al. 2021, Eq. (6), (13), (46)-(47).
    """

    def __init__(self, forward: SDE, score_fn: ScoreFn, probability_flow: bool = False):
        if not callable(score_fn):
            raise TypeError(f"score_fn must be callable (x, t) -> score; got {type(score_fn).__name__}")
        self.forward_sde = forward
        self.score_fn = score_fn
        self.probability_flow = bool(probability_flow)
        self.N = forward.N

    @property
    def T(self) -> float:
        return self.forward_sde.T

    def _score(self, x, t):
        from .score import call_score  # score.py imports this module

        return call_score(self.score_fn, x, t).to(x.dtype)

    def sde(self, x: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor]:
        """Reverse drift (B, *S) and diffusion (B,) at time t (validated)."""
        check_batch("x", x)
        t = self.forward_sde._time(t, x)
        drift = reverse_drift(self.forward_sde, self.score_fn, x, t, self.probability_flow)
        g = self.forward_sde.diffusion_coeff(t).to(_out_dtype(x))
        return drift, (torch.zeros_like(g) if self.probability_flow else g)

    def discretize(self, x: torch.Tensor, t, t_next=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Reverse discrete step (f_rev (B, *S), G_rev (B,)); see the class docstring."""
        f, G = self.forward_sde.discretize(x, t, t_next)
        t = self.forward_sde._time(t, x)
        w = 0.5 if self.probability_flow else 1.0
        f = f - bcast(G**2 * w, x).to(x.dtype) * self._score(x, t)
        return f, (torch.zeros_like(G) if self.probability_flow else G)


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


SDES = {"VPSDE": VPSDE, "SubVPSDE": SubVPSDE, "VESDE": VESDE}


def sde_from_config(cfg: dict) -> SDE:
    """Rebuild an SDE from :meth:`SDE.config` output (used by checkpoints)."""
    cfg = dict(cfg)
    name = cfg.pop("sde", None)
    if name not in SDES:
        raise ValueError(f"unknown sde {name!r} in config; valid values are {list(SDES)}")
    return SDES[name](**cfg)
