"""The work behind each ``scoresde`` subcommand (see :mod:`scoresde.cli` for the parser).

Each ``cmd_<name>(args)`` takes the parsed arguments, prints its results, writes its files
atomically (compute first, then write) and returns the exit status. User errors are raised as
``ValueError`` / ``FileNotFoundError`` / :class:`scoresde.cli.CLIError` with one-line messages;
:func:`scoresde.cli.main` prints them.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ..plotting import atomic_file
from ..train import resolve_checkpoint

TRAIN_ARGS = "train_args.json"
#: train options that may change when a run is resumed
_RESUME_FREE = ("steps", "quiet", "checkpoint_every", "out", "device", "command")
#: free options that keep the run's saved value unless typed (an interrupted run resumes to its own --steps)
_KEEP_UNLESS_GIVEN = ("steps", "checkpoint_every")
#: settings a train_args.json must hold (run_train reads them)
_REQUIRED = ("data", "sde", "beta_min", "beta_max", "sigma_min", "sigma_max", "num_scales", "model", "hidden",
             "layers", "channels", "objective", "prediction", "steps", "batch_size", "lr", "warmup", "ema", "seed",
             "checkpoint_every")


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


# ------------------------------------------------------------------------------------------ data
def load_data(spec: str, *, split: str = "train", seed: int = 0):
    """A :class:`scoresde.data.Dataset` from a ``--data`` value.

    "digits" -> the digits ``split``; a toy name -> 10 000 points (seed 0 for "train", a fresh
    seed for "test"); a .npy / .npz path -> ``data.from_array``; a folder -> ``data.image_folder``.
    Raises ValueError naming the valid forms.
    """
    from .. import data as D
    if spec == "digits":
        return D.digits(split)
    if spec in D.TOYS:
        return D.toy(spec, n=10000, seed=seed if split == "train" else seed + 1_000_003)
    if os.path.isdir(spec):
        return D.image_folder(spec)
    if spec.lower().endswith((".npy", ".npz")):
        return D.from_array(spec)
    if os.path.exists(spec):
        raise ValueError(f"data file {spec!r} is neither .npy / .npz nor a folder of images")
    raise ValueError(f"unknown data {spec!r}; valid values are 'digits', {list(D.TOYS)}, or a path to a .npy / .npz "
                     "file or an image folder")


def make_sde(name: str, *, beta_min=0.1, beta_max=20.0, sigma_min=0.01, sigma_max=None, num_scales=1000,
             data=None):
    """The SDE of ``--sde``.

    VE's default sigma_max is :func:`scoresde.data_stats.recommended_sigma_max` of the data: the
    largest pairwise distance (:func:`scoresde.suggest_sigma_max`, Song & Ermon 2020, Technique 1),
    raised where needed so that the prior is within 0.01 nats per dimension of the data's terminal
    marginal (data far from the origin); 50 without data.
    """
    from ..data_stats import recommended_sigma_max
    from ..sde import VESDE, VPSDE, SubVPSDE
    if name == "vp":
        return VPSDE(beta_min, beta_max, num_scales)
    if name == "vp-cosine":
        return VPSDE(N=num_scales, schedule="cosine")
    if name == "subvp":
        return SubVPSDE(beta_min, beta_max, num_scales)
    if name == "ve":
        if sigma_max is None:
            sigma_max = recommended_sigma_max(data) if data is not None and len(data) > 1 else 50.0
            sigma_max = max(sigma_max, 2 * sigma_min)
        return VESDE(sigma_min, sigma_max, num_scales)
    raise ValueError(f"unknown sde {name!r}; valid values are ['vp', 'subvp', 've', 'vp-cosine']")


def make_model(args_d: dict, shape, sde):
    """(ScoreModel, objective) from the resolved train settings ``args_d``."""
    from ..losses import dsm_loss
    from ..models import UNet
    from ..score import ScoreModel
    from .nets import Dequantized, FlatMLP
    objective = args_d["objective"]
    discrete = objective in ("ddpm", "hybrid")
    learn_variance = objective == "hybrid"
    kind = args_d["model"]
    if kind == "auto":
        kind = "unet" if len(shape) == 3 and shape[1] == shape[2] and shape[1] >= 8 else "mlp"
    if kind == "mlp":
        net = FlatMLP(shape, hidden=args_d["hidden"], num_layers=args_d["layers"], learn_variance=learn_variance)
    else:
        if len(shape) != 3 or shape[1] != shape[2]:
            raise ValueError(f"--model unet needs square images (C, H, W); the data have shape {tuple(shape)}")
        net = UNet(shape[0], shape[1], ch=args_d["channels"], ch_mult=(1, 2, 2) if shape[1] >= 16 else (1, 2),
                   num_res_blocks=1 if shape[1] <= 16 else 2, attn_resolutions=(), learn_variance=learn_variance)
    model = ScoreModel(net, sde, prediction=args_d["prediction"], discrete=discrete, learn_variance=learn_variance)
    if objective in ("dsm", "dsm-likelihood"):
        weighting = "likelihood" if objective == "dsm-likelihood" else "sigma2"
        if args_d.get("dequantize") and args_d.get("num_levels"):
            obj = Dequantized(dsm_loss, args_d["num_levels"], weighting=weighting)
        else:
            obj = {"loss": "dsm", "weighting": weighting}
    else:
        obj = objective
    return model, obj


# ------------------------------------------------------------------------------------- checkpoints
def load_run(path: str, *, device="cpu", quiet=False):
    """(EMA score model in eval mode, sde, stored config, training Dataset or None) of a checkpoint."""
    from ..checkpoint import load_checkpoint
    from ..train import load_score_model
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
    model, sde, cfg = load_score_model(path, net=net, map_location=device, quiet=True)
    from .. import data as D
    try:
        ds = D.load_dataset(cfg["data"])
    except (ValueError, FileNotFoundError, KeyError):
        ds = None
    return model, sde, cfg, ds


def _weights_note(cfg) -> str:
    w = "EMA" if cfg.get("weights") == "ema" else "online (no EMA in the checkpoint)"
    return f"scoresde: using the {w} weights of the checkpoint (step {cfg.get('step')})"


def _check_shape(ds, cfg, what="data"):
    want = list(cfg["data"].get("shape", []))
    if want and list(ds.shape) != want:
        raise ValueError(f"{what} have shape {list(ds.shape)} per sample but the model was trained on {want}")


# ------------------------------------------------------------------------------------------- train
def cmd_train(args) -> int:
    r = run_train(args)
    if not r["trained"]:
        asked = (f"--steps {r['steps_requested']} asks for no more" if r["steps_given"] else
                 f"that is its --steps {r['steps_requested']}")
        msg = (f"nothing trained: the run in {args.out} is already at step {r['step']} and {asked} (pass --steps N "
               f"with N > {r['step']} to train further)")
        if r["loss"] is not None:
            msg += f"; loss {r['loss']:.4f}"
    elif r["loss"] is not None:
        msg = f"trained to step {r['step']} in {r['wall_s']:.1f} s; loss {r['loss']:.4f}"
    else:
        msg = f"step {r['step']}"
    if r["eval_loss"] is not None:
        msg += f", test loss (EMA) {r['eval_loss']:.4f}"
    print(f"{msg}; checkpoint {r['checkpoint']}")
    return 0


def _read_train_args(path: Path) -> dict:
    """The settings of a run (``train_args.json``); a damaged file is a one-line error naming it."""
    try:
        saved = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"{path} is corrupt (not readable JSON: {e}); it holds the run's settings: restore it, or "
                         "train in another --out folder") from None
    if not isinstance(saved, dict):
        raise ValueError(f"{path} is corrupt: expected a JSON object of settings, got a {type(saved).__name__}")
    missing = [k for k in _REQUIRED if k not in saved]
    if missing:
        raise ValueError(f"{path} is corrupt or from another scoresde: it lacks the settings {missing}")
    return saved


def run_train(args) -> dict:
    """Train (or resume) as ``scoresde train`` does; returns a summary dict.

    On resume the run's saved settings (``train_args.json``) are used; every option typed on the
    command line (``given_options``: also one equal to its default) must match them, except
    --steps, --checkpoint-every, --device and --quiet (--steps and --checkpoint-every keep their
    saved values unless typed). A namespace not built by the parser counts as all typed.
    """
    from ..checkpoint import load_checkpoint
    from ..train import CHECKPOINT_NAME, TrainConfig, train
    from . import GIVEN, given_options
    _threads(args)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder")
    ckpt = out / CHECKPOINT_NAME
    given = given_options(args)
    settings = {k: v for k, v in vars(args).items() if k not in ("func", GIVEN)}
    typed = (lambda k: True) if given is None else (lambda k: k in given)
    saved_path = out / TRAIN_ARGS
    resumed_from, metrics = 0, {}
    if ckpt.exists():
        state = load_checkpoint(ckpt)  # corrupt file -> one-line ValueError before anything else
        resumed_from = int(state.get("step", 0))
        metrics = state.get("metrics") or {}
        if not saved_path.exists():
            raise ValueError(f"{ckpt} was not written by 'scoresde train' (no {TRAIN_ARGS}); resume it from Python "
                             "with scoresde.train.train")
        saved = _read_train_args(saved_path)
        if typed("data") and settings["data"] != saved.get("data"):
            raise ValueError(f"{out} holds a run on --data {saved.get('data')}; train on {settings['data']} in "
                             "another --out folder")
        changed = [k for k in saved if k not in _RESUME_FREE and k in settings and typed(k) and settings[k] != saved[k]]
        if changed:  # as the Python API: a resumed run keeps its settings, so a different request is an error
            diffs = ", ".join(f"--{k.replace('_', '-')} {settings[k]} (saved {saved[k]})" for k in changed)
            raise ValueError(f"{out} holds a run whose settings cannot change on resume: {diffs}; omit them to "
                             "resume, or train in another --out folder")
        _log(args, f"scoresde train: resuming {ckpt} from step {resumed_from}")
        for k in _RESUME_FREE:
            if k in _KEEP_UNLESS_GIVEN and not typed(k) and k in saved:
                continue
            saved[k] = settings[k]
        for k, v in settings.items():  # options added to the parser after the run was made
            saved.setdefault(k, v)
        settings = saved
        del state
    if not resumed_from:
        settings["warmup"] = min(settings["warmup"], settings["steps"])  # fixed for the run's resumes
    ds = load_data(settings["data"], split="train", seed=0)
    evald = load_data(settings["data"], split="test", seed=0) if settings["data"] == "digits" else None
    settings.setdefault("dequantize", True)
    settings["num_levels"] = ds.num_levels
    sde = make_sde(settings["sde"], beta_min=settings["beta_min"], beta_max=settings["beta_max"],
                   sigma_min=settings["sigma_min"], sigma_max=settings["sigma_max"],
                   num_scales=settings["num_scales"], data=ds)
    if settings["sde"] == "ve":
        if settings["sigma_max"] is None:
            _log(args, _sigma_max_note(sde.sigma_max, ds))
        settings["sigma_max"] = sde.sigma_max if hasattr(sde, "sigma_max") else settings["sigma_max"]
    if settings["objective"] in ("ddpm", "hybrid") and settings["sde"] not in ("vp", "vp-cosine"):
        raise ValueError(f"--objective {settings['objective']} trains on the discrete DDPM chain and needs "
                         f"--sde vp or vp-cosine; got {settings['sde']}")
    torch.manual_seed(settings["seed"])  # the network's initial weights (train() seeds data order and noise)
    model, objective = make_model(settings, ds.shape, sde)
    if settings["batch_size"] > len(ds):
        raise ValueError(f"--batch-size {settings['batch_size']} is larger than the data ({len(ds)} samples)")
    summary = {"resumed_from": resumed_from, "steps_requested": settings["steps"], "steps_given": typed("steps"),
               "n_params": sum(p.numel() for p in model.parameters()), "net": type(model.net).__name__,
               "sde": type(sde).__name__, "settings": settings, "data": ds.name, "n_data": len(ds)}
    if resumed_from and resumed_from >= settings["steps"]:  # nothing to do: leave every file as it is
        return {**summary, "step": resumed_from, "loss": metrics.get("loss"), "eval_loss": metrics.get("eval_loss"),
                "checkpoint": os.path.abspath(ckpt), "wall_s": 0.0, "trained": False}
    cfg = TrainConfig.small(settings["steps"], batch_size=settings["batch_size"], lr=settings["lr"],
                            warmup=settings["warmup"], ema_decay=settings["ema"],
                            seed=settings["seed"], out_dir=str(out), quiet=args.quiet,
                            checkpoint_every=settings["checkpoint_every"], device=settings["device"],
                            eval_every=settings.get("eval_every", max(settings["steps"] // 10, 1)))
    out.mkdir(parents=True, exist_ok=True)  # only now: bad data or settings leave no folder behind
    with atomic_file(saved_path) as f:
        json.dump(settings, f, indent=2, sort_keys=True)
    _log(args, f"scoresde train: {ds.name} {tuple(ds.shape)} x {len(ds)}, {type(sde).__name__}, "
               f"{type(model.net).__name__} ({sum(p.numel() for p in model.parameters()):,} parameters), "
               f"objective {settings['objective']}, {settings['steps']} steps of batch {settings['batch_size']}")
    t0 = time.perf_counter()
    res = train(model, sde, objective, ds, cfg, eval_dataset=evald)
    wall = time.perf_counter() - t0
    loss = res.loss
    if loss is None and res.checkpoint:  # nothing left to train: report the stored loss
        loss = (load_checkpoint(res.checkpoint).get("metrics") or {}).get("loss")
    return {**summary, "step": res.step, "loss": loss, "eval_loss": res.eval_loss, "checkpoint": res.checkpoint,
            "wall_s": wall, "trained": res.step > resumed_from}


def _sigma_max_note(sigma_max: float, ds) -> str:
    """How the default VE sigma_max was chosen (logged by ``scoresde train``)."""
    from ..data_stats import MAX_POINTS, suggest_sigma_max
    d = suggest_sigma_max(ds)
    where = (f"a subset of {MAX_POINTS} of the {len(ds)} samples (the farthest from the mean and random others)"
             if len(ds) > MAX_POINTS else f"the {len(ds)} samples")
    msg = (f"scoresde train: VE sigma_max {sigma_max:.4g}: the largest pairwise distance between {where} is {d:.4g} "
           "(Song & Ermon 2020, Technique 1)")
    if sigma_max > d * (1 + 1e-9):
        msg += ("; raised so that the prior N(0, sigma_max^2 I) is within 0.01 nats per dimension of the data's "
                "terminal marginal (the data lie far from the origin)")
    return msg


# ------------------------------------------------------------------------------------------ sample
def sampler_options(method: str, args) -> dict:
    """The options of ``scoresde.sample`` that ``method`` takes, from the command line.

    Reads the solver registry: a flag is passed when the method declares that option
    (``--spacing``, ``--order`` and ``--rho`` only when typed, so each method keeps its own default).
    """
    from ..solvers.registry import SOLVERS
    if method not in SOLVERS:
        raise ValueError(f"unknown method {method!r}; valid values are {list(SOLVERS)}")
    takes = SOLVERS[method].options
    opts = {}
    if method == "pc":
        opts = {"predictor": args.predictor, "corrector": args.corrector, "snr": args.snr,
                "corrector_steps": args.corrector_steps}
    elif method == "sde":
        opts = {"sde_method": args.sde_method}
    elif method == "ode":
        opts = {"ode_method": args.ode_method, "rtol": args.rtol, "atol": args.atol}
    elif method == "ddpm":
        opts = {"variance": args.variance} if args.variance else {}
    elif method == "ddim":
        opts = {"eta": args.eta}
    for flag in ("spacing", "order", "rho"):
        value = getattr(args, flag, None)
        if value is not None and flag in takes:
            opts[flag] = value
    return opts


def draw(model, sde, shape, *, method, steps, n, batch_size, seed, progress, eps=None, denoise=True, device="cpu",
         **options):
    """n samples in batches (batch b seeded with seed + b); returns (samples (n, *S) CPU, NFE per batch list)."""
    from ..sampling import sample
    from ..solvers.ode import ADAPTIVE_METHODS
    from ..solvers.registry import SOLVERS
    outs, nfes = [], []
    for b, start in enumerate(range(0, n, batch_size)):
        m = min(batch_size, n - start)
        g = torch.Generator(device).manual_seed(seed + b)
        kw = dict(options)
        if method not in ("ddpm", "ddim"):
            kw["eps"] = eps
        fixed_ode = method == "ode" and options.get("ode_method", "dopri5") not in ADAPTIVE_METHODS
        if SOLVERS[method].steps_kind != "adaptive" or fixed_ode:
            kw["steps"] = steps  # adaptive solvers choose their own steps
        x, info = sample(model, sde, (m, *shape), method=method, generator=g, progress=progress, return_info=True,
                         denoise=denoise, device=device, **kw)
        outs.append(x.cpu())
        nfes.append(int(info.nfe))
    return torch.cat(outs), nfes


def save_samples_figure(x, ds_shape, path, data_range=(-1.0, 1.0), reference=None, title=None) -> bool:
    """Image grid (images) or scatter plot (2-D points) of samples; False if neither applies."""
    from ..plotting import save_image_grid, save_scatter
    if len(ds_shape) == 3 and ds_shape[0] in (1, 3):
        save_image_grid(x[:256], path, nrow=min(16, max(1, int(math.ceil(math.sqrt(min(len(x), 256)))))),
                        data_range=data_range)
        return True
    if len(ds_shape) == 1 and ds_shape[0] == 2:
        save_scatter(x, path, reference=reference, title=title)
        return True
    return False


def cmd_sample(args) -> int:
    from .. import data as D
    from .outputs import check_output_file
    _threads(args)
    opts = sampler_options(args.method, args)
    out = Path(args.out)
    npz = out.with_name(out.name + ".npz")
    png = out.with_name(out.name + ".png")
    for f in (npz, png):  # before any work: a bad --out used to fail after the sampling
        check_output_file(f, "--out", args.out)
    model, sde, cfg, ds = load_run(args.checkpoint, device=args.device, quiet=args.quiet)
    _log(args, _weights_note(cfg))
    shape = tuple(cfg["data"]["shape"])
    t0 = time.perf_counter()
    x, nfes = draw(model, sde, shape, method=args.method, steps=args.steps, n=args.num_samples,
                   batch_size=args.batch_size, seed=args.seed, progress=not args.quiet, eps=args.eps,
                   denoise=not args.no_denoise, device=args.device, **opts)
    wall = time.perf_counter() - t0
    data_range = tuple(cfg["data"].get("data_range", (-1.0, 1.0)))
    bounded = ds.bounded if ds is not None else True
    if bounded:
        x = x.clamp(*data_range)
    arrays = {"samples": x.numpy().astype(np.float32)}
    picture = x
    if cfg["data"].get("num_levels"):
        L = int(cfg["data"]["num_levels"])
        levels = D.float_to_levels(x, L)
        arrays["levels"] = levels.numpy().astype(np.int16)
        picture = D.levels_to_float(levels, L)  # what the data look like: rounded to the levels
    ref = ds.data[:2000] if ds is not None and ds.shape == (2,) else None
    title = f"{args.method}, {args.steps if args.method != 'ode' else 'adaptive'} steps, NFE {nfes[0]}"
    made_png = save_samples_figure(picture, shape, png, data_range, reference=ref, title=title)
    with atomic_file(npz, "wb") as f:
        np.savez(f, **arrays, method=args.method, nfe=np.array(nfes))
    print(f"{len(x)} samples by {args.method} ({'NFE ' + str(nfes[0]) + ' per batch'}) in {wall:.2f} s -> {npz}"
          + (f", {png}" if made_png else ""))
    return 0


# -------------------------------------------------------------------------------------- likelihood
def eval_split(spec, split, cfg, ds, seed):
    """The data set to evaluate: ``--data`` if given, else the checkpoint data's ``split``."""
    from .. import data as D
    if spec is not None:
        return load_data(spec, split=split, seed=seed), f"{spec} ({split})"
    dcfg = cfg["data"]
    if dcfg.get("loader") == "digits":
        return D.digits(split), f"digits {split} split"
    if dcfg.get("loader") == "toy":
        s = int(dcfg.get("seed", 0)) + (1_000_003 if split == "test" else 0)
        return D.toy(dcfg["toy"], n=10000, seed=s), f"{dcfg['toy']} ({'fresh points' if split == 'test' else 'train'})"
    if ds is None:
        raise ValueError("the checkpoint's data cannot be rebuilt (in-memory array); pass --data")
    return ds, f"{ds.name} (the training data: it has no {split} split)"


