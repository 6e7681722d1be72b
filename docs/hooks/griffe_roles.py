"""Griffe extension: turn the Sphinx roles of scoresde's docstrings into Markdown the site renders.

The docstrings cite other names as ``:func:`scoresde.sample```, ``:class:`~scoresde.ScoreModel```
(Sphinx's roles, which read well in ``help()``). Python-Markdown would show the role name as text,
so each role becomes inline code; a fully qualified ``scoresde.`` name also becomes an optional
cross-reference (a link when the name is documented on the site, plain code otherwise). ``~``
keeps only the last component, as in Sphinx.
"""
from __future__ import annotations

import re

import griffe

ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|data|attr|exc|obj|const):`(?P<tilde>~?)(?P<target>[^`]+)`")


def _replace(m: re.Match) -> str:
    target = m.group("target").strip()
    text = target.rsplit(".", 1)[-1] if m.group("tilde") else target
    if target.startswith("scoresde."):
        return f'<autoref identifier="{target}" optional><code>{text}</code></autoref>'
    return f"`{text}`"


def convert(text: str) -> str:
    """The docstring text with every Sphinx role replaced (see the module docstring)."""
    return ROLE.sub(_replace, text)


class SphinxRoles(griffe.Extension):
    """Rewrite each docstring's Sphinx roles when griffe loads the object."""

    def on_instance(self, *, node, obj, agent, **kwargs) -> None:  # noqa: D102
        if obj.docstring is not None:
            obj.docstring.value = convert(obj.docstring.value)
