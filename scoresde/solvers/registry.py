"""The registry of samplers: importing this module registers every built-in solver.

:data:`SOLVERS` maps each ``method`` name of :func:`scoresde.sample` to its
:class:`~scoresde.solvers.base.Solver` class; :func:`solver_table` lists their declarations
(name, order, stochastic, NFE as a function of steps, options), which the docs and the CLI read.
"""
from __future__ import annotations

from . import deis, discrete, dpm_solver, dpmpp, heun, pc, pfode, sdeint, unipc  # noqa: F401  (register)
from .._checks import check_choice
from .base import SOLVERS, Solver

_FIRST = ("euler_maruyama", "reverse_diffusion", "ancestral", "pc", "sde", "ode", "ddpm", "ddim", "dpm_solver",
          "dpm_adaptive", "dpmpp_2m", "dpmpp_3m", "dpmpp_2m_sde", "unipc", "deis", "heun")
#: the method names: the SDE samplers, the discrete chain, then the fast solvers (later additions last)
METHODS = tuple(n for n in _FIRST if n in SOLVERS) + tuple(n for n in SOLVERS if n not in _FIRST)


def get_solver(method: str) -> type[Solver]:
    """The Solver class registered as ``method``.

    Arguments:
        method: a name of :data:`METHODS` (a ``method`` of :func:`scoresde.sample`).
    Returns:
        The :class:`~scoresde.solvers.base.Solver` subclass (not an instance).
    Raises:
        ValueError: an unknown name (the message lists the registered ones).
        TypeError: ``method`` not a string.
    """
    return SOLVERS[check_choice("method", method, METHODS)]


def nfe_formula(cls: type[Solver]) -> str:
    """NFE as a function of ``steps`` for the default options, as text (e.g. "2 steps - 1").

    Read off the solver's own :meth:`~scoresde.solvers.base.Solver.nfe` at 1 and 2 steps (an
    affine count), ``denoise`` not included.

    Arguments:
        cls: a registered :class:`~scoresde.solvers.base.Solver` subclass.
    Returns:
        The formula as a string, e.g. "steps", "2 steps - 1", or "adaptive (reported)" for an
        adaptive solver.
    """
    if cls.steps_kind == "adaptive":
        return "adaptive (reported)"
    s = cls()
    a, b = s.nfe(1), s.nfe(2)
    slope, const = b - a, a - (b - a)
    text = "steps" if slope == 1 else f"{slope} steps"
    return text + (f" + {const}" if const > 0 else f" - {-const}" if const < 0 else "")


def solver_table() -> list[dict]:
    """The declarations of the registered solvers, in :data:`METHODS` order.

    Returns:
        A list of one dict per solver with keys "name" (str), "summary" (str), "order" (int, or
        None where undefined), "stochastic" (bool), "nfe" (:func:`nfe_formula`'s text) and
        "options" (a dict of the option defaults).
    """
    rows = []
    for name in METHODS:
        cls = SOLVERS[name]
        inst = cls()
        rows.append({"name": name, "summary": cls.summary, "order": inst.order_of(), "stochastic": cls.stochastic,
                     "nfe": nfe_formula(cls), "options": dict(cls.options)})
    return rows


__all__ = ["SOLVERS", "METHODS", "Solver", "get_solver", "solver_table", "nfe_formula", "markdown_table"]


def markdown_table() -> str:
    """The registry as the Markdown table of docs/sampling.md (a test keeps the page equal to it).

    Returns:
        The table as a string, a header and one row per :func:`solver_table` entry, ending in a
        newline.
    """
    lines = ["| `method` | what it is | order | stochastic | NFE | options (defaults) |", "|---|---|---|---|---|---|"]
    for r in solver_table():
        opts = ", ".join(f"`{k}={v!r}`" for k, v in r["options"].items()) or "-"
        order = "-" if r["order"] is None else str(r["order"])
        lines.append(f"| `{r['name']}` | {r['summary']} | {order} | {'yes' if r['stochastic'] else 'no'} | "
                     f"{r['nfe']} | {opts} |")
    return "\n".join(lines) + "\n"
