"""Checkpoints of the reference score-SDE PyTorch code as :class:`~scoresde.ScoreModel` s.

The reference code (``yang-song/score_sde_pytorch``) saves, in ``utils.save_checkpoint``,

    {"model": model.state_dict(), "ema": ema.state_dict(), "optimizer": ..., "step": int}

with the network wrapped in ``nn.DataParallel`` (every ``model`` key starts with ``module.``),
a float64 ``module.sigmas`` buffer, the layers in one flat ``module.all_modules.{i}`` list, NIN
weights stored (in, out), and ``ema = {"decay", "num_updates", "shadow_params"}``, where
``shadow_params`` is an *unnamed* list of the trainable parameters in ``parameters()`` order
(the Fourier embedding's ``W`` is not trainable and is not in it). Its own loader uses
``strict=False``, so a mismatch passes silently; :func:`load_reference_checkpoint` maps every
tensor by name onto :class:`~scoresde.models.NCSNpp` (same names, same order) and fails on the
first one that does not fit.

Reference: Song et al. 2021, "Score-Based Generative Modeling through SDEs"; the reference code's
``utils.py`` (``save_checkpoint`` / ``restore_checkpoint``), ``models/ema.py``, ``models/utils.py``
(``create_model``, ``get_score_fn``) and ``configs/``.
"""
from __future__ import annotations

import os
import pickle
import textwrap
from typing import Any

import torch

from .models.ncsnpp import NCSNpp
from .models.ncsnpp_configs import MODEL_CONFIGS, REFERENCE_CONFIGS, reference_config_name
from .score import ScoreModel
from .sde import SubVPSDE, VESDE, VPSDE

_SDES = {"VPSDE": VPSDE, "SubVPSDE": SubVPSDE, "VESDE": VESDE}
_PREFIX = "module."


def _strip_prefix(sd: dict, where: str) -> dict:
    """The ``model`` state dict without DataParallel's ``module.`` prefix (all keys, or none, carry it)."""
    keys = list(sd)
    for k in keys:
        if not isinstance(k, str):
            raise ValueError(f"{where}: 'model' has the key {k!r} ({type(k).__name__}); a state dict's keys are "
                             "parameter names (str)")
    prefixed = [k.startswith(_PREFIX) for k in keys]
    if all(prefixed):
        return {k[len(_PREFIX):]: v for k, v in sd.items()}
    if any(prefixed):
        bad = keys[prefixed.index(False)]
        raise ValueError(f"{where}: 'model' mixes keys with and without the '{_PREFIX}' prefix (e.g. {bad!r})")
    return dict(sd)


def _check_dtype(what: str, got: torch.Tensor, want: torch.Tensor, where: str) -> None:
    """A floating tensor of the net may only be filled from a floating one (an integer or complex one would be cast)."""
    if want.is_floating_point() and not got.is_floating_point():
        raise ValueError(f"{where}: {what} is {got.dtype}; the network's tensor there is {want.dtype} (a floating "
                         "dtype expected: integer or complex weights would be cast silently)")


def _match_state(net: NCSNpp, sd: dict, config: str, where: str) -> dict:
    """Check ``sd`` (prefix stripped) against net's state dict key by key; the loadable dict."""
    want = net.state_dict()
    for k, v in sd.items():
        if not isinstance(v, torch.Tensor):
            raise ValueError(f"{where}: 'model' entry module.{k} is a {type(v).__name__}, not a tensor")
    missing = [k for k in want if k not in sd]
    if missing:
        raise ValueError(f"{where}: 'model' lacks module.{missing[0]} (shape {tuple(want[missing[0]].shape)}), which "
                         f"{config} with these fields has ({len(missing)} missing in all): wrong config or overrides?")
    unexpected = [k for k in sd if k not in want]
    if unexpected:
        raise ValueError(f"{where}: 'model' has module.{unexpected[0]}, which {config} with these fields does not "
                         f"have ({len(unexpected)} unexpected in all): wrong config or overrides?")
    for k, v in want.items():
        if tuple(sd[k].shape) != tuple(v.shape):
            raise ValueError(f"{where}: 'model' entry module.{k} has shape {tuple(sd[k].shape)}; {config} with these "
                             f"fields expects {tuple(v.shape)} (check nf, ch_mult, num_res_blocks, image_size ...)")
        _check_dtype(f"'model' entry module.{k}", sd[k], v, where)
    return {k: sd[k] for k in want}


