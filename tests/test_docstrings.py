"""Every public class and function has the docstring layout the API reference is generated from
(issue 14, item 4): a summary, then ``Arguments:`` (with shapes and units), ``Returns:``,
``Raises:`` and ``Reference:`` sections.

The rule checked here (the same one the docs build's API overview counts with):

* a public name is a name of the module's ``__all__`` (else a class or function the module
  defines without a leading underscore); constants and other data are not checked;
* its docstring - for a class, the class docstring plus its own ``__init__``'s - has a line
  ``Arguments:`` (or ``Args:`` / ``Parameters:``), unless the callable takes no arguments
  (``self`` / ``cls`` aside);
* and a line ``Returns:`` (or ``Yields:``), unless it is a class.

Covered: ``scoresde.__all__`` and the modules whose public names all have the layout.
"""
from __future__ import annotations

import importlib
import inspect
import re

import pytest

import scoresde

#: modules checked besides ``scoresde`` itself (every public name of each has the layout)
MODULES = ["scoresde.models", "scoresde.data", "scoresde.oracle", "scoresde.solvers.base",
           "scoresde.solvers.registry"]

ARGS = re.compile(r"^\s*(Arguments|Args|Parameters):", re.M)
RETURNS = re.compile(r"^\s*(Returns|Yields):", re.M)


def public_names(module) -> list[str]:
    if hasattr(module, "__all__"):
        return list(module.__all__)
    return [n for n, o in vars(module).items() if not n.startswith("_")
            and getattr(o, "__module__", None) == module.__name__ and (inspect.isclass(o) or inspect.isfunction(o))]


def takes_arguments(obj) -> bool:
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return True
    return any(p.name not in ("self", "cls") for p in sig.parameters.values())


def missing_sections(obj) -> list[str]:
    """The sections ``obj``'s docstring lacks under the rule above ([] when it has the layout)."""
    doc = obj.__doc__ or ""
    if inspect.isclass(obj) and "__init__" in vars(obj):
        doc += "\n" + (obj.__init__.__doc__ or "")
    missing = []
    if takes_arguments(obj) and not ARGS.search(doc):
        missing.append("Arguments")
    if not inspect.isclass(obj) and not RETURNS.search(doc):
        missing.append("Returns")
    return missing


def failures(module) -> list[str]:
    out = []
    for name in public_names(module):
        obj = getattr(module, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            miss = missing_sections(obj)
            if miss:
                out.append(f"{module.__name__}.{name} (no {' / '.join(miss)})")
    return out


def test_rule_flags_a_bare_function_and_passes_the_house_layout():
    def bare(x):
        """Only a summary."""

    def good(x):
        """Summary.

        Arguments:
            x: (B,) input.
        Returns:
            (B,) output.
        """

    class NoInit:
        """A class without arguments."""

    assert missing_sections(bare) == ["Arguments", "Returns"]
    assert missing_sections(good) == []
    assert missing_sections(NoInit) == []


def test_scoresde_all_has_the_layout():
    names = [n for n in scoresde.__all__ if inspect.isclass(getattr(scoresde, n))
             or inspect.isfunction(getattr(scoresde, n))]
    assert len(names) > 20
    bad = failures(scoresde)
    assert not bad, "public callables of scoresde.__all__ without the Arguments / Returns layout:\n  " + \
        "\n  ".join(bad)


@pytest.mark.parametrize("modname", MODULES)
def test_module_has_the_layout(modname):
    bad = failures(importlib.import_module(modname))
    assert not bad, f"public callables of {modname} without the Arguments / Returns layout:\n  " + "\n  ".join(bad)
