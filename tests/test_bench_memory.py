"""benchmarks/bench_memory.py --quick and benchmarks/gpu_check.py --quick run (on the CPU, no GPU needed)
and write what they promise: a Markdown table, JSON rows with the measured fields, a readme row."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, out: Path, *extra) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--quick", "--out", str(out), *extra],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def memory_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("memory")
    return out, _run("bench_memory.py", out)


def test_memory_quick_writes_rows_table_and_readme(memory_run):
    out, stdout = memory_run
    payload = json.loads((out / "memory.json").read_text())
    rows = payload["rows"]
    assert [r["batch"] for r in rows] == [2, 8]
    for r in rows:
        assert "error" not in r, r
        assert r["nfe"] > 0 and r["rss_peak_mib"] >= r["rss_before_mib"] > 0 and r["rss_increase_mib"] >= 0
    assert len(payload["readme"]) == 1 and payload["readme"][0]["value"].endswith("MiB")
    assert {"what", "value", "how"} <= set(payload["readme"][0])
    md = (out / "memory.md").read_text()
    assert "| batch | NFE |" in md and "| batch | NFE |" in stdout


def test_gpu_check_quick_runs_every_section_on_cpu(tmp_path):
    stdout = _run("gpu_check.py", tmp_path)
    payload = json.loads((tmp_path / "gpu.json").read_text())
    rows = payload["rows"]
    assert payload["meta"]["cuda"] is False and payload["readme"] == []  # a CPU toy run claims nothing of a GPU
    bad = [r for r in rows if "error" in r or "skipped" in r]
    assert not bad, bad
    whats = [r["what"] for r in rows]
    assert {"float32", "bf16 autocast", "fp16 autocast + GradScaler", "bf16 + torch.compile"} <= set(whats)
    assert any(w.startswith("ddim") for w in whats) and any(w.startswith("dpmpp_2m") for w in whats)
    assert any(w.startswith("unipc") for w in whats) and any(w.startswith("heun") for w in whats)
    assert sum(w.startswith("bits/dim") for w in whats) == 2
    for r in rows:
        if r["section"] == "sample":
            assert r["images_per_s"] > 0 and r["finite"]
        if r["section"] == "train":
            assert r["steps_per_s"] > 0
    assert "**Sampling**" in stdout and "Device: no CUDA" in (tmp_path / "gpu.md").read_text()


def test_gpu_check_time_guard_skips_instead_of_overrunning(tmp_path):
    _run("gpu_check.py", tmp_path, "--budget", "0", "--sections", "sample")
    rows = json.loads((tmp_path / "gpu.json").read_text())["rows"]
    assert rows and all("skipped" in r and "time guard" in r["skipped"] for r in rows)
