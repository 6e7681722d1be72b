"""DPM-Solver in the noise-prediction form: singlestep "dpm_solver" and adaptive "dpm_adaptive".

With lambda = log(alpha / sigma), a step from s to t (h = lambda_t - lambda_s > 0) of
DPM-Solver-k (Lu et al. 2022a, Alg. 1-2; eps_s = -sigma_s s(x, s)):

* k = 1: x_t = (alpha_t / alpha_s) x - sigma_t expm1(h) eps_s (= DDIM);
* k = 2 (r1 = 1/2): u = (alpha_s1 / alpha_s) x - sigma_s1 expm1(r1 h) eps_s at lambda_s + r1 h,
  x_t = (alpha_t / alpha_s) x - sigma_t expm1(h) eps_s - sigma_t / (2 r1) expm1(h) (eps(u) - eps_s);
* k = 3 (r1 = 1/3, r2 = 2/3): u1 as above; u2 = (alpha_s2 / alpha_s) x - sigma_s2 expm1(r2 h) eps_s
  - sigma_s2 r2 / r1 (expm1(r2 h) / (r2 h) - 1) (eps(u1) - eps_s);
  x_t = (alpha_t / alpha_s) x - sigma_t expm1(h) eps_s - sigma_t / r2 (expm1(h) / h - 1) (eps(u2) - eps_s).

"dpm_solver" spends its budget as DPM-Solver-fast (Lu et al. 2022a, Sec. 3.4): ``steps`` is
the NFE; with order 3, K = steps // 3 + 1 outer steps of orders [3, ..., 3, 2, 1] (steps = 0
mod 3), [3, ..., 3, 1] (1 mod 3) or [3, ..., 3, 2] (2 mod 3); with order 2, [2, ..., 2] or
[2, ..., 2, 1]; with order 1, steps DDIM steps. With "logsnr" spacing the K outer steps are
uniform in lambda; with the others they are the grid of ``steps`` steps taken at the
cumulative orders (as the reference code).

"dpm_adaptive" is DPM-Solver-12 / -23 (Alg. 4-5): a lower- and a higher-order step share their
evaluations; the step in lambda is accepted when E = max_b RMS((x_high - x_low) / delta) <= 1,
delta = max(atol, rtol |x_low|) (the reference scales by max(|x_low|, |x_prev|), which on VE
keeps the tolerance of a noisy start on a step that reaches the data), and the next
h = min(theta h E^(-1/order), 5 h). The
score at the start of a rejected step is reused, so each trial costs order - 1 new NFE
after the first (the reference code re-evaluates it). Defaults rtol 0.05, atol 0.0078 (the
reference's, for data in [-1, 1]), h_init 0.05, theta 0.9.

Reference: Lu et al. 2022a, "DPM-Solver: A Fast ODE Solver for Diffusion Probabilistic Model
Sampling in Around 10 Steps" (NeurIPS), Alg. 1-5 and Sec. 3.4.
"""
from __future__ import annotations

import math

import torch

from .._checks import check_positive
from ..grids import check_eps, time_grid
from .base import Plan, register
from .node_solver import NodeSolver, check_order
from .discrete import resolve_alphas
from .nodes import Nodes, continuous_nodes
from .ode import ODESolverError


