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

from .checkpoint import atomic_write, check_config, load_checkpoint
from .score import ScoreModel
from .sde import SDE, sde_from_config

__all__ = ["CHECKPOINT_NAME", "LOG_NAME", "CONFIG_NAME", "resolve_checkpoint", "load_score_model"]

CHECKPOINT_NAME = "checkpoint.pt"
LOG_NAME = "log.jsonl"
CONFIG_NAME = "config.json"


def _read_log(path: str, upto: int) -> None:
    """Drop log lines past step ``upto`` (written after the checkpoint by a run that died).

    Raises:
        ValueError: a line that is valid JSON but not an object with a numeric "step" (named
        with the file and its line number); lines cut by a kill (invalid JSON) are dropped.
    """
    if not os.path.isfile(path):
        return
    with open(path) as f:
        lines = f.readlines()
    keep = []
    for i, ln in enumerate(lines, 1):
        try:
            rec = json.loads(ln)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
        step = rec.get("step", 0) if isinstance(rec, dict) else None
        if isinstance(step, bool) or not isinstance(step, (int, float)):
            what = f"its 'step' is {step!r}" if isinstance(rec, dict) else f"it is a JSON {type(rec).__name__}"
            raise ValueError(f"{path}: line {i} is not a log record ({what}; each line must be a JSON object with a "
                             f"numeric 'step'): {ln.strip()[:60]!r}")
        if step <= upto:
            keep.append(ln)
    if len(keep) != len(lines):
        atomic_write(path, lambda f: f.write("".join(keep).encode()))


def _write_json(path: str, obj) -> None:
    """Write ``obj`` as JSON to ``path`` atomically.

    Raises:
        TypeError / ValueError: ``obj`` holds something JSON cannot encode (an object, a
        circular reference; named with the file); nothing is written, no temporary file is
        left, and ``path`` is left as it was.
    """
    try:
        text = json.dumps(obj, indent=2, sort_keys=True)
    except (TypeError, ValueError) as e:
        raise type(e)(f"{path}: cannot be written as JSON: {e}") from None
    atomic_write(path, lambda f: f.write(text.encode()))


def _load_weights(module: nn.Module, state: dict, path, what: str = "weights") -> None:
    """Load ``state`` into ``module`` (strict): ValueError naming ``path`` unless every tensor fits,
    in shape and in dtype kind (a bool, integer or complex tensor for a floating parameter, say, is
    refused instead of being cast)."""
    if not isinstance(state, dict):
        raise ValueError(f"{path}: the {what} are a {type(state).__name__}, not a dict of tensors")
    own = module.state_dict()
    for key, v in state.items():
        if key in own and isinstance(v, torch.Tensor):
            have, want = _dtype_kind(v.dtype), _dtype_kind(own[key].dtype)
            if have != want:
                raise ValueError(f"{path}: the {what} do not fit the network (tensor {key!r} is {v.dtype}, {have}; "
                                 f"the network's is {own[key].dtype}, {want})")
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0]
        raise ValueError(f"{path}: the {what} do not fit the network ({detail[:200]})") from None


def _dtype_kind(dtype: torch.dtype) -> str:
    if dtype == torch.bool:
        return "bool"
    if dtype.is_complex:
        return "complex"
    return "floating" if dtype.is_floating_point else "integer"


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


#: the entries of a checkpoint's config["model"] that :func:`load_score_model` needs
_MODEL_KEYS = ("net", "prediction", "time_input", "discrete", "learn_variance")


def _stored(path, field: str, build, *args, **kwargs):
    """``build(*args, **kwargs)`` on a checkpoint's stored config: its errors become one ValueError
    naming the file and the config field."""
    try:
        return build(*args, **kwargs)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        detail = f"no {e} entry" if isinstance(e, KeyError) else (str(e).splitlines() or [type(e).__name__])[0]
        raise ValueError(f"{path}: its stored config '{field}' cannot be used ({detail[:200]})") from None


def _stored_step(path, state: dict) -> int:
    """The checkpoint's "step" (0 if absent); ValueError naming the file unless it is an integer >= 0."""
    step = state.get("step", 0)
    if isinstance(step, torch.Tensor) and step.ndim == 0 and not step.dtype.is_floating_point:
        step = step.item()
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"{path}: its 'step' entry is {step!r}; expected an integer >= 0 (corrupt or foreign "
                         "checkpoint)")
    return step


