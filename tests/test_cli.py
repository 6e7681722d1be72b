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
    # the test digits, the sampler grids, the quality-vs-NFE figure, the class-conditional and inpainting grids
    assert len(images) >= 10 and {"class_conditional.png", "inpainting.png"} <= set(images)
    for name in images:
        assert (out / name).is_file() and (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name in ("compare.json", "compare.md", "likelihood.json", "guided.json", "model/checkpoint.pt"):
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
    for cmd in ("train", "train-classifier", "sample", "inpaint", "likelihood", "compare", "demo"):
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


def test_legacy_dequantized_objective_is_dsm_loss_with_dequantize():
    # runs saved before the recipe moved into the library recorded Dequantized(...) as their objective: it must
    # give exactly the loss of dsm_loss(dequantize=L) (same draws, same order) and keep the recorded name
    from scoresde import VPSDE
    from scoresde.cli.nets import Dequantized, legacy_objective
    from scoresde.losses import dsm_loss, ddpm_loss
    sde = VPSDE()
    x0 = (2 * torch.randint(0, 17, (64, 1, 8, 8), generator=torch.Generator().manual_seed(0)) + 1) / 17 - 1  # centres

    def score(x, t):
        return -x

    old = Dequantized(dsm_loss, 17, weighting="likelihood")
    new = dsm_loss(score, sde, x0, generator=torch.Generator().manual_seed(4), dequantize=17, weighting="likelihood")
    assert torch.equal(old(score, sde, x0, generator=torch.Generator().manual_seed(4)), new)
    recorded = {"loss": "custom", "function": "scoresde.cli.nets.Dequantized(dsm_loss, num_levels=17, "
                                              "weighting=sigma2)"}
    assert isinstance(legacy_objective(recorded, {"loss": "dsm", "dequantize": 17}), Dequantized)
    assert legacy_objective(recorded, {"loss": "dsm", "dequantize": 256}) is None
    assert legacy_objective({"loss": "dsm", "dequantize": 17}, {"loss": "dsm", "dequantize": 17}) is None
    with pytest.raises(ValueError, match="dsm_loss"):
        Dequantized(ddpm_loss, 17)


def _docs_training_example() -> str:
    """The first ```python block of docs/training.md (the library's training recipe)."""
    text = (ROOT / "docs" / "training.md").read_text()
    return text.split("```python\n", 1)[1].split("```", 1)[0]


def test_python_recipe_trains_the_cli_weights(tmp_path, monkeypatch):
    # docs/training.md's example (the library: small_unet + dsm_loss(dequantize=17)) and the demo's
    # `scoresde train` give bit-identical online and EMA weights and the same objective, at a reduced
    # size: 30 updates of batch 32, warm-up 10 (the CLI's default --seed 0 is the example's torch.manual_seed(0))
    code = _docs_training_example()
    sizes = {"steps=3000": "steps=30", "batch_size=128": "batch_size=32", "warmup=200": "warmup=10"}
    for full, small in sizes.items():
        assert code.count(full) == 1, full
        code = code.replace(full, small)
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(99)  # another global RNG state than the CLI's: the example seeds the initial weights itself
    exec(compile(code, "docs/training.md", "exec"), {"__name__": "docs_example"})
    cli = tmp_path / "cli"
    proc = run_cli("train", "--data", "digits", "--model", "unet", "--class-conditional", "--label-dropout", "0.1",
                   "--lr", "2e-3", "--steps", "30", "--batch-size", "32", "--warmup", "10", "--out", str(cli),
                   "--quiet")
    assert proc.returncode == 0, proc.stderr
    py = torch.load(tmp_path / "runs" / "digits" / "checkpoint.pt", weights_only=True)
    ref = torch.load(cli / "checkpoint.pt", weights_only=True)
    assert py["step"] == ref["step"] == 30
    # the CLI records dsm_loss's default weighting, sigma2, which the example leaves out
    assert {"weighting": "sigma2", **py["config"]["objective"]} == ref["config"]["objective"] == \
        {"loss": "dsm", "weighting": "sigma2", "dequantize": 17}
    assert py["config"]["model"] == ref["config"]["model"]
    for part in ("model", "ema"):
        assert py[part].keys() == ref[part].keys()
        for k, v in ref[part].items():
            assert torch.equal(py[part][k], v), (part, k)
    # and the weights did move: the runs are not both at their initialisation
    assert any(not torch.equal(py["model"][k], py["ema"]["module." + k]) for k in py["model"])


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
    from scoresde.models import small_unet
    settings = vars(build_parser().parse_args(["train", "--out", "x"]))
    assert (settings["channels"], settings["steps"], settings["lr"]) == (FULL["channels"], FULL["steps"], FULL["lr"])
    model, objective = make_model({**settings, "num_levels": 17, "dequantize": True}, (1, 8, 8), VPSDE())
    assert type(model.net).__name__ == "UNet" and model.net.config() == small_unet(1, 8, ch=16).config()
    assert sum(p.numel() for p in model.parameters()) == 163985
    assert objective == {"loss": "dsm", "weighting": "sigma2", "dequantize": 17}
    model, objective = make_model({**settings, "num_levels": 17, "dequantize": True, "objective": "dsm-likelihood"},
                                  (1, 8, 8), VPSDE())
    assert objective == {"loss": "dsm", "weighting": "likelihood", "dequantize": 17}
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
             ]
    if command == "likelihood":  # sample creates a missing folder (test_sample_out_creates_its_folder)
        cases.append((str(tmp_path / "missing" / "out"), "does not exist"))
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


