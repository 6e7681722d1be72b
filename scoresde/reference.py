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
import zipfile
from typing import Any

import torch

from .models.ncsnpp import NCSNpp
from .models.ncsnpp_configs import MODEL_CONFIGS, REFERENCE_CONFIGS, reference_config_name
from .score import ScoreModel
from .sde import SubVPSDE, VESDE, VPSDE

_SDES = {"VPSDE": VPSDE, "SubVPSDE": SubVPSDE, "VESDE": VESDE}
_PREFIX = "module."


def _strip_prefix(sd: dict) -> dict:
    """The ``model`` state dict without DataParallel's ``module.`` prefix (all keys, or none, carry it)."""
    keys = list(sd)
    prefixed = [k.startswith(_PREFIX) for k in keys]
    if all(prefixed):
        return {k[len(_PREFIX):]: v for k, v in sd.items()}
    if any(prefixed):
        bad = keys[prefixed.index(False)]
        raise ValueError(f"checkpoint 'model' mixes keys with and without the '{_PREFIX}' prefix (e.g. {bad!r})")
    return dict(sd)


def _match_state(net: NCSNpp, sd: dict, config: str) -> dict:
    """Check ``sd`` (prefix stripped) against net's state dict key by key; the loadable dict."""
    want = net.state_dict()
    for k, v in sd.items():
        if not isinstance(v, torch.Tensor):
            raise ValueError(f"checkpoint 'model' entry module.{k} is a {type(v).__name__}, not a tensor")
    missing = [k for k in want if k not in sd]
    if missing:
        raise ValueError(f"checkpoint 'model' lacks module.{missing[0]} (shape {tuple(want[missing[0]].shape)}), which "
                         f"{config} with these fields has ({len(missing)} missing in all): wrong config or overrides?")
    unexpected = [k for k in sd if k not in want]
    if unexpected:
        raise ValueError(f"checkpoint 'model' has module.{unexpected[0]}, which {config} with these fields does not "
                         f"have ({len(unexpected)} unexpected in all): wrong config or overrides?")
    for k, v in want.items():
        if tuple(sd[k].shape) != tuple(v.shape):
            raise ValueError(f"checkpoint 'model' entry module.{k} has shape {tuple(sd[k].shape)}; {config} with these "
                             f"fields expects {tuple(v.shape)} (check nf, ch_mult, num_res_blocks, image_size ...)")
    return {k: sd[k] for k in want}


def _ema_state(net: NCSNpp, ckpt: dict, state: dict) -> dict:
    """``state`` with every trainable parameter replaced by its EMA shadow (matched by position)."""
    ema = ckpt.get("ema")
    if not isinstance(ema, dict) or "shadow_params" not in ema:
        raise ValueError("checkpoint has no 'ema' dict with 'shadow_params' "
                         "(pass use_ema=False for the online weights)")
    shadow = list(ema["shadow_params"])
    names = [n for n, p in net.named_parameters() if p.requires_grad]
    for i, (name, s) in enumerate(zip(names, shadow)):
        if not isinstance(s, torch.Tensor) or tuple(s.shape) != tuple(state[name].shape):
            got = tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__
            raise ValueError(f"ema.shadow_params[{i}] has shape {got} but is matched to module.{name} "
                             f"{tuple(state[name].shape)} (the {i}-th trainable parameter): an entry is missing or "
                             f"extra before it ({len(shadow)} shadow params for {len(names)} trainable parameters)")
    if len(shadow) != len(names):
        first = names[len(shadow)] if len(shadow) < len(names) else f"ema.shadow_params[{len(names)}]"
        which = "missing (from module." + first + " on)" if len(shadow) < len(names) else "extra (" + first + ")"
        raise ValueError(f"ema.shadow_params has {len(shadow)} tensors for {len(names)} trainable parameters: "
                         f"entries {which}")
    return {**state, **dict(zip(names, shadow))}


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
        ValueError: unknown config (the message lists the valid ones); a corrupt or truncated
            file; the file not a dict with
            'model' (and 'ema' when use_ema); the first missing, unexpected or mis-shaped
            ``model`` key (named, with the shape expected); an ``ema.shadow_params`` list whose
            length or shapes do not match the trainable parameters (the first entry that does
            not fit is named).
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
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # not torch's advice to retry with weights_only=False: that would run the file's pickled code
        raise pickle.UnpicklingError(f"{os.fspath(path)!r} is not a readable reference checkpoint: not a torch "
                                     "file, or it holds Python objects that weights_only=True refuses") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as e:
        reason = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        raise ValueError(f"{os.fspath(path)!r} is not a readable reference checkpoint (corrupt or truncated: "
                         f"{reason})") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        raise ValueError(f"{os.fspath(path)!r} is not a reference checkpoint: expected a dict with 'model', 'ema', "
                         f"'optimizer', 'step'; got {type(ckpt).__name__}"
                         + (f" with keys {sorted(ckpt)}" if isinstance(ckpt, dict) else ""))
    net = NCSNpp.named(model_name, **overrides)
    state = _match_state(net, _strip_prefix(ckpt["model"]), key)
    if use_ema:
        state = _ema_state(net, ckpt, state)
    net.load_state_dict(state, strict=True)
    net.eval()
    sde = _SDES[sde_name](**sde_args)
    if outputs_score:
        model = ScoreModel(net, sde, prediction="score", time_input="sigma")
    else:
        model = ScoreModel(net, sde, prediction="eps", time_input="label")
    model.reference_step = ckpt.get("step")
    return model.eval()
