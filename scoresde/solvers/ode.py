"""The torchdiffeq adapter: the one place the package integrates an ODE.

:func:`solve_ode` wraps ``torchdiffeq.odeint`` so that every ODE user of the package (the
probability-flow sampler, :func:`scoresde.log_likelihood`, :func:`scoresde.encode` /
:func:`scoresde.decode`) gets the same guarantees:

* time runs in float64 over ``[t0, t1]`` (``t0 > t1`` integrates backwards);
* the vector field is never evaluated outside ``[min(t0, t1), max(t0, t1)]``: adaptive
  solvers are told to step exactly onto ``t1`` (``options["step_t"]``, otherwise dopri5 steps
  past the end and interpolates back, evaluating e.g. a score net at t < 0) and t is clamped
  to the interval as a last guard (torchdiffeq's initial-step probe may look beyond it);
* the number of function evaluations (NFE) is counted exactly, every call of ``func``;
* ``max_nfe`` turns a run-away adaptive solve (stiff field, tolerance too tight) into an
  :class:`ODESolverError` that says how far it got, and torchdiffeq's "underflow in dt"
  assertion becomes an :class:`ODESolverError` with advice;
* float16 / bfloat16 states are integrated in float32 (the state is upcast, ``func`` sees and
  returns float32, the result is cast back): torchdiffeq's step control in half precision
  rounds the times and overflows the error norm, and the solve ends in NaN.

Step control (``step_control=``): ``"batch"`` (default) is torchdiffeq's, one step size for the
whole batch chosen from one error norm over all its elements, so one hard sample sets everyone's
steps and a sample's result changes (within the tolerance) with its batch-mates;
``"per_sample"`` is the batched dopri5 of :mod:`scoresde.solvers.ode_per_sample`: a time, step
size and accept / reject decision per sample by torchdiffeq's rules for one sample (a sample alone
takes exactly torchdiffeq's steps), finished samples frozen and no longer evaluated.

Adaptive methods (step size from ``rtol`` / ``atol``): ``dopri5`` (default), ``dopri8``,
``bosh3``, ``fehlberg2``, ``adaptive_heun``. Fixed-grid methods (``steps`` equal steps from
t0 to t1): ``euler``, ``midpoint``, ``heun2``, ``heun3``, ``rk4``, ``explicit_adams``,
``implicit_adams`` (alias ``fixed_adams``). The explicit Runge-Kutta ones among them are stepped
by :mod:`scoresde.solvers.ode_fixed` (torchdiffeq's tableaux and grid in a plain loop, the same
numbers to rounding, a tenth of the per-step cost); the Adams methods by torchdiffeq.

Reference: Chen et al. 2018 (torchdiffeq, "Neural Ordinary Differential Equations");
Dormand & Prince 1980 (dopri5); Song et al. 2021, Sec. 4.3 (probability-flow ODE solved with an
adaptive RK45 at rtol = atol = 1e-5).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torchdiffeq import odeint
from torchdiffeq._impl.odeint import SOLVERS
from torchdiffeq._impl.rk_common import RKAdaptiveStepsizeODESolver

from .._checks import check_choice, check_positive
from .ode_fixed import TABLEAUX, fixed_grid_solve
from .ode_per_sample import dopri5_per_sample
from .ode_types import ODESolution, ODESolverError, State

#: Methods solve_ode accepts (torchdiffeq's SOLVERS without "scipy_solver", which leaves
#: torch and cannot be told to stop at t1).
METHODS = tuple(m for m in SOLVERS if m != "scipy_solver")
ADAPTIVE_METHODS = tuple(m for m in METHODS if issubclass(SOLVERS[m], RKAdaptiveStepsizeODESolver))
FIXED_METHODS = tuple(m for m in METHODS if m not in ADAPTIVE_METHODS)

#: step_control values: one step size for the batch (torchdiffeq) or one per sample (dopri5 only)
STEP_CONTROLS = ("batch", "per_sample")

#: dtypes solved in float32 (see :func:`solve_ode`)
HALF_DTYPES = (torch.float16, torch.bfloat16)


class _CountedField:
    """func(t, y) with t clamped into [lo, hi], every call counted, and an NFE budget."""

    def __init__(self, func, t0: float, t1: float, max_nfe: int | None):
        self.func, self.t0, self.t1, self.max_nfe = func, t0, t1, max_nfe
        self.lo, self.hi = min(t0, t1), max(t0, t1)
        self.nfe = 0
        self.t_reached = t0  # the evaluated time furthest along the direction t0 -> t1
        self._cache: dict = {}

    def _bounds(self, t: torch.Tensor):
        """lo, hi in t's dtype, rounded inwards: float32(1e-5) < 1e-5, so a plain clamp could leave [lo, hi]."""
        key = (t.dtype, t.device)
        if key not in self._cache:
            lo = torch.tensor(self.lo, dtype=t.dtype, device=t.device)
            hi = torch.tensor(self.hi, dtype=t.dtype, device=t.device)
            if float(lo) < self.lo:
                lo = torch.nextafter(lo, hi)
            if float(hi) > self.hi:
                hi = torch.nextafter(hi, lo)
            self._cache[key] = (lo, hi)
        return self._cache[key]

    def counted(self, t: torch.Tensor, y):
        """func(t, y) counted and within the budget, t as given (a fixed grid inside [t0, t1])."""
        self._budget()
        self.nfe += 1
        return self.func(t, y)

    def _budget(self):
        if self.max_nfe is not None and self.nfe >= self.max_nfe:
            raise ODESolverError(
                f"max_nfe={self.max_nfe} function evaluations used up before reaching t1={self.t1:g} "
                f"(integrating from t0={self.t0:g}, the solve reached t={self.t_reached:.6g}); the ODE is "
                "probably stiff there or the tolerances too tight: loosen rtol/atol, start the integration "
                "further from t = 0 (a larger eps), use a fixed-grid method, or raise max_nfe")

    def __call__(self, t: torch.Tensor, y):
        self._budget()
        lo, hi = self._bounds(t)
        t = torch.maximum(torch.minimum(t, hi), lo)
        self.nfe += 1
        tv = float(t)
        if not math.isfinite(tv):
            raise ODESolverError(f"the step control produced a non-finite time t = {tv} after {self.nfe - 1} "
                                 f"evaluations (integrating {self.t0:g} -> {self.t1:g}, reached "
                                 f"t={self.t_reached:.6g}): the tolerances are too tight for the state's dtype (loosen rtol/atol), "
                                 "or the field is NaN / inf there (for a likelihood: the score's derivative)")
        if abs(tv - self.t0) > abs(self.t_reached - self.t0):
            self.t_reached = tv
        return self.func(t, y)


