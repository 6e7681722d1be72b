"""The ``scoresde`` argument parser: its subcommands, one-line errors, and the options typed.

    scoresde train --data digits --sde vp --out runs/digits
    scoresde sample runs/digits/checkpoint.pt --method pc --steps 100 --out samples
    scoresde train --class-conditional --label-dropout 0.1 --out runs/cond && scoresde sample runs/cond --class all
    scoresde train-classifier --data digits --out runs/clf && scoresde sample runs/digits --class 3 --classifier runs/clf
    scoresde inpaint runs/digits --mask center --method pc --steps 100 --out inpaint
    scoresde likelihood runs/digits/checkpoint.pt --split test
    scoresde compare runs/digits/checkpoint.pt --methods euler_maruyama pc ode ddim --steps 10 20 50 100
    scoresde demo            # all of the above on scikit-learn's 8x8 digits, into ./scoresde-demo

:func:`build_parser` builds it (one ``_add_<command>`` per subcommand); :class:`_Parser` makes
its errors one :class:`CLIError` line and records in the namespace which options were typed
(:func:`given_options`, read when a run is resumed). Nothing heavy is imported here, so that
``scoresde --help`` is fast.
"""
from __future__ import annotations

import argparse

from .options import (SDES, _add_common, _add_data_options, _add_sampler_options, _add_sde_options,  # noqa: F401
                      _add_weights_option, _class_arg, _decay, _device, _dropout, _finite_float, _methods,
                      _nonneg_int, _positive_float,
                      _positive_int, _unit_float, CFG_SCALE)

__all__ = ["build_parser", "CLIError", "given_options", "GIVEN"]

#: inpaint --mask: the hidden region (scoresde.cli.inpainting.make_mask)
MASKS = ("left", "right", "top", "bottom", "center", "random")

