"""benchmarks/bench_trace.py and benchmarks/bench_overhead.py run with --quick and write their tables and JSON
(issue 13, items 4, 5 and 7). No timing is asserted: the scripts measure, the tests keep them working."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from scoresde.solvers.registry import METHODS, get_solver

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, out: Path, *extra: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--quick", "--out", str(out), *extra],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_bench_trace_quick(tmp_path):
    stdout = _run("bench_trace.py", tmp_path)
    assert "| net | D |" in stdout and "loop (before)" in stdout
    data = json.loads((tmp_path / "trace.json").read_text())
    rows = data["rows"]
    assert {(r["net"], r["D"]) for r in rows} == {("mlp", 8), ("mlp", 64), ("conv", 8), ("conv", 64)}
    for r in rows:
        assert set(r["seconds"]) >= {"hutchinson", "loop", "batched"}
        assert r["max_abs_difference"] < 1e-3  # float32: the batched trace is the loop's
        assert 1 <= r["default_chunk"] <= r["D"]
    assert data["readme"] and all({"what", "value", "how"} <= set(x) for x in data["readme"])
    assert (tmp_path / "trace.md").read_text().startswith("Measured ")


def test_bench_overhead_quick_with_before(tmp_path):
    _run("bench_overhead.py", tmp_path / "a", "--models", "mlp")
    first = json.loads((tmp_path / "a" / "overhead.json").read_text())
    stdout = _run("bench_overhead.py", tmp_path / "b", "--models", "mlp", "--before",
                  str(tmp_path / "a" / "overhead.json"))
    assert "mlp before" in stdout and "mlp after" in stdout
    data = json.loads((tmp_path / "b" / "overhead.json").read_text())
    labels = {r["method"] for r in data["rows"]}
    fixed = {m for m in METHODS if get_solver(m).steps_kind == "fixed" and m not in ("sde", "ode")}
    assert fixed <= labels and {"sde/euler", "sde/srk", "sde/reversible_heun", "ode/rk4"} <= labels
    for r in data["rows"]:
        assert r["nfe"] >= 3 and r["overhead"] > 0
    assert data["meta"]["before"]["meta"]["date"] == first["meta"]["date"]
