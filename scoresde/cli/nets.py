"""What the command line trains with, beyond the library: an MLP on flattened images and a
dequantizing objective.

* :class:`FlatMLP` lets :class:`scoresde.models.MLP` score small images: it flattens
  (B, C, H, W) to (B, C H W), calls the MLP and reshapes back. On 8x8 digits it trains about
  five times faster on a CPU than the smallest UNet, which is what makes ``scoresde demo``
  fit in minutes. Its ``config()`` is marked ``custom`` (``scoresde.models.model_from_config``
  does not know it); :func:`build_net` rebuilds it, and the CLI's checkpoint loader passes it
  to :func:`scoresde.train.load_score_model` as ``net=``.
* :class:`Dequantized` wraps a loss of :mod:`scoresde.losses` so that each batch of
  integer-level data is uniformly dequantized inside its bin before the loss: the model then
  learns the density that :func:`scoresde.bits_per_dim` evaluates (dequantized points), not
  spikes at the bin centres.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..models import MLP, model_from_config


class FlatMLP(nn.Module):
    """:class:`scoresde.models.MLP` applied to flattened samples of shape ``shape``.

    Arguments:
        shape: per-sample shape S, e.g. (1, 8, 8).
        hidden, num_layers, embedding, embed_dim, learn_variance, num_classes: of the MLP (dim = prod(S)).
    Forward:
        x (B, *S), time (B,), y (B,) or None (a class-conditional MLP; None = the null class) ->
        (B, *S) (or (B, 2C, H, W) with ``learn_variance`` for images).
    """

    def __init__(self, shape, hidden: int = 512, num_layers: int = 4, embedding: str = "sinusoidal",
                 embed_dim: int = 128, learn_variance: bool = False, num_classes: int | None = None):
        super().__init__()
        self.shape = tuple(int(s) for s in shape)
        self.mlp = MLP(math.prod(self.shape), hidden=hidden, num_layers=num_layers, embedding=embedding,
                       embed_dim=embed_dim, learn_variance=learn_variance, num_classes=num_classes)

    @property
    def num_classes(self) -> int | None:
        """K of a class-conditional MLP (null class K), else None (ScoreModel reads it)."""
        return self.mlp.num_classes

    def config(self) -> dict:
        c = self.mlp.config()
        c.pop("dim")
        c.update(model="FlatMLP", custom=True, shape=list(self.shape))
        return c

    def forward(self, x: torch.Tensor, time, y: torch.Tensor | None = None) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"x must have shape (B, {', '.join(map(str, self.shape))}); got {tuple(x.shape)}")
        out = self.mlp(x.reshape(x.shape[0], -1), time, y=y)
        if self.mlp.learn_variance:
            return out.reshape(x.shape[0], 2 * self.shape[0], *self.shape[1:])
        return out.reshape(x.shape)


def build_net(cfg: dict) -> nn.Module:
    """Rebuild a network from its stored config: FlatMLP here, anything else by ``model_from_config``."""
    if cfg.get("model") == "FlatMLP":
        kw = {k: v for k, v in cfg.items() if k not in ("model", "custom")}
        return FlatMLP(**kw)
    return model_from_config(cfg)


class Dequantized:
    """A loss of :mod:`scoresde.losses` on uniformly dequantized data.

    x0 holds bin centres (2k + 1)/L - 1 of L levels on [-1, 1] (``scoresde.data.levels_to_float``);
    each call adds u ~ U(-1/L, 1/L) per dimension (drawn from the loss's generator), i.e. a
    uniform point of the bin, then evaluates ``loss(model, sde, x0 + u, generator=, **options)``.
    Reference: Theis et al. 2016, Sec. 3.1; Song et al. 2021, App. D.2 (likelihood training on
    dequantized data).
    """

    def __init__(self, loss, num_levels: int, **options):
        self.loss, self.num_levels, self.options = loss, int(num_levels), options
        opts = "".join(f", {k}={v}" for k, v in sorted(options.items()))
        # train() records "<module>.<qualname>" of a custom objective in the checkpoint config
        self.__qualname__ = f"Dequantized({loss.__name__}, num_levels={self.num_levels}{opts})"

    def __call__(self, model, sde, x0, generator=None, **kwargs):
        h = 1.0 / self.num_levels
        u = torch.rand(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        return self.loss(model, sde, x0 + (2.0 * u - 1.0) * h, generator=generator, **self.options, **kwargs)