# ---------------------------------------------------------------------------- issue 12, item 6
def test_demo_quick_reports_class_conditional_and_inpainting(demo):
    """The demo's model is class-conditional with label dropout 0.1 (the comparison above ran on it without
    labels, i.e. with the null class); its report has the accuracy-against-scale table, the class grid (one
    row per digit) and the inpainting grid and table, with the numbers of guided.json and the summary."""
    from PIL import Image

    from scoresde.cli.options import CFG_SCALE
    out, proc = demo
    args = json.loads((out / "model" / "train_args.json").read_text())
    assert args["class_conditional"] is True and args["label_dropout"] == 0.1 and args["num_classes"] == 10
    g = json.loads((out / "guided.json").read_text())
    cc, ip = g["cc"], g["ip"]
    assert [r["scale"] for r in cc["rows"]] == [0, 0.5, 2] and cc["scale"] == CFG_SCALE
    report = (out / "report.md").read_text()
    assert "## Class-conditional samples (classifier-free guidance)" in report and "## Inpainting held-out digits" in report
    for r in cc["rows"]:
        assert 0.0 <= r["accuracy"] <= 1.0 and r["nfe"] == 10 and np.isfinite(r["fd"])
        assert f"| {r['accuracy']:.3f} ± {r['se']:.3f} | {r['fd']:.2f} |" in report
    assert f"| {CFG_SCALE:g} (default) |" in report
    at = {r["scale"]: r["accuracy"] for r in cc["rows"]}
    assert f"digit-classifier accuracy {at[CFG_SCALE]:.3f} at w = {CFG_SCALE:g}" in proc.stdout
    rep, rp = ip["rows"]
    assert rep["method"] == "replacement" and rp["method"].startswith("RePaint") and rp["nfe"] > rep["nfe"]
    assert f"{rep['accuracy']:.3f} by replacement (NFE {rep['nfe']}), {rp['accuracy']:.3f} by RePaint" in proc.stdout
    # the class grid: 10 rows (one per digit) of 3 samples; the inpainting grid: 10 rows of masked, 2 samples, truth
    for name, rows, cols in (("class_conditional.png", 10, 3), ("inpainting.png", 10, 4)):
        w, h = Image.open(out / name).size
        assert (h, w) == (6 * (rows * 9 + 1), 6 * (cols * 9 + 1)), (name, w, h)


