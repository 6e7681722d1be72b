"""The training loop: Adam with warm-up and clipping, EMA, atomic checkpoints, exact resume, torchrun.

:func:`train` runs one job from start (or from the checkpoint in ``out_dir``) to ``steps``.
The same code runs in one process and under ``torchrun --nproc_per_node=K`` (DistributedDataParallel,
gloo on CPU, nccl on GPU). What makes runs reproducible:

* **Micro-batches.** The global batch of ``batch_size`` samples is split into ``micro_batches``
  equal parts (default: the number of processes K). Part c is drawn by
  ``DistributedSampler(num_replicas=micro_batches, rank=c, seed=seed)`` (a fresh permutation per
  epoch, ``seed + epoch``), and the loss noise of part c at step s comes from a generator seeded
  from (seed, s, c). Process r handles the parts c = r, r + K, ...; the gradient is the mean over
  all parts. So the parameters depend on (seed, batch_size, micro_batches), not on K or on where a
  run was interrupted: a K-process run equals a one-process run with the same ``batch_size`` and
  ``micro_batches = K`` (gradient accumulation), up to float summation order.
* **Exact resume.** A checkpoint stores the model, the EMA, the optimizer, the step, the RNG states
  and the full config. Since the data order and noise are functions of (seed, step, part), resuming
  from step k gives bit-identical parameters at step n on CPU to an uninterrupted run.
* **The global torch RNG** (used by dropout) is reseeded from (seed, s, c) before each part's
  forward pass, for the same reason; its state from before training is stored in the checkpoint
  ("rng": torch CPU and CUDA states) and restored at the end, so code after ``train`` sees the
  same global stream whether or not the run was resumed. The loss-noise generator needs no
  stored state: it is reseeded from (seed, s, c) for every part.

Learning rate: Adam(lr, betas=(0.9, 0.999), eps=1e-8), lr_s = lr min(1, (s + 1) / warmup) at the
update from step s to s + 1 (0-based; the reference code's min(s / warmup, 1) makes the very
first update a no-op), then gradient-norm clipping at ``grad_clip``.

EMA (:func:`ema_model`): ``torch.optim.swa_utils.AveragedModel`` with ``use_buffers=False``:
parameters are averaged, buffers are copied from the online model at every update (case C20).
The first update copies the parameters (AveragedModel's rule, so the random initialisation
carries no weight); update n >= 2 uses decay d_n = min(decay, (1 + n) / (10 + n)) (the reference
code's warm-up, n its ``num_updates``) or d_n = decay without warm-up:
ema_n = d_n ema_{n-1} + (1 - d_n) p_n.

Reference: Song et al. 2021, App. D / reference ``run_lib.train`` and ``losses.optimization_manager``
(lr 2e-4, warm-up 5000, clip 1.0, EMA 0.9999); Ho et al. 2020, App. B (EMA).
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import sys
import time
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DistributedSampler

from ._checks import check_device, check_positive
from .checkpoint import check_config, check_writable, config_diff, load_checkpoint, save_checkpoint
from .data_stats import check_prior
from .score import ScoreModel
from .sde import SDE, sde_from_config

__all__ = [
    "train",
    "TrainConfig",
    "TrainResult",
    "load_score_model",
    "resolve_checkpoint",
    "shard_evaluate",
    "setup_distributed",
    "ema_model",
    "ema_decay",
    "model_config",
    "CHECKPOINT_NAME",
    "OBJECTIVES",
]

CHECKPOINT_NAME = "checkpoint.pt"
LOG_NAME = "log.jsonl"
CONFIG_NAME = "config.json"
OBJECTIVES = ("dsm", "ddpm", "hybrid")
_RESERVED_LOSS_KWARGS = ("generator", "per_sample", "t_index", "noise", "t")
# Train-config fields that may change between a run and its resume without changing the result.
_FREE_ON_RESUME = ("steps", "quiet", "checkpoint_every", "log_every", "eval_every", "out_dir", "resume",
                   "device")


# ----------------------------------------------------------------------------------------- config
@dataclasses.dataclass
class TrainConfig:
    """Settings of :func:`train` (all JSON-serialisable; stored in every checkpoint).

    Attributes:
        steps: optimizer updates in total (a resumed run continues up to ``steps``).
        batch_size: the global batch, summed over processes and micro-batches.
        lr, warmup, grad_clip: Adam learning rate, linear warm-up length in updates (0: none) and
            gradient-norm clip (0: none). Defaults are the reference code's CIFAR-10 values.
        adam_betas, adam_eps, weight_decay: Adam's other settings (reference: (0.9, 0.999), 1e-8, 0).
        ema_decay, ema_warmup: EMA decay and the min(decay, (1+n)/(10+n)) warm-up (module docstring).
        micro_batches: parts of the global batch, each with its own data shard and noise stream;
            None: the number of processes. Must be a multiple of the number of processes.
        seed: seeds the data order, the loss noise and dropout.
        eval_every, log_every, checkpoint_every: periods in updates (0: never; a final
            checkpoint and evaluation are always made at ``steps``).
        out_dir: folder for ``checkpoint.pt``, ``log.jsonl`` and ``config.json``; None: nothing
            is written.
        resume: continue from ``out_dir/checkpoint.pt`` when it exists (with False, an existing
            checkpoint is an error rather than being overwritten).
        quiet: no progress bar.
        device: "cpu", "cuda", "cuda:1", ...; None: the model's device (under torchrun with
            CUDA: cuda:LOCAL_RANK).
    """

    steps: int = 10000
    batch_size: int = 128
    lr: float = 2e-4
    warmup: int = 5000
    grad_clip: float = 1.0
    adam_betas: tuple = (0.9, 0.999)
    adam_eps: float = 1e-8
    weight_decay: float = 0.0
    ema_decay: float = 0.9999
    ema_warmup: bool = True
    micro_batches: int | None = None
    seed: int = 0
    eval_every: int = 1000
    log_every: int = 100
    checkpoint_every: int = 1000
    out_dir: str | None = None
    resume: bool = True
    quiet: bool = False
    device: str | None = None

    @classmethod
    def small(cls, steps: int, **overrides) -> "TrainConfig":
        """Settings scaled down for small data and short runs (8x8 digits, 2-D toys).

        The reference values assume 1.3M updates on CIFAR-10. For a run of ``steps`` updates:
        lr 1e-3 (small networks tolerate it, and runs are short), warm-up
        min(5000, steps // 20) so that 95% of the run has the full rate, EMA decay 0.999 (an
        averaging horizon of 1/(1 - decay) = 1 000 updates instead of 10 000, so the EMA is
        not dominated by early weights, case C20), checkpoints and evaluations every
        max(steps // 10, 1) updates. Clip 1.0 and batch 128 are kept. ``overrides`` replace
        any field. The warm-up depends on ``steps``: to resume a run for longer, pass the run's
        warm-up explicitly (``small(2 * n, warmup=<saved warm-up>)``), since resuming requires
        the same schedule.
        """
        check_positive("steps", steps, integer=True)
        every = max(steps // 10, 1)
        base = dict(steps=steps, lr=1e-3, warmup=min(5000, steps // 20), ema_decay=0.999,
                    eval_every=every, checkpoint_every=every, log_every=max(min(100, steps // 20), 1))
        base.update(overrides)
        return cls(**base)

    def to_dict(self) -> dict:
        """The settings as a JSON-serialisable dict (stored in every checkpoint)."""
        d = dataclasses.asdict(self)
        d["adam_betas"] = list(d["adam_betas"])
        return d


def _as_config(config) -> TrainConfig:
    if config is None:
        return TrainConfig()
    if isinstance(config, TrainConfig):
        cfg = dataclasses.replace(config)
    elif isinstance(config, dict):
        names = [f.name for f in dataclasses.fields(TrainConfig)]
        bad = [k for k in config if k not in names]
        if bad:
            raise ValueError(f"unknown train config key(s) {bad}; valid keys are {names}")
        cfg = TrainConfig(**config)
    else:
        raise TypeError(f"config must be a TrainConfig or a dict; got {type(config).__name__}")
    for name in ("steps", "batch_size"):
        check_positive(name, getattr(cfg, name), integer=True)
    for name in ("warmup", "eval_every", "log_every", "checkpoint_every", "seed"):
        check_positive(name, getattr(cfg, name), integer=True, allow_zero=True)
    check_positive("lr", cfg.lr)
    check_positive("grad_clip", cfg.grad_clip, allow_zero=True)
    check_positive("adam_eps", cfg.adam_eps)
    check_positive("weight_decay", cfg.weight_decay, allow_zero=True)
    if not (isinstance(cfg.ema_decay, (int, float)) and 0.0 <= cfg.ema_decay < 1.0):
        raise ValueError(f"ema_decay must lie in [0, 1); got {cfg.ema_decay!r}")
    if len(cfg.adam_betas) != 2 or not all(0.0 <= b < 1.0 for b in cfg.adam_betas):
        raise ValueError(f"adam_betas must be two numbers in [0, 1); got {cfg.adam_betas!r}")
    cfg.adam_betas = tuple(float(b) for b in cfg.adam_betas)
    if cfg.micro_batches is not None:
        check_positive("micro_batches", cfg.micro_batches, integer=True)
    if cfg.out_dir is not None:
        cfg.out_dir = os.path.abspath(os.fspath(cfg.out_dir))
    return cfg


def _seed(*parts) -> int:
    """A 63-bit seed derived from ``parts`` (stable across runs, platforms and Python versions)."""
    digest = hashlib.blake2b("/".join(str(p) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


# -------------------------------------------------------------------------------------------- EMA
def ema_decay(n: int, decay: float, warmup: bool = True) -> float:
    """Decay d_n used at EMA update n >= 2: min(decay, (1 + n) / (10 + n)) with warm-up, else decay.

    Reference: Song et al. 2021, reference ``models/ema.py`` (``use_num_updates=True``).
    """
    return min(decay, (1.0 + n) / (10.0 + n)) if warmup else float(decay)


def ema_model(model: nn.Module, decay: float = 0.9999, warmup: bool = True) -> AveragedModel:
    """An EMA copy of ``model``: ``AveragedModel(model, multi_avg_fn=..., use_buffers=False)``.

    Call ``ema.update_parameters(model)`` after each optimizer step. Update 1 copies the
    parameters; update n >= 2 sets ema <- d_n ema + (1 - d_n) p with d_n = :func:`ema_decay`.
    Buffers are not averaged: they are copied from ``model`` at every update, so they are
    bit-identical to the online model's (a running average of, e.g., registered beta tables
    gave black DDIM samples in a peer, case C20). ``ema.module`` is the averaged model.

    Arguments:
        model: the online module.
        decay: in [0, 1).
        warmup: use the (1 + n) / (10 + n) warm-up.
    Returns: the AveragedModel (its ``n_averaged`` buffer counts the updates).
    Raises: ValueError: decay outside [0, 1).
    Reference: ``torch.optim.swa_utils.get_ema_multi_avg_fn``; Song et al. 2021 reference EMA.
    """
    if not (isinstance(decay, (int, float)) and 0.0 <= decay < 1.0):
        raise ValueError(f"decay must lie in [0, 1); got {decay!r}")

    @torch.no_grad()
    def update(ema_params, params, num_averaged):
        d = ema_decay(int(num_averaged) + 1, decay, warmup)
        if ema_params and ema_params[0].is_floating_point():
            torch._foreach_lerp_(ema_params, params, 1.0 - d)
        else:
            for e, p in zip(ema_params, params):
                e.copy_(e * d + p * (1.0 - d))

    return AveragedModel(model, multi_avg_fn=update, use_buffers=False)


# -------------------------------------------------------------------------------- distributed
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


# ----------------------------------------------------------------------------- configurations
def model_config(model: ScoreModel) -> dict:
    """The JSON-serialisable description of a ScoreModel stored in checkpoints.

    {"net": net.config() (or {"model": class name, "custom": True} for a network without
    ``config()``), "prediction", "time_input", "discrete", "learn_variance"}.
    """
    net = model.net
    net_cfg = net.config() if callable(getattr(net, "config", None)) else \
        {"model": type(net).__name__, "custom": True}
    return {"net": json.loads(json.dumps(net_cfg)), "prediction": model.prediction,
            "time_input": model.time_input, "discrete": model.discrete, "learn_variance": model.learn_variance}


def _objective(objective) -> tuple[Callable, dict, dict]:
    """(loss function, its keyword arguments, the JSON config) of an objective spec."""
    if isinstance(objective, str):
        spec = {"loss": objective}
    elif isinstance(objective, dict):
        spec = dict(objective)
    elif callable(objective):
        name = getattr(objective, "__name__", "")
        if getattr(objective, "__module__", "") == "scoresde.losses" and name.endswith("_loss"):
            spec = {"loss": name[: -len("_loss")]}
        else:
            fn = objective
            qual = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__name__)}"
            extra = fn.config() if callable(getattr(fn, "config", None)) else {}
            return fn, {}, {"loss": "custom", "function": qual, **json.loads(json.dumps(extra))}
    else:
        raise TypeError(f"objective must be a name {list(OBJECTIVES)}, a dict with 'loss', or a callable; "
                        f"got {type(objective).__name__}")
    name = spec.pop("loss", None)
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; valid values are {list(OBJECTIVES)}")
    if spec.get("importance_sampling") and name == "dsm":
        raise ValueError("importance_sampling applies to the discrete objectives 'ddpm' and 'hybrid', not 'dsm'")
    bad = [k for k in spec if k in _RESERVED_LOSS_KWARGS]
    if bad:
        raise ValueError(f"objective options {bad} are set by the training loop; remove them")
    from . import losses

    fn = getattr(losses, f"{name}_loss")
    return fn, spec, {"loss": name, **json.loads(json.dumps(spec))}


def _data_config(dataset) -> dict:
    if callable(getattr(dataset, "config", None)):
        return json.loads(json.dumps(dataset.config()))
    return {"loader": "memory", "n": len(dataset), "shape": list(dataset.shape[1:])}


def _data_tensor(dataset, name: str) -> torch.Tensor:
    data = dataset.data if hasattr(dataset, "data") and isinstance(dataset.data, torch.Tensor) else dataset
    if not isinstance(data, torch.Tensor):
        raise TypeError(f"{name} must be a scoresde.data.Dataset or a float tensor (n, *S); got {type(dataset).__name__}")
    if not data.is_floating_point():
        raise TypeError(f"{name} must hold floats (map integer levels with scoresde.data.levels_to_float); "
                        f"got dtype {data.dtype}")
    if data.dim() < 2 or data.shape[0] < 1:
        raise ValueError(f"{name} must have shape (n, *S) with n >= 1; got {tuple(data.shape)}")
    if not bool(torch.isfinite(data).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    return data


# ------------------------------------------------------------------------------------- training
@dataclasses.dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        model: the online ScoreModel (trained in place).
        ema_model: the EMA ScoreModel (``ema.module`` of the AveragedModel); use it to sample.
        step: the number of updates done.
        loss: mean training loss over the last logging window (for a resumed run with nothing
            left to do, the value stored in the checkpoint).
        eval_loss: the last evaluation loss of the EMA model (None without eval data).
        checkpoint: path of the last checkpoint written, or None.
        config: the full config stored with the checkpoint.
    """

    model: ScoreModel
    ema_model: ScoreModel
    step: int
    loss: float | None
    eval_loss: float | None
    checkpoint: str | None
    config: dict