def fast_orders(steps: int, order: int) -> list[int]:
    """DPM-Solver-fast's orders of the outer steps for an NFE budget ``steps`` (sum == steps)."""
    if order == 3:
        K = steps // 3 + 1
        if steps % 3 == 0:
            return [3] * (K - 2) + [2, 1]
        if steps % 3 == 1:
            return [3] * (K - 1) + [1]
        return [3] * (K - 1) + [2]
    if order == 2:
        return [2] * (steps // 2) + ([1] if steps % 2 else [])
    return [1] * steps


#: the intermediate points of a DPM-Solver-k step, as fractions r of h (Lu et al. 2022a, Alg. 1-2)
STAGE_FRACTIONS = {1: (), 2: (0.5,), 3: (1.0 / 3.0, 2.0 / 3.0)}


def dpm_step(pred, x, s_node, t_node, order: int, eps_s: torch.Tensor | None = None, r1: float | None = None):
    """One DPM-Solver-``order`` step between (t, alpha, sigma, lambda) tuples; returns (x_t, eps_s, x_low).

    ``x_low`` is the lower-order solution that shares the evaluations (for the adaptive
    solver): order 2 -> DPM-Solver-1, order 3 -> DPM-Solver-2 with r1 = 1/3.
    """
    ts, a_s, s_s, l_s = s_node
    tt, a_t, s_t, l_t = t_node
    h = l_t - l_s
    if eps_s is None:
        eps_s = pred.eps_at(x, ts, s_s)
    phi1 = math.expm1(h)
    x1 = (a_t / a_s) * x - (s_t * phi1) * eps_s
    if order == 1:
        return x1, eps_s, x1
    if order == 2:
        r1 = STAGE_FRACTIONS[2][0] if r1 is None else r1
        t1, a1, s1 = pred.at_lambda(l_s + r1 * h)
        u = (a1 / a_s) * x - (s1 * math.expm1(r1 * h)) * eps_s
        e1 = pred.eps_at(u, t1, s1)
        return x1 - (s_t / (2.0 * r1) * phi1) * (e1 - eps_s), eps_s, x1
    r1, r2 = STAGE_FRACTIONS[3]
    t1, a1, s1 = pred.at_lambda(l_s + r1 * h)
    t2, a2, s2 = pred.at_lambda(l_s + r2 * h)
    u1 = (a1 / a_s) * x - (s1 * math.expm1(r1 * h)) * eps_s
    e1 = pred.eps_at(u1, t1, s1)
    x_low = x1 - (s_t / (2.0 * r1) * phi1) * (e1 - eps_s)
    phi22 = math.expm1(r2 * h) / (r2 * h) - 1.0
    u2 = (a2 / a_s) * x - (s2 * math.expm1(r2 * h)) * eps_s - (s2 * r2 / r1 * phi22) * (e1 - eps_s)
    e2 = pred.eps_at(u2, t2, s2)
    phi2 = phi1 / h - 1.0
    return x1 - (s_t / r2 * phi2) * (e2 - eps_s), eps_s, x_low


def _node(nodes: Nodes, i: int):
    return nodes.t(i), nodes.alpha[i], nodes.sigma[i], nodes.lam[i]


@register
class DPMSolver(NodeSolver):
    """``method="dpm_solver"``: singlestep DPM-Solver, ``order`` 1, 2 or 3 (default 3); NFE = steps.

    Options: ``order``, ``fast`` (True: DPM-Solver-fast's split, whose last steps are of lower
    order; False: ``steps // order`` steps all of ``order``, then the remainder at lower order,
    the reference's "singlestep_fixed"), ``spacing`` ("logsnr"), ``rho``. Continuous nodes only
    (its intermediate evaluations fall between the steps of a discrete table).
    """

    name = "dpm_solver"
    summary = "DPM-Solver singlestep, noise prediction, DPM-Solver-fast budget split (Lu et al. 2022a, Alg. 1-2)"
    options = {**NodeSolver.options, "order": 3, "fast": True}
    table_ok = False

    def order_of(self):
        return self.opts["order"]

    def validate(self):
        check_order(self.opts["order"], (1, 2, 3))
        if not isinstance(self.opts["fast"], bool):
            raise TypeError(f"fast must be True or False; got {self.opts['fast']!r}")

    def plan(self, score_fn, sde, steps, eps):
        self.validate()
        steps = self.default_steps if steps is None else steps
        check_positive("steps", steps, integer=True)
        self.nodes(score_fn, sde, 1, eps)  # validates spacing / rho / alphas (table nodes refused)
        order = self.opts["order"]
        if self.opts["fast"]:
            orders = fast_orders(steps, order)
        else:
            orders = [order] * (steps // order) + ([steps % order] if steps % order else [])
        sp, rho = self.opts["spacing"], self.opts["rho"]
        if sp == "logsnr":
            nodes = continuous_nodes(sde, len(orders), eps, sp, rho)
        else:
            fine = continuous_nodes(sde, steps, eps, sp, rho)
            idx = [0]
            for o in orders:
                idx.append(idx[-1] + o)
            nodes = Nodes(fine.times[idx], [fine.alpha[i] for i in idx], [fine.sigma[i] for i in idx],
                          [fine.lam[i] for i in idx], "continuous", fine.eps)
        # SampleInfo: the outer steps taken (len(orders)) and their grid; the NFE is ``steps``
        return Plan(nfe=steps, steps=len(orders), times=nodes.times, tweedie_eps=nodes.eps,
                    data={"nodes": nodes, "orders": orders})

    def solve(self, score, sde, x, plan, *, generator=None, denoise=True, hook=None):
        self._orders = plan.data["orders"]
        return super().solve(score, sde, x, plan, generator=generator, denoise=denoise, hook=hook)

    def integrate(self, pred, x, nodes, generator):
        pred.prefetch([nodes.lam[i] + r * (nodes.lam[i + 1] - nodes.lam[i])
                       for i, order in enumerate(self._orders) for r in STAGE_FRACTIONS[order]])
        for i, order in enumerate(self._orders):
            x, _, _ = dpm_step(pred, x, _node(nodes, i), _node(nodes, i + 1), order)
            x = self.after_step(x, nodes, i + 1)
        return x


@register
class DPMSolverAdaptive(NodeSolver):
    """``method="dpm_adaptive"``: DPM-Solver-12 (``order`` 2) or -23 (3, default) with step-size control.

    Options: ``order``, ``rtol`` (0.05), ``atol`` (0.0078), ``h_init`` (0.05, in lambda),
    ``theta`` (0.9), ``max_nfe`` (10000; more raises ODESolverError). ``steps`` is not taken;
    the NFE is reported in :class:`~scoresde.sampling.SampleInfo`.
    """

    name = "dpm_adaptive"
    summary = "DPM-Solver-12 / -23 with step-size control in lambda (Lu et al. 2022a, Alg. 4-5)"
    options = {"order": 3, "rtol": 0.05, "atol": 0.0078, "h_init": 0.05, "theta": 0.9, "max_nfe": 10000}
    steps_kind = "adaptive"
    table_ok = False

    def order_of(self):
        return self.opts["order"]

    def nfe(self, steps):
        return None

    def plan(self, score_fn, sde, steps, eps):
        check_order(self.opts["order"], (2, 3))
        for name in ("rtol", "atol", "h_init", "theta"):
            check_positive(name, self.opts[name])
        if self.opts["theta"] > 1:
            raise ValueError(f"theta must lie in (0, 1]; got {self.opts['theta']}")
        check_positive("max_nfe", self.opts["max_nfe"], integer=True)
        if steps is not None:
            raise ValueError("method 'dpm_adaptive' chooses its steps from rtol / atol; do not pass steps "
                             "(bound the cost with max_nfe)")
        if resolve_alphas(None, score_fn) == "table":
            raise ValueError("method 'dpm_adaptive' evaluates the score between grid nodes, which a discrete (table) "
                             "model cannot; use a multistep method ('dpmpp_2m', 'dpmpp_3m', 'unipc', 'deis')")
        eps = check_eps(sde.default_eps if eps is None else eps, sde)
        nodes = continuous_nodes(sde, 1, eps, "logsnr")
        return Plan(nfe=None, steps=None, times=None, tweedie_eps=eps, data={"nodes": nodes})

    def integrate(self, pred, x, nodes, generator):
        o = self.opts
        order, rtol, atol, theta = o["order"], o["rtol"], o["atol"], o["theta"]
        lam_s, lam_end = nodes.lam[0], nodes.lam[-1]
        s_node = _node(nodes, 0)
        h = float(o["h_init"])
        eps_s, steps = None, 0
        while lam_end - lam_s > 1e-12 * max(1.0, abs(lam_end)):
            h = min(h, lam_end - lam_s)
            last = h >= lam_end - lam_s
            t_node = _node(nodes, len(nodes)) if last else (*pred.at_lambda(lam_s + h), lam_s + h)
            x_high, eps_s, x_low = dpm_step(pred, x, s_node, t_node, order, eps_s, r1=1.0 / 3.0 if order == 3 else 0.5)
            # scale by the new state only: the reference's max(|x_low|, |x_prev|) let a VE step from sigma ~ 10
            # to the data keep a tolerance of rtol * 10 (final error 1.25 against 0.003 here, 8-D Gaussian oracle)
            delta = torch.clamp(rtol * x_low.abs(), min=atol)
            err = ((x_high - x_low) / delta).reshape(x.shape[0], -1).pow(2).mean(1).sqrt().max()
            E = float(err)
            if not math.isfinite(E):
                raise ODESolverError(f"dpm_adaptive: the error estimate is not finite at lambda = {lam_s:.4g}")
            if E <= 1.0:
                x, s_node, lam_s, eps_s = x_high, t_node, t_node[3], None
                hook = getattr(self, "_hook", None)
                if hook is not None:
                    x, _ = hook(x, x, t_node[1], t_node[2])
                steps += 1
            # the reference's update, with the growth capped at 5x per step: on VE in float64 the first
            # estimate can be ~1e-9, and an unbounded jump accepted a step with an absolute error of ~3
            h = min(theta * h * max(E, 1e-10) ** (-1.0 / order), 5.0 * h)
            if pred.score.nfe > o["max_nfe"]:
                raise ODESolverError(f"dpm_adaptive: more than max_nfe = {o['max_nfe']} evaluations, at lambda = "
                                     f"{lam_s:.4g} of {lam_end:.4g}; loosen rtol / atol or raise max_nfe")
        return x
