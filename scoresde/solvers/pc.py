"""The grid samplers of the reverse SDE: predictor-only loops and predictor-corrector (PC).

* "euler_maruyama", "reverse_diffusion", "ancestral": the predictor of that name
  (:mod:`scoresde.solvers.predictors`) at every step of the grid
  :func:`scoresde.grids.time_grid` from T to eps; NFE = steps.
* "pc": at each grid time the corrector (:mod:`scoresde.solvers.correctors`), then the
  predictor (Song et al. 2021, Alg. 1-3); NFE = steps (1 + corrector_steps).

``denoise=True`` returns the predictor's noise-free mean of the last step.

Reference: Song et al. 2021, "Score-Based Generative Modeling through Stochastic Differential
Equations", Sec. 4.2, Eq. (6), (46)-(47), Alg. 1-5.
"""
from __future__ import annotations

import torch

from .._checks import check_choice, check_positive
from ..grids import SPACINGS, check_eps, time_grid
from .base import Plan, Solver, call_hook, register
from .common import forward_jump
from .correctors import CORRECTORS
from .predictors import PREDICTORS, step_coefficients


class _GridSampler(Solver):
    """A predictor (and optionally a corrector) at every step of a ``time_grid``."""

    options = {"spacing": "uniform"}
    order = 1
    stochastic = True

    def plan(self, score_fn, sde, steps, eps):
        eps = check_eps(sde.default_eps if eps is None else eps, sde)
        steps = sde.N if steps is None else steps
        check_positive("steps", steps, integer=True)
        check_choice("spacing", self.opts["spacing"], SPACINGS)
        self.validate()
        grid = time_grid(sde, steps, eps, self.opts["spacing"])
        return Plan(nfe=self.nfe(steps), steps=steps, times=grid)

    def with_schedule(self, plan: Plan, schedule) -> Plan:
        """The plan on a non-monotone time ``schedule`` (RePaint resampling; forward jumps cost no NFE)."""
        down = sum(1 for a, b in zip(schedule[:-1], schedule[1:]) if b < a)
        return Plan(nfe=self.nfe(down), steps=down, times=torch.as_tensor(schedule, dtype=torch.float64),
                    tweedie_eps=plan.tweedie_eps, data=plan.data)

    def validate(self) -> None:
        """Check the method's own options (ValueError / TypeError naming them)."""

    def predictor_name(self) -> str:
        return self.name

    def corrector(self, sde, score):
        return None

    def solve(self, score, sde, x, plan, *, generator=None, denoise=True, hook=None):
        predictor = PREDICTORS[check_choice("predictor", self.predictor_name(), tuple(PREDICTORS))](sde, score)
        corrector = self.corrector(sde, score)
        ts = plan.times.tolist()
        # every step's scalars at once (one vectorised pass over the grid, none in the loop)
        down = [(a, b) for a, b in zip(ts[:-1], ts[1:]) if b <= a]
        coefs = iter(step_coefficients(predictor, down))
        alphas = iter(corrector.alphas(down) if corrector is not None else ())
        x, x_mean = call_hook(hook, x, x, sde, ts[0])
        for k in range(len(ts) - 1):
            if ts[k + 1] > ts[k]:  # a RePaint jump back in time: the forward kernel from ts[k] to ts[k + 1]
                x = forward_jump(sde, x, ts[k], ts[k + 1], generator)
                x, x_mean = call_hook(hook, x, x, sde, ts[k + 1])
                continue
            if corrector is not None:
                x, x_mean = corrector.step(x, ts[k], ts[k + 1], generator, alpha=next(alphas))
                if hook is not None:
                    x, x_mean = call_hook(hook, x, x_mean, sde, ts[k])
            x, x_mean = predictor.step(x, ts[k], ts[k + 1], generator, coef=next(coefs))
            if hook is not None:
                x, x_mean = call_hook(hook, x, x_mean, sde, ts[k + 1])
        return x_mean if denoise else x


@register
class EulerMaruyamaSampler(_GridSampler):
    name = "euler_maruyama"
    summary = "Euler-Maruyama on the reverse SDE (Song et al. 2021, Eq. (6))"


@register
class ReverseDiffusionSampler(_GridSampler):
    name = "reverse_diffusion"
    summary = "the SDE's own discretization reversed (Song et al. 2021, Eq. (46)-(47))"


@register
class AncestralSampler(_GridSampler):
    name = "ancestral"
    summary = "DDPM / SMLD ancestral sampling on the grid (Song et al. 2021, Eq. (47), App. F); VP and VE"


@register
class PCSampler(_GridSampler):
    name = "pc"
    summary = "predictor-corrector: Langevin corrector, then a predictor (Song et al. 2021, Alg. 1-5)"
    options = {"predictor": "reverse_diffusion", "corrector": "langevin", "snr": 0.16, "corrector_steps": 1,
               "corrector_norm": "batch", "spacing": "uniform"}

    def nfe(self, steps):
        # corrector_steps Langevin updates before each predictor step
        n = self.opts["corrector_steps"] if self.opts["corrector"] != "none" else 0
        return steps * (1 + n)

    def validate(self):
        check_choice("predictor", self.opts["predictor"], tuple(PREDICTORS))
        check_choice("corrector_norm", self.opts["corrector_norm"], ("batch", "sample"))
        check_choice("corrector", self.opts["corrector"], (*CORRECTORS, "none"))
        check_positive("snr", self.opts["snr"])
        check_positive("corrector_steps", self.opts["corrector_steps"], integer=True)

    def predictor_name(self):
        return self.opts["predictor"]

    def corrector(self, sde, score):
        cname = self.opts["corrector"]
        if cname == "none":
            return None
        kw = {"norm": self.opts["corrector_norm"]} if cname == "langevin" else {}
        return CORRECTORS[cname](sde, score, snr=self.opts["snr"], n_steps=self.opts["corrector_steps"], **kw)
