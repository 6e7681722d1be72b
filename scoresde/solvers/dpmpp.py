"""DPM-Solver++ multistep in the data-prediction form: "dpmpp_2m", "dpmpp_3m", "dpmpp_2m_sde".

On nodes t_0 = T > ... > t_M with lambda = log(alpha / sigma), h_i = lambda_i - lambda_{i-1} and
the data predictions D_i = x0(x_i, t_i) (one NFE per step; the end node is not evaluated):

* order 1 (DPM-Solver++1 = DDIM): x_i = (sigma_i / sigma_{i-1}) x_{i-1} - alpha_i expm1(-h_i) D_{i-1};
* 2M (Lu et al. 2022b, Alg. 2, the "midpoint" form of diffusers / k-diffusion): with
  r = h_{i-1} / h_i, D = (1 + 1/(2r)) D_{i-1} - 1/(2r) D_{i-2} in the order-1 update;
* 3M (the third-order multistep update of the reference code): with r0 = h_{i-1} / h_i,
  r1 = h_{i-2} / h_i, D1_0 = (D_{i-1} - D_{i-2}) / r0, D1_1 = (D_{i-2} - D_{i-3}) / r1,
  D1 = D1_0 + r0 / (r0 + r1) (D1_0 - D1_1), D2 = (D1_0 - D1_1) / (r0 + r1),
  x_i = (sigma_i / sigma_{i-1}) x - alpha_i phi1 D_{i-1} + alpha_i phi2 D1 - c alpha_i phi3 D2,
  phi1 = expm1(-h), phi2 = phi1 / h + 1, phi3 = phi2 / h - 1/2.
  D1 ~ h x0' and D2 ~ h^2 x0'' / 2 (Taylor in lambda), while the exact integral of the
  quadratic term is -h^2 phi3 x0'' alpha_i: third order needs c = 2 (``variant="taylor"``).
  The peers' 3M (LuChengTHU's ``multistep_dpm_solver_third_update``, diffusers'
  ``solver_order=3``, k-diffusion's ``sample_dpmpp_3m_sde``) use c = 1, which leaves an
  O(h^3) local error: on the Gaussian oracle it converges at order 2.0 (errors 4.2e-4, 9.4e-5,
  2.3e-5 at 40 / 80 / 160 steps, VP) against 3.9 for c = 2 (5.8e-5, 3.8e-6, 2.6e-7).
  ``variant="peers"`` (the default) reproduces their samples, and on an 8-mode 2-D mixture it is
  the more accurate at 10-20 NFE (3.2e-2 / 7.2e-3 against 5.9e-2 / 9.1e-3 for "taylor", logsnr;
  benchmarks/bench_solvers.py); "taylor" wins from ~50 NFE and on the Gaussian oracle;
* SDE-DPM-Solver++(2M) (Lu et al. 2022b, App.; diffusers' "sde-dpmsolver++"), z ~ N(0, I):
  x_i = (sigma_i / sigma_{i-1}) e^{-h} x + alpha_i (1 - e^{-2h}) (D + 1/2 D1) + sigma_i sqrt(1 - e^{-2h}) z.

The first steps warm up (order min(order, i)); ``lower_order_final`` (default: only below 10
steps, as the reference code) lowers the last steps; a step onto sigma = 0 is order 1 (x = D).
With an exact score ``lower_order_final`` *raises* the error; it stabilises learned models
and guided scores at few steps.

Reference: Lu et al. 2022b, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion
Probabilistic Models", Alg. 2 and App. B; Lu et al. 2022a (DPM-Solver), Sec. 3.
"""
from __future__ import annotations

import math

import torch

from .._checks import check_choice
from .base import register
from .common import randn
from .node_solver import NodeSolver, lincomb, lower_order_final_default, step_orders


