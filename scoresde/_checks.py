"""Input validation shared by every public entry point.

Each helper raises ``ValueError`` (bad value) or ``TypeError`` (bad type) with a
message that names the argument and the allowed values, so that bad input never
turns into a silent NaN further down.
"""
from __future__ import annotations

import math
from typing import Iterable

import torch


def check_choice(name: str, value, choices: Iterable[str]) -> str:
    """Return ``value`` if it is one of ``choices``; else raise ValueError listing them."""
    choices = tuple(choices)
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, one of {list(choices)}; got {type(value).__name__}")
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; valid values are {list(choices)}")
    return value


def check_positive(name: str, value, *, integer: bool = False, allow_zero: bool = False) -> None:
    """Raise unless ``value`` is a finite number > 0 (>= 0 with ``allow_zero``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        kind = "an integer" if integer else "a number"
        raise TypeError(f"{name} must be {kind}; got {value!r}")
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be finite and {bound}; got {value!r}")


def check_finite(name: str, x: torch.Tensor, *, floating: bool = False) -> None:
    """Raise ValueError if ``x`` holds NaN or infinity (TypeError if it is not a tensor, or,
    with ``floating``, not a floating-point tensor)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(x).__name__}")
    if floating and not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor; got dtype {x.dtype}")
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or infinite values")


def check_device(name: str, device) -> torch.device:
    """Return ``device`` as a ``torch.device`` that can hold data.

    Raises:
        ValueError: an unknown device string, or the "meta" device (its tensors have shapes but no
            values, so every later step would fail inside torch with an unrelated message).
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"{name} {device!r} is not a torch device ({str(err).splitlines()[0]}); "
                         "use e.g. 'cpu' or 'cuda'") from None
    if dev.type == "meta":
        raise ValueError(f"{name} 'meta' holds no values (tensors there have shapes only); use 'cpu' or 'cuda'")
    return dev


def check_batch(name: str, x, *, floating: bool = True, min_dim: int = 1, finite: bool = True) -> None:
    """Check a batch ``x`` of shape (B, ...) before any computation touches it.

    The one check behind the public entry points that take data (``ScoreModel``, the SDE methods,
    ``log_likelihood`` / ``encode`` / ``decode`` / ``bits_per_dim``, ``ddpm_vlb``, the losses):
    torch itself would turn each of these inputs into NaN or an unrelated RuntimeError.

    Arguments:
        name: the argument's name, for the messages. x: the batch.
        floating: require a floating-point dtype (integer data give NaN or integer-truncated results).
        min_dim: least number of dimensions. finite: also reject NaN / inf values.
    Raises:
        TypeError: x is not a tensor, or (``floating``) not floating-point.
        ValueError: x is on the "meta" device, has fewer than ``min_dim`` dimensions, is empty
            (batch size 0 or a zero-size dimension), or (``finite``) holds NaN / inf.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (B, ...); got {type(x).__name__}")
    if x.device.type == "meta":
        raise ValueError(f"{name} is on the 'meta' device, which holds shapes but no values; create it on 'cpu' "
                         "or 'cuda'")
    if floating and not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor; got dtype {x.dtype} (convert with .float(); "
                        "integer levels map to [-1, 1] with scoresde.data.levels_to_float)")
    if x.dim() < min_dim:
        raise ValueError(f"{name} must have shape (B, ...) with at least {min_dim} dimension(s); got shape "
                         f"{tuple(x.shape)}")
    if x.numel() == 0:
        what = "batch size 0" if x.dim() >= 1 and x.shape[0] == 0 else "a zero-size dimension"
        raise ValueError(f"{name} is empty ({what}, shape {tuple(x.shape)}); pass at least one sample")
    if finite:
        check_finite(name, x)


def as_time(t, x: torch.Tensor | None, T: float, *, name: str = "t", low: float = 0.0) -> torch.Tensor:
    """Return ``t`` as a float tensor of shape (B,), checked against ``x`` and [low, T].

    Arguments:
        t: a Python number, a 0-d tensor (broadcast to the batch) or a (B,) tensor.
        x: the state (B, ...) whose batch size ``t`` must match, or None.
        T: the end of the time interval.
        low: the start of the allowed interval (0 or a sampler's eps).
    Raises:
        ValueError: wrong shape, non-finite values, or values outside [low, T]
            (a relative slack of 1e-6 absorbs float rounding of grid ends).
    """
    device = x.device if x is not None else None
    if x is not None:
        if x.dim() < 1:
            raise ValueError(f"x must have a batch dimension, shape (B, ...); got shape {tuple(x.shape)}")
        check_batch("x", x, floating=False, finite=False)
    if not isinstance(t, torch.Tensor):
        if isinstance(t, bool) or not isinstance(t, (int, float)):
            raise TypeError(f"{name} must be a number or a tensor; got {type(t).__name__}")
        t = torch.tensor(float(t), dtype=torch.float64, device=device)
    elif not t.is_floating_point():
        t = t.to(torch.float64)
    if t.dim() == 0:
        t = t.reshape(1).expand(x.shape[0] if x is not None else 1)
    if t.dim() != 1:
        raise ValueError(f"{name} must have shape (B,) or be a scalar; got shape {tuple(t.shape)}")
    if t.device.type == "meta" or t.numel() == 0:
        raise ValueError(f"{name} must hold at least one time on a real device; got shape {tuple(t.shape)} "
                         f"on {t.device}")
    if x is not None:
        if t.shape[0] != x.shape[0]:
            raise ValueError(f"{name} has batch size {t.shape[0]} but x has batch size {x.shape[0]}")
        if t.device != x.device:
            t = t.to(x.device)
    slack = 1e-6 * max(T, 1.0)
    lo, hi = float(t.min()), float(t.max())
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"{name} contains NaN or infinite values")
    if lo < low - slack or hi > T + slack:
        raise ValueError(f"{name} must lie in [{low:g}, T={T:g}]; got values in [{lo:g}, {hi:g}]")
    return t


def bcast(c: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """View a per-sample coefficient (B,) so that it broadcasts against x (B, ...)."""
    return c.reshape(c.shape[0], *([1] * (x.dim() - 1)))