OBJECTIVES = ("dsm", "dsm-likelihood", "ddpm", "hybrid")
MODELS = ("auto", "mlp", "unet")
DIVERGENCES = ("hutchinson_rademacher", "hutchinson_gaussian", "exact")


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status ``status``."""

    def __init__(self, message: str, status: int = 1, prog: str | None = None):
        super().__init__(message)
        self.status, self.prog = status, prog


#: attribute of the parsed namespace: the ``dest`` names of the options given on the command line
GIVEN = "_given"


def given_options(args) -> frozenset | None:
    """The options typed on the command line (``dest`` names), or None for a namespace that the
    parser did not build (then every value counts as requested)."""
    return getattr(args, GIVEN, None)


def _mark_given(namespace, dest: str) -> None:
    setattr(namespace, GIVEN, frozenset(getattr(namespace, GIVEN, frozenset())) | {dest})


class _Store(argparse._StoreAction):
    """The "store" action, recording that the option was given (even with its default value)."""

    def __call__(self, parser, namespace, values, option_string=None):
        super().__call__(parser, namespace, values, option_string)
        if option_string is not None:
            _mark_given(namespace, self.dest)


class _StoreTrue(argparse._StoreTrueAction):
    def __call__(self, parser, namespace, values, option_string=None):
        super().__call__(parser, namespace, values, option_string)
        _mark_given(namespace, self.dest)


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line on stderr (no usage dump), exit status 2, and
    whose namespace records which options were typed (:func:`given_options`): a resumed run
    compares those, so ``--seed 0`` is refused on a seed-3 run although 0 is the default."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register("action", None, _Store)
        self.register("action", "store", _Store)
        self.register("action", "store_true", _StoreTrue)

    def parse_known_args(self, args=None, namespace=None):
        ns, extras = super().parse_known_args(args, namespace)
        if not hasattr(ns, GIVEN):
            setattr(ns, GIVEN, frozenset())
        return ns, extras

    def error(self, message):  # noqa: D401 - argparse API
        raise CLIError(f"{message} (see '{self.prog} --help')", status=2, prog=self.prog)


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """argparse's "(default: X)" after each option's help, except where the help itself says what
    the default is and the default is None (it would print "(default: ...) (default: None)")."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default is None and "default" in text.lower():
            return text
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """The ``scoresde`` argument parser with its subcommands."""
    parser = _Parser(prog="scoresde", formatter_class=_Formatter,
                     description="Score-based diffusion models as SDEs: train, sample (class-conditional too), "
                                 "inpaint, measure likelihood, compare solvers.", epilog=__doc__.split("\n\n")[1])
    from .. import __version__
    parser.add_argument("--version", action="version", version=f"scoresde {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    _add_train(sub)
    _add_train_classifier(sub)
    _add_sample(sub)
    _add_inpaint(sub)
    _add_likelihood(sub)
    _add_compare(sub)
    _add_demo(sub)
    return parser


def _add_train(sub) -> None:
    """The ``train`` subcommand."""
    p = sub.add_parser("train", formatter_class=_Formatter, help="train a score model (resumes from --out)",
                       description="Train a score model. If --out already holds a checkpoint, training resumes "
                                   "from it with the run's saved settings: an option typed here that differs from "
                                   "them is an error (even if it is the default), except --steps, "
                                   "--checkpoint-every, --device and --quiet; --steps and --checkpoint-every keep "
                                   "the run's values unless typed.")
    p.add_argument("--data", default="digits",
                   help="'digits' (scikit-learn 8x8), a 2-D toy name (e.g. swiss_roll, two_moons, "
                        "8gaussians, checkerboard), or a path to .npy / .npz / an image folder")
    p.add_argument("--out", required=True, help="output folder (checkpoint, config, training log)")
    _add_data_options(p)
    _add_sde_options(p)
    g = p.add_argument_group("model and objective")
    g.add_argument("--model", choices=MODELS, default="auto", help="network; auto: UNet for square images of side >= 8, else the MLP (on flattened samples)")
    g.add_argument("--hidden", type=_positive_int, default=512, help="MLP width")
    g.add_argument("--layers", type=_positive_int, default=4, help="MLP hidden layers")
    g.add_argument("--channels", type=_positive_int, default=16, help="UNet base channels (a multiple of 4)")
    g.add_argument("--objective", choices=OBJECTIVES, default="dsm",
                   help="dsm (continuous-time DSM, sigma^2 weighting), dsm-likelihood (g^2 weighting), "
                        "ddpm (L_simple), hybrid (Improved DDPM, learned variance)")
    g.add_argument("--prediction", choices=("eps", "score", "x0", "v"), default="eps", help="network target")
    g.add_argument("--class-conditional", action="store_true",
                   help="a class-conditional model on the data's labels (digits: 0..9; .npz: its 'labels' array; "
                        "image folder: one sub-folder per class); y=None / dropped labels are the null class K")
    g.add_argument("--label-dropout", type=_dropout, default=0.0,
                   help="with --class-conditional: probability that a training label is replaced by the null class "
                        "(0.1 for classifier-free guidance, Ho & Salimans 2022; 0: conditional only)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--steps", type=_positive_int, default=3000, help="training steps")
    g.add_argument("--batch-size", type=_positive_int, default=128, help="batch size")
    g.add_argument("--lr", type=_positive_float, default=2e-3, help="Adam learning rate (after warm-up)")
    g.add_argument("--warmup", type=_nonneg_int, default=200, help="linear warm-up steps")
    g.add_argument("--ema", type=_decay, default=0.999, help="EMA decay, in [0, 1)")
    g.add_argument("--checkpoint-every", type=_positive_int, default=2000, help="steps between checkpoints")
    _add_common(p)


def _add_sample(sub) -> None:
    """The ``sample`` subcommand."""
    p = sub.add_parser("sample", formatter_class=_Formatter, help="draw samples from a checkpoint",
                       description="Sample from a trained checkpoint (EMA weights; --no-ema: the online ones). "
                                   "Writes <out>.npz with the "
                                   "samples and <out>.png: an image grid, or a scatter plot for 2-D data. Under "
                                   "torchrun --nproc_per_node=K the batches are dealt out to the K processes "
                                   "(batch b seeded by --seed + b: the samples of one process).")
    p.add_argument("checkpoint", nargs="?", default=None,
                   help="checkpoint file (or a training folder holding checkpoint.pt); or give --diffusers")
    p.add_argument("--diffusers", default=None, metavar="PATH",
                   help="a diffusers UNet2DModel folder (save_pretrained; a pipeline folder with unet/ and "
                        "scheduler/ gives the SDE) instead of a checkpoint")
    p.add_argument("--method", default="pc", help="one of: " + ", ".join(_methods()))
    p.add_argument("--steps", type=_positive_int, default=100, help="solver steps (fixed-step methods)")
    p.add_argument("-n", "--num-samples", type=_positive_int, default=64, help="number of samples")
    p.add_argument("--batch-size", type=_positive_int, default=1000, help="samples per batch")
    p.add_argument("--out", default="samples", help="output stem: writes <out>.npz and <out>.png (its folder is "
                                                     "created if missing); a folder (ending with '/', or an "
                                                     "existing one): writes <out>/samples.npz and <out>/samples.png")
    _add_weights_option(p)
    g = p.add_argument_group("class-conditional sampling")
    g.add_argument("--class", dest="label", type=_class_arg, default=None, metavar="K",
                   help="draw class K (an index 0..num_classes-1), or 'all': -n samples of every class, one grid "
                        "row per class. A class-conditional run (train --class-conditional) uses classifier-free "
                        "guidance; any run takes --classifier")
    g.add_argument("--scale", type=_finite_float, default=None,
                   help=f"guidance weight. Classifier-free: w in (1 + w) s(x, t, y) - w s(x, t, null), 0 = the "
                        f"conditional model (diffusers' guidance_scale is 1 + w); default {CFG_SCALE:g} for a run "
                        f"trained with --label-dropout > 0, else 0. With --classifier: s + scale grad log p_t(y | x), "
                        f"default 1")
    g.add_argument("--classifier", default=None, metavar="RUN",
                   help="classifier guidance with this noise-conditional classifier (a train-classifier checkpoint "
                        "or folder, on the run's SDE); the guided score is the run's unconditional one, or its "
                        "conditional s(x, t, y) for a class-conditional run")
    _add_sampler_options(p)
    _add_common(p)


def _add_inpaint(sub) -> None:
    """The ``inpaint`` subcommand."""
    p = sub.add_parser("inpaint", formatter_class=_Formatter, help="inpaint held-out images with any sampler",
                       description="Fill in the hidden part of held-out images (the test split) with the run's "
                                   "unconditional score: the known pixels are replaced after every step by a draw "
                                   "of their forward perturbation (Song et al. 2021, App. I.2) and pasted exactly "
                                   "at the end. Writes <out>.png, one row per image (masked input with the hidden "
                                   "pixels in light red, the samples, the truth), and <out>.npz.")
    p.add_argument("checkpoint", help="checkpoint file (or a training folder holding checkpoint.pt)")
    p.add_argument("--mask", choices=MASKS, default="center",
                   help="the hidden region: a half (left, right, top, bottom), the central half-size square "
                        "(center), or each pixel with probability 1/2 (random, drawn from --seed)")
    p.add_argument("--method", default="pc", help="one of: " + ", ".join(_methods()))
    p.add_argument("--steps", type=_positive_int, default=100, help="solver steps (fixed-step methods)")
    p.add_argument("-n", "--num-images", type=_positive_int, default=8, help="held-out images (the first n)")
    p.add_argument("-k", "--samples-per-image", type=_positive_int, default=4, help="samples per image")
    p.add_argument("--split", choices=("test", "train"), default="test", help="data split of the checkpoint's data")
    p.add_argument("--batch-size", type=_positive_int, default=1000, help="samples per batch")
    p.add_argument("--jump-length", type=_positive_int, default=None,
                   help="RePaint resampling (Lugmayr et al. 2022): go back this many steps and redo them; grid "
                        "samplers only (euler_maruyama, reverse_diffusion, ancestral, pc)")
    p.add_argument("--jump-n-sample", type=_positive_int, default=1,
                   help="RePaint: times each block of --jump-length steps is done (1 = no resampling; about this "
                        "many times the NFE)")
    p.add_argument("--out", default="inpaint", help="output stem: writes <out>.npz and <out>.png (its folder is "
                                                     "created if missing); a folder (ending with '/', or an "
                                                     "existing one): writes <out>/inpaint.npz and <out>/inpaint.png")
    _add_weights_option(p)
    _add_sampler_options(p)
    _add_common(p)


def _add_train_classifier(sub) -> None:
    """The ``train-classifier`` subcommand."""
    p = sub.add_parser("train-classifier", formatter_class=_Formatter,
                       help="train a noise-conditional classifier (for sample --classifier)",
                       description="Train a noise-conditional classifier p_t(y | x_t) (the UNet's encoder half; "
                                   "cross-entropy on x_t from the SDE's perturbation kernel at t ~ U[1e-5, T], "
                                   "Dhariwal & Nichol 2021) on labelled image data, for 'scoresde sample --class K "
                                   "--classifier <out>'. Give it the SDE options of the score run it will guide. "
                                   "If --out holds a classifier checkpoint, training resumes (same settings; "
                                   "--steps may grow).")
    p.add_argument("--data", default="digits", help="labelled images: 'digits', a .npz with a 'labels' array, or an "
                                                    "image folder of class sub-folders")
    p.add_argument("--out", required=True, help="output folder (checkpoint, config, training log)")
    _add_data_options(p)
    _add_sde_options(p)
    g = p.add_argument_group("classifier and optimisation")
    g.add_argument("--channels", type=_positive_int, default=32, help="base channels (a multiple of 4)")
    g.add_argument("--steps", type=_positive_int, default=400, help="training steps")
    g.add_argument("--batch-size", type=_positive_int, default=128, help="batch size")
    g.add_argument("--lr", type=_positive_float, default=1e-3, help="Adam learning rate (after warm-up)")
    g.add_argument("--warmup", type=_nonneg_int, default=20, help="linear warm-up steps")
    g.add_argument("--ema", type=_decay, default=0.999, help="EMA decay, in [0, 1)")
    g.add_argument("--checkpoint-every", type=_positive_int, default=200, help="steps between checkpoints")
    _add_common(p)


def _add_likelihood(sub) -> None:
    """The ``likelihood`` subcommand."""
    p = sub.add_parser("likelihood", formatter_class=_Formatter, help="bits/dim by the probability-flow ODE",
                       description="Exact likelihood of a data split under the probability-flow ODE, in bits/dim "
                                   "(uniformly dequantized integer levels), with its standard error over the data; "
                                   "optionally also the DDPM variational bound (VP / sub-VP). Under torchrun "
                                   "--nproc_per_node=K the batches of --batch-size points are dealt out to the K "
                                   "processes (batch j seeded by --seed + j: the numbers of one process).")
    p.add_argument("checkpoint", nargs="?", default=None,
                   help="checkpoint file (or a training folder holding checkpoint.pt); or give --reference-ckpt")
    p.add_argument("--reference-ckpt", default=None, metavar="PATH",
                   help="a checkpoint of the reference score-SDE code (with --config and --data: CIFAR-shaped "
                        ".npz or image folder, 256 levels)")
    p.add_argument("--config", default=None, metavar="NAME",
                   help="its reference config, e.g. vp/cifar10_ddpmpp_deep_continuous, ve/cifar10_ncsnpp_continuous")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="change a model field of --config (Python literal values), e.g. nf=64 or ch_mult=(1,2,2)")
    p.add_argument("--split", choices=("test", "train"), default="test", help="data split of the checkpoint's data")
    p.add_argument("--data", default=None, help="other data to evaluate (same forms as train --data); "
                                                "default: the checkpoint's data")
    _add_data_options(p)
    p.add_argument("-n", "--num-points", type=int, default=0, help="evaluate the first n points (0 = all)")
    p.add_argument("--divergence", choices=DIVERGENCES, default="hutchinson_rademacher",
                   help="divergence estimator inside the ODE")
    p.add_argument("--ode-method", default="dopri5",
                   help="ODE method: an adaptive one (dopri5, ...) or a fixed-grid one (euler, rk4, ...; or the "
                        "multistep dpmpp_2m / dpmpp_3m, with --time-variable lambda: on the t grid their first "
                        "step is too long for VP), which needs --steps")
    p.add_argument("--steps", type=_positive_int, default=None,
                   help="steps of a fixed-grid --ode-method (e.g. rk4); not for adaptive methods")
    p.add_argument("--time-variable", choices=("t", "lambda"), default="t",
                   help="integration variable: t, or lambda = -1/2 log-SNR(t) (log sigma for VE)")
    p.add_argument("--step-control", choices=("batch", "per_sample"), default="batch",
                   help="batch: one adaptive step size for the whole batch; per_sample: each point its own "
                        "(dopri5 only)")
    p.add_argument("--rows-per-call", type=_positive_int, default=16,
                   help="with --step-control per_sample: rows of every network call (the running points in "
                        "chunks; a fixed shape keeps a point's result independent of its batch); e.g. 256 on a GPU")
    p.add_argument("--rtol", type=_positive_float, default=1e-5,
                   help="relative tolerance (1e-3 instead for data of <= 16 dimensions unless typed)")
    p.add_argument("--atol", type=_positive_float, default=1e-5, help="absolute tolerance (as --rtol)")
    p.add_argument("--eps", type=_positive_float, default=1e-5, help="start time of the ODE")
    p.add_argument("--batch-size", type=_positive_int, default=500, help="points per solve")
    p.add_argument("--vlb", action="store_true", help="also the DDPM variational bound (VP / sub-VP)")
    p.add_argument("--out", default="likelihood.json", help="JSON output file")
    _add_weights_option(p)
    _add_common(p)


