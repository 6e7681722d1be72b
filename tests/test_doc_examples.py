"""The Python examples of README.md and docs/*.md run as written (tests/doc_examples.py has the rules).

Default suite: every page's blocks in one subprocess (one torch import), at the reduced sizes of
``doc_examples.REDUCE``, each page in order and in its own namespace, with a timeout; shown
outputs are compared where a block ran unreduced. ``-m slow``: every page as written.
"""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

import doc_examples as D

ENV = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg", PYTHONPATH=str(D.ROOT))
# all pages together at reduced size: ~40 s of CPU time (so about that on 2 idle cores); the limit
# leaves room for a machine shared with other jobs, where wall-clock time was 5-10x the CPU time
TIMEOUT_S = 600


def _spec(tmp: pathlib.Path, full: bool) -> dict:
    pages = []
    for page in D.PAGES:
        blocks = D.code_blocks(page)
        if not full:
            blocks, _ = D.reduced(page.name, blocks)
        if blocks:
            pages.append({"name": page.name, "cwd": str(tmp / page.stem), "blocks": blocks})
    return {"pages": pages}


def _run(tmp: pathlib.Path, full: bool, timeout: float) -> tuple[dict, dict]:
    spec = _spec(tmp, full)
    (tmp / "spec.json").write_text(json.dumps(spec))
    out = tmp / "out.jsonl"
    try:
        proc = subprocess.run([sys.executable, str(D.ROOT / "tests" / "doc_examples.py"), str(tmp / "spec.json"),
                               str(out)], env=ENV, capture_output=True, text=True, timeout=timeout)
        err = None if proc.returncode == 0 else proc.stderr[-3000:]
    except subprocess.TimeoutExpired:
        err = f"the examples ran past {timeout:.0f} s"
    recs = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    return spec, {"records": {(r["page"], r["line"]): r for r in recs}, "error": err, "last": recs[-1] if recs else None}


@pytest.fixture(scope="module")
def reduced_run(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("doc_examples"), full=False, timeout=TIMEOUT_S)


def _check(spec, result, page_name, *, check_all_outputs: bool):
    page = next((p for p in spec["pages"] if p["name"] == page_name), None)
    if page is None:
        return
    recs = result["records"]
    for b in page["blocks"]:
        where = f"{page_name}:{b['line']}"
        r = recs.get((page_name, b["line"]))
        if r is None:
            pytest.fail(f"{where} did not run: {result['error']} (last block finished: {result['last']})")
        if b["no_run"]:
            assert r["status"] == "no-run"
            continue
        assert r["status"] == "ok", f"{where} failed:\n{r['error']}"
        if b["expected"] is not None and (check_all_outputs or not b.get("reduced")):
            msg = D.output_mismatch(b["expected"], r["stdout"])
            assert msg is None, f"{where}: {msg}"


PAGE_NAMES = [p.name for p in D.PAGES if D.code_blocks(p)]


@pytest.mark.parametrize("page_name", PAGE_NAMES)
def test_page_examples_run(reduced_run, page_name):
    """Every block of the page not marked no-run runs without raising (at reduced size), and its
    shown output matches what it printed where the block ran as written."""
    if page_name == "pretrained.md":
        pytest.importorskip("diffusers", reason="pretrained.md needs diffusers (the dev or pretrained extra)")
    spec, result = reduced_run
    _check(spec, result, page_name, check_all_outputs=False)


def test_every_block_runs_or_says_why_not_and_states_its_time():
    """Each ```python block is either run or marked ``<!-- no-run: reason -->``; each block that
    runs states its run time on a 2-core CPU; every block compiles; no REDUCE entry is stale."""
    problems = []
    for page in D.PAGES:
        blocks = D.code_blocks(page)
        for b in blocks:
            where = f"{page.name}:{b['line']}"
            compile(b["source"], where, "exec")
            if not b["no_run"] and not b["states_time"]:
                problems.append(f"{where}: no run time stated (a comment like '# ~2 s on a 2-core CPU')")
            if b["no_run"] and b["expected"] is not None:
                problems.append(f"{where}: a no-run block cannot show an output the test would check")
        _, stale = D.reduced(page.name, blocks)
        problems += [f"{page.name}: REDUCE entry {s!r} matches no block" for s in stale]
    assert not problems, "\n".join(problems)
    assert sum(len(D.code_blocks(p)) for p in D.PAGES) >= 8


def test_parser_reads_markers(tmp_path):
    """The markers are read as documented: no-run with its reason, a shown output, a stated time;
    a wrong number in a shown output is a mismatch."""
    page = tmp_path / "p.md"
    page.write_text("<!-- no-run: needs a GPU -->\n```python\nx = 1\n```\n\n```python\nprint(1.5, 'a')  "
                    "# ~1 s on a 2-core CPU\n```\n\n<!-- output -->\n```text\n1.5 a\n```\n")
    a, b = D.code_blocks(page)
    assert a["no_run"] == "needs a GPU" and not a["states_time"] and a["expected"] is None
    assert b["no_run"] is None and b["states_time"] and b["expected"] == "1.5 a\n" and b["line"] == 7
    assert D.output_mismatch("1.5 a\n", "1.5 a\n") is None
    assert D.output_mismatch("1.5 a\n", "1.5009 a\n") is None
    assert "1.6" in D.output_mismatch("1.5 a\n", "1.6 a\n")
    assert D.output_mismatch("1.5 a\n", "1.5 b\n") is not None


def test_runner_reports_a_raising_block(tmp_path):
    """A block that raises is reported as an error with its traceback, and the page's later blocks
    are not run (they would see a half-built namespace)."""
    spec = {"pages": [{"name": "x.md", "cwd": str(tmp_path / "x"), "blocks": [
        {"line": 2, "source": "y = 1\n", "no_run": None},
        {"line": 5, "source": "raise RuntimeError('boom')\n", "no_run": None},
        {"line": 9, "source": "print(y)\n", "no_run": None}]}]}
    (tmp_path / "s.json").write_text(json.dumps(spec))
    subprocess.run([sys.executable, str(D.ROOT / "tests" / "doc_examples.py"), str(tmp_path / "s.json"),
                    str(tmp_path / "o.jsonl")], env=ENV, check=True, timeout=60)
    recs = [json.loads(line) for line in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert [r["status"] for r in recs] == ["ok", "error", "skipped"]
    assert "boom" in recs[1]["error"]


@pytest.mark.slow
def test_pages_full_size(tmp_path):
    """``-m slow``: every page as written (no substitutions), every shown output checked."""
    spec, result = _run(tmp_path, full=True, timeout=3600)
    for name in PAGE_NAMES:
        _check(spec, result, name, check_all_outputs=True)


def test_install_instructions_are_the_ones_that_work():
    """The package is not on PyPI: no page may tell a reader to `pip install scoresde`; the demo page
    gives the install from a clone (setup.sh or pip install -e .)."""
    import re
    for page in D.PAGES:
        text = page.read_text()
        assert not re.search(r"pip install\s+scoresde\b", text), page.name
    demo = (D.ROOT / "docs" / "demo.md").read_text()
    assert "bash setup.sh" in demo and "pip install -e ." in demo
