"""What makes a training run reproducible: derived seeds, the data order, RNG and sampler state.

* ``_seed(*parts)``: a stable 63-bit seed from (seed, purpose, step, part), for the loss noise,
  dropout and the evaluation noise;
* ``_Sharder``: the indices of micro-batch c at step s (a ``DistributedSampler`` per part);
* the global RNG state (stored in checkpoints, restored after training) and the importance
  sampler's history (stored, and fed in part order from every process);
* the set-up steps: the output folder checked writable, the checkpoint to resume from, and the
  one status line :func:`scoresde.train` prints when it resumes or has nothing to train.

See :mod:`scoresde.train` for the rules these implement.
"""
from __future__ import annotations

import hashlib
import os
import sys

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler

from .checkpoint import check_writable, load_checkpoint
from .runs import _dtype_kind


def _seed(*parts) -> int:
    """A 63-bit seed derived from ``parts`` (stable across runs, platforms and Python versions)."""
    digest = hashlib.blake2b("/".join(str(p) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


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
    """Set the global RNG state (as :func:`_rng_state` returned it); ValueError (one line) if it does not fit."""
    try:
        torch.set_rng_state(state["torch"].cpu())
        if device.type == "cuda" and "cuda" in state:
            torch.cuda.set_rng_state(state["cuda"].cpu(), device)
    except (RuntimeError, TypeError, KeyError, AttributeError) as e:
        raise ValueError(f"the saved RNG state does not fit this torch: {str(e).splitlines()[0] if str(e) else e!r}") \
            from None


def _bad_state(path: str, msg: str) -> ValueError:
    return ValueError(f"{path}: optimizer / EMA state does not fit the model: {msg}")


def _check_optimizer_state(saved: dict, path: str) -> None:
    """The saved optimizer state is a state dict whose per-parameter tensors (Adam's exp_avg,
    exp_avg_sq) are finite floating tensors (``Optimizer.load_state_dict`` would cast integer ones);
    their shapes are checked against the live parameters by :func:`check_optimizer_fits`."""
    opt = saved.get("optimizer")
    if not (isinstance(opt, dict) and isinstance(opt.get("state"), dict) and isinstance(opt.get("param_groups"), list)
            and all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in opt["param_groups"])):
        raise _bad_state(path, "its 'optimizer' entry is not an optimizer state dict ('state', 'param_groups')")
    for i, st in opt["state"].items():
        for k, v in (st.items() if isinstance(st, dict) else ()):
            if isinstance(v, torch.Tensor) and v.ndim > 0:
                if not v.is_floating_point():
                    raise _bad_state(path, f"optimizer state {k!r} of parameter {i} is {v.dtype}, not a floating tensor")
                if not bool(torch.isfinite(v).all()):
                    raise _bad_state(path, f"optimizer state {k!r} of parameter {i} holds NaN / inf")


def check_optimizer_fits(opt: torch.optim.Optimizer, path: str) -> None:
    """After ``opt.load_state_dict``: every per-parameter state tensor has its parameter's shape
    (the optimizer loads any shape, and the first update fails with "size of tensor a ... must
    match"). Raises ValueError naming ``path`` and the parameter's index, in parameter order."""
    params = [p for g in opt.param_groups for p in g["params"]]
    for i, p in enumerate(params):
        named = {k: v for k, v in opt.state.get(p, {}).items() if isinstance(v, torch.Tensor) and v.ndim > 0}
        shapes = {tuple(v.shape) for v in named.values()}
        if len(shapes) > 1:
            raise _bad_state(path, f"the optimizer state of parameter {i} mixes shapes: "
                             + ", ".join(f"{k} {tuple(v.shape)}" for k, v in named.items()))
        if shapes and shapes != {tuple(p.shape)}:
            raise _bad_state(path, f"the optimizer state of parameter {i} has shape {shapes.pop()}; the parameter "
                             f"has {tuple(p.shape)}")


def _check_resume_state(saved: dict, path: str, device: torch.device) -> None:
    """Raise ValueError (one line naming ``path``) if a checkpoint's optimizer, EMA or RNG state
    cannot be restored: caught before training starts instead of at the first update."""
    _check_optimizer_state(saved, path)
    model, ema = saved.get("model"), saved.get("ema")
    if not isinstance(model, dict):
        raise _bad_state(path, f"its 'model' entry is a {type(model).__name__}, not a dict of tensors")
    if isinstance(ema, dict):
        for k, v in ema.items():
            ref = model.get(k[len("module."):]) if isinstance(k, str) and k.startswith("module.") else None
            if isinstance(v, torch.Tensor) and isinstance(ref, torch.Tensor) and _dtype_kind(v.dtype) != _dtype_kind(
                    ref.dtype):
                raise _bad_state(path, f"EMA tensor {k!r} is {v.dtype}, the model's {ref.dtype}")
    rng = saved.get("rng")
    got = rng.get("torch") if isinstance(rng, dict) else None
    want = torch.get_rng_state()
    if not (isinstance(got, torch.Tensor) and got.dtype == want.dtype and got.shape == want.shape):
        what = f"a {got.dtype} tensor of shape {tuple(got.shape)}" if isinstance(got, torch.Tensor) else repr(got)[:60]
        raise ValueError(f"{path}: the saved RNG state does not fit this torch: rng['torch'] is {what}; expected a "
                         f"{want.dtype} tensor of shape {tuple(want.shape)} (as torch.get_rng_state() gives)")
    if device.type == "cuda" and isinstance(rng.get("cuda"), torch.Tensor):
        want = torch.cuda.get_rng_state(device)
        if rng["cuda"].dtype != want.dtype or rng["cuda"].shape != want.shape:
            raise ValueError(f"{path}: the saved RNG state does not fit this torch: rng['cuda'] has shape "
                             f"{tuple(rng['cuda'].shape)}; expected {tuple(want.shape)}")


# ---------------------------------------------------------------------------------- set-up steps
def _check_out_dir(cfg, rank: int, world: int, device: torch.device) -> None:
    """The output folder must be writable before anything runs; all ranks learn the verdict."""
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


def _load_saved(cfg, ckpt_path: str | None, world: int, device: torch.device) -> dict | None:
    """The checkpoint to resume from (or None), and ``cfg.micro_batches`` resolved: as given, else
    the saved run's, else the number of processes.

    Raises ValueError (one line naming the file) for a checkpoint that cannot be loaded
    (:func:`load_checkpoint`) or whose optimizer / EMA / RNG state cannot be restored
    (:func:`_check_resume_state`), before anything is trained."""
    saved = None
    parts = cfg.micro_batches
    if ckpt_path and not cfg.resume and os.path.exists(ckpt_path):
        raise ValueError(f"{ckpt_path} exists and resume=False: a new run would overwrite it; use another out_dir "
                         "or resume=True")
    if ckpt_path and cfg.resume and os.path.exists(ckpt_path):
        saved = load_checkpoint(ckpt_path, map_location=device)
        _check_resume_state(saved, ckpt_path, device)
        if parts is None:
            parts = saved["config"]["train"].get("micro_batches")
    if parts is None:
        parts = world
    if parts % world:
        raise ValueError(f"micro_batches {parts} must be a multiple of the number of processes {world}")
    cfg.micro_batches = parts
    return saved


def _status_line(cfg, saved: dict | None, rank: int) -> str | None:
    """Rank 0: print (to stderr, unless ``cfg.quiet``) and return the line saying that the run resumes
    from the checkpoint in ``cfg.out_dir``, or that it has nothing left to train and why; None for a new run."""
    if saved is None:
        return None
    step = int(saved["step"])
    if step >= cfg.steps:
        msg = (f"scoresde.train: nothing trained: the run in {cfg.out_dir} is already at step {step} and "
               f"steps={cfg.steps} asks for no more (pass steps > {step} to train further)")
    else:
        msg = f"scoresde.train: resuming from step {step} of {cfg.steps} in {cfg.out_dir}"
    if rank == 0 and not cfg.quiet:
        print(msg, file=sys.stderr, flush=True)
    return msg
