"""A run folder: its file names, the files the training loop keeps there, and loading its model.

A run's ``out_dir`` holds ``checkpoint.pt`` (:mod:`scoresde.checkpoint`'s format, replaced
atomically), ``log.jsonl`` (one JSON object per line) and ``config.json`` (the run's config).

* :func:`resolve_checkpoint`: the checkpoint file named by a file or a run folder.
* :func:`load_score_model`: the score model of a checkpoint, EMA weights by default.
"""
from __future__ import annotations

import json
import os
import sys

import torch
from torch import nn

from .checkpoint import check_config, load_checkpoint
from .score import ScoreModel
from .sde import SDE, sde_from_config

__all__ = ["CHECKPOINT_NAME", "LOG_NAME", "CONFIG_NAME", "resolve_checkpoint", "load_score_model"]

CHECKPOINT_NAME = "checkpoint.pt"
LOG_NAME = "log.jsonl"
CONFIG_NAME = "config.json"


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


def _load_weights(module: nn.Module, state: dict, path) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0]
        raise ValueError(f"{path}: the weights do not fit the network ({detail[:200]})") from None


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
    if cfg.get("kind") == "classifier":
        raise ValueError(f"{path} holds a noise-conditional classifier, not a score model; load it with "
                         "scoresde.classify.load_classifier")
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