def rms_norm(y: State) -> torch.Tensor:
    """Root mean square over every element of a tensor or of all tensors of a tuple together.

    For a tuple (x, delta_logp) this is the norm of the reference likelihood code, which solves
    the concatenated vector as one scipy system; torchdiffeq's default for tuples is the
    (stricter) max over the parts.
    """
    parts = (y,) if isinstance(y, torch.Tensor) else y
    total = sum(p.abs().pow(2).sum() for p in parts)
    count = sum(p.numel() for p in parts)
    return (total / count).sqrt()


def _fixed_grid(steps: int):
    def grid_constructor(func, y0, t):
        grid = torch.linspace(float(t[0]), float(t[-1]), steps + 1, dtype=torch.float64, device=t.device)
        grid[0], grid[-1] = t[0], t[-1]
        return grid.to(t.dtype)

    return grid_constructor


def _check_times(t0, t1) -> tuple[float, float]:
    for name, v in (("t0", t0), ("t1", t1)):
        if isinstance(v, torch.Tensor):
            v = float(v)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"{name} must be a finite number; got {v!r}")
    t0, t1 = float(t0), float(t1)
    if t0 == t1:
        raise ValueError(f"t0 and t1 must differ; got t0 = t1 = {t0:g}")
    return t0, t1


def _check_resolution(rtol: float, atol: float, dtypes) -> None:
    """A tolerance below the state's resolution cannot be met: the steps shrink until t turns NaN
    (rtol = atol = 1e-300) or the solve never ends (1e-16 in float64)."""
    floats = [torch.float32 if d in HALF_DTYPES else d for d in dtypes if d.is_floating_point]
    res = max(torch.finfo(d).eps for d in floats) if floats else 0.0
    if max(rtol, atol) < res:
        raise ValueError(f"rtol = {rtol:g} and atol = {atol:g} are both below the resolution of the state's "
                         f"dtype ({res:.3g}, its machine epsilon): the adaptive step control cannot meet them; "
                         "make one of them at least that (1e-5 is the reference setting of the probability-flow "
                         "ODE) or solve in float64")


