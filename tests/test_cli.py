"""Tests of the ``scoresde`` command (scoresde.cli).

One ``scoresde demo --quick`` run (module fixture) provides the checkpoint that the other
subcommands are exercised on. Numbers checked: the NFE of each fixed-step sampler in the compare
table equals its closed-form count (Euler-Maruyama K, PC 2K, torchsde Euler K + 1 with the
denoising step, DDPM / DDIM K), the summary line prints the numbers of likelihood.json, and every
error is one line on stderr with a non-zero status and no output file.
"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from scoresde.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*argv, cwd=None, timeout=170):
    """Run ``python -m scoresde`` in a subprocess (as a user would); returns CompletedProcess."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    env.pop("SCORESDE_TRACEBACK", None)
    return subprocess.run([sys.executable, "-m", "scoresde", *argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def one_line_error(proc, *fragments):
    assert proc.returncode != 0
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert re.match(r"scoresde( \w+)?: error: ", err[0]), err[0]
    for f in fragments:
        assert f in err[0], (f, err[0])


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "quick"
    proc = run_cli("demo", "--quick", "--quiet", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    return out, proc


def test_demo_quick_writes_report_with_images(demo):
    out, proc = demo
    report = (out / "report.md").read_text()
    images = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", report)
    # the test digits, the six sampler grids and the quality-vs-NFE figure
    assert len(images) >= 8
    for name in images:
        assert (out / name).is_file() and (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name in ("compare.json", "compare.md", "likelihood.json", "model/checkpoint.pt"):
        assert (out / name).is_file()
    assert not list(out.rglob("*.tmp*")), "temporary files left behind"


def test_demo_compare_nfe_closed_form(demo):
    out, _ = demo
    rows = json.loads((out / "compare.json").read_text())["rows"]
    expected = {"euler_maruyama": lambda k: k, "pc": lambda k: 2 * k, "sde": lambda k: k + 1,
                "ddpm": lambda k: k, "ddim": lambda k: k}
    seen = set()
    for r in rows:
        if r["method"] in expected:
            assert r["nfe"] == expected[r["method"]](r["steps"]), r
            seen.add(r["method"])
        else:
            assert r["method"] == "ode" and r["nfe"] > 6 and r["tol"] is not None
            assert r["bpd"] is not None  # PF-ODE rows carry bits/dim
    assert seen == set(expected)
    assert any(r["method"] == "ddpm" and r["bpd"] is not None for r in rows)  # the VLB column
    steps = sorted({r["steps"] for r in rows if r["steps"]})
    assert steps == [10, 20]


def test_demo_summary_prints_the_saved_numbers(demo):
    out, proc = demo
    lik = json.loads((out / "likelihood.json").read_text())
    cmp_ = json.loads((out / "compare.json").read_text())
    text = proc.stdout
    assert f"PF-ODE {lik['bpd']:.3f} ± {lik['bpd_se']:.3f}" in text
    assert f"DDPM variational bound {lik['vlb']:.3f} ± {lik['vlb_se']:.3f}" in text
    assert f"real-data floor {cmp_['quality_floor']:.2f}" in text
    report = (out / "report.md").read_text()
    assert f"{lik['bpd']:.3f} ± {lik['bpd_se']:.3f}" in report and f"{lik['vlb']:.3f}" in report
    # dequantized bits/dim of 17-level data is positive (case C11)
    assert lik["bpd"] > 0 and lik["vlb"] > 0


def test_sample_writes_grid_and_npz(demo, tmp_path):
    out, _ = demo
    stem = tmp_path / "s"
    proc = run_cli("sample", str(out / "model"), "--method", "ddim", "--steps", "5", "-n", "6", "--quiet",
                   "--out", str(stem))
    assert proc.returncode == 0, proc.stderr
    z = np.load(str(stem) + ".npz")
    assert z["samples"].shape == (6, 1, 8, 8) and int(z["nfe"][0]) == 5
    assert z["levels"].min() >= 0 and z["levels"].max() <= 16
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"


def test_likelihood_json_and_standard_error(demo, tmp_path):
    out, _ = demo
    dest = tmp_path / "lik.json"
    proc = run_cli("likelihood", str(out / "model"), "-n", "6", "--rtol", "1e-2", "--atol", "1e-2", "--quiet",
                   "--out", str(dest))
    assert proc.returncode == 0, proc.stderr
    res = json.loads(dest.read_text())
    assert res["n_points"] == 6 and res["nfe_mean"] > 0
    assert f"{res['bpd']:.3f} ± {res['bpd_se']:.3f}" in proc.stdout
    assert "NFE" in proc.stdout


@pytest.mark.parametrize("argv, fragments", [
    (["train", "--steps", "-3", "--out", "x"], ["--steps", "positive integer"]),
    (["train", "--sde", "foo", "--out", "x"], ["--sde", "invalid choice"]),
    (["sample", "does/not/exist.pt"], ["no such checkpoint"]),
    (["train", "--data", "nosuch", "--out", "x"], ["unknown data 'nosuch'", "digits"]),
    (["frobnicate"], ["invalid choice"]),
])
def test_bad_arguments_one_line(argv, fragments, tmp_path):
    proc = run_cli(*argv, cwd=tmp_path)
    one_line_error(proc, *fragments)
    assert list(tmp_path.iterdir()) == []


def test_corrupt_checkpoint_unknown_method_wrong_shape(demo, tmp_path):
    out, _ = demo
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"this is not a checkpoint")
    proc = run_cli("sample", str(bad), "--out", str(tmp_path / "s"), cwd=tmp_path)
    one_line_error(proc, "not a readable checkpoint")
    # a truncated real checkpoint
    real = (out / "model" / "checkpoint.pt").read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(real[: len(real) // 2])
    proc = run_cli("likelihood", str(cut), "--out", str(tmp_path / "l.json"), cwd=tmp_path)
    one_line_error(proc, "checkpoint")
    proc = run_cli("sample", str(out / "model"), "--method", "heun", "--out", str(tmp_path / "s"), cwd=tmp_path)
    one_line_error(proc, "unknown method 'heun'", "euler_maruyama")
    proc = run_cli("compare", str(out / "model"), "--methods", "pc", "rk4", "--out", str(tmp_path / "c"),
                   cwd=tmp_path)
    one_line_error(proc, "unknown method 'rk4'")
    arr = tmp_path / "wrong.npy"
    np.save(arr, np.zeros((5, 3), dtype=np.float32))
    proc = run_cli("likelihood", str(out / "model"), "--data", str(arr), "--out", str(tmp_path / "l.json"),
                   cwd=tmp_path)
    one_line_error(proc, "shape", "[1, 8, 8]")
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == ["bad.pt", "cut.pt", "wrong.npy"], left


def test_help_shows_defaults_for_every_subcommand(capsys):
    for cmd in ("train", "sample", "likelihood", "compare", "demo"):
        assert main([cmd, "--help"]) == 0
        text = capsys.readouterr().out
        assert "(default:" in text, cmd
        assert "--quiet" in text
    assert main(["--help"]) == 0


def test_train_toy_and_resume(tmp_path):
    # a 2-D toy: scatter plot + sliced Wasserstein in compare; a second call resumes (no retraining)
    out = tmp_path / "toy"
    assert main(["train", "--data", "two_moons", "--out", str(out), "--steps", "40", "--hidden", "32",
                 "--layers", "2", "--batch-size", "64", "--quiet"]) == 0
    step1 = torch.load(out / "checkpoint.pt", weights_only=True)["step"]
    assert step1 == 40
    assert main(["train", "--data", "two_moons", "--out", str(out), "--steps", "50", "--quiet"]) == 0
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 50
    # a setting that cannot change on resume is an error (as in the Python API), not silently ignored
    assert main(["train", "--data", "two_moons", "--out", str(out), "--steps", "60", "--lr", "0.5", "--quiet"]) == 1
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 50
    assert main(["compare", str(out), "--methods", "euler_maruyama", "ode", "--steps", "5", "--ode-rtols", "1e-2",
                 "-n", "50", "--quiet", "--out", str(tmp_path / "cmp")]) == 0
    res = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert res["quality_metric"].startswith("sliced Wasserstein")
    assert [r["nfe"] for r in res["rows"] if r["method"] == "euler_maruyama"] == [5]
    assert main(["sample", str(out), "--method", "euler_maruyama", "--steps", "5", "-n", "20", "--quiet",
                 "--out", str(tmp_path / "pts")]) == 0
    assert (tmp_path / "pts.png").is_file() and np.load(tmp_path / "pts.npz")["samples"].shape == (20, 2)


def test_parser_defaults_match_issue():
    p = build_parser()
    a = p.parse_args(["compare", "ckpt"])
    assert a.steps == [10, 20, 50, 100]
    assert set(a.methods) >= {"euler_maruyama", "pc", "sde", "ode", "ddpm", "ddim"}
    assert a.ode_method == "dopri5" and a.predictor == "reverse_diffusion" and a.corrector == "langevin"
    assert p.parse_args(["demo"]).sde == "vp"


def test_dequantized_objective_noise_is_uniform_in_the_bin():
    # x0 + u with u ~ U(-1/L, 1/L): |u| <= 1/L, E[u] = 0, Var[u] = (1/L)^2 / 3 (uniform on a bin of width 2/L)
    from scoresde.cli.nets import Dequantized

    def identity_loss(model, sde, x0, generator=None):
        return x0

    identity_loss.__name__ = "identity_loss"
    L = 17
    x0 = torch.zeros(200000, 1)
    u = Dequantized(identity_loss, L)(None, None, x0, generator=torch.Generator().manual_seed(0))
    assert float(u.abs().max()) <= 1 / L
    assert abs(float(u.mean())) < 4 * (1 / L) / (3 ** 0.5) / (200000 ** 0.5)
    assert float(u.var()) == pytest.approx((1 / L) ** 2 / 3, rel=0.02)


def test_flat_mlp_config_round_trip():
    from scoresde.cli.nets import FlatMLP, build_net
    net = FlatMLP((1, 8, 8), hidden=16, num_layers=2)
    again = build_net(net.config())
    again.load_state_dict(net.state_dict())
    x, t = torch.randn(3, 1, 8, 8), torch.rand(3) * 999
    assert torch.equal(net(x, t), again(x, t)) and net(x, t).shape == (3, 1, 8, 8)
    with pytest.raises(ValueError, match="shape"):
        net(torch.randn(3, 64), t)


def test_train_defaults_build_the_demo_unet():
    # `scoresde train --data digits` (model auto) builds the demo's network: the 8x8 UNet with base
    # channels 16, multipliers (1, 2), one residual block, no attention: 163,985 parameters
    from scoresde import VPSDE
    from scoresde.cli.commands import make_model
    from scoresde.cli.demo import FULL
    from scoresde.cli.nets import Dequantized
    settings = vars(build_parser().parse_args(["train", "--out", "x"]))
    assert (settings["channels"], settings["steps"], settings["lr"]) == (FULL["channels"], FULL["steps"], FULL["lr"])
    model, objective = make_model({**settings, "num_levels": 17, "dequantize": True}, (1, 8, 8), VPSDE())
    assert type(model.net).__name__ == "UNet"
    assert sum(p.numel() for p in model.parameters()) == 163985
    assert isinstance(objective, Dequantized) and objective.num_levels == 17
    model, objective = make_model({**settings, "num_levels": None}, (2,), VPSDE())
    assert type(model.net).__name__ == "FlatMLP" and objective == {"loss": "dsm", "weighting": "sigma2"}


def test_train_is_reproducible(tmp_path):
    # same command, same seed -> bit-identical weights (the network init is seeded too)
    states = []
    for name in ("a", "b"):
        torch.manual_seed(len(name) * 1234 + ord(name))  # a different global RNG state before each run
        assert main(["train", "--data", "two_moons", "--out", str(tmp_path / name), "--steps", "5", "--hidden", "16",
                     "--layers", "1", "--batch-size", "32", "--quiet"]) == 0
        states.append(torch.load(tmp_path / name / "checkpoint.pt", weights_only=True)["ema"])
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_device_is_checked_before_any_work(capsys, tmp_path):
    """--device names itself: an unknown device or missing CUDA is not reported as a bad checkpoint."""
    for dev, fragment in (("foo", "not a torch device"), ("cuda:7" if not torch.cuda.is_available() else "foo",
                                                          "not")):
        assert main(["sample", str(tmp_path), "--device", dev]) == 2
        err = capsys.readouterr().err
        assert "--device" in err and fragment in err and "checkpoint" not in err.split("--device")[1]


def test_outputs_have_ordinary_permissions(tmp_path):
    from scoresde.plotting import atomic_file

    old = os.umask(0o022)
    try:
        with atomic_file(tmp_path / "a.json") as f:
            f.write("{}")
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
