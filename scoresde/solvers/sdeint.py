"""The torchsde adapter: the reverse-time SDE integrated by ``torchsde.sdeint``.

torchsde only integrates forwards in time, on a 2-D state (batch, channels). The reverse SDE
dx = [f(x, t) - g(t)^2 s(x, t)] dt + g(t) dw-bar, t from T down to eps (Song et al. 2021,
Eq. (6)), is therefore solved in the variable s = T - t, increasing over [0, T - eps]:

    dx = -[f(x, T - s) - g(T - s)^2 s_theta(x, T - s)] ds + g(T - s) dW_s,

with x flattened to (B, D), diagonal noise (g does not depend on x, so the Ito and
Stratonovich forms coincide and every torchsde method applies), a float64 time grid, and fixed
steps of length (T - eps) / steps.

Brownian motion, always seeded from the caller's ``torch.Generator`` (torchsde's own default
takes its seed from numpy's global generator, so ``torch.manual_seed`` would not reproduce it):
* "euler": :class:`IncrementBrownian`, which only draws the N(0, dt I) increment of each step
  from the generator (per-step cost of a hand-written loop; valid because Euler queries the
  path once per step, in order);
* other methods: ``torchsde.BrownianInterval`` with ``entropy`` drawn from the generator (and
  the space-time Levy area for "srk"); with a list of per-sample generators, one interval per
  sample.

Reference: Song et al. 2021, Eq. (6); Li et al. 2020 and Kidger et al. 2021 (torchsde,
BrownianInterval); torchsde issue #115 (reverse time by a change of variable).
"""
from __future__ import annotations

import math

import torch

from .._checks import bcast, check_choice, check_positive
from ..grids import check_eps, time_grid
from ..sde import SDE
from .base import Plan, Solver, call_hook, register
from .common import ScoreEval, randn, seed_from

#: torchsde methods offered, with the SDE calculus each expects (equal here: g is state-free).
SDE_METHODS = {"euler": "ito", "milstein": "ito", "srk": "ito", "heun": "stratonovich",
               "midpoint": "stratonovich", "reversible_heun": "stratonovich", "euler_heun": "stratonovich"}
#: score evaluations of a solve with ``steps`` steps: (per step, once), counted (tests check it).
#: The shape probe of ``sdeint`` is answered from memory where the first step repeats it; "srk"
#: (9 evaluations per step for diagonal noise) and "reversible_heun" (an initial evaluation)
#: cannot reuse it.
NFE = {"euler": (1, 0), "milstein": (1, 0), "srk": (9, 1), "heun": (2, 0), "midpoint": (2, 0),
       "reversible_heun": (1, 1), "euler_heun": (1, 0)}


class IncrementBrownian:
    """Brownian motion for fixed, in-order steps: each query (ta, tb) draws a fresh N(0, (tb - ta) I).

    Duck-types torchsde's ``BaseBrownian`` for the Euler method only (no Levy area, no
    revisiting of intervals, not adaptive, not for the adjoint).

    Arguments: shape (B, D); generator: a torch.Generator, a list of B of them, or None; dtype, device.
    """

    levy_area_approximation = "none"

    def __init__(self, shape, generator, dtype, device):
        self.shape, self.generator, self.dtype, self.device = tuple(shape), generator, dtype, device

    def __call__(self, ta, tb=None, return_U=False, return_A=False):
        if tb is None or return_U or return_A:
            raise ValueError("IncrementBrownian only answers increment queries bm(ta, tb) of the Euler method")
        dt = float(tb) - float(ta)
        return randn(self.shape, self.generator, self.device, self.dtype) * math.sqrt(dt)


class _StackedBrownian:
    """One torchsde BrownianInterval per sample, queried together (per-sample generators)."""

    def __init__(self, intervals):
        self.intervals = intervals
        self.levy_area_approximation = intervals[0].levy_area_approximation
        b0 = intervals[0]
        self.shape = (len(intervals), *b0.shape[1:])
        self.dtype, self.device = b0.dtype, b0.device

    def __call__(self, ta, tb=None, return_U=False, return_A=False):
        outs = [bm(ta, tb, return_U=return_U, return_A=return_A) for bm in self.intervals]
        if isinstance(outs[0], tuple):
            return tuple(torch.cat(parts) for parts in zip(*outs))
        return torch.cat(outs)


