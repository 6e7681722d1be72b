"""Input validation shared by every public entry point.

Each helper raises ``ValueError`` (bad value) or ``TypeError`` (bad type) with a
message that names the argument and the allowed values, so that bad input never
turns into a silent NaN further down.
"""
from __future__ import annotations

import math
import threading
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
    Cost: one host read (``torch.aminmax``) for a tensor ``t``, none for a Python number.
    """
    return time_range(t, x, T, name=name, low=low)[0]


def time_range(t, x: torch.Tensor | None, T: float, *, name: str = "t",
               low: float = 0.0) -> tuple[torch.Tensor, float, float]:
    """:func:`as_time` that also returns the checked (min, max) of the times as Python floats."""
    value = None if isinstance(t, torch.Tensor) else t
    t = prepare_time(t, x, name)
    lo, hi = (float(value),) * 2 if value is not None else read_values(torch.aminmax(t))
    check_time_range(lo, hi, T, name=name, low=low)
    return t, lo, hi


def prepare_time(t, x: torch.Tensor | None, name: str = "t") -> torch.Tensor:
    """The checks of :func:`as_time` that read no value: ``t`` as a float (B,) tensor on x's device.

    Raises: TypeError / ValueError as :func:`as_time` for a wrong type, shape, batch size or device.
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
    return t


def check_time_range(lo: float, hi: float, T: float, *, name: str = "t", low: float = 0.0) -> None:
    """Raise the errors of :func:`as_time` for times whose (min, max) are (lo, hi) (NaN: not finite)."""
    slack = 1e-6 * max(T, 1.0)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"{name} contains NaN or infinite values")
    if lo < low - slack or hi > T + slack:
        raise ValueError(f"{name} must lie in [{low:g}, T={T:g}]; got values in [{lo:g}, {hi:g}]")


def read_values(values) -> list[float]:
    """0-d tensors (on one device) read to the host as Python floats in ONE transfer (one synchronisation).

    Cast to float64 (float32 on MPS, which has no float64): exact for every float32 value and for
    integers below 2**53 (2**24 on MPS).
    """
    values = list(values)
    dtype = torch.float32 if values[0].device.type == "mps" else torch.float64
    return torch.stack([v.to(dtype) for v in values]).tolist()


def check_label_range(lo: float, hi: float, num_classes: int, y: torch.Tensor) -> None:
    """Raise ValueError unless labels with (min, max) = (lo, hi) lie in [0, num_classes] (num_classes: the
    null class); ``y`` (the labels) is read only for the message."""
    if lo < 0 or hi > num_classes:
        raise ValueError(f"y must lie in [0, num_classes={num_classes}] (num_classes = the null class); got values in "
                         f"[{int(y.min())}, {int(y.max())}]")


class _Validated(threading.local):
    depth = 0


_VALIDATED = _Validated()
_is_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", None) or (lambda: False)  # torch < 2.3: none


def inputs_validated() -> bool:
    """True while :class:`scoresde.ScoreModel` calls its network with a time and labels it has checked
    itself (in its one host read): the network's own value checks (which would each synchronise a
    GPU) are then skipped; their checks that read no value still run."""
    return _VALIDATED.depth > 0


def skip_value_checks() -> bool:
    """True inside a ``torch.compile`` trace (a host read would break the graph) and while a
    :class:`~scoresde.ScoreModel` calls the network with a time and labels it has checked (its one read)."""
    return _is_compiling() or inputs_validated()


def check_labels(y, x: torch.Tensor, num_classes: int | None, *, values: bool = True) -> torch.Tensor | None:
    """Class labels y for a batch x: (B,) int64 on x's device, the null class for y=None.

    The null class is index ``num_classes`` (the embedding has num_classes + 1 rows).
    Arguments:
        y: None or an integer tensor (B,) in [0, num_classes] (num_classes = null).
        x: the batch (B, ...).
        num_classes: K of a class-conditional network, or None.
        values: also check the range of y (one host read; skipped under ``torch.compile`` and for a
            :class:`~scoresde.ScoreModel` call, which checks it in its own read); False: only the
            checks that read no value.
    Returns: None for an unconditional network, else the (B,) labels.
    Raises:
        ValueError: y given to an unconditional network (num_classes=None), of the wrong shape
            or outside [0, num_classes]. TypeError: y not an integer tensor.
    """
    if num_classes is None:
        if y is not None:
            raise ValueError("y (class labels) given to a network built with num_classes=None (unconditional); "
                             "call it without y, or build it with num_classes=K")
        return None
    if y is None:
        return torch.full((x.shape[0],), num_classes, dtype=torch.long, device=x.device)
    if not isinstance(y, torch.Tensor) or y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise TypeError("y must be an integer tensor of class labels, shape (B,)")
    if y.shape != (x.shape[0],):
        raise ValueError(f"y must have shape (B,) = ({x.shape[0]},); got {tuple(y.shape)}")
    y = y.to(x.device).long()
    if values and y.numel() and not skip_value_checks():
        check_label_range(*read_values(torch.aminmax(y)), num_classes, y)  # one host read
    return y


def bcast(c: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """View a per-sample coefficient (B,) so that it broadcasts against x (B, ...)."""
    return c.reshape(c.shape[0], *([1] * (x.dim() - 1)))
