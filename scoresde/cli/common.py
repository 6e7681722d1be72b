"""What the ``scoresde`` subcommands share: status lines, threads, ``--data`` and loading a run."""
from __future__ import annotations

import os
import sys

import torch

from ..runs import resolve_checkpoint


def _log(args, msg: str) -> None:
    """Status lines go to stderr (stdout carries the results); --quiet silences them."""
    if not getattr(args, "quiet", False):
        print(msg, file=sys.stderr, flush=True)


def _threads(args=None):
    """Apply ``--threads`` (0 keeps torch's default, capped at the machine's cores)."""
    n = getattr(args, "threads", 0) if args is not None else 0
    if n < 0:
        raise ValueError(f"--threads must be >= 0; got {n}")
    if n > 0:
        torch.set_num_threads(n)
    elif torch.get_num_threads() > (os.cpu_count() or 1):
        torch.set_num_threads(os.cpu_count() or 1)


#: load_data's keyword -> the command-line flag that sets it (named in the errors)
_DATA_FLAGS = {"key": "--key", "num_levels": "--num-levels", "layout": "--layout"}


def data_options(source) -> dict:
    """The keyword arguments of :func:`load_data` (key, num_levels, layout) from the parsed
    arguments or a run's settings dict (``train_args.json``); absent ones are None."""
    get = source.get if isinstance(source, dict) else (lambda k, d=None: getattr(source, k, d))
    return {"key": get("key"), "num_levels": get("levels"), "layout": get("layout")}


def load_data(spec: str, *, split: str = "train", seed: int = 0, key: str | None = None,
              num_levels: int | None = None, layout: str | None = None):
    """A :class:`scoresde.data.Dataset` from a ``--data`` value.

    "digits" -> the digits ``split``; a toy name -> 10 000 points (seed 0 for "train", a fresh
    seed for "test"); a .npy / .npz path -> ``data.from_array`` with ``key``, ``num_levels`` and
    ``layout`` (``--key``, ``--num-levels``, ``--layout``); a folder -> ``data.image_folder``.

    Raises:
        ValueError naming the valid forms; ``--key`` / ``--num-levels`` / ``--layout`` given for
        data that are not a .npy / .npz file; from_array's errors with the flag in place of the
        keyword (e.g. "choose one with --key").
    """
    from .. import data as D
    given = [_DATA_FLAGS[k] for k, v in (("key", key), ("num_levels", num_levels), ("layout", layout))
             if v is not None]
    is_array = spec.lower().endswith((".npy", ".npz")) and not os.path.isdir(spec)
    if given and not is_array:
        raise ValueError(f"{' / '.join(given)} appl{'ies' if len(given) == 1 else 'y'} to .npy / .npz data; --data "
                         f"{spec} is not such a file")
    if spec == "digits":
        return D.digits(split)
    if spec in D.TOYS:
        return D.toy(spec, n=10000, seed=seed if split == "train" else seed + 1_000_003)
    if os.path.isdir(spec):
        return D.image_folder(spec)
    if is_array:
        try:
            return D.from_array(spec, key=key, num_levels=num_levels, layout=layout)
        except (ValueError, TypeError) as e:
            raise type(e)(_flag_names(str(e))) from None
    if os.path.exists(spec):
        raise ValueError(f"data file {spec!r} is neither .npy / .npz nor a folder of images")
    raise ValueError(f"unknown data {spec!r}; valid values are 'digits', {list(D.TOYS)}, or a path to a .npy / .npz "
                     "file or an image folder")


def _flag_names(msg: str) -> str:
    """from_array's message with the command-line flags in place of its keywords."""
    if msg.startswith("key "):
        msg = "--" + msg
    for old, new in (("key=", "--key"), ("needs num_levels", "needs --num-levels"),
                     ("num_levels given", "--num-levels given"), ("layout='nchw' or layout='nhwc' (the command "
                     "line's --layout)", "--layout nchw or --layout nhwc"), ("layout='nhwc'", "--layout nhwc"),
                     ("layout='nchw'", "--layout nchw")):
        msg = msg.replace(old, new)
    return msg


def load_run(path: str, *, device="cpu", quiet=False, use_ema: bool = True):
    """(score model in eval mode, sde, stored config, training Dataset or None) of a checkpoint.

    The EMA weights unless ``use_ema=False`` (``--no-ema``): then the online weights, the raw
    result of the last optimizer update; the config's "weights" says which ("ema", "online", or
    "online (--no-ema)").
    """
    from ..checkpoint import load_checkpoint
    from ..runs import load_score_model
    from .nets import build_net
    path = resolve_checkpoint(path)
    state = load_checkpoint(path)
    cfg = state.get("config")
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model"), dict) or "net" not in cfg["model"]:
        raise ValueError(f"{path} is a scoresde checkpoint without a model config")
    net = build_net(cfg["model"]["net"])
    del state
    # quiet: the "using the EMA weights" notice would precede a later one-line error; the commands
    # state the weights in their own output instead
    model, sde, cfg = load_score_model(path, net=net, map_location=device, quiet=True, use_ema=use_ema)
    if not use_ema:
        cfg["weights"] = "online (--no-ema)"
    from .. import data as D
    try:
        ds = D.load_dataset(cfg["data"])
    except (ValueError, FileNotFoundError, KeyError):
        ds = None
    return model, sde, cfg, ds


