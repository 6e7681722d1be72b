"""Calling a score function: the one checked call that the SDEs, solvers and losses go through.

A score function is any callable (x (B, *S), t (B,)) -> (B, *S), an estimate of
grad_x log p_t(x) (a :class:`scoresde.ScoreModel` is one). This module imports nothing else of
the package, so both :mod:`scoresde.sde` and :mod:`scoresde.score` can use it.
"""
from __future__ import annotations

from typing import Callable

import torch

__all__ = ["ScoreFn", "call_score"]

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def call_score(score_fn: Callable, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Call ``score_fn(x, t)`` and check its output.

    Raises:
        ValueError: the output's shape differs from x's, or it holds NaN / inf (the message
            gives the time range of the call, so a blow-up mid-solve is located).
    """
    s = score_fn(x, t)
    if not isinstance(s, torch.Tensor) or s.shape != x.shape:
        got = tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__
        raise ValueError(f"score_fn returned shape {got} for x of shape {tuple(x.shape)}; it must match x")
    if not bool(torch.isfinite(s).all()):
        raise ValueError(f"score_fn returned NaN or inf at t in [{float(t.min()):.6g}, {float(t.max()):.6g}]")
    return s
