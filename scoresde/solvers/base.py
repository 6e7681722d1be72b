"""The one shape of a sampler: a :class:`Solver` declares itself, one registry maps names to solvers.

Every ``method`` of :func:`scoresde.sample` is a small subclass of :class:`Solver` that
declares

* ``name`` (the ``method=`` string) and a one-line ``summary`` with its paper and equation,
* ``options``: its keyword arguments with their defaults (anything else is a TypeError),
* ``order``: the convergence order of its deterministic part (None where it is not a fixed
  order: adaptive solves, orders chosen by an option, which :meth:`Solver.order_of` then reads),
* ``stochastic``: whether it draws noise from the generator,
* :meth:`Solver.nfe`: its number of score evaluations as a function of ``steps``,

and implements :meth:`Solver.plan` (validate the options and the step budget for one SDE and
one score; build the grid) and :meth:`Solver.solve` (integrate from x at T). What every
method shares (shape, device, dtype, generator, ``x_T``, ``denoise``, progress,
:class:`~scoresde.sampling.SampleInfo`) stays in :func:`scoresde.sample`.

Adding a sampler is adding a class decorated with :func:`register` (and importing its module
in :mod:`scoresde.solvers.registry`); the registry (:data:`SOLVERS`, complete once
:mod:`scoresde.solvers.registry` is imported; look names up with its ``get_solver``) is what
``scoresde.sample``, the docs' solver table, the CLI's ``--method`` choices and
``scoresde compare`` read.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch


#: ``hook(x, x_mean, alpha, sigma) -> (x, x_mean)``: called by every solver on its start state and
#: after each step, with the state x (B, *S), its noise-free mean x_mean (x itself for
#: deterministic steps) and the perturbation kernel's alpha, sigma (floats or (B,) tensors) at the
#: state's new time, so that x ~ alpha x_0 + sigma z there. Constrained sampling
#: (:mod:`scoresde.constrained`) replaces the known entries here; the solver continues from what
#: the hook returns (its stored history of predictions is kept).
StepHook = Callable[[torch.Tensor, torch.Tensor, Any, Any], tuple]

#: name -> Solver subclass; filled by :func:`register` (import :mod:`scoresde.solvers.registry`)
SOLVERS: dict[str, type["Solver"]] = {}


@dataclass
class Plan:
    """A solve prepared by :meth:`Solver.plan`.

    A dataclass: its arguments below are also its attributes.

    Arguments:
        nfe: score evaluations of the solve (None: adaptive, known only afterwards), the
            ``denoise`` step not included.
        steps: the step count reported in :class:`~scoresde.sampling.SampleInfo` (None: adaptive).
        times: the time grid (steps + 1,) float64 or the chain's integer timesteps, or None.
        tweedie_eps: the end time at which ``denoise=True`` applies Tweedie's formula (one
            more NFE), or None when the solver denoises by itself or ends at alpha-bar = 1.
        data: solver-specific prepared values (grids, nodes, chains, resolved options).
    """

    nfe: int | None
    steps: int | None
    times: torch.Tensor | None = None
    tweedie_eps: float | None = None
    data: dict[str, Any] = field(default_factory=dict)


class Solver:
    """Base class of the samplers of :func:`scoresde.sample`; see the module docstring.

    Arguments:
        **options: the method's keyword arguments; missing ones take the declared defaults.
    Raises:
        TypeError: an option the method does not declare (the message lists its options).
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    options: ClassVar[dict[str, Any]] = {}
    order: ClassVar[int | None] = None
    stochastic: ClassVar[bool] = False
    #: "fixed": NFE is a function of steps; "adaptive": known after the solve
    steps_kind: ClassVar[str] = "fixed"

    def __init__(self, **options):
        self.check_names(options)
        self.opts = {**self.options, **options}

    @classmethod
    def check_names(cls, options) -> None:
        """TypeError naming the options that ``cls`` does not take."""
        unknown = sorted(set(options) - set(cls.options))
        if unknown:
            raise TypeError(f"method {cls.name!r} does not take {unknown}; its options are {sorted(cls.options)}")

    def order_of(self) -> int | None:
        """The order of this configured solver (e.g. its ``order`` option); default :attr:`order`."""
        return self.order

    def nfe(self, steps: int) -> int | None:
        """Score evaluations of a solve with ``steps`` steps, ``denoise`` not included."""
        return steps

    def plan(self, score_fn, sde, steps, eps) -> Plan:
        """Validate options and budget for ``sde`` and ``score_fn``; build the grid. Raises ValueError."""
        raise NotImplementedError

    def solve(self, score, sde, x: torch.Tensor, plan: Plan, *, generator=None, denoise: bool = True,
              hook: "StepHook | None" = None) -> torch.Tensor:
        """Integrate from x (B, *S) at T; returns (B, *S) in x's dtype. ``score`` is a ScoreEval.

        ``hook`` (see :data:`StepHook`) is called on the start state and after every step."""
        raise NotImplementedError


def call_hook(hook, x, x_mean, sde, t):
    """Apply ``hook`` at continuous time t with the SDE's alpha(t), sigma(t).

    Arguments:
        hook: a :data:`StepHook` ``hook(x, x_mean, alpha, sigma) -> (x, x_mean)``, or None.
        x, x_mean: (B, *S) the state and its noise-free mean.
        sde: the forward SDE (gives alpha(t) = ``mean_coeff`` and sigma(t) = ``marginal_std``).
        t: continuous time, a number in [0, T] (not validated).
    Returns:
        The pair (x, x_mean) the hook returns, or the inputs unchanged when ``hook`` is None.
    """
    if hook is None:
        return x, x_mean
    tt = torch.tensor([float(t)], dtype=torch.float64)
    return hook(x, x_mean, float(sde.mean_coeff(tt)), float(sde.marginal_std(tt)))


def register(cls: type[Solver]) -> type[Solver]:
    """Class decorator: add ``cls`` to :data:`SOLVERS` under ``cls.name``.

    Arguments:
        cls: a :class:`Solver` subclass with a non-empty, not yet registered ``name``.
    Returns:
        ``cls`` itself, unchanged.
    Raises:
        ValueError: an empty name or one already registered.
    """
    if not cls.name or cls.name in SOLVERS:
        raise ValueError(f"solver name {cls.name!r} is empty or already registered")
    SOLVERS[cls.name] = cls
    return cls


