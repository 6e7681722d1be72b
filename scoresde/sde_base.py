"""The interface of a forward SDE (:class:`SDE`) and its reverse (:class:`ReverseSDE`).

The concrete SDEs are in :mod:`scoresde.sde_vp` (VP, sub-VP) and :mod:`scoresde.sde_ve` (VE);
:mod:`scoresde.sde` gathers them (the conventions, shapes and dtypes are described there).
"""
from __future__ import annotations

import abc
import math

import torch

from ._checks import as_time, bcast, check_batch, check_device, check_positive
from .schedules import as_work, work_dtype
from .score_fn import ScoreFn, call_score


def _out_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


class SDE(abc.ABC):
    """Base class of a forward SDE dx = f(t) x dt + g(t) dw on t in [0, T].

    The per-time coefficient methods take t as a tensor or number and do not validate it (they
    sit on samplers' hot paths); the public methods below validate t and x.

    Subclasses implement the per-time coefficients :meth:`mean_coeff`, :meth:`marginal_std`,
    :meth:`drift_coeff`, :meth:`diffusion_coeff` and :meth:`log_snr`; the public methods
    (``sde``, ``marginal_prob``, ``discretize`` ...) validate their inputs and build on them.

    Arguments:
        N: number of discretization steps of the discrete chain (DDPM / SMLD tables), an
            integer >= 2 (the network label (N - 1) t and the discrete tables need two steps).
    Attributes:
        N: number of discretization steps of the discrete chain (DDPM / SMLD tables).
        T: end time of the process.
        default_eps: the last time of a sampler (1e-3 for VP / sub-VP, 1e-5 for VE, as in the
            reference code); likelihood code uses 1e-5 for every SDE.
    Raises:
        ValueError: N not an integer or N < 2.
    Reference:
        Song et al. 2021, Sec. 3, Eq. (5), (9), (11).
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

    def drift_and_diffusion_sq(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(f(t), g(t)^2) together, shaped like t: what the reverse drift needs (one schedule evaluation
        where the SDE shares it, e.g. the VP SDE's -beta / 2 and beta)."""
        return self.drift_coeff(t), self.diffusion_coeff(t) ** 2

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
    tw = as_work(t)
    w = 0.5 if probability_flow else 1.0
    if tw.dim() == 1 and tw.shape[0] > 1 and tw.stride(0) == 0:
        # one time for the whole batch (an expanded 0-d time, as the ODE fields pass it): the
        # coefficients once, as 0-d tensors, which broadcast without promoting x's dtype; two
        # state-sized operations instead of four (the solvers' per-step cost on a cheap network)
        f, g2 = sde.drift_and_diffusion_sq(tw[0])
        score = call_score(score_fn, x, tw)
        return torch.addcmul(x * f, score.to(x.dtype), g2, value=-w)
    f = bcast(sde.drift_coeff(tw), x).to(x.dtype)
    g2 = bcast(sde.diffusion_coeff(tw) ** 2, x).to(x.dtype)
    return f * x - w * g2 * call_score(score_fn, x, tw).to(x.dtype)


class ReverseSDE:
    """Reverse-time SDE dx = [f - g^2 score] dt + g dw-bar, or the probability-flow ODE.

    ``sde(x, t)`` returns (drift, diffusion) of the reverse process in forward-time notation (the
    solver integrates with dt < 0); for the probability flow the drift is f - 1/2 g^2 score and
    the diffusion a zero tensor of shape (B,). ``discretize(x, t, t_next=None)`` returns
    (f_rev, G_rev) with f_rev = f - G^2 score (1/2 G^2 score for the flow) and G_rev = G (zeros
    for the flow); the reverse-diffusion predictor moves x -> x - f_rev + G_rev z.

    Each call of ``sde`` or ``discretize`` evaluates ``score_fn`` once.

    Arguments:
        forward: the forward :class:`SDE` (its N and T are this process's).
        score_fn: callable (x (B, *S), t (B,)) -> (B, *S), an estimate of grad_x log p_t(x).
        probability_flow: if True, the probability-flow ODE (drift f - 1/2 g^2 score, zero
            diffusion) instead of the reverse SDE.
    Raises:
        TypeError: score_fn not callable.
    Reference:
        Song et al. 2021, Eq. (6), (13), (46)-(47).
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
