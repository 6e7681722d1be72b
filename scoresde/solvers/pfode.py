"""``method="ode"``: the probability-flow ODE integrated by torchdiffeq from T to eps.

dx/dt = f(x, t) - 1/2 g(t)^2 s(x, t) (Song et al. 2021, Eq. (13)); the drift is
:func:`scoresde.likelihood.pf_drift`, the integrator :func:`scoresde.solvers.ode.solve_ode`
(it keeps t inside [eps, T], counts NFE exactly and solves float16 / bfloat16 states in
float32). Adaptive methods (default dopri5, rtol = atol = 1e-5) report their NFE afterwards;
fixed-grid ones ("rk4", "euler", ...) need ``steps``. ``denoise=True`` adds Tweedie's step.
``time_variable="lambda"`` integrates in s = -1/2 log-SNR instead of t (:mod:`scoresde.likelihood_ode`;
the same map, other step sizes).

Small problems (issue 11): the default 1e-5 is the reference's setting for images. On a 2-D
Gaussian oracle (VPSDE, 500 points) the ODE map at rtol = atol = 1e-3 / 1e-4 / 1e-5 is off by
6.4e-3 / 1.7e-3 / 2.6e-5 at most (RMS 1.4e-3 / 3.5e-4 / 5.2e-6) from the exact flow; a 2-D toy
whose network makes the default slow (two_moons' MLP: 1815 calls at 1e-5) can pass
``rtol=atol=1e-3`` for a sample within about 1e-2 of the flow's.

Reference: Song et al. 2021, Sec. 4.3 and App. D.2; Chen et al. 2018 (torchdiffeq).
"""
from __future__ import annotations

from .._checks import check_choice, check_positive
from ..grids import check_eps, time_grid
from ..likelihood_ode import TIME_VARIABLES, TimeChange, flow_field
from .base import Plan, Solver, call_hook, register

#: with a step hook (constrained sampling) the ODE is solved in this many pieces (at most ``steps`` of
#: a fixed-grid method, whose steps are spread over them), the hook between them
HOOK_SEGMENTS = 20
from .ode import ADAPTIVE_METHODS, METHODS as ODE_METHODS, solve_ode


@register
class ProbabilityFlowODE(Solver):
    """The probability-flow ODE by a torchdiffeq method; options ``ode_method``, ``rtol``, ``atol``,
    ``max_nfe``, ``min_step`` (see :func:`scoresde.solvers.ode.solve_ode`) and ``time_variable``
    ("t" or "lambda", see :mod:`scoresde.likelihood_ode`)."""

    name = "ode"
    summary = "the probability-flow ODE through torchdiffeq (Song et al. 2021, Eq. (13))"
    options = {"ode_method": "dopri5", "rtol": 1e-5, "atol": 1e-5, "max_nfe": None, "min_step": None,
               "time_variable": "t"}
    steps_kind = "adaptive"

    def nfe(self, steps):
        return None

    def plan(self, score_fn, sde, steps, eps):
        eps = check_eps(sde.default_eps if eps is None else eps, sde)
        check_choice("ode_method", self.opts["ode_method"], ODE_METHODS)
        check_choice("time_variable", self.opts["time_variable"], TIME_VARIABLES)
        if steps is not None:
            check_positive("steps", steps, integer=True)
        if self.opts["ode_method"] not in ADAPTIVE_METHODS and steps is None:
            raise ValueError(f"the fixed-grid ode_method {self.opts['ode_method']!r} needs steps (an integer >= 1)")
        return Plan(nfe=None, steps=steps, times=None, tweedie_eps=eps, data={"eps": eps})

    def solve(self, score, sde, x, plan, *, generator=None, denoise=True, hook=None):
        o = self.opts
        eps = plan.data["eps"]
        tc = TimeChange(sde, o["time_variable"], eps, sde.T)
        field = flow_field(score, sde, tc, x.shape[0])
        # with a step hook the solve is cut at HOOK_SEGMENTS log-SNR-uniform times and the hook applied there
        # (a fixed-grid method's ``steps`` spread over the pieces, fewer pieces than steps if need be: steps in all)
        pieces = 1 if hook is None else HOOK_SEGMENTS if plan.steps is None else min(HOOK_SEGMENTS, plan.steps)
        ends = [sde.T, eps] if pieces == 1 else time_grid(sde, pieces, eps, "logsnr").tolist()
        split = [None] * pieces if plan.steps is None else [plan.steps // pieces + (k < plan.steps % pieces)
                                                            for k in range(pieces)]
        x, _ = call_hook(hook, x, x, sde, ends[0])
        for t0, t1, steps in zip(ends[:-1], ends[1:], split):
            x = solve_ode(field, x, tc.s_of_t(t0), tc.s_of_t(t1), method=o["ode_method"], rtol=o["rtol"], atol=o["atol"],
                          steps=steps, max_nfe=o["max_nfe"], min_step=o["min_step"]).y
            x, _ = call_hook(hook, x, x, sde, t1)
        return x
