"""The torchsde adapter: the reverse-time SDE integrated by torchsde's fixed-step methods.

torchsde only integrates forwards in time, on a 2-D state (batch, channels). The reverse SDE
dx = [f(x, t) - g(t)^2 s(x, t)] dt + g(t) dw-bar, t from T down to eps (Song et al. 2021,
Eq. (6)), is therefore solved in the variable s = T - t, increasing over [0, T - eps]:

    dx = -[f(x, T - s) - g(T - s)^2 s_theta(x, T - s)] ds + g(T - s) dW_s,

with x flattened to (B, D) and the steps of the sampler's uniform float64 grid. g does not
depend on x, so the noise is *additive* (the Ito and Stratonovich forms coincide, Milstein's
correction term is exactly 0, and "srk" is Roessler's SRA1 scheme for additive noise: strong
order 1.5 at 2 evaluations per step instead of SRID2's 9); torchsde is given the product
g(t) v directly (``g_prod``), never a (B, D, D) matrix. "reversible_heun" needs the diffusion
itself and is solved as diagonal noise.

The steps are taken with torchsde's own solver classes (``torchsde._core.methods``, one
``step(t0, t1, y, extra)`` per grid step) rather than ``torchsde.sdeint``: sdeint probes the
drift once for shapes (a network call), compares tensor times on every step and cannot run a
step hook between steps without restarting the solver. The Brownian motion is
:class:`IncrementBrownian`: each step queries its interval once, in order, so an increment
drawn from the caller's ``torch.Generator`` (with srk also the space-time Levy area, an
independent normal) is the exact Brownian path, at the cost of one or two normal draws per
step (torchsde's BrownianInterval builds a binary tree of the path, about 9 state-sized draws
per step, and seeds itself from numpy's global generator); an increment is one ``torch.normal``
call (per generator with a list; see :func:`scoresde.solvers.common.randn`).

Additive noise also lets three steps skip work that cannot change the result: "milstein" is
stepped by torchsde's Euler class (Milstein's correction term is exactly 0 here, which torchsde
computes and adds: the same samples, bitwise, up to the sign of a zero), Euler scales its
increment in place (the step uses it once) and "reversible_heun" gets g as a number (rounded
to the state's dtype) instead of a (B, D) tensor. Tested against torchsde's own classes on the plain protocol.

Reference: Song et al. 2021, Eq. (6); Li et al. 2020 and Kidger et al. 2021 (torchsde);
Roessler 2010 (SRA1); torchsde issue #115 (reverse time by a change of variable).
"""
from __future__ import annotations

import math

import torch

from .._checks import check_choice, check_positive
from ..grids import check_eps, time_grid
from ..sde import SDE
from .base import Plan, Solver, call_hook, register
from .common import ScoreEval, randn

#: torchsde methods offered, with the SDE calculus each expects (equal here: g is state-free).
SDE_METHODS = {"euler": "ito", "milstein": "ito", "srk": "ito", "heun": "stratonovich",
               "midpoint": "stratonovich", "reversible_heun": "stratonovich", "euler_heun": "stratonovich"}
#: score evaluations of a solve with ``steps`` steps: (per step, once), counted (tests check it).
#: "srk" (SRA1, additive noise) evaluates the drift at two stages per step (its tableau asks for
#: the first stage twice; the second call is answered from memory); "reversible_heun" makes one
#: initial evaluation.
NFE = {"euler": (1, 0), "milstein": (1, 0), "srk": (2, 0), "heun": (2, 0), "midpoint": (2, 0),
       "reversible_heun": (1, 1), "euler_heun": (1, 0)}