class _Multistep(NodeSolver):
    """DPM-Solver++ multistep of a fixed maximum order (``solver_order``)."""

    solver_order = 2
    options = {**NodeSolver.options, "lower_order_final": None}

    def validate(self):
        lower_order_final_default(self.opts["lower_order_final"], 0)

    def orders(self, nodes) -> list[int]:
        M = len(nodes)
        lof = lower_order_final_default(self.opts["lower_order_final"], M)
        return step_orders(M, self.solver_order, lof, nodes.ends_at_data())

    def update(self, x, i, order, Ds, nodes, generator):
        """Step from node i to i + 1 with the last ``order`` data predictions Ds (newest last)."""
        a, s, lam = nodes.alpha, nodes.sigma, nodes.lam
        if s[i + 1] == 0.0:  # onto the data: x = D exactly (lambda = inf)
            return a[i + 1] * Ds[-1]
        h = lam[i + 1] - lam[i]
        phi1 = math.expm1(-h)
        ratio = s[i + 1] / s[i]
        a1 = a[i + 1]
        if order == 1:
            return lincomb(x, ratio, [(-(a1 * phi1), Ds[-1])])
        h0 = lam[i] - lam[i - 1]
        r0 = h0 / h
        if order == 2:  # ratio x - a' phi1 D with D = (1 + 1/(2 r0)) D_i - 1/(2 r0) D_{i-1}
            return lincomb(x, ratio, [(-(a1 * phi1) * (1.0 + 0.5 / r0), Ds[-1]), ((a1 * phi1) * (0.5 / r0), Ds[-2])])
        h1 = lam[i - 1] - lam[i - 2]
        r1 = h1 / h
        # D1 = d1_0 + r0 / (r0 + r1) (d1_0 - d1_1), D2 = (d1_0 - d1_1) / (r0 + r1), d1_0 = (D_i - D_{i-1}) / r0,
        # d1_1 = (D_{i-1} - D_{i-2}) / r1: x' = ratio x - a' phi1 D_i + a' phi2 D1 - c a' phi3 D2, gathered per D
        phi2 = phi1 / h + 1.0
        phi3 = phi2 / h - 0.5
        c = 2.0 if self.opts.get("variant") == "taylor" else 1.0
        q = r0 / (r0 + r1)
        k0 = a1 * phi2 * (1.0 + q) - c * a1 * phi3 / (r0 + r1)  # coefficient of d1_0
        k1 = -a1 * phi2 * q + c * a1 * phi3 / (r0 + r1)  # coefficient of d1_1
        return lincomb(x, ratio, [(-(a1 * phi1) + k0 / r0, Ds[-1]), (-k0 / r0 + k1 / r1, Ds[-2]), (-k1 / r1, Ds[-3])])

    def integrate(self, pred, x, nodes, generator):
        Ds: list[torch.Tensor] = []
        for i, order in enumerate(self.orders(nodes)):
            Ds = (Ds + [pred.x0(x, i)])[-3:]
            x = self.after_step(self.update(x, i, order, Ds, nodes, generator), nodes, i + 1)
        return x


@register
class DPMSolverPP2M(_Multistep):
    """``method="dpmpp_2m"``: DPM-Solver++(2M); NFE = steps. Options: ``spacing`` ("logsnr"),
    ``rho``, ``alphas``, ``lower_order_final`` (None: True below 10 steps)."""

    name = "dpmpp_2m"
    summary = "DPM-Solver++(2M), multistep data prediction (Lu et al. 2022b, Alg. 2)"
    order = 2
    solver_order = 2


@register
class DPMSolverPP3M(_Multistep):
    """``method="dpmpp_3m"``: multistep DPM-Solver++ with three data predictions; NFE = steps; options as
    dpmpp_2m plus ``variant``: "peers" (default: diffusers' / k-diffusion's coefficient of the second
    difference, order 2 asymptotically) or "taylor" (order 3); see the module docstring."""

    name = "dpmpp_3m"
    summary = "DPM-Solver++(3M), third-order multistep data prediction (Lu et al. 2022b)"
    options = {**_Multistep.options, "variant": "peers"}
    order = 3
    solver_order = 3

    def order_of(self):
        return 3 if self.opts["variant"] == "taylor" else 2

    def validate(self):
        super().validate()
        check_choice("variant", self.opts["variant"], ("taylor", "peers"))


@register
class DPMSolverPP2MSDE(_Multistep):
    """``method="dpmpp_2m_sde"``: SDE-DPM-Solver++(2M), noise from ``generator``; NFE = steps."""

    name = "dpmpp_2m_sde"
    summary = "SDE-DPM-Solver++(2M) (Lu et al. 2022b, App.; diffusers' sde-dpmsolver++)"
    order = 1  # strong order of the stochastic update; its drift part is the 2M scheme
    solver_order = 2
    stochastic = True

    def update(self, x, i, order, Ds, nodes, generator):
        a, s, lam = nodes.alpha, nodes.sigma, nodes.lam
        if s[i + 1] == 0.0:
            return a[i + 1] * Ds[-1]
        h = lam[i + 1] - lam[i]
        one_m = -math.expm1(-2.0 * h)  # 1 - e^{-2h}
        ca = a[i + 1] * one_m
        terms = [(ca, Ds[-1])]
        if order >= 2:  # D = D_i + (D_i - D_{i-1}) / (2 r0)
            r0 = (lam[i] - lam[i - 1]) / h
            terms = [(ca * (1.0 + 0.5 / r0), Ds[-1]), (-ca * 0.5 / r0, Ds[-2])]
        noise = randn(x.shape, generator, x.device, x.dtype)
        return lincomb(x, s[i + 1] / s[i] * math.exp(-h), terms + [(s[i + 1] * math.sqrt(one_m), noise)])
