"""benchmarks/bench_step_control.py --quick runs and writes its table and JSON (both modes, per batch size)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_step_control_quick(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_step_control.py"), "--quick", "--out",
                        str(tmp_path)], capture_output=True, text=True, timeout=600,
                       env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr[-2000:]
    d = json.loads((tmp_path / "step_control.json").read_text())
    assert [row["B"] for row in d["rows"]] == [2, 3]
    for row in d["rows"]:
        shared, per = row["batch"], row["per_sample"]
        assert shared["nfe"] > 0 and shared["sample_evals"] == shared["nfe"] * row["B"]
        # per-sample calls leave finished samples out: at most B rows per call
        assert per["nfe"] > 0 and per["sample_evals"] <= per["nfe"] * row["B"]
        assert shared["cpu_s"] > 0 and per["cpu_s"] > 0
        assert all(v >= 0 for v in (shared["max_rel_change_logp"], per["max_rel_change_logp"]))
        # issue 13, item 3: in float64 (no batch-size rounding of the UNet to speak of) a sample's log-density
        # with per-sample steps is the same alone and in the batch
        assert per["float64_max_rel_change_logp"] < 1e-6, per
        # the fixed grid (dpmpp_2m in lambda) takes steps + 1 calls on the whole batch and is batch-independent too
        grid = row["grid"]
        assert grid["nfe"] == 9 and grid["sample_evals"] == 9 * row["B"], grid
        assert grid["float64_max_rel_change_logp"] < 1e-10 and grid["max_rel_change_logp"] < 1e-4, grid
    assert d["readme"] == []  # the quick run owns no README row
    assert "| batch | shared: NFE |" in (tmp_path / "step_control.md").read_text()
