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

import itertools
import json
import os
import re
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
TIME_EMBEDDINGS = ("positional", "learned", "fourier")
_JSON_TYPES = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean",
               type(None): "null"}
#: diffusers' shape-mismatch messages (load_state_dict's; the accelerate / meta-device loader's)
_SHAPE_ERRORS = (re.compile(r"size mismatch for (?P<key>[^:\s]+): copying a param with shape torch\.Size\("
                            r"(?P<got>\[[^\]]*\])\) from checkpoint, the shape in current model is torch\.Size\("
                            r"(?P<want>\[[^\]]*\])\)"),
                 re.compile(r"because (?P<key>\S+) expected shape torch\.Size\((?P<want>\[[^\]]*\])\), but got "
                            r"torch\.Size\((?P<got>\[[^\]]*\])\)"))


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


def _read_json(path: Path, what: str = "scheduler config") -> dict:
    """The JSON object in ``path``; FileNotFoundError / ValueError naming the file otherwise."""
    if not path.is_file():
        raise FileNotFoundError(f"no {what} file {str(path)!r}" + (" (a folder)" if path.is_dir() else ""))
    try:
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{what} {str(path)!r} is not valid JSON: {err}") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{what} {str(path)!r} holds {_JSON_TYPES.get(type(cfg), type(cfg).__name__)}; expected "
                         "a JSON object (a mapping of fields)")
    return cfg


def _unet_config(folder: Path) -> None:
    """Read ``folder/config.json`` first: a named error for a corrupt file or time embedding diffusers would
    fail on (it raises UnboundLocalError for an unknown ``time_embedding_type``)."""
    path = folder / "config.json"
    kind = _read_json(path, "UNet config").get("time_embedding_type", "positional")
    if kind not in TIME_EMBEDDINGS:
        raise ValueError(f"unknown time_embedding_type {kind!r} in {str(path)!r}; expected one of "
                         f"{list(TIME_EMBEDDINGS)}")


def _weights_file(folder: Path, load_kwargs: dict) -> str:
    """The weights file from_pretrained reads in ``folder``, quoted for messages; the folder if none is found."""
    variant = f".{load_kwargs['variant']}" if load_kwargs.get("variant") else ""
    exts = ("bin",) if load_kwargs.get("use_safetensors") is False else ("safetensors", "bin")
    for ext in exts:
        for name in (f"diffusion_pytorch_model{variant}.{ext}", f"diffusion_pytorch_model{variant}.{ext}.index.json"):
            if (folder / name).is_file():
                return repr(str(folder / name))
    return repr(str(folder))


def _shape_error(err: Exception) -> tuple[str, tuple, tuple] | None:
    """(key, shape in the file, shape the UNet expects) from diffusers' size-mismatch error, else None."""
    for pattern in _SHAPE_ERRORS:
        m = pattern.search(str(err))
        if m:
            got, want = (tuple(int(d) for d in m[g][1:-1].split(",") if d.strip()) for g in ("got", "want"))
            return m["key"], got, want
    return None


def _check_loaded(net: nn.Module, info: dict, where: str) -> None:
    """Refuse weights that leave UNet tensors uninitialised, do not fit it, or are not finite."""
    order = {k: i for i, k in enumerate(net.state_dict())}
    missing = sorted(info.get("missing_keys") or [], key=lambda k: (order.get(k, len(order)), k))
    if missing:
        raise ValueError(f"{where} lacks the UNet weight {missing[0]!r} ({len(missing)} missing in all; diffusers "
                         "would leave them uninitialised): the file is incomplete or does not fit config.json")
    unexpected = sorted(info.get("unexpected_keys") or [])
    if unexpected:
        raise ValueError(f"{where} has {unexpected[0]!r}, which the UNet of config.json does not have "
                         f"({len(unexpected)} unexpected in all): the file does not fit config.json")
    for key, got, want in info.get("mismatched_keys") or []:
        raise ValueError(f"{where}: {key} has shape {tuple(got)}; the UNet of config.json expects {tuple(want)}")
    for name, t in itertools.chain(net.named_parameters(), net.named_buffers()):
        if (t.is_floating_point() or t.is_complex()) and not t.is_meta and not bool(torch.isfinite(t).all()):
            bad = t.numel() - int(torch.isfinite(t).sum())
            raise ValueError(f"{where}: {name} holds {bad} non-finite value(s) (NaN or inf) of {t.numel()}; "
                             "refusing to load it")


