"""The layers of :class:`~scoresde.models.NCSNpp`, with the reference code's names and parameters.

Each class keeps the reference's attribute names (``GroupNorm_0``, ``Conv_0``, ``Dense_0``,
``NIN_0`` ...) and registers them in the reference's order, so that state dicts and
``parameters()`` lists map one to one onto the reference's ``models/layerspp.py`` modules:

* :class:`GaussianFourierProjection`: ``W`` (nf,), a *non-trainable* parameter;
* :class:`NIN`: a 1x1 convolution stored as ``W`` (in, out) and ``b`` (out,);
* :class:`AttnBlockpp`: ``GroupNorm_0``, ``NIN_0..3`` (q, k, v, output projection);
* :class:`ResnetBlockDDPMpp`: ``GroupNorm_0``, ``Conv_0``, ``Dense_0``, ``GroupNorm_1``,
  ``Conv_1`` and, when the channels change, ``NIN_0`` (or ``Conv_2`` with ``conv_shortcut``);
* :class:`ResnetBlockBigGANpp`: the same with ``Conv_2`` (1x1) when the channels change or it
  resamples (the up / down sampling happens inside the block, FIR or naive);
* :class:`Upsample` / :class:`Downsample`: ``Conv_0`` (nearest / stride 2) or ``Conv2d_0``
  (FIR; weight and bias) when ``with_conv``;
* :class:`Combine`: ``Conv_0`` (1x1), then concatenation or sum.

Initialisation is the reference's ``default_init`` (DDPM's variance scaling, fan-average,
uniform), with ``init_scale`` 0 meaning 1e-10.

Reference: Song et al. 2021, App. H; the reference code's ``models/layerspp.py`` and
``models/layers.py`` (Apache-2.0); Brock et al. 2019 (BigGAN residual blocks); Ho et al. 2020.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from . import up_or_down as fir_ops

_SQRT2 = math.sqrt(2.0)
ACTIVATIONS = {"elu": nn.ELU, "relu": nn.ReLU, "lrelu": lambda: nn.LeakyReLU(0.2), "swish": nn.SiLU}


def default_init(shape, scale: float = 1.0) -> torch.Tensor:
    """DDPM's init: uniform with variance scale / fan_avg (fans over dims 1 and 0); scale 0 means 1e-10."""
    scale = 1e-10 if scale == 0 else scale
    receptive = math.prod(shape) / shape[1] / shape[0]
    fan_avg = (shape[1] + shape[0]) * receptive / 2
    return (torch.rand(*shape) * 2.0 - 1.0) * math.sqrt(3.0 * scale / fan_avg)


def conv3x3(in_ch: int, out_ch: int, stride: int = 1, bias: bool = True, init_scale: float = 1.0,
            padding: int = 1) -> nn.Conv2d:
    """3x3 convolution with DDPM's init and zero bias (the reference's ``ddpm_conv3x3``)."""
    conv = nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=padding, bias=bias)
    conv.weight.data = default_init(conv.weight.shape, init_scale)
    if bias:
        nn.init.zeros_(conv.bias)
    return conv


def conv1x1(in_ch: int, out_ch: int, init_scale: float = 1.0) -> nn.Conv2d:
    """1x1 convolution with DDPM's init and zero bias (the reference's ``ddpm_conv1x1``)."""
    conv = nn.Conv2d(in_ch, out_ch, kernel_size=1)
    conv.weight.data = default_init(conv.weight.shape, init_scale)
    nn.init.zeros_(conv.bias)
    return conv


def dense(in_dim: int, out_dim: int) -> nn.Linear:
    lin = nn.Linear(in_dim, out_dim)
    lin.weight.data = default_init(lin.weight.shape)
    nn.init.zeros_(lin.bias)
    return lin


