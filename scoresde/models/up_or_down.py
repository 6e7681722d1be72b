"""FIR up- and down-sampling of images with plain convolutions (no compiled extension).

The reference score-SDE code resamples with StyleGAN2's ``upfirdn2d``, a CUDA kernel that its
``op/`` package compiles when it is imported (so the code cannot be imported on a machine
without CUDA). The same operation is written here with ``F.pad`` and a depthwise ``F.conv2d``:

    upfirdn2d(x, k, up, down, pad) = conv2d(pad(zero_insert(x, up), pad), flip(k), stride=down)

zero_insert puts up - 1 zeros after every pixel along each axis; the kernel k (kh, kw) is applied
to every channel separately (groups = C). It equals the reference's CPU path
``op/upfirdn2d.py upfirdn2d_native`` for the non-negative pads used here.

The four resamplers below take a 1-D FIR kernel k (default [1, 3, 3, 1]), made 2-D as the outer
product k k^T and normalised to sum to 1 (times factor^2 when upsampling, so that a constant
image keeps its value):

* :func:`upsample_2d` / :func:`downsample_2d`: FIR filtering with zero-insertion / decimation by
  ``factor``, (B, C, H, W) -> (B, C, H f, W f) / (B, C, H / f, W / f);
* :func:`upsample_conv_2d`: a transposed 3x3 (k x k) convolution of stride ``factor`` followed by
  the FIR filter, one padding for both (StyleGAN2's fused op);
* :func:`conv_downsample_2d`: the FIR filter followed by a convolution of stride ``factor``.

Reference: Karras et al. 2020 (StyleGAN2), ``dnnlib/tflib/ops/upfirdn_2d.py``; the reference
score-SDE code's ``models/up_or_down_sampling.py``; Zhang 2019 ("Making convolutional networks
shift-invariant again", the anti-aliasing FIR kernels).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch.nn import functional as F

DEFAULT_KERNEL = (1, 3, 3, 1)


def setup_kernel(k: Sequence[float], dtype=torch.float32, device=None) -> torch.Tensor:
    """The 2-D FIR kernel of a 1-D (separable: outer product) or 2-D square kernel, summing to 1.

    Arguments:
        k: 1-D taps (n,) or a square 2-D kernel (n, n); not all zero.
    Returns:
        (n, n) tensor of ``dtype`` on ``device``.
    Raises:
        ValueError: not 1-D or square 2-D, or taps summing to 0.
    """
    k = torch.as_tensor(k, dtype=torch.float64)
    if k.dim() == 1:
        k = torch.outer(k, k)
    if k.dim() != 2 or k.shape[0] != k.shape[1]:
        raise ValueError(f"FIR kernel must be 1-D or square 2-D; got shape {tuple(k.shape)}")
    s = float(k.sum())
    if s == 0.0:
        raise ValueError("FIR kernel taps sum to 0; they cannot be normalised")
    return (k / s).to(dtype=dtype, device=device)


def upfirdn2d(x: torch.Tensor, kernel: torch.Tensor, up: int = 1, down: int = 1,
              pad: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """Upsample by zero insertion, pad, FIR-filter and decimate each channel of x.

    Arguments:
        x: (B, C, H, W) images.
        kernel: (kh, kw) FIR kernel (applied as a true convolution, i.e. flipped for conv2d).
        up, down: integer up- and down-sampling factors (>= 1).
        pad: (before, after) zero padding of both spatial axes after upsampling (>= 0).
    Returns:
        (B, C, (H up + p0 + p1 - kh) // down + 1, (W up + p0 + p1 - kw) // down + 1).
    Raises:
        ValueError: x not 4-D, factors below 1 or negative pads.
    """
    if x.dim() != 4:
        raise ValueError(f"x must have shape (B, C, H, W); got {tuple(x.shape)}")
    if up < 1 or down < 1 or min(pad) < 0:
        raise ValueError(f"upfirdn2d needs up, down >= 1 and pads >= 0; got up={up}, down={down}, pad={pad}")
    B, C, H, W = x.shape
    if up > 1:
        x = F.pad(x.reshape(B, C, H, 1, W, 1), (0, up - 1, 0, 0, 0, up - 1)).reshape(B, C, H * up, W * up)
    p0, p1 = pad
    x = F.pad(x, (p0, p1, p0, p1))
    kh, kw = kernel.shape
    w = torch.flip(kernel, (0, 1)).to(dtype=x.dtype, device=x.device)[None, None].expand(C, 1, kh, kw)
    return F.conv2d(x, w, stride=down, groups=C)


def upsample_2d(x: torch.Tensor, k: Sequence[float] = DEFAULT_KERNEL, factor: int = 2, gain: float = 1.0):
    """FIR upsampling (B, C, H, W) -> (B, C, H factor, W factor); a constant image is scaled by ``gain``."""
    kern = setup_kernel(k, x.dtype, x.device) * (gain * factor ** 2)
    p = kern.shape[0] - factor
    return upfirdn2d(x, kern, up=factor, pad=((p + 1) // 2 + factor - 1, p // 2))


def downsample_2d(x: torch.Tensor, k: Sequence[float] = DEFAULT_KERNEL, factor: int = 2, gain: float = 1.0):
    """FIR downsampling (B, C, H, W) -> (B, C, H / factor, W / factor); a constant image is scaled by ``gain``."""
    kern = setup_kernel(k, x.dtype, x.device) * gain
    p = kern.shape[0] - factor
    return upfirdn2d(x, kern, down=factor, pad=((p + 1) // 2, p // 2))


def upsample_conv_2d(x: torch.Tensor, w: torch.Tensor, k: Sequence[float] = DEFAULT_KERNEL, factor: int = 2,
                     gain: float = 1.0) -> torch.Tensor:
    """Transposed convolution with weight w (out, in, n, n) at stride ``factor``, then the FIR filter.

    Shapes: x (B, in, H, W) -> (B, out, H factor, W factor).
    The reference's ``upsample_conv_2d`` flips w with ``w[..., ::-1, ::-1]``, which PyTorch
    rejects (negative slice steps raise ValueError), so its FIR upsampling convolution never ran;
    this is the operation it transcribes from StyleGAN2 (``torch.flip``).
    """
    out_c, in_c, n, n2 = w.shape
    if n != n2:
        raise ValueError(f"upsample_conv_2d needs a square kernel; got {n}x{n2}")
    kern = setup_kernel(k, x.dtype, x.device) * (gain * factor ** 2)
    p = (kern.shape[0] - factor) - (n - 1)
    groups = x.shape[1] // in_c
    wt = torch.flip(w.reshape(groups, -1, in_c, n, n), (-2, -1)).permute(0, 2, 1, 3, 4)
    wt = wt.reshape(groups * in_c, -1, n, n)
    x = F.conv_transpose2d(x, wt, stride=factor, padding=0, groups=groups)
    return upfirdn2d(x, kern, pad=((p + 1) // 2 + factor - 1, p // 2 + 1))


def conv_downsample_2d(x: torch.Tensor, w: torch.Tensor, k: Sequence[float] = DEFAULT_KERNEL, factor: int = 2,
                       gain: float = 1.0) -> torch.Tensor:
    """The FIR filter, then a convolution with weight w (out, in, n, n) at stride ``factor``.

    Shapes: x (B, in, H, W) -> (B, out, H / factor, W / factor).
    """
    n = w.shape[-1]
    kern = setup_kernel(k, x.dtype, x.device) * gain
    p = (kern.shape[0] - factor) + (n - 1)
    x = upfirdn2d(x, kern, pad=((p + 1) // 2, p // 2))
    return F.conv2d(x, w, stride=factor, padding=0)


def naive_upsample_2d(x: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """Nearest-neighbour upsampling (B, C, H, W) -> (B, C, H factor, W factor)."""
    B, C, H, W = x.shape
    x = x.reshape(B, C, H, 1, W, 1).expand(B, C, H, factor, W, factor)
    return x.reshape(B, C, H * factor, W * factor)


def naive_downsample_2d(x: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """Average pooling over factor x factor blocks, (B, C, H, W) -> (B, C, H / factor, W / factor)."""
    B, C, H, W = x.shape
    return x.reshape(B, C, H // factor, factor, W // factor, factor).mean(dim=(3, 5))