def test_sample_class_on_the_conditional_run(demo, tmp_path):
    """--class all: -n samples of each class, labels sorted by class, CFG at the default w; --class 3 --scale 2."""
    from scoresde.cli.options import CFG_SCALE
    out, _ = demo
    stem = tmp_path / "all"
    assert main(["sample", str(out / "model"), "--class", "all", "-n", "2", "--method", "ddim", "--steps", "5",
                 "--quiet", "--out", str(stem)]) == 0
    z = np.load(str(stem) + ".npz")
    assert z["samples"].shape == (20, 1, 8, 8) and int(z["nfe"][0]) == 5  # CFG: one batched call per step
    assert z["labels"].tolist() == [k for k in range(10) for _ in range(2)]
    assert float(z["scale"]) == CFG_SCALE and str(z["guidance"]) == "classifier-free"
    assert (tmp_path / "all.png").read_bytes()[:4] == b"\x89PNG"
    stem = tmp_path / "three"
    assert main(["sample", str(out / "model"), "--class", "3", "--scale", "2", "-n", "4", "--method", "ddim",
                 "--steps", "5", "--quiet", "--out", str(stem)]) == 0
    z = np.load(str(stem) + ".npz")
    assert z["labels"].tolist() == [3] * 4 and float(z["scale"]) == 2.0


@pytest.fixture(scope="module")
def guide_runs(tmp_path_factory):
    """An unconditional digits run and a tiny noise-conditional classifier (VP), a few seconds each."""
    root = tmp_path_factory.mktemp("guide")
    assert main(["train", "--data", "digits", "--model", "mlp", "--hidden", "32", "--layers", "1", "--steps", "5",
                 "--batch-size", "32", "--out", str(root / "uncond"), "--quiet"]) == 0
    assert main(["train-classifier", "--out", str(root / "clf"), "--steps", "6", "--channels", "8",
                 "--batch-size", "32", "--quiet"]) == 0
    return root


def test_train_classifier_and_classifier_guidance(guide_runs, demo, tmp_path, capsys):
    root = guide_runs
    from scoresde import load_classifier
    clf, cfg = load_classifier(root / "clf", quiet=True)
    assert cfg["kind"] == "classifier" and cfg["step"] == 6 and clf.num_classes == 10
    for run in (root / "uncond", demo[0] / "model"):  # an unconditional and a conditional run
        stem = tmp_path / run.name
        capsys.readouterr()
        assert main(["sample", str(run), "--class", "2", "--classifier", str(root / "clf"), "-n", "3", "--method",
                     "ddim", "--steps", "4", "--quiet", "--out", str(stem)]) == 0
        assert "class 2, classifier guidance scale 1" in capsys.readouterr().out
        z = np.load(str(stem) + ".npz")
        assert z["samples"].shape == (3, 1, 8, 8) and z["labels"].tolist() == [2, 2, 2]
        assert str(z["guidance"]) == "classifier" and float(z["scale"]) == 1.0
    # resuming to more steps trains on
    capsys.readouterr()
    assert main(["train-classifier", "--out", str(root / "clf"), "--steps", "8", "--channels", "8",
                 "--batch-size", "32", "--quiet"]) == 0
    assert "classifier trained to step 8" in capsys.readouterr().out


def test_class_errors_are_one_line(guide_runs, demo, tmp_path, capsys):
    root, model = guide_runs, str(demo[0] / "model")
    cases = [
        (["sample", str(root / "uncond"), "--class", "3"], ["unconditional run", "--classifier"]),
        (["sample", model, "--class", "10"], ["--class 10 is out of range", "10 classes (0..9)"]),
        (["sample", str(root / "uncond"), "--class", "12", "--classifier", str(root / "clf")],
         ["--class 12 is out of range", "the classifier"]),
        (["sample", model, "--scale", "1"], ["add --class K"]),
        (["sample", model, "--classifier", str(root / "clf")], ["add --class K"]),
        (["sample", model, "--class", "-1"], ["argument --class", "'all'"]),
        (["sample", model, "--class", "seven"], ["argument --class"]),
        (["sample", model, "--class", "1", "--classifier", str(root / "uncond")], ["not a classifier checkpoint"]),
        (["sample", model, "--class", "1", "--classifier", str(root / "nope")], ["no such checkpoint"]),
        (["train-classifier", "--data", "two_moons", "--out", str(tmp_path / "c")], ["labelled"]),
        (["inpaint", model, "--method", "ddim", "--jump-length", "2"], ["grid sampler", "--method ddim"]),
        (["inpaint", model, "--method", "pc", "--steps", "4", "--jump-length", "4", "--jump-n-sample", "2"],
         ["--jump-length 4 must be smaller than --steps 4"]),
        (["inpaint", model, "--mask", "diagonal"], ["argument --mask", "invalid choice"]),
    ]
    for argv, fragments in cases:
        capsys.readouterr()
        status = main(argv + (["--out", str(tmp_path / "x")] if argv[0] != "train-classifier" else []) + ["--quiet"])
        err = capsys.readouterr().err.strip().splitlines()
        assert status in (1, 2) and len(err) == 1, (argv, err)
        assert re.match(rf"scoresde {argv[0]}: error: ", err[0]), err[0]
        assert all(f in err[0] for f in fragments), (fragments, err[0])
    assert list(tmp_path.iterdir()) == []


