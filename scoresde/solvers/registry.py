"""The registry of samplers: importing this module registers every built-in solver.

:data:`SOLVERS` maps each ``method`` name of :func:`scoresde.sample` to its
:class:`~scoresde.solvers.base.Solver` class; :func:`solver_table` lists their declarations
(name, order, stochastic, NFE as a function of steps, options), which the docs and the CLI read.
"""
from __future__ import annotations

from . import discrete, dpm_solver, dpmpp, heun, pc, pfode, sdeint, unipc  # noqa: F401  (register)
from .base import SOLVERS, Solver, get_solver

#: the method names, in registration order
METHODS = tuple(SOLVERS)


def nfe_formula(cls: type[Solver]) -> str:
    """NFE as a function of ``steps`` for the default options, as text (e.g. "2 steps - 1")."""
    if cls.steps_kind == "adaptive":
        return "adaptive (reported)"
    s = cls()
    a, b = s.nfe(1), s.nfe(2)
    slope, const = b - a, a - (b - a)
    text = "steps" if slope == 1 else f"{slope} steps"
    return text + (f" + {const}" if const > 0 else f" - {-const}" if const < 0 else "")


def solver_table() -> list[dict]:
    """One dict per registered solver: name, summary, order, stochastic, nfe, options (defaults)."""
    rows = []
    for name, cls in SOLVERS.items():
        inst = cls()
        rows.append({"name": name, "summary": cls.summary, "order": inst.order_of(), "stochastic": cls.stochastic,
                     "nfe": nfe_formula(cls), "options": dict(cls.options)})
    return rows


__all__ = ["SOLVERS", "METHODS", "Solver", "get_solver", "solver_table", "nfe_formula"]