class _ReverseTimeSDE:
    """torchsde's SDE protocol for the reverse SDE in s = T - t on a flattened state."""

    noise_type = "diagonal"

    def __init__(self, sde: SDE, score: ScoreEval, shape, eps: float, sde_type: str, T: float | None = None):
        self.sde, self.score, self.shape = sde, score, tuple(shape)
        self.T = float(sde.T if T is None else T)  # the start of this solve (grid[0]); s = T - t
        self.eps, self.sde_type = float(eps), sde_type
        self._memo = None

    def _t(self, s: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        t = (self.T - s.to(torch.float64)).clamp(self.eps, self.T)
        return self.score.time(t, x)

    def f(self, s, y):
        # sdeint probes f(ts[0], y0) for shapes and then takes its first step at the same
        # (ts[0], y0): answer the second call from memory so the probe costs no NFE.
        memo, self._memo = self._memo, None
        if memo is not None and memo[0] is y and memo[1] == float(s):
            return memo[2]
        x = y.view(self.shape)
        t = self._t(s, x)
        drift, g = self.sde.sde(x, t)
        out = (bcast(g**2, x).to(x.dtype) * self.score(x, t) - drift).reshape(y.shape)
        self._memo = (y, float(s), out)
        return out

    def g(self, s, y):
        x = y.view(self.shape)
        g = self.sde.diffusion_coeff(self._t(s, x)).to(y.dtype)
        # "+ 0 * y" keeps g in y's autograd graph, which Milstein's d g / d y needs (it is 0).
        return g[:, None].expand_as(y) + 0.0 * y


def reverse_sdeint(score: ScoreEval, sde: SDE, x: torch.Tensor, grid: torch.Tensor, *, sde_method: str = "euler",
                   generator=None) -> torch.Tensor:
    """Integrate the reverse SDE from x at grid[0] (T, or any later start of a piece) to grid[-1] with ``torchsde.sdeint``.

    Arguments:
        score: the checked, counted score. x: (B, *S) start, a sample of the prior.
        grid: the uniform time grid (steps + 1,) float64 from :func:`scoresde.grids.time_grid`;
            torchsde takes fixed steps of length (T - eps) / steps.
        sde_method: one of :data:`SDE_METHODS`.
        generator: a torch.Generator, a list of B generators (one Brownian path per sample) or None.
    Returns: (B, *S) in x's dtype, the state at eps.
    NFE: ``a * steps + b`` with (a, b) = ``NFE[sde_method]`` (euler: exactly ``steps``).
    """
    import torchsde

    steps = len(grid) - 1
    T, eps = float(grid[0]), float(grid[-1])
    B = x.shape[0]
    y0 = x.reshape(B, -1)
    ts = torch.tensor([0.0, T - eps], dtype=torch.float64, device=x.device)
    # a hair longer than (T - eps) / steps so that float64 sums of dt never leave a sliver of a
    # step (and an extra NFE) before T - eps; torchsde clips the last step to end exactly there
    dt = (T - eps) / steps * (1.0 + 1e-10)
    if sde_method == "euler":
        bm = IncrementBrownian(y0.shape, generator, y0.dtype, y0.device)
    else:
        levy = "space-time" if sde_method == "srk" else "none"
        seeds = seed_from(generator, x.device)

        def interval(size, seed):
            return torchsde.BrownianInterval(t0=ts[0], t1=ts[-1], size=size, dtype=y0.dtype, device=y0.device,
                                             entropy=seed, dt=dt, levy_area_approximation=levy)

        if isinstance(generator, (list, tuple)):
            bm = _StackedBrownian([interval((1, y0.shape[1]), s) for s in seeds])
        else:
            bm = interval(tuple(y0.shape), seeds[0])
    rsde = _ReverseTimeSDE(sde, score, x.shape, eps, SDE_METHODS[sde_method], T=T)
    ys = torchsde.sdeint(rsde, y0, ts, bm=bm, method=sde_method, dt=dt)
    return ys[-1].reshape(x.shape).to(x.dtype)



@register
class TorchsdeSampler(Solver):
    """``method="sde"``: the reverse SDE through ``torchsde.sdeint`` on a uniform grid (see the module docstring).

    Options: ``sde_method`` (one of :data:`SDE_METHODS`, default "euler"). NFE = a steps + b with
    (a, b) = :data:`NFE` [sde_method]; ``denoise=True`` adds Tweedie's step at eps (+1).
    """

    name = "sde"
    summary = "the reverse SDE through torchsde.sdeint (Song et al. 2021, Eq. (6))"
    options = {"sde_method": "euler"}
    order = 1
    stochastic = True

    def nfe(self, steps):
        per_step, once = NFE[self.opts["sde_method"]]
        return steps * per_step + once

    def plan(self, score_fn, sde, steps, eps):
        eps = check_eps(sde.default_eps if eps is None else eps, sde)
        steps = sde.N if steps is None else steps
        check_positive("steps", steps, integer=True)
        check_choice("sde_method", self.opts["sde_method"], tuple(SDE_METHODS))
        return Plan(nfe=self.nfe(steps), steps=steps, times=time_grid(sde, steps, eps, "uniform"), tweedie_eps=eps)

    def solve(self, score, sde, x, plan, *, generator=None, denoise=True, hook=None):
        method = self.opts["sde_method"]
        if hook is None:
            return reverse_sdeint(score, sde, x, plan.times, sde_method=method, generator=generator)
        # with a step hook: one sdeint call per grid step, the hook between them
        ts = plan.times
        x, _ = call_hook(hook, x, x, sde, float(ts[0]))
        for k in range(len(ts) - 1):
            x = reverse_sdeint(score, sde, x, ts[k:k + 2], sde_method=method, generator=generator)
            x, _ = call_hook(hook, x, x, sde, float(ts[k + 1]))
        return x
