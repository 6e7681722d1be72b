"""Score networks: a DDPM++-style UNet (and :func:`small_unet`, its size for small images: the
CLI's and the demo's) and an MLP, their time embeddings, and config round-trips;
the noise-conditional :class:`Classifier` (the UNet's encoder half, called ``classifier(x, t)``
with the SDE's continuous time t).

Every network is an ``nn.Module`` called ``net(x, time, **kwargs)`` with time (B,) the output of
:func:`scoresde.score.network_time`, and has ``config()`` returning its constructor arguments with
the class name under "model"; :func:`model_from_config` rebuilds it (checkpoints store the config
next to the state dict). Class-conditional UNet / MLP (``num_classes`` = K) embed K + 1 labels,
index K the null class (``y=None``).
"""
from __future__ import annotations

from torch import nn

from .classifier import Classifier
from .embeddings import GaussianFourierEmbedding, SinusoidalEmbedding
from .mlp import MLP
from .ncsnpp import NCSNpp
from .unet import UNet, small_unet

MODELS = {"UNet": UNet, "MLP": MLP, "NCSNpp": NCSNpp}

__all__ = ["UNet", "small_unet", "MLP", "Classifier", "SinusoidalEmbedding", "GaussianFourierEmbedding", "model_from_config",
           "MODELS", "NCSNpp"]


def model_from_config(cfg: dict) -> nn.Module:
    """Build the network described by ``cfg`` (the output of its ``config()``), freshly initialised.

    Arguments:
        cfg: dict with "model" (one of ``MODELS``: "UNet", "MLP", "NCSNpp"; or "Classifier", rebuilt by
            :meth:`Classifier.from_config`) and the constructor arguments.
    Returns:
        the network (load a state dict into it to restore weights).
    Raises:
        TypeError: cfg not a dict, or an argument the class does not take.
        ValueError: missing or unknown "model", or a value the constructor rejects.
    """
    if not isinstance(cfg, dict):
        raise TypeError(f"cfg must be a dict with a 'model' key; got {type(cfg).__name__}")
    if cfg.get("model") == "Classifier":
        return Classifier.from_config(cfg)
    kwargs = dict(cfg)
    name = kwargs.pop("model", None)
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r} in cfg['model']; valid values are {list(MODELS)}")
    try:
        return MODELS[name](**kwargs)
    except TypeError as e:
        raise TypeError(f"cfg for {name} has an argument the class does not take: {e}") from None
