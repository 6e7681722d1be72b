"""A check that integer-level data use the number of levels they are declared with.

bits/dim depend on ``num_levels`` through the dequantization offset log2(num_levels / width):
the 8x8 digits (17 levels) evaluated with num_levels=256 score 9.78 bits/dim instead of 4.27,
with nothing to show that the number is wrong. :func:`check_levels` counts the distinct values
of a batch and warns when a batch large enough to tell (>= :data:`MIN_BATCH` samples) uses
fewer than num_levels / 4 of them. It is meant to be called by
:func:`scoresde.bits_per_dim` and by the ``scoresde likelihood`` command.
"""
from __future__ import annotations

import warnings

import torch

__all__ = ["check_levels", "LevelsWarning", "MIN_BATCH", "MIN_FRACTION"]

#: batches smaller than this are not checked (too few values to tell)
MIN_BATCH = 64
#: warn when fewer than num_levels * MIN_FRACTION distinct values occur
MIN_FRACTION = 0.25


class LevelsWarning(UserWarning):
    """The data use far fewer distinct values than the ``num_levels`` they are evaluated with."""


def check_levels(x, num_levels: int, *, warn: bool = True, stacklevel: int = 2) -> str | None:
    """Warn when a batch of integer-level data uses fewer than ``num_levels / 4`` distinct values.

    Arguments:
        x: the batch (B, ...) of levels (any dtype; the distinct values over the whole batch are
            counted). Batches with B < :data:`MIN_BATCH` (64) are not checked.
        num_levels: the declared number of levels L.
        warn: issue a :class:`LevelsWarning` (default); False only returns the text.
        stacklevel: of the warning, as for ``warnings.warn`` (2: the caller's line).
    Returns:
        The warning text (one line naming the count, L and the batch size), or None when the
        batch is small or uses at least L / 4 distinct values.
    """
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(x)
    if x.dim() == 0 or x.shape[0] < MIN_BATCH:
        return None
    distinct = int(torch.unique(x.detach()).numel())
    if distinct >= num_levels * MIN_FRACTION:
        return None
    msg = (f"the data use only {distinct} distinct values in a batch of {x.shape[0]} but num_levels={num_levels}: "
           f"bits/dim map and dequantize them as {num_levels}-level data, which is wrong if they have fewer levels "
           "(the 8x8 digits, 17 levels, score 9.78 bits/dim with num_levels=256 instead of 4.27); pass the data's "
           "true number of levels")
    if warn:
        warnings.warn(msg, LevelsWarning, stacklevel=stacklevel + 1)
    return msg
