"""What the exponential-integrator solvers share: node construction, the data / noise
predictions of the score, lower-order rules, and float32 work for half-precision states.

With the perturbation kernel N(alpha x_0, sigma^2 I) the score s(x, t) gives the noise
prediction eps = -sigma s and the data prediction (Tweedie) x0 = (x + sigma^2 s) / alpha;
DPM-Solver works with eps, DPM-Solver++ and UniPC with x0, EDM's Heun with
x0 in sigma-tilde = sigma / alpha.

Reference: Lu et al. 2022a, Eq. (3.1)-(3.4); Lu et al. 2022b, Sec. 3-4.
"""
from __future__ import annotations

import torch

from .ode import HALF_DTYPES
from .base import Plan, Solver
from .nodes import Nodes, make_nodes


class Predictions:
    """The score at node i (or at any time t) as data / noise predictions, counted by ``score``."""

    def __init__(self, score, sde, nodes: Nodes):
        self.score, self.sde, self.nodes = score, sde, nodes
        self._at: dict[float, tuple[float, float, float]] = {}

    def x0(self, x: torch.Tensor, i: int) -> torch.Tensor:
        """Data prediction (x + sigma_i^2 s(x, t_i)) / alpha_i at node i; 1 NFE."""
        n = self.nodes
        s = self.score(x, n.t(i))
        return torch.add(x, s, alpha=n.sigma[i] ** 2).div_(n.alpha[i])  # two operations, the second in place

    def eps(self, x: torch.Tensor, i: int) -> torch.Tensor:
        """Noise prediction -sigma_i s(x, t_i) at node i; 1 NFE."""
        return -self.nodes.sigma[i] * self.score(x, self.nodes.t(i))

    def at_lambda(self, lam: float) -> tuple[float, float, float]:
        """(t, alpha, sigma) of the continuous SDE where lambda = log(alpha / sigma) equals ``lam``."""
        lam = float(lam)
        if lam not in self._at:
            self.prefetch([lam])
        return self._at[lam]

    def prefetch(self, lams) -> None:
        """Compute :meth:`at_lambda` for every lambda of ``lams`` (floats) in one vectorised call, so that
        a solver's intermediate times cost no tensor arithmetic inside its loop (about 0.15 ms each)."""
        lams = [float(v) for v in lams if float(v) not in self._at]
        if not lams:
            return
        t = self.sde.t_from_log_snr(2.0 * torch.tensor(lams, dtype=torch.float64))
        t = t.clamp(float(self.nodes.times[-1]), self.sde.T)
        self._at.update(zip(lams, zip(t.tolist(), self.sde.mean_coeff(t).tolist(), self.sde.marginal_std(t).tolist())))

    def eps_at(self, x: torch.Tensor, t: float, sigma: float) -> torch.Tensor:
        """Noise prediction -sigma s(x, t) at an intermediate time t; 1 NFE."""
        return -sigma * self.score(x, t)

    def x0_at(self, x: torch.Tensor, t: float, alpha: float, sigma: float) -> torch.Tensor:
        """Data prediction at an intermediate time t; 1 NFE."""
        return torch.add(x, self.score(x, t), alpha=sigma**2).div_(alpha)


def lincomb(x: torch.Tensor, cx: float, terms) -> torch.Tensor:
    """cx x + sum_j c_j t_j for ``terms`` = [(c_j, t_j), ...] (float coefficients): one multiply and one fused
    ``torch.add(..., alpha=c_j)`` per term, the fewest state-sized operations for a multistep update
    (on a cheap network each costs about 1 % of a step)."""
    out = x * cx
    for c, t in terms:
        out = torch.add(out, t, alpha=c)
    return out