def _build_score(path, cfg: dict, net, sde):
    """The (unloaded) ScoreModel and the stored SDE described by a checkpoint's config; ValueError
    naming the file and the field for a config that is incomplete or that the classes refuse."""
    stored_sde = _stored(path, "sde", sde_from_config, cfg["sde"])
    if sde is not None:
        check_config({"sde": cfg["sde"]}, {"sde": sde.config()}, path)
    mcfg = cfg["model"]
    missing = [k for k in _MODEL_KEYS if k not in mcfg] if isinstance(mcfg, dict) else []
    if not isinstance(mcfg, dict):
        bad = f"is a {type(mcfg).__name__}"
    elif missing:
        bad = f"has no {missing[0]!r} entry"
    elif not isinstance(mcfg["net"], dict):
        bad = f"has a 'net' entry that is a {type(mcfg['net']).__name__}"
    else:
        bad = None
    if bad:
        raise ValueError(f"{path}: its stored config 'model' {bad} (corrupt or foreign checkpoint; it must be a "
                         f"dict with {list(_MODEL_KEYS)}, 'net' a dict)")
    if net is None:
        if mcfg["net"].get("custom"):
            raise ValueError(f"{path} holds a custom network ({mcfg['net'].get('model')}); pass it as net=")
        from .models import model_from_config

        net = _stored(path, "model.net", model_from_config, mcfg["net"])
    elif callable(getattr(net, "config", None)):
        check_config({"net": mcfg["net"]}, {"net": json.loads(json.dumps(net.config()))}, path)
    score = _stored(path, "model", ScoreModel, net, sde if sde is not None else stored_sde,
                    prediction=mcfg["prediction"], time_input=mcfg["time_input"], discrete=mcfg["discrete"],
                    learn_variance=mcfg["learn_variance"])
    return score, stored_sde


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
        line naming the file): corrupt / foreign file, a stored config that is incomplete or
        that the SDE / network / ScoreModel classes refuse (the field named), a "step" that is
        not an integer >= 0, a config that does not match ``net`` or ``sde``, weights that do
        not fit the network (in shape, or in dtype kind: integer / bool / complex tensors for
        floating parameters), a custom network without ``net=``; also a bad ``map_location``
        (see :func:`scoresde.checkpoint.load_checkpoint`, which raises TypeError for one of
        another type).
    """
    path = resolve_checkpoint(path)
    state = load_checkpoint(path, map_location=map_location)
    cfg = state.get("config")
    if not isinstance(cfg, dict) or "model" not in cfg or "sde" not in cfg:
        raise ValueError(f"{path} is a scoresde checkpoint without a model / sde config")
    if cfg.get("kind") == "classifier":
        raise ValueError(f"{path} holds a noise-conditional classifier, not a score model; load it with "
                         "scoresde.classify.load_classifier")
    step = _stored_step(path, state)
    score, stored_sde = _build_score(path, cfg, net, sde)
    weights, sd = "online", state.get("model")
    ema = state.get("ema")
    if ema is not None and not isinstance(ema, dict):
        raise ValueError(f"{path}: its 'ema' entry is a {type(ema).__name__}, not a dict of tensors")
    if use_ema and ema is not None:
        sd = {k[len("module."):]: v for k, v in ema.items() if k.startswith("module.")}
        weights = "ema"
    _load_weights(score, sd, path, "EMA weights" if weights == "ema" else "weights")
    if map_location is None or isinstance(map_location, (str, torch.device)):  # not a dict / callable
        score.to(map_location)
    score.eval()
    if not quiet:
        if weights == "ema":
            n = int(ema.get("n_averaged", torch.tensor(0)))
            decay = cfg["train"].get("ema_decay") if isinstance(cfg.get("train"), dict) else None
            msg = f"using the EMA weights ({n} updates, decay {decay}) of {path}; use_ema=False for the online weights"
        elif use_ema:
            msg = f"{path} holds no EMA weights; using the online weights"
        else:
            msg = f"using the online (non-EMA) weights of {path}, as requested"
        print("scoresde: " + msg, file=sys.stderr)
    out = dict(cfg)
    out.update({"weights": weights, "step": step})
    return score, (sde if sde is not None else stored_sde), out
