"""benchmarks/bench_likelihood.py --quick runs and writes its table, JSON and README row (issue 13, item 2).

The quick run is tiny (batch 2, an untrained UNet with a random output layer, tolerances 1e-3 and
1e-5, truth at 1e-8): it checks that the three ways compute the same likelihood (the errors
against the truth shrink with the tolerance, the truth in t and in lambda agree) and that the
equal-error summary is written; the speed figures come from the full run.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quick_run(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_likelihood.py"), "--quick", "--out",
                           str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "likelihood.md").exists()
    payload = json.loads((tmp_path / "likelihood.json").read_text())
    runs = payload["rows"]["runs"]
    fixed = {"ours (lambda, rk4)", "ours (lambda, dpmpp_2m)", "ours (lambda, dpmpp_3m)"}
    assert {r["method"] for r in runs} == {"reference (scipy RK45, 2 calls)", "ours (t, dopri5)",
                                           "ours (lambda, dopri5)"} | fixed
    for method in {r["method"] for r in runs} - fixed:
        errs = {r["tol"]: r["max_err_bpd"] for r in runs if r["method"] == method}
        assert errs[1e-5] < 1e-3 and errs[1e-5] < errs[1e-3], (method, errs)  # the same number, to tolerance
    for method in fixed:  # the fixed grids converge to the same number (8 -> 32 steps: measured 1/5 or less)
        errs = {r["steps"]: r["max_err_bpd"] for r in runs if r["method"] == method}
        assert errs[32] < errs[8] / 4, (method, errs)
    assert {r["nfe"] for r in runs if r["method"] == "ours (lambda, dpmpp_2m)"} == {9, 33}  # steps + 1
    for r in runs:
        calls = 2 * r["nfe"] if r["method"].startswith("reference") else r["nfe"]
        assert r["network_calls"] == calls and r["cpu_s"] > 0
    assert payload["rows"]["truth"][0]["truth_t_vs_lambda"] < 1e-5
    assert payload["rows"]["equal_error"][0]["batch"] == 2
    (row,) = payload["readme"]
    assert set(row) == {"what", "value", "how"} and "equal error" in row["what"]