def group_norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=min(ch // 4, 32), num_channels=ch, eps=1e-6)


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_positions: int = 10000) -> torch.Tensor:
    """DDPM's sinusoidal embedding (B,) -> (B, dim) float32: [sin(u f_k), cos(u f_k)], f_k = 10^(-4 k / (h - 1))."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=timesteps.device)
                      * -(math.log(max_positions) / (half - 1)))
    emb = timesteps.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=1)
    return F.pad(emb, (0, 1)) if dim % 2 == 1 else emb


class GaussianFourierProjection(nn.Module):
    """[sin(2 pi W u), cos(2 pi W u)] of u (B,) -> (B, 2 nf); W ~ N(0, scale^2) (nf,), not trained.

    NCSN++ feeds it log sigma.
    """

    def __init__(self, embedding_size: int = 256, scale: float = 1.0):
        super().__init__()
        self.W = nn.Parameter(torch.randn(embedding_size) * scale, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_proj = x[:, None] * self.W[None, :] * 2 * math.pi
        return torch.cat([torch.sin(x_proj), torch.cos(x_proj)], dim=-1)


class NIN(nn.Module):
    """Per-pixel linear map ("network in network"), y = x W + b over channels; W (in, out), b (out,)."""

    def __init__(self, in_dim: int, num_units: int, init_scale: float = 0.1):
        super().__init__()
        self.W = nn.Parameter(default_init((in_dim, num_units), init_scale))
        self.b = nn.Parameter(torch.zeros(num_units))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # contiguous: the einsum returns channels-last strides, on which GroupNorm's backward cannot be
        # batched by torch.func.vmap (the exact trace of the likelihood would fall back to its loop)
        return (torch.einsum("bchw,co->bohw", x, self.W) + self.b[None, :, None, None]).contiguous()


class Combine(nn.Module):
    """Combine(x, y) = cat([Conv_0(x), y]) ("cat") or Conv_0(x) + y ("sum"); Conv_0 1x1 dim1 -> dim2."""

    def __init__(self, dim1: int, dim2: int, method: str = "cat"):
        super().__init__()
        if method not in ("cat", "sum"):
            raise ValueError(f"progressive_combine must be 'cat' or 'sum'; got {method!r}")
        self.Conv_0 = conv1x1(dim1, dim2)
        self.method = method

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.Conv_0(x)
        return torch.cat([h, y], dim=1) if self.method == "cat" else h + y


class AttnBlockpp(nn.Module):
    """Single-head self-attention over the pixels, x + NIN_3(attn) (divided by sqrt 2 with skip_rescale)."""

    def __init__(self, channels: int, skip_rescale: bool = False, init_scale: float = 0.0):
        super().__init__()
        self.GroupNorm_0 = group_norm(channels)
        self.NIN_0 = NIN(channels, channels)
        self.NIN_1 = NIN(channels, channels)
        self.NIN_2 = NIN(channels, channels)
        self.NIN_3 = NIN(channels, channels, init_scale=init_scale)
        self.skip_rescale = skip_rescale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        h = self.GroupNorm_0(x)
        q, k, v = self.NIN_0(h), self.NIN_1(h), self.NIN_2(h)
        w = torch.einsum("bchw,bcij->bhwij", q, k) * (int(C) ** (-0.5))
        w = F.softmax(w.reshape(B, H, W, H * W), dim=-1).reshape(B, H, W, H, W)
        h = self.NIN_3(torch.einsum("bhwij,bcij->bchw", w, v))
        return (x + h) / _SQRT2 if self.skip_rescale else x + h


class _FIRConv(nn.Module):
    """3x3 convolution fused with FIR up- or down-sampling; ``weight`` (out, in, 3, 3), ``bias`` (out,)."""

    def __init__(self, in_ch: int, out_ch: int, up: bool, fir_kernel):
        super().__init__()
        self.weight = nn.Parameter(default_init((out_ch, in_ch, 3, 3)))
        self.bias = nn.Parameter(torch.zeros(out_ch))
        self.up, self.fir_kernel = up, tuple(fir_kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        op = fir_ops.upsample_conv_2d if self.up else fir_ops.conv_downsample_2d
        return op(x, self.weight, self.fir_kernel) + self.bias.reshape(1, -1, 1, 1)


class Upsample(nn.Module):
    """x2 upsampling: nearest (+ ``Conv_0`` 3x3) or FIR (+ fused ``Conv2d_0``), in_ch -> out_ch."""

    def __init__(self, in_ch: int | None = None, out_ch: int | None = None, with_conv: bool = False,
                 fir: bool = False, fir_kernel=fir_ops.DEFAULT_KERNEL):
        super().__init__()
        out_ch = out_ch if out_ch else in_ch
        if with_conv and not fir:
            self.Conv_0 = conv3x3(in_ch, out_ch)
        elif with_conv:
            self.Conv2d_0 = _FIRConv(in_ch, out_ch, True, fir_kernel)
        self.fir, self.with_conv, self.fir_kernel, self.out_ch = fir, with_conv, tuple(fir_kernel), out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.fir:
            h = F.interpolate(x, (x.shape[2] * 2, x.shape[3] * 2), mode="nearest")
            return self.Conv_0(h) if self.with_conv else h
        return self.Conv2d_0(x) if self.with_conv else fir_ops.upsample_2d(x, self.fir_kernel, factor=2)


class Downsample(nn.Module):
    """/2 downsampling: average pooling or a stride-2 ``Conv_0``; FIR filter or a fused ``Conv2d_0``."""

    def __init__(self, in_ch: int | None = None, out_ch: int | None = None, with_conv: bool = False,
                 fir: bool = False, fir_kernel=fir_ops.DEFAULT_KERNEL):
        super().__init__()
        out_ch = out_ch if out_ch else in_ch
        if with_conv and not fir:
            self.Conv_0 = conv3x3(in_ch, out_ch, stride=2, padding=0)
        elif with_conv:
            self.Conv2d_0 = _FIRConv(in_ch, out_ch, False, fir_kernel)
        self.fir, self.with_conv, self.fir_kernel, self.out_ch = fir, with_conv, tuple(fir_kernel), out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.fir:
            if self.with_conv:
                return self.Conv_0(F.pad(x, (0, 1, 0, 1)))  # TF's 'SAME' padding of a stride-2 conv
            return F.avg_pool2d(x, 2, stride=2)
        return self.Conv2d_0(x) if self.with_conv else fir_ops.downsample_2d(x, self.fir_kernel, factor=2)


class ResnetBlockDDPMpp(nn.Module):
    """DDPM's residual block: conv(act(GN x)) + Dense(act temb), conv(dropout(act(GN h))), + skip."""

    def __init__(self, act: nn.Module, in_ch: int, out_ch: int | None = None, temb_dim: int | None = None,
                 conv_shortcut: bool = False, dropout: float = 0.1, skip_rescale: bool = False,
                 init_scale: float = 0.0):
        super().__init__()
        out_ch = out_ch if out_ch else in_ch
        self.GroupNorm_0 = group_norm(in_ch)
        self.Conv_0 = conv3x3(in_ch, out_ch)
        if temb_dim is not None:
            self.Dense_0 = dense(temb_dim, out_ch)
        self.GroupNorm_1 = group_norm(out_ch)
        self.Dropout_0 = nn.Dropout(dropout)
        self.Conv_1 = conv3x3(out_ch, out_ch, init_scale=init_scale)
        if in_ch != out_ch:
            if conv_shortcut:
                self.Conv_2 = conv3x3(in_ch, out_ch)
            else:
                self.NIN_0 = NIN(in_ch, out_ch)
        self.skip_rescale, self.act, self.out_ch, self.conv_shortcut = skip_rescale, act, out_ch, conv_shortcut

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.Conv_0(self.act(self.GroupNorm_0(x)))
        if temb is not None:
            h = h + self.Dense_0(self.act(temb))[:, :, None, None]
        h = self.Conv_1(self.Dropout_0(self.act(self.GroupNorm_1(h))))
        if x.shape[1] != self.out_ch:
            x = self.Conv_2(x) if self.conv_shortcut else self.NIN_0(x)
        return (x + h) / _SQRT2 if self.skip_rescale else x + h