def test_classifier_on_another_sde_is_refused(guide_runs, tmp_path, capsys):
    root = guide_runs
    assert main(["train-classifier", "--sde", "subvp", "--out", str(tmp_path / "clf"), "--steps", "2", "--channels",
                 "8", "--batch-size", "32", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["sample", str(root / "uncond"), "--class", "1", "--classifier", str(tmp_path / "clf"),
                 "--out", str(tmp_path / "s"), "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "trained on another SDE" in err[0], err
    assert not (tmp_path / "s.npz").exists()


_HIDDEN = {"left": (slice(None), slice(0, 4)), "right": (slice(None), slice(4, 8)),
           "top": (slice(0, 4), slice(None)), "bottom": (slice(4, 8), slice(None)),
           "center": (slice(2, 6), slice(2, 6))}


@pytest.mark.parametrize("mask", ["left", "right", "top", "bottom", "center", "random"])
def test_inpaint_masks_keep_the_known_pixels_exactly(demo, tmp_path, mask):
    """inpaint on held-out digits: the known pixels of every sample equal the test digit's exactly (float and
    levels), the hidden ones are sampled; the grid has one row per image of (masked, k samples, truth)."""
    from PIL import Image

    from scoresde.data import digits
    out, _ = demo
    stem = tmp_path / mask
    assert main(["inpaint", str(out / "model"), "--mask", mask, "-n", "3", "-k", "2", "--method", "ddim",
                 "--steps", "5", "--quiet", "--out", str(stem)]) == 0
    z = np.load(str(stem) + ".npz")
    test = digits("test")
    assert z["samples"].shape == (3, 2, 1, 8, 8) and z["known"].shape == (3, 1, 8, 8) and str(z["mask"]) == mask
    assert np.array_equal(z["truth"], test.data[:3].numpy()) and z["labels"].tolist() == test.labels[:3].tolist()
    known = z["known"]
    if mask == "random":
        frac = 1 - known.mean()
        assert 0.3 < frac < 0.7 and not np.array_equal(known[0], known[1])  # one draw per image
    else:
        want = np.ones((1, 8, 8), dtype=bool)
        want[(0, *_HIDDEN[mask])] = False
        assert (known == want).all()
    for j in range(2):
        s = z["samples"][:, j]
        assert np.array_equal(s[known], z["truth"][known])  # bit for bit
        assert np.array_equal(z["levels"][:, j][known], z["truth_levels"][known])
        assert not np.array_equal(s[~known], z["truth"][~known])
    assert int(z["nfe"][0]) == 5
    w, h = Image.open(str(stem) + ".png").size
    assert (h, w) == (6 * (3 * 9 + 1), 6 * (4 * 9 + 1))


def test_inpaint_repaint_spends_more_nfe_and_checks_out_first(demo, tmp_path, monkeypatch, capsys):
    out, _ = demo
    nfe = {}
    for name, extra in (("plain", []), ("repaint", ["--jump-length", "2", "--jump-n-sample", "3"])):
        stem = tmp_path / name
        assert main(["inpaint", str(out / "model"), "-n", "2", "-k", "1", "--method", "pc", "--steps", "6",
                     "--quiet", "--out", str(stem), *extra]) == 0
        z = np.load(str(stem) + ".npz")
        assert np.array_equal(z["samples"][:, 0][z["known"]], z["truth"][z["known"]])
        nfe[name] = int(z["nfe"][0])
    assert nfe["plain"] == 12 and nfe["repaint"] > 2 * nfe["plain"]
    from scoresde.cli import common, samples

    def no_work(*a, **k):
        raise AssertionError("the work started before --out was checked")

    monkeypatch.setattr(common, "load_run", no_work)
    monkeypatch.setattr(samples, "draw", no_work)
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    # (a missing folder is created, as sample --out: test_sample_out_creates_its_folder)
    for bad, fragment in ((str(blocker / "o"), "is a file, not a folder"),):
        capsys.readouterr()
        assert main(["inpaint", str(out / "model"), "--out", bad, "--quiet"]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("scoresde inpaint: error: --out ") and fragment in err[0], err


def test_inpaint_needs_images(toy_run, tmp_path, capsys):
    assert main(["inpaint", str(toy_run), "--out", str(tmp_path / "i"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "inpaint needs images (C, H, W)" in err and not list(tmp_path.iterdir())


def _tiny_ddpm_folder(tmp_path):
    """A random tiny diffusers DDPM UNet2DModel + DDPMScheduler config, saved as a pipeline folder."""
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
                                 layers_per_block=1, norm_num_groups=4,
                                 down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"))
    unet.save_pretrained(tmp_path / "pipe" / "unet")
    diffusers.DDPMScheduler(num_train_timesteps=1000).save_pretrained(tmp_path / "pipe" / "scheduler")
    return tmp_path / "pipe"


def test_sample_from_a_diffusers_folder(tmp_path):
    """scoresde sample --diffusers PATH: a DDPM UNet folder is a discrete VP model; dpmpp_2m on its table, NFE = steps."""
    folder = _tiny_ddpm_folder(tmp_path)
    stem = tmp_path / "s"
    proc = run_cli("sample", "--diffusers", str(folder / "unet"), "--method", "dpmpp_2m", "--steps", "4", "-n", "3",
                   "--quiet", "--out", str(stem), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    z = np.load(str(stem) + ".npz")
    assert z["samples"].shape == (3, 1, 8, 8) and int(z["nfe"][0]) == 4
    proc = run_cli("sample", "--out", str(tmp_path / "t"), cwd=tmp_path)
    one_line_error(proc, "give exactly one model")


def test_likelihood_of_a_reference_checkpoint(tmp_path):
    """scoresde likelihood --reference-ckpt PATH --config NAME --override ... --data X.npz: a golden fixture
    (reduced-width DDPM++, 16x16) gives finite bits/dim of 256-level images."""
    from pathlib import Path

    fixture = Path(__file__).resolve().parent / "data" / "reference" / "vp_ddpmpp.pth"
    levels = np.random.default_rng(0).integers(0, 256, size=(2, 3, 16, 16)).astype(np.uint8)
    np.savez(tmp_path / "imgs.npz", x=levels)
    out = tmp_path / "lik.json"
    proc = run_cli("likelihood", "--reference-ckpt", str(fixture), "--config", "vp/cifar10_ddpmpp_continuous",
                   "--override", "nf=8", "--override", "ch_mult=(1, 2)", "--override", "num_res_blocks=1",
                   "--override", "attn_resolutions=(8,)", "--override", "image_size=16",
                   "--data", str(tmp_path / "imgs.npz"), "--rtol", "1e-2", "--atol", "1e-2", "--quiet",
                   "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    res = json.loads(out.read_text())
    assert res["n_points"] == 2 and np.isfinite(res["bpd"]) and "reference checkpoint" in res["checkpoint"]
    proc = run_cli("likelihood", "--reference-ckpt", str(fixture), "--out", str(out), cwd=tmp_path)
    one_line_error(proc, "--config")


# ------------------------------------------------------------------ CLI parity with the Python API (issue 11, item 4)
def _last_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and " error: " in err[0], err
    return err[0]


def test_train_reads_arrays_with_key_num_levels_and_layout(tmp_path, capsys):
    # an .npz of two arrays needs --key; int16 levels need --num-levels; (n, H, W, 3) arrays are images (3, H, W)
    # trained by the UNet (they used to be read as per-sample shape (8, 8, 3) and trained by an MLP)
    rng = np.random.RandomState(0)
    np.savez(tmp_path / "two.npz", x=rng.randint(0, 17, size=(16, 8, 8, 3)).astype(np.int16),
             other=rng.rand(16, 2).astype(np.float32))
    np.save(tmp_path / "amb.npy", rng.rand(16, 3, 8, 3).astype(np.float32))
    base = ["train", "--data", str(tmp_path / "two.npz"), "--steps", "1", "--batch-size", "8", "--quiet"]
    cases = [([], "holds arrays ['x', 'other']; choose one with --key"),
             (["--key", "nope"], "--key 'nope' not in"),
             (["--key", "x"], "integer data of dtype int16 needs --num-levels"),
             (["--key", "other", "--num-levels", "17"], "--num-levels given for float data"),
             (["--key", "x", "--num-levels", "10"], r"must lie in [0, 9]"),
             (["--key", "x", "--num-levels", "17", "--layout", "nchwc"], "argument --layout: invalid choice")]
    for extra, fragment in cases:
        capsys.readouterr()
        assert main([*base, "--out", str(tmp_path / "bad"), *extra]) in (1, 2)
        assert fragment in _last_error(capsys)
    assert not (tmp_path / "bad").exists()
    for args, where in ((["--data", str(tmp_path / "amb.npy")], "pass --layout nchw or --layout nhwc"),
                        (["--data", "digits", "--key", "x"], "--key applies to .npy / .npz data"),
                        (["--data", "two_moons", "--num-levels", "17", "--layout", "nhwc"],
                         "--num-levels / --layout apply to .npy / .npz data")):
        assert main(["train", *args, "--out", str(tmp_path / "bad"), "--steps", "1", "--quiet"]) == 1
        assert where in _last_error(capsys)
    # train-classifier reads its --data the same way
    assert main(["train-classifier", "--data", str(tmp_path / "two.npz"), "--out", str(tmp_path / "bad"), "--quiet"]) == 1
    assert "choose one with --key" in _last_error(capsys)
    assert main([*base, "--out", str(tmp_path / "rgb"), "--key", "x", "--num-levels", "17"]) == 0
    ck = torch.load(tmp_path / "rgb" / "checkpoint.pt", weights_only=True)
    assert ck["config"]["data"]["shape"] == [3, 8, 8] and ck["config"]["data"]["channels_last"] is True
    assert ck["config"]["model"]["net"]["model"] == "UNet" and ck["config"]["objective"]["dequantize"] == 17
    saved = json.loads((tmp_path / "rgb" / "train_args.json").read_text())
    assert (saved["key"], saved["levels"], saved["layout"]) == ("x", 17, "nhwc")  # the inferred layout is recorded
    # typing the layout it found resumes; another one is a change of the run's settings
    assert main([*base, "--out", str(tmp_path / "rgb"), "--steps", "2", "--layout", "nhwc"]) == 0
    assert main([*base, "--out", str(tmp_path / "rgb"), "--steps", "3", "--layout", "nchw"]) == 1
    assert "--layout nchw (saved nhwc)" in _last_error(capsys)
    # --layout nchw reads the same array as (8, 8, 3): not square images, hence the MLP
    assert main([*base, "--out", str(tmp_path / "asked"), "--key", "x", "--num-levels", "17", "--layout", "nchw"]) == 0
    ck = torch.load(tmp_path / "asked" / "checkpoint.pt", weights_only=True)
    assert ck["config"]["data"]["shape"] == [8, 8, 3] and ck["config"]["model"]["net"]["model"] == "FlatMLP"


def test_no_ema_reaches_every_command_that_loads_a_run(toy_run, tmp_path, capsys, monkeypatch):
    # the library's load_score_model(use_ema=False): the online weights, said on stderr
    from scoresde.cli import commands, common
    model, _, cfg, _ = common.load_run(str(toy_run), use_ema=False)
    state = torch.load(toy_run / "checkpoint.pt", weights_only=True)
    assert cfg["weights"] == "online (--no-ema)"
    assert all(torch.equal(v, state["model"][k]) for k, v in model.state_dict().items())
    ema, _, _, _ = common.load_run(str(toy_run))
    assert any(not torch.equal(v, ema.state_dict()[k]) for k, v in model.state_dict().items())
    draws = {}
    for flags in ([], ["--no-ema"]):
        out = tmp_path / f"s{len(flags)}"
        assert main(["sample", str(toy_run), "--method", "euler_maruyama", "--steps", "3", "-n", "16", "--out", str(out),
                     *flags]) == 0
        draws[len(flags)] = np.load(f"{out}.npz")["samples"]
        note = [line for line in capsys.readouterr().err.splitlines() if line.startswith("scoresde: using")]
        assert note == [f"scoresde: using the {'online (--no-ema: not the EMA)' if flags else 'EMA'} weights of the "
                        f"checkpoint (step 5)"], note
    assert not np.array_equal(draws[0], draws[1])
    seen = []

    def recorder(path, *, device="cpu", quiet=False, use_ema=True):
        seen.append(use_ema)
        raise ValueError("recorded")

    monkeypatch.setattr(commands, "load_run", recorder)
    monkeypatch.setattr(common, "load_run", recorder)
    for command in (["likelihood", str(toy_run), "--out", str(tmp_path / "l.json")],
                    ["compare", str(toy_run), "--out", str(tmp_path / "c")],
                    ["inpaint", str(toy_run), "--out", str(tmp_path / "i")]):
        for flags in ([], ["--no-ema"]):
            assert main([*command, *flags, "--quiet"]) == 1 and "recorded" in _last_error(capsys)
    assert seen == [True, False] * 3


def test_no_ema_on_a_diffusers_folder_is_an_error(tmp_path, capsys):
    assert main(["sample", "--diffusers", str(tmp_path), "--no-ema", "--out", str(tmp_path / "s")]) == 1
    assert "--no-ema: a diffusers folder holds one set of weights" in _last_error(capsys)


def test_sample_out_creates_its_folder(toy_run, tmp_path, capsys):
    # as train --out: a missing folder (two levels) is created; a file in the way is still an error
    out = tmp_path / "new" / "deeper" / "s"
    assert main(["sample", str(toy_run), "--method", "euler_maruyama", "--steps", "2", "-n", "8", "--out", str(out),
                 "--quiet"]) == 0
    assert out.with_suffix(".npz").is_file() and out.with_suffix(".png").is_file()
    (tmp_path / "afile").write_text("x")
    assert main(["sample", str(toy_run), "--out", str(tmp_path / "afile" / "sub" / "s"), "--quiet"]) == 1
    assert "is a file, not a folder" in _last_error(capsys)


def test_compare_passes_spacing_to_the_methods_that_take_it(toy_run, tmp_path, capsys):
    # --spacing used to be parsed and ignored by compare: now it reaches euler_maruyama (a grid sampler) and not
    # torchsde (which has no spacing), changes its samples, and the report says where it went
    rows = {}
    for flags in ([], ["--spacing", "quadratic"]):
        out = tmp_path / f"c{len(flags)}"
        assert main(["compare", str(toy_run), "--methods", "euler_maruyama:4", "sde:4", "-n", "64", "--bpd-points",
                     "0", "--out", str(out), "--quiet", *flags]) == 0
        res = json.loads((out / "compare.json").read_text())
        rows[len(flags)] = {r["method"]: r["quality"] for r in res["rows"] if r["method"] != "real data"}
        if flags:
            assert "--spacing quadratic for euler_maruyama" in res["notes"]
    assert rows[0]["sde"] == rows[2]["sde"] and rows[0]["euler_maruyama"] != rows[2]["euler_maruyama"]
    capsys.readouterr()
    assert main(["compare", str(toy_run), "--methods", "sde:4", "--spacing", "logsnr", "--out", str(tmp_path / "x"),
                 "--quiet"]) == 1
    assert "--spacing applies to none of the compared methods ['sde']" in _last_error(capsys)
    assert main(["compare", str(toy_run), "--methods", "pc:4", "--eps", "0.01", "--out", str(tmp_path / "x"),
                 "--quiet"]) == 1
    assert "--eps does not apply to compare" in _last_error(capsys)


def test_likelihood_data_takes_the_array_options(toy_run, tmp_path, capsys):
    pts = np.random.RandomState(1).randn(8, 2).astype(np.float32)
    np.savez(tmp_path / "pts.npz", pts=pts, more=pts + 1)
    base = ["likelihood", str(toy_run), "--data", str(tmp_path / "pts.npz"), "--rtol", "1e-2", "--atol", "1e-2",
            "--out", str(tmp_path / "l.json"), "--quiet"]
    assert main(base) == 1 and "choose one with --key" in _last_error(capsys)
    assert main([*base, "--key", "more"]) == 0
    assert json.loads((tmp_path / "l.json").read_text())["n_points"] == 8
    assert main(["likelihood", str(toy_run), "--key", "more", "--out", str(tmp_path / "m.json"), "--quiet"]) == 1
    assert "without --data the checkpoint's data are read as they were" in _last_error(capsys)


def test_sample_takes_the_fast_solvers_variant_and_churn(toy_run, tmp_path, capsys):
    # unipc's B(h) variant and heun's S_churn reach the solver (other samples), and only the methods that take them
    got = {}
    for method, flags in (("unipc", []), ("unipc", ["--variant", "bh1"]), ("heun", []), ("heun", ["--s-churn", "5"])):
        out = tmp_path / f"{method}{len(flags)}"
        assert main(["sample", str(toy_run), "--method", method, "--steps", "4", "-n", "16", "--out", str(out),
                     "--quiet", *flags]) == 0
        got[(method, len(flags))] = np.load(f"{out}.npz")["samples"]
    assert not np.array_equal(got[("unipc", 0)], got[("unipc", 2)])
    assert not np.array_equal(got[("heun", 0)], got[("heun", 2)])
    capsys.readouterr()
    assert main(["sample", str(toy_run), "--method", "pc", "--variant", "bh1", "--out", str(tmp_path / "x"),
                 "--quiet"]) == 1
    assert "--variant does not apply to method 'pc'" in _last_error(capsys)
    assert main(["sample", str(toy_run), "--method", "unipc", "--variant", "bh3", "--out", str(tmp_path / "x")]) == 2
    assert "argument --variant: invalid choice: 'bh3'" in _last_error(capsys)
    assert main(["sample", str(toy_run), "--method", "unipc", "--variant", "taylor", "--out", str(tmp_path / "x"),
                 "--quiet"]) == 1  # dpmpp_3m's variant: the solver names unipc's
    assert "unknown variant 'taylor'; valid values are ['bh1', 'bh2']" in _last_error(capsys)
    assert main(["sample", str(toy_run), "--method", "heun", "--s-churn", "-1", "--out", str(tmp_path / "x")]) == 2
    assert "argument --s-churn: expected a finite number >= 0" in _last_error(capsys)


def test_old_array_run_resumes_in_the_layout_it_was_trained_in(tmp_path, capsys):
    # runs saved before --layout read every 4-D array as NCHW: an (n, 8, 8, 3) array as samples (8, 8, 3). Resuming
    # such a run must read it that way again, not in the layout inferred now (NHWC: samples (3, 8, 8))
    np.save(tmp_path / "rgb.npy", np.random.RandomState(2).randint(0, 256, size=(16, 8, 8, 3)).astype(np.uint8))
    args = ["train", "--data", str(tmp_path / "rgb.npy"), "--out", str(tmp_path / "run"), "--model", "mlp",
            "--hidden", "16", "--layers", "1", "--batch-size", "8", "--quiet"]
    assert main([*args, "--steps", "1", "--layout", "nchw"]) == 0
    path = tmp_path / "run" / "train_args.json"
    saved = json.loads(path.read_text())
    for k in ("key", "levels", "layout"):  # as an old run's settings
        del saved[k]
    path.write_text(json.dumps(saved))
    assert main([*args, "--steps", "2"]) == 0
    ck = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert ck["step"] == 2 and ck["config"]["data"]["shape"] == [8, 8, 3]
    assert json.loads(path.read_text())["layout"] == "nchw"
