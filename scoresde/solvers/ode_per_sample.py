"""Batched dopri5 with a step size per sample: a sample's solution does not depend on its batch-mates.

torchdiffeq takes one step size for the whole batch: the local error of all samples is measured
by one norm, so one hard sample sets everyone's steps and adding a sample to a batch changes the
others' results by up to the tolerance (``vmap(odeint)`` fails, so torchdiffeq cannot be made to
step per sample). :func:`dopri5_per_sample` runs B independent dopri5 solves in lock-step: each
sample has its own time, step size, error ratio and accept / reject decision, computed by
torchdiffeq's own rules for one sample, with the step sizes rounded down to a grid (``step_grid=None``:
exactly the steps torchdiffeq's ``dopri5`` takes for it, to round-off), and inside a batch the
same steps again:

* Butcher tableau, error estimate and FSAL of torchdiffeq's ``dopri5`` (Dormand-Prince 5(4));
* initial step of Hairer, Norsett & Wanner (torchdiffeq's ``_select_initial_step``), per sample;
* error ratio ``norm(err / (atol + rtol max(|y0|, |y1|)))`` per sample: the RMS over the
  sample's elements of all parts of the state together (``norm="rms"``, the norm of
  :func:`scoresde.solvers.ode.rms_norm` applied to one sample) or the max over the parts of each
  part's RMS (``norm="mixed"``, torchdiffeq's default for a tuple);
* integral (I) controller of torchdiffeq: ``h <- h min(10, max(0.9 / r^(1/5), 0.2 if r > 1 else 1))``
  (``h <- 10 h`` at r = 0); accepted when r <= 1 or h <= ``min_step``;
* steps end exactly on t1 (a step that would pass it is shortened to land on it) and the field
  is never evaluated outside [min(t0, t1), max(t0, t1)].

Finished samples are frozen and left out: each call of ``func`` gets only the samples still
running (their times t as a (n,) tensor, each at its own time, and their rows of the state), so
the cost is the sum of the samples' own NFE, not B times the largest. ``func`` must therefore
treat the rows independently (a network in ``eval()`` mode); with ``with_rows=True`` it is also
given the rows' indices in the batch (for per-sample constants such as Hutchinson probes).

Batch independence needs two things besides the per-sample norm (measured on the digits UNet of
``benchmarks/bench_step_control.py``, whose field oscillates in t with a period of 0.006):

* **Step sizes on a grid.** With torchdiffeq's continuous controller a perturbation of a
  sample's state as small as the network's batch-size rounding (1e-16 in float64) moves the next
  step size by as much, so its times t drift; where the error estimate depends steeply on t the
  drift grows about 2x per step, and after about 40 steps the sample takes other steps than
  alone: its logp moved by 2e-4 relative in float64, the solve's own error. Rounding every step
  size down to 2^(k / step_grid) (16 per octave: each step at most 4.2% shorter)
  keeps the times bitwise equal, so nothing accumulates: 1e-15 in float64.
* **The same call shapes** (``rows_per_call``). In float32 the error ratio of a sample inherits
  the network's batch-size rounding (1e-7 relative, amplified by the cancellation in the error
  estimate), enough to move a step size across a grid point now and then. CPU and GPU kernels
  round a row differently for different batch sizes but (in practice) the same way at any
  position of a batch of a fixed size: with ``rows_per_call`` every call has that many rows.

Per step the host reads a few flags (running count, non-finite, underflow): one synchronisation
per step on a GPU, as torchdiffeq's adaptive loop.

Why not torchode (Lienen & Guennemann 2022, the per-sample parallel solver; evaluated: torchode
1.0.1 installs on torch 2.13 and is batch-independent): it needs torchtyping, which pins
typeguard < 3, and a flat (B, F) state (the likelihood's (x (B, *S), delta_logp (B,)) would be
concatenated on every evaluation); it evaluates every sample on every step until the last one
finishes (B x max NFE), and its initial step and controller differ from torchdiffeq's, so
"batch" and "per_sample" would differ by more than the norm's granularity.

Reference: Dormand & Prince 1980; Hairer, Norsett & Wanner, "Solving ODEs I", Sec. II.4 (initial
step, step-size control); Chen et al. 2018 (torchdiffeq ``dopri5``); Lienen & Guennemann 2022
("torchode: A Parallel ODE Solver for PyTorch").
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Callable

import torch

from .ode_types import ODESolverError

#: the per-sample error norms (see the module docstring)
NORMS = ("rms", "mixed")

# Dormand-Prince 5(4), as torchdiffeq's _DORMAND_PRINCE_SHAMPINE_TABLEAU (FSAL: the 7th stage is f(t1, y1))
_ALPHA = (1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_BETA = (
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
_C_ERROR = (35 / 384 - 1951 / 21600, 0.0, 500 / 1113 - 22642 / 50085, 125 / 192 - 451 / 720,
            -2187 / 6784 - -12231 / 42400, 11 / 84 - 649 / 6300, -1.0 / 60.0)
_ORDER = 5
_SAFETY, _IFACTOR, _DFACTOR = 0.9, 10.0, 0.2
#: step sizes are rounded down to 2^(k / STEP_GRID): 16 per octave (see the module docstring)
STEP_GRID = 16

_PART = threading.local()


def evaluation_part() -> int:
    """Which chunk of the current evaluation the network is computing (0: the first, or no chunking).

    With ``rows_per_call`` one evaluation of the field calls ``func`` on several chunks of rows in
    turn; this gives the chunk's index while ``func`` runs (per thread), so that a counter of
    network calls (the CLI's progress bar, a forward hook) can count one evaluation, not one
    call per chunk: count a call only when this is 0.

    Returns:
        int >= 0.
    """
    return getattr(_PART, "index", 0)


@dataclass
class PerSampleSolution:
    """Result of :func:`dopri5_per_sample`.

    Arguments:
        y: tuple of tensors, the state at t1, shaped like ``y0``.
        nfe: number of calls of ``func`` (int).
        nfe_per_sample: (B,) int64 (CPU), the evaluations each sample took part in.
        steps_per_sample: (B,) int64 (CPU), attempted steps of each sample (rejected included).
    """

    y: tuple
    nfe: int
    nfe_per_sample: torch.Tensor
    steps_per_sample: torch.Tensor


def _bcast(v: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """(n,) -> (n, 1, ..., 1) in p's dtype, to scale the rows of p."""
    return v.to(p.dtype).reshape(v.shape[0], *([1] * (p.dim() - 1)))


def _sample_norm(parts, kind: str) -> torch.Tensor:
    """(n,) float64: per row, the RMS over all elements of all parts ("rms") or the max of the parts' RMS."""
    sq = [p.reshape(p.shape[0], -1).double().pow(2) for p in parts]
    if kind == "rms":
        return (sum(s.sum(1) for s in sq) / sum(s.shape[1] for s in sq)).sqrt()
    return torch.stack([s.mean(1).sqrt() for s in sq]).amax(0)


class _Field:
    """func on a subset of rows: t clamped into the interval and cast, every call counted, NFE budget."""

    def __init__(self, func, t0: float, t1: float, B: int, max_nfe, with_rows: bool, tdtype, device,
                 rows_per_call: int | None = None):
        self.func, self.t0, self.t1, self.max_nfe, self.with_rows = func, t0, t1, max_nfe, with_rows
        self.rows_per_call, self.B = rows_per_call, B
        self.lo, self.hi = min(t0, t1), max(t0, t1)
        self.tdtype = tdtype
        self.nfe = 0
        self.per_sample = torch.zeros(B, dtype=torch.int64, device=device)
        self.reached = t0  # progress of the slowest running sample (for messages)

    def __call__(self, t: torch.Tensor, y: tuple, rows: torch.Tensor | None) -> tuple:
        if self.max_nfe is not None and self.nfe >= self.max_nfe:
            raise ODESolverError(
                f"max_nfe={self.max_nfe} function evaluations used up before every sample reached t1={self.t1:g} "
                f"(integrating from t0={self.t0:g} with a step size per sample; the slowest had reached "
                f"t={self.reached:.6g}); the ODE is probably stiff there or the tolerances too tight: loosen "
                "rtol/atol, start the integration further from t = 0 (a larger eps), or raise max_nfe")
        self.nfe += 1
        if rows is None:
            self.per_sample += 1
        else:
            self.per_sample[rows] += 1
        # float(lo) of float32 may lie outside [lo, hi]: clamp in float64, then cast inwards
        tc = t.clamp(self.lo, self.hi).to(self.tdtype)
        tc = torch.where(tc.double() < self.lo, torch.nextafter(tc, torch.full_like(tc, self.hi)), tc)
        tc = torch.where(tc.double() > self.hi, torch.nextafter(tc, torch.full_like(tc, self.lo)), tc)
        if self.rows_per_call is None:
            return self._call(tc, y, rows)
        return self._in_chunks(tc, y, rows)

    def _call(self, tc, y, rows):
        out = self.func(tc, y, rows) if self.with_rows else self.func(tc, y)
        return tuple(out) if isinstance(out, (tuple, list)) else (out,)

    def _in_chunks(self, tc, y, rows):
        """func on chunks of exactly rows_per_call rows (the last padded with copies of the last row)."""
        n, C = tc.shape[0], self.rows_per_call
        if rows is None:
            rows = torch.arange(n, device=tc.device)
        pad = (-n) % C
        if pad:
            idx = torch.cat([torch.arange(n, device=tc.device), torch.full((pad,), n - 1, device=tc.device)])
            tc, rows, y = tc[idx], rows[idx], tuple(p[idx] for p in y)
        outs = []
        outer = evaluation_part()  # restored after: a chunked solve inside a score keeps the outer chunk's index
        try:
            for j, i in enumerate(range(0, n + pad, C)):
                _PART.index = j
                outs.append(self._call(tc[i:i + C], tuple(p[i:i + C] for p in y), rows[i:i + C]))
        finally:
            _PART.index = outer
        return tuple(torch.cat(parts)[:n] for parts in zip(*outs))


def _check_start(f, t0) -> None:
    """Raise if the field is NaN / inf at t0 (the initial step would be NaN and the field evaluated at t = NaN)."""
    bad = torch.zeros(f[0].shape[0], dtype=torch.bool, device=f[0].device)
    for p in f:
        bad |= ~torch.isfinite(p.reshape(p.shape[0], -1)).all(1)
    if bool(bad.any()):
        rows = bad.nonzero().flatten()[:8].tolist()
        raise ODESolverError(f"the field is NaN or inf at t0={float(t0):g} for sample(s) {rows} (for a likelihood: "
                             "the score or its derivative in x); no step can be taken")


def _initial_step(field, t, y, f0, rows, d, rtol, atol, norm):
    """Per-sample initial step (float64, (n,)) of Hairer-Norsett-Wanner II.4 (torchdiffeq's rule, order 4)."""
    scale = [atol + p.abs() * rtol for p in y]
    d0 = _sample_norm([p / s for p, s in zip(y, scale)], norm)
    d1 = _sample_norm([f / s for f, s in zip(f0, scale)], norm)
    h0 = torch.where((d0 < 1e-5) | (d1 < 1e-5), torch.full_like(d0, 1e-6), 0.01 * d0 / d1)
    y1 = tuple(p + _bcast(d * h0, p) * f for p, f in zip(y, f0))
    f1 = field(t + d * h0, y1, rows)
    d2 = _sample_norm([(a - b) / s for a, b, s in zip(f1, f0, scale)], norm) / h0
    small = (d1 <= 1e-15) & (d2 <= 1e-15)
    h1 = torch.where(small, torch.clamp(h0 * 1e-3, min=1e-6),
                     (0.01 / torch.maximum(d1, d2)) ** (1.0 / _ORDER))
    return torch.minimum(100 * h0, h1)


def _step(field, t, h, y, f0, rows, d, t1, rtol, atol, norm):
    """One dopri5 step of every given row. Returns (t_new, y_new, f_new, error ratio (n,) float64)."""
    t_new = t + d * h
    over = d * (t_new - t1) >= 0  # land exactly on t1
    t_new = torch.where(over, torch.full_like(t_new, t1), t_new)
    h = torch.where(over, d * (t1 - t), h)
    dh = d * h
    k = [f0]
    yi = y
    for alpha, beta in zip(_ALPHA, _BETA):
        ti = t_new if alpha == 1.0 else t + alpha * dh
        yi = tuple(p + _bcast(dh, p) * sum(b * kj[n] for b, kj in zip(beta, k) if b != 0.0)
                   for n, p in enumerate(y))
        k.append(field(ti, yi, rows))
    err = tuple(_bcast(dh, p) * sum(c * kj[n] for c, kj in zip(_C_ERROR, k) if c != 0.0) for n, p in enumerate(y))
    tol = [atol + rtol * torch.maximum(a.abs(), b.abs()) for a, b in zip(y, yi)]
    ratio = _sample_norm([e / s for e, s in zip(err, tol)], norm)
    return t_new, h, yi, k[-1], ratio


def _next_step(h, ratio):
    """torchdiffeq's _optimal_step_size per sample: the integral controller of order 5."""
    dfactor = torch.where(ratio < 1, torch.ones_like(ratio), torch.full_like(ratio, _DFACTOR))
    factor = torch.maximum(_SAFETY / ratio.clamp(min=1e-300) ** (1.0 / _ORDER), dfactor).clamp(max=_IFACTOR)
    return torch.where(ratio == 0, h * _IFACTOR, h * factor)


def _on_grid(h, step_grid):
    """h (float64) rounded down to the nearest 2^(k / step_grid), k an integer (unchanged with step_grid None)."""
    if step_grid is None:
        return h
    k = torch.floor(torch.log2(h) * step_grid)
    return torch.where(torch.isfinite(h) & (h > 0), torch.exp2(k / step_grid), h)


def dopri5_per_sample(func: Callable, y0: tuple, t0: float, t1: float, *, rtol: float = 1e-5, atol: float = 1e-5,
                      norm: str = "rms", min_step: float = 0.0, max_nfe: int | None = None,
                      with_rows: bool = False, step_grid: int | None = STEP_GRID,
                      rows_per_call: int | None = None) -> PerSampleSolution:
    """Integrate dy/dt = func(t, y) from t0 to t1 with dopri5, each sample with its own step size.

    Call it through :func:`scoresde.solvers.ode.solve_ode` with ``step_control="per_sample"``,
    which validates the arguments, solves float16 / bfloat16 states in float32 and returns an
    :class:`~scoresde.solvers.ode_types.ODESolution`.

    Arguments:
        func: callable (t (n,), y) -> dy/dt, or (t, y, rows) with ``with_rows``; t holds the
            time of each of the n samples still running (in the state's dtype, inside
            [min(t0, t1), max(t0, t1)]), y and the output are tuples of tensors with those n
            rows of ``y0``'s parts (a single tensor output is taken as a 1-tuple); rows (n,)
            int64 are their indices in the batch. Rows must not interact.
        y0: tuple of tensors, each (B, ...) with the same batch size B >= 1.
        t0, t1: start and end times (floats, t0 != t1); t0 > t1 integrates backwards.
        rtol, atol: tolerances (> 0) of each sample's error ratio.
        norm: "rms" (all parts of a sample together) or "mixed" (max over the parts).
        min_step: smallest step (>= 0); a step this short is accepted whatever its error.
        max_nfe: optional budget of calls of ``func``.
        with_rows: pass the rows' batch indices to ``func`` as a third argument.
        step_grid: step sizes are rounded down to 2^(k / step_grid), k an integer (default
            :data:`STEP_GRID` = 16 per octave, at most 4.2% shorter than the controller's); None:
            torchdiffeq's step sizes exactly. See the module docstring for why.
        rows_per_call: None (default): ``func`` is called once per stage on the running rows; an
            integer: on chunks of exactly that many rows (the last padded with copies of its
            last row), one evaluation in ``nfe`` all the same.
    Returns:
        :class:`PerSampleSolution` (the state at t1, calls, per-sample NFE and steps).
    Raises:
        ValueError: step_grid not None or an integer >= 1.
        ODESolverError: more than ``max_nfe`` calls; a step-size underflow (t + h == t) or a
            non-finite error estimate / state for some sample (the message names how many).
    Reference: Dormand & Prince 1980; Hairer, Norsett & Wanner, Sec. II.4; torchdiffeq ``dopri5``.
    """
    if step_grid is not None and (isinstance(step_grid, bool) or not isinstance(step_grid, int) or step_grid < 1):
        raise ValueError(f"step_grid must be None or an integer >= 1 (steps per octave); got {step_grid!r}")
    y = tuple(y0)
    B, device = y[0].shape[0], y[0].device
    d = 1.0 if t1 > t0 else -1.0
    tdtype = y[0].dtype
    for p in y[1:]:
        tdtype = torch.promote_types(tdtype, p.dtype)
    field = _Field(func, t0, t1, B, max_nfe, with_rows, tdtype, device, rows_per_call)
    t = torch.full((B,), float(t0), dtype=torch.float64, device=device)
    all_rows = torch.arange(B, device=device) if with_rows else None
    f = field(t, y, all_rows)
    _check_start(f, t0)
    h = _on_grid(_initial_step(field, t, y, f, all_rows, d, rtol, atol, norm), step_grid)
    steps = torch.zeros(B, dtype=torch.int64, device=device)
    rows, n_run = None, B  # rows None: all samples running
    while n_run:
        ta, ha = (t, h) if rows is None else (t[rows], h[rows])
        ya, fa = (y, f) if rows is None else (tuple(p[rows] for p in y), tuple(p[rows] for p in f))
        ha = torch.nan_to_num(ha, nan=min_step).clamp(min=min_step)
        t_new, ha, y1, f1, ratio = _step(field, ta, ha, ya, fa, all_rows if rows is None else rows, d, t1, rtol,
                                         atol, norm)
        accept = (ratio <= 1) | (ha <= min_step)
        h_next = _on_grid(_next_step(ha, ratio), step_grid).clamp(min=min_step)
        bad = ~torch.isfinite(ratio)
        underflow = t_new == ta
        if rows is None:
            t = torch.where(accept, t_new, t)
            y = tuple(torch.where(accept.reshape(-1, *[1] * (p.dim() - 1)), p1, p) for p, p1 in zip(y, y1))
            f = tuple(torch.where(accept.reshape(-1, *[1] * (p.dim() - 1)), p1, p) for p, p1 in zip(f, f1))
            h = h_next
            steps += 1
        else:
            acc = rows[accept]
            t[acc] = t_new[accept]
            for p, p1 in zip(y, y1):
                p[acc] = p1[accept]
            for p, p1 in zip(f, f1):
                p[acc] = p1[accept]
            h[rows] = h_next
            steps[rows] += 1
        running = t != t1
        slowest = torch.where(running, d * t, math.inf).min() * d  # for messages
        flags = torch.stack([running.sum(), bad.sum(), underflow.sum()]).double()
        n_run, n_bad, n_under, reached = torch.cat([flags, slowest.reshape(1)]).tolist()  # one host sync per step
        n_run, n_bad, n_under = int(n_run), int(n_bad), int(n_under)
        if n_run:
            field.reached = reached
        if n_bad or n_under:
            what = (f"a non-finite error estimate (NaN / inf in the state or the field) for {n_bad} sample(s)"
                    if n_bad else f"a step-size underflow (t + h == t) for {n_under} sample(s)")
            raise ODESolverError(
                f"dopri5 (per-sample steps): {what} after {field.nfe} evaluations (integrating {t0:g} -> {t1:g}, "
                f"the slowest sample at t={field.reached:.6g}); the field is stiff or non-finite there: loosen "
                f"rtol/atol (now {rtol:g}/{atol:g}), move the end point away from t = 0, pass min_step, or use float64")
        if n_run:
            # y, f, t, h are the solver's own tensors by now (made by torch.where / the controller): the
            # rows of running samples are updated in place from here on
            rows = None if (rows is None and n_run == B) else running.nonzero().squeeze(1)
    return PerSampleSolution(y=y, nfe=field.nfe, nfe_per_sample=field.per_sample.cpu(),
                             steps_per_sample=steps.cpu())