def _check_min_step(min_step, t0: float, t1: float) -> None:
    """min_step > 0 and at most a tenth of the interval: a longer floor would leave too few steps to
    control the error (min_step = 10 on [1e-5, 1] took 8 evaluations and returned garbage)."""
    check_positive("min_step", min_step)
    span = abs(float(t1) - float(t0))
    if float(min_step) > span / 10:
        raise ValueError(f"min_step must be at most a tenth of the integration interval |t1 - t0| = {span:.6g} "
                         f"(<= {span / 10:.6g}); got {min_step!r}. It is a floor against step-size underflow, "
                         "e.g. 1e-6, not a step length")


def _adaptive_options(method, steps, min_step, norm, t0, t1, device) -> dict:
    if steps is not None:
        raise ValueError(f"steps applies to the fixed-grid methods {list(FIXED_METHODS)}; the adaptive method "
                         f"{method!r} chooses its steps from rtol/atol (use max_nfe to bound the cost)")
    options: dict = {"step_t": torch.tensor([t1], dtype=torch.float64, device=device)}
    if min_step is not None:
        _check_min_step(min_step, t0, t1)
        options["min_step"] = float(min_step)
    if norm is not None:
        if not callable(norm):
            raise TypeError(f"norm must be callable (state) -> 0-d tensor; got {type(norm).__name__}")
        options["norm"] = norm
    return options


def _per_sample(func, y0, t0, t1, *, method, rtol, atol, steps, max_nfe, min_step, norm, with_rows, dtypes,
                rows_per_call):
    """step_control="per_sample": the batched dopri5 of ode_per_sample, one step size per sample."""
    if method != "dopri5":
        raise ValueError(f"step_control='per_sample' supports method 'dopri5' only; got {method!r} (use "
                         "step_control='batch' for the other methods)")
    if steps is not None:
        raise ValueError("steps applies to the fixed-grid methods; step_control='per_sample' is adaptive (dopri5)")
    if min_step is not None:
        _check_min_step(min_step, t0, t1)
    if norm is not None and norm is not rms_norm:
        raise ValueError("with step_control='per_sample' norm must be None (per sample: the max over the state's "
                         "parts of their RMS, torchdiffeq's default) or scoresde.solvers.ode.rms_norm (per sample: "
                         f"the RMS over all parts together); got {norm!r}")
    parts = y0 if isinstance(y0, tuple) else (y0,)
    B = parts[0].shape[0] if parts[0].dim() else 0
    if B < 1 or any(p.dim() < 1 or p.shape[0] != B for p in parts):
        raise ValueError("with step_control='per_sample' every part of y0 must have the batch as its first "
                         f"dimension, the same B >= 1 for all; got shapes {[tuple(p.shape) for p in parts]}")
    if isinstance(y0, tuple):
        f = func
    else:
        def f(t, y, *rows):
            return func(t, y[0], *rows)
    sol = dopri5_per_sample(f, parts, t0, t1, rtol=rtol, atol=atol, norm="rms" if norm is rms_norm else "mixed",
                            min_step=float(min_step or 0.0), max_nfe=max_nfe, with_rows=with_rows,
                            rows_per_call=rows_per_call)
    y = tuple(v.to(d) for v, d in zip(sol.y, dtypes))
    return ODESolution(y=y if isinstance(y0, tuple) else y[0], nfe=sol.nfe, method=method,
                       nfe_per_sample=sol.nfe_per_sample, step_control="per_sample")


