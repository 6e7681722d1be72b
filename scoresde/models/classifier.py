"""A noise-conditional classifier p_t(y | x_t): the UNet's encoder half with a pooled linear head.

Dhariwal & Nichol (2021, Sec. 4 and App. the "EncoderUNetModel" of guided-diffusion) guide a
diffusion model with the gradient of a classifier trained on noisy images x_t at every noise
level; Song et al. (2021, Sec. 5 and App. I.4) train the same kind of time-conditional
classifier for class-conditional sampling with the score SDE. This one reuses the pieces of
:class:`~scoresde.models.UNet` (:mod:`scoresde.models.unet`):

    time embedding(ch) -> Linear(ch, 4 ch) -> SiLU -> Linear(4 ch, 4 ch)   (as the UNet)
    conv3x3(in_channels -> ch), the UNet's down path and middle block       (as the UNet)
    GroupNorm, SiLU, mean over the s' x s' positions, Linear(c, num_classes), zero-initialised

(guided-diffusion's "adaptive" pooling head), so that at initialisation every logit is 0 and the
predicted class distribution is uniform.

Time. ``classifier(x, t)`` takes the **continuous time** t of the SDE it was built with (the
SDE is a constructor argument), and feeds the network :func:`scoresde.score.network_time`
(sde, t, time_input), the one map :class:`~scoresde.ScoreModel` uses too, with the same default
``time_input`` ("sigma" for VE, "label" = (N - 1) t otherwise). So a score model and a
classifier are called the same way, ``score(x, t)`` and ``classifier(x, t)``, which is what
classifier guidance needs.

Reference: Dhariwal & Nichol 2021, "Diffusion Models Beat GANs on Image Synthesis", Sec. 4 and
guided-diffusion's ``EncoderUNetModel`` (pool="adaptive"); Song et al. 2021, App. I.4.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .._checks import as_time, check_batch, check_positive
from ..score import TIME_INPUTS, network_time
from .unet import _encode, _encoder, _groups, _layout, _time_embedding, _zero


class Classifier(nn.Module):
    """Noise-conditional classifier: x_t (B, C, s, s), continuous t (B,) -> logits (B, num_classes).

    Arguments:
        sde: the forward SDE (a :class:`scoresde.SDE`) whose perturbed data x_t it classifies;
            it fixes T and the network time (see the module docstring).
        num_classes: K >= 2, the number of classes (no null class: the classifier is not
            trained with dropped labels).
        in_channels, image_size, ch, ch_mult, num_res_blocks, attn_resolutions, dropout, embedding:
            as :class:`~scoresde.models.UNet` (same checks); the defaults are a
            small net for 8x8 digits (ch 32, ch_mult (1, 2), one block per level, no attention;
            301,322 parameters for K = 10; ch=16 gives 75,906 for K = 2).
        time_input: "label", "sigma", "index" or "t" (:func:`scoresde.score.network_time`);
            default as ScoreModel's: "sigma" for VE, "label" otherwise.
    Forward:
        ``classifier(x, t)``: x (B, in_channels, image_size, image_size) float; t (B,) or a
        scalar, continuous times in [0, T] (units of the SDE's time, not network time).
        Returns unnormalised logits (B, num_classes) in x's dtype; log p_t(y | x) is
        ``logits.log_softmax(-1)``.
    Raises:
        ValueError: constructor values the encoder cannot take (named), num_classes < 2,
            unknown time_input; x of the wrong shape, empty or on the meta device; t outside
            [0, T] or of the wrong batch size.
        TypeError: sde not an SDE, x not a floating-point tensor.
    Reference: Dhariwal & Nichol 2021, Sec. 4 (noise-conditional classifier, guided-diffusion's
        ``EncoderUNetModel``); Song et al. 2021, App. I.4.
    """

    def __init__(self, sde, num_classes: int, *, in_channels: int = 1, image_size: int = 8, ch: int = 32,
                 ch_mult=(1, 2), num_res_blocks: int = 1, attn_resolutions=(), dropout: float = 0.0,
                 embedding: str = "sinusoidal", time_input: str | None = None):
        super().__init__()
        from ..sde import SDE, VESDE

        if not isinstance(sde, SDE):
            raise TypeError(f"sde must be a scoresde SDE; got {type(sde).__name__}")
        check_positive("num_classes", num_classes, integer=True)
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2 for a classifier; got {num_classes}")
        if time_input is None:
            time_input = "sigma" if isinstance(sde, VESDE) else "label"
        if time_input not in TIME_INPUTS:
            raise ValueError(f"unknown time_input {time_input!r}; valid values are {list(TIME_INPUTS)}")
        ch_mult, widths, sides, attn_resolutions = _layout(in_channels, image_size, ch, ch_mult, num_res_blocks,
                                                           attn_resolutions, dropout, embedding)
        self.sde, self.num_classes, self.time_input = sde, int(num_classes), time_input
        self.in_channels, self.image_size, self.ch, self.ch_mult = int(in_channels), int(image_size), int(ch), ch_mult
        self.num_res_blocks, self.attn_resolutions, self.dropout = int(num_res_blocks), attn_resolutions, float(dropout)
        self.embedding = embedding
        self.embed, self.temb = _time_embedding(embedding, ch)
        self.conv_in, self.down, self.mid, _, c = _encoder(in_channels, ch, widths, sides, num_res_blocks,
                                                           attn_resolutions, 4 * ch, dropout)
        self.norm_out = nn.GroupNorm(_groups(c), c, eps=1e-6)
        self.head = _zero(nn.Linear(c, self.num_classes))

    def config(self) -> dict:
        """Constructor arguments (JSON-serialisable), with "model": "Classifier" and the SDE's config."""
        return {"model": "Classifier", "sde": self.sde.config(), "num_classes": self.num_classes,
                "in_channels": self.in_channels, "image_size": self.image_size, "ch": self.ch,
                "ch_mult": list(self.ch_mult), "num_res_blocks": self.num_res_blocks,
                "attn_resolutions": list(self.attn_resolutions), "dropout": self.dropout,
                "embedding": self.embedding, "time_input": self.time_input}

    @classmethod
    def from_config(cls, cfg: dict) -> "Classifier":
        """Rebuild (freshly initialised) from :meth:`config`. Raises ValueError / TypeError for a bad config."""
        from ..sde import sde_from_config

        if not isinstance(cfg, dict) or cfg.get("model") != "Classifier" or "sde" not in cfg:
            raise ValueError("cfg must be the config() of a Classifier (with 'model': 'Classifier' and 'sde')")
        kwargs = {k: v for k, v in cfg.items() if k not in ("model", "sde")}
        try:
            return cls(sde_from_config(cfg["sde"]), **kwargs)
        except TypeError as e:
            raise TypeError(f"cfg for Classifier has an argument the class does not take: {e}") from None

    def forward(self, x: torch.Tensor, t) -> torch.Tensor:
        check_batch("x", x, finite=False)
        want = (self.in_channels, self.image_size, self.image_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(f"x must have shape (B, in_channels, image_size, image_size) = (B, {want[0]}, {want[1]}, "
                             f"{want[2]}) for this classifier; got shape {tuple(x.shape)}")
        t = as_time(t, x, self.sde.T)
        dtype = self.conv_in.weight.dtype
        time = network_time(self.sde, t, self.time_input, torch.float64 if x.dtype == torch.float64 else torch.float32)
        temb = F.silu(self.temb(self.embed(time).to(dtype)))
        h, _ = _encode(self, x.to(dtype), temb)
        h = F.silu(self.norm_out(h)).mean(dim=(2, 3))
        return self.head(h).to(x.dtype)