def _ema_state(net: NCSNpp, ckpt: dict, state: dict, where: str) -> dict:
    """``state`` with every trainable parameter replaced by its EMA shadow (matched by position)."""
    ema = ckpt.get("ema")
    if not isinstance(ema, dict) or "shadow_params" not in ema:
        raise ValueError(f"{where} has no 'ema' dict with 'shadow_params' "
                         "(pass use_ema=False for the online weights)")
    if not isinstance(ema["shadow_params"], (list, tuple)):
        raise ValueError(f"{where}: ema.shadow_params is a {type(ema['shadow_params']).__name__}; expected the list "
                         "of the EMA's tensors (pass use_ema=False for the online weights)")
    shadow = list(ema["shadow_params"])
    names = [n for n, p in net.named_parameters() if p.requires_grad]
    for i, (name, s) in enumerate(zip(names, shadow)):
        if not isinstance(s, torch.Tensor):
            raise ValueError(f"{where}: ema.shadow_params[{i}] is a {type(s).__name__}, not a tensor")
        if tuple(s.shape) != tuple(state[name].shape):
            raise ValueError(f"{where}: ema.shadow_params[{i}] has shape {tuple(s.shape)} but is matched to "
                             f"module.{name} {tuple(state[name].shape)} (the {i}-th trainable parameter): an entry is "
                             f"missing or extra before it ({len(shadow)} shadow params for {len(names)} trainable "
                             "parameters)")
        _check_dtype(f"ema.shadow_params[{i}] (module.{name})", s, state[name], where)
    if len(shadow) != len(names):
        first = names[len(shadow)] if len(shadow) < len(names) else f"ema.shadow_params[{len(names)}]"
        which = "missing (from module." + first + " on)" if len(shadow) < len(names) else "extra (" + first + ")"
        raise ValueError(f"{where}: ema.shadow_params has {len(shadow)} tensors for {len(names)} trainable parameters: "
                         f"entries {which}")
    return {**state, **dict(zip(names, shadow))}


def _check_finite(net: NCSNpp, state: dict, use_ema: bool, where: str) -> None:
    """Refuse a NaN / inf in any floating tensor about to be loaded (named as in the file)."""
    names = [n for n, p in net.named_parameters() if p.requires_grad] if use_ema else []
    label = {n: f"ema.shadow_params[{i}] (module.{n})" for i, n in enumerate(names)}
    for k, v in state.items():
        if (v.is_floating_point() or v.is_complex()) and not bool(torch.isfinite(v).all()):
            bad = v.numel() - int(torch.isfinite(v).sum())
            what = label.get(k) or "'model' entry module." + k
            raise ValueError(f"{where}: {what} holds {bad} non-finite "
                             f"value(s) (NaN or inf) of {v.numel()}; refusing to load it")