def solve_ode(func: Callable, y0: State, t0: float, t1: float, *, method: str = "dopri5", rtol: float = 1e-5,
              atol: float = 1e-5, steps: int | None = None, max_nfe: int | None = None,
              min_step: float | None = None, norm: Callable | None = None, step_control: str = "batch",
              with_rows: bool = False, rows_per_call: int | None = None) -> ODESolution:
    """Integrate dy/dt = func(t, y) from t0 to t1 and count the evaluations.

    Arguments:
        func: callable (t, y) -> dy/dt; y and the output are shaped like ``y0`` (a tensor of any
            shape, or a tuple of tensors). With ``step_control="batch"`` t is a 0-d float tensor
            (the dtype of the state) inside [min(t0, t1), max(t0, t1)]. With
            ``step_control="per_sample"`` t is an (n,) tensor, the time of each of the n samples
            still running, and y holds only their rows (finished samples are left out); rows must
            not interact. A float16 / bfloat16 state is solved in float32: ``func`` then gets (and
            should return) float32 tensors.
        y0: initial state at t0, a tensor or a tuple of tensors (e.g. (x, delta_logp)); with
            ``step_control="per_sample"`` each part is (B, ...) with the batch first.
        t0, t1: start and end times (floats, finite, t0 != t1); t0 > t1 integrates backwards.
        method: an adaptive method ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")
            or a fixed-grid one ("euler", "midpoint", "heun2", "heun3", "rk4",
            "explicit_adams", "implicit_adams", "fixed_adams"); "dopri5" only with
            ``step_control="per_sample"``.
        rtol, atol: relative and absolute tolerances (> 0) of the adaptive step control
            (torchdiffeq's RMS norm over all elements; for a tuple, the max over its parts);
            ``implicit_adams`` uses them for its corrector; other fixed-grid methods ignore them.
        steps: number of equal steps (>= 1) of a fixed-grid method, on a float64 grid of
            ``steps + 1`` points from exactly t0 to exactly t1; required for fixed-grid methods,
            not accepted for adaptive ones.
        max_nfe: optional budget (>= 1) of calls of ``func``; exceeding it raises.
        min_step: optional smallest step (> 0) of an adaptive method: steps are never shorter
            and a step at the minimum is accepted whatever its error estimate (torchdiffeq's
            ``min_step``); a way past "underflow in dt" at the price of accuracy; at most a tenth
            of |t1 - t0|.
        norm: optional error norm of an adaptive method, a callable of a state shaped like
            ``y0`` returning a 0-d tensor (torchdiffeq's ``norm`` option); default torchdiffeq's
            RMS over all elements (for a tuple: the max over its parts of their RMS).
            :func:`rms_norm` is the RMS over all elements of a tuple taken together. With
            ``step_control="per_sample"`` only None and :func:`rms_norm` are accepted, applied
            to each sample's elements.
        step_control: "batch" (default: torchdiffeq, one step size for the whole batch, so a
            sample's result depends on its batch-mates within the tolerance) or "per_sample"
            (:func:`scoresde.solvers.ode_per_sample.dopri5_per_sample`: dopri5 with a time, step
            size and accept / reject decision per sample, by torchdiffeq's rules for one sample,
            step sizes rounded down to 16 per octave).
        with_rows: ``step_control="per_sample"`` only: call ``func(t, y, rows)`` with rows (n,)
            int64, the batch indices of the rows in y (for per-sample constants).
        rows_per_call: ``step_control="per_sample"`` only: an integer >= 1 to call ``func`` on
            exactly that many rows each time (the running rows in chunks, the last padded with
            copies of its last row; one evaluation still counts once in ``nfe``), so that a
            network rounds a sample the same way whatever its batch-mates; None (default): one
            call on the running rows.
    Returns:
        :class:`ODESolution` with ``y`` (the state at t1, shaped and typed like ``y0``: a float16 /
        bfloat16 part is computed in float32 and cast back), ``nfe`` (calls of ``func``),
        ``method``, ``step_control`` and, per sample, ``nfe_per_sample`` ((B,) int64, or None
        with ``step_control="batch"``).
    Raises:
        ValueError: unknown method or step_control (the message lists the valid ones), rtol /
            atol / min_step <= 0, rtol and atol both below the machine epsilon of the state's
            dtype (adaptive methods: 2.2e-16 for float64, 1.2e-7 for float32 and half states),
            steps missing / < 1 for a fixed-grid method or given for an adaptive one, min_step
            above a tenth of |t1 - t0|, min_step
            with a fixed-grid method, non-finite t0 / t1 or t0 == t1; with "per_sample": a method
            other than dopri5, a norm other than None / rms_norm, parts without a common batch;
            with_rows or rows_per_call with "batch"; rows_per_call < 1.
        TypeError: non-integer steps, max_nfe or rows_per_call, y0 neither a tensor nor a tuple of tensors.
        ODESolverError: more than ``max_nfe`` evaluations (the message gives the time
            reached); step-size underflow or a non-finite state.
    Reference:
        Chen et al. 2018, torchdiffeq ``odeint``; Dormand & Prince 1980; Song et al. 2021,
        Sec. 4.3 and App. D.2 (rtol = atol = 1e-5 for the probability-flow ODE).
    """
    check_choice("method", method, METHODS)
    check_choice("step_control", step_control, STEP_CONTROLS)
    check_positive("rtol", rtol)
    check_positive("atol", atol)
    t0, t1 = _check_times(t0, t1)
    if max_nfe is not None:
        check_positive("max_nfe", max_nfe, integer=True)
    tensors = (y0,) if isinstance(y0, torch.Tensor) else y0
    if not isinstance(tensors, tuple) or not tensors or not all(isinstance(v, torch.Tensor) for v in tensors):
        raise TypeError(f"y0 must be a tensor or a non-empty tuple of tensors; got {type(y0).__name__}")
    if with_rows and step_control != "per_sample":
        raise ValueError("with_rows applies to step_control='per_sample' only (func sees the whole batch otherwise)")
    if rows_per_call is not None:
        if step_control != "per_sample":
            raise ValueError("rows_per_call applies to step_control='per_sample' only (func sees the whole batch "
                             "otherwise)")
        check_positive("rows_per_call", rows_per_call, integer=True)
    device = tensors[0].device
    dtypes = tuple(v.dtype for v in tensors)
    if any(d in HALF_DTYPES for d in dtypes):  # torchdiffeq's step control breaks down in half precision
        up = tuple(v.float() if v.dtype in HALF_DTYPES else v for v in tensors)
        y0 = up if isinstance(y0, tuple) else up[0]
    if method in ADAPTIVE_METHODS:
        _check_resolution(rtol, atol, dtypes)
    if step_control == "per_sample":
        return _per_sample(func, y0, t0, t1, method=method, rtol=rtol, atol=atol, steps=steps, max_nfe=max_nfe,
                           min_step=min_step, norm=norm, with_rows=with_rows, dtypes=dtypes,
                           rows_per_call=rows_per_call)
    if method in ADAPTIVE_METHODS:
        options = _adaptive_options(method, steps, min_step, norm, t0, t1, device)
    else:
        if steps is None:
            raise ValueError(f"the fixed-grid method {method!r} needs steps (an integer >= 1)")
        check_positive("steps", steps, integer=True)
        if min_step is not None or norm is not None:
            raise ValueError(f"min_step and norm apply to the adaptive methods {list(ADAPTIVE_METHODS)}, not {method!r}")
        if method in TABLEAUX:  # our own loop: torchdiffeq's tableaux and grid, without its per-step driver cost
            field = _CountedField(func, t0, t1, max_nfe)
            state = (y0,) if isinstance(y0, torch.Tensor) else y0
            y = fixed_grid_solve(field.counted, y0, t0, t1, method, int(steps), bounds=field._bounds(state[0]))
            return ODESolution(y=_cast_back(y if isinstance(y, tuple) else (y,), y0, dtypes), nfe=field.nfe,
                               method=method)
        options = {"grid_constructor": _fixed_grid(int(steps))}
    return _torchdiffeq(func, y0, t0, t1, method, rtol, atol, options, max_nfe, dtypes, device)