def step_orders(steps: int, order: int, lower_order_final: bool, ends_at_data: bool) -> list[int]:
    """Order of each multistep step: warm-up min(order, i) on the first steps (i = 1..steps),
    min(order, steps + 1 - i) at the end with ``lower_order_final``, and 1 on a step onto
    sigma = 0 (a higher order there needs lambda = inf: diffusers #9007)."""
    orders = []
    for i in range(1, steps + 1):
        o = min(order, i)
        if lower_order_final:
            o = min(o, steps + 1 - i)
        orders.append(o)
    if ends_at_data:
        orders[-1] = 1
    return orders


def lower_order_final_default(value, steps: int) -> bool:
    """``lower_order_final``: None means True below 10 steps, as the reference DPM-Solver code."""
    if value is None:
        return steps < 10
    if not isinstance(value, bool):
        raise TypeError(f"lower_order_final must be True, False or None (True below 10 steps); got {value!r}")
    return value


def check_order(order, allowed: tuple) -> int:
    """``order`` as one of ``allowed``; ValueError / TypeError naming it otherwise."""
    if isinstance(order, bool) or not isinstance(order, int):
        raise TypeError(f"order must be an integer, one of {list(allowed)}; got {order!r}")
    if order not in allowed:
        raise ValueError(f"order must be one of {list(allowed)}; got {order}")
    return order


class NodeSolver(Solver):
    """Base of the solvers that step over :class:`~scoresde.solvers.nodes.Nodes`.

    Options shared by all: ``spacing`` of the grid ("logsnr" default; "uniform", "quadratic",
    "karras"), ``rho`` (> 0, "karras" only, default 7), ``alphas`` (None: "table" for a
    ``ScoreModel(discrete=True)``, else "continuous"). ``denoise=True`` ends with Tweedie's x0
    at eps (one extra NFE, counted) on continuous nodes; table nodes end on the data already.
    Half-precision states are integrated in float32 and cast back.
    """

    options = {"spacing": "logsnr", "rho": 7.0, "alphas": None}
    default_steps = 20
    #: whether the solver can run on table nodes (no evaluations between table steps)
    table_ok = True

    def validate(self) -> None:
        """Check the method's own options (TypeError / ValueError naming them)."""

    def nodes(self, score_fn, sde, steps, eps) -> Nodes:
        o = self.opts
        nodes = make_nodes(sde, score_fn, steps, eps, spacing=o["spacing"], rho=o["rho"], alphas=o["alphas"],
                           default_steps=self.default_steps)
        if nodes.source == "table" and not self.table_ok:
            raise ValueError(f"method {self.name!r} evaluates the score between grid nodes, which a discrete "
                             "(table) model cannot; use alphas='continuous' or a multistep method "
                             "('dpmpp_2m', 'dpmpp_3m', 'unipc')")
        return nodes

    def plan(self, score_fn, sde, steps, eps):
        self.validate()
        nodes = self.nodes(score_fn, sde, steps, eps)
        M = len(nodes)
        return Plan(nfe=self.nfe(M), steps=M, times=nodes.times, tweedie_eps=nodes.eps, data={"nodes": nodes})

    def solve(self, score, sde, x, plan, *, generator=None, denoise=True, hook=None):
        nodes = plan.data["nodes"]
        work = x.float() if x.dtype in HALF_DTYPES else x
        self._hook = hook
        work = self.after_step(work, nodes, 0)
        out = self.integrate(Predictions(score, sde, nodes), work, nodes, generator)
        return out.to(x.dtype)

    def after_step(self, x: torch.Tensor, nodes: Nodes, i: int) -> torch.Tensor:
        """The step hook (constrained sampling) at node i; x unchanged without one."""
        hook = getattr(self, "_hook", None)
        if hook is None:
            return x
        x, _ = hook(x, x, nodes.alpha[i], nodes.sigma[i])
        return x

    def integrate(self, pred: Predictions, x: torch.Tensor, nodes: Nodes, generator) -> torch.Tensor:
        """Walk the nodes from x at node 0; call ``self.after_step(x, nodes, i + 1)`` after each step."""
        raise NotImplementedError