def _from_pretrained(cls, name, where: str, **load_kwargs) -> nn.Module:
    """``cls.from_pretrained(name, **load_kwargs)`` with its loading info checked (see _check_loaded)."""
    try:
        out = cls.from_pretrained(name, **{**load_kwargs, "output_loading_info": True})
    except (RuntimeError, ValueError) as err:
        shape = _shape_error(err)
        if shape is None:
            raise
        raise ValueError(f"{where}: {shape[0]} has shape {shape[1]}; the UNet of config.json expects {shape[2]} "
                         "(the weights do not fit the config)") from None
    net, info = out if isinstance(out, tuple) else (out, {})
    _check_loaded(net, info, where)
    return net


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
            found, folder = [path / "scheduler" / SCHEDULER_FILE], path / "unet"
        elif (path / "config.json").is_file():  # bare unet folder, maybe the unet/ of a pipeline
            found, folder = [path / SCHEDULER_FILE, path.parent / "scheduler" / SCHEDULER_FILE], path
        else:
            raise FileNotFoundError(f"{str(path)!r} holds neither config.json (a UNet2DModel folder) nor "
                                    "unet/config.json (a pipeline folder)")
        _unet_config(folder)
        net = _from_pretrained(cls, folder, _weights_file(folder, load_kwargs), **load_kwargs)
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
        net, sub = _from_pretrained(cls, name, f"hub {name} (unet)", subfolder="unet", **load_kwargs), "scheduler"
    except (OSError, EnvironmentError):
        net, sub = _from_pretrained(cls, name, f"hub {name}", **load_kwargs), None
    for subfolder in ([sub] if sub else []) + [None]:
        try:
            return net, dict(diffusers.DDPMScheduler.load_config(name, subfolder=subfolder)), f"hub {name}"
        except (OSError, EnvironmentError, ValueError):
            continue
    return net, None, "none"


def _scheduler_config(scheduler) -> tuple[dict, str]:
    """A scheduler argument (instance, config mapping, or path to its JSON / folder) as (dict, its source)."""
    if hasattr(scheduler, "config"):
        return dict(scheduler.config), "argument"
    if isinstance(scheduler, dict):
        return dict(scheduler), "argument"
    if isinstance(scheduler, (str, os.PathLike)):
        p = Path(scheduler).expanduser()
        p = p / SCHEDULER_FILE if p.is_dir() else p
        return _read_json(p), str(p)
    raise TypeError(f"scheduler must be a diffusers scheduler, its config (a dict) or a path; got "
                    f"{type(scheduler).__name__}")


def _field(cfg: dict, key: str, integer: bool = False) -> int | float:
    """cfg[key] as an int (``integer``: an integral number, 1000 or 1000.0) or a float; else a ValueError."""
    v = cfg[key]
    fraction = integer and isinstance(v, float) and not v.is_integer()
    if isinstance(v, bool) or not isinstance(v, (int, float)) or fraction:
        raise ValueError(f"{key} of the scheduler config must be {'an integer' if integer else 'a number'}; "
                         f"got {v!r}")
    return int(v) if integer else float(v)


def _is_ve_config(cfg: dict) -> bool:
    return "ScoreSdeVe" in str(cfg.get("_class_name", "")) or ("sigma_max" in cfg and "beta_start" not in cfg)


def vp_from_config(cfg: dict) -> VPSDE:
    """The :class:`~scoresde.VPSDE` of a diffusers DDPM-family scheduler config.

    "linear": beta_min = beta_start N, beta_max = beta_end N (the table linspace(beta_start,
    beta_end, N)); "squaredcos_cap_v2": the cosine schedule; N = num_train_timesteps.

    Raises:
        ValueError: a VE (ScoreSdeVe) config, ``trained_betas``, ``rescale_betas_zero_snr`` or another
            beta_schedule ("scaled_linear", "sigmoid"): no scoresde VPSDE has that table; pass ``sde``.
            A ``num_train_timesteps`` that is not an integer (10.7, "1000"), a beta that is not a number.
    """
    if _is_ve_config(cfg):
        raise ValueError("a VE scheduler config (ScoreSdeVeScheduler) was given for a positional-embedding "
                         "(DDPM) UNet; pass a DDPM-family scheduler config or sde=")
    cfg = {**VP_DEFAULTS, **{k: v for k, v in cfg.items() if v is not None}}
    for key in ("trained_betas", "rescale_betas_zero_snr"):
        if cfg.get(key):
            raise ValueError(f"the scheduler config sets {key}: no scoresde VPSDE has that table; pass sde=")
    N, schedule = _field(cfg, "num_train_timesteps", integer=True), cfg["beta_schedule"]
    if schedule == "linear":
        return VPSDE(beta_min=_field(cfg, "beta_start") * N, beta_max=_field(cfg, "beta_end") * N, N=N)
    if schedule == "squaredcos_cap_v2":
        return VPSDE(N=N, schedule="cosine")
    raise ValueError(f"beta_schedule {schedule!r} of the scheduler config has no scoresde VPSDE (supported: "
                     "'linear', 'squaredcos_cap_v2'); pass sde=")