def _torchdiffeq(func, y0, t0, t1, method, rtol, atol, options, max_nfe, dtypes, device) -> ODESolution:
    field = _CountedField(func, t0, t1, max_nfe)
    t = torch.tensor([t0, t1], dtype=torch.float64, device=device)
    try:
        ys = odeint(field, y0, t, rtol=rtol, atol=atol, method=method, options=options)
    except AssertionError as err:
        msg = str(err)
        if "underflow in dt" in msg:
            raise ODESolverError(
                f"{method}: step size underflow ({msg}) at t={field.t_reached:.6g} after {field.nfe} evaluations "
                f"(integrating {t0:g} -> {t1:g}); the field is stiff there: loosen rtol/atol (now {rtol:g}/{atol:g}), "
                "move the end point away from t = 0 (raise eps), pass min_step, or use float64") from err
        if "non-finite" in msg:
            raise ODESolverError(f"{method}: the state became NaN/inf near t={field.t_reached:.6g} after "
                                 f"{field.nfe} evaluations (integrating {t0:g} -> {t1:g})") from err
        raise ODESolverError(f"{method}: {msg}") from err
    ys = ys if isinstance(y0, tuple) else (ys,)
    return ODESolution(y=_cast_back(tuple(v[-1] for v in ys), y0, dtypes), nfe=field.nfe, method=method)


def _cast_back(parts: tuple, y0: State, dtypes) -> State:
    """The solved parts in their input dtypes (a half-precision part was solved in float32), shaped like y0."""
    parts = tuple(v.to(d) for v, d in zip(parts, dtypes))
    return parts if isinstance(y0, tuple) else parts[0]
