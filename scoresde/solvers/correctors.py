"""Correctors: Langevin MCMC steps at a fixed time t that pull x towards p_t.

A corrector runs ``n_steps`` Langevin updates x <- x + e s(x, t) + sqrt(2 e) z at the time t of
the predictor-corrector loop (before the predictor step t -> t_next) and returns the new state
and its noise-free mean. Each update costs one score evaluation (``nfe_per_step = n_steps``).

* :class:`LangevinCorrector` ("langevin"): step size from a target signal-to-noise ratio r,
  e = 2 alpha (r ||z|| / ||s||)^2 (Song et al. 2021, Alg. 4 and 5).
* :class:`AnnealedLangevin` ("ald"): the NCSN rule e = 2 alpha (r sigma(t))^2
  (Song & Ermon 2019, Alg. 1 with step size proportional to sigma^2).

alpha is ``sde.discrete_alpha(t, t_next)``: 1 - beta_i of the SDE's own discretization of the
step that follows (VP and sub-VP: alpha-bar(t) / alpha-bar(t_next) on the sampler's grid,
1 - beta(t) (t - t_next) to first order but never negative on coarse grids; VE: 1), as in the
reference code, which uses 1 - beta_i rather than the paper's product alpha-bar_i (score_sde_pytorch issue #73) and crashes on sub-VP (issue #8); here sub-VP works.

Reference: Song et al. 2021, "Score-Based Generative Modeling through Stochastic Differential
Equations", Sec. 4.2, App. G, Alg. 4-5; Song & Ermon 2019, Alg. 1.
"""
from __future__ import annotations

import torch

from .._checks import bcast, check_choice, check_positive
from ..sde import SDE
from .common import ScoreEval, randn

NORMS = ("batch", "sample")


class Corrector:
    """Base class: ``step(x, t, t_next, generator) -> (x, x_mean)``; see the module docstring.

    Arguments:
        sde: the forward SDE. score: a :class:`~scoresde.solvers.common.ScoreEval`.
        snr: the target signal-to-noise ratio r (> 0), default 0.16 (the reference's CIFAR-10 VE).
        n_steps: Langevin updates per time (>= 1).
    Raises: ValueError for snr <= 0 or n_steps < 1.
    """

    name = ""

    def __init__(self, sde: SDE, score: ScoreEval, snr: float = 0.16, n_steps: int = 1):
        check_positive("snr", snr)
        check_positive("corrector_steps", n_steps, integer=True)
        self.sde, self.score, self.snr, self.n_steps = sde, score, float(snr), int(n_steps)

    @property
    def nfe_per_step(self) -> int:
        return self.n_steps

    def step_size(self, grad: torch.Tensor, z: torch.Tensor, t: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """Step size e, shape (B,) in the working dtype."""
        raise NotImplementedError

    def alphas(self, pairs) -> list[float]:
        """alpha = ``sde.discrete_alpha(t, t_next)`` of each step (t, t_next) of ``pairs``, as floats (one call)."""
        if not pairs:
            return []
        t = torch.tensor([p[0] for p in pairs], dtype=torch.float64)
        tn = torch.tensor([p[1] for p in pairs], dtype=torch.float64)
        return torch.as_tensor(self.sde.discrete_alpha(t, tn), dtype=torch.float64).expand(len(pairs)).tolist()

    def step(self, x, t, t_next, generator=None, alpha=None):
        """``n_steps`` Langevin updates at time t; ``alpha`` (a float of :meth:`alphas`) computed here if None."""
        tb = self.score.time(t, x)
        if alpha is None:
            alpha = self.sde.discrete_alpha(tb, self.score.time(t_next, x))
        x_mean = x
        for _ in range(self.n_steps):
            grad = self.score(x, tb)
            z = randn(x.shape, generator, x.device, x.dtype)
            e = self.step_size(grad, z, tb, alpha)  # 0-d (one for the batch) or (B,), working dtype
            e = e.to(x.dtype).reshape((-1,) + (1,) * (x.dim() - 1)) if e.dim() else e.to(x.dtype)
            x_mean = torch.addcmul(x, e, grad)  # x + e grad
            x = torch.addcmul(x_mean, (2.0 * e).sqrt_(), z)  # + sqrt(2 e) z
        return x, x_mean


class LangevinCorrector(Corrector):
    """Langevin corrector with the step size set by a target signal-to-noise ratio.

    e = 2 alpha (snr ||z|| / ||s(x, t)||)^2, alpha = ``sde.discrete_alpha(t, t_next)``.

    Arguments (besides those of :class:`Corrector`):
        norm: "batch" (default, the reference code's rule: the per-sample L2 norms ||z_b|| and
            ||s_b|| are each averaged over the batch, so one e serves the whole batch and the
            published settings reproduce; a sample's path then depends on its batch-mates) or
            "sample" (e_b from sample b's own norms: each sample independent of the batch, the
            right choice for high-dimensional data, where ||z_b|| ~ sqrt(D) concentrates; in low
            dimension (D of order 1-10) single-sample norms are so noisy that e_b swings by orders
            of magnitude between samples and steps, and the sampler's accuracy suffers).
        A sample whose score norm is exactly 0 gets e = 0 (no move) instead of a division by 0.
    NFE per step: ``n_steps``.
    Reference: Song et al. 2021, Alg. 4 (VE) and 5 (VP), App. G; reference ``LangevinCorrector``.
    """

    name = "langevin"

    def __init__(self, sde, score, snr=0.16, n_steps=1, norm: str = "batch"):
        super().__init__(sde, score, snr, n_steps)
        self.norm = check_choice("corrector_norm", norm, NORMS)

    def step_size(self, grad, z, t, alpha):
        B = grad.shape[0]
        gn = torch.linalg.vector_norm(grad.reshape(B, -1), dim=-1)
        zn = torch.linalg.vector_norm(z.reshape(B, -1), dim=-1)
        if self.norm == "batch":  # one step size for the batch: a 0-d tensor
            gn, zn = gn.mean(), zn.mean()
        # a zero score norm gives e = 0 (no move): 0/0 and z/0 are mapped to 0
        ratio = torch.nan_to_num(zn.to(t.dtype) / gn.to(t.dtype), nan=0.0, posinf=0.0)
        return ratio.square_() * (2.0 * alpha * self.snr**2)


class AnnealedLangevin(Corrector):
    """Annealed Langevin dynamics (NCSN): e = 2 alpha (snr sigma(t))^2, sigma(t) the marginal std.

    NFE per step: ``n_steps``.
    Reference: Song & Ermon 2019, Alg. 1 (e proportional to sigma^2); the reference code's
    ``AnnealedLangevinDynamics``.
    """

    name = "ald"

    def step_size(self, grad, z, t, alpha):
        return 2.0 * alpha * (self.snr * self.sde.marginal_std(t)) ** 2


CORRECTORS = {cls.name: cls for cls in (LangevinCorrector, AnnealedLangevin)}
