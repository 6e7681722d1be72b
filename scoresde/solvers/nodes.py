"""Nodes of the exponential-integrator solvers: (t_i, alpha_i, sigma_i, lambda_i), i = 0..M.

DPM-Solver, DPM-Solver++, UniPC and EDM's Heun need only the mean coefficient alpha(t), the
marginal std sigma(t) and the half-log-SNR lambda(t) = log(alpha / sigma) of the perturbation
kernel N(alpha(t) x_0, sigma(t)^2 I), so one implementation serves every SDE here: VP (linear
and cosine, alpha^2 + sigma^2 = 1), sub-VP (sigma = 1 - alpha^2) and VE (alpha = 1). The nodes
come from one of two places, never from a second grid code:

* "continuous": the SDE's own alpha(t), sigma(t) on ``time_grid(sde, steps, eps, spacing)``
  from T to eps (steps + 1 nodes; the last at eps, sigma > 0);
* "table": the DDPM table of a discrete model (``ScoreModel(discrete=True)``) on the chain of
  :func:`scoresde.solvers.discrete.make_chain` (a :func:`scoresde.grids.select_timesteps`
  selection), alpha_i^2 = alpha-bar_i, plus a last node at alpha = 1, sigma = 0
  (lambda = +inf), the data, which no solver evaluates: the step onto it is first order
  (x = the data prediction), as diffusers' ``final_sigmas_type="zero"``.

The cosine VP needs no lambda clipping: its cut at T = t_max = 0.9946 keeps lambda_T = -4.78,
inside diffusers' ``lambda_min_clipped = -5.1`` (the linear VP's lambda_T is -5.02); its table
chain uses only the table steps with t_i <= T.

Reference: Lu et al. 2022a (DPM-Solver), Sec. 3.1; Lu et al. 2022b (DPM-Solver++), Sec. 4;
Karras et al. 2022 (EDM), Sec. 3 for sigma-tilde = sigma / alpha = exp(-lambda).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .._checks import check_choice, check_positive
from ..grids import check_eps, time_grid
from .discrete import make_chain

NODE_SOURCES = ("continuous", "table")


@dataclass
class Nodes:
    """M + 1 nodes from T down to the end, as Python floats (one value per batch, no device syncs).

    Attributes:
        t: times (the score is evaluated at t_i); float64 tensor (M + 1,) in ``times``.
        alpha, sigma, lam: lists of M + 1 floats; lam[i] = log(alpha_i / sigma_i) (+inf where
            sigma_i = 0, only at the end of a "table" sequence).
        source: "continuous" or "table".
        eps: the last time for "continuous" nodes (Tweedie's step of ``denoise``), else None.
    """

    times: torch.Tensor
    alpha: list
    sigma: list
    lam: list
    source: str
    eps: float | None

    def __len__(self) -> int:
        """Number of steps M."""
        return len(self.alpha) - 1

    def t(self, i: int) -> float:
        return float(self.times[i])

    def ends_at_data(self) -> bool:
        return self.sigma[-1] == 0.0


def karras_log_ramp(log_hi: float, log_lo: float, u: np.ndarray) -> np.ndarray:
    """log((1 - u) e^log_hi + u e^log_lo), elementwise, without overflow (the rho-schedule's ramp)."""
    with np.errstate(divide="ignore"):
        return np.logaddexp(np.log1p(-u) + log_hi, np.log(u) + log_lo)


def continuous_nodes(sde, steps: int, eps: float | None, spacing: str, rho: float = 7.0) -> Nodes:
    """Nodes of the continuous SDE on ``time_grid(sde, steps, eps, spacing, rho=rho)``."""
    eps = check_eps(sde.default_eps if eps is None else eps, sde)
    t = time_grid(sde, steps, eps, spacing, rho=rho)
    alpha = sde.mean_coeff(t).to(torch.float64)
    sigma = sde.marginal_std(t).to(torch.float64)
    lam = 0.5 * sde.log_snr(t).to(torch.float64)
    return Nodes(t, alpha.tolist(), sigma.tolist(), lam.tolist(), "continuous", eps)


def _table_selection(sde, steps, spacing: str, rho: float):
    """Table indices for an int ``steps`` with "logsnr" / "karras" spacing: the nearest in lambda."""
    n = sde.chain_length  # usable table steps (the cosine VP stops at T)
    ab = sde.alphas_cumprod[:n].to(torch.float64)
    lam = (0.5 * (torch.log(ab) - torch.log1p(-ab))).numpy()  # decreasing in the index
    if spacing == "logsnr":
        target = np.linspace(lam[-1], lam[0], steps)
    else:  # the rho-schedule in sigma-tilde = e^{-lambda}, in logs (no overflow at small rho)
        target = -rho * karras_log_ramp(-lam[-1] / rho, -lam[0] / rho, np.linspace(0.0, 1.0, steps))
    # fractional index by interpolation in lambda (increasing along the reversed table), then rounded
    frac = np.interp(target, lam[::-1], np.arange(n)[::-1].astype(float))
    return sorted(set(int(round(v)) for v in frac))


def table_nodes(sde, steps, spacing: str, skip: str | None = None, rho: float = 7.0) -> Nodes:
    """Nodes of the DDPM table on a chain selection, then the data node (alpha 1, sigma 0).

    ``steps``: anything :func:`~scoresde.grids.select_timesteps` takes (default all table steps).
    An int with ``spacing`` "uniform" / "quadratic" is that ``skip`` of ``select_timesteps``; with
    "logsnr" / "karras" the table steps nearest to a lambda-uniform (rho-) grid, repeats dropped
    (so fewer than ``steps`` where the table is coarser than the grid; the NFE reported is exact).
    """
    if isinstance(steps, (int, np.integer)) and not isinstance(steps, bool):
        steps = int(steps)
        check_positive("steps", steps, integer=True)
        if spacing in ("logsnr", "karras"):
            steps = _table_selection(sde, steps, spacing, rho)
    elif skip is None:
        skip = spacing if spacing in ("uniform", "quadratic") else "uniform"
    chain = make_chain(sde, steps, skip or "uniform", "table")
    ab = chain.alphas_cumprod.flip(0)  # descending in time
    times = torch.cat([chain.times().flip(0).to(torch.float64), torch.zeros(1, dtype=torch.float64)])
    alpha = ab.sqrt().tolist() + [1.0]
    sigma = (1.0 - ab).sqrt().tolist() + [0.0]
    lam = (0.5 * (torch.log(ab) - torch.log1p(-ab))).tolist() + [math.inf]
    return Nodes(times, alpha, sigma, lam, "table", None)


def make_nodes(sde, score_fn, steps, eps, *, spacing: str, rho: float, alphas, default_steps: int) -> Nodes:
    """The nodes a fast solver walks: "continuous" or "table" (``alphas``; None picks "table" for a
    ``ScoreModel(discrete=True)``). Raises ValueError for eps with table nodes, bad spacing / rho."""
    from ..grids import SPACINGS
    from .discrete import resolve_alphas

    from ..sde import VPSDE

    check_choice("spacing", spacing, SPACINGS)
    check_positive("rho", rho)
    source = resolve_alphas(alphas, score_fn)
    check_choice("alphas", source, ("continuous", "table"))
    steps = default_steps if steps is None else steps
    if isinstance(steps, np.integer):
        steps = int(steps)
    if source == "table":
        if type(sde) is not VPSDE:
            raise ValueError(f"table nodes (alphas='table', the default for a ScoreModel(discrete=True)) need the DDPM "
                             f"table of a VPSDE; got {type(sde).__name__}: pass alphas='continuous'")
        if eps is not None:
            raise ValueError("eps does not apply to table nodes (alphas='table'): they end on alpha-bar = 1 (t = 0)")
        return table_nodes(sde, steps, spacing, rho=rho)
    check_positive("steps", steps, integer=True)
    return continuous_nodes(sde, steps, eps, spacing, rho)
