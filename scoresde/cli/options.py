"""Argument types and the option groups that several ``scoresde`` subcommands share.

The types turn a bad value into argparse's one-line "argument --x: ..." error at parse time;
:func:`_add_common` (seed, device, threads, quiet), :func:`_add_sampler_options` (the options of
``scoresde.sample``) and :func:`_add_sde_options` (the forward SDE of ``train`` and
``train-classifier``) and :func:`_add_data_options` (how ``--data`` arrays are read) are added to
each parser that takes them. Nothing heavy is imported here.
"""
from __future__ import annotations

import argparse
import math

SDES = ("vp", "subvp", "ve", "vp-cosine")
#: default classifier-free guidance weight w of ``sample --class`` (and of the demo's class grid), measured on the
#: digits: see the demo report's accuracy-against-scale table
CFG_SCALE = 0.5


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (v > 0 and v != float("inf")):
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {text!r}")
    return v


def _nonneg_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return v


def _nonneg_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not (0 <= v < float("inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return v


def _decay(text: str) -> float:
    """An EMA decay: a number in [0, 1) (1 would never move the average off its first value)."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}") from None
    if not 0.0 <= v < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r} (1 freezes the EMA at its "
                                         "first value)")
    return v


def _unit_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return v


def _dropout(text: str) -> float:
    """A label-dropout probability in [0, 1) (1 would drop every label: an unconditional model)."""
    v = _unit_float(text)
    if v >= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r} (1 drops every label)")
    return v


def _device(text: str) -> str:
    """A torch device this machine has (checked before any work, so the error names --device)."""
    import torch

    try:
        dev = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a torch device (e.g. cpu, cuda, cuda:1, mps)") from None
    if dev.type == "meta":  # shapes without values: every command would fail later inside torch
        raise argparse.ArgumentTypeError(f"{text!r} holds no values (tensors there have shapes only); use 'cpu' or "
                                          "'cuda'")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text!r}: CUDA is not available on this machine")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise argparse.ArgumentTypeError(f"{text!r}: MPS is not available on this machine")
    return text


def _add_common(p: argparse.ArgumentParser, seed: int = 0) -> None:
    p.add_argument("--seed", type=_nonneg_int, default=seed, help="random seed (sampling noise, data split draws)")
    p.add_argument("--device", type=_device, default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (0: torch's default). One thread is the fast and safe choice for "
                        "the small networks of the demo: with 2 threads on a busy 2-core machine each step "
                        "waits for the second thread (measured 60x slower)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _methods() -> list[str]:
    """The sampler names of the solver registry (what ``scoresde.sample`` accepts)."""
    from ..solvers.registry import METHODS
    return list(METHODS)


def _add_sampler_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sampler options (names of scoresde.sample)")
    g.add_argument("--eps", type=_positive_float, default=None,
                   help="last time of the reverse solve; default: the SDE's (1e-3 VP / sub-VP, 1e-5 VE)")
    g.add_argument("--predictor", default="reverse_diffusion",
                   help="pc: predictor (euler_maruyama, reverse_diffusion, ancestral)")
    g.add_argument("--corrector", default="langevin", help="pc: corrector (langevin, ald, none)")
    g.add_argument("--snr", type=_positive_float, default=0.16, help="pc: corrector signal-to-noise ratio")
    g.add_argument("--corrector-steps", type=_positive_int, default=1, help="pc: corrector steps per step")
    g.add_argument("--sde-method", default="euler", help="sde: torchsde method")
    g.add_argument("--ode-method", default="dopri5", help="ode: torchdiffeq method")
    g.add_argument("--rtol", type=_positive_float, default=1e-5,
                   help="ode: relative tolerance (1e-3 instead for data of <= 16 dimensions unless typed; "
                        "dpm_adaptive: when typed, its default 0.05)")
    g.add_argument("--atol", type=_positive_float, default=1e-5,
                   help="ode: absolute tolerance (1e-3 for small data, as --rtol; dpm_adaptive: when typed, its "
                        "default 0.0078)")
    g.add_argument("--eta", type=_unit_float, default=0.0, help="ddim: eta in [0, 1] (0 = deterministic)")
    g.add_argument("--variance", default=None,
                   help="ddpm: fixed_small, fixed_large or learned_range; default: learned_range for a model "
                        "with learned variance, else fixed_small")
    g.add_argument("--spacing", choices=("uniform", "quadratic", "logsnr", "karras"), default=None,
                   help="time grid of the grid and fast solvers; default: the method's own (uniform for "
                        "the SDE samplers, logsnr for the DPM-Solver family and unipc, karras for heun)")
    g.add_argument("--order", type=_positive_int, default=None, help="dpm_solver / dpm_adaptive / unipc / deis: order")
    g.add_argument("--rho", type=_positive_float, default=None, help="karras spacing: rho (default 7)")
    g.add_argument("--variant", choices=("bh1", "bh2", "peers", "taylor"), default=None,
                   help="unipc: bh1 or bh2 (default bh2; bh1 below ~10 steps); dpmpp_3m: peers or taylor (default "
                        "peers)")
    g.add_argument("--s-churn", type=_nonneg_float, default=None,
                   help="heun: EDM's stochasticity S_churn (default 0, deterministic)")
    g.add_argument("--no-denoise", action="store_true", help="return the last noisy state, not its mean")


def _finite_float(text: str) -> float:
    """A finite number (a guidance scale)."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return v


def _class_arg(text: str):
    """``--class``: a class index >= 0 or "all" (the range is checked against the run, before any work)."""
    if text.strip().lower() == "all":
        return "all"
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a class index (an integer >= 0) or 'all', got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected a class index (an integer >= 0) or 'all', got {text!r}")
    return v


def _add_sde_options(p: argparse.ArgumentParser) -> None:
    """The forward SDE of ``train`` and ``train-classifier`` (``scoresde.cli.training.make_sde``)."""
    g = p.add_argument_group("SDE")
    g.add_argument("--sde", choices=SDES, default="vp", help="forward SDE")
    g.add_argument("--beta-min", type=_positive_float, default=0.1, help="VP / sub-VP: beta(0)")
    g.add_argument("--beta-max", type=_positive_float, default=20.0, help="VP / sub-VP: beta(1)")
    g.add_argument("--sigma-min", type=_positive_float, default=0.01, help="VE: sigma_min")
    g.add_argument("--sigma-max", type=_positive_float, default=None,
                   help="VE: sigma_max; default: the largest pairwise data distance (Song & Ermon 2020, "
                        "Technique 1; over 2000 samples of larger data), raised if needed so that the prior is "
                        "within 0.01 nats per dimension of the data's terminal marginal (off-centre data)")
    g.add_argument("--num-scales", type=_positive_int, default=1000, help="N, steps of the discrete chain")


def _levels(text: str) -> int:
    """``--num-levels``: the number of integer levels of array data, an integer >= 2."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 2 (e.g. 17 for values 0..16), got {text!r}") from None
    if v < 2:
        raise argparse.ArgumentTypeError(f"expected an integer >= 2 (e.g. 17 for values 0..16), got {text!r}")
    return v


#: --layout: the axis order of 4-D image arrays (scoresde.data.from_array's layout)
LAYOUTS = ("nchw", "nhwc")


def _add_data_options(p: argparse.ArgumentParser) -> None:
    """How a ``--data`` .npy / .npz array is read (:func:`scoresde.data.from_array`'s key, num_levels, layout)."""
    g = p.add_argument_group(".npy / .npz data (scoresde.data.from_array)")
    g.add_argument("--key", default=None, metavar="NAME",
                   help="the array of a .npz that holds several (default: its one array besides 'labels')")
    g.add_argument("--num-levels", dest="levels", type=_levels, default=None, metavar="L",
                   help="integer data: the number of levels, values 0..L-1 (default: 256 for uint8; other integer "
                        "dtypes need it, e.g. 17 for the values 0..16)")
    g.add_argument("--layout", choices=LAYOUTS, default=None,
                   help="axis order of 4-D image arrays; default: the channels are the axis of 1 and 3 of size <= 4, "
                        "and a shape where both or neither are is an error. A 3-D (n, H, W) array is n gray images "
                        "(nhwc on it is an error, except for one (H, W, C) image of C <= 4 channels)")


def _add_weights_option(p: argparse.ArgumentParser) -> None:
    """``--no-ema``: which weights of a run are loaded (``scoresde.cli.common.load_run``)."""
    p.add_argument("--no-ema", action="store_true",
                   help="use the run's online weights (those of the last optimizer update) instead of their "
                        "exponential moving average (EMA), which samples and likelihoods use by default")
