"""What a training run is: its settings (:class:`TrainConfig`), its objective and its data.

* :class:`TrainConfig`: the settings of :func:`scoresde.train` (JSON-serialisable, stored in every
  checkpoint); ``_as_config`` checks them.
* the objective spec ("dsm", "ddpm", "hybrid", a dict {"loss": name, **options} or a callable)
  resolved to (loss function, options, JSON config);
* :func:`model_config` and the data config: the rest of the config a checkpoint stores, which a
  resumed run must match (except the :data:`_FREE_ON_RESUME` fields of the train config).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Callable

import torch

from ._checks import check_positive
from .amp import check_compile
from .checkpoint import check_config, config_diff
from .device import amp_name
from .score import ScoreModel
from .sde import SDE

__all__ = ["TrainConfig", "model_config", "OBJECTIVES"]

OBJECTIVES = ("dsm", "ddpm", "hybrid")
_RESERVED_LOSS_KWARGS = ("generator", "per_sample", "t_index", "noise", "t")
# Train-config fields that may change between a run and its resume without changing the result.
_FREE_ON_RESUME = ("steps", "quiet", "checkpoint_every", "log_every", "eval_every", "out_dir", "resume",
                   "device", "compile")


@dataclasses.dataclass
class TrainConfig:
    """Settings of :func:`train` (all JSON-serialisable; stored in every checkpoint).

    A dataclass: the keyword arguments below, all optional with the reference code's defaults,
    are also its attributes. The constructor does not validate them; :func:`train` does (and
    raises ValueError / TypeError naming the field).

    Arguments:
        steps: optimizer updates in total (a resumed run continues up to ``steps``).
        batch_size: the global batch, summed over processes and micro-batches.
        lr, warmup, grad_clip: Adam learning rate, linear warm-up length in updates (0: none) and
            gradient-norm clip (0: none). Defaults are the reference code's CIFAR-10 values.
        adam_betas, adam_eps, weight_decay: Adam's other settings (reference: (0.9, 0.999), 1e-8, 0).
        ema_decay, ema_warmup: EMA decay and the min(decay, (1+n)/(10+n)) warm-up (:mod:`scoresde.ema`).
        micro_batches: parts of the global batch, each with its own data shard and noise stream;
            None: the number of processes. Must be a multiple of the number of processes.
        seed: seeds the data order, the loss noise and dropout.
        eval_every, log_every, checkpoint_every: periods in updates (0: never; a final
            checkpoint and evaluation are always made at ``steps``).
        out_dir: folder for ``checkpoint.pt``, ``log.jsonl`` and ``config.json``; None: nothing
            is written.
        resume: continue from ``out_dir/checkpoint.pt`` when it exists (with False, an existing
            checkpoint is an error rather than being overwritten).
        quiet: no progress bar, and no status line (the "resuming from step N of M" / "nothing
            trained" line :func:`train` prints to stderr otherwise).
        device: "cpu", "cuda", "cuda:1", ...; "auto": CUDA when available, else the CPU; None:
            the model's device (under torchrun with CUDA, None and "auto": cuda:LOCAL_RANK).
        label_dropout: for a class-conditional model, the probability in [0, 1) with which each
            training label is replaced by the null class (index num_classes, :mod:`scoresde.labels`),
            drawn from (seed, step, micro-batch). 0 (default): plain conditional training; 0.1
            (k-diffusion's default, Ho & Salimans 2022 use 0.1-0.2): one network for
            classifier-free guidance. Must be 0 for an unconditional model.
        amp: mixed precision of the loss's forward pass (:mod:`scoresde.amp`): None (default,
            float32), "bf16" (bfloat16 autocast; CPU and CUDA) or "fp16" (float16 autocast with
            ``torch.amp.GradScaler``, whose state the checkpoints store); also "bfloat16" /
            "float16" / ``torch.bfloat16`` / ``torch.float16`` (stored as "bf16" / "fp16").
            Parameters, Adam and the EMA stay float32. Part of the run: it must match on resume.
        compile: ``torch.compile`` the network used for the loss: False (default), True
            (inductor) or a backend name ("aot_eager", "eager", ...). Free on resume (the
            checkpoints do not depend on it).
    Reference:
        the reference code of Song et al. 2021 (its CIFAR-10 training settings); Ho & Salimans
        2022 (label dropout).
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
    label_dropout: float = 0.0
    amp: str | None = None
    compile: bool | str = False

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
    if isinstance(cfg.label_dropout, bool) or not isinstance(cfg.label_dropout, (int, float)) \
            or not 0.0 <= cfg.label_dropout < 1.0:
        raise ValueError(f"label_dropout must lie in [0, 1); got {cfg.label_dropout!r}")
    cfg.label_dropout = float(cfg.label_dropout)
    cfg.amp = amp_name(cfg.amp)  # the spellings scoresde.device.amp_dtype takes, stored as "bf16" / "fp16"
    cfg.compile = check_compile(cfg.compile)
    if cfg.out_dir is not None:
        cfg.out_dir = os.path.abspath(os.fspath(cfg.out_dir))
    return cfg


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


@dataclasses.dataclass
class _Objective:
    """The objective of a run: the loss, its options, its JSON config, importance sampling or not."""

    fn: Callable
    kwargs: dict
    config: dict
    importance: bool


def _check_inputs(model, sde, objective, dataset, eval_dataset) -> tuple[_Objective, torch.Tensor, torch.Tensor | None]:
    """(objective, data, eval data) from :func:`train`'s arguments, checked: types, the model's SDE, shapes."""
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
    return _Objective(loss_fn, loss_kwargs, objective_cfg, importance), data, eval_data


def _check_resume(old: dict, new: dict, ckpt_path: str) -> None:
    """A resumed run must have the saved config, except the train fields free on resume."""
    old_train = {k: v for k, v in old.get("train", {}).items() if k not in _FREE_ON_RESUME}
    old_train.setdefault("label_dropout", 0.0)  # runs saved before the field existed trained without it
    old_train.setdefault("amp", None)  # ... and in float32
    new_train = {k: v for k, v in new["train"].items() if k not in _FREE_ON_RESUME}
    check_config({**{k: old.get(k) for k in ("sde", "model", "objective", "data")}, "train": old_train},
                 {**{k: new[k] for k in ("sde", "model", "objective", "data")}, "train": new_train},
                 ckpt_path)
