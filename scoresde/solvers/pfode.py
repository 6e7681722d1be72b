"""``method="ode"``: the probability-flow ODE integrated by torchdiffeq from T to eps.

dx/dt = f(x, t) - 1/2 g(t)^2 s(x, t) (Song et al. 2021, Eq. (13)); the drift is
:func:`scoresde.likelihood.pf_drift`, the integrator :func:`scoresde.solvers.ode.solve_ode`
(it keeps t inside [eps, T], counts NFE exactly and solves float16 / bfloat16 states in
float32). Adaptive methods (default dopri5, rtol = atol = 1e-5) report their NFE afterwards;
fixed-grid ones ("rk4", "euler", ...) need ``steps``. ``denoise=True`` adds Tweedie's step.

Reference: Song et al. 2021, Sec. 4.3 and App. D.2; Chen et al. 2018 (torchdiffeq).
"""
from __future__ import annotations

from .._checks import check_choice, check_positive
from ..grids import check_eps, time_grid
from ..likelihood import pf_drift
from .base import Plan, Solver, call_hook, register

#: with a step hook (constrained sampling) the ODE is solved in this many pieces, the hook between them
HOOK_SEGMENTS = 20
from .ode import ADAPTIVE_METHODS, METHODS as ODE_METHODS, solve_ode


@register
class ProbabilityFlowODE(Solver):
    """The probability-flow ODE by a torchdiffeq method; options ``ode_method``, ``rtol``, ``atol``,
    ``max_nfe``, ``min_step`` (see :func:`scoresde.solvers.ode.solve_ode`)."""

    name = "ode"
    summary = "the probability-flow ODE through torchdiffeq (Song et al. 2021, Eq. (13))"
    options = {"ode_method": "dopri5", "rtol": 1e-5, "atol": 1e-5, "max_nfe": None, "min_step": None}
    steps_kind = "adaptive"

    def nfe(self, steps):
        return None

    def plan(self, score_fn, sde, steps, eps):
        eps = check_eps(sde.default_eps if eps is None else eps, sde)
        check_choice("ode_method", self.opts["ode_method"], ODE_METHODS)
        if steps is not None:
            check_positive("steps", steps, integer=True)
        if self.opts["ode_method"] not in ADAPTIVE_METHODS and steps is None:
            raise ValueError(f"the fixed-grid ode_method {self.opts['ode_method']!r} needs steps (an integer >= 1)")
        return Plan(nfe=None, steps=steps, times=None, tweedie_eps=eps, data={"eps": eps})

    def solve(self, score, sde, x, plan, *, generator=None, denoise=True, hook=None):
        def field(t, y):
            return pf_drift(score, sde, y, t.reshape(1).expand(y.shape[0]))

        o = self.opts
        eps = plan.data["eps"]
        # with a step hook the solve is cut at HOOK_SEGMENTS log-SNR-uniform times and the hook applied there
        ends = [sde.T, eps] if hook is None else time_grid(sde, HOOK_SEGMENTS, eps, "logsnr").tolist()
        x, _ = call_hook(hook, x, x, sde, ends[0])
        for t0, t1 in zip(ends[:-1], ends[1:]):
            steps = plan.steps if hook is None or plan.steps is None else max(1, plan.steps // HOOK_SEGMENTS)
            x = solve_ode(field, x, t0, t1, method=o["ode_method"], rtol=o["rtol"], atol=o["atol"],
                          steps=steps, max_nfe=o["max_nfe"], min_step=o["min_step"]).y
            x, _ = call_hook(hook, x, x, sde, t1)
        return x