class ResnetBlockBigGANpp(nn.Module):
    """BigGAN's residual block, resampling both paths inside (``up`` / ``down``; FIR or naive)."""

    def __init__(self, act: nn.Module, in_ch: int, out_ch: int | None = None, temb_dim: int | None = None,
                 up: bool = False, down: bool = False, dropout: float = 0.1, fir: bool = False,
                 fir_kernel=fir_ops.DEFAULT_KERNEL, skip_rescale: bool = True, init_scale: float = 0.0):
        super().__init__()
        out_ch = out_ch if out_ch else in_ch
        self.GroupNorm_0 = group_norm(in_ch)
        self.up, self.down, self.fir, self.fir_kernel = up, down, fir, tuple(fir_kernel)
        self.Conv_0 = conv3x3(in_ch, out_ch)
        if temb_dim is not None:
            self.Dense_0 = dense(temb_dim, out_ch)
        self.GroupNorm_1 = group_norm(out_ch)
        self.Dropout_0 = nn.Dropout(dropout)
        self.Conv_1 = conv3x3(out_ch, out_ch, init_scale=init_scale)
        if in_ch != out_ch or up or down:
            self.Conv_2 = conv1x1(in_ch, out_ch)
        self.skip_rescale, self.act, self.in_ch, self.out_ch = skip_rescale, act, in_ch, out_ch

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.up:
            return fir_ops.upsample_2d(x, self.fir_kernel, 2) if self.fir else fir_ops.naive_upsample_2d(x, 2)
        if self.down:
            return fir_ops.downsample_2d(x, self.fir_kernel, 2) if self.fir else fir_ops.naive_downsample_2d(x, 2)
        return x

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        h = self._resample(self.act(self.GroupNorm_0(x)))
        x = self._resample(x)
        h = self.Conv_0(h)
        if temb is not None:
            h = h + self.Dense_0(self.act(temb))[:, :, None, None]
        h = self.Conv_1(self.Dropout_0(self.act(self.GroupNorm_1(h))))
        if self.in_ch != self.out_ch or self.up or self.down:
            x = self.Conv_2(x)
        return (x + h) / _SQRT2 if self.skip_rescale else x + h
