"""The solver benchmark (benchmarks/bench_solvers.py --quick) runs, writes its outputs, and compares fairly.

The fairness check: the same algorithm on the same nodes must give the same error in every
library that runs it in float64 (ours dpmpp_2m with lower_order_final=False on karras /
log-SNR nodes vs k-diffusion's sample_dpmpp_2m on the same sigmas; ours dpm_solver order 3 vs
k-diffusion's sample_dpm_fast), and diffusers (float32) with the model called at its own
unrounded sigma must agree with ours to float32 rounding.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from peers import k_diffusion_sampling

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_solvers.py"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    pytest.importorskip("diffusers")
    k_diffusion_sampling()  # skips when k-diffusion is not installed
    out = tmp_path_factory.mktemp("bench_solvers")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    return out, proc.stdout


def test_outputs_exist(quick_run):
    out, stdout = quick_run
    for name in ("solvers.md", "solvers.json", "solvers.png"):
        f = out / name
        assert f.is_file() and f.stat().st_size > 0, name
    assert (out / "solvers.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "solvers.md").read_text()
    assert "## Summary" in md and "| 2-D | 10 |" in md
    assert "2-D NFE 10: ours" in stdout and "vs best peer" in stdout
    # no temporary files left by the atomic writers
    assert not [p for p in os.listdir(out) if p.startswith(".")]


def test_json_entries(quick_run):
    out, _ = quick_run
    data = json.loads((out / "solvers.json").read_text())
    entries = data["entries"]
    libs = {e["library"] for e in entries}
    assert {"ours", "diffusers", "k-diffusion"} <= libs
    for e in entries:
        assert {"problem", "library", "method", "config", "nfe", "error"} <= set(e)
        if e["budget"] is not None:
            assert 1 <= e["nfe"] <= e["budget"], e
    for lib in ("ours", "diffusers", "k-diffusion"):
        for b in data["meta"]["budgets"]:
            assert any(e["library"] == lib and e["budget"] == b for e in entries), (lib, b)
    # our solvers never blow up here; one summary row per budget
    assert all(math.isfinite(e["error"]) for e in entries if e["library"] == "ours")
    assert len(data["summary"]) == len(data["meta"]["budgets"])


def _entry(entries, library, config, budget):
    hits = [e for e in entries if e["library"] == library and e["config"] == config and e["budget"] == budget]
    assert len(hits) == 1, (library, config, budget, len(hits))
    return hits[0]


@pytest.mark.parametrize("ours_cfg, kd_cfg", [("dpmpp_2m karras lof=False", "dpmpp_2m karras"),
                                              ("dpmpp_2m logsnr lof=False", "dpmpp_2m exponential"),
                                              ("dpm_solver-3 logsnr", "dpm_fast")])
def test_same_algorithm_same_error(quick_run, ours_cfg, kd_cfg):
    out, _ = quick_run
    data = json.loads((out / "solvers.json").read_text())
    for b in data["meta"]["budgets"]:
        eo = _entry(data["entries"], "ours", ours_cfg, b)
        ek = _entry(data["entries"], "k-diffusion", kd_cfg, b)
        assert eo["nfe"] == ek["nfe"] == b
        assert abs(eo["error"] - ek["error"]) <= 1e-6 * ek["error"], (b, eo["error"], ek["error"])


def test_diffusers_at_exact_sigma_matches_ours(quick_run):
    out, _ = quick_run
    data = json.loads((out / "solvers.json").read_text())
    dpairs = [q for q in data["pairs"] if q["peer"].startswith("diffusers*")]
    assert len(dpairs) >= 4 * len(data["meta"]["budgets"])
    for q in dpairs:  # float32 scheduler: agreement to float32 rounding of errors ~1e-2
        assert q["rel_diff"] < 1e-3, q
