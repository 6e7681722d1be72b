"""Pretrained diffusers ``UNet2DModel`` networks as scoresde score models (issue 15, item 1).

:func:`from_diffusers` turns a diffusers ``UNet2DModel`` (an instance, a folder written by
``save_pretrained``, or a hub id) into a :class:`~scoresde.ScoreModel` on the SDE its scheduler
config describes. diffusers is an optional dependency (the ``pretrained`` extra), imported only
when :func:`from_diffusers` is called.

Reference: Ho et al. 2020, "Denoising Diffusion Probabilistic Models" (eps on integer steps);
Song et al. 2021, "Score-Based Generative Modeling through SDEs" (NCSN++, VE SDE); diffusers'
``UNet2DModel`` (``src/diffusers/models/unets/unet_2d.py``) and its schedulers.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from .score import ScoreModel
from .sde import SDE, VESDE, VPSDE

EXTRA = "pretrained"
#: prediction_type of a diffusers scheduler config -> ScoreModel's prediction
PREDICTION_TYPES = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
#: defaults when no scheduler config is found (those of diffusers' DDPMScheduler / ScoreSdeVeScheduler)
VP_DEFAULTS = {"num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02, "beta_schedule": "linear",
               "prediction_type": "epsilon"}
VE_DEFAULTS = {"num_train_timesteps": 2000, "sigma_min": 0.01, "sigma_max": 1348.0}
SCHEDULER_FILE = "scheduler_config.json"


def _import_diffusers():
    try:
        import diffusers
    except ImportError as err:
        raise ImportError("scoresde.from_diffusers needs the optional dependency diffusers (>= 0.25): install the "
                          f"'{EXTRA}' extra, pip install 'scoresde[{EXTRA}]' (or pip install diffusers)") from err
    return diffusers


class DiffusersUNet(nn.Module):
    """Adapter of a diffusers ``UNet2DModel``: ``forward(x, t_input, y=None) = unet(x, t_input).sample``.

    x is cast to the UNet's dtype and the output back to x's dtype; the time input goes in float32
    (float64 for a float64 UNet), or as int64 for a ``"learned"`` time embedding (an
    ``nn.Embedding`` of the step). ``y`` is passed as diffusers' ``class_labels``.

    Arguments:
        unet: a diffusers ``UNet2DModel``.
    Shapes:
        x (B, C, H, W); t_input (B,); output (B, C_out, H, W).
    """

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet
        self.time_embedding_type = unet.config.time_embedding_type

    def forward(self, x: torch.Tensor, t_input: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        dtype = self.unet.dtype
        if self.time_embedding_type == "learned":
            time = t_input.round().long()
        else:
            time = t_input.to(torch.float64 if dtype == torch.float64 else torch.float32)
        out = self.unet(x.to(dtype), time, class_labels=y).sample
        return out.to(x.dtype)


def _read_json(path: Path) -> dict:
    with open(path) as f:
        return json.load(f)


def _is_hub_id(name: str) -> bool:
    """'org/name' or 'name' (no leading '/', '.', '~', at most one '/'): passed to from_pretrained."""
    return bool(name) and name[0] not in "/.~" and name.count("/") <= 1 and "\\" not in name


def _load(unet, diffusers, load_kwargs) -> tuple[nn.Module, dict | None, str]:
    """(UNet2DModel, scheduler config or None, where the config came from)."""
    if hasattr(unet, "unet") and hasattr(unet, "scheduler"):  # a diffusers pipeline object
        unet, cfg = unet.unet, dict(unet.scheduler.config)
        return unet, cfg, "the pipeline's scheduler"
    if isinstance(unet, nn.Module):
        if load_kwargs:
            raise TypeError(f"from_pretrained keyword arguments {sorted(load_kwargs)} given with a UNet2DModel "
                            "instance; they apply only to a folder or hub id")
        return unet, None, "none"
    if not isinstance(unet, (str, os.PathLike)):
        raise TypeError("unet must be a diffusers UNet2DModel, a pipeline, a folder written by save_pretrained or "
                        f"a hub id; got {type(unet).__name__}")
    cls, path = diffusers.UNet2DModel, Path(unet).expanduser()
    if path.is_dir():
        if (path / "unet" / "config.json").is_file():  # pipeline layout: unet/ + scheduler/
            found = [path / "scheduler" / SCHEDULER_FILE]
            net = cls.from_pretrained(path / "unet", **load_kwargs)
        elif (path / "config.json").is_file():  # bare unet folder, maybe the unet/ of a pipeline
            found = [path / SCHEDULER_FILE, path.parent / "scheduler" / SCHEDULER_FILE]
            net = cls.from_pretrained(path, **load_kwargs)
        else:
            raise FileNotFoundError(f"{str(path)!r} holds neither config.json (a UNet2DModel folder) nor "
                                    "unet/config.json (a pipeline folder)")
        for f in found:
            if f.is_file():
                return net, _read_json(f), str(f)
        return net, None, "none"
    if path.exists():
        raise ValueError(f"{str(path)!r} is a file; pass the folder written by save_pretrained")
    name = os.fspath(unet)
    if not _is_hub_id(name):
        raise FileNotFoundError(f"no folder {name!r} (and it is not a hub id of the form 'org/name')")
    try:  # hub: a pipeline repository (unet/, scheduler/) or a bare model repository
        net, sub = cls.from_pretrained(name, subfolder="unet", **load_kwargs), "scheduler"
    except (OSError, EnvironmentError):
        net, sub = cls.from_pretrained(name, **load_kwargs), None
    for subfolder in ([sub] if sub else []) + [None]:
        try:
            return net, dict(diffusers.DDPMScheduler.load_config(name, subfolder=subfolder)), f"hub {name}"
        except (OSError, EnvironmentError, ValueError):
            continue
    return net, None, "none"


def _scheduler_config(scheduler) -> dict:
    """A scheduler argument (instance, config mapping, or path to its JSON / folder) as a dict."""
    if hasattr(scheduler, "config"):
        return dict(scheduler.config)
    if isinstance(scheduler, dict):
        return dict(scheduler)
    if isinstance(scheduler, (str, os.PathLike)):
        p = Path(scheduler).expanduser()
        return _read_json(p / SCHEDULER_FILE if p.is_dir() else p)
    raise TypeError(f"scheduler must be a diffusers scheduler, its config (a dict) or a path; got "
                    f"{type(scheduler).__name__}")


def _is_ve_config(cfg: dict) -> bool:
    return "ScoreSdeVe" in str(cfg.get("_class_name", "")) or ("sigma_max" in cfg and "beta_start" not in cfg)


def vp_from_config(cfg: dict) -> VPSDE:
    """The :class:`~scoresde.VPSDE` of a diffusers DDPM-family scheduler config.

    "linear": beta_min = beta_start N, beta_max = beta_end N (the table linspace(beta_start,
    beta_end, N)); "squaredcos_cap_v2": the cosine schedule; N = num_train_timesteps.

    Raises:
        ValueError: a VE (ScoreSdeVe) config, ``trained_betas``, ``rescale_betas_zero_snr`` or another
            beta_schedule ("scaled_linear", "sigmoid"): no scoresde VPSDE has that table; pass ``sde``.
    """
    if _is_ve_config(cfg):
        raise ValueError("a VE scheduler config (ScoreSdeVeScheduler) was given for a positional-embedding "
                         "(DDPM) UNet; pass a DDPM-family scheduler config or sde=")
    cfg = {**VP_DEFAULTS, **{k: v for k, v in cfg.items() if v is not None}}
    for key in ("trained_betas", "rescale_betas_zero_snr"):
        if cfg.get(key):
            raise ValueError(f"the scheduler config sets {key}: no scoresde VPSDE has that table; pass sde=")
    N, schedule = int(cfg["num_train_timesteps"]), cfg["beta_schedule"]
    if schedule == "linear":
        return VPSDE(beta_min=float(cfg["beta_start"]) * N, beta_max=float(cfg["beta_end"]) * N, N=N)
    if schedule == "squaredcos_cap_v2":
        return VPSDE(N=N, schedule="cosine")
    raise ValueError(f"beta_schedule {schedule!r} of the scheduler config has no scoresde VPSDE (supported: "
                     "'linear', 'squaredcos_cap_v2'); pass sde=")


def ve_from_config(cfg: dict) -> VESDE:
    """The :class:`~scoresde.VESDE` of a ScoreSdeVeScheduler config: sigma_min, sigma_max, N = num_train_timesteps.

    Raises:
        ValueError: a DDPM-family config (beta_start, no sigma_max) given for a Fourier-embedding UNet.
    """
    if not _is_ve_config(cfg) and ("beta_start" in cfg or "beta_schedule" in cfg):
        raise ValueError("a DDPM-family scheduler config (beta_start / beta_schedule) was given for a Fourier-"
                         "embedding (NCSN++, VE) UNet; pass a ScoreSdeVeScheduler config or sde=")
    cfg = {**VE_DEFAULTS, **{k: v for k, v in cfg.items() if v is not None}}
    return VESDE(sigma_min=float(cfg["sigma_min"]), sigma_max=float(cfg["sigma_max"]),
                 N=int(cfg["num_train_timesteps"]))


def from_diffusers(unet, sde: SDE | None = None, *, scheduler=None, prediction: str | None = None,
                   time_input: str | None = None, discrete: bool | None = None, **load_kwargs) -> ScoreModel:
    """A diffusers ``UNet2DModel`` as a :class:`~scoresde.ScoreModel` on its SDE.

    Two kinds of UNet, told apart by ``unet.config.time_embedding_type``:

    * "positional" (or "learned"): a DDPM UNet that takes the integer step i = 0..N-1 and predicts
      eps (or v / x0). It becomes ``ScoreModel(net, sde, discrete=True, prediction=...)``, whose
      time input is i = ``sde.t_to_index(t)`` and whose score is -eps / sqrt(1 - alpha-bar_i)
      from the DDPM table (Ho et al. 2020, Eq. (11)). The SDE is a :class:`~scoresde.VPSDE`:
      "linear" betas give beta_min = beta_start N, beta_max = beta_end N (so the table is
      diffusers' linspace(beta_start, beta_end, N), computed in float64), "squaredcos_cap_v2"
      gives ``schedule="cosine"`` (whose chain stops at T = 0.9946: 994 of 1000 steps, where
      diffusers walks all 1000), N = num_train_timesteps; ``prediction_type`` "epsilon" / "v_prediction"
      / "sample" gives prediction "eps" / "v" / "x0".
    * "fourier": diffusers' NCSN++ (Song et al. 2021). It takes sigma as its timestep and divides
      its output by it, so ``unet(x, sigma).sample`` is the VE score; ``center_input_sample``
      (the reference's x -> 2x - 1 on [0, 1] data) is applied by the UNet itself. It becomes
      ``ScoreModel(net, sde, prediction="score", time_input="sigma")`` on a
      :class:`~scoresde.VESDE` with the ScoreSdeVeScheduler config's sigma_min, sigma_max and
      N = num_train_timesteps.

    Where the SDE comes from, first found wins: ``sde``; ``scheduler``; the scheduler config
    beside the UNet (``scheduler/scheduler_config.json`` of a pipeline folder ``unet/`` +
    ``scheduler/``; ``scheduler_config.json`` in a bare UNet folder or ``../scheduler/`` beside
    it; a pipeline object's scheduler; a hub repository's); else, with a warning, the defaults of
    diffusers' DDPMScheduler (N = 1000, betas 1e-4 .. 0.02 linear, i.e. ``VPSDE()``, eps) or
    ScoreSdeVeScheduler (N = 2000, sigma 0.01 .. 1348). ``prediction_type`` is read from a
    scheduler config even when ``sde`` is given. Sampler settings of the config (``clip_sample``,
    timestep spacing, ``sampling_eps``, ``snr``) are not part of the model: they are recorded in
    ``model.pretrained_info`` and chosen in :func:`scoresde.sample` (``clip_x0``, ``skip``, ``eps``).

    Arguments:
        unet: a ``UNet2DModel``; a diffusers pipeline with ``.unet`` and ``.scheduler``; a local
            folder written by ``save_pretrained`` (a pipeline folder or a bare UNet folder, no
            network access); or a hub id ('org/name'), passed to ``from_pretrained`` (works only
            where the hub is reachable).
        sde: the SDE to use instead of the scheduler config's.
        scheduler: a diffusers scheduler, its config (dict) or a path to its JSON (or its folder).
        prediction, time_input, discrete: override what the UNet kind and the config imply (see
            :class:`~scoresde.ScoreModel`).
        **load_kwargs: passed to ``UNet2DModel.from_pretrained`` (``torch_dtype``, ``revision``,
            ``local_files_only``, ...); only with a folder or hub id.
    Returns:
        a :class:`~scoresde.ScoreModel` whose ``net`` is a :class:`DiffusersUNet` around the UNet
        (in eval mode when loaded here), with ``pretrained_info`` = {"kind": "ddpm" | "ncsnpp",
        "sde_from": "argument" | "scheduler" | "defaults", "scheduler_config": dict or None,
        "scheduler_source": str}. A UNet with out_channels = 2 in_channels gets
        ``learn_variance=True`` (the variance channels as Improved DDPM's interpolation, diffusers'
        "learned_range").
    Shapes:
        the model maps x (B, C, H, W), t (B,) in [0, T] to the score (B, C, H, W); data in the
        UNet's range ([-1, 1] for DDPM models; [0, 1] for NCSN++ models with ``center_input_sample``).
    Raises:
        ImportError: diffusers is not installed (install the ``pretrained`` extra).
        FileNotFoundError: a local path that does not exist or holds no UNet config.
        TypeError: ``unet`` / ``scheduler`` of an unsupported type; ``load_kwargs`` with an instance.
        ValueError: an unknown ``time_embedding_type`` or ``prediction_type``; a scheduler config of
            the other kind (VE for a DDPM UNet or the reverse) or with a table no scoresde SDE has
            (``trained_betas``, "scaled_linear", ...); out_channels neither C nor 2C.
    Reference: Ho et al. 2020, Eq. (11); Song et al. 2021, Sec. 3.4 and App. C (NCSN++, VE SDE).
    """
    diffusers = _import_diffusers()
    net, cfg, source = _load(unet, diffusers, load_kwargs)
    if scheduler is not None:
        cfg, source = _scheduler_config(scheduler), "argument"
    kind = net.config.time_embedding_type
    if kind not in ("positional", "learned", "fourier"):
        raise ValueError(f"unknown time_embedding_type {kind!r} of the UNet; expected 'positional', 'learned' "
                         "or 'fourier'")
    ve = kind == "fourier"
    sde_from = "argument" if sde is not None else ("scheduler" if cfg is not None else "defaults")
    if sde is None:
        if cfg is None:
            warnings.warn("no scheduler config found for the UNet and no sde given: using diffusers' "
                          + ("ScoreSdeVeScheduler defaults, VESDE(sigma_min=0.01, sigma_max=1348, N=2000)" if ve
                             else "DDPMScheduler defaults, VPSDE() (N=1000, betas 1e-4 .. 0.02 linear), eps"),
                          stacklevel=2)
        sde = ve_from_config(cfg or {}) if ve else vp_from_config(cfg or {})
    if prediction is None:
        if ve:
            prediction = "score"
        else:
            ptype = (cfg or {}).get("prediction_type") or "epsilon"
            if ptype not in PREDICTION_TYPES:
                raise ValueError(f"prediction_type {ptype!r} of the scheduler config is not supported; expected "
                                 f"one of {list(PREDICTION_TYPES)}")
            prediction = PREDICTION_TYPES[ptype]
    c_in, c_out = net.config.in_channels, net.config.out_channels
    if c_out not in (c_in, 2 * c_in):
        raise ValueError(f"the UNet has out_channels={c_out} for in_channels={c_in}; expected {c_in} (a prediction) "
                         f"or {2 * c_in} (a prediction and learned variance)")
    if discrete is None:
        discrete = not ve
    if time_input is None and ve:
        time_input = "sigma"
    model = ScoreModel(DiffusersUNet(net), sde, prediction=prediction, time_input=time_input, discrete=discrete,
                       learn_variance=c_out == 2 * c_in)
    model.pretrained_info = {"kind": "ncsnpp" if ve else "ddpm", "sde_from": sde_from,
                             "scheduler_config": cfg, "scheduler_source": source}
    return model