def ve_from_config(cfg: dict) -> VESDE:
    """The :class:`~scoresde.VESDE` of a ScoreSdeVeScheduler config: sigma_min, sigma_max, N = num_train_timesteps.

    Raises:
        ValueError: a DDPM-family config (beta_start, no sigma_max) given for a Fourier-embedding UNet;
            a ``num_train_timesteps`` that is not an integer, a sigma that is not a number.
    """
    if not _is_ve_config(cfg) and ("beta_start" in cfg or "beta_schedule" in cfg):
        raise ValueError("a DDPM-family scheduler config (beta_start / beta_schedule) was given for a Fourier-"
                         "embedding (NCSN++, VE) UNet; pass a ScoreSdeVeScheduler config or sde=")
    cfg = {**VE_DEFAULTS, **{k: v for k, v in cfg.items() if v is not None}}
    return VESDE(sigma_min=_field(cfg, "sigma_min"), sigma_max=_field(cfg, "sigma_max"),
                 N=_field(cfg, "num_train_timesteps", integer=True))


def _config_sde(cfg: dict | None, ve: bool, source: str) -> SDE:
    """The SDE of a scheduler config (defaults with a warning when there is none); errors name its source."""
    if cfg is None:
        warnings.warn("no scheduler config found for the UNet and no sde given: using diffusers' "
                      + ("ScoreSdeVeScheduler defaults, VESDE(sigma_min=0.01, sigma_max=1348, N=2000)" if ve
                         else "DDPMScheduler defaults, VPSDE() (N=1000, betas 1e-4 .. 0.02 linear), eps"),
                      stacklevel=3)
    try:
        return ve_from_config(cfg or {}) if ve else vp_from_config(cfg or {})
    except ValueError as err:
        where = "the scheduler argument" if source == "argument" else source
        raise ValueError(f"{err} [scheduler config: {where}]") from None


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
        a :class:`~scoresde.ScoreModel` whose ``net`` is a :class:`DiffusersUNet` around the UNet,
        the model in eval mode when loaded here (a UNet or pipeline passed in keeps its mode, and
        the model takes it), with ``pretrained_info`` = {"kind": "ddpm" | "ncsnpp",
        "sde_from": "argument" | "scheduler" | "defaults", "scheduler_config": dict or None,
        "scheduler_source": str (the config file, "argument", ...)}. Weights loaded here are checked:
        every UNet tensor filled from the file, nothing left over, all finite. A UNet with
        out_channels = 2 in_channels gets ``learn_variance=True`` (the variance channels as
        Improved DDPM's interpolation, diffusers' "learned_range").
    Shapes:
        the model maps x (B, C, H, W), t (B,) in [0, T] to the score (B, C, H, W); data in the
        UNet's range ([-1, 1] for DDPM models; [0, 1] for NCSN++ models with ``center_input_sample``).
    Raises:
        ImportError: diffusers is not installed (install the ``pretrained`` extra).
        FileNotFoundError: a local path that does not exist or holds no UNet config; a ``scheduler``
            path with no scheduler config file.
        TypeError: ``unet`` / ``scheduler`` of an unsupported type; ``load_kwargs`` with an instance.
        ValueError: an unknown ``time_embedding_type`` (also read first from a folder's
            ``config.json``) or ``prediction_type``; a ``config.json`` / scheduler config that is
            not a JSON object (the file named); a scheduler config of the other kind (VE for a DDPM
            UNet or the reverse), with a table no scoresde SDE has (``trained_betas``,
            "scaled_linear", ...) or a ``num_train_timesteps`` that is not an integer; out_channels
            neither C nor 2C. Weights (the file named) that lack a UNet tensor, hold one the UNet
            does not have or of another shape (the first named), or hold NaN / inf.
    Reference: Ho et al. 2020, Eq. (11); Song et al. 2021, Sec. 3.4 and App. C (NCSN++, VE SDE).
    """
    diffusers = _import_diffusers()
    net, cfg, source = _load(unet, diffusers, load_kwargs)
    if scheduler is not None:
        cfg, source = _scheduler_config(scheduler)
    kind = net.config.time_embedding_type
    if kind not in TIME_EMBEDDINGS:
        raise ValueError(f"unknown time_embedding_type {kind!r} of the UNet; expected one of {list(TIME_EMBEDDINGS)}")
    ve = kind == "fourier"
    sde_from = "argument" if sde is not None else ("scheduler" if cfg is not None else "defaults")
    if sde is None:
        sde = _config_sde(cfg, ve, source)
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
    return model.train(net.training)  # eval when loaded here; the mode of a UNet passed in (not changed)
