"""The documentation: every tutorial runs at its --quick size and writes the figures it declares;
the percent-format cells parse as the docs build reads them; the strict MkDocs build (tutorials
executed, API reference generated, every link and reference resolved) passes where mkdocs is
installed (``bash setup.sh docs``)."""
from __future__ import annotations

import ast
import importlib.util
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
TUTORIALS = sorted((ROOT / "docs" / "tutorials").glob("*.py"))
ENV = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg")


def declared_figures(script: pathlib.Path) -> list[str]:
    """The tutorial's module-level ``FIGURES = [...]`` list (every tutorial declares one)."""
    for node in ast.parse(script.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "FIGURES" for t in node.targets):
            return list(ast.literal_eval(node.value))
    raise AssertionError(f"{script.name} declares no FIGURES list")


def test_tutorials_found():
    names = {p.stem for p in TUTORIALS}
    assert {"choosing_sde_and_solver", "discretizations"} <= names, names


# slow (2.5 min of the default run): the strict docs build of .ci/run executes every tutorial at the
# same --quick size and fails when one raises; this test adds the figure check (python3 -m pytest -m slow)
@pytest.mark.slow
@pytest.mark.parametrize("script", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_quick(script, tmp_path):
    """`python docs/tutorials/X.py --quick --out DIR` exits 0 and writes every declared figure
    (non-empty PNG files) into DIR, not next to the script."""
    figures = declared_figures(script)
    assert figures
    proc = subprocess.run([sys.executable, str(script), "--quick", "--out", str(tmp_path)], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for f in figures:
        path = tmp_path / f
        assert path.is_file(), f"{script.name} did not write {f}; wrote {sorted(p.name for p in tmp_path.iterdir())}"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000, f


def _runner():
    spec = importlib.util.spec_from_file_location("run_tutorial", ROOT / "docs" / "hooks" / "run_tutorial.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_cells_parse():
    """Each tutorial starts with a Markdown cell holding the page title, and its cells put back
    together compile (the build executes them one by one in one namespace)."""
    run = _runner()
    for script in TUTORIALS:
        cells = run.parse_cells(script.read_text())
        assert cells[0]["kind"] == "markdown" and cells[0]["source"].startswith("# "), script.name
        code = "\n".join(c["source"] for c in cells if c["kind"] == "code")
        compile(code, script.name, "exec")
        assert sum(c["kind"] == "markdown" for c in cells) >= 3, script.name


def test_runner_records_cells(tmp_path):
    """run_tutorial.py executes the cells in one namespace, captures what each printed, lists the
    files each wrote, and fails (exit 1) when a cell raises."""
    script = tmp_path / "t.py"
    script.write_text('# %% [markdown]\n# # Title\n\n# %%\nimport sys, pathlib\nout = pathlib.Path(sys.argv[2])\n'
                      'print("quick" if "--quick" in sys.argv else "full")\n\n# %% output="markdown"\n'
                      '(out / "a.png").write_bytes(b"x")\nprint("| a |")\n')
    run = _runner()
    assert run.main([str(script), str(tmp_path / "o"), "--quick"]) == 0
    import json

    data = json.loads((tmp_path / "o" / "cells.json").read_text())
    code = [c for c in data["cells"] if c["kind"] == "code"]
    assert [c["stdout"] for c in code] == ["quick\n", "| a |\n"]
    assert code[1]["files"] == ["a.png"] and code[1]["options"] == {"output": "markdown"}
    bad = tmp_path / "bad.py"
    bad.write_text("# %% [markdown]\n# # T\n\n# %%\nraise RuntimeError('boom')\n")
    assert run.main([str(bad), str(tmp_path / "o2")]) == 1


# The Python blocks of the guide pages and the README: tests/test_doc_examples.py runs them.


def _mkdocs_available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("mkdocs", "material", "mkdocstrings_handlers"))


@pytest.mark.slow
@pytest.mark.skipif(not _mkdocs_available(), reason="mkdocs / mkdocs-material / mkdocstrings[python] not installed "
                                                    "(bash setup.sh docs)")
def test_mkdocs_build_strict(tmp_path):
    """`mkdocs build --strict` succeeds: no warning, broken link, unresolved reference, griffe
    docstring warning or failing tutorial; the generated pages are there."""
    exe = shutil.which("mkdocs")
    cmd = [exe] if exe else [sys.executable, "-m", "mkdocs"]
    site = tmp_path / "site"
    proc = subprocess.run(cmd + ["build", "--strict", "--site-dir", str(site)], cwd=ROOT,
                          env=dict(ENV, NO_MKDOCS_2_WARNING="1"), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert "WARNING" not in proc.stderr, proc.stderr[-5000:]
    for page in ("index.html", "cli.html", "api/scoresde.html", "api/solvers.html",
                 "tutorials/choosing_sde_and_solver.html", "tutorials/discretizations.html",
                 "tutorials/discretizations.png"):
        assert (site / page).is_file(), page
    api = (site / "api" / "scoresde.html").read_text()
    import scoresde

    missing = [n for n in scoresde.__all__ if f'id="scoresde.{n}"' not in api]
    assert not missing, f"API page lacks {missing}"