class _Sharder:
    """Indices of micro-batch c at step s (DistributedSampler over ``micro_batches`` parts)."""

    def __init__(self, n: int, batch_size: int, parts: int, seed: int):
        if batch_size % parts:
            raise ValueError(f"batch_size {batch_size} must be divisible by micro_batches {parts}")
        self.b = batch_size // parts
        self.samplers = [DistributedSampler(range(n), num_replicas=parts, rank=c, shuffle=True, seed=seed,
                                            drop_last=True) for c in range(parts)]
        self.steps_per_epoch = self.samplers[0].num_samples // self.b
        if self.steps_per_epoch < 1:
            raise ValueError(f"batch_size {batch_size} is larger than the data set ({n} samples)")
        self._epoch, self._cache = None, {}

    def indices(self, step: int, c: int) -> torch.Tensor:
        epoch, pos = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            self._epoch, self._cache = epoch, {}
        if c not in self._cache:
            s = self.samplers[c]
            s.set_epoch(epoch)
            self._cache[c] = torch.tensor(list(iter(s)), dtype=torch.long)
        return self._cache[c][pos * self.b:(pos + 1) * self.b]


def _seed_global(value: int, device: torch.device) -> None:
    """Seed the global CPU generator (and the device's CUDA one); unlike ``torch.manual_seed``
    this queues nothing for uninitialised CUDA (which records a stack trace per call)."""
    torch.default_generator.manual_seed(value)
    if device.type == "cuda":
        torch.cuda.default_generators[device.index if device.index is not None else
                                      torch.cuda.current_device()].manual_seed(value)


