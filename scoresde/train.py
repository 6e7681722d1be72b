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

EMA: :func:`scoresde.ema.ema_model` (parameters averaged, buffers copied, the reference code's
decay warm-up), updated after every optimizer step.

Precision (:mod:`scoresde.amp`): ``TrainConfig(amp="bf16")`` runs the loss's forward pass under
bf16 autocast, ``amp="fp16"`` under fp16 autocast with a GradScaler (its state checkpointed; an
overflowing step is skipped), ``compile=True`` compiles the network the loss calls; parameters,
Adam and the EMA stay float32. Resume stays exact with either.

The pieces live beside this module (their names are re-exported here):
:mod:`scoresde.train_config` (:class:`TrainConfig`, the objective and data checks, the stored
config), :mod:`scoresde.train_state` (seeds, data order, RNG and importance-sampler state),
:mod:`scoresde.ema`, :mod:`scoresde.distributed` (:func:`setup_distributed`,
:func:`shard_evaluate`) and :mod:`scoresde.runs` (the run folder, :func:`resolve_checkpoint`,
:func:`load_score_model`).

Reference: Song et al. 2021, App. D / reference ``run_lib.train`` and ``losses.optimization_manager``
(lr 2e-4, warm-up 5000, clip 1.0, EMA 0.9999); Ho et al. 2020, App. B (EMA).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import time
from typing import Callable

import torch
import torch.distributed as dist

from .checkpoint import save_checkpoint
from .data_stats import check_prior
from .score import ScoreModel
from .sde import SDE
# the names below were defined in this module before it was split; they stay importable from it
from .distributed import (_cat_outputs, _check_rows, _dist_info, _to_cpu, _wrap_ddp, setup_distributed,  # noqa: F401
                          shard_evaluate)
from .ema import ema_decay, ema_model
from .labels import batch_labels, training_labels
from .runs import (CHECKPOINT_NAME, CONFIG_NAME, LOG_NAME, _load_weights, _read_log, _write_json,  # noqa: F401
                   load_score_model, resolve_checkpoint)
from .train_config import (_FREE_ON_RESUME, _RESERVED_LOSS_KWARGS, OBJECTIVES, TrainConfig, _as_config,  # noqa: F401
                           _check_inputs, _check_resume, _data_config, _data_tensor, _objective, model_config)
from .train_state import (_check_out_dir, _load_saved, _rng_state, _sampler_load, _sampler_state,  # noqa: F401
                          _sampler_update, _seed, _seed_global, _set_rng_state, _Sharder, _status_line, check_optimizer_fits)
