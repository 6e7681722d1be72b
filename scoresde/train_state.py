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
    torch.set_rng_state(state["torch"].cpu())
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


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
    the saved run's, else the number of processes."""
    saved = None
    parts = cfg.micro_batches
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