def _sampler_state(sampler) -> dict:
    if callable(getattr(sampler, "state_dict", None)):
        return sampler.state_dict()
    return {"losses": sampler._losses.clone(), "counts": sampler._counts.clone()}


def _sampler_load(sampler, state: dict) -> None:
    if callable(getattr(sampler, "load_state_dict", None)):
        sampler.load_state_dict(state)
    else:
        sampler._losses.copy_(state["losses"])
        sampler._counts.copy_(state["counts"])


def _sampler_update(sampler, seen: list, mine: list, parts: int, world: int) -> None:
    """Feed every part's (t_index, per-sample loss) to the importance sampler, in part order.

    With several processes the parts are all-gathered first, so that every process holds the
    same sampler state (improved-diffusion's ``update_with_local_losses`` does the same).
    """
    ks = torch.stack([k for k, _ in seen])
    ls = torch.stack([loss.to(torch.float64) for _, loss in seen])
    if world > 1:
        all_k, all_l = [torch.empty_like(ks) for _ in range(world)], [torch.empty_like(ls) for _ in range(world)]
        dist.all_gather(all_k, ks)
        dist.all_gather(all_l, ls)
        by_part = {}
        for r in range(world):
            for j, c in enumerate(range(r, parts, world)):
                by_part[c] = (all_k[r][j], all_l[r][j])
    else:
        by_part = {c: (ks[j], ls[j]) for j, c in enumerate(mine)}
    for c in range(parts):
        sampler.update(by_part[c][0].cpu(), by_part[c][1].cpu())


