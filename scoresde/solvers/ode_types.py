"""What every ODE solve of the package returns or raises: :class:`ODESolution`, :class:`ODESolverError`.

Shared by the torchdiffeq adapter (:mod:`scoresde.solvers.ode`, shared step size) and the batched
dopri5 with a step size per sample (:mod:`scoresde.solvers.ode_per_sample`), so that neither
imports the other. :mod:`scoresde.solvers.ode` re-exports both names.

Reference: Chen et al. 2018 (torchdiffeq); Dormand & Prince 1980.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import torch

State = Union[torch.Tensor, tuple]


class ODESolverError(RuntimeError):
    """An ODE solve that did not finish: NFE budget exhausted, step-size underflow, non-finite state."""


@dataclass
class ODESolution:
    """Result of :func:`scoresde.solvers.ode.solve_ode`.

    A dataclass made by ``solve_ode``: its arguments below are also its attributes.

    Arguments:
        y: the state at t1, a tensor or a tuple of tensors shaped like ``y0``.
        nfe: number of calls of ``func`` (int), rejected adaptive steps and the initial-step
            probe included. With ``step_control="per_sample"`` a call evaluates only the samples
            still running, so the work done is ``nfe_per_sample.sum()`` sample evaluations.
        method: the method used.
        nfe_per_sample: (B,) int64 on the CPU, the number of evaluations of each sample
            (``step_control="per_sample"``; what the sample alone would have cost), or None
            (shared step: every sample takes part in all ``nfe`` calls).
        step_control: "batch" (one step size for the batch) or "per_sample".
    """

    y: State
    nfe: int
    method: str
    nfe_per_sample: torch.Tensor | None = None
    step_control: str = "batch"