def likelihood(model, sde, ds, *, n=0, divergence="hutchinson_rademacher", ode_method="dopri5", rtol=1e-5,
               atol=1e-5, eps=1e-5, batch_size=500, seed=0, vlb=False, progress=True) -> dict:
    """bits/dim of the data set ``ds`` by the PF-ODE (and optionally the DDPM bound); JSON-ready dict.

    Quantized data (integer levels): :func:`scoresde.bits_per_dim` with uniform dequantization,
    bits/dim of the discrete data (an upper bound in expectation). Continuous data:
    -log2 p(x) / D of :func:`scoresde.log_likelihood` (bits/dim of the density; can be negative).
    The standard error is std / sqrt(n) over the points.
    """
    import warnings

    from .. import bits_per_dim, log_likelihood
    from .._levels import LevelsWarning, check_levels
    from ..sde import VPSDE, SubVPSDE
    quantized = ds.levels is not None
    xs = ds.levels if quantized else ds.data
    if n and n > 0:
        xs = xs[:n]
    npts = len(xs)
    # e.g. 17-level digits stored as uint8 and read as 256 levels: 9.78 bits/dim instead of 4.27
    levels_note = check_levels(xs, ds.num_levels, warn=False) if quantized else None
    opts = dict(eps=eps, method=ode_method, rtol=rtol, atol=atol, divergence=divergence)
    chunks = list(range(0, npts, batch_size))
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=npts, desc="likelihood (PF-ODE)", unit="pt")
    vals, nfes = [], []
    t0 = time.perf_counter()
    try:
        for j, start in enumerate(chunks):
            x = xs[start:start + batch_size]
            g = torch.Generator().manual_seed(seed + j)
            if quantized:
                with warnings.catch_warnings():  # checked once above, on all the points
                    warnings.simplefilter("ignore", LevelsWarning)
                    r = bits_per_dim(model, sde, x, data_range=ds.data_range, num_levels=ds.num_levels, generator=g,
                                     **opts)
                vals.append(r.bpd.double().cpu())
            else:
                r = log_likelihood(model, sde, x, generator=g, **opts)
                vals.append((-r.logp.double().cpu() / (x[0].numel() * math.log(2.0))))
            nfes.append(int(r.nfe))
            if bar is not None:
                bar.update(len(x))
    finally:
        if bar is not None:
            bar.close()
    wall = time.perf_counter() - t0
    b = torch.cat(vals)
    res = {"bpd": float(b.mean()), "bpd_se": float(b.std() / math.sqrt(len(b))) if len(b) > 1 else None,
           "bpd_median": float(b.median()), "bpd_max": float(b.max()),
           "n_points": npts, "nfe_per_solve": nfes, "nfe_mean": float(np.mean(nfes)), "wall_s": round(wall, 2),
           "kind": "bits/dim of the dequantized discrete data (PF-ODE)" if quantized else
                   "bits/dim of the continuous density (PF-ODE), -log2 p(x) / D",
           "num_levels": ds.num_levels, "levels_warning": levels_note, "data_range": list(ds.data_range),
           "divergence": divergence,
           "ode_method": ode_method, "rtol": rtol, "atol": atol, "eps": eps}
    if vlb:
        if not isinstance(sde, (VPSDE, SubVPSDE)):
            res["vlb"] = None
            res["vlb_note"] = f"the DDPM variational bound needs a VP or sub-VP SDE, not {type(sde).__name__}"
        elif not quantized:
            res["vlb"] = None
            res["vlb_note"] = "the DDPM variational bound needs integer-level data"
        else:
            res.update(vlb_bits(model, sde, xs, ds.num_levels, batch_size=batch_size, seed=seed))
    return res


