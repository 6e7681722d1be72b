"""Calling a score function: the one checked call that the SDEs, solvers and losses go through.

A score function is any callable (x (B, *S), t (B,)) -> (B, *S), an estimate of
grad_x log p_t(x) (a :class:`scoresde.ScoreModel` is one). This module imports nothing else of
the package, so both :mod:`scoresde.sde` and :mod:`scoresde.score` can use it.

Every output is checked for its shape (free: no data is read) and for NaN / inf. Reading the
NaN flag is a host-device synchronisation on a GPU, so a solver's calls can defer it with a
:class:`FiniteCheck`: the flag of each call stays on the device and is read every ``every``
calls and when the solve ends (:meth:`FiniteCheck.flush`). What a user gives up: a NaN is
reported up to ``every - 1`` evaluations after the one that produced it (the solve runs on
for those, on NaN data); the error still names the time range and the number of the first bad
evaluation. On the CPU reading the flag costs nothing extra, and the samplers check every call.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

__all__ = ["ScoreFn", "call_score", "FiniteCheck", "check_every_default"]

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: how often (in evaluations) the samplers read the NaN / inf flag on a device other than the CPU
DEVICE_CHECK_EVERY = 16


def check_every_default(device) -> int:
    """The samplers' default cadence of the NaN / inf check: 1 on the CPU, :data:`DEVICE_CHECK_EVERY` elsewhere.

    Arguments:
        device: a torch.device (or its name) of the state.
    Returns:
        An int >= 1, the number of evaluations between two reads of the flag.
    """
    return 1 if torch.device(device).type == "cpu" else DEVICE_CHECK_EVERY


def _total(value: torch.Tensor) -> torch.Tensor:
    """The sum of ``value`` in float64, a 0-d tensor: finite exactly when every element is (NaN and inf
    propagate; a float32 / float16 output cannot overflow a float64 sum). One reduction, about a
    third of the cost of ``isfinite(value).all()``."""
    return (value.detach() if value.requires_grad else value).sum(dtype=torch.float64)


def _time_range(t) -> str:
    if isinstance(t, torch.Tensor) and t.numel():
        return f"[{float(t.min()):.6g}, {float(t.max()):.6g}]"
    return f"[{float(t):.6g}, {float(t):.6g}]"


class FiniteCheck:
    """Deferred NaN / inf check of score outputs: one device flag per call, read every ``every`` calls.

    Arguments:
        every: calls between two reads of the flags (int >= 1; 1 reads each call at once).
        what: the start of the error message (default "score_fn returned NaN or inf").
    Attributes:
        calls: number of outputs checked so far (int).
    Raises:
        TypeError / ValueError: ``every`` not an int >= 1.
    """

    def __init__(self, every: int = 1, what: str = "score_fn returned NaN or inf"):
        if isinstance(every, bool) or not isinstance(every, int):
            raise TypeError(f"check_every (how often the NaN / inf flag is read) must be an int >= 1; got {every!r}")
        if every < 1:
            raise ValueError(f"check_every (how often the NaN / inf flag is read) must be >= 1; got {every}")
        self.every, self.what, self.calls = every, what, 0
        self._pending: list = []  # (float64 sum of the output: finite iff it is, t, call number, what)

    def add(self, value: torch.Tensor, t, what: str | None = None) -> None:
        """Record whether ``value`` is all finite (no synchronisation unless a read is due).

        Arguments:
            value: the output (B, *S) to check. t: (B,) times (or a number) of the call, for the error.
            what: optional start of the error message (default the check's ``what``).
        Raises:
            ValueError: at a read, when an output since the last read held NaN / inf.
        """
        self.calls += 1
        if self.every == 1:
            if not math.isfinite(float(_total(value))):
                raise ValueError(f"{what or self.what} at t in {_time_range(t)}")
            return
        self._pending.append((_total(value), t, self.calls, what))
        if len(self._pending) >= self.every:
            self.flush()

    def flush(self) -> None:
        """Read the pending flags (one synchronisation); raise for the first bad output.

        Raises:
            ValueError: an output since the last read held NaN / inf; the message names the time
                range of that call, its number and the evaluation at which it was read.
        """
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        flags = torch.isfinite(torch.stack([p[0] for p in pending]))
        if bool(flags.all()):
            return
        i = int((~flags).nonzero()[0, 0])
        _, t, n, what = pending[i]
        raise ValueError(f"{what or self.what} at t in {_time_range(t)} (evaluation {n}; "
                         f"read at evaluation {self.calls}: the check reads the device every {self.every} "
                         "evaluations)")


def call_score(score_fn: Callable, x: torch.Tensor, t: torch.Tensor, check: FiniteCheck | None = None) -> torch.Tensor:
    """Call ``score_fn(x, t)`` and check its output.

    Arguments:
        score_fn: callable (x (B, *S), t (B,)) -> (B, *S). A callable with a true attribute
            ``checks_output`` (the samplers' counted score) checks its own output and is called as is.
        x: (B, *S) state. t: (B,) times.
        check: optional :class:`FiniteCheck` that defers the NaN / inf test (no host-device
            synchronisation per call); default None tests at once.
    Returns:
        The score (B, *S), as ``score_fn`` returned it.
    Raises:
        ValueError: the output's shape differs from x's, or it holds NaN / inf (the message
            gives the time range of the call, so a blow-up mid-solve is located; with ``check``
            possibly at a later call, see :class:`FiniteCheck`).
    """
    if getattr(score_fn, "checks_output", False) is True:
        return score_fn(x, t)
    s = score_fn(x, t)
    if not isinstance(s, torch.Tensor) or s.shape != x.shape:
        got = tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__
        raise ValueError(f"score_fn returned shape {got} for x of shape {tuple(x.shape)}; it must match x")
    if check is None:
        if not math.isfinite(float(_total(s))):
            raise ValueError(f"score_fn returned NaN or inf at t in [{float(t.min()):.6g}, {float(t.max()):.6g}]")
    else:
        check.add(s, t)
    return s
