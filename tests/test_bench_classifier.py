"""benchmarks/bench_classifier.py --quick runs and writes its table and JSON (accuracy in [0, 1], one row per t)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_classifier_quick(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_classifier.py"), "--quick", "--out",
                        str(tmp_path)], capture_output=True, text=True, timeout=300,
                       env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr[-2000:]
    d = json.loads((tmp_path / "classifier.json").read_text())
    assert [row["t"] for row in d["rows"]] == [0.01, 0.5, 1.0]
    assert all(0.0 <= row["accuracy"] <= 1.0 for row in d["rows"])
    assert "| t | alpha(t) |" in (tmp_path / "classifier.md").read_text()
