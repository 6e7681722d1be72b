"""Distributed set-up and sharded evaluation (``torchrun``; a single process needs neither).

* :func:`setup_distributed`: the default process group from torchrun's environment (nccl on
  CUDA, gloo on CPU), once; nothing outside torchrun.
* ``_wrap_ddp``: the training loop's model with its network in ``DistributedDataParallel``.
* :func:`shard_evaluate`: a function evaluated on contiguous shards of a data set, one per
  process, with no collective until every shard is done, then all-gathered in row order.
"""
from __future__ import annotations

import os
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn

from ._checks import check_device, check_positive
from .score import ScoreModel
from .sde import SDE

__all__ = ["setup_distributed", "shard_evaluate"]


def setup_distributed(device: str | None = None) -> tuple[int, int, torch.device]:
    """Initialise ``torch.distributed`` from torchrun's environment, if present.

    Under ``torchrun`` (WORLD_SIZE set), the default process group is created once: backend
    "nccl" when the device is CUDA, "gloo" otherwise; with CUDA each process uses
    cuda:LOCAL_RANK. Outside torchrun nothing is initialised.

    Returns: (rank, world_size, device) — (0, 1, device or "cpu") in a single process.
    Raises: ValueError: an explicit CUDA device requested but CUDA is not available.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if device is not None:
        check_device("device", device)  # "meta" or a typo: a named error before any set-up
    if device is not None and str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    if world <= 1 and not (dist.is_available() and dist.is_initialized()):
        return 0, 1, torch.device(device or "cpu")
    use_cuda = torch.cuda.is_available() if device is None else str(device).startswith("cuda")
    if use_cuda:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return dist.get_rank(), dist.get_world_size(), dev


def _dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _cat_outputs(parts: list, name: str):
    first = parts[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(parts)
    if isinstance(first, dict):
        return {k: _cat_outputs([p[k] for p in parts], f"{name}[{k!r}]") for k in first}
    if isinstance(first, (list, tuple)):
        return type(first)(_cat_outputs([p[i] for p in parts], f"{name}[{i}]") for i in range(len(first)))
    raise TypeError(f"{name} must be a tensor, or a dict / tuple of tensors (B, ...); got {type(first).__name__}")


def _check_rows(out, n: int, name: str) -> None:
    if isinstance(out, torch.Tensor):
        if out.dim() == 0 or out.shape[0] != n:
            raise ValueError(f"{name} returned shape {tuple(out.shape)} for a chunk of {n} rows; "
                             "its first dimension must be the chunk's")
    elif isinstance(out, dict):
        for k, v in out.items():
            _check_rows(v, n, f"{name}[{k!r}]")
    elif isinstance(out, (list, tuple)):
        for i, v in enumerate(out):
            _check_rows(v, n, f"{name}[{i}]")
    else:
        raise TypeError(f"{name} must return a tensor, or a dict / tuple of tensors; got {type(out).__name__}")


def _to_cpu(out):
    if isinstance(out, torch.Tensor):
        return out.detach().cpu()
    if isinstance(out, dict):
        return {k: _to_cpu(v) for k, v in out.items()}
    return type(out)(_to_cpu(v) for v in out)


def shard_evaluate(fn: Callable, data: torch.Tensor, *, batch_size: int | None = None,
                   with_indices: bool = False):
    """Evaluate ``fn`` on a data set split across processes; gather the results afterwards.

    Process r of K takes the contiguous rows [r n / K, (r + 1) n / K) and calls ``fn`` on them
    in chunks of ``batch_size``, entirely on its own: ``fn`` must not use a collective
    (all-reduce, barrier, DDP forward), because an adaptive ODE solve takes a different number
    of steps on each process and a collective inside it would hang (case C13). Only after every
    process has finished are the results all-gathered, in row order. Outside torchrun (K = 1) it
    simply evaluates every chunk. Use it for ``scoresde.log_likelihood`` / ``bits_per_dim``, e.g.
    ``shard_evaluate(lambda x: bits_per_dim(model, sde, x, ...).bpd, ds.levels, batch_size=256)``.

    Arguments:
        fn: callable chunk (b, *S) -> tensor (b, ...) or a dict / tuple of such tensors; with
            ``with_indices`` it is called fn(chunk, idx) with idx (b,) the global row numbers
            (to seed per-row randomness independently of K).
        data: tensor (n, *S).
        batch_size: chunk size (default: the whole shard).
    Returns:
        The concatenated outputs for all n rows, in row order, on the CPU, on every process.
    Raises:
        ValueError: an output whose first dimension is not its chunk's; TypeError: other
        output types, data not a tensor.
    """
    if not isinstance(data, torch.Tensor):
        raise TypeError(f"data must be a tensor (n, ...); got {type(data).__name__}")
    if batch_size is not None:
        check_positive("batch_size", batch_size, integer=True)
    rank, world = _dist_info()
    n = data.shape[0]
    lo, hi = rank * n // world, (rank + 1) * n // world
    step = batch_size or max(hi - lo, 1)
    outs = []
    for start in range(lo, hi, step):
        stop = min(start + step, hi)
        idx = torch.arange(start, stop)
        out = fn(data[start:stop], idx) if with_indices else fn(data[start:stop])
        _check_rows(out, stop - start, "fn")
        outs.append(_to_cpu(out))
    local = _cat_outputs(outs, "fn") if outs else None
    if world == 1:
        return local
    gathered = [None] * world
    dist.all_gather_object(gathered, local)  # after every shard is done: one collective per call
    return _cat_outputs([g for g in gathered if g is not None], "fn")


def _wrap_ddp(model: ScoreModel, sde: SDE, world: int, device: torch.device):
    """(DDP network or None, the ScoreModel the losses call): DDP around the network under torchrun
    (around the whole module for a model that is not a ScoreModel, e.g. a classifier)."""
    if world <= 1:
        return None, model
    ids = [device.index] if device.type == "cuda" else None
    if not isinstance(model, ScoreModel):  # a classifier (scoresde.train_classifier): DDP around all of it
        ddp = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        return ddp, ddp
    ddp_net = nn.parallel.DistributedDataParallel(model.net, device_ids=ids)
    return ddp_net, ScoreModel(ddp_net, sde, model.prediction, model.time_input, model.discrete,
                               model.learn_variance)
