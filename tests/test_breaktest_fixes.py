"""Regressions of the break-test's documentation defects: the "sde" solver's summary and docs/sampling.md's
``sample()`` signature and torchsde section."""
import inspect
import re
from pathlib import Path

import scoresde
from scoresde.solvers.base import SOLVERS

DOC = Path(__file__).resolve().parents[1] / "docs" / "sampling.md"


def test_sde_summary_says_it_steps_torchsde_directly():
    # the adapter drives torchsde's step classes (scoresde/solvers/sdeint.py), not torchsde.sdeint
    summary = SOLVERS["sde"].summary
    assert "through torchsde.sdeint" not in summary and "stepped directly" in summary


def test_docs_sample_signature_lists_every_parameter():
    page = DOC.read_text()
    shown = re.search(r"`sample\(score_fn, sde, shape, \*,(.*?)\)` returns", page, re.S).group(1)
    shown = {p.split("=")[0].strip() for p in shown.replace("\n", " ").split(",")}
    params = set(inspect.signature(scoresde.sample).parameters) - {"score_fn", "sde", "shape", "options"}
    assert params <= shown, f"missing from docs/sampling.md: {sorted(params - shown)}"


def test_docs_warn_that_reversible_heun_is_unstable():
    section = DOC.read_text().split("## The reverse SDE through torchsde")[1].split("\n## ")[0]
    assert re.search(r"Warning:\*\* `sde_method=\"reversible_heun\"` is unstable", section)
