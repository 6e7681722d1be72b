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
        free = row["per_sample_free"]
        for p in (per, free):  # per-sample solves leave finished samples out: at most B per evaluation
            assert p["nfe"] > 0 and p["sample_evals"] <= p["nfe"] * row["B"]
            assert p["cpu_s"] > 0 and p["max_rel_change_logp"] >= 0
        assert free["network_rows"] == free["sample_evals"] and free["network_calls"] == free["nfe"]
        # 16 rows in every call of the network: B <= 16 pads each evaluation to one call of 16 rows
        assert per["network_calls"] == per["nfe"] and per["network_rows"] == 16 * per["nfe"]
        assert shared["cpu_s"] > 0 and shared["max_rel_change_logp"] >= 0
        # issue 13, item 3: a sample's log-density with per-sample steps is the same alone and in the batch,
        # in float32 with calls of one shape and in float64 either way
        assert per["max_rel_change_logp"] < 1e-6 and per["float64_max_rel_change_logp"] < 1e-6, per
        assert free["float64_max_rel_change_logp"] < 1e-6, free
        # the fixed grid (dpmpp_2m in lambda) takes steps + 1 calls on the whole batch and is batch-independent too
        grid = row["grid"]
        assert grid["nfe"] == 9 and grid["sample_evals"] == 9 * row["B"], grid
        assert grid["float64_max_rel_change_logp"] < 1e-10 and grid["max_rel_change_logp"] < 1e-4, grid
    assert d["readme"] == []  # the quick run owns no README row
    assert "| batch | shared step: NFE (CPU s) |" in (tmp_path / "step_control.md").read_text()
