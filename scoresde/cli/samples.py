"""``scoresde sample``: the sampler options of the command line, drawing in batches, the figure."""
from __future__ import annotations

import math

import torch


#: command-line flag (dest) -> the ``scoresde.sample`` option it sets (the method must declare it)
_FLAGS = {"predictor": "predictor", "corrector": "corrector", "snr": "snr", "corrector_steps": "corrector_steps",
          "sde_method": "sde_method", "ode_method": "ode_method", "rtol": "rtol", "atol": "atol", "eta": "eta",
          "variance": "variance", "spacing": "spacing", "order": "order", "rho": "rho", "variant": "variant",
          "s_churn": "s_churn"}


def sampler_options(method: str, args) -> dict:
    """The options of ``scoresde.sample`` that ``method`` takes, from the command line.

    Reads the solver registry: every sampler flag whose option the method declares is passed
    (pc's, sde's, ode's and ddim's with their command-line defaults, as before; the others only
    when typed, so each method keeps its own default). A typed flag the method does not take is a
    ValueError naming the method's options, not silently ignored.
    """
    from ..solvers.registry import SOLVERS
    from .parser import given_options
    if method not in SOLVERS:
        raise ValueError(f"unknown method {method!r}; valid values are {list(SOLVERS)}")
    takes = SOLVERS[method].options
    typed = given_options(args)
    typed = set(_FLAGS) if typed is None else set(typed) & set(_FLAGS)
    stray = sorted(f"--{f.replace('_', '-')}" for f in typed if _FLAGS[f] not in takes and getattr(args, f, None)
                   is not None)
    if stray:
        raise ValueError(f"{', '.join(stray)} {'does' if len(stray) == 1 else 'do'} not apply to method {method!r}; "
                         f"its options are {sorted(takes)}")
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
    for flag in typed:
        value = getattr(args, flag, None)
        if value is not None and _FLAGS[flag] in takes:
            opts[_FLAGS[flag]] = value
    return opts


def draw(model, sde, shape, *, method, steps, n, batch_size, seed, progress, eps=None, denoise=True, device="cpu",
         score_for=None, known=None, **options):
    """n samples in batches (batch b seeded with seed + b); returns (samples (n, *S) CPU, NFE per batch list).

    Batch b holds the samples [b B, (b + 1) B) and draws everything (its prior x_T and every
    step's noise) from ``seed + b``. Under torchrun each process draws whole batches of its own
    (:func:`scoresde.distributed.shard_evaluate` with ``aligned=True``; no collective inside a
    solve, whose step count may differ between processes) and every process gets all of them
    back, in order: K processes give exactly one process's samples.

    Arguments:
        model, sde, shape: the score model, its SDE and the per-sample shape S.
        method, steps, eps, denoise, device, options: as :func:`scoresde.sample`.
        n, batch_size: how many samples, and per batch. seed: base seed. progress: the
            sampler's bar (per batch).
        score_for: optional ``score_for(start, m)`` -> the score_fn of samples start..start+m-1 (a
            guided score whose labels are those samples'); default ``model`` for every batch.
        known: optional (y (n, *S), mask (n, *S) bool, True = known): inpaint those entries with
            :func:`scoresde.inpaint` instead of sampling freely (``options`` may then hold its
            ``jump_length`` / ``jump_n_sample``).
    Returns:
        (samples (n, *S) on the CPU, the NFE of each batch, in batch order).
    """
    from ..distributed import shard_evaluate

    def one_batch(_, idx):
        start, m = int(idx[0]), len(idx)
        x, nfe = _draw_batch(model, sde, shape, method, steps, start, m, seed + start // batch_size, progress, eps,
                             denoise, device, score_for, known, options)
        return {"x": x, "nfe": torch.full((m,), nfe, dtype=torch.long)}

    out = shard_evaluate(one_batch, torch.arange(n), batch_size=batch_size, with_indices=True, aligned=True)
    return out["x"], [int(v) for v in out["nfe"][::batch_size]]


def _draw_batch(model, sde, shape, method, steps, start, m, seed, progress, eps, denoise, device, score_for, known,
                options):
    """(samples (m, *S) on the CPU, NFE) of the batch that starts at sample ``start``."""
    from ..constrained import inpaint
    from ..sampling import sample
    from ..solvers.ode import ADAPTIVE_METHODS
    from ..solvers.registry import SOLVERS
    g = torch.Generator(device).manual_seed(seed)
    kw = dict(options)
    if method not in ("ddpm", "ddim"):
        kw["eps"] = eps
    fixed_ode = method == "ode" and options.get("ode_method", "dopri5") not in ADAPTIVE_METHODS
    if SOLVERS[method].steps_kind != "adaptive" or fixed_ode:
        kw["steps"] = steps  # adaptive solvers choose their own steps
    score = score_for(start, m) if score_for is not None else model
    common = dict(method=method, generator=g, progress=progress, return_info=True, denoise=denoise, device=device)
    if known is None:
        x, info = sample(score, sde, (m, *shape), **common, **kw)
    else:
        y, mask = known
        x, info = inpaint(score, sde, y[start:start + m], mask[start:start + m], **common, **kw)
    return x.cpu(), int(info.nfe)


def save_samples_figure(x, ds_shape, path, data_range=(-1.0, 1.0), reference=None, title=None, nrow=None,
                        pad_value=None) -> bool:
    """Image grid (images) or scatter plot (2-D points) of samples; False if neither applies.

    Images: the first 256, ``nrow`` per row (default: a square grid of at most 16 columns),
    ``pad_value`` as :func:`scoresde.plotting.save_image_grid`.
    """
    from ..plotting import save_image_grid, save_scatter
    if len(ds_shape) == 3 and ds_shape[0] in (1, 3):
        if nrow is None:
            nrow = min(16, max(1, int(math.ceil(math.sqrt(min(len(x), 256))))))
        save_image_grid(x[:256], path, nrow=nrow, data_range=data_range, pad_value=pad_value)
        return True
    if len(ds_shape) == 1 and ds_shape[0] == 2:
        save_scatter(x, path, reference=reference, title=title)
        return True
    return False


def as_data(x, cfg, ds):
    """(samples clamped to the data range when bounded, their arrays for the .npz, the picture):
    for integer-level data the .npz also holds the ``levels`` and the picture is rounded to them."""
    import numpy as np

    from .. import data as D
    data_range = tuple(cfg["data"].get("data_range", (-1.0, 1.0)))
    if ds.bounded if ds is not None else True:
        x = x.clamp(*data_range)
    arrays = {"samples": x.numpy().astype(np.float32)}
    picture = x
    if cfg["data"].get("num_levels"):
        L = int(cfg["data"]["num_levels"])
        levels = D.float_to_levels(x, L)
        arrays["levels"] = levels.numpy().astype(np.int16)
        picture = D.levels_to_float(levels, L)  # what the data look like: rounded to the levels
    return x, arrays, picture
