"""What the command line trains with, beyond the library: an MLP on flattened images, and the
dequantizing objective of runs saved before it moved into the library.

* :class:`FlatMLP` lets :class:`scoresde.models.MLP` score small images: it flattens
  (B, C, H, W) to (B, C H W), calls the MLP and reshapes back. On 8x8 digits it trains about
  five times faster on a CPU than the smallest UNet, which is what makes ``scoresde demo``
  fit in minutes. Its ``config()`` is marked ``custom`` (``scoresde.models.model_from_config``
  does not know it); :func:`build_net` rebuilds it, and the CLI's checkpoint loader passes it
  to :func:`scoresde.train.load_score_model` as ``net=``.
* :class:`Dequantized` is kept for runs saved before the library held the recipe: they recorded it as
  their objective ("scoresde.cli.nets.Dequantized(dsm_loss, num_levels=17, weighting=sigma2)"),
  and a resumed run must train with the objective it was saved with. It calls
  :func:`scoresde.losses.dsm_loss` with ``dequantize=num_levels``, which draws the same noise in
  the same order, so old and new runs train the same weights. New runs use the objective
  ``{"loss": "dsm", "dequantize": num_levels}`` (see :func:`scoresde.cli.training.make_model`).
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
    """The objective of CLI runs saved before the dequantization moved into the library.

    ``Dequantized(dsm_loss, L, **options)(model, sde, x0, generator=, **kw)`` is
    ``dsm_loss(model, sde, x0, generator=, dequantize=L, **options, **kw)``: the same draws in the
    same order, so a resumed old run continues exactly. Its ``__qualname__`` is the string old
    checkpoints hold as their objective, so that :func:`scoresde.train` accepts the resume.

    Arguments:
        loss: :func:`scoresde.losses.dsm_loss` (the only loss old runs dequantized).
        num_levels: L, the number of integer levels of the data (17 for the digits).
        options: further options of the loss (``weighting``).
    Returns (a call): the 0-d batch-mean loss.
    Raises: ValueError: a loss other than dsm_loss.
    Reference: Theis et al. 2016, Sec. 3.1; Song et al. 2021, App. D.2.
    """

    def __init__(self, loss, num_levels: int, **options):
        from ..losses import dsm_loss
        if loss is not dsm_loss:
            raise ValueError(f"Dequantized wraps scoresde.losses.dsm_loss; got {getattr(loss, '__name__', loss)!r}")
        self.loss, self.num_levels, self.options = loss, int(num_levels), options
        opts = "".join(f", {k}={v}" for k, v in sorted(options.items()))
        # train() records "<module>.<qualname>" of a custom objective in the checkpoint config
        self.__qualname__ = f"Dequantized({loss.__name__}, num_levels={self.num_levels}{opts})"

    def __call__(self, model, sde, x0, generator=None, **kwargs):
        return self.loss(model, sde, x0, generator=generator, dequantize=self.num_levels, **self.options, **kwargs)


def legacy_objective(saved: dict | None, objective: dict):
    """The :class:`Dequantized` objective if ``saved`` (a resumed checkpoint's objective config)
    is the one it recorded for ``objective`` (``{"loss": "dsm", "dequantize": L}``, perhaps with a
    ``weighting``), else None."""
    if not isinstance(saved, dict) or saved.get("loss") != "custom":
        return None
    from ..losses import dsm_loss
    old = Dequantized(dsm_loss, objective["dequantize"], weighting=objective.get("weighting", "sigma2"))
    return old if saved.get("function") == f"{__name__}.{old.__qualname__}" else None
