"""The demo report's text (issue 11, item 8): the commands it suggests name the model folder as the
user can type it from where they ran the demo, and it explains, with a measured standard error, why
a stochastic sampler's Frechet distance need not fall with more steps at the demo's sample size."""
from __future__ import annotations

import inspect
import math

import numpy as np
import torch

from scoresde.cli import demo, demo_guided


def test_commands_name_the_folder_the_demo_was_given():
    assert demo.model_commands_path("scoresde-demo/model") == ("scoresde-demo/model",
                                                               "from the folder you ran the demo in")
    run, here = demo.model_commands_path("/tmp/my runs/model")
    assert run == "'/tmp/my runs/model'" and here == "from any folder"  # quoted for the shell


def test_no_command_assumes_the_demo_folder_is_the_current_one():
    """The old text said `scoresde sample model ...`, which works only from inside scoresde-demo/."""
    for mod in (demo, demo_guided):
        src = inspect.getsource(mod)
        for bad in ("scoresde sample model", "scoresde inpaint model", "scoresde likelihood model"):
            assert bad not in src, (mod.__name__, bad)


def test_guided_sections_use_the_given_path():
    cc = {"rows": [{"scale": 0.5, "accuracy": 0.9, "se": 0.01, "fd": 5.0, "nfe": 20, "wall_s": 1.0}], "scale": 0.5,
          "classes": "(row 10)", "label": "DPM-Solver++(2M)", "steps": 19, "per_class": 40, "n": 400,
          "picture": "class_conditional.png"}
    ip = {"rows": [{"method": "replacement", "nfe": 200, "accuracy": 0.6, "se": 0.04, "rmse": 0.5, "wall_s": 2.0}],
          "mask": "center", "hidden": 0.25, "steps": 100, "nfe": 200, "samples": 4, "picture": "inpainting.png",
          "n": 150, "truth_accuracy": 0.98}
    text = demo_guided.class_section(cc, run="out/model", here="from the folder you ran the demo in")
    assert "`scoresde sample out/model --class all` (from the folder you ran the demo in)" in text
    text = demo_guided.inpaint_section(ip, run="out/model", here="from the folder you ran the demo in")
    assert "`scoresde inpaint out/model --mask center`" in text


def test_bootstrap_se_matches_repeated_draws():
    """On Gaussian features (d = 8, n = 400, a fixed reference of 2000): the bootstrap standard error
    of one set's FD is within 35% of the standard deviation of the FD over 200 independent sets
    (repeated draws at the demo's size), and at n = 1600 it is about half (FD noise ~ 1/sqrt(n))."""
    rng = np.random.default_rng(0)
    d, n = 8, 400
    ref = rng.standard_normal((2000, d))
    draw = lambda k: rng.standard_normal((k, d)) * 1.2 + 0.3  # noqa: E731
    from scoresde.metrics import frechet_distance
    sd = float(np.std([frechet_distance(draw(n), ref) for _ in range(200)], ddof=1))
    boots = [demo.bootstrap_fd_se(draw(n), ref, n_boot=100, seed=k) for k in range(5)]
    assert 0.65 * sd < float(np.median(boots)) < 1.35 * sd, (boots, sd)
    big = float(np.median([demo.bootstrap_fd_se(draw(4 * n), ref, n_boot=100, seed=k) for k in range(5)]))
    assert 0.35 < big / float(np.median(boots)) < 0.7


def test_fd_spread_rows_equal_the_compare_metric_and_text_states_the_se():
    """fd_spread's FD of a set is the comparison's digit FD of the same set, and the report paragraph
    states the standard error, sqrt(2) times it, and one row per sampler."""
    from scoresde import data as D
    from scoresde.metrics import DigitClassifier, digit_frechet_distance
    torch.manual_seed(0)
    clf = DigitClassifier().eval()  # untrained: the check is that both paths use the same features
    test = D.digits("test")
    train = D.digits("train").data
    runs = [("Euler-Maruyama", 50, train[:200]), ("Euler-Maruyama", 100, train[200:400]),
            ("PC", 10, train[400:600])]
    sp = demo.fd_spread(runs, test.data, seed=0, classifier=clf)
    assert sp["n"] == 200 and len(sp["rows"]) == 3
    assert math.isclose(sp["rows"][1]["fd"], digit_frechet_distance(train[200:400], test.data, clf),
                        rel_tol=1e-9)
    assert all(r["se"] > 0 for r in sp["rows"])
    text = demo.fd_spread_text({"fd_spread": sp})
    se = sp["se_median"]
    assert f"standard error of about {se:.2f}" in text and f"{math.sqrt(2) * se:.2f}" in text
    assert "| Euler-Maruyama | 50: " in text and "| PC | 10: " in text
    assert demo.fd_spread_text({"fd_spread": None}) == ""
    assert isinstance(sp["rows"][0]["fd"], float) and not torch.is_tensor(sp["se_median"])


def test_quick_and_full_demo_default_to_separate_folders():
    """`scoresde demo --quick` then `scoresde demo` (README order): the full run must not find the quick run's
    model in its folder (it refused to resume it: '--model unet (saved mlp)')."""
    from scoresde.cli.parser import build_parser
    for quick in (False, True):
        args = build_parser().parse_args(["demo"] + (["--quick"] if quick else []))
        assert args.out is None
    assert demo.default_out(False) == "scoresde-demo"
    assert demo.default_out(True) == "scoresde-demo-quick"
