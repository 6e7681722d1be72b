"""``scoresde likelihood``: bits/dim of a data split by the PF-ODE and by the DDPM variational bound."""
from __future__ import annotations

import math
import time

import numpy as np
import torch

from .common import load_data


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
