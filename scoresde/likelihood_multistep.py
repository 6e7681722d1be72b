"""The likelihood by a multistep exponential integrator on a fixed grid: ``method="dpmpp_2m"`` / ``"dpmpp_3m"``.

The probability-flow ODE of a linear SDE with perturbation kernel N(alpha(t) x_0, sigma(t)^2 I),
dx/dt = f(t) x - 1/2 g(t)^2 score(x, t), has an exactly integrable linear part. In the
half-log-SNR lambda = log(alpha / sigma) its solution from node i to node i + 1 is
(Lu et al. 2022b, Eq. (9), with the data prediction x0 = (x + sigma^2 score) / alpha)

    x_{i+1} = (sigma_{i+1} / sigma_i) x_i + sigma_{i+1} int_{lambda_i}^{lambda_{i+1}} e^lambda x0 dlambda,

which DPM-Solver++'s multistep updates approximate from the data predictions already computed
(:mod:`scoresde.solvers.dpmpp`; here run forwards, from eps to T, so h = lambda_{i+1} - lambda_i < 0).
The log-density change is a pure quadrature along that trajectory: with div f~ = D f(t) -
1/2 g^2 div score and f = d log alpha / dt,

    delta_logp = int_eps^T div f~ dt = D (log alpha(T) - log alpha(eps)) + int_s0^s1 c(s) div score ds,
    c(s) = -1/2 g(t)^2 dt/ds,

where s is the grid's variable (``time_variable``: "lambda", i.e. s = -lambda, on a grid
uniform in lambda, DPM-Solver's "logsnr" spacing, or "t", uniform in t). The divergence is
taken at every node (one network call and one vector-Jacobian product, the same evaluation that
gives x0 for the next step), and nothing is fed back from delta_logp into x, so the integral can
use every node, the last one included: the extended Simpson rule with end weights 17/48, 59/48,
43/48, 49/48 (fourth order, no alternating weights; :func:`quadrature_weights`). NFE = steps + 1.

The steps are fixed, so every sample of a batch takes the same ones whatever its batch-mates
(a sample's log-density is the same alone and in a batch, for the same probe row, up to the
network's batch-size rounding), and the cost is known in advance. There is no error control: the error must be
measured against a tight adaptive solve for the model at hand (``benchmarks/bench_likelihood.py``).
Measured there (digits UNet, batch 16, against a float64 dopri5 solve at 1e-9): max |error|
0.0022 / 0.0033 / 0.0017 bits/dim at 40 / 60 / 80 steps with "dpmpp_2m" on the lambda grid.
On the same UNet with its time embedding smooth in t (band capped at 0.1) "dpmpp_3m" is the
better one: 0.0040 at 30 steps against 0.0113 for "dpmpp_2m" (docs/benchmarks.md, the control).
"dpmpp_3m" is the third-order update of :mod:`scoresde.solvers.dpmpp` with ``variant="taylor"``
(the peers' coefficient is second order); the first two steps warm up with orders 1 and 2, whose
local errors O(h^2), O(h^3) make 3M second order in the limit: on the Gaussian oracle its error
falls 8-15x per doubling of the steps up to ~100-300 steps (the range that matters here) and ~4x
beyond (VE: 7.0 / 5.0 / 4.3 / 4.1 from 80 to 1280 steps). The last steps are not lowered
(``lower_order_final=False``: with a smooth field it only adds error). Run forwards, a step of
h in lambda multiplies rounding errors by about e^|h| (the update is a difference of two terms of
that size), so steps longer than :data:`MAX_LAMBDA_STEP` are refused: with the default eps = 1e-5
the lambda grid needs 5 steps or more, and the t grid on the VP SDE is refused at every practical
step count (its first step from eps is several units of lambda long).

Reference: Lu et al. 2022b (DPM-Solver++), Alg. 2 and Sec. 4; Lu et al. 2022a (DPM-Solver),
Sec. 3.1 (the exact linear part); Song et al. 2021, Eq. (13), (39); Press et al., "Numerical
Recipes", Eq. (4.1.14) (the extended Simpson rule).
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from ._checks import check_positive
from .divergence import divergence as _divergence
from .likelihood_ode import TimeChange, traced
from .score_fn import FiniteCheck, call_score, check_every_default
from .sde import SDE
from .solvers.dpmpp import DPMSolverPP2M, DPMSolverPP3M
from .solvers.node_solver import step_orders
from .solvers.nodes import Nodes, continuous_nodes
from .solvers.ode import ADAPTIVE_METHODS
from .solvers.ode_types import ODESolverError

#: log_likelihood's fixed-grid multistep methods (see the module docstring)
MULTISTEP_METHODS = ("dpmpp_2m", "dpmpp_3m")

#: the node spacing of each time_variable: a grid uniform in that variable
_SPACING = {"lambda": "logsnr", "t": "uniform"}

#: the longest step in lambda allowed: run forwards, the data-prediction update
#: (sigma_{i+1} / sigma_i) x - alpha_{i+1} expm1(-h) x0 is a difference of two terms of size e^|h|,
#: so each step multiplies rounding errors by about e^|h| (and the multistep corrections by more):
#: eps = 1e-300 on the VP SDE (|h| = 9 at 40 steps) returned logp = -1.7e268 for -5.3
MAX_LAMBDA_STEP = 2.5

#: the most steps accepted (NFE = steps + 1)
MAX_STEPS = 1_000_000

__all__ = ["MULTISTEP_METHODS", "check_multistep_args", "quadrature_weights", "multistep_log_likelihood"]


def check_multistep_args(method: str, steps, min_step, step_control: str, rtol, atol, max_nfe) -> None:
    """Check the arguments of ``log_likelihood(method="dpmpp_2m" | "dpmpp_3m", ...)`` before anything is drawn.

    rtol / atol are checked as solve_ode checks them for its fixed-grid methods (> 0, unused).
    Raises:
        ValueError: steps missing or above :data:`MAX_STEPS`, rtol / atol / max_nfe / steps <= 0, min_step
            given, step_control other than "batch".
        TypeError: a non-integer steps or max_nfe.
    """
    check_positive("rtol", rtol)
    check_positive("atol", atol)
    if max_nfe is not None:
        check_positive("max_nfe", max_nfe, integer=True)
    if steps is None:
        raise ValueError(f"method {method!r} steps on a fixed grid: pass steps (an integer >= 1; NFE = steps + 1, "
                         "e.g. 40-80 for 0.002-0.003 bits/dim on the digits UNet, see benchmarks/bench_likelihood.py)")
    check_positive("steps", steps, integer=True)
    if steps > MAX_STEPS:
        raise ValueError(f"steps must be at most {MAX_STEPS:,} for method {method!r} (NFE = steps + 1); got {steps:,}")
    if min_step is not None:
        raise ValueError(f"min_step applies to the adaptive methods {list(ADAPTIVE_METHODS)}, not {method!r}")
    if step_control != "batch":
        raise ValueError(f"step_control='per_sample' supports method 'dopri5' only; got {method!r}, whose fixed grid "
                         "already gives every sample the same steps whatever its batch-mates (use step_control='batch')")


def quadrature_weights(steps: int) -> list[float]:
    """Weights w_0 .. w_M of int f ds = ds sum_i w_i f(s_i) on M + 1 = ``steps`` + 1 equally spaced nodes.

    The extended Simpson rule (end weights 17/48, 59/48, 43/48, 49/48, interior weights 1; exact
    for cubics, error O(ds^4)) for ``steps`` >= 7, the trapezoid rule (exact for lines) below.

    Arguments:
        steps: the number of intervals M (int >= 1).
    Returns:
        A list of M + 1 floats summing to M.
    Reference: Press et al., "Numerical Recipes", Eq. (4.1.14).
    """
    w = [1.0] * (steps + 1)
    if steps >= 7:
        ends = [17 / 48, 59 / 48, 43 / 48, 49 / 48]
        w[:4] = ends
        w[-4:] = ends[::-1]
    else:
        w[0] = w[-1] = 0.5
    return w


def forward_nodes(sde: SDE, steps: int, eps: float, time_variable: str) -> Nodes:
    """The ``steps`` + 1 nodes from eps up to T, uniform in ``time_variable`` ("lambda" or "t")."""
    n = continuous_nodes(sde, steps, eps, _SPACING[time_variable])  # from T down to eps
    return Nodes(n.times.flip(0), n.alpha[::-1], n.sigma[::-1], n.lam[::-1], "continuous", eps)


def multistep_log_likelihood(score_fn: Callable, sde: SDE, x: torch.Tensor, probes: torch.Tensor | None, *,
                             eps: float, steps: int, method: str, time_variable: str,
                             max_nfe: int | None = None, chunk_size=None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The latent and the log-density change of x by a multistep exponential integrator (module docstring).

    Arguments:
        score_fn: callable (x (B, *S), t (B,)) -> (B, *S) with an autograd graph to x.
        sde: the forward SDE (VPSDE, SubVPSDE or VESDE). x: (B, *S) data at time eps (float32 / float64).
        probes: (P, B, *S) Hutchinson probes, or None for the exact trace.
        eps: the start time. steps: number of steps M (int >= 1; the caller validates it).
        method: "dpmpp_2m" or "dpmpp_3m". time_variable: "lambda" (grid uniform in lambda) or "t".
        max_nfe: optional budget; M + 1 > max_nfe raises before any evaluation.
        chunk_size: the exact trace's (:func:`scoresde.divergence.divergence`): None, an int or a ChunkTuner.
    Returns:
        (z (B, *S) the state at T, delta_logp (B,) in nats per sample, in x's dtype, nfe = M + 1).
    Raises:
        ODESolverError: M + 1 evaluations exceed ``max_nfe``.
        ValueError: a step longer than :data:`MAX_LAMBDA_STEP` in lambda (a tiny eps, too few steps,
            or the t grid near eps): the message says how many steps the lambda grid needs.
        ValueError: (from the evaluations) a score of the wrong shape, with NaN / inf, or without a graph.
    Reference: see the module docstring.
    """
    if max_nfe is not None and steps + 1 > max_nfe:
        raise ODESolverError(f"method {method!r} with steps={steps} takes steps + 1 = {steps + 1} evaluations, more "
                             f"than max_nfe={max_nfe}: lower steps or raise max_nfe")
    nodes = forward_nodes(sde, steps, eps, time_variable)
    h = max(abs(b - a) for a, b in zip(nodes.lam[:-1], nodes.lam[1:]))
    if not h <= MAX_LAMBDA_STEP:
        need = math.ceil(abs(nodes.lam[-1] - nodes.lam[0]) / MAX_LAMBDA_STEP)
        fix = f"steps >= {need}" if time_variable == "lambda" else f"time_variable='lambda' with steps >= {need}"
        raise ValueError(f"method {method!r}: steps={steps} on [eps={eps:g}, T] makes a step of {h:.3g} in lambda, more "
                         f"than {MAX_LAMBDA_STEP} (run forwards, each step multiplies rounding errors by about e^|h|); "
                         f"use {fix}, or a larger eps (1e-5 is the reference setting)")
    tc = TimeChange(sde, time_variable, eps, sde.T)
    jac = tc.dt_ds(nodes.times)
    c = -0.5 * sde.diffusion_coeff(nodes.times).to(torch.float64) ** 2 * (1.0 if jac is None else jac)
    ds = (tc.s_of_t(sde.T) - tc.s_of_t(eps)) / steps
    weights = [w * ds * ci for w, ci in zip(quadrature_weights(steps), c.tolist())]
    solver = DPMSolverPP2M() if method == "dpmpp_2m" else DPMSolverPP3M(variant="taylor")
    orders = step_orders(steps, solver.solver_order, lower_order_final=False, ends_at_data=False)
    score_fn = traced(score_fn)
    B = x.shape[0]
    delta = torch.zeros(B, dtype=x.dtype, device=x.device)
    times = nodes.times.to(x.device)  # float64, one copy to the state's device
    check = FiniteCheck(check_every_default(x.device))  # NaN / inf read every call on the CPU, every 16 on a GPU
    Ds: list[torch.Tensor] = []
    for i in range(steps + 1):
        t = times[i:i + 1].expand(B)
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            score = call_score(score_fn, xg, t, check)
            # + 0 x: a score that does not depend on x (divergence 0) still has a graph to x
            div = _divergence(torch.add(score, xg, alpha=0.0), xg, probes, chunk_size=chunk_size)
        check.add(div, t, what="the divergence of score_fn (its derivative in x) is NaN or inf")
        delta = torch.add(delta, div.detach(), alpha=weights[i])
        if i == steps:
            break
        score = score.detach().to(x.dtype)
        Ds = (Ds + [torch.add(x, score, alpha=nodes.sigma[i] ** 2).div_(nodes.alpha[i])])[-3:]
        x = solver.update(x, i, orders[i], Ds, nodes, None)
    check.flush()
    # the linear part f(t) x: its trace D f(t) exactly, or, with probes, the same estimate as the
    # adaptive solve's v^T (f(t) I) v = f(t) |v|^2 (Gaussian probes: keeps the two terms' errors
    # correlated, as there; Rademacher: |v|^2 = D)
    D = x[0].numel() if probes is None else probes.pow(2).reshape(probes.shape[0], B, -1).sum(-1).mean(0)
    delta = delta + D * (math.log(nodes.alpha[-1]) - math.log(nodes.alpha[0]))
    return x, delta, steps + 1
