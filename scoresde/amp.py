"""Mixed precision and ``torch.compile`` for the training loop (``TrainConfig(amp=..., compile=...)``).

:class:`TrainPrecision` is what :func:`scoresde.train` asks at each update:

* ``amp=None`` (default): float32, nothing changes.
* ``amp="bf16"``: the loss's forward pass (network and loss arithmetic) under
  ``torch.autocast(device, torch.bfloat16)``, the backward outside it (autograd replays the
  casts); parameters, gradients, Adam's moments and the EMA stay float32. bf16 has float32's
  exponent range, so no loss scaling is needed. Works on CPU and CUDA.
* ``amp="fp16"``: float16 autocast with ``torch.amp.GradScaler``: the loss is scaled before
  backward, the gradients unscaled before clipping; a step whose gradients overflow is skipped
  (the optimizer and the EMA do not move, the scale halves; the step still counts, as in
  PyTorch's recipe). The scaler's state is stored in checkpoints so a resumed run continues with
  the same scale. A gradient that stays non-finite once the scale has fallen below 1 is an error
  (a diverged run, not an overflow).
* ``compile``: False (default); True (``torch.compile`` with the default inductor backend) or a
  backend name ("inductor", "aot_eager", "eager", ...). Only the network used for the training
  loss is compiled (an ``OptimizedModule`` sharing the parameters): the model's ``state_dict``
  keys, the EMA and the checkpoints are unchanged, so ``compile`` may change on resume.

``amp`` changes the arithmetic, so it is part of the run's config and must match on resume;
``compile`` does not change it beyond float reassociation and is free on resume.

Reference: PyTorch "Automatic Mixed Precision" recipe and ``torch.amp.GradScaler``;
Micikevicius et al. 2018 (loss scaling); ``torch.compile``.
"""
from __future__ import annotations

import torch

from .device import amp_dtype, autocast
from .score import ScoreModel

__all__ = ["TrainPrecision", "check_compile"]

_BACKENDS_HINT = "False, True or a torch.compile backend name such as 'inductor', 'aot_eager', 'eager'"


def check_compile(value) -> bool | str:
    """A ``compile`` setting, checked.

    Arguments:
        value: False, True, or a non-empty backend name string.
    Returns:
        the value (bool or str).
    Raises:
        ValueError: any other value, or a backend name torch does not list.
    Reference: ``torch.compile``, ``torch._dynamo.list_backends``.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value:
        import torch._dynamo

        names = set(torch._dynamo.list_backends(exclude_tags=())) | {"inductor", "eager", "aot_eager"}
        if value not in names:
            raise ValueError(f"compile {value!r} is not a torch.compile backend; valid values are "
                             f"{_BACKENDS_HINT} (installed: {sorted(names)})")
        return value
    raise ValueError(f"compile must be {_BACKENDS_HINT}; got {value!r}")


def _grad_scaler(device: torch.device):
    """``torch.amp.GradScaler(device.type)`` (torch >= 2.3); on older torch the CUDA one, and a named error on CPU."""
    if hasattr(torch.amp, "GradScaler"):
        return torch.amp.GradScaler(device.type)
    if device.type == "cuda":
        return torch.cuda.amp.GradScaler()
    raise ValueError(f"amp='fp16' on {device.type} needs torch >= 2.3 (torch.amp.GradScaler); this is torch "
                     f"{torch.__version__}: use amp='bf16' or a CUDA device")


class TrainPrecision:
    """The precision policy of one training run: autocast dtype, gradient scaler, compiled network.

    Arguments:
        amp: None, "bf16" or "fp16" (see the module docstring).
        compile: False, True or a backend name.
        device: the training device (``torch.device``).
    Raises:
        ValueError: a bad ``amp`` or ``compile`` value.
    Reference: PyTorch AMP recipe; ``torch.amp.GradScaler``; ``torch.compile``.
    """

    def __init__(self, amp, compile, device: torch.device):
        """Arguments: amp, compile, device as in the class docstring."""
        self.dtype = amp_dtype(amp)
        self.compile = check_compile(compile)
        self.device = torch.device(device)
        self.scaler = _grad_scaler(self.device) if self.dtype == torch.float16 else None

    def context(self):
        """The autocast context of the loss's forward pass (a no-op without amp).

        Returns: a context manager.
        """
        return autocast(self.device, self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        """``loss.backward()``, scaled by the GradScaler under fp16.

        Arguments: loss: a scalar tensor. Returns: None.
        """
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def unscale(self, opt: torch.optim.Optimizer) -> None:
        """Divide the gradients by the loss scale (fp16 only), before clipping.

        Arguments: opt: the optimizer. Returns: None.
        """
        if self.scaler is not None:
            self.scaler.unscale_(opt)

    def may_skip(self) -> bool:
        """Whether a non-finite gradient is an overflow to skip (fp16 with a scale >= 1) rather than an error.

        Returns: bool.
        """
        return self.scaler is not None and float(self.scaler.get_scale()) >= 1.0

    def step(self, opt: torch.optim.Optimizer, finite: bool) -> bool:
        """The optimizer step (skipped by the scaler for non-finite fp16 gradients), then the scale update.

        Arguments: opt: the optimizer; finite: whether the gradient norm is finite.
        Returns: True when the parameters were updated.
        """
        if self.scaler is None:
            opt.step()
            return True
        self.scaler.step(opt)  # skips when unscale_ found inf / NaN
        self.scaler.update()
        return bool(finite)

    def state_dict(self) -> dict | None:
        """The scaler's state for the checkpoint (None without fp16).

        Returns: a dict or None.
        """
        return self.scaler.state_dict() if self.scaler is not None else None

    def load_state_dict(self, state: dict | None) -> None:
        """Restore the scaler's state from a checkpoint (a missing state keeps the initial scale).

        Arguments: state: what :meth:`state_dict` returned, or None. Returns: None.
        """
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)

    def compiled(self, train_model):
        """The model the losses call: ``train_model`` itself, or one whose network is compiled.

        Arguments:
            train_model: the training ScoreModel (its network possibly in DDP).
        Returns:
            ``train_model`` without compile; else a ScoreModel around ``torch.compile(net)``
            (same parameters, same conversions).
        """
        if not self.compile or not isinstance(train_model, ScoreModel):
            return train_model
        kwargs = {} if self.compile is True else {"backend": self.compile}
        net = torch.compile(train_model.net, **kwargs)
        return ScoreModel(net, train_model.sde, train_model.prediction, train_model.time_input,
                          train_model.discrete, train_model.learn_variance)

    def describe(self) -> str:
        """A short description, e.g. "bf16 autocast, compiled (inductor)".

        Returns: str.
        """
        parts = [{None: "float32", torch.bfloat16: "bf16 autocast",
                  torch.float16: "fp16 autocast + GradScaler"}[self.dtype]]
        if self.compile:
            parts.append(f"compiled ({'inductor' if self.compile is True else self.compile})")
        return ", ".join(parts)