def _rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


def _read_log(path: str, upto: int) -> None:
    """Drop log lines past step ``upto`` (written after the checkpoint by a run that died)."""
    if not os.path.isfile(path):
        return
    with open(path) as f:
        lines = f.readlines()
    keep = []
    for ln in lines:
        try:
            if json.loads(ln).get("step", 0) <= upto:
                keep.append(ln)
        except json.JSONDecodeError:
            pass  # a line cut by a kill
    if len(keep) != len(lines):
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(keep)
        os.replace(tmp, path)


def _write_json(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def train(model: ScoreModel, sde: SDE, objective, dataset, config=None, *, eval_dataset=None,
          callback: Callable | None = None) -> TrainResult:
    """Train a score model; resume from ``config.out_dir`` when it holds a checkpoint.

    Each update: lr warm-up, for each of this process's micro-batches the loss
    ``objective(model, sde, x0, generator=g, **options)`` and its backward (DDP averages the
    gradients across processes), gradient-norm clipping, Adam step, EMA update, then (by their
    periods) logging, evaluation of the EMA model and an atomic checkpoint. See the module
    docstring for the reproducibility rules.

    Arguments:
        model: a :class:`~scoresde.ScoreModel` (its network should have ``config()``, as the
            networks of ``scoresde.models`` do, so that checkpoints can rebuild it).
        sde: the SDE; must equal ``model.sde`` (same config).
        objective: "dsm", "ddpm", "hybrid", a dict {"loss": name, **options of that loss} (e.g.
            {"loss": "dsm", "weighting": "likelihood"}), one of the functions of
            ``scoresde.losses``, or any callable (model, sde, x0, generator=) -> scalar loss
            (its ``config()``, if it has one, is stored with the run and checked on resume).
            {"loss": "hybrid" or "ddpm", "importance_sampling": True} draws the steps with
            Improved DDPM's ``LossSecondMomentSampler`` and weights the per-sample losses by
            1 / (N p_k); the sampler's history is stored in checkpoints and, with several
            processes, fed with every process's losses (all-gathered) in micro-batch order.
        dataset: a :class:`scoresde.data.Dataset` (its ``data`` floats are used) or a float
            tensor (n, *S).
        config: a :class:`TrainConfig` or a dict of its fields.
        eval_dataset: optional held-out data for the periodic evaluation loss of the EMA model
            (fixed noise, so successive values are comparable).
        callback: called as callback(step, info) after every update (and its checkpoint), with
            info a dict holding "loss", "model", "ema".
    Returns:
        :class:`TrainResult`.
    Files (rank 0 only, when out_dir is set): ``checkpoint.pt`` (replaced atomically),
        ``log.jsonl`` (one JSON object per line: {"step", "loss", "lr", "grad_norm", "elapsed_s"}
        and {"step", "eval_loss"}), ``config.json``.
    Raises:
        ValueError: the output folder is not writable (before any training), the checkpoint in
            out_dir is corrupt or was made with another config (one line naming the first
            differences), ``model.sde`` differs from ``sde``, bad config values, a batch larger
            than the data, a non-finite gradient (the step is named, and whether a checkpoint
            exists to resume from).
        TypeError: wrong argument types (named).
    Warns:
        scoresde.data_stats.PriorMismatchWarning: a VESDE whose sigma_max is below the largest
            pairwise distance of the data, or whose prior is > 0.01 nats per dimension from the
            data's terminal marginal (the message gives the measured KL and a sigma_max that fits).
    Reference: Song et al. 2021, reference ``run_lib.train``; Ho et al. 2020, Alg. 1.
    """
    cfg = _as_config(config)
    if not isinstance(model, ScoreModel):
        raise TypeError(f"model must be a scoresde.ScoreModel; got {type(model).__name__}")
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be a scoresde SDE; got {type(sde).__name__}")
    diff = config_diff(model.sde.config(), sde.config())
    if diff:
        raise ValueError("model.sde differs from sde: " + "; ".join(diff[:3]))
    loss_fn, loss_kwargs, objective_cfg = _objective(objective)
    importance = bool(loss_kwargs.pop("importance_sampling", False))
    data = _data_tensor(dataset, "dataset")
    eval_data = _data_tensor(eval_dataset, "eval_dataset") if eval_dataset is not None else None
    if eval_data is not None and eval_data.shape[1:] != data.shape[1:]:
        raise ValueError(f"eval_dataset samples have shape {tuple(eval_data.shape[1:])}, dataset "
                         f"{tuple(data.shape[1:])}")

    rank, world, device = setup_distributed(cfg.device or (None if int(os.environ.get("WORLD_SIZE", "1")) > 1
                                                            else str(next(model.parameters()).device)))
    parts = cfg.micro_batches
    ckpt_path = os.path.join(cfg.out_dir, CHECKPOINT_NAME) if cfg.out_dir else None

    # The output folder must be writable before anything runs; all ranks learn the verdict.
    err = None
    if rank == 0 and cfg.out_dir:
        try:
            check_writable(cfg.out_dir)
        except ValueError as e:
            err = str(e)
    if world > 1:
        flag = torch.tensor([1.0 if err else 0.0], device=device)
        dist.all_reduce(flag)
        if float(flag) > 0 and err is None:
            err = "rank 0 could not write the output folder " + str(cfg.out_dir)
    if err:
        raise ValueError(err)
    if rank == 0:  # VE: warn when sigma_max does not cover the data (Song & Ermon 2020, Technique 1)
        check_prior(sde, data, stacklevel=2)

    saved = None
    if ckpt_path and not cfg.resume and os.path.exists(ckpt_path):
        raise ValueError(f"{ckpt_path} exists and resume=False: a new run would overwrite it; use another out_dir "
                         "or resume=True")
    if ckpt_path and cfg.resume and os.path.exists(ckpt_path):
        saved = load_checkpoint(ckpt_path, map_location=device)
        if parts is None:
            parts = saved["config"]["train"].get("micro_batches")
    if parts is None:
        parts = world
    if parts % world:
        raise ValueError(f"micro_batches {parts} must be a multiple of the number of processes {world}")
    cfg.micro_batches = parts
    sharder = _Sharder(data.shape[0], cfg.batch_size, parts, cfg.seed)

    full_config = {"sde": sde.config(), "model": model_config(model), "objective": objective_cfg,
                   "data": _data_config(dataset), "train": cfg.to_dict()}
    if saved is not None:
        old = dict(saved["config"])
        old_train = {k: v for k, v in old.get("train", {}).items() if k not in _FREE_ON_RESUME}
        new_train = {k: v for k, v in full_config["train"].items() if k not in _FREE_ON_RESUME}
        check_config({**{k: old.get(k) for k in ("sde", "model", "objective", "data")}, "train": old_train},
                     {**{k: full_config[k] for k in ("sde", "model", "objective", "data")}, "train": new_train},
                     ckpt_path)

    model.to(device)
    model.train()
    if saved is not None:
        _load_weights(model, saved["model"], ckpt_path)
    if world > 1:
        ids = [device.index] if device.type == "cuda" else None
        ddp_net = nn.parallel.DistributedDataParallel(model.net, device_ids=ids)
        train_model = ScoreModel(ddp_net, sde, model.prediction, model.time_input, model.discrete,
                                 model.learn_variance)
    else:
        ddp_net, train_model = None, model
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr, betas=cfg.adam_betas, eps=cfg.adam_eps,
                           weight_decay=cfg.weight_decay)
    ema = ema_model(model, cfg.ema_decay, cfg.ema_warmup)
    step = 0
    if saved is not None:
        try:
            opt.load_state_dict(saved["optimizer"])
            ema.load_state_dict(saved["ema"])
        except (ValueError, RuntimeError, KeyError) as e:
            raise ValueError(f"{ckpt_path}: optimizer / EMA state does not fit the model: "
                             f"{str(e).splitlines()[0]}") from None
        step = int(saved["step"])
        _set_rng_state(saved["rng"], device)
        window = saved.get("metrics", {}).get("window", [0.0, 0])
    outer_rng = _rng_state(device)
    t_sampler = None
    if importance:
        from .losses import LossSecondMomentSampler

        t_sampler = LossSecondMomentSampler(sde.chain_length)  # the chain's steps (t_i <= T)
        if saved is not None and saved.get("loss_sampler") is not None:
            _sampler_load(t_sampler, saved["loss_sampler"])

    data = data.to(device)
    if eval_data is not None:
        eval_data = eval_data.to(device)
    gen = torch.Generator(device=device)
    mine = list(range(rank, parts, world))
    scale = world / parts  # DDP divides by world: the gradient is the mean over all parts
    log_path = os.path.join(cfg.out_dir, LOG_NAME) if cfg.out_dir else None
    if rank == 0 and cfg.out_dir:
        _write_json(os.path.join(cfg.out_dir, CONFIG_NAME), full_config)
        _read_log(log_path, step)
    log_file = open(log_path, "a") if (rank == 0 and log_path) else None

    bar = None
    if not cfg.quiet and rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, initial=min(step, cfg.steps), desc="train", dynamic_ncols=True,
                   file=sys.stderr)
    if saved is None:
        window = [0.0, 0]
    # the running mean since the last log line, carried through checkpoints so logs resume exactly
    window_loss, window_n = torch.tensor(float(window[0]), dtype=torch.float64, device=device), int(window[1])
    last_loss, eval_loss, last_ckpt = None, None, (ckpt_path if saved is not None else None)
    last_ckpt_step = step if saved is not None else None
    if saved is not None:  # the latest known values, until this run measures new ones
        last_loss, eval_loss = saved.get("metrics", {}).get("loss"), saved.get("metrics", {}).get("eval_loss")
    t0 = time.time()

    def evaluate() -> float | None:
        if eval_data is None:
            return None
        net = ema.module
        was = net.training
        net.eval()
        total = torch.zeros(2, dtype=torch.float64, device=device)
        b = sharder.b
        chunks = range(0, eval_data.shape[0], b)
        with torch.no_grad():
            for j, start in enumerate(chunks):
                if j % world != rank:
                    continue
                x0 = eval_data[start:start + b]
                gen.manual_seed(_seed(cfg.seed, "eval", j))
                if objective_cfg["loss"] == "custom":
                    total[0] += loss_fn(net, sde, x0, generator=gen).double() * x0.shape[0]
                else:
                    total[0] += loss_fn(net, sde, x0, generator=gen, per_sample=True, **loss_kwargs).double().sum()
                total[1] += x0.shape[0]
        net.train(was)
        if world > 1:
            dist.all_reduce(total)
        return float(total[0] / total[1])

    def save(at: int) -> str | None:
        if rank != 0 or not ckpt_path:
            return None
        state = {"step": at, "model": model.state_dict(), "ema": ema.state_dict(), "optimizer": opt.state_dict(),
                 "rng": outer_rng, "config": full_config,
                 "loss_sampler": _sampler_state(t_sampler) if t_sampler is not None else None,
                 "metrics": {"loss": last_loss, "eval_loss": eval_loss,
                             "window": [float(window_loss), window_n]}}
        return save_checkpoint(ckpt_path, state)

    try:
        while step < cfg.steps:
            s = step
            lr = cfg.lr * min(1.0, (s + 1) / cfg.warmup) if cfg.warmup > 0 else cfg.lr
            for g in opt.param_groups:
                g["lr"] = lr
            opt.zero_grad(set_to_none=True)
            step_loss = torch.zeros((), dtype=torch.float64, device=device)
            seen = []
            for j, c in enumerate(mine):
                x0 = data[sharder.indices(s, c).to(device)]
                gen.manual_seed(_seed(cfg.seed, "noise", s, c))
                _seed_global(_seed(cfg.seed, "dropout", s, c), device)
                sync = contextlib.nullcontext() if (ddp_net is None or j == len(mine) - 1) else ddp_net.no_sync()
                with sync:
                    if t_sampler is not None:
                        k, w = t_sampler.sample(x0.shape[0], gen, device=device)
                        per = loss_fn(train_model, sde, x0, t_index=k, generator=gen, per_sample=True, **loss_kwargs)
                        loss = (per * w).mean()  # unbiased for the uniform-t objective
                        seen.append((k, per.detach()))
                    else:
                        loss = loss_fn(train_model, sde, x0, generator=gen, **loss_kwargs)
                    if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
                        raise TypeError("the objective must return a scalar tensor (the batch-mean loss)")
                    (loss * scale).backward()
                step_loss += loss.detach().double()
            if cfg.grad_clip > 0:
                grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            else:
                grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
            if not bool(torch.isfinite(grad_norm)):
                if not ckpt_path:
                    kept = "nothing was saved (no out_dir)"
                elif last_ckpt_step is None:
                    kept = f"no checkpoint was written yet ({ckpt_path} does not exist)"
                else:
                    kept = f"the last checkpoint ({ckpt_path}, step {last_ckpt_step}) is intact"
                raise ValueError(f"non-finite gradient norm at update {s + 1} (loss {float(step_loss):.4g}); "
                                 f"{kept}: lower lr or check the data")
            opt.step()
            ema.update_parameters(model)
            if t_sampler is not None:
                _sampler_update(t_sampler, seen, mine, parts, world)
            step = s + 1
            window_loss += step_loss / parts
            window_n += 1

            if (cfg.log_every and step % cfg.log_every == 0) or step == cfg.steps:
                w = window_loss.clone()  # this rank's share: the sum over its parts / parts
                if world > 1:
                    dist.all_reduce(w)
                last_loss = float(w) / window_n
                window_loss.zero_()
                window_n = 0
                if log_file:
                    log_file.write(json.dumps({"step": step, "loss": last_loss, "lr": lr,
                                               "grad_norm": float(grad_norm), "elapsed_s": round(time.time() - t0, 3)})
                                   + "\n")
                    log_file.flush()
                if bar is not None:
                    bar.set_postfix(loss=f"{last_loss:.4g}", refresh=False)
            if (cfg.eval_every and step % cfg.eval_every == 0) or (step == cfg.steps and eval_data is not None):
                eval_loss = evaluate()
                if log_file and eval_loss is not None:
                    log_file.write(json.dumps({"step": step, "eval_loss": eval_loss}) + "\n")
                    log_file.flush()
            if ckpt_path and ((cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or step == cfg.steps):
                last_ckpt = save(step) or last_ckpt
                last_ckpt_step = step  # on every rank (rank 0 writes)
            if bar is not None:
                bar.update(1)
            if callback is not None:
                callback(step, {"loss": last_loss, "model": model, "ema": ema})
    finally:
        if bar is not None:
            bar.close()
        if log_file:
            log_file.close()
        _set_rng_state(outer_rng, device)
    if world > 1:
        dist.barrier()  # the final checkpoint exists for every rank when train() returns
    return TrainResult(model=model, ema_model=ema.module, step=step, loss=last_loss, eval_loss=eval_loss,
                       checkpoint=last_ckpt if ckpt_path else None, config=full_config)


def _load_weights(module: nn.Module, state: dict, path) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0]
        raise ValueError(f"{path}: the weights do not fit the network ({detail[:200]})") from None