class IncrementBrownian:
    """Brownian motion for fixed, in-order steps: each query (ta, tb) draws a fresh N(0, (tb - ta) I).

    Duck-types torchsde's ``BaseBrownian`` for its fixed-step methods, which query every step's
    interval once and in order: no revisiting of intervals, not adaptive, not for the adjoint.
    With ``levy_area="space-time"`` a query with ``return_U=True`` also gives
    U = int_ta^tb (W_s - W_ta) ds = h (W / 2 + H), H ~ N(0, h / 12 I) independent of the increment
    W (torchsde's convention), which is what "srk" needs.

    Arguments:
        shape: (B, D). generator: a torch.Generator, a list of B of them, or None.
        dtype, device: of the draws. levy_area: "none" (default) or "space-time".
    Raises (on call):
        ValueError: a point query bm(t), or U / A asked of a "none" motion.
    """

    def __init__(self, shape, generator, dtype, device, levy_area: str = "none"):
        self.shape, self.generator, self.dtype, self.device = tuple(shape), generator, dtype, device
        self.levy_area_approximation = levy_area

    def __call__(self, ta, tb=None, return_U=False, return_A=False):
        if tb is None or return_A or (return_U and self.levy_area_approximation != "space-time"):
            raise ValueError("IncrementBrownian only answers increment queries bm(ta, tb) of fixed-step methods "
                             "(and return_U=True with levy_area='space-time')")
        h = float(tb) - float(ta)
        w = randn(self.shape, self.generator, self.device, self.dtype, std=math.sqrt(h))
        if not return_U:
            return w
        H = randn(self.shape, self.generator, self.device, self.dtype, std=math.sqrt(h / 12.0))
        return w, (0.5 * w + H).mul_(h)


class _ReverseTimeSDE:
    """torchsde's SDE protocol for the reverse SDE in s = T - t on a flattened state.

    The coefficients f(t), g(t) of the times a solve visits are computed before the loop, in one
    vectorised call (:meth:`prepare`), so that an evaluation is the score call and two tensor
    operations; other times are computed when asked. Every score call gets a new (B,) time tensor
    (a score may write to its t).
    """

    def __init__(self, sde: SDE, score: ScoreEval, shape, eps: float, sde_type: str, T: float,
                 noise_type: str = "additive", dtype=torch.float32):
        self.sde, self.score, self.shape = sde, score, tuple(shape)
        self._flat = len(self.shape) == 2  # the state is already (B, D): no view in and out of the score
        self.dtype = dtype
        self.T, self.eps = float(T), float(eps)  # the start of this solve (grid[0]); s = T - t
        self.sde_type, self.noise_type = sde_type, noise_type
        self._memo = None
        self.noise_once = False  # True when the method uses each Brownian increment once, in f_and_g_prod (Euler)
        # s -> (t, f(t), g(t), g(t) rounded to the state's dtype: reversible Heun's g)
        self._coef: dict[float, tuple[float, float, float, float]] = {}

    def prepare(self, s_values) -> None:
        """Compute (t, f(t), g(t), g(t) in the state's dtype) for the s of ``s_values`` (floats) at once."""
        s_values = [float(v) for v in s_values if float(v) not in self._coef]
        if not s_values:
            return
        t = torch.tensor([min(max(self.T - v, self.eps), self.T) for v in s_values], dtype=torch.float64)
        f, g = self.sde.drift_coeff(t).tolist(), self.sde.diffusion_coeff(t).tolist()
        g_state = torch.tensor(g, dtype=torch.float64).to(self.dtype).tolist()
        self._coef.update(zip(s_values, zip(t.tolist(), f, g, g_state)))

    def _at(self, s) -> tuple[float, float, float, float]:
        key = float(s)
        if key not in self._coef:
            self.prepare([key])
        return self._coef[key]

    def f(self, s, y):
        # a scheme that asks for the same stage twice (srk) gets the stored drift the second time
        key = float(s)
        memo = self._memo
        if memo is not None and memo[0] is y and memo[1] == key:
            return memo[2]
        t, f, g, _ = self._at(key)
        if self._flat:
            score = self.score(y, t)
        else:
            score = self.score(y.view(self.shape), t).reshape(y.shape)
        out = torch.add(score * (g * g), y, alpha=-f)  # -(f x - g^2 s): the drift in s = T - t
        self._memo = (y, key, out)
        return out

    def g(self, s, y):
        # a number, not a (B, D) tensor: g is state-free, and reversible Heun (the one method here that asks
        # for g, as diagonal noise) only multiplies and adds it (g * v, g0 + g1). Rounded to the state's dtype,
        # so that g0 + g1 rounds as the sum of two (B, D) tensors would (the same samples, bitwise)
        return self._at(s)[3]

    def g_prod(self, s, y, v):
        return v * self._at(s)[2]

    def f_and_g_prod(self, s, y, v):  # what euler, heun, midpoint and euler_heun ask for: one call, not two
        g = self._at(s)[2]
        # Euler's increment v is used once, in this product: scale it in place (one allocation fewer)
        return self.f(s, y), (v.mul_(g) if self.noise_once else v * g)


