"""DEIS: the diffusion exponential integrator sampler, multistep tAB in log sigma-tilde ("deis").

In x~ = x / alpha and rho = sigma / alpha = exp(-lambda) the probability-flow ODE of every SDE
here is dx~/drho = eps(x, t) (the noise prediction). tAB-p (Zhang & Chen 2023, Eq. (15) with
the "rho" time scaling; diffusers' DEISMultistepScheduler, algorithm "deis") interpolates the
last p noise predictions by a Lagrange polynomial in u = log rho and integrates it exactly over
the step:

    x~_{i+1} = x~_i + sum_j c_j eps_{i-j},   c_j = int_{u_i}^{u_{i+1}} l_j(u) e^u du,

l_j the Lagrange basis on u_i, u_{i-1}, ..., u_{i-p+1}; the integrals are evaluated by 24-point
Gauss-Legendre quadrature (exact to rounding for a polynomial times e^u on these intervals).
Order 1 is DDIM. Warm-up on the first steps, ``lower_order_final`` as the DPM-Solver family,
order 1 onto sigma = 0. NFE = steps.

Reference: Zhang & Chen 2023, "Fast Sampling of Diffusion Models with Exponential Integrator"
(ICLR), Sec. 4 and Eq. (15); diffusers' DEISMultistepScheduler as the peer the tests match.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .base import register
from .node_solver import NodeSolver, check_order, lower_order_final_default, step_orders

_GL_X, _GL_W = np.polynomial.legendre.leggauss(24)


def tab_coefficients_many(us: np.ndarray, u0: np.ndarray, u1: np.ndarray) -> np.ndarray:
    """c_j = int_{u0}^{u1} l_j(u) e^u du, l_j the Lagrange basis on the points us (newest first), for n steps
    at once: us (n, p), u0, u1 (n,) -> (n, p).

    One vectorised quadrature for all the steps of a solve (numpy calls on 24-element arrays
    step by step cost about 0.1 ms per step, 5-10 % of a step of a cheap network)."""
    us = np.asarray(us, dtype=np.float64)
    u0, u1 = np.asarray(u0, dtype=np.float64), np.asarray(u1, dtype=np.float64)
    n, p = us.shape
    half = 0.5 * (u1 - u0)
    u = (0.5 * (u0 + u1))[:, None] + half[:, None] * _GL_X[None, :]  # (n, 24)
    w = half[:, None] * _GL_W[None, :] * np.exp(u)
    diff = u[:, None, :] - us[:, :, None]  # (n, p, 24): u - u_k
    # l_j(u) = prod_{k != j} (u - u_k) / (u_j - u_k): prefix times suffix products over k
    ones = np.ones((n, 1, u.shape[1]))
    before = np.cumprod(np.concatenate([ones, diff[:, :-1]], axis=1), axis=1)
    after = np.cumprod(np.concatenate([ones, diff[:, :0:-1]], axis=1), axis=1)[:, ::-1]
    denom = us[:, :, None] - us[:, None, :]  # (n, p, p): u_j - u_k
    idx = np.arange(p)
    denom[:, idx, idx] = 1.0
    return (before * after * w[:, None, :]).sum(axis=2) / np.prod(denom, axis=2)


@register
class DEIS(NodeSolver):
    """``method="deis"``: DEIS tAB multistep, ``order`` 1, 2 or 3 (default 3); NFE = steps.

    Options: ``order``, ``lower_order_final`` (None: True below 10 steps), ``spacing``
    ("logsnr"), ``rho``, ``alphas``.
    """

    name = "deis"
    summary = "DEIS tAB multistep, Lagrange extrapolation of eps in log(sigma/alpha) (Zhang & Chen 2023)"
    options = {**NodeSolver.options, "order": 3, "lower_order_final": None}

    def order_of(self):
        return self.opts["order"]

    def validate(self):
        check_order(self.opts["order"], (1, 2, 3))
        lower_order_final_default(self.opts["lower_order_final"], 0)

    def integrate(self, pred, x, nodes, generator):
        M = len(nodes)
        lof = lower_order_final_default(self.opts["lower_order_final"], M)
        orders = step_orders(M, self.opts["order"], lof, nodes.ends_at_data())
        a, s = nodes.alpha, nodes.sigma
        u = [math.log(si / ai) if si > 0 else -math.inf for si, ai in zip(s, a)]
        coefs_of = {}  # the tAB coefficients of every step, computed together per order
        for p in set(orders):
            steps_p = [i for i, o in enumerate(orders) if o == p and s[i + 1] != 0.0]
            if steps_p:
                table = tab_coefficients_many([[u[i - j] for j in range(p)] for i in steps_p],
                                              [u[i] for i in steps_p], [u[i + 1] for i in steps_p])
                coefs_of.update(zip(steps_p, table.tolist()))
        epss = []
        for i, order in enumerate(orders):
            t = nodes.t(i)
            score = pred.score(x, t)
            eps = -s[i] * score
            epss = (epss + [eps])[-3:]
            xt = x / a[i]
            if s[i + 1] == 0.0:  # onto the data: x~ + (0 - rho_i) eps = the data prediction
                x = self.after_step(a[i + 1] * (xt - (s[i] / a[i]) * eps), nodes, i + 1)
                continue
            for j, c in enumerate(coefs_of[i]):
                xt = torch.add(xt, epss[-1 - j], alpha=c)
            x = self.after_step(a[i + 1] * xt, nodes, i + 1)
        return x
