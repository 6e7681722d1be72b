"""``scoresde sample``: the sampler options of the command line, drawing in batches, the figure."""
from __future__ import annotations

import math

import torch


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
