"""Uniform dequantization of integer-level data, and the checks of levels and data ranges it shares
with :func:`scoresde.bits_per_dim` and :func:`scoresde.ddpm_vlb`.

Integer-level data (images) have no density; bits/dim bounds their discrete negative
log2-likelihood through a density on the levels: y = low + width (k + u) / L, u ~ U[0, 1) fills
level k's bin (Theis et al. 2016, Sec. 3.1; Ho et al. 2019, Flow++, Sec. 3.1).
"""
from __future__ import annotations

import math

import torch

from ._checks import check_batch, check_finite, check_positive

__all__ = ["uniform_dequantize"]


def _check_generator(generator) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None; got {type(generator).__name__}")


def _check_range(data_range) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in data_range)
    except (TypeError, ValueError):
        raise ValueError(f"data_range must be a pair (low, high) of numbers; got {data_range!r}") from None
    if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
        raise ValueError(f"data_range must be finite with low < high; got {data_range!r}")
    return low, high


def _check_levels(x: torch.Tensor, num_levels: int) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor of integer levels; got {type(x).__name__}")
    if x.dtype == torch.bool or x.is_complex():
        raise TypeError(f"x must hold integer levels (uint8 / int / integer-valued float); got dtype {x.dtype}")
    check_batch("x", x, floating=False, finite=False)  # at least one sample, on a device with values
    if x.is_floating_point():
        check_finite("x", x)
        if not bool((x == torch.round(x)).all()):
            raise ValueError("x must hold integer levels in [0, num_levels - 1] when dequantize=True; got "
                             "non-integer values (pass dequantize=False for continuous data)")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0 or hi > num_levels - 1:
        raise ValueError(f"x must hold integer levels in [0, num_levels - 1 = {num_levels - 1}]; got values in "
                         f"[{lo:g}, {hi:g}] (is num_levels right? scikit-learn's 8x8 digits have 17 levels)")


def uniform_dequantize(x: torch.Tensor, *, num_levels: int = 256, data_range=(-1.0, 1.0),
               generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Uniform dequantization of integer levels: y = low + width (k + u) / num_levels, u ~ U[0, 1).

    Arguments:
        x: (B, *S) integer levels k in [0, num_levels - 1] (uint8, int or integer-valued float).
        num_levels: number of levels L (>= 2). data_range: (low, high), width = high - low.
        generator: for u. dtype: floating dtype of the result.
    Returns:
        (B, *S) continuous data in [low, high); level k fills the bin [low + k w / L, low + (k+1) w / L).
        The noise variance is (w / L)^2 / 12 (1.27e-6 for L = 256 on [0, 1]; case C11).
    Raises:
        ValueError: levels outside [0, L - 1], non-integer or NaN values, bad data_range.
        TypeError: a ``generator`` that is not a torch.Generator.
    Reference: Theis et al. 2016, Sec. 3.1; Ho et al. 2019 (Flow++), Sec. 3.1.
    """
    check_positive("num_levels", num_levels, integer=True)
    if num_levels < 2:
        raise ValueError(f"num_levels must be >= 2; got {num_levels}")
    low, high = _check_range(data_range)
    _check_levels(x, num_levels)
    _check_generator(generator)
    device = generator.device if generator is not None else x.device
    u = torch.rand(x.shape, generator=generator, device=device, dtype=dtype).to(x.device)
    return low + (high - low) * (x.to(dtype) + u) / num_levels