from .amp import TrainPrecision
from .device import resolve_device

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
            tensor (n, *S). A class-conditional model (``model.num_classes`` = K) needs its
            ``labels``, passed to the objective as ``y=`` (with ``config.label_dropout`` of them
            replaced by the null class K, :mod:`scoresde.labels`); an unconditional one ignores them.
        config: a :class:`TrainConfig` or a dict of its fields.
        eval_dataset: optional held-out data for the periodic evaluation loss of the EMA model
            (fixed noise, so successive values are comparable).
        callback: called as callback(step, info) after every update (and its checkpoint), with
            info a dict holding "loss", "model", "ema".
    Returns:
        :class:`TrainResult`.
    Prints (rank 0, to stderr, unless ``config.quiet``): one line when resuming from the checkpoint
        in out_dir ("scoresde.train: resuming from step N of M in <out_dir>"), or, when the
        checkpoint is already at or past ``steps``, that nothing was trained and why.
    Files (rank 0 only, when out_dir is set): ``checkpoint.pt`` (replaced atomically),
        ``log.jsonl`` (one JSON object per line: {"step", "loss", "lr", "grad_norm", "elapsed_s"}
        and {"step", "eval_loss"}), ``config.json``.
    Raises:
        ValueError: the output folder is not writable (before any training), the checkpoint in
            out_dir is corrupt or was made with another config (one line naming the first
            differences), ``model.sde`` differs from ``sde``, bad config values, a batch larger
            than the data, a non-finite gradient (the step is named, and whether a checkpoint
            exists to resume from), a conditional model on data without labels (or with labels
            outside [0, K - 1]), label_dropout > 0 for an unconditional model.
        TypeError: wrong argument types (named).
    Warns:
        scoresde.data_stats.PriorMismatchWarning: a VESDE whose sigma_max is below the largest
            pairwise distance of the data, or whose prior is > 0.01 nats per dimension from the
            data's terminal marginal (the message gives the measured KL and a sigma_max that fits).
    Reference: Song et al. 2021, reference ``run_lib.train``; Ho et al. 2020, Alg. 1; Ho & Salimans
        2022, Alg. 1 (label dropout).
    """
    cfg = _as_config(config)
    objective, data, eval_data = _check_inputs(model, sde, objective, dataset, eval_dataset)
    labels = training_labels(model.num_classes, cfg.label_dropout, dataset, eval_dataset)  # (None, None): unconditional
    multi = int(os.environ.get("WORLD_SIZE", "1")) > 1
    want = cfg.device if cfg.device != "auto" else (None if multi else str(resolve_device("auto")))
    rank, world, device = setup_distributed(want or (None if multi else str(next(model.parameters()).device)))
    ckpt_path = os.path.join(cfg.out_dir, CHECKPOINT_NAME) if cfg.out_dir else None
    _check_out_dir(cfg, rank, world, device)
    if rank == 0:  # VE: warn when sigma_max does not cover the data (Song & Ermon 2020, Technique 1)
        check_prior(sde, data, stacklevel=2)
    saved = _load_saved(cfg, ckpt_path, world, device)
    sharder = _Sharder(data.shape[0], cfg.batch_size, cfg.micro_batches, cfg.seed)
    full_config = {"sde": sde.config(), "model": model_config(model), "objective": objective.config,
                   "data": _data_config(dataset), "train": cfg.to_dict()}
    if saved is not None:
        _check_resume(saved["config"], full_config, ckpt_path)
    _status_line(cfg, saved, rank)  # "resuming from step N of M in <out_dir>", or why nothing is trained

    loop = _Loop(model, sde, cfg, objective, data, eval_data, sharder, saved, full_config, ckpt_path,
                 (rank, world, device), labels=labels[0], eval_labels=labels[1])
    try:
        while loop.step < cfg.steps:
            lr, grad_norm = loop.update()
            loop.after_update(lr, grad_norm, callback)
    finally:
        loop.close()
    if world > 1:
        dist.barrier()  # the final checkpoint exists for every rank when train() returns
    return TrainResult(model=model, ema_model=loop.ema.module, step=loop.step, loss=loop.last_loss,
                       eval_loss=loop.eval_loss, checkpoint=loop.last_ckpt if ckpt_path else None,
                       config=full_config)


# ------------------------------------------------------------------------------------------ loop
class _Loop:
    """One training job between its updates: the optimizer, EMA, importance sampler, data, noise
    generator, metrics window, log file and progress bar, built (in this order, from the
    checkpoint when resuming) by the constructor; :meth:`update` makes one optimizer update."""

    def __init__(self, model, sde, cfg, objective, data, eval_data, sharder, saved, full_config, ckpt_path, where,
                 labels=None, eval_labels=None):
        self.rank, self.world, self.device = where
        device = self.device
        self.model, self.sde, self.cfg, self.obj, self.sharder = model, sde, cfg, objective, sharder
        self.full_config, self.ckpt_path, self.parts = full_config, ckpt_path, cfg.micro_batches
        model.to(device)
        model.train()
        if saved is not None:
            _load_weights(model, saved["model"], ckpt_path)
        self.ddp_net, train_model = _wrap_ddp(model, sde, self.world, device)
        self.prec = TrainPrecision(cfg.amp, cfg.compile, device)  # autocast / GradScaler / compile
        self.train_model = self.prec.compiled(train_model)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.opt = torch.optim.Adam(self.params, lr=cfg.lr, betas=cfg.adam_betas, eps=cfg.adam_eps,
                                    weight_decay=cfg.weight_decay)
        self.ema = ema_model(model, cfg.ema_decay, cfg.ema_warmup)
        self.step = 0
        if saved is not None:
            self._restore(saved)
        self.outer_rng = _rng_state(device)
        self.t_sampler = None
        if objective.importance:
            from .losses import LossSecondMomentSampler

            self.t_sampler = LossSecondMomentSampler(sde.chain_length)  # the chain's steps (t_i <= T)
            if saved is not None and saved.get("loss_sampler") is not None:
                _sampler_load(self.t_sampler, saved["loss_sampler"])
        self.data = data.to(device)
        self.eval_data = eval_data.to(device) if eval_data is not None else None
        # class labels (n,) of a conditional run (train passes them to the loss as y=), else None
        self.labels, self.eval_labels = (v.to(device) if v is not None else None for v in (labels, eval_labels))
        self.gen = torch.Generator(device=device)
        self.mine = list(range(self.rank, self.parts, self.world))
        self.scale = self.world / self.parts  # DDP divides by world: the gradient is the mean over all parts
        self.log_file = self._open_log()
        self.bar = self._progress_bar()
        # the running mean since the last log line, carried through checkpoints so logs resume exactly
        metrics = saved.get("metrics", {}) if saved is not None else {}
        window = metrics.get("window", [0.0, 0]) if saved is not None else [0.0, 0]
        self.window_loss = torch.tensor(float(window[0]), dtype=torch.float64, device=device)
        self.window_n = int(window[1])
        # the latest known values, until this run measures new ones
        self.last_loss, self.eval_loss = metrics.get("loss"), metrics.get("eval_loss")
        self.last_ckpt = ckpt_path if saved is not None else None
        self.last_ckpt_step = self.step if saved is not None else None
        self.t0 = time.time()

    def _restore(self, saved: dict) -> None:
        try:
            self.opt.load_state_dict(saved["optimizer"])
            self.ema.load_state_dict(saved["ema"])
        except (ValueError, RuntimeError, KeyError) as e:
            raise ValueError(f"{self.ckpt_path}: optimizer / EMA state does not fit the model: "
                             f"{str(e).splitlines()[0]}") from None
        check_optimizer_fits(self.opt, self.ckpt_path)
        self.step = int(saved["step"])
        self.prec.load_state_dict(saved.get("grad_scaler"))
        _set_rng_state(saved["rng"], self.device)

    def _open_log(self):
        """Rank 0 with an out_dir: writes config.json, cuts the log back to the resumed step, opens it."""
        out_dir = self.cfg.out_dir
        log_path = os.path.join(out_dir, LOG_NAME) if out_dir else None
        if self.rank == 0 and out_dir:
            _write_json(os.path.join(out_dir, CONFIG_NAME), self.full_config)
            _read_log(log_path, self.step)
        return open(log_path, "a") if (self.rank == 0 and log_path) else None

    def _progress_bar(self):
        if self.cfg.quiet or self.rank != 0:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=self.cfg.steps, initial=min(self.step, self.cfg.steps), desc="train", dynamic_ncols=True,
                    file=sys.stderr)

    def update(self) -> tuple[float, torch.Tensor]:
        """The update from step s = ``self.step`` to s + 1; returns (learning rate, gradient norm)."""
        cfg, s = self.cfg, self.step
        lr = cfg.lr * min(1.0, (s + 1) / cfg.warmup) if cfg.warmup > 0 else cfg.lr
        for g in self.opt.param_groups:
            g["lr"] = lr
        self.opt.zero_grad(set_to_none=True)
        step_loss, seen = self._backward(s)
        self.prec.unscale(self.opt)  # fp16: the true gradients before clipping
        if cfg.grad_clip > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip)
        else:
            grad_norm = torch.nn.utils.get_total_norm([p.grad for p in self.params if p.grad is not None])
        finite = bool(torch.isfinite(grad_norm))
        if not finite and not self.prec.may_skip():  # fp16 overflow with a scale >= 1: a skipped step instead
            raise ValueError(f"non-finite gradient norm at update {s + 1} (loss {float(step_loss):.4g}); "
                             f"{self._what_is_kept()}: lower lr or check the data")
        if self.prec.step(self.opt, finite):
            self.ema.update_parameters(self.model)
        if self.t_sampler is not None:
            _sampler_update(self.t_sampler, seen, self.mine, self.parts, self.world)
        self.step = s + 1
        self.window_loss += step_loss / self.parts
        self.window_n += 1
        return lr, grad_norm

    def _backward(self, s: int) -> tuple[torch.Tensor, list]:
        """Loss and backward of this process's micro-batches at step s; (their loss sum, the importance
        sampler's (t_index, per-sample loss) pairs)."""
        fn, kwargs, model, sde, gen, device = self.obj.fn, self.obj.kwargs, self.train_model, self.sde, self.gen, self.device
        step_loss = torch.zeros((), dtype=torch.float64, device=device)
        seen = []
        for j, c in enumerate(self.mine):
            idx = self.sharder.indices(s, c).to(device)
            x0 = self.data[idx]
            y = batch_labels(self.labels, idx, self.cfg.label_dropout, getattr(self.model, "num_classes", None),
                             _seed(self.cfg.seed, "labels", s, c))
            kwargs = self.obj.kwargs if y is None else {**self.obj.kwargs, "y": y}
            gen.manual_seed(_seed(self.cfg.seed, "noise", s, c))
            _seed_global(_seed(self.cfg.seed, "dropout", s, c), device)
            last = self.ddp_net is None or j == len(self.mine) - 1
            with contextlib.nullcontext() if last else self.ddp_net.no_sync():
                with self.prec.context():  # amp: the forward pass and the loss under autocast
                    if self.t_sampler is not None:
                        k, w = self.t_sampler.sample(x0.shape[0], gen, device=device)
                        per = fn(model, sde, x0, t_index=k, generator=gen, per_sample=True, **kwargs)
                        loss = (per * w).mean()  # unbiased for the uniform-t objective
                        seen.append((k, per.detach()))
                    else:
                        loss = fn(model, sde, x0, generator=gen, **kwargs)
                if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
                    raise TypeError("the objective must return a scalar tensor (the batch-mean loss)")
                self.prec.backward(loss * self.scale)  # outside autocast (fp16: scaled)
            step_loss += loss.detach().double()
        return step_loss, seen

    def _what_is_kept(self) -> str:
        if not self.ckpt_path:
            return "nothing was saved (no out_dir)"
        if self.last_ckpt_step is None:
            return f"no checkpoint was written yet ({self.ckpt_path} does not exist)"
        return f"the last checkpoint ({self.ckpt_path}, step {self.last_ckpt_step}) is intact"

    def after_update(self, lr: float, grad_norm: torch.Tensor, callback: Callable | None) -> None:
        """By their periods: the log line, the evaluation, the checkpoint; then the bar and the callback."""
        cfg, step = self.cfg, self.step
        if (cfg.log_every and step % cfg.log_every == 0) or step == cfg.steps:
            self._log(lr, grad_norm)
        if (cfg.eval_every and step % cfg.eval_every == 0) or (step == cfg.steps and self.eval_data is not None):
            self.eval_loss = self.evaluate()
            if self.log_file and self.eval_loss is not None:
                self.log_file.write(json.dumps({"step": step, "eval_loss": self.eval_loss}) + "\n")
                self.log_file.flush()
        if self.ckpt_path and ((cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or step == cfg.steps):
            self.last_ckpt = self.save(step) or self.last_ckpt
            self.last_ckpt_step = step  # on every rank (rank 0 writes)
        if self.bar is not None:
            self.bar.update(1)
        if callback is not None:
            callback(step, {"loss": self.last_loss, "model": self.model, "ema": self.ema})

    def _log(self, lr: float, grad_norm: torch.Tensor) -> None:
        w = self.window_loss.clone()  # this rank's share: the sum over its parts / parts
        if self.world > 1:
            dist.all_reduce(w)
        self.last_loss = float(w) / self.window_n
        self.window_loss.zero_()
        self.window_n = 0
        if self.log_file:
            self.log_file.write(json.dumps({"step": self.step, "loss": self.last_loss, "lr": lr,
                                            "grad_norm": float(grad_norm),
                                            "elapsed_s": round(time.time() - self.t0, 3)}) + "\n")
            self.log_file.flush()
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{self.last_loss:.4g}", refresh=False)

    def evaluate(self) -> float | None:
        """The EMA model's mean loss on the eval data, with fixed noise per chunk (None without them)."""
        if self.eval_data is None:
            return None
        net, gen, b = self.ema.module, self.gen, self.sharder.b
        fn, kwargs, sde = self.obj.fn, self.obj.kwargs, self.sde
        was = net.training
        net.eval()
        total = torch.zeros(2, dtype=torch.float64, device=self.device)
        with torch.no_grad():
            for j, start in enumerate(range(0, self.eval_data.shape[0], b)):
                if j % self.world != self.rank:
                    continue
                x0 = self.eval_data[start:start + b]
                lab = {} if self.eval_labels is None else {"y": self.eval_labels[start:start + b]}
                gen.manual_seed(_seed(self.cfg.seed, "eval", j))
                if self.obj.config["loss"] == "custom":
                    total[0] += fn(net, sde, x0, generator=gen, **lab).double() * x0.shape[0]
                else:
                    total[0] += fn(net, sde, x0, generator=gen, per_sample=True, **kwargs, **lab).double().sum()
                total[1] += x0.shape[0]
        net.train(was)
        if self.world > 1:
            dist.all_reduce(total)
        return float(total[0] / total[1])

    def save(self, at: int) -> str | None:
        """Rank 0: the checkpoint at step ``at`` (atomic); its path, or None on other ranks."""
        if self.rank != 0 or not self.ckpt_path:
            return None
        state = {"step": at, "model": self.model.state_dict(), "ema": self.ema.state_dict(),
                 "optimizer": self.opt.state_dict(), "rng": self.outer_rng, "config": self.full_config,
                 "loss_sampler": _sampler_state(self.t_sampler) if self.t_sampler is not None else None,
                 "grad_scaler": self.prec.state_dict(),
                 "metrics": {"loss": self.last_loss, "eval_loss": self.eval_loss,
                             "window": [float(self.window_loss), self.window_n]}}
        return save_checkpoint(self.ckpt_path, state)

    def close(self) -> None:
        """Close the bar and the log; give back the global RNG state from before training."""
        if self.bar is not None:
            self.bar.close()
        if self.log_file:
            self.log_file.close()
        _set_rng_state(self.outer_rng, self.device)
