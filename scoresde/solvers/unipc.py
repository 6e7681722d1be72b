"""UniPC: the unified predictor-corrector multistep solver, data-prediction form ("unipc").

From node i to i + 1 with h = lambda_{i+1} - lambda_i, the predictor UniP-p uses the data
predictions D_i, D_{i-1}, ..., D_{i-p+1}; after the score is evaluated at the predicted x_{i+1}
(the evaluation the next step needs anyway), the corrector UniC-p recomputes x_{i+1} from x_i
with D_{i+1} added, so the corrector costs no NFE: NFE = steps. The last step has no corrector.

With r_k = (lambda_{i-k} - lambda_i) / h, D1_k = (D_{i-k} - D_i) / r_k, hh = -h,
B(h) = hh ("bh1") or expm1(hh) ("bh2"), and b_j = j! h phi_{j+1}(hh) / B(h) (the recursion
phi_{k+1} = phi_k / hh - 1 / (k+1)!), the coefficients rho solve R rho = b with R_jk = r_k^(j-1)
(the predictor drops the newest point and uses rho = 1/2 at p = 2; the corrector solves the full
system, rho = 1/2 at p = 1):

    x_{i+1} = (sigma_{i+1} / sigma_i) x_i - alpha_{i+1} expm1(hh) D_i - alpha_{i+1} B(h) sum_k rho_k D1_k.

Warm-up on the first steps, ``lower_order_final`` (default True: the last steps lower their
order, as UniPC's reference code and diffusers; on an 8-mode mixture at 10 NFE on a karras grid
it halves the error, benchmarks/bench_solvers.py), order 1 onto sigma = 0.

Reference: Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast
Sampling of Diffusion Models", Alg. 1-3 and Eq. (7)-(9); diffusers' UniPCMultistepScheduler
(``predict_x0=True``) as the peer the tests match.
"""
from __future__ import annotations

import functools
import math

import torch

from .._checks import check_choice
from .base import register
from .node_solver import NodeSolver, check_order, lincomb, lower_order_final_default, step_orders

VARIANTS = ("bh1", "bh2")


@functools.lru_cache(maxsize=4096)
def _coefficients(rks: tuple[float, ...], h: float, variant: str, order: int, corrector: bool) -> list[float]:
    """rho of UniP (``corrector=False``) or UniC for ``order`` with ratios ``rks`` (last is 1).

    Memoised: a pure function of the grid, so repeated solves on the same grid (the usual use) skip the
    Python arithmetic (about 20 us a step). The result is shared: do not modify it."""
    hh = -h
    h_phi_1 = math.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1.0
    B_h = hh if variant == "bh1" else math.expm1(hh)
    R, b, fact = [], [], 1
    for j in range(1, order + 1):
        R.append([r ** (j - 1) for r in rks])
        b.append(h_phi_k * fact / B_h)
        fact *= j + 1
        h_phi_k = h_phi_k / hh - 1.0 / fact
    if corrector:
        return [0.5] if order == 1 else _solve(R, b)
    if order == 1:
        return []
    return [0.5] if order == 2 else _solve([row[:-1] for row in R[:-1]], b[:-1])


def _solve(A: list[list[float]], b: list[float]) -> list[float]:
    """x with A x = b for a small (<= 3 x 3) system, Gaussian elimination with partial pivoting in floats
    (a step's coefficients, computed without creating tensors)."""
    n = len(b)
    M = [list(map(float, row)) + [float(v)] for row, v in zip(A, b)]
    for c in range(n):
        p = max(range(c, n), key=lambda r: abs(M[r][c]))
        M[c], M[p] = M[p], M[c]
        for r in range(c + 1, n):
            f = M[r][c] / M[c][c]
            M[r] = [u - f * w for u, w in zip(M[r], M[c])]
    x = [0.0] * n
    for r in reversed(range(n)):
        x[r] = (M[r][n] - sum(M[r][k] * x[k] for k in range(r + 1, n))) / M[r][r]
    return x


@register
class UniPC(NodeSolver):
    """``method="unipc"``: UniPC multistep with the UniC corrector; NFE = steps.

    Options: ``order`` 1, 2 or 3 (default 2, as diffusers; UniPC's CIFAR-10 results use 3),
    ``variant`` "bh1" / "bh2" (default "bh2"; "bh1" is recommended below 10 steps,
    unconditional), ``lower_order_final`` (True; None: True below 10 steps), ``spacing`` ("logsnr"),
    ``rho``, ``alphas``.
    """

    name = "unipc"
    summary = "UniPC multistep predictor-corrector, corrector at no extra NFE (Zhao et al. 2023)"
    options = {**NodeSolver.options, "order": 2, "variant": "bh2", "lower_order_final": True}

    def order_of(self):
        return self.opts["order"]

    def validate(self):
        check_order(self.opts["order"], (1, 2, 3))
        check_choice("variant", self.opts["variant"], VARIANTS)
        lower_order_final_default(self.opts["lower_order_final"], 0)

    def _update(self, x, i, order, Ds, lams, nodes, D_next=None):
        """UniP (D_next None) or UniC step from node i to i + 1; Ds/lams newest last, Ds[-1] at node i."""
        a, s, lam = nodes.alpha, nodes.sigma, nodes.lam
        if s[i + 1] == 0.0:
            return a[i + 1] * Ds[-1]
        h = lam[i + 1] - lam[i]
        m0 = Ds[-1]
        rks = tuple((lams[-1 - k] - lam[i]) / h for k in range(1, order)) + (1.0,)
        variant = self.opts["variant"]
        hh = -h
        B_h = hh if variant == "bh1" else math.expm1(hh)
        rhos = _coefficients(rks, h, variant, order, corrector=D_next is not None)
        # x_{i+1} = (s'/s) x - a' expm1(-h) m0 - a' B(h) [sum_k rho_k (D_k - m0) / r_k (+ rho_c (D_next - m0))],
        # gathered into one coefficient per tensor: 1 + (number of tensors) state-sized operations
        scale = -(a[i + 1] * B_h)
        terms = [(scale * rho / rks[k], Ds[-2 - k]) for k, rho in enumerate(rhos[:order - 1])]
        if D_next is not None:
            terms.append((scale * rhos[-1], D_next))
        c_m0 = -(a[i + 1] * math.expm1(hh)) - sum(c for c, _ in terms)
        return lincomb(x, s[i + 1] / s[i], [(c_m0, m0)] + terms)

    def integrate(self, pred, x, nodes, generator):
        M = len(nodes)
        lof = lower_order_final_default(self.opts["lower_order_final"], M)
        orders = step_orders(M, self.opts["order"], lof, nodes.ends_at_data())
        Ds: list[torch.Tensor] = []
        lams: list[float] = []
        x_prev, prev_order = None, None
        for i, order in enumerate(orders):
            D = pred.x0(x, i)
            if x_prev is not None:  # UniC: correct x_i with the new evaluation, which is kept as it is
                x = self.after_step(self._update(x_prev, i - 1, prev_order, Ds, lams, nodes, D_next=D), nodes, i)
            Ds, lams = (Ds + [D])[-3:], (lams + [nodes.lam[i]])[-3:]
            x_prev, prev_order = x, order
            x = self.after_step(self._update(x, i, order, Ds, lams, nodes), nodes, i + 1)
        return x
