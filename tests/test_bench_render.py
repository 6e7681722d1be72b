"""The README's benchmark rows are generated from the benchmarks' JSON (never typed), and every
benchmark script is exercised by a ``--quick`` test and shown on docs/benchmarks.md."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import render  # noqa: E402


def test_readme_rows_are_up_to_date():
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "render.py"), "--check"], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr


def test_render_replaces_only_the_block_and_needs_markers():
    rows = [{"what": "w", "value": "1.0x", "how": "`cmd`"}]
    text = f"a\n{render.START}\nold\n{render.END}\nb\n"
    out = render.render(text, rows)
    assert out.startswith("a\n") and out.endswith("\nb\n") and "| w | 1.0x | `cmd` |" in out and "old" not in out
    with pytest.raises(ValueError, match="markers"):
        render.render("no markers", rows)


def test_every_result_has_meta_and_readme_rows_and_is_on_the_benchmarks_page():
    page = (ROOT / "docs" / "benchmarks.md").read_text()
    for d in sorted(p for p in render.RESULTS.iterdir() if p.is_dir()):
        f = d / f"{d.name}.json"
        assert f.is_file(), f"{d} holds no {d.name}.json"
        payload = json.loads(f.read_text())
        assert "meta" in payload
        assert f"benchmarks/results/{d.name}/{d.name}.md" in page, f"docs/benchmarks.md does not show {d.name}"


def test_every_benchmark_script_has_a_quick_test():
    tests = "".join(p.read_text() for p in (ROOT / "tests").glob("test_*.py"))
    for script in sorted((ROOT / "benchmarks").glob("bench_*.py")):
        assert re.search(rf"{script.stem}\b", tests), f"no test runs {script.name} --quick"