def _weights_note(cfg) -> str:
    if cfg.get("weights") == "pretrained":
        return f"scoresde: using the {cfg.get('source')}"
    w = {"ema": "EMA", "online (--no-ema)": "online (--no-ema: not the EMA)"}.get(cfg.get("weights"),
                                                                               "online (no EMA in the checkpoint)")
    return f"scoresde: using the {w} weights of the checkpoint (step {cfg.get('step')})"


def _check_shape(ds, cfg, what="data"):
    want = list(cfg["data"].get("shape", []))
    if want and list(ds.shape) != want:
        raise ValueError(f"{what} have shape {list(ds.shape)} per sample but the model was trained on {want}")


#: sampler flags that ``compare`` passes to every row whose method declares the option
_GRID_FLAGS = ("spacing", "order", "rho", "variant", "s_churn")


def apply_sampler_flags(runs, args) -> list[str]:
    """``compare``: the typed --spacing / --order / --rho / --variant / --s-churn reach every run
    whose method takes them.

    Arguments:
        runs: the :class:`scoresde.cli.compare.Run` rows (their ``kwargs`` are updated in place).
        args: the parsed arguments (only typed flags count; a namespace not built by the parser
            counts every set value as typed).
    Returns:
        notes for the report, one per flag applied, naming the methods it reached.
    Raises:
        ValueError: a typed flag that no method of the comparison takes (the message lists those
            that do), or --eps / --no-denoise, which compare does not take (each row uses its
            method's default, and the NFE budgets count the final denoising step).
    """
    from ..solvers.registry import SOLVERS
    from .parser import given_options
    typed = given_options(args)
    was_typed = (lambda f: getattr(args, f, None) not in (None, False)) if typed is None else (lambda f: f in typed)
    for flag in ("eps", "no_denoise"):
        if was_typed(flag) and getattr(args, flag, None) not in (None, False):
            raise ValueError(f"--{flag.replace('_', '-')} does not apply to compare: each row uses its method's "
                             "default (and the NFE budgets count the final denoising step)")
    notes = []
    for flag in _GRID_FLAGS:
        value = getattr(args, flag, None)
        if value is None or not was_typed(flag):
            continue
        took = sorted({r.name for r in runs if flag in SOLVERS[r.name].options})
        if not took:
            takers = [m for m, s in SOLVERS.items() if flag in s.options]
            raise ValueError(f"--{flag.replace('_', '-')} applies to none of the compared methods {sorted({r.name for r in runs})}; "
                             f"methods that take it: {takers}")
        for r in runs:
            if r.name in took:
                r.kwargs[flag] = value
        notes.append(f"--{flag.replace('_', '-')} {value} for {', '.join(took)}")
    return notes


#: data of at most this many dimensions per sample is a "small problem" for the ODE tolerances
SMALL_DIM = 16
#: rtol = atol of the probability-flow ODE for small problems when --rtol / --atol are not typed
SMALL_TOL = 1e-3


def small_problem_tolerances(args, shape, opts: dict | None = None) -> str | None:
    """Loosen the untyped ``--rtol`` / ``--atol`` to 1e-3 for data of at most 16 dimensions (2-D toys).

    A learned score on a 2-D toy is stiff: at 1e-5 the ODE sampler took 1815 network calls
    (256 s) and the likelihood of 500 points 4166 (188 s) on ``two_moons``. On a 2-D Gaussian
    oracle (VPSDE, exact score) 1e-3 costs at most 6.4e-3 in sample position against the exact
    flow (1.7e-3 at 1e-4, 2.6e-5 at 1e-5) and at most 4.3e-3 bits/dim (mean 4.5e-4; 6.0e-5 at
    1e-5) on the likelihood, for 32 instead of 56 evaluations.

    Arguments:
        args: the parsed arguments (``rtol``, ``atol``; typed values are kept). shape: the
            per-sample data shape. opts: optional sampler options dict to update alike.
    Returns:
        A one-line note when the tolerances were loosened, else None.
    """
    from .parser import given_options
    n = 1
    for s in shape:
        n *= int(s)
    typed = given_options(args)
    if typed is None or n > SMALL_DIM or "rtol" in typed or "atol" in typed:  # None: not from the parser
        return None
    args.rtol = args.atol = SMALL_TOL
    if opts is not None and "rtol" in opts:
        opts["rtol"] = opts["atol"] = SMALL_TOL
    return (f"scoresde: {n}-D data: ODE tolerances rtol = atol = {SMALL_TOL:g} (a small problem; type --rtol / "
            "--atol to choose, e.g. 1e-5)")