def _read(path: str | os.PathLike, where: str) -> dict:
    """The checkpoint's dict, read with weights_only=True; named errors for what is not one."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # not torch's advice to retry with weights_only=False: that would run the file's pickled code
        raise pickle.UnpicklingError(f"{os.fspath(path)!r} is not a readable reference checkpoint: not a torch "
                                     "file, or it holds Python objects that weights_only=True refuses") from None
    except Exception as e:  # noqa: BLE001 - a corrupt file raises KeyError, UnicodeDecodeError, RuntimeError ...
        lines = str(e).strip().splitlines()
        reason = type(e).__name__ + (": " + textwrap.shorten(lines[0], 160, placeholder=" ...") if lines else "")
        raise ValueError(f"{os.fspath(path)!r} is not a readable reference checkpoint (corrupt or truncated: "
                         f"{reason})") from None
    if not isinstance(ckpt, dict):
        raise ValueError(f"{os.fspath(path)!r} is not a reference checkpoint: expected a dict with 'model', 'ema', "
                         f"'optimizer', 'step'; got {type(ckpt).__name__}")
    if "model" not in ckpt:
        raise ValueError(f"{os.fspath(path)!r} is not a reference checkpoint: it has no 'model' (the network's state "
                         f"dict); its keys are {sorted(map(str, ckpt))[:8]}")
    if not isinstance(ckpt["model"], dict):
        raise ValueError(f"{where}: 'model' is a {type(ckpt['model']).__name__}; expected the network's state dict "
                         "(a dict of tensors)")
    return ckpt


def load_reference_checkpoint(path: str | os.PathLike, config: str, *, use_ema: bool = True,
                              **overrides: Any) -> ScoreModel:
    """A checkpoint of the reference score-SDE PyTorch code as a :class:`~scoresde.ScoreModel`.

    The network is :class:`~scoresde.models.NCSNpp` built from the transcribed config (see
    :data:`~scoresde.models.ncsnpp_configs.REFERENCE_CONFIGS`) and put in eval mode. The score
    is the reference's ``get_score_fn(sde, model, continuous=True)``:

    * VP / sub-VP (DDPM++, positional NCSN++): the network takes the label 999 t and predicts
      the noise; score = -net(x, 999 t) / sigma(t), with sigma(t) = sqrt(1 - alpha-bar(t)) for
      VP and 1 - alpha-bar(t) (no square root) for sub-VP. Returned as
      ``ScoreModel(net, sde, prediction="eps", time_input="label")``.
    * VE (NCSN++): the network takes sigma(t) = sigma_min (sigma_max / sigma_min)^t and divides
      its output by it (``scale_by_sigma``): that output is the score.
      ``ScoreModel(net, sde, prediction="score", time_input="sigma")``.

    SDEs as in the configs: VPSDE / SubVPSDE(beta_min=0.1, beta_max=20, N=1000),
    VESDE(sigma_min=0.01, sigma_max=50, N=1000). Data range: [-1, 1] for the centered (VP /
    sub-VP) configs; [0, 1] for VE (the network maps it to [-1, 1] itself).

    Arguments:
        path: the ``.pth`` file (``checkpoints/checkpoint_{k}.pth``), read with
            ``torch.load(weights_only=True)`` onto the CPU (move the model with ``.to``). The
            ``model`` keys carry DataParallel's ``module.`` prefix (all of them, or none).
        config: the config's path under the reference's ``configs/`` folder, e.g.
            "vp/cifar10_ddpmpp_continuous", "vp/cifar10_ddpmpp_deep_continuous",
            "subvp/cifar10_ddpmpp_continuous", "subvp/cifar10_ddpmpp_deep_continuous",
            "ve/cifar10_ncsnpp_continuous", "ve/cifar10_ncsnpp_deep_continuous" (also the VP /
            sub-VP "cifar10_ncsnpp{,_deep}_continuous"); "configs/" and ".py" are optional.
        use_ema: load the EMA weights (``ema.shadow_params``, what the reference evaluates and
            samples with); False loads the online weights of ``model``.
        overrides: :class:`~scoresde.models.NCSNpp` fields replacing the config's (``nf``,
            ``ch_mult``, ``num_res_blocks``, ``attn_resolutions``, ``image_size``, ...), for a
            checkpoint trained with a modified config.
    Returns:
        ScoreModel, ``model(x, t)`` the score (B, 3, H, W) at x (B, 3, H, W), t (B,) in (0, 1];
        its ``net`` the NCSNpp in eval mode. Checkpoint step: ``model.reference_step``.
    Raises:
        TypeError: config not a string; an override that is not an NCSNpp field.
        ValueError (one line, naming the file): unknown config (the message lists the valid
            ones); a corrupt or truncated file (whatever torch.load raises on it); the file not a
            dict with 'model' (a dict with str keys and tensor values) and, when use_ema, 'ema'
            with a ``shadow_params`` list; the first missing, unexpected or mis-shaped ``model``
            key (named, with the shape expected); an ``ema.shadow_params`` list whose length or
            shapes do not match the trainable parameters (the first entry that does not fit is
            named); an integer or complex tensor where the network's is floating; a NaN / inf in
            any floating tensor that would be loaded (named).
        FileNotFoundError: no file at path.
        pickle.UnpicklingError: not a torch file, or pickled objects that weights_only=True refuses
            (the message names the file; it never suggests weights_only=False).
    Reference: the reference code's ``utils.restore_checkpoint`` (which loads with
        ``strict=False``), ``models/ema.py ExponentialMovingAverage.copy_to``,
        ``models/utils.py get_score_fn``; Song et al. 2021, Sec. 3.4 and App. C, H.
    """
    key = reference_config_name(config)
    model_name, sde_name, sde_args, outputs_score = REFERENCE_CONFIGS[key]
    bad = sorted(set(overrides) - set(MODEL_CONFIGS[model_name]))
    if bad:
        raise TypeError(f"unknown NCSNpp field(s) {bad} in the overrides; valid fields are "
                        f"{sorted(MODEL_CONFIGS[model_name])}")
    if not os.path.isfile(os.fspath(path)):
        raise FileNotFoundError(f"no such reference checkpoint file: {os.fspath(path)}")
    where = f"checkpoint {os.fspath(path)!r}"
    ckpt = _read(path, where)
    net = NCSNpp.named(model_name, **overrides)
    state = _match_state(net, _strip_prefix(ckpt["model"], where), key, where)
    if use_ema:
        state = _ema_state(net, ckpt, state, where)
    _check_finite(net, state, use_ema, where)
    net.load_state_dict(state, strict=True)
    net.eval()
    sde = _SDES[sde_name](**sde_args)
    if outputs_score:
        model = ScoreModel(net, sde, prediction="score", time_input="sigma")
    else:
        model = ScoreModel(net, sde, prediction="eps", time_input="label")
    model.reference_step = ckpt.get("step")
    return model.eval()
