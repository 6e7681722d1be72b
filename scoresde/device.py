"""Where the work runs and in which precision: device choice, and a network under autocast.

* :func:`resolve_device`: "auto" / None -> "cuda" when CUDA is available, else "cpu"; a named
  device is checked (CUDA present, index in range, not "meta") so that a typo fails before any
  work with a message naming the argument.
* :func:`amp_dtype`: the autocast dtype of an ``amp`` setting (None, "bf16", "fp16").
* :func:`autocast`: ``torch.autocast`` for a device and dtype, or a no-op for dtype None.
* :func:`autocast_score`: a score function whose *network* runs under ``torch.autocast``
  (bfloat16 by default) while everything around it stays float32: the ODE state of
  :func:`scoresde.log_likelihood`, the conversions eps -> score of a
  :class:`~scoresde.ScoreModel` (the network's output is cast back to float32 before them), the
  divergence's vector-Jacobian product (autograd replays the casts). bf16 autocast works on CPU
  too; on CUDA it is where the tensor cores pay.

Reference: PyTorch "Automatic Mixed Precision" (``torch.autocast``, ``torch.amp.GradScaler``);
Micikevicius et al. 2018, "Mixed precision training" (float32 master state, low-precision
arithmetic in the network).
"""
from __future__ import annotations

import contextlib
from typing import Callable

import torch
from torch import nn

from ._checks import check_device
from .score import ScoreModel

__all__ = ["AMP_DTYPES", "resolve_device", "amp_dtype", "amp_name", "autocast", "autocast_score", "AutocastNet"]

#: the ``amp`` settings and their autocast dtypes
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_DTYPE_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16", "bfloat16": "bf16", "float16": "fp16",
                "bf16": "bf16", "fp16": "fp16"}


