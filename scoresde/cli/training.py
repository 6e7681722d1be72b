"""``scoresde train``: a run's settings (``train_args.json``), its SDE and model, and resuming it."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

from ..plotting import atomic_file
from .common import _log, _threads, data_options, load_data

TRAIN_ARGS = "train_args.json"
#: train options that may change when a run is resumed
_RESUME_FREE = ("steps", "quiet", "checkpoint_every", "out", "device", "command")
#: free options that keep the run's saved value unless typed (an interrupted run resumes to its own --steps)
_KEEP_UNLESS_GIVEN = ("steps", "checkpoint_every")
#: options added after runs were saved, with the value those runs had (--layout: see _old_run_layout)
_ADDED_DEFAULTS = {"class_conditional": False, "label_dropout": 0.0, "key": None, "levels": None}
#: option dest -> its flag, where they differ (the resume error names the flag)
_FLAGS = {"levels": "num-levels"}
#: settings a train_args.json must hold (run_train reads them)
_REQUIRED = ("data", "sde", "beta_min", "beta_max", "sigma_min", "sigma_max", "num_scales", "model", "hidden",
             "layers", "channels", "objective", "prediction", "steps", "batch_size", "lr", "warmup", "ema", "seed",
             "checkpoint_every")


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


def make_model(args_d: dict, shape, sde, saved_objective: dict | None = None):
    """(ScoreModel, objective) from the resolved train settings ``args_d``: the library's recipe.

    The network is :func:`scoresde.models.small_unet` (``--model unet``, or ``auto`` on square
    images of side >= 8) or :class:`~scoresde.cli.nets.FlatMLP`; the objective of ``dsm`` /
    ``dsm-likelihood`` on integer-level data is ``{"loss": "dsm", "weighting": ..., "dequantize":
    num_levels}`` (:func:`scoresde.losses.dsm_loss` on uniformly dequantized data), exactly what
    the Python example of docs/training.md passes to :func:`scoresde.train`. ``saved_objective``
    (the objective config of a checkpoint being resumed) keeps the objective of runs saved before
    the dequantization moved into the library (:class:`~scoresde.cli.nets.Dequantized`).
    """
    from ..models import small_unet
    from ..score import ScoreModel
    from .nets import FlatMLP, legacy_objective
    objective = args_d["objective"]
    discrete = objective in ("ddpm", "hybrid")
    learn_variance = objective == "hybrid"
    kind = args_d["model"]
    if kind == "auto":
        kind = "unet" if len(shape) == 3 and shape[1] == shape[2] and shape[1] >= 8 else "mlp"
    num_classes = args_d.get("num_classes") if args_d.get("class_conditional") else None
    if kind == "mlp":
        net = FlatMLP(shape, hidden=args_d["hidden"], num_layers=args_d["layers"], learn_variance=learn_variance,
                      num_classes=num_classes)
    else:
        if len(shape) != 3 or shape[1] != shape[2]:
            raise ValueError(f"--model unet needs square images (C, H, W); the data have shape {tuple(shape)}")
        net = small_unet(shape[0], shape[1], ch=args_d["channels"], learn_variance=learn_variance,
                         num_classes=num_classes)
    model = ScoreModel(net, sde, prediction=args_d["prediction"], discrete=discrete, learn_variance=learn_variance)
    if objective in ("dsm", "dsm-likelihood"):
        # the weighting is always recorded (as runs saved before did: they resume with the same objective config)
        obj = {"loss": "dsm", "weighting": "likelihood" if objective == "dsm-likelihood" else "sigma2"}
        if args_d.get("dequantize") and args_d.get("num_levels"):
            obj["dequantize"] = int(args_d["num_levels"])
            obj = legacy_objective(saved_objective, obj) or obj
    else:
        obj = objective
    return model, obj


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
    from ..runs import CHECKPOINT_NAME
    from ..train import TrainConfig, train
    from .parser import GIVEN, given_options
    _threads(args)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder")
    ckpt = out / CHECKPOINT_NAME
    given = given_options(args)
    settings = {k: v for k, v in vars(args).items() if k not in ("func", GIVEN)}
    typed = (lambda k: True) if given is None else (lambda k: k in given)
    saved_path = out / TRAIN_ARGS
    resumed_from, metrics, saved_objective = 0, {}, None
    if ckpt.exists():
        state = load_checkpoint(ckpt)  # corrupt file -> one-line ValueError before anything else
        resumed_from = int(state.get("step", 0))
        metrics = state.get("metrics") or {}
        saved_objective = (state.get("config") or {}).get("objective")
        if not saved_path.exists():
            raise ValueError(f"{ckpt} was not written by 'scoresde train' (no {TRAIN_ARGS}); resume it from Python "
                             "with scoresde.train.train")
        saved = _read_train_args(saved_path)
        for k, v in _ADDED_DEFAULTS.items():  # runs saved before these options existed had their defaults
            saved.setdefault(k, v)
        if "layout" not in saved:
            saved["layout"] = _old_run_layout((state.get("config") or {}).get("data"))
        if typed("data") and settings["data"] != saved.get("data"):
            raise ValueError(f"{out} holds a run on --data {saved.get('data')}; train on {settings['data']} in "
                             "another --out folder")
        changed = [k for k in saved if k not in _RESUME_FREE and k in settings and typed(k) and settings[k] != saved[k]]
        if changed:  # as the Python API: a resumed run keeps its settings, so a different request is an error
            diffs = ", ".join(f"--{_FLAGS.get(k, k.replace('_', '-'))} {settings[k]} (saved {saved[k]})"
                              for k in changed)
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
    ds = load_data(settings["data"], split="train", seed=0, **data_options(settings))
    settings["layout"] = settings.get("layout") or _layout_found(ds)  # an inferred layout is the run's from now on
    evald = load_data(settings["data"], split="test", seed=0) if settings["data"] == "digits" else None
    _check_labels(settings, ds)
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
    model, objective = make_model(settings, ds.shape, sde, saved_objective)
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
                            eval_every=settings.get("eval_every", max(settings["steps"] // 10, 1)),
                            label_dropout=settings.get("label_dropout", 0.0))
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


def _layout_found(ds) -> str | None:
    """The layout (--layout) in which the images of an array file were read; None for other data."""
    cfg = ds.config() if callable(getattr(ds, "config", None)) else None
    if isinstance(cfg, dict) and cfg.get("loader") == "array" and len(ds.shape) == 3:
        return "nhwc" if cfg.get("channels_last") else "nchw"
    return None


def _old_run_layout(data_cfg) -> str | None:
    """--layout of a run saved before the option existed: the layout its array images were read in
    (it read every 4-D array as NCHW unless told, so the inferred layout may differ); None otherwise."""
    if isinstance(data_cfg, dict) and data_cfg.get("loader") == "array" and len(data_cfg.get("shape") or ()) == 3:
        return "nhwc" if data_cfg.get("channels_last") else "nchw"
    return None


def _check_labels(settings: dict, ds) -> None:
    """--class-conditional needs labelled data (it records their num_classes); --label-dropout needs it."""
    if settings.get("label_dropout") and not settings.get("class_conditional"):
        raise ValueError(f"--label-dropout {settings['label_dropout']} applies to a class-conditional model; add "
                         "--class-conditional")
    if settings.get("class_conditional"):
        if ds.num_classes is None:
            raise ValueError(f"--class-conditional needs labelled data; {ds.name} has no labels (a .npz needs a "
                             "'labels' array, an image folder one sub-folder per class)")
        settings["num_classes"] = ds.num_classes


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
