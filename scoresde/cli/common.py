"""What the ``scoresde`` subcommands share: status lines, threads, ``--data`` and loading a run."""
from __future__ import annotations

import os
import sys

import torch

from ..runs import resolve_checkpoint


def _log(args, msg: str) -> None:
    """Status lines go to stderr (stdout carries the results); --quiet silences them."""
    if not getattr(args, "quiet", False):
        print(msg, file=sys.stderr, flush=True)


def _threads(args=None):
    """Apply ``--threads`` (0 keeps torch's default, capped at the machine's cores)."""
    n = getattr(args, "threads", 0) if args is not None else 0
    if n < 0:
        raise ValueError(f"--threads must be >= 0; got {n}")
    if n > 0:
        torch.set_num_threads(n)
    elif torch.get_num_threads() > (os.cpu_count() or 1):
        torch.set_num_threads(os.cpu_count() or 1)


def load_data(spec: str, *, split: str = "train", seed: int = 0):
    """A :class:`scoresde.data.Dataset` from a ``--data`` value.

    "digits" -> the digits ``split``; a toy name -> 10 000 points (seed 0 for "train", a fresh
    seed for "test"); a .npy / .npz path -> ``data.from_array``; a folder -> ``data.image_folder``.
    Raises ValueError naming the valid forms.
    """
    from .. import data as D
    if spec == "digits":
        return D.digits(split)
    if spec in D.TOYS:
        return D.toy(spec, n=10000, seed=seed if split == "train" else seed + 1_000_003)
    if os.path.isdir(spec):
        return D.image_folder(spec)
    if spec.lower().endswith((".npy", ".npz")):
        return D.from_array(spec)
    if os.path.exists(spec):
        raise ValueError(f"data file {spec!r} is neither .npy / .npz nor a folder of images")
    raise ValueError(f"unknown data {spec!r}; valid values are 'digits', {list(D.TOYS)}, or a path to a .npy / .npz "
                     "file or an image folder")


def load_run(path: str, *, device="cpu", quiet=False):
    """(EMA score model in eval mode, sde, stored config, training Dataset or None) of a checkpoint."""
    from ..checkpoint import load_checkpoint
    from ..runs import load_score_model
    from .nets import build_net
    path = resolve_checkpoint(path)
    state = load_checkpoint(path)
    cfg = state.get("config")
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model"), dict) or "net" not in cfg["model"]:
        raise ValueError(f"{path} is a scoresde checkpoint without a model config")
    net = build_net(cfg["model"]["net"])
    del state
    # quiet: the "using the EMA weights" notice would precede a later one-line error; the commands
    # state the weights in their own output instead
    model, sde, cfg = load_score_model(path, net=net, map_location=device, quiet=True)
    from .. import data as D
    try:
        ds = D.load_dataset(cfg["data"])
    except (ValueError, FileNotFoundError, KeyError):
        ds = None
    return model, sde, cfg, ds


def _weights_note(cfg) -> str:
    if cfg.get("weights") == "pretrained":
        return f"scoresde: using the {cfg.get('source')}"
    w = "EMA" if cfg.get("weights") == "ema" else "online (no EMA in the checkpoint)"
    return f"scoresde: using the {w} weights of the checkpoint (step {cfg.get('step')})"


def _check_shape(ds, cfg, what="data"):
    want = list(cfg["data"].get("shape", []))
    if want and list(ds.shape) != want:
        raise ValueError(f"{what} have shape {list(ds.shape)} per sample but the model was trained on {want}")
