"""NCSN++ and DDPM++, the reference score-SDE code's ``ncsnpp`` model family, in pure PyTorch.

:class:`NCSNpp` builds the network of ``models/ncsnpp.py`` of the reference code (Song et al.
2021, App. H) from plain arguments, with the same modules in the same order: one flat
``all_modules`` ``nn.ModuleList`` (time embedding, input conv, down path, middle, up path,
output) and the ``sigmas`` buffer (float64, the geometric sigma grid of ``num_scales`` levels
from sigma_max down to sigma_min). A state dict of the reference model (its ``module.`` prefix
stripped) therefore loads into it by name, and ``parameters()`` come in the reference's order
(the order of its EMA ``shadow_params``): see :func:`scoresde.load_reference_checkpoint`.

Variants (all the reference's):

* ``resblock_type``: "biggan" (resampling inside the residual blocks) or "ddpm" (separate
  :class:`~scoresde.models.ncsnpp_layers.Downsample` / ``Upsample`` layers);
* ``fir``: FIR (anti-aliased, [1, 3, 3, 1]) resampling written with plain convolutions
  (:mod:`scoresde.models.up_or_down`), else nearest / average pooling;
* ``progressive_input``: "none", "input_skip" (the input image downsampled and combined at each
  level) or "residual" (a residual pyramid of the input); ``progressive``: "none",
  "output_skip" (an image-space output at every level, upsampled and summed) or "residual";
  ``progressive_combine``: "sum" or "cat";
* ``skip_rescale``: residual sums divided by sqrt(2);
* ``embedding_type``: "positional" (DDPM's sinusoidal embedding of the label 999 t) or
  "fourier" (Gaussian Fourier features of log sigma, ``fourier_scale`` 16);
* ``scale_by_sigma``: the output divided by sigma (the VE net then outputs the score);
* ``centered``: data in [-1, 1]; when False the network maps [0, 1] inputs to 2 x - 1 itself.

Named configs (:data:`~scoresde.models.ncsnpp_configs.MODEL_CONFIGS`, built by
:meth:`NCSNpp.named`), CIFAR-10 32x32x3, nf = 128, ch_mult (1, 2, 2, 2), attention at 16;
parameter counts (all of ``parameters()``: the trainable ones plus NCSN++'s 128 Fourier
frequencies W), ours against the reference's model built from its own config by
``tests/data/reference/make_fixtures.py --layouts``. The keys, shapes and order of the two state
dicts are equal too (``tests/test_reference_checkpoint.py`` checks both):

    ================================== ===================================== =========== ===========
    name                               reference configs (configs/...)       ours        reference
    ================================== ===================================== =========== ===========
    ddpmpp_continuous                  {vp,subvp}/cifar10_ddpmpp_continuous  61,804,419  61,804,419
    ddpmpp_deep_continuous             {vp,subvp}/..._ddpmpp_deep_continuous 106,632,579 106,632,579
    ncsnpp_continuous                  ve/cifar10_ncsnpp_continuous          62,758,915  62,758,915
    ncsnpp_deep_continuous             ve/cifar10_ncsnpp_deep_continuous     107,587,075 107,587,075
    ncsnpp_positional_continuous       {vp,subvp}/cifar10_ncsnpp_continuous  62,693,251  62,693,251
    ncsnpp_positional_deep_continuous  {vp,subvp}/..._ncsnpp_deep_continuous 107,521,411 107,521,411
    ================================== ===================================== =========== ===========

Where the reference cannot run in PyTorch, this module does what it means: its FIR upsampling
convolution (``progressive="residual"``, or ``resblock_type="ddpm"`` with ``fir``) slices with a
negative step and passes a TF-style 4-entry stride, and its non-FIR ``Upsample`` passes
"nearest" as ``scale_factor`` (all three raise); see ``tests/data/reference/make_fixtures.py``.

Reference: Song et al. 2021, "Score-Based Generative Modeling through SDEs", App. H (NCSN++,
DDPM++); the reference code ``yang-song/score_sde_pytorch`` ``models/ncsnpp.py``,
``models/layerspp.py`` (Apache-2.0); Karras et al. 2020 (StyleGAN2: FIR resampling,
progressive growing of outputs); Brock et al. 2019 (BigGAN blocks); Ho et al. 2020 (DDPM).
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch
from torch import nn

from .._checks import check_choice, check_positive
from . import ncsnpp_layers as L
from .ncsnpp_configs import MODEL_CONFIGS

RESBLOCKS = ("ddpm", "biggan")
PROGRESSIVE = ("none", "output_skip", "residual")
PROGRESSIVE_INPUT = ("none", "input_skip", "residual")
EMBEDDINGS = ("fourier", "positional")
_SQRT2 = math.sqrt(2.0)


class NCSNpp(nn.Module):
    """The reference code's NCSN++ / DDPM++ network (``models/ncsnpp.py``), module for module.

    Called ``net(x, time)``: x (B, num_channels, image_size, image_size); time (B,) the noise
    level sigma for ``embedding_type="fourier"`` (the reference's VE input, sigma(t)), else the
    label 999 t (VP / sub-VP continuous nets; ``time_input="label"`` of
    :class:`~scoresde.ScoreModel`). Returns (B, num_channels, image_size, image_size): the
    network output, divided by sigma when ``scale_by_sigma`` (with the positional embedding the
    sigma is ``sigmas[time.long()]``, as in the reference).

    The arguments are the reference config's ``model`` / ``data`` fields; the defaults are
    DDPM++ cont.'s (``vp/cifar10_ddpmpp_continuous``).

    Arguments:
        image_size, num_channels: side and channels of the images.
        centered: inputs already in [-1, 1]; False maps [0, 1] inputs to 2 x - 1 first.
        nf: base width; level l has nf ch_mult[l] channels; the time embedding has 4 nf.
        ch_mult: channel multipliers, one per resolution (len(ch_mult) levels).
        num_res_blocks: residual blocks per level on the way down (one more on the way up).
        attn_resolutions: sides at which self-attention follows the blocks.
        dropout: dropout rate inside the residual blocks.
        resamp_with_conv: ``resblock_type="ddpm"``: resample with a convolution.
        conditional: embed the time input (False: no time embedding at all).
        fir, fir_kernel: FIR resampling with this 1-D kernel.
        skip_rescale: divide residual sums by sqrt(2).
        resblock_type: "biggan" or "ddpm".
        progressive, progressive_input, progressive_combine: see the module docstring.
        init_scale: init scale of the last conv of each block and of the output (0: 1e-10).
        embedding_type: "positional" or "fourier"; fourier_scale: std of the Fourier W.
        scale_by_sigma: divide the output by sigma.
        nonlinearity: "swish" (SiLU), "elu", "relu" or "lrelu".
        sigma_min, sigma_max, num_scales: the ``sigmas`` buffer (the reference's VE grid).
    Raises:
        ValueError: an unknown variant name (the message lists the valid ones), a non-positive
            size, an image side not divisible by 2^(len(ch_mult) - 1), the Fourier embedding
            without ``conditional``.
    Reference: Song et al. 2021, App. H; reference ``models/ncsnpp.py``.
    """

    def __init__(self, *, image_size: int = 32, num_channels: int = 3, centered: bool = True, nf: int = 128,
                 ch_mult=(1, 2, 2, 2), num_res_blocks: int = 4, attn_resolutions=(16,), dropout: float = 0.1,
                 resamp_with_conv: bool = True, conditional: bool = True, fir: bool = False,
                 fir_kernel=(1, 3, 3, 1), skip_rescale: bool = True, resblock_type: str = "biggan",
                 progressive: str = "none", progressive_input: str = "none", progressive_combine: str = "sum",
                 init_scale: float = 0.0, embedding_type: str = "positional", fourier_scale: float = 16.0,
                 scale_by_sigma: bool = False, nonlinearity: str = "swish", sigma_min: float = 0.01,
                 sigma_max: float = 50.0, num_scales: int = 1000):
        super().__init__()
        for name, v in (("image_size", image_size), ("num_channels", num_channels), ("nf", nf),
                        ("num_res_blocks", num_res_blocks), ("num_scales", num_scales)):
            check_positive(name, v, integer=True)
        self.resblock_type = check_choice("resblock_type", str(resblock_type).lower(), RESBLOCKS)
        self.progressive = check_choice("progressive", str(progressive).lower(), PROGRESSIVE)
        self.progressive_input = check_choice("progressive_input", str(progressive_input).lower(), PROGRESSIVE_INPUT)
        self.embedding_type = check_choice("embedding_type", str(embedding_type).lower(), EMBEDDINGS)
        self.progressive_combine = check_choice("progressive_combine", str(progressive_combine).lower(), ("sum", "cat"))
        check_choice("nonlinearity", str(nonlinearity).lower(), tuple(L.ACTIVATIONS))
        ch_mult, attn_resolutions = tuple(int(m) for m in ch_mult), tuple(int(r) for r in attn_resolutions)
        if not ch_mult or image_size % 2 ** (len(ch_mult) - 1):
            raise ValueError(f"image_size {image_size} must be divisible by 2^(len(ch_mult) - 1) for ch_mult {ch_mult}")
        if self.embedding_type == "fourier" and not conditional:
            raise ValueError("embedding_type='fourier' needs conditional=True (the embedding feeds the time MLP)")
        self._cfg = dict(image_size=int(image_size), num_channels=int(num_channels), centered=bool(centered),
                         nf=int(nf), ch_mult=ch_mult, num_res_blocks=int(num_res_blocks),
                         attn_resolutions=attn_resolutions, dropout=float(dropout),
                         resamp_with_conv=bool(resamp_with_conv), conditional=bool(conditional), fir=bool(fir),
                         fir_kernel=tuple(fir_kernel), skip_rescale=bool(skip_rescale),
                         resblock_type=self.resblock_type, progressive=self.progressive,
                         progressive_input=self.progressive_input, progressive_combine=self.progressive_combine,
                         init_scale=float(init_scale), embedding_type=self.embedding_type,
                         fourier_scale=float(fourier_scale), scale_by_sigma=bool(scale_by_sigma),
                         nonlinearity=str(nonlinearity).lower(), sigma_min=float(sigma_min),
                         sigma_max=float(sigma_max), num_scales=int(num_scales))
        for k, v in self._cfg.items():
            setattr(self, k, v)
        self.num_classes = None  # unconditional: ScoreModel rejects class labels
        self.act = L.ACTIVATIONS[self.nonlinearity]()
        sigmas = np.exp(np.linspace(np.log(sigma_max), np.log(sigma_min), num_scales))
        self.register_buffer("sigmas", torch.tensor(sigmas))  # float64, as the reference's
        self.num_resolutions = len(ch_mult)
        self.all_resolutions = [image_size // 2 ** i for i in range(self.num_resolutions)]
        if self.progressive == "output_skip":
            self.pyramid_upsample = L.Upsample(fir=self.fir, fir_kernel=self.fir_kernel, with_conv=False)
        if self.progressive_input == "input_skip":
            self.pyramid_downsample = L.Downsample(fir=self.fir, fir_kernel=self.fir_kernel, with_conv=False)
        modules: list[nn.Module] = []
        self._build_embedding(modules)
        hs_c = self._build_down(modules)
        self._build_up(modules, hs_c)
        self.all_modules = nn.ModuleList(modules)

    @classmethod
    def named(cls, name: str, **overrides) -> "NCSNpp":
        """The network of a named config (:data:`~scoresde.models.ncsnpp_configs.MODEL_CONFIGS`),
        with ``overrides`` replacing its fields (e.g. ``nf=16, ch_mult=(1, 2)``).

        Raises:
            ValueError: unknown name (the message lists the valid ones).
            TypeError: an override that is not an argument of :class:`NCSNpp`.
        """
        if name not in MODEL_CONFIGS:
            raise ValueError(f"unknown NCSNpp config {name!r}; valid names are {sorted(MODEL_CONFIGS)}")
        cfg = dict(MODEL_CONFIGS[name])
        bad = sorted(set(overrides) - set(cfg))
        if bad:
            raise TypeError(f"unknown NCSNpp field(s) {bad} in the overrides; valid fields are {sorted(cfg)}")
        cfg.update(overrides)
        return cls(**cfg)

    def config(self) -> dict:
        """Constructor arguments (JSON-serialisable) with the class name under "model"."""
        cfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in self._cfg.items()}
        return {"model": "NCSNpp", **cfg}

    # ---- construction (the order of the reference's ``modules.append`` calls) ---------------
    def _blocks(self):
        """(ResnetBlock, AttnBlock, Combine) constructors with this network's fixed arguments."""
        # the blocks get a Dense_0 even when not conditional (unused then), as in the reference
        common = dict(act=self.act, dropout=self.dropout, init_scale=self.init_scale,
                      skip_rescale=self.skip_rescale, temb_dim=4 * self.nf)
        if self.resblock_type == "ddpm":
            res = functools.partial(L.ResnetBlockDDPMpp, **common)
        else:
            res = functools.partial(L.ResnetBlockBigGANpp, fir=self.fir, fir_kernel=self.fir_kernel, **common)
        attn = functools.partial(L.AttnBlockpp, init_scale=self.init_scale, skip_rescale=self.skip_rescale)
        return res, attn, functools.partial(L.Combine, method=self.progressive_combine)

    def _build_embedding(self, modules):
        nf = self.nf
        if self.embedding_type == "fourier":
            modules.append(L.GaussianFourierProjection(embedding_size=nf, scale=self.fourier_scale))
        if self.conditional:
            modules.append(L.dense(2 * nf if self.embedding_type == "fourier" else nf, 4 * nf))
            modules.append(L.dense(4 * nf, 4 * nf))
        modules.append(L.conv3x3(self.num_channels, nf))

    def _build_down(self, modules) -> list[int]:
        res, attn, combine = self._blocks()
        nf, pyr_ch = self.nf, self.num_channels
        hs_c, in_ch = [nf], nf
        for i_level in range(self.num_resolutions):
            for _ in range(self.num_res_blocks):
                out_ch = nf * self.ch_mult[i_level]
                modules.append(res(in_ch=in_ch, out_ch=out_ch))
                in_ch = out_ch
                if self.all_resolutions[i_level] in self.attn_resolutions:
                    modules.append(attn(channels=in_ch))
                hs_c.append(in_ch)
            if i_level != self.num_resolutions - 1:
                if self.resblock_type == "ddpm":
                    modules.append(L.Downsample(in_ch=in_ch, with_conv=self.resamp_with_conv, fir=self.fir,
                                                fir_kernel=self.fir_kernel))
                else:
                    modules.append(res(down=True, in_ch=in_ch))
                if self.progressive_input == "input_skip":
                    modules.append(combine(dim1=pyr_ch, dim2=in_ch))
                    in_ch = 2 * in_ch if self.progressive_combine == "cat" else in_ch
                elif self.progressive_input == "residual":
                    modules.append(L.Downsample(in_ch=pyr_ch, out_ch=in_ch, with_conv=True, fir=self.fir,
                                                fir_kernel=self.fir_kernel))
                    pyr_ch = in_ch
                hs_c.append(in_ch)
        in_ch = hs_c[-1]
        modules += [res(in_ch=in_ch), attn(channels=in_ch), res(in_ch=in_ch)]
        return hs_c

    def _build_up(self, modules, hs_c: list[int]) -> None:
        res, attn, _ = self._blocks()
        nf, channels, init_scale = self.nf, self.num_channels, self.init_scale
        in_ch, pyramid_ch = hs_c[-1], 0
        for i_level in reversed(range(self.num_resolutions)):
            for _ in range(self.num_res_blocks + 1):
                out_ch = nf * self.ch_mult[i_level]
                modules.append(res(in_ch=in_ch + hs_c.pop(), out_ch=out_ch))
                in_ch = out_ch
            if self.all_resolutions[i_level] in self.attn_resolutions:
                modules.append(attn(channels=in_ch))
            top = i_level == self.num_resolutions - 1
            if self.progressive == "output_skip":
                modules += [L.group_norm(in_ch), L.conv3x3(in_ch, channels, init_scale=init_scale)]
                pyramid_ch = channels
            elif self.progressive == "residual" and top:
                modules += [L.group_norm(in_ch), L.conv3x3(in_ch, in_ch)]
                pyramid_ch = in_ch
            elif self.progressive == "residual":
                modules.append(L.Upsample(in_ch=pyramid_ch, out_ch=in_ch, with_conv=True, fir=self.fir,
                                          fir_kernel=self.fir_kernel))
                pyramid_ch = in_ch
            if i_level != 0:
                if self.resblock_type == "ddpm":
                    modules.append(L.Upsample(in_ch=in_ch, with_conv=self.resamp_with_conv, fir=self.fir,
                                              fir_kernel=self.fir_kernel))
                else:
                    modules.append(res(in_ch=in_ch, up=True))
        assert not hs_c
        if self.progressive != "output_skip":
            modules += [L.group_norm(in_ch), L.conv3x3(in_ch, channels, init_scale=init_scale)]

    # ---- forward ----------------------------------------------------------------------------
    def _check_input(self, x, time):
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != self.num_channels:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must have shape (B, {self.num_channels}, {self.image_size}, {self.image_size}); "
                             f"got {got}")
        if tuple(x.shape[2:]) != (self.image_size, self.image_size):
            raise ValueError(f"x must be {self.image_size}x{self.image_size} images (the attention and pyramid "
                             f"layout depend on the side); got {tuple(x.shape[2:])}")
        if not isinstance(time, torch.Tensor) or time.shape != (x.shape[0],):
            got = tuple(time.shape) if isinstance(time, torch.Tensor) else type(time).__name__
            raise ValueError(f"time must be a ({x.shape[0]},) tensor (sigma or the 999 t label); got {got}")

    def _embed(self, time: torch.Tensor):
        """(temb (B, 4 nf) or None, the sigmas the output is divided by, the next module index)."""
        m, i = self.all_modules, 0
        if self.embedding_type == "fourier":
            used_sigmas = time
            temb = m[0](torch.log(time).to(m[0].W.dtype))
            i = 1
        else:
            used_sigmas = self.sigmas[time.long()] if self.scale_by_sigma else None
            temb = L.timestep_embedding(time, self.nf)
        if not self.conditional:
            return None, used_sigmas, i
        temb = m[i + 1](self.act(m[i](temb.to(m[i].weight.dtype))))
        return temb, used_sigmas, i + 2

    def forward(self, x: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        """The network output (B, C, H, W) at x (B, C, H, W) and time (B,); see the class docstring."""
        self._check_input(x, time)
        temb, used_sigmas, i = self._embed(time)
        if not self.centered:
            x = 2 * x - 1.0
        hs, i = self._down(x, temb, i)
        h, i = self._up(hs, temb, i)
        assert i == len(self.all_modules)
        if self.scale_by_sigma:
            h = h / used_sigmas.to(h.dtype).reshape(-1, 1, 1, 1)
        return h

    def _down(self, x, temb, i):
        m = self.all_modules
        pyramid = x if self.progressive_input != "none" else None
        hs = [m[i](x)]
        i += 1
        for i_level in range(self.num_resolutions):
            for _ in range(self.num_res_blocks):
                h = m[i](hs[-1], temb)
                i += 1
                if h.shape[-1] in self.attn_resolutions:
                    h = m[i](h)
                    i += 1
                hs.append(h)
            if i_level != self.num_resolutions - 1:
                h = m[i](hs[-1]) if self.resblock_type == "ddpm" else m[i](hs[-1], temb)
                i += 1
                if self.progressive_input == "input_skip":
                    pyramid = self.pyramid_downsample(pyramid)
                    h = m[i](pyramid, h)
                    i += 1
                elif self.progressive_input == "residual":
                    pyramid = m[i](pyramid)
                    i += 1
                    pyramid = (pyramid + h) / _SQRT2 if self.skip_rescale else pyramid + h
                    h = pyramid
                hs.append(h)
        h = m[i](hs[-1], temb)
        h = m[i + 1](h)
        h = m[i + 2](h, temb)
        hs.append(h)
        return hs, i + 3

    def _up(self, hs, temb, i):
        m = self.all_modules
        h, pyramid = hs.pop(), None
        for i_level in reversed(range(self.num_resolutions)):
            for _ in range(self.num_res_blocks + 1):
                h = m[i](torch.cat([h, hs.pop()], dim=1), temb)
                i += 1
            if h.shape[-1] in self.attn_resolutions:
                h = m[i](h)
                i += 1
            top = i_level == self.num_resolutions - 1
            if self.progressive == "output_skip":
                pyramid_h = m[i + 1](self.act(m[i](h)))
                i += 2
                pyramid = pyramid_h if top else self.pyramid_upsample(pyramid) + pyramid_h
            elif self.progressive == "residual" and top:
                pyramid = m[i + 1](self.act(m[i](h)))
                i += 2
            elif self.progressive == "residual":
                pyramid = m[i](pyramid)
                i += 1
                pyramid = (pyramid + h) / _SQRT2 if self.skip_rescale else pyramid + h
                h = pyramid
            if i_level != 0:
                h = m[i](h) if self.resblock_type == "ddpm" else m[i](h, temb)
                i += 1
        assert not hs
        if self.progressive == "output_skip":
            return pyramid, i
        return m[i + 1](self.act(m[i](h))), i + 2