# ------------------------------------------------------------------------------------- loading
def resolve_checkpoint(path) -> str:
    """The checkpoint file named by ``path``: the file itself, or ``checkpoint.pt`` in a run folder.

    Arguments:
        path: a checkpoint file, or a folder (a run's ``out_dir``) holding ``checkpoint.pt``.
    Returns: the file path (str).
    Raises:
        FileNotFoundError: a folder without ``checkpoint.pt``, or no such file or folder.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        f = os.path.join(path, CHECKPOINT_NAME)
        if not os.path.isfile(f):
            raise FileNotFoundError(f"no checkpoint in folder {path} (expected {CHECKPOINT_NAME})")
        return f
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such checkpoint file: {path}")
    return path


def load_score_model(path, *, use_ema: bool = True, net: nn.Module | None = None, sde: SDE | None = None,
                     map_location="cpu", quiet: bool = False) -> tuple[ScoreModel, SDE, dict]:
    """Rebuild the score model of a checkpoint for sampling or likelihood: EMA weights by default.

    Prints one line to stderr saying which weights were loaded (unless ``quiet``), e.g.
    "scoresde: using the EMA weights (1000 updates, decay 0.999) of run/checkpoint.pt".

    Arguments:
        path: a checkpoint written by :func:`train`, or the run folder (``out_dir``) holding
            it as ``checkpoint.pt``.
        use_ema: load the EMA weights (default; the weights samples and likelihoods should
            use) or the online ones. A checkpoint without EMA falls back to online (and says so).
        net: the network to load into; default: built by
            ``scoresde.models.model_from_config`` from the stored config. If given and it has
            ``config()``, that config must match the stored one.
        sde: optional; if given, its config must match the stored SDE.
        map_location: device for the tensors.
        quiet: print nothing.
    Returns:
        (score_model in eval mode, sde, config) — config is the stored config plus
        "weights": "ema" or "online" and "step".
    Raises:
        FileNotFoundError: no such file (or a folder without ``checkpoint.pt``). ValueError (one
        line): corrupt / foreign file, a config
        that does not match ``net`` or ``sde``, weights that do not fit the network, a custom
        network without ``net=``.
    """
    path = resolve_checkpoint(path)
    state = load_checkpoint(path, map_location=map_location)
    cfg = state.get("config")
    if not isinstance(cfg, dict) or "model" not in cfg or "sde" not in cfg:
        raise ValueError(f"{path} is a scoresde checkpoint without a model / sde config")
    stored_sde = sde_from_config(cfg["sde"])
    if sde is not None:
        check_config({"sde": cfg["sde"]}, {"sde": sde.config()}, path)
    mcfg = cfg["model"]
    if net is None:
        if mcfg["net"].get("custom"):
            raise ValueError(f"{path} holds a custom network ({mcfg['net']['model']}); pass it as net=")
        from .models import model_from_config

        net = model_from_config(mcfg["net"])
    elif callable(getattr(net, "config", None)):
        check_config({"net": mcfg["net"]}, {"net": json.loads(json.dumps(net.config()))}, path)
    score = ScoreModel(net, sde if sde is not None else stored_sde, prediction=mcfg["prediction"],
                       time_input=mcfg["time_input"], discrete=mcfg["discrete"],
                       learn_variance=mcfg["learn_variance"])
    weights = "online"
    sd = state["model"]
    if use_ema and state.get("ema") is not None:
        sd = {k[len("module."):]: v for k, v in state["ema"].items() if k.startswith("module.")}
        weights = "ema"
    _load_weights(score, sd, path)
    score.to(map_location).eval()
    if not quiet:
        if weights == "ema":
            n = int(state["ema"].get("n_averaged", torch.tensor(0)))
            decay = cfg.get("train", {}).get("ema_decay")
            msg = f"using the EMA weights ({n} updates, decay {decay}) of {path}; use_ema=False for the online weights"
        elif use_ema:
            msg = f"{path} holds no EMA weights; using the online weights"
        else:
            msg = f"using the online (non-EMA) weights of {path}, as requested"
        print("scoresde: " + msg, file=sys.stderr)
    out = dict(cfg)
    out.update({"weights": weights, "step": int(state.get("step", 0))})
    return score, (sde if sde is not None else stored_sde), out
