"""The in-memory data set every loader returns (:class:`Dataset`) and the map from integer levels to floats.

:func:`levels_to_float` is the one map from integer levels to bin-centre floats (the bins bits/dim
dequantizes into; see :mod:`scoresde.data`).

The loaders are in :mod:`scoresde.data` (digits, toys, rebuilding from a config) and
:mod:`scoresde.data_files` (arrays and image folders).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch


def levels_to_float(levels: torch.Tensor, num_levels: int) -> torch.Tensor:
    """Map integer levels k in {0, ..., L-1} to the bin centres (2k + 1)/L - 1 in (-1, 1) (float32).

    Arguments:
        levels: integer tensor, any shape.
        num_levels: L >= 2.
    Returns:
        float32 tensor of the same shape: the centre of cell k of [-1, 1] cut into L cells (the
        cells ``scoresde.bits_per_dim`` dequantizes into).
    Raises:
        TypeError: levels not an integer tensor. ValueError: num_levels < 2 or a level outside
        [0, L - 1].
    Reference: Theis et al. 2016 (uniform dequantization cells); Song et al. 2021, App. D.
    """
    if not isinstance(levels, torch.Tensor) or levels.is_floating_point() or levels.dtype == torch.bool:
        raise TypeError("levels must be an integer torch.Tensor")
    _check_levels(levels, num_levels, "levels")
    return (levels.to(torch.float64).mul(2.0).add(1.0).div(num_levels).sub(1.0)).to(torch.float32)


def float_to_levels(x: torch.Tensor, num_levels: int) -> torch.Tensor:
    """Inverse of :func:`levels_to_float`: the cell k = floor((x + 1) L / 2) holding x, clamped to [0, L-1].

    Arguments:
        x: float tensor, any shape, values in [-1, 1] (the data range of quantized data).
        num_levels: L >= 2, the number of cells [-1, 1] is cut into.
    Returns:
        int64 tensor of x's shape with the cell indices in [0, L - 1] (values outside [-1, 1] go
        to the end cells; computed in float64).
    Raises:
        ValueError: num_levels not an integer >= 2, or NaN in x.
    Reference: Theis et al. 2016 (uniform dequantization cells); Song et al. 2021, App. D.
    """
    if isinstance(num_levels, bool) or not isinstance(num_levels, int) or num_levels < 2:
        raise ValueError(f"num_levels must be an integer >= 2; got {num_levels!r}")
    if bool(torch.isnan(x).any()):
        raise ValueError("x contains NaN")
    k = torch.floor((x.to(torch.float64) + 1.0) * num_levels / 2.0)
    return k.clamp(0, num_levels - 1).to(torch.int64)


def _check_levels(levels: torch.Tensor, num_levels, name: str) -> None:
    if isinstance(num_levels, bool) or not isinstance(num_levels, int) or num_levels < 2:
        raise ValueError(f"num_levels must be an integer >= 2; got {num_levels!r}")
    if levels.numel():
        lo, hi = int(levels.min()), int(levels.max())
        if lo < 0 or hi > num_levels - 1:
            raise ValueError(f"{name} must lie in [0, {num_levels - 1}] for num_levels={num_levels}; "
                             f"got values in [{lo}, {hi}]")


class Dataset(torch.utils.data.Dataset):
    """An in-memory data set: floats for training, integer levels for bits/dim, and its range.

    Arguments:
        data: float tensor (n, *S), the values a model is trained on.
        data_range: (lo, hi), the interval the data live in (for quantized data, the interval
            the levels are mapped to; for unbounded data, a box holding >= 99.9% of the points).
        levels: optional integer tensor (n, *S) in [0, num_levels - 1]; then ``data`` must be
            ``levels_to_float(levels, num_levels)``.
        num_levels: the number of integer levels (17 for the digits, 256 for 8-bit images).
        bounded: True when every point lies in ``data_range``.
        name: a short description.
        config: dict from which :func:`load_dataset` rebuilds the data set (stored in
            checkpoints), or None when it cannot be rebuilt (an in-memory array).
        labels: optional integer class labels (n,) in [0, num_classes - 1]; stored as int64.
        num_classes: the number of classes K (default with labels: max(labels) + 1); only with labels.
        classes: optional names of the K classes (e.g. the sub-folder names of an image folder).
    Attributes:
        data, levels, num_levels, data_range, bounded, name, ``labels`` (LongTensor (n,) or None),
        ``num_classes`` (K or None), ``classes`` (list of K names or None), ``shape`` (the
        per-sample shape S), ``dim`` (D = prod(S), the "dimension" of bits/dim).
    Indexing: ``ds[i]`` is ``data[i]`` (S,); ``len(ds)`` is n.
    Raises:
        ValueError / TypeError: inconsistent shapes, dtypes or ranges; labels not an integer
        tensor of shape (n,), outside [0, num_classes - 1], or num_classes without labels.
    """

    def __init__(self, data: torch.Tensor, data_range: Sequence[float], *, levels: torch.Tensor | None = None,
                 num_levels: int | None = None, bounded: bool = True, name: str = "data",
                 config: dict | None = None, labels: torch.Tensor | None = None, num_classes: int | None = None,
                 classes: Sequence[str] | None = None):
        if not isinstance(data, torch.Tensor) or not data.is_floating_point():
            raise TypeError("data must be a floating-point torch.Tensor")
        if data.dim() < 2:
            raise ValueError(f"data must have shape (n, *S) with at least one feature dimension; got {tuple(data.shape)}")
        if not bool(torch.isfinite(data).all()):
            raise ValueError(f"{name}: data contains NaN or infinite values")
        lo, hi = (float(v) for v in data_range)
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(f"data_range must be finite (lo, hi) with lo < hi; got {tuple(data_range)}")
        if levels is not None:
            if levels.shape != data.shape:
                raise ValueError(f"levels shape {tuple(levels.shape)} differs from data shape {tuple(data.shape)}")
            _check_levels(levels, num_levels, "levels")
            levels = levels.to(torch.int64)
        elif num_levels is not None:
            raise ValueError("num_levels given without levels")
        self.labels, self.num_classes = _check_labels(labels, num_classes, data.shape[0], name)
        if classes is not None:
            classes = [str(c) for c in classes]
            if self.labels is None or len(classes) != self.num_classes:
                raise ValueError(f"{name}: classes must name the num_classes = {self.num_classes} classes of the "
                                 f"labels; got {len(classes)} names")
        self.classes = classes
        self.data = data.to(torch.float32).contiguous()
        self.levels = levels
        self.num_levels = num_levels
        self.data_range = (lo, hi)
        self.bounded = bool(bounded)
        self.name = name
        self._config = config

    @property
    def shape(self) -> tuple[int, ...]:
        """Per-sample shape S."""
        return tuple(self.data.shape[1:])

    @property
    def dim(self) -> int:
        """D = prod(S), the number of dimensions per sample (the D of bits/dim)."""
        return int(np.prod(self.shape))

    def __len__(self) -> int:
        return self.data.shape[0]

    def __getitem__(self, i):
        return self.data[i]

    def config(self) -> dict:
        """A JSON-serialisable description; :func:`load_dataset` rebuilds the data from it.

        Contains "name", the loader's arguments, "shape", "num_levels" and "data_range". For data
        built from an in-memory array "loader" is "memory" and the data cannot be rebuilt.
        """
        base = dict(self._config) if self._config is not None else {"loader": "memory", "name": self.name}
        base.update({"shape": list(self.shape), "num_levels": self.num_levels,
                     "data_range": list(self.data_range), "n": len(self)})
        return base

    def __repr__(self) -> str:
        lv = f", num_levels={self.num_levels}" if self.num_levels else ""
        lv += f", num_classes={self.num_classes}" if self.num_classes else ""
        return f"Dataset({self.name!r}, n={len(self)}, shape={self.shape}, data_range={self.data_range}{lv})"


def _check_labels(labels, num_classes, n: int, name: str):
    """(labels as int64 (n,) or None, num_classes or None), checked."""
    if labels is None:
        if num_classes is not None:
            raise ValueError(f"{name}: num_classes given without labels")
        return None, None
    if isinstance(labels, np.ndarray):
        if labels.dtype.kind not in "iu":
            raise TypeError(f"{name}: labels must be integers; got dtype {labels.dtype}")
        labels = torch.from_numpy(labels.astype(np.int64))
    if not isinstance(labels, torch.Tensor) or labels.is_floating_point() or labels.is_complex() \
            or labels.dtype == torch.bool:
        raise TypeError(f"{name}: labels must be an integer tensor (n,) of class indices")
    if labels.shape != (n,):
        raise ValueError(f"{name}: labels must have shape (n,) = ({n},); got {tuple(labels.shape)}")
    labels = labels.to(torch.int64).contiguous()
    lo, hi = (int(labels.min()), int(labels.max())) if n else (0, -1)
    if num_classes is None:
        num_classes = hi + 1
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"{name}: num_classes must be an integer >= 1; got {num_classes!r}")
    if lo < 0 or hi > num_classes - 1:
        raise ValueError(f"{name}: labels must lie in [0, num_classes - 1] = [0, {num_classes - 1}]; "
                         f"got values in [{lo}, {hi}]")
    return labels, int(num_classes)


def _from_levels(levels: torch.Tensor, num_levels: int, name: str, config: dict | None, **labels) -> Dataset:
    return Dataset(levels_to_float(levels, num_levels), (-1.0, 1.0), levels=levels, num_levels=num_levels,
                   name=name, config=config, **labels)
