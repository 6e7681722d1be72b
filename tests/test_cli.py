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
                "ddpm": lambda k: k, "ddim": lambda k: k,
                # the fast solvers spend an NFE budget (10 in --quick), Tweedie's denoise step included
                "dpmpp_2m": lambda k: k + 1, "unipc": lambda k: k + 1, "heun": lambda k: 2 * k}
    fast = ("dpmpp_2m", "unipc", "heun")
    seen = set()
    for r in rows:
        if r["method"] in expected:
            assert r["nfe"] == expected[r["method"]](r["steps"]), r
            if r["method"] in fast:
                assert r["nfe"] == 10 and r["quality"] is not None, r
            seen.add(r["method"])
        else:
            assert r["method"] == "ode" and r["nfe"] > 6 and r["tol"] is not None
            assert r["bpd"] is not None  # PF-ODE rows carry bits/dim
    assert seen == set(expected)
    assert any(r["method"] == "ddpm" and r["bpd"] is not None for r in rows)  # the VLB column
    steps = sorted({r["steps"] for r in rows if r["steps"] and r["method"] not in fast})
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


@pytest.mark.parametrize("method, extra, nfe", [("dpmpp_2m", ["--spacing", "karras"], 6), ("heun", [], 10),
                                                 ("unipc", ["--order", "3"], 6)])
def test_sample_with_the_fast_solvers(demo, tmp_path, method, extra, nfe):
    """scoresde sample --method dpmpp_2m / heun / unipc: 5 steps, NFE = the solver's rule + Tweedie's step."""
    out, _ = demo
    stem = tmp_path / method
    proc = run_cli("sample", str(out / "model"), "--method", method, "--steps", "5", "-n", "6", "--quiet",
                   "--out", str(stem), *extra)
    assert proc.returncode == 0, proc.stderr
    z = np.load(str(stem) + ".npz")
    assert z["samples"].shape == (6, 1, 8, 8) and int(z["nfe"][0]) == nfe


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
    proc = run_cli("sample", str(out / "model"), "--method", "milstein", "--out", str(tmp_path / "s"), cwd=tmp_path)
    one_line_error(proc, "unknown method 'milstein'", "euler_maruyama")
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


