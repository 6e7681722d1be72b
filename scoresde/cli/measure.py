"""``scoresde likelihood``: bits/dim of a data split by the PF-ODE and by the DDPM variational bound."""
from __future__ import annotations

import math
import time

import numpy as np
import torch

from .common import load_data


def eval_split(spec, split, cfg, ds, seed, **data_options):
    """The data set to evaluate: ``--data`` if given (read with ``data_options``: --key,
    --num-levels, --layout), else the checkpoint data's ``split``."""
    from .. import data as D
    if spec is not None:
        return load_data(spec, split=split, seed=seed, **data_options), f"{spec} ({split})"
    if any(v is not None for v in data_options.values()):
        raise ValueError("--key / --num-levels / --layout say how to read --data; without --data the checkpoint's "
                         "data are read as they were for training")
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
               atol=1e-5, eps=1e-5, batch_size=500, seed=0, vlb=False, progress=True, steps=None,
               time_variable="t", step_control="batch", rows_per_call=16) -> dict:
    """bits/dim of the data set ``ds`` by the PF-ODE (and optionally the DDPM bound); JSON-ready dict.

    Quantized data (integer levels): :func:`scoresde.bits_per_dim` with uniform dequantization,
    bits/dim of the discrete data (an upper bound in expectation). Continuous data:
    -log2 p(x) / D of :func:`scoresde.log_likelihood` (bits/dim of the density; can be negative).
    The standard error is std / sqrt(n) over the points.

    Batch j holds the points [j b, (j + 1) b) and draws its dequantization noise and probes from
    seed + j. Under torchrun each process solves whole batches of its own
    (:func:`scoresde.distributed.shard_evaluate` with ``aligned=True``, no collective inside a
    solve) and the results are gathered afterwards, so K processes give exactly one process's
    numbers (for the same ``batch_size``). The bar (``progress``) counts network evaluations:
    the NFE of an adaptive solve is not known in advance, so it has no total.

    Arguments:
        model, sde: the score model and its SDE. ds: a :class:`scoresde.data.Dataset`.
        n: the first n points (0: all). divergence, ode_method, rtol, atol, eps, steps (of a
            fixed-grid ode_method), time_variable ("t" / "lambda"), step_control ("batch" /
            "per_sample"), rows_per_call (per_sample: rows of every network call): the solve's options (those of :func:`scoresde.log_likelihood`). batch_size: points per solve. seed: base seed of the batches.
        vlb: also the DDPM variational bound (:func:`vlb_bits`). progress: bars on stderr.
    Returns:
        dict (bpd, bpd_se, nfe_per_solve (one per batch), wall_s, processes, ...).
    """
    from ..distributed import _dist_info, shard_evaluate
    from .._levels import check_levels
    from ..sde import VPSDE, SubVPSDE
    from .progress import NetBar
    quantized = ds.levels is not None
    xs = ds.levels if quantized else ds.data
    if n and n > 0:
        xs = xs[:n]
    npts = len(xs)
    # e.g. 17-level digits stored as uint8 and read as 256 levels: 9.78 bits/dim instead of 4.27
    levels_note = check_levels(xs, ds.num_levels, warn=False) if quantized else None
    opts = dict(eps=eps, method=ode_method, rtol=rtol, atol=atol, divergence=divergence, steps=steps,
                time_variable=time_variable, step_control=step_control, rows_per_call=rows_per_call)
    rank, world = _dist_info()
    mine = _my_batches(npts, batch_size, rank, world)
    desc = "likelihood (PF-ODE)" + (f", process 0 of {world}" if world > 1 else "")
    t0 = time.perf_counter()
    with NetBar(model, desc, batches=mine, enabled=progress) as bar:
        def solve(x, idx):
            bar.batch(len(x))
            return _bpd_batch(model, sde, ds, x, int(idx[0]) // batch_size, seed, quantized, opts)
        out = shard_evaluate(solve, xs, batch_size=batch_size, with_indices=True, aligned=True)
    wall = time.perf_counter() - t0
    b = out["bpd"]
    nfes = [int(v) for v in out["nfe"][::batch_size]]  # one per batch (every row of a batch holds its NFE)
    res = {"bpd": float(b.mean()), "bpd_se": float(b.std() / math.sqrt(len(b))) if len(b) > 1 else None,
           "bpd_median": float(b.median()), "bpd_max": float(b.max()),
           "n_points": npts, "nfe_per_solve": nfes, "nfe_mean": float(np.mean(nfes)), "wall_s": round(wall, 2),
           "processes": world,
           "kind": "bits/dim of the dequantized discrete data (PF-ODE)" if quantized else
                   "bits/dim of the continuous density (PF-ODE), -log2 p(x) / D",
           "num_levels": ds.num_levels, "levels_warning": levels_note, "data_range": list(ds.data_range),
           "divergence": divergence,
           "ode_method": ode_method, "rtol": rtol, "atol": atol, "eps": eps, "steps": steps,
           "time_variable": time_variable, "step_control": step_control,
           "rows_per_call": rows_per_call if step_control == "per_sample" else None}
    if vlb:
        if not isinstance(sde, (VPSDE, SubVPSDE)):
            res["vlb"] = None
            res["vlb_note"] = f"the DDPM variational bound needs a VP or sub-VP SDE, not {type(sde).__name__}"
        elif not quantized:
            res["vlb"] = None
            res["vlb_note"] = "the DDPM variational bound needs integer-level data"
        else:
            res.update(vlb_bits(model, sde, xs, ds.num_levels, batch_size=batch_size, seed=seed, progress=progress))
    return res


def _my_batches(n: int, batch_size: int, rank: int, world: int) -> int:
    """How many of the ceil(n / batch_size) batches process ``rank`` of ``world`` evaluates."""
    c = -(-n // batch_size)  # batches rank, rank + world, ... (shard_evaluate's aligned split)
    return len(range(rank, c, world))


def _bpd_batch(model, sde, ds, x, j, seed, quantized, opts) -> dict:
    """bits/dim (b,) and the solve's NFE (b, repeated) of batch j, its randomness from seed + j."""
    import warnings

    from .. import bits_per_dim, log_likelihood
    from .._levels import LevelsWarning
    g = torch.Generator().manual_seed(seed + j)
    if quantized:
        with warnings.catch_warnings():  # checked once, on all the points
            warnings.simplefilter("ignore", LevelsWarning)
            r = bits_per_dim(model, sde, x, data_range=ds.data_range, num_levels=ds.num_levels, generator=g, **opts)
        bpd = r.bpd.double().cpu()
    else:
        r = log_likelihood(model, sde, x, generator=g, **opts)
        bpd = -r.logp.double().cpu() / (x[0].numel() * math.log(2.0))
    return {"bpd": bpd, "nfe": torch.full((len(x),), int(r.nfe), dtype=torch.long)}


def vlb_bits(model, sde, levels, num_levels, *, batch_size=500, seed=0, timesteps=None, progress=False) -> dict:
    """The DDPM variational bound (bits/dim) of integer-level points: mean, standard error, seconds.

    Batch j draws its x_k from seed + 10 000 + j; under torchrun each process takes whole
    batches (as :func:`likelihood`), so the bound does not depend on the number of processes.
    The bar (``progress``) counts network evaluations out of its known total, the chain's steps
    times this process's batches.

    Arguments:
        model, sde: the score model and its VP / sub-VP SDE. levels: (n, *S) integer levels.
        num_levels: L. batch_size: points per batch. seed: base seed. timesteps: the chain's
            steps (None: the model's chain). progress: a bar on stderr.
    Returns:
        dict with vlb, vlb_se, vlb_steps, vlb_variance and vlb_wall_s.
    """
    from .. import ddpm_vlb
    from ..distributed import _dist_info, shard_evaluate
    from .progress import NetBar
    rank, world = _dist_info()
    mine = _my_batches(len(levels), batch_size, rank, world)
    steps = _chain_length(model, sde, timesteps)
    info = {}
    t0 = time.perf_counter()
    desc = "variational bound (DDPM)" + (f", process 0 of {world}" if world > 1 else "")
    with NetBar(model, desc, total=steps * mine if steps else None, batches=mine, enabled=progress) as bar:
        def bound(x, idx):
            bar.batch(len(x))
            r = ddpm_vlb(model, sde, x, num_levels=num_levels, timesteps=timesteps,
                         generator=torch.Generator().manual_seed(seed + 10_000 + int(idx[0]) // batch_size))
            info.update(steps=int(len(r.timesteps)), variance=r.variance)
            return r.bpd.double().cpu()
        b = shard_evaluate(bound, levels, batch_size=batch_size, with_indices=True, aligned=True)
    if not info:  # this process had no batch: the chain's facts from a one-point bound
        info.update(steps=steps, variance=None)
    return {"vlb": float(b.mean()), "vlb_se": float(b.std() / math.sqrt(len(b))) if len(b) > 1 else None,
            "vlb_steps": info["steps"], "vlb_variance": info["variance"],
            "vlb_wall_s": round(time.perf_counter() - t0, 2)}


def _chain_length(model, sde, timesteps) -> int | None:
    """The number of steps (network calls per batch) of ``ddpm_vlb``'s chain; None if it cannot tell."""
    from ..chain import DiscreteChain
    from ..score import ScoreModel
    alphas = "continuous" if isinstance(model, ScoreModel) and not model.discrete else "table"
    try:
        return len(DiscreteChain(sde, timesteps, alphas=alphas))
    except (ValueError, TypeError):
        return None