def vlb_bits(model, sde, levels, num_levels, *, batch_size=500, seed=0, timesteps=None) -> dict:
    """The DDPM variational bound (bits/dim) of integer-level points: mean, standard error, seconds."""
    from .. import ddpm_vlb
    t0 = time.perf_counter()
    vals = []
    for j, start in enumerate(range(0, len(levels), batch_size)):
        r = ddpm_vlb(model, sde, levels[start:start + batch_size], num_levels=num_levels, timesteps=timesteps,
                     generator=torch.Generator().manual_seed(seed + 10_000 + j))
        vals.append(r.bpd.double().cpu())
    b = torch.cat(vals)
    return {"vlb": float(b.mean()), "vlb_se": float(b.std() / math.sqrt(len(b))) if len(b) > 1 else None,
            "vlb_steps": int(len(r.timesteps)), "vlb_variance": r.variance,
            "vlb_wall_s": round(time.perf_counter() - t0, 2)}


def cmd_likelihood(args) -> int:
    from ..data_stats import check_prior
    from .outputs import check_output_file
    _threads(args)
    if args.num_points < 0:
        raise ValueError(f"--num-points must be >= 0; got {args.num_points}")
    out = check_output_file(args.out, "--out", args.out)  # before any work (it used to fail after the solves)
    model, sde, cfg, ds = load_run(args.checkpoint, device=args.device, quiet=args.quiet)
    evd, desc = eval_split(args.data, args.split, cfg, ds, args.seed)
    _check_shape(evd, cfg, f"--data {args.data}" if args.data else "the data")
    _log(args, _weights_note(cfg))
    prior_note = check_prior(sde, evd, distance=False)  # VE: prior far from p_T (one warning line on stderr)
    res = likelihood(model, sde, evd, n=args.num_points, divergence=args.divergence, ode_method=args.ode_method,
                     rtol=args.rtol, atol=args.atol, eps=args.eps, batch_size=args.batch_size, seed=args.seed,
                     vlb=args.vlb, progress=not args.quiet)
    res.update({"checkpoint": resolve_checkpoint(args.checkpoint), "data": desc, "sde": sde.config(),
                "prior_warning": prior_note})
    with atomic_file(out) as f:
        json.dump(res, f, indent=2)
        f.write("\n")
    se = f" ± {res['bpd_se']:.3f}" if res["bpd_se"] is not None else ""
    print(f"bits/dim (PF-ODE {args.ode_method}, rtol {args.rtol:g}, {args.divergence}) on {desc}, "
          f"{res['n_points']} points: {res['bpd']:.3f}{se} (standard error over the data); "
          f"NFE {res['nfe_mean']:.0f} per solve; {res['wall_s']:.1f} s")
    if res["levels_warning"]:
        print(f"warning: {res['levels_warning']}")
    if args.vlb:
        if res.get("vlb") is not None:
            se = f" ± {res['vlb_se']:.3f}" if res["vlb_se"] is not None else ""
            print(f"bits/dim (DDPM variational bound, {res['vlb_steps']} steps, {res['vlb_variance']}): "
                  f"{res['vlb']:.3f}{se}")
        else:
            print(f"DDPM variational bound: not computed ({res['vlb_note']})")
    print(f"-> {out}")
    return 0


