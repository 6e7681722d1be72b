"""The reference score-SDE code's CIFAR-10 configs, transcribed (no ml_collections needed).

Two tables:

* :data:`MODEL_CONFIGS`: the ``config.model`` / ``config.data`` fields of each architecture, as
  :class:`~scoresde.models.NCSNpp` constructor arguments. The VP and sub-VP configs of one
  architecture share the model fields; only the SDE differs.
* :data:`REFERENCE_CONFIGS`: each config's path under the reference's ``configs/`` folder ->
  (model config name, SDE class name, SDE arguments, whether the network outputs the score).

Fields not copied: ``normalization`` ("GroupNorm", the only one NCSN++ uses), ``attention_type``
and ``conv_size`` (read by nothing), ``ema_rate`` (0.9999 VP / sub-VP, 0.999 VE) and the
training / sampling / optimiser fields.

Reference: ``yang-song/score_sde_pytorch`` ``configs/default_cifar10_configs.py``,
``configs/{vp,subvp}/cifar10_ddpmpp{,_deep}_continuous.py``,
``configs/{vp,subvp}/cifar10_ncsnpp{,_deep}_continuous.py``,
``configs/ve/cifar10_ncsnpp{,_deep}_continuous.py``.
"""
from __future__ import annotations

# default_cifar10_configs.py, the fields every config below inherits
_CIFAR10 = dict(image_size=32, num_channels=3, centered=False, sigma_min=0.01, sigma_max=50.0, num_scales=1000,
                dropout=0.1, nonlinearity="swish", nf=128, ch_mult=(1, 2, 2, 2), attn_resolutions=(16,),
                resamp_with_conv=True, conditional=True, fir_kernel=(1, 3, 3, 1), skip_rescale=True,
                resblock_type="biggan", progressive="none", progressive_combine="sum", init_scale=0.0,
                fourier_scale=16.0)

# vp/cifar10_ddpmpp_continuous.py (DDPM++ cont.): positional embedding, no FIR, centered data
_DDPMPP = dict(_CIFAR10, centered=True, num_res_blocks=4, fir=False, progressive_input="none",
               embedding_type="positional", scale_by_sigma=False)
# ve/cifar10_ncsnpp_continuous.py (NCSN++ cont.): Fourier features of log sigma, FIR, residual
# input pyramid, output divided by sigma, data in [0, 1] (the network maps it to [-1, 1])
_NCSNPP = dict(_CIFAR10, centered=False, num_res_blocks=4, fir=True, progressive_input="residual",
               embedding_type="fourier", scale_by_sigma=True)
# vp/cifar10_ncsnpp_continuous.py: the NCSN++ layout with the positional embedding, centered data
_NCSNPP_POS = dict(_NCSNPP, centered=True, embedding_type="positional", scale_by_sigma=False)

#: model config name -> NCSNpp constructor arguments
MODEL_CONFIGS: dict[str, dict] = {
    "ddpmpp_continuous": _DDPMPP,
    "ddpmpp_deep_continuous": dict(_DDPMPP, num_res_blocks=8),
    "ncsnpp_continuous": _NCSNPP,
    "ncsnpp_deep_continuous": dict(_NCSNPP, num_res_blocks=8),
    "ncsnpp_positional_continuous": _NCSNPP_POS,
    "ncsnpp_positional_deep_continuous": dict(_NCSNPP_POS, num_res_blocks=8),
}

_VP = dict(beta_min=0.1, beta_max=20.0, N=1000)
_VE = dict(sigma_min=0.01, sigma_max=50.0, N=1000)

#: reference config path -> (model config, SDE class name, SDE arguments, network outputs the score)
REFERENCE_CONFIGS: dict[str, tuple[str, str, dict, bool]] = {
    "vp/cifar10_ddpmpp_continuous": ("ddpmpp_continuous", "VPSDE", _VP, False),
    "vp/cifar10_ddpmpp_deep_continuous": ("ddpmpp_deep_continuous", "VPSDE", _VP, False),
    "subvp/cifar10_ddpmpp_continuous": ("ddpmpp_continuous", "SubVPSDE", _VP, False),
    "subvp/cifar10_ddpmpp_deep_continuous": ("ddpmpp_deep_continuous", "SubVPSDE", _VP, False),
    "vp/cifar10_ncsnpp_continuous": ("ncsnpp_positional_continuous", "VPSDE", _VP, False),
    "vp/cifar10_ncsnpp_deep_continuous": ("ncsnpp_positional_deep_continuous", "VPSDE", _VP, False),
    "subvp/cifar10_ncsnpp_continuous": ("ncsnpp_positional_continuous", "SubVPSDE", _VP, False),
    "subvp/cifar10_ncsnpp_deep_continuous": ("ncsnpp_positional_deep_continuous", "SubVPSDE", _VP, False),
    "ve/cifar10_ncsnpp_continuous": ("ncsnpp_continuous", "VESDE", _VE, True),
    "ve/cifar10_ncsnpp_deep_continuous": ("ncsnpp_deep_continuous", "VESDE", _VE, True),
}


def reference_config_name(name: str) -> str:
    """Normalise a reference config name ("configs/vp/x.py" or "vp/x") to its key in REFERENCE_CONFIGS.

    Raises:
        TypeError: name not a string.
        ValueError: no such config (the message lists the valid names).
    """
    if not isinstance(name, str):
        raise TypeError(f"config must be a reference config name such as 'vp/cifar10_ddpmpp_continuous'; "
                        f"got {type(name).__name__}")
    key = name.strip().replace("\\", "/")
    key = key[len("configs/"):] if key.startswith("configs/") else key
    key = key[:-3] if key.endswith(".py") else key
    if key not in REFERENCE_CONFIGS:
        raise ValueError(f"unknown reference config {name!r}; valid names are {sorted(REFERENCE_CONFIGS)}")
    return key