def _solver(rsde: _ReverseTimeSDE, bm, method: str, dt: float):
    """torchsde's fixed-step solver of ``method`` for rsde (its private solver classes, see the module docstring)."""
    from torchsde._core.base_sde import ForwardSDE
    from torchsde._core.methods import select

    # additive noise: Milstein's correction term is exactly 0 (torchsde computes and adds it), so its step
    # is Euler's; torchsde's Euler class takes it without the dead terms (same result but the sign of a 0)
    rsde.noise_once = method in ("euler", "milstein")  # Euler's step: each increment used once
    cls = select("euler" if method == "milstein" else method, rsde.sde_type)
    return cls(sde=ForwardSDE(rsde), bm=bm, dt=dt, adaptive=False, rtol=1e-5, atol=1e-4, dt_min=1e-5, options={})


def reverse_sdeint(score: ScoreEval, sde: SDE, x: torch.Tensor, grid: torch.Tensor, *, sde_method: str = "euler",
                   generator=None, hook=None) -> torch.Tensor:
    """Integrate the reverse SDE from x at grid[0] (T) to grid[-1] with a torchsde method, one step per grid step.

    Arguments:
        score: the checked, counted score. x: (B, *S) start, a sample of the prior.
        grid: the time grid (steps + 1,) float64 from :func:`scoresde.grids.time_grid`, decreasing.
        sde_method: one of :data:`SDE_METHODS`.
        generator: a torch.Generator, a list of B generators (sample b's noise from generator b)
            or None (torch's global generator).
        hook: optional step hook (:data:`scoresde.solvers.base.StepHook`), called on the start
            and after every step (the solver's own state, e.g. reversible Heun's, carries on).
    Returns: (B, *S) in x's dtype, the state at grid[-1].
    NFE: ``a * steps + b`` with (a, b) = ``NFE[sde_method]`` (euler: exactly ``steps``).
    Reference: Song et al. 2021, Eq. (6); torchsde's methods (Li et al. 2020).
    """
    grid = grid.to(torch.float64).cpu()
    T, eps = float(grid[0]), float(grid[-1])
    B = x.shape[0]
    x, _ = call_hook(hook, x, x, sde, T)
    y = x.reshape(B, -1)
    levy = "space-time" if sde_method == "srk" else "none"
    bm = IncrementBrownian(y.shape, generator, y.dtype, y.device, levy)
    noise = "diagonal" if sde_method == "reversible_heun" else "additive"
    rsde = _ReverseTimeSDE(sde, score, x.shape, eps, SDE_METHODS[sde_method], T, noise, dtype=y.dtype)
    # s increasing, as Python floats: the methods' time arithmetic (dt = t1 - t0, t0 + c dt, 1 / dt) is then
    # float arithmetic, not 0-d tensor operations (about 10 a step, ~2 us each); the state arithmetic is the same
    sv = (T - grid).tolist()
    # the times the methods visit: the grid, midpoint's half and srk's 3/4 stage, t0 + (t1 - t0)
    rsde.prepare(sv + [a + c * (b - a) for a, b in zip(sv[:-1], sv[1:]) for c in (0.5, 0.75, 1.0)])
    solver = _solver(rsde, bm, sde_method, sv[1] - sv[0])
    extra = solver.init_extra_solver_state(sv[0], y)
    for k in range(len(grid) - 1):
        y, extra = solver.step(sv[k], sv[k + 1], y, extra)
        if hook is not None:
            xk, _ = call_hook(hook, y.view(x.shape), y.view(x.shape), sde, float(grid[k + 1]))
            y = xk.reshape(B, -1)
    return y.reshape(x.shape).to(x.dtype)


@register
class TorchsdeSampler(Solver):
    """``method="sde"``: the reverse SDE by torchsde's fixed-step solver classes (stepped directly, not through
    ``torchsde.sdeint``) on a uniform grid (see the module docstring).

    Options: ``sde_method`` (one of :data:`SDE_METHODS`, default "euler"). NFE = a steps + b with
    (a, b) = :data:`NFE` [sde_method]; ``denoise=True`` adds Tweedie's step at eps (+1).
    """

    name = "sde"
    summary = "the reverse SDE by torchsde's fixed-step solvers, stepped directly (Song et al. 2021, Eq. (6))"
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
        return reverse_sdeint(score, sde, x, plan.times, sde_method=self.opts["sde_method"], generator=generator,
                              hook=hook)