def resolve_device(device=None, name: str = "device") -> torch.device:
    """The ``torch.device`` to run on.

    Arguments:
        device: None or "auto" (CUDA when ``torch.cuda.is_available()``, else CPU), a string
            ("cpu", "cuda", "cuda:1", ...) or a ``torch.device``.
        name: the argument's name in error messages.
    Returns:
        a ``torch.device``; "cuda" without an index stays index-less (torch's current device).
    Raises:
        ValueError: not a device string, the "meta" device, "cuda" when CUDA is not available,
            a CUDA index >= ``torch.cuda.device_count()``, "mps" when MPS is not available, or a
            CPU index other than 0 ("cpu:3").
    Reference: ``torch.device``; ``torch.cuda.is_available``.
    """
    if device is None or (isinstance(device, str) and device == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = check_device(name, device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{name} {str(device)!r}: CUDA is not available on this machine (torch "
                             f"{torch.__version__}); use 'cpu' or 'auto'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{name} {str(device)!r}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                             f"indices 0..{torch.cuda.device_count() - 1}")
    elif dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError(f"{name} {str(device)!r}: MPS is not available on this machine (torch "
                             f"{torch.__version__}); use 'cpu' or 'auto'")
    elif dev.type == "cpu" and dev.index not in (None, 0):
        raise ValueError(f"{name} {str(device)!r}: the CPU is one device, 'cpu' (or 'cpu:0'); got index {dev.index}")
    return dev


def amp_dtype(amp, name: str = "amp") -> torch.dtype | None:
    """The autocast dtype of an ``amp`` setting.

    Arguments:
        amp: None or False (no autocast), "bf16" / "bfloat16" / ``torch.bfloat16``, or
            "fp16" / "float16" / ``torch.float16``.
        name: the argument's name in error messages.
    Returns:
        ``torch.bfloat16``, ``torch.float16`` or None.
    Raises:
        ValueError: any other value (the message lists the allowed ones).
    Reference: ``torch.autocast`` (its ``dtype`` argument).
    """
    if amp is None or amp is False:
        return None
    key = _DTYPE_NAMES.get(amp) if isinstance(amp, (str, torch.dtype)) else None
    if key is None:
        raise ValueError(f"{name} must be None, 'bf16' or 'fp16' (or torch.bfloat16 / torch.float16); got {amp!r}")
    return AMP_DTYPES[key]


def amp_name(amp, name: str = "amp") -> str | None:
    """The canonical name of an ``amp`` setting, as a run's config stores it.

    Arguments:
        amp: any value :func:`amp_dtype` accepts.
        name: the argument's name in error messages.
    Returns:
        "bf16", "fp16" or None.
    Raises:
        ValueError: any other value (the message lists the allowed ones).
    """
    dtype = amp_dtype(amp, name)
    return None if dtype is None else _DTYPE_NAMES[dtype]


def autocast(device, dtype: torch.dtype | None):
    """``torch.autocast(device.type, dtype)``, or a no-op context for ``dtype`` None.

    Arguments:
        device: a ``torch.device`` or device string (only its type matters).
        dtype: ``torch.bfloat16``, ``torch.float16`` or None.
    Returns:
        a context manager.
    Raises:
        ValueError: a device type autocast does not support (e.g. "meta"), or another dtype.
    Reference: ``torch.autocast``; ``torch.amp.is_autocast_available``.
    """
    if dtype is None:
        return contextlib.nullcontext()
    if dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"autocast dtype must be torch.bfloat16 or torch.float16; got {dtype}")
    kind = torch.device(device).type
    available = getattr(torch.amp, "is_autocast_available", None)  # torch >= 2.4; before: CPU and CUDA
    if not (available(kind) if available is not None else kind in ("cpu", "cuda")):
        raise ValueError(f"autocast is not available on device type {kind!r}; use 'cpu' or 'cuda' data")
    return torch.autocast(device_type=kind, dtype=dtype)


class AutocastNet(nn.Module):
    """A network called under ``torch.autocast``, its output cast back to the input's dtype.

    The wrapped network's parameters are shared (not copied) and stay float32. ``num_classes``
    and ``config()`` of the wrapped network are passed through, so a
    :class:`~scoresde.ScoreModel` around it behaves as around the network itself.

    Arguments:
        net: the network ``net(x, time, **kwargs)``.
        dtype: ``torch.bfloat16`` (default) or ``torch.float16``.
    Shapes: as ``net``; the output has x's dtype (float32 for float32 x) whatever autocast did.
    Raises:
        ValueError: another dtype; at call time, a device type without autocast ("meta").
    Reference: PyTorch AMP recipe (forward under autocast, float32 outside it).
    """

    def __init__(self, net: nn.Module, dtype: torch.dtype = torch.bfloat16):
        """Arguments: net: the network; dtype: the autocast dtype (bf16 or fp16)."""
        super().__init__()
        if not callable(net):
            raise TypeError(f"net must be a callable nn.Module; got {type(net).__name__}")
        self.dtype = amp_dtype(dtype, "dtype")
        self.net = net
        if hasattr(net, "num_classes"):
            self.num_classes = net.num_classes

    def config(self) -> dict:
        """The wrapped network's ``config()`` (the autocast wrapper is not part of the model).

        Returns: a dict. Raises: AttributeError when the network has no ``config()``.
        """
        return self.net.config()

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """``net(x, *args, **kwargs)`` under autocast, cast back to x's dtype.

        Arguments: x (B, *S) floating; args / kwargs as the network takes them.
        Returns: the network's output in x's dtype.
        """
        with autocast(x.device, self.dtype):
            out = self.net(x, *args, **kwargs)
        want = x.dtype if x.is_floating_point() else torch.float32
        return out.to(want) if isinstance(out, torch.Tensor) else out


def autocast_score(score_fn: Callable, dtype: torch.dtype = torch.bfloat16) -> Callable:
    """A score function whose network runs under ``torch.autocast``; what surrounds it stays float32.

    Use it for the likelihood or the samplers on a GPU:
    ``bits_per_dim(autocast_score(model), sde, x)``. The ODE state (x, delta_logp), the solver's
    error control and the divergence's accumulation stay in x's dtype (float32); only the
    network's convolutions and matrix products run in ``dtype``.

    Arguments:
        score_fn: a :class:`~scoresde.ScoreModel` (then only its network is autocast: the result is
            a new ScoreModel sharing the network's parameters, its conversions eps -> score in
            float32), or any callable (x (B, *S), t (B,)) -> (B, *S) (then the whole call is
            autocast and its output cast back to x's dtype).
        dtype: ``torch.bfloat16`` (default; float32's exponent range, safe for scores near t = eps)
            or ``torch.float16`` (also "bf16" / "fp16").
    Returns:
        a callable (x, t, **kwargs) -> score in x's dtype; a ScoreModel for a ScoreModel input.
    Raises:
        TypeError: ``score_fn`` not callable. ValueError: another dtype; at call time, x on a
            device without autocast ("meta").
    Reference: PyTorch AMP (``torch.autocast``); Micikevicius et al. 2018 (float32 state,
        low-precision arithmetic); bf16: Kalamkar et al. 2019.
    """
    if not callable(score_fn):
        raise TypeError(f"score_fn must be callable (x, t) -> score; got {type(score_fn).__name__}")
    dt = amp_dtype(dtype, "dtype")
    if dt is None:
        raise ValueError("dtype must be torch.bfloat16 or torch.float16; got None")
    if isinstance(score_fn, ScoreModel):
        wrapped = ScoreModel(AutocastNet(score_fn.net, dt), score_fn.sde, prediction=score_fn.prediction,
                             time_input=score_fn.time_input, discrete=score_fn.discrete,
                             learn_variance=score_fn.learn_variance)
        return wrapped.train(score_fn.training)

    def autocast_fn(x: torch.Tensor, t: torch.Tensor, **kwargs) -> torch.Tensor:
        with autocast(x.device, dt):
            out = score_fn(x, t, **kwargs)
        return out.to(x.dtype) if isinstance(out, torch.Tensor) and x.is_floating_point() else out

    autocast_fn.autocast_dtype = dt
    return autocast_fn