def _add_compare(sub) -> None:
    """The ``compare`` subcommand."""
    p = sub.add_parser("compare", formatter_class=_Formatter, help="table of solvers: NFE, time, quality, bits/dim",
                       description="Sample with several methods and step budgets; one table of NFE, wall time, "
                                   "sample quality (Frechet distance in digit-classifier features for digits, sliced "
                                   "Wasserstein otherwise) and bits/dim where defined (PF-ODE for 'ode', the DDPM "
                                   "variational bound for 'ddpm'). Writes <out>/compare.md, compare.json and "
                                   "quality_vs_nfe.png. A method may carry its own steps: 'pc:10,20'.")
    p.add_argument("checkpoint", help="checkpoint file (or a training folder holding checkpoint.pt)")
    p.add_argument("--methods", nargs="+",
                   default=["euler_maruyama", "pc", "sde", "ode", "ddpm", "ddim", "dpmpp_2m:10,20", "unipc:10,20",
                            "heun:10,20"],
                   help="methods: " + ", ".join(_methods()) + " (heun's budgets are NFE; ode's and "
                        "dpm_adaptive's are tolerances)")
    p.add_argument("--steps", type=_positive_int, nargs="+", default=[10, 20, 50, 100],
                   help="step budgets of the fixed-step methods")
    p.add_argument("--ode-rtols", type=_positive_float, nargs="+", default=[1e-2, 1e-3, 1e-5],
                   help="tolerances (rtol = atol) of the adaptive ODE rows")
    p.add_argument("-n", "--num-samples", type=_positive_int, default=500, help="samples per method")
    p.add_argument("--bpd-points", type=int, default=100,
                   help="test points for the bits/dim columns (0 = skip bits/dim)")
    p.add_argument("--out", default="compare", help="output folder")
    _add_weights_option(p)
    _add_sampler_options(p)
    _add_common(p)


def _add_demo(sub) -> None:
    """The ``demo`` subcommand."""
    p = sub.add_parser("demo", formatter_class=_Formatter, help="train -> compare -> likelihood -> guidance, inpainting on 8x8 digits",
                       description="The whole job on scikit-learn's 8x8 digits (nothing downloaded): train a score "
                                   "model (class-conditional, label dropout 0.1), compare samplers, measure bits/dim "
                                   "on the test split by the PF-ODE and by the DDPM variational bound, draw each "
                                   "digit by classifier-free guidance against the scale, inpaint held-out digits, and "
                                   "write <out>/report.md with the images.")
    p.add_argument("--out", default=None, help="output folder (default scoresde-demo, scoresde-demo-quick with --quick, "
                                               "so that the two runs never resume each other)")
    p.add_argument("--sde", choices=SDES, default="vp", help="forward SDE")
    p.add_argument("--quick", action="store_true", help="a tiny run (under 2 minutes) that checks the pipeline")
    from .demo_presets import FULL, QUICK
    p.add_argument("--train-steps", type=_positive_int, default=None,
                   help=f"training steps; default {FULL['steps']} ({QUICK['steps']} with --quick)")
    _add_common(p)