def test_demo_quick_on_the_cosine_vp_writes_its_report(tmp_path):
    """Issue 10, item 1: `scoresde demo --quick --sde vp-cosine` (offered by the README) runs end to end
    (about 15 s): the DDPM / DDIM rows and the variational bound use the cosine chain's 994 steps with
    t_i <= T = 0.9946 (they raised "t must lie in [0, T=0.9946]"), and `likelihood --vlb` on the run
    reports both numbers."""
    out = tmp_path / "cos"
    proc = run_cli("demo", "--quick", "--quiet", "--sde", "vp-cosine", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert (out / "report.md").is_file() and (out / "model" / "checkpoint.pt").is_file()
    lik = json.loads((out / "likelihood.json").read_text())
    assert np.isfinite(lik["bpd"]) and np.isfinite(lik["vlb"]) and lik["vlb_steps"] == 994
    rows = json.loads((out / "compare.json").read_text())["rows"]
    assert {"ddpm", "ddim"} <= {r["method"] for r in rows}
    res = tmp_path / "lik.json"
    proc = run_cli("likelihood", str(out / "model"), "--vlb", "-n", "8", "--rtol", "1e-3", "--atol", "1e-3",
                   "--quiet", "--out", str(res))
    assert proc.returncode == 0, proc.stderr
    got = json.loads(res.read_text())
    assert np.isfinite(got["bpd"]) and np.isfinite(got["vlb"])


# ---------------------------------------------------------------------------- issue 10, items 4, 5, 7
def _toy_args(out, *extra):
    return ["train", "--data", "two_moons", "--out", str(out), "--hidden", "16", "--layers", "1", "--batch-size", "32",
            "--quiet", *extra]


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    """A 5-step two_moons run with seed 3 (a non-default seed, batch, width and depth)."""
    out = tmp_path_factory.mktemp("toy") / "run"
    assert main(_toy_args(out, "--steps", "5", "--seed", "3")) == 0
    return out


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.mark.parametrize("flags, fragment", [
    (["--seed", "0"], "--seed 0 (saved 3)"),  # 0 is the parser default: it used to be ignored
    (["--batch-size", "128"], "--batch-size 128 (saved 32)"),
    (["--hidden", "512", "--layers", "4"], "--hidden 512 (saved 16), --layers 4 (saved 1)"),
    (["--sde", "vp", "--lr", "0.002", "--sigma-min", "0.01", "--objective", "dsm", "--ema", "0.5"], "--ema 0.5"),
])
def test_resume_compares_every_typed_flag(toy_run, capsys, flags, fragment):
    before = _snapshot(toy_run)
    capsys.readouterr()
    assert main(["train", "--out", str(toy_run), "--steps", "9", "--quiet", *flags]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "settings cannot change on resume" in err[0] and fragment in err[0], err
    if "--sde" in flags:  # typed values equal to the saved ones are not reported
        assert "--sde" not in err[0] and "--lr" not in err[0] and "--objective" not in err[0]
    assert _snapshot(toy_run) == before  # nothing trained, nothing rewritten


def test_resume_with_typed_equal_flags_and_untyped_data(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_toy_args(out, "--steps", "4", "--seed", "3")) == 0
    # the saved values typed again, and --data not typed at all (it used to default to digits): resumes
    assert main(["train", "--out", str(out), "--steps", "6", "--seed", "3", "--hidden", "16", "--quiet"]) == 0
    assert load_checkpoint_step(out) == 6
    assert json.loads((out / "train_args.json").read_text())["steps"] == 6
    # an untyped --steps keeps the run's own target: nothing to do, not a run to the default 3000
    capsys.readouterr()
    assert main(["train", "--out", str(out), "--quiet"]) == 0
    assert "nothing trained" in capsys.readouterr().out and load_checkpoint_step(out) == 6


def load_checkpoint_step(out):
    return torch.load(out / "checkpoint.pt", weights_only=True)["step"]


def test_given_options_are_recorded_by_the_parser():
    from scoresde.cli import given_options
    p = build_parser()
    assert given_options(p.parse_args(["train", "--out", "x"])) == {"out"}
    a = p.parse_args(["train", "--out", "x", "--seed", "0", "--quiet", "--hidden", "512"])
    assert given_options(a) == {"out", "seed", "quiet", "hidden"} and a.seed == 0 and a.hidden == 512
    assert given_options(p.parse_args(["sample", "ckpt"])) == frozenset()


def test_train_with_fewer_steps_than_done_says_nothing_was_trained(toy_run, capsys):
    before = _snapshot(toy_run)
    capsys.readouterr()
    assert main(["train", "--out", str(toy_run), "--steps", "3", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("nothing trained: the run in") and "already at step 5 and --steps 3 asks for no more" in out
    assert "trained to step" not in out
    assert _snapshot(toy_run) == before


def test_diverging_run_does_not_claim_a_checkpoint(tmp_path, capsys):
    out = tmp_path / "div"
    assert main(_toy_args(out, "--steps", "50", "--lr", "1e30")) == 1
    err = capsys.readouterr().err
    assert "non-finite gradient norm" in err and "no checkpoint was written yet" in err and "intact" not in err
    assert not (out / "checkpoint.pt").exists()


def test_corrupt_train_args_is_named(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_toy_args(out, "--steps", "2")) == 0
    for text, fragment in (('{"data": "two_moons", ', "not readable JSON"), ("[1, 2]", "got a list"),
                           ('{"data": "two_moons"}', "lacks the settings")):
        (out / "train_args.json").write_text(text)
        capsys.readouterr()
        assert main(["train", "--out", str(out), "--steps", "4", "--quiet"]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and str(out / "train_args.json") in err[0] and fragment in err[0], err
        assert load_checkpoint_step(out) == 2


@pytest.mark.parametrize("flag, value", [("--ema", "1.0"), ("--warmup", "-5"), ("--seed", "-1")])
def test_bad_train_values_rejected_at_parse_time(tmp_path, capsys, flag, value):
    out = tmp_path / "run"
    assert main(["train", "--data", "two_moons", "--out", str(out), flag, value]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"argument {flag}" in err[0]
    assert not out.exists()  # no train_args.json (or folder) left behind


@pytest.mark.parametrize("command", ["sample", "likelihood"])
def test_bad_out_is_an_error_before_any_work(toy_run, tmp_path, capsys, monkeypatch, command):
    from scoresde.cli import commands

    def no_work(*a, **k):
        raise AssertionError("the work started before --out was checked")

    for name in ("draw", "likelihood", "load_run"):
        monkeypatch.setattr(commands, name, no_work)
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    folder = tmp_path / "afolder"
    folder.mkdir()
    (tmp_path / "s.npz").mkdir()  # sample writes <out>.npz: an existing folder by that name
    cases = [(str(blocker / "out"), f"{blocker} is a file, not a folder"),
             (str(folder) if command == "likelihood" else str(tmp_path / "s"), "is an existing folder; give a file name"),
             (str(tmp_path / "missing" / "out"), "does not exist")]
    if os.geteuid() != 0:  # root ignores permission bits, so only other users can test a read-only folder
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        cases.append((str(ro / "out"), "is not writable"))
    for out, fragment in cases:
        capsys.readouterr()
        assert main([command, str(toy_run), "--out", out, "--quiet"]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"scoresde {command}: error: --out ") and fragment in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["afile", "afolder", "s.npz"] +
                                                                (["ro"] if os.geteuid() != 0 else []))


def test_compare_checks_its_output_folder_first(toy_run, tmp_path, capsys, monkeypatch):
    from scoresde.cli import compare

    monkeypatch.setattr(compare, "run_compare", lambda *a, **k: (_ for _ in ()).throw(AssertionError("work")))
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    for out in (blocker, blocker / "sub"):
        assert main(["compare", str(toy_run), "--out", str(out), "--quiet"]) == 1
        assert f"{blocker} is a file, not a folder" in capsys.readouterr().err


def test_likelihood_says_when_the_data_use_few_of_their_levels(demo, tmp_path):
    """17-level digits stored as uint8 are read as 256 levels: the bits/dim line is followed by a warning."""
    out, _ = demo
    from scoresde.data import digits
    arr = tmp_path / "digits_uint8.npy"
    np.save(arr, digits("test").levels.numpy().astype(np.uint8))
    dest = tmp_path / "lik.json"
    proc = run_cli("likelihood", str(out / "model"), "--data", str(arr), "-n", "64", "--rtol", "1e-2", "--atol", "1e-2",
                   "--quiet", "--out", str(dest))
    assert proc.returncode == 0, proc.stderr
    res = json.loads(dest.read_text())
    assert res["num_levels"] == 256 and "only 17 distinct values in a batch of 64" in res["levels_warning"]
    assert f"warning: {res['levels_warning']}" in proc.stdout.splitlines()
    proc = run_cli("likelihood", str(out / "model"), "-n", "64", "--rtol", "1e-2", "--atol", "1e-2", "--quiet",
                   "--out", str(dest))
    assert proc.returncode == 0 and "warning" not in proc.stdout
    assert json.loads(dest.read_text())["levels_warning"] is None


def test_ve_default_sigma_max_uses_the_helper_and_covers_off_centre_data(tmp_path, capsys):
    from scoresde.data import from_array, toy
    from scoresde.data_stats import recommended_sigma_max, suggest_sigma_max
    pts = (toy("two_moons", 500).data.numpy() + 100.0).astype(np.float32)  # far from the prior's mean 0
    arr = tmp_path / "off.npy"
    np.save(arr, pts)
    ds = from_array(str(arr))
    out = tmp_path / "ve"
    capsys.readouterr()
    assert main(["train", "--data", str(arr), "--sde", "ve", "--out", str(out), "--steps", "2", "--hidden", "16",
                 "--layers", "1", "--batch-size", "32"]) == 0
    err = capsys.readouterr().err
    sigma = json.loads((out / "train_args.json").read_text())["sigma_max"]
    # before: the largest pairwise distance of the first 2000 rows (about 7), 100x off the data's offset
    assert sigma == pytest.approx(recommended_sigma_max(ds), rel=1e-12) and sigma > 50 * suggest_sigma_max(ds)
    assert f"VE sigma_max {sigma:.4g}" in err and "raised so that the prior" in err and "warning" not in err
    # an explicit sigma_max below the data's scale: a one-line warning with the measured KL
    assert main(["train", "--data", "two_moons", "--sde", "ve", "--sigma-max", "1", "--out", str(tmp_path / "ve1"),
                 "--steps", "2", "--hidden", "16", "--layers", "1", "--batch-size", "32", "--quiet"]) == 0
    warn = [ln for ln in capsys.readouterr().err.splitlines() if "warning" in ln]
    assert len(warn) == 1 and warn[0].startswith("scoresde train: warning: VESDE: sigma_max 1 is below")
    assert re.search(r"KL of [\d.e+-]+ nats per dimension", warn[0])


def test_sampler_flags_the_method_does_not_take_are_errors(demo, tmp_path):
    """--spacing on ddim or --rtol on pc is a one-line error; dpm_adaptive takes --rtol / --atol (break-test)."""
    out, _ = demo
    proc = run_cli("sample", str(out / "model"), "--method", "ddim", "--steps", "5", "--spacing", "karras",
                   "--out", str(tmp_path / "a"), cwd=tmp_path)
    one_line_error(proc, "--spacing does not apply to method 'ddim'")
    stem = tmp_path / "b"
    proc = run_cli("sample", str(out / "model"), "--method", "dpm_adaptive", "--rtol", "0.1", "--atol", "0.1",
                   "-n", "4", "--quiet", "--out", str(stem), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    loose = int(np.load(str(stem) + ".npz")["nfe"][0])
    proc = run_cli("sample", str(out / "model"), "--method", "dpm_adaptive", "--rtol", "0.03", "--atol", "0.03",
                   "-n", "4", "--quiet", "--out", str(stem), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert int(np.load(str(stem) + ".npz")["nfe"][0]) > loose
