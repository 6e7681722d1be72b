"""Time embeddings of the score networks: sinusoidal and Gaussian-Fourier features.

A network receives the output of :func:`scoresde.score.network_time`, whose range depends on
the ``time_input`` of the :class:`~scoresde.ScoreModel`:

    "label"  (N - 1) t in [0, N - 1]      (999 t, continuous VP / sub-VP nets)
    "index"  integer step i in {0..N-1}    (DDPM-trained nets)
    "sigma"  sigma(t), e.g. [0.01, 50]     (VE nets)
    "t"      raw t in [0, 1]

Both embeddings must resolve a change of t by 1e-3 on each of these ranges (case C09 of
``cases.md``: DDPM's sinusoidal embedding, whose frequencies lie in [1e-4, 1], is nearly
constant on raw t in [0, 1] and on small sigma). How each treats its input:

* :class:`SinusoidalEmbedding` takes the input u as it is (DDPM / Transformer features
  [sin(u f_k), cos(u f_k)]) but spreads the frequencies f_k geometrically over
  [1 / max_period, max_freq] = [1e-4, 1e4] instead of DDPM's [1e-4, 1]. The low half covers
  labels and indices up to ~1e4 as DDPM's does; the high half resolves raw t and sigma.
* :class:`GaussianFourierEmbedding` takes log(u) (u clamped below at ``min_input`` = 1e-6, so the
  integer index 0 is finite), with random fixed frequencies W ~ N(0, scale^2), scale = 16:
  [sin(2 pi W log u), cos(2 pi W log u)], exactly the reference code's NCSN++ embedding of
  log sigma. A log input is scale-free: a change of t by 1e-3 moves log u by at least
  ~1e-3 on every range above, which the frequencies |W| ~ 16 resolve.

The relative change ||e(t + 1e-3) - e(t)|| / ||e(t)|| of each embedding on each range is
checked in ``tests/test_models.py`` (C09).

Reference: Ho et al. 2020 (DDPM code ``get_timestep_embedding``); Vaswani et al. 2017, Sec. 3.5;
Tancik et al. 2020 (Fourier features); Song et al. 2021, App. H and the reference code's
``layerspp.GaussianFourierProjection``.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .._checks import check_choice, check_labels, check_positive, skip_value_checks  # noqa: F401 (check_labels)
from ..schedules import work_dtype

EMBEDDINGS = ("sinusoidal", "fourier")


class SinusoidalEmbedding(nn.Module):
    """Sinusoidal features of the time input as given, with a wide geometric band of frequencies.

    e(u) = [sin(u f_0), ..., sin(u f_{h-1}), cos(u f_0), ..., cos(u f_{h-1})], h = dim / 2,
    f_k = max_freq * (1 / (max_period * max_freq))^(k / (h - 1)), i.e. from ``max_freq`` down to
    ``1 / max_period``. With max_freq = 1 this is DDPM's embedding; the default 1e4 also
    resolves raw t in [0, 1] and small sigma (see the module docstring).

    Arguments:
        dim: embedding size (even, >= 4).
        max_period: the longest period, 1 / (lowest frequency); 1e4 as in DDPM.
        max_freq: the highest frequency (radians per unit of input).
    Shapes: time (B,) float -> (B, dim) float32.
    Raises: ValueError for an odd or too small ``dim``, non-positive periods.
    Reference: Ho et al. 2020 (code), Vaswani et al. 2017, Sec. 3.5.
    """

    def __init__(self, dim: int, max_period: float = 10000.0, max_freq: float = 1e4):
        super().__init__()
        check_positive("dim", dim, integer=True)
        if dim % 2 or dim < 4:
            raise ValueError(f"dim (embedding size) must be even and >= 4; got {dim}")
        check_positive("max_period", max_period)
        check_positive("max_freq", max_freq)
        half = dim // 2
        lo, hi = -math.log(max_period), math.log(max_freq)
        freqs = torch.exp(hi + (lo - hi) * torch.arange(half, dtype=torch.float64) / (half - 1))
        self.dim, self.max_period, self.max_freq = int(dim), float(max_period), float(max_freq)
        self.register_buffer("freqs", freqs.to(torch.float32), persistent=False)

    def forward(self, time: torch.Tensor) -> torch.Tensor:
        # the phase is formed in float64 (float32 only where the device has no float64): u f_k
        # reaches 1e7 for labels, where float32 rounding would move the phase by ~1 radian
        wd = work_dtype(time.device)
        arg = time.to(wd)[:, None] * self.freqs.to(wd)[None, :]
        return torch.cat([torch.sin(arg), torch.cos(arg)], dim=1).to(torch.float32)


class GaussianFourierEmbedding(nn.Module):
    """Gaussian random Fourier features of log(time input), the reference code's NCSN++ embedding.

    e(u) = [sin(2 pi W log u'), cos(2 pi W log u')], u' = max(u, min_input), W (dim / 2,) drawn
    once from N(0, scale^2) with a fixed seed and stored in the module's state dict (not trained).

    Arguments:
        dim: embedding size (even, >= 2).
        scale: standard deviation of the frequencies W (16 in the reference code).
        min_input: lower clamp of u before the log (the integer index 0 and t = 0 stay finite).
        seed: seed of W, so that two networks built from the same config embed alike.
    Shapes: time (B,) float -> (B, dim) float32.
    Raises: ValueError for an odd ``dim`` or non-positive scale / min_input.
    Reference: Tancik et al. 2020; Song et al. 2021, App. H; reference ``GaussianFourierProjection``.
    """

    def __init__(self, dim: int, scale: float = 16.0, min_input: float = 1e-6, seed: int = 0):
        super().__init__()
        check_positive("dim", dim, integer=True)
        if dim % 2:
            raise ValueError(f"dim (embedding size) must be even; got {dim}")
        check_positive("scale", scale)
        check_positive("min_input", min_input)
        g = torch.Generator().manual_seed(int(seed))
        self.register_buffer("W", torch.randn(dim // 2, generator=g, dtype=torch.float64).to(torch.float32) * scale)
        self.dim, self.scale, self.min_input = int(dim), float(scale), float(min_input)

    def forward(self, time: torch.Tensor) -> torch.Tensor:
        wd = work_dtype(time.device)
        u = torch.log(time.to(wd).clamp(min=self.min_input))
        arg = 2 * math.pi * u[:, None] * self.W.to(wd)[None, :]
        return torch.cat([torch.sin(arg), torch.cos(arg)], dim=1).to(torch.float32)


def make_embedding(name: str, dim: int) -> nn.Module:
    """The embedding called ``name`` ("sinusoidal" or "fourier") of size ``dim``, default settings."""
    check_choice("embedding", name, EMBEDDINGS)
    return SinusoidalEmbedding(dim) if name == "sinusoidal" else GaussianFourierEmbedding(dim)


def check_time(time, x: torch.Tensor) -> torch.Tensor:
    """The network's time input as a float (B,) tensor on x's device.

    Accepts a (B,) tensor or a scalar (number or 0-d tensor, broadcast to the batch).
    Raises:
        TypeError: time is not a number or tensor.
        ValueError: time of another shape or batch size than x's, or NaN / inf values.
    """
    if not isinstance(time, torch.Tensor):
        if isinstance(time, bool) or not isinstance(time, (int, float)):
            raise TypeError(f"time must be a (B,) tensor or a number; got {type(time).__name__}")
        time = torch.tensor(float(time), device=x.device)
    if time.dim() == 0:
        time = time.reshape(1).expand(x.shape[0])
    if time.dim() != 1 or time.shape[0] != x.shape[0]:
        raise ValueError(f"time must have shape (B,) = ({x.shape[0]},) to match x of shape {tuple(x.shape)}; "
                         f"got shape {tuple(time.shape)}")
    time = time.to(device=x.device, dtype=torch.float64 if time.dtype == torch.float64 else torch.float32)
    if not skip_value_checks() and not bool(torch.isfinite(time).all()):  # one host read
        raise ValueError("time contains NaN or infinite values")
    return time
