"""The exponential moving average of a model's weights, as the training loop keeps it.

:func:`ema_model`: ``torch.optim.swa_utils.AveragedModel`` with ``use_buffers=False``:
parameters are averaged, buffers are copied from the online model at every update (case C20).
The first update copies the parameters (AveragedModel's rule, so the random initialisation
carries no weight); update n >= 2 uses decay d_n = min(decay, (1 + n) / (10 + n)) (the reference
code's warm-up, n its ``num_updates``) or d_n = decay without warm-up (:func:`ema_decay`):
ema_n = d_n ema_{n-1} + (1 - d_n) p_n.

Reference: Song et al. 2021, reference ``models/ema.py``; Ho et al. 2020, App. B (EMA).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

__all__ = ["ema_decay", "ema_model"]


def ema_decay(n: int, decay: float, warmup: bool = True) -> float:
    """Decay d_n used at EMA update n >= 2: min(decay, (1 + n) / (10 + n)) with warm-up, else decay.

    Reference: Song et al. 2021, reference ``models/ema.py`` (``use_num_updates=True``).
    """
    return min(decay, (1.0 + n) / (10.0 + n)) if warmup else float(decay)


def ema_model(model: nn.Module, decay: float = 0.9999, warmup: bool = True) -> AveragedModel:
    """An EMA copy of ``model``: ``AveragedModel(model, multi_avg_fn=..., use_buffers=False)``.

    Call ``ema.update_parameters(model)`` after each optimizer step. Update 1 copies the
    parameters; update n >= 2 sets ema <- d_n ema + (1 - d_n) p with d_n = :func:`ema_decay`.
    Buffers are not averaged: they are copied from ``model`` at every update, so they are
    bit-identical to the online model's (a running average of, e.g., registered beta tables
    gave black DDIM samples in a peer, case C20). ``ema.module`` is the averaged model.

    Arguments:
        model: the online module.
        decay: in [0, 1).
        warmup: use the (1 + n) / (10 + n) warm-up.
    Returns: the AveragedModel (its ``n_averaged`` buffer counts the updates).
    Raises: ValueError: decay outside [0, 1).
    Reference: ``torch.optim.swa_utils.get_ema_multi_avg_fn``; Song et al. 2021 reference EMA.
    """
    if not (isinstance(decay, (int, float)) and 0.0 <= decay < 1.0):
        raise ValueError(f"decay must lie in [0, 1); got {decay!r}")

    @torch.no_grad()
    def update(ema_params, params, num_averaged):
        d = ema_decay(int(num_averaged) + 1, decay, warmup)
        if ema_params and ema_params[0].is_floating_point():
            torch._foreach_lerp_(ema_params, params, 1.0 - d)
        else:
            for e, p in zip(ema_params, params):
                e.copy_(e * d + p * (1.0 - d))

    return AveragedModel(model, multi_avg_fn=update, use_buffers=False)
