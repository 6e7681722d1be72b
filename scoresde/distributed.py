"""Distributed set-up and sharded evaluation (``torchrun``; a single process needs neither).

* :func:`setup_distributed`: the default process group from torchrun's environment (nccl on
  CUDA, gloo on CPU), once; nothing outside torchrun.
* ``_wrap_ddp``: the training loop's model with its network in ``DistributedDataParallel``
  (gradients laid out as their parameters, so DDP's reducer copies no gradient and warns of no
  "Grad strides do not match bucket view strides").
* :func:`shard_evaluate`: a function evaluated on contiguous shards of a data set, one per
  process, with no collective until every shard is done, then all-gathered in row order;
  ``aligned=True`` makes the shards whole chunks of ``batch_size`` rows, so that each chunk, and
  randomness seeded by its index, is the same whatever the number of processes.
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

    Arguments:
        device: the device asked for ("cpu", "cuda", ...) or None (CUDA if available).
    Returns:
        (rank, world_size, device) — (0, 1, device or "cpu") in a single process.
    Raises:
        ValueError: an explicit CUDA device requested but CUDA is not available.
    Reference:
        PyTorch, "torchrun (Elastic Launch)": RANK, WORLD_SIZE, LOCAL_RANK; EDM's
        ``torch_utils/distributed.py`` (nccl, gloo elsewhere).
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


def _shard(n: int, rank: int, world: int, batch_size: int | None, aligned: bool) -> list[tuple[int, int]]:
    """The chunks [start, stop) of rows that process ``rank`` of ``world`` evaluates."""
    if aligned:  # chunks rank, rank + K, ... (EDM's all_batches[rank::world_size]): rank 0 has work first
        return [(j, min(j + batch_size, n)) for j in range(rank * batch_size, n, world * batch_size)]
    lo, hi = rank * n // world, (rank + 1) * n // world
    step = batch_size or max(hi - lo, 1)
    return [(start, min(start + step, hi)) for start in range(lo, hi, step)]


def shard_evaluate(fn: Callable, data: torch.Tensor, *, batch_size: int | None = None,
                   with_indices: bool = False, aligned: bool = False):
    """Evaluate ``fn`` on a data set split across processes; gather the results afterwards.

    Process r of K takes the contiguous rows [r n / K, (r + 1) n / K) and calls ``fn`` on them
    in chunks of ``batch_size``, entirely on its own: ``fn`` must not use a collective
    (all-reduce, barrier, DDP forward), because an adaptive ODE solve takes a different number
    of steps on each process and a collective inside it would hang (case C13). Only after every
    process has finished are the results all-gathered, in row order. Outside torchrun (K = 1) it
    simply evaluates every chunk. Use it for ``scoresde.log_likelihood`` / ``bits_per_dim``, e.g.
    ``shard_evaluate(lambda x: bits_per_dim(model, sde, x, ...).bpd, ds.levels, batch_size=256)``.

    With ``aligned=True`` the chunks are fixed: chunk j holds the rows [j b, (j + 1) b) (the
    last one shorter) whatever K is, and process r takes the chunks r, r + K, r + 2K, ... (as
    EDM's ``generate.py`` deals its batches); the results are still returned in row order. A
    batched adaptive solve depends on which rows share its batch, so this is what makes the
    results of K processes equal one process's exactly: seed chunk j's randomness from
    j = idx[0] // batch_size (EDM's per-seed generation, by chunk). With fewer chunks than
    processes the last processes have none (rank 0 always has one when n > 0).

    Arguments:
        fn: callable chunk (b, *S) -> tensor (b, ...) or a dict / tuple of such tensors; with
            ``with_indices`` it is called fn(chunk, idx) with idx (b,) the global row numbers
            (to seed per-row randomness independently of K).
        data: tensor (n, *S).
        batch_size: chunk size (default: the whole shard); required with ``aligned``.
        with_indices: pass the global row numbers to ``fn``.
        aligned: shards made of whole chunks of ``batch_size`` rows (see above).
    Returns:
        The concatenated outputs for all n rows, in row order, on the CPU, on every process.
    Raises:
        ValueError: empty data (no rows) or a 0-d tensor; an output whose first dimension is not
        its chunk's; ``aligned`` without a ``batch_size``; RuntimeError: ``fn`` failed on another process (its message, with the
        rank; the failing process raises the original error), so that no process waits for a
        failed one. TypeError: other output types, data not a tensor.
    Reference:
        Karras et al. 2022 (EDM), ``generate.py``: one generator per image seed, the seeds split
        across ranks; k-diffusion issue 79 (no collective inside an adaptive solve).
    """
    if not isinstance(data, torch.Tensor):
        raise TypeError(f"data must be a tensor (n, ...); got {type(data).__name__}")
    if data.dim() == 0 or data.shape[0] == 0:  # (before any collective: every process raises alike)
        raise ValueError(f"data must hold at least one row (n, ...) to evaluate; got shape {tuple(data.shape)}")
    if batch_size is not None:
        check_positive("batch_size", batch_size, integer=True)
    elif aligned:
        raise ValueError("aligned=True needs a batch_size (the fixed chunk size)")
    rank, world = _dist_info()
    outs, error = [], None
    try:
        for start, stop in _shard(data.shape[0], rank, world, batch_size, aligned):
            idx = torch.arange(start, stop)
            out = fn(data[start:stop], idx) if with_indices else fn(data[start:stop])
            _check_rows(out, stop - start, "fn")
            outs.append((start, _to_cpu(out)))
    except Exception as e:  # noqa: BLE001 - re-raised below, after the other processes hear of it
        if world == 1:
            raise
        error = e
    if world == 1:
        return _cat_outputs([o for _, o in outs], "fn") if outs else None
    local = ("error", f"{type(error).__name__}: {error}") if error is not None else ("ok", outs)
    gathered = [None] * world
    dist.all_gather_object(gathered, local)  # after every shard is done: one collective per call
    if error is not None:
        raise error
    failed = [(r, g[1]) for r, g in enumerate(gathered) if g[0] == "error"]
    if failed:
        raise RuntimeError("; ".join(f"process {r} of {world} failed: {msg}" for r, msg in failed))
    by_start = {start: out for g in gathered for start, out in g[1]}  # back to row order
    return _cat_outputs([by_start[s] for s in sorted(by_start)], "fn") if by_start else None


def _wrap_ddp(model: ScoreModel, sde: SDE, world: int, device: torch.device):
    """(DDP network or None, the ScoreModel the losses call): DDP around the network under torchrun
    (around the whole module for a model that is not a ScoreModel, e.g. a classifier)."""
    if world <= 1:
        return None, model
    ids = [device.index] if device.type == "cuda" else None
    _match_grad_layout(model)
    if not isinstance(model, ScoreModel):  # a classifier (scoresde.train_classifier): DDP around all of it
        ddp = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        return ddp, ddp
    ddp_net = nn.parallel.DistributedDataParallel(model.net, device_ids=ids)
    return ddp_net, ScoreModel(ddp_net, sde, model.prediction, model.time_input, model.discrete,
                               model.learn_variance)


def _match_grad_layout(module: nn.Module) -> None:
    """Give each parameter with a size-1 dimension a gradient with exactly its strides.

    A 1x1 convolution fed a transposed view (the UNet's attention projection) gets a weight
    gradient (16, 16, 1, 1) with strides (16, 1, 16, 16): the same memory as the parameter's
    (16, 1, 1, 1), so autograd keeps it, but DDP compares strides literally, warns "Grad strides
    do not match bucket view strides" on every process and copies it. The hook makes the copy
    before (the gradient's values are unchanged); parameters without a size-1 dimension, whose
    gradients autograd already lays out as the parameter, get no hook. Registered once.
    """
    for p in module.parameters():
        if p.requires_grad and p.dim() > 1 and 1 in p.shape and not getattr(p, "_scoresde_layout_hook", False):
            p.register_hook(_layout_hook(tuple(p.shape), p.stride()))
            p._scoresde_layout_hook = True


def _layout_hook(shape: tuple, stride: tuple):
    def hook(grad: torch.Tensor) -> torch.Tensor:
        if grad.layout != torch.strided or grad.stride() == stride:
            return grad
        return torch.empty_strided(shape, stride, dtype=grad.dtype, device=grad.device).copy_(grad)
    return hook