# ----------------------------------------------------------------------------------------- compare
def cmd_compare(args) -> int:
    from .compare import check_method_names, parse_methods, run_compare, write_compare
    from .outputs import check_output_folder
    _threads(args)
    check_method_names(args.methods)
    if args.bpd_points < 0:
        raise ValueError(f"--bpd-points must be >= 0; got {args.bpd_points}")
    check_output_folder(args.out)  # before any work; created only after it
    model, sde, cfg, ds = load_run(args.checkpoint, device=args.device, quiet=args.quiet)
    if ds is None:
        raise ValueError("the checkpoint's data cannot be rebuilt (in-memory array); compare needs them")
    opts = {"predictor": args.predictor, "corrector": args.corrector, "snr": args.snr,
            "corrector_steps": args.corrector_steps, "sde_method": args.sde_method, "ode_method": args.ode_method,
            "eta": args.eta, "variance": args.variance}
    runs, notes = parse_methods(args.methods, args.steps, args.ode_rtols, opts, sde)
    _log(args, _weights_note(cfg))
    out = Path(args.out)
    result = run_compare(model, sde, ds, runs, n=args.num_samples, seed=args.seed, bpd_points=args.bpd_points,
                         progress=not args.quiet, device=args.device, log=lambda m: _log(args, m))
    result["notes"] = notes
    result["checkpoint"] = resolve_checkpoint(args.checkpoint)
    out.mkdir(parents=True, exist_ok=True)  # after the work: a failed run leaves no folder
    paths = write_compare(result, out)
    from .compare import markdown_table
    print(markdown_table(result))
    print(f"-> {paths['md']}, {paths['json']}, {paths['figure']}")
    return 0


# -------------------------------------------------------------------------------------------- demo
def cmd_demo(args) -> int:
    from .demo import run_demo
    _threads(args)
    return run_demo(args)
