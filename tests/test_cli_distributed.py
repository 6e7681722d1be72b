"""The command line under torchrun with 2 gloo processes on the CPU (issue 11, item 7).

On a tiny UNet run (8x8 digits, 8 channels, so that the attention block's 1x1 projection is
there) trained by ``torchrun --nproc_per_node=2 -m scoresde train``:

- training emits no "Grad strides do not match bucket view strides" warning (it did on every
  rank) and prints its result line once (rank 1 used to print a second one ending "checkpoint
  None");
- ``likelihood --vlb`` on 2 processes gives exactly one process's bits/dim, NFE per solve and
  variational bound (the batches are dealt out whole and seeded by their global index);
- ``sample`` on 2 processes gives exactly one process's samples (pc and the adaptive ode);
- every result line is printed once, by rank 0;
- ``compare`` refuses to run under torchrun instead of repeating its work on each process.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from scoresde.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")


def _torchrun(args, cwd, timeout=600):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "scoresde",
           *args]
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """A run trained by 2 processes; returns (folder, the torchrun result)."""
    tmp = tmp_path_factory.mktemp("ddp")
    r = _torchrun(["train", "--data", "digits", "--out", "run", "--steps", "8", "--channels", "8", "--batch-size", "32",
                   "--warmup", "2", "--num-scales", "40", "--checkpoint-every", "8"], cwd=tmp)
    return tmp, r


def test_training_on_two_processes_has_no_grad_strides_warning_and_one_result_line(ddp_run):
    tmp, r = ddp_run
    assert (tmp / "run" / "checkpoint.pt").exists()
    assert "Grad strides" not in r.stderr and "Grad strides" not in r.stdout
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("trained to step")]
    assert len(lines) == 1, r.stdout
    assert "checkpoint None" not in r.stdout and lines[0].endswith("checkpoint.pt")
    status = [ln for ln in r.stderr.splitlines() if ln.startswith("scoresde train: digits")]
    assert len(status) == 1, r.stderr  # the set-up line, by rank 0 alone


def test_likelihood_on_two_processes_equals_one_process(ddp_run, capsys):
    tmp, _ = ddp_run
    run = str(tmp / "run")
    common = [run, "-n", "10", "--batch-size", "3", "--rtol", "1e-2", "--atol", "1e-2", "--vlb"]
    r = _torchrun(["likelihood", *common, "--out", "two.json"], cwd=tmp)
    assert main(["likelihood", *common, "--quiet", "--out", str(tmp / "one.json")]) == 0
    capsys.readouterr()
    one, two = json.loads((tmp / "one.json").read_text()), json.loads((tmp / "two.json").read_text())
    assert one["processes"] == 1 and two["processes"] == 2
    assert len(one["nfe_per_solve"]) == 4  # batches of 3, 3, 3, 1: process 0 takes 0 and 2, process 1 takes 1 and 3
    for key in ("bpd", "bpd_se", "bpd_median", "bpd_max", "nfe_per_solve", "n_points", "vlb", "vlb_se", "vlb_steps",
                "vlb_variance"):
        assert one[key] == two[key], key
    assert one["vlb_steps"] == 40
    assert r.stdout.count("bits/dim (PF-ODE") == 1 and r.stdout.count("variational bound") == 1
    assert r.stdout.count("-> ") == 1, r.stdout
    assert "on 2 processes" in r.stdout
    assert r.stderr.count("2 processes share 4 batches") == 1, r.stderr
    assert sorted(p.name for p in tmp.iterdir() if p.suffix == ".json") == ["one.json", "two.json"]


@pytest.mark.parametrize("method", ["pc", "ode"])
def test_sampling_on_two_processes_equals_one_process(ddp_run, method, capsys):
    tmp, _ = ddp_run
    run = str(tmp / "run")
    extra = ["--rtol", "1e-2", "--atol", "1e-2"] if method == "ode" else ["--steps", "6"]
    common = [run, "--method", method, "-n", "5", "--batch-size", "2", *extra]
    r = _torchrun(["sample", *common, "--out", f"two-{method}"], cwd=tmp)
    assert main(["sample", *common, "--quiet", "--out", str(tmp / f"one-{method}")]) == 0
    capsys.readouterr()
    one, two = np.load(tmp / f"one-{method}.npz"), np.load(tmp / f"two-{method}.npz")
    assert one["samples"].shape == (5, 1, 8, 8)
    np.testing.assert_array_equal(one["samples"], two["samples"])
    np.testing.assert_array_equal(one["nfe"], two["nfe"])
    assert len(one["nfe"]) == 3
    assert r.stdout.count("5 samples by") == 1, r.stdout
    assert r.stderr.count("using the EMA weights") == 1, r.stderr


def test_compare_refuses_torchrun(ddp_run):
    tmp, _ = ddp_run
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT, WORLD_SIZE="2", RANK="0")
    r = subprocess.run([sys.executable, "-m", "scoresde", "compare", str(tmp / "run"), "--out", str(tmp / "cmp")],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1
    assert "compare runs in one process" in r.stderr and "likelihood, sample" in r.stderr
    assert not (tmp / "cmp").exists()
