"""The command line under ``torchrun``: which process this is, and who prints.

``torchrun --nproc_per_node=K -m scoresde <command>`` starts K copies of the command.
``likelihood`` and ``sample`` split their work across them (:func:`start` creates the process
group; :func:`scoresde.distributed.shard_evaluate` with ``aligned=True`` gives each process whole
batches, each seeded by its global index, so the numbers do not depend on K); ``train`` and
``train-classifier`` run data-parallel in the library. Whatever the command, only rank 0 prints
results, status lines, bars and warnings and writes files (:func:`scoresde.cli.main` makes the
other ranks ``--quiet``); an error is printed by every process that hits it. ``compare``,
``inpaint`` and ``demo`` do not split their work and refuse to run under torchrun rather than
compute everything K times.
"""
from __future__ import annotations

import os

__all__ = ["env_rank", "env_world", "is_main", "check_single", "start", "finish", "SPLITS", "SINGLE"]

#: commands whose work is split across torchrun's processes
SPLITS = ("likelihood", "sample", "train", "train-classifier")
#: commands that run in one process only
SINGLE = ("compare", "inpaint", "demo")


def env_rank() -> int:
    """This process's rank under torchrun (RANK), 0 outside it.

    Returns:
        int, >= 0.
    """
    return int(os.environ.get("RANK", "0") or 0)


def env_world() -> int:
    """The number of processes torchrun started (WORLD_SIZE), 1 outside it.

    Returns:
        int, >= 1.
    """
    return max(1, int(os.environ.get("WORLD_SIZE", "1") or 1))


def is_main() -> bool:
    """Whether this process prints and writes: rank 0 (or no torchrun).

    Returns:
        bool.
    """
    return env_rank() == 0


def check_single(command: str) -> None:
    """Refuse a command that does not split its work when torchrun started several processes.

    Arguments:
        command: the subcommand's name.
    Returns:
        None.
    Raises:
        ValueError: WORLD_SIZE > 1 for one of :data:`SINGLE`, naming the commands that do split.
    """
    if command in SINGLE and env_world() > 1:
        raise ValueError(f"{command} runs in one process and would repeat all its work on each of the "
                         f"{env_world()} processes torchrun started; run it without torchrun (under torchrun: "
                         f"{', '.join(SPLITS)})")


def start(args) -> tuple[int, int]:
    """Join torchrun's process group for a command that splits its work (once per process).

    Creates the default group with :func:`scoresde.distributed.setup_distributed` (gloo on the
    CPU, nccl with ``--device cuda``: each process then uses cuda:LOCAL_RANK, written back to
    ``args.device``). Outside torchrun it does nothing.

    Arguments:
        args: the parsed command line (``device`` is read and may be replaced).
    Returns:
        (rank, world size): (0, 1) outside torchrun.
    Raises:
        ValueError: ``--device cuda`` without CUDA (from ``setup_distributed``).
    Reference:
        Karras et al. 2022 (EDM), ``generate.py``: batches dealt to the ranks, per-seed noise.
    """
    if env_world() <= 1:
        return 0, 1
    from ..distributed import setup_distributed
    device = getattr(args, "device", None)
    rank, world, dev = setup_distributed(device)
    if device is not None:
        args.device = str(dev)
    return rank, world


def finish() -> None:
    """Leave the process group :func:`start` joined (nothing outside torchrun).

    Returns:
        None.
    """
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
