"""Data sets that ship with packages, user arrays and image folders; nothing is downloaded.

Every loader returns a :class:`Dataset`: an in-memory float tensor ``data`` of shape (n, *S)
with its ``data_range`` stated, and, for quantized data (images, digits), the integer ``levels``
(n, *S) in {0, ..., num_levels - 1} that bits/dim needs. Optional class ``labels`` (n,) int64 in
{0, ..., num_classes - 1} come with the digits (the 10 digit classes), with a ``labels`` array of
a ``.npz`` file (or ``labels=`` for in-memory arrays) and with an image folder of one sub-folder
per class; class-conditional training (``scoresde.train``) and the noise-conditional classifier
(``scoresde.train_classifier``) read them, unconditional training ignores them.

The one map from integer levels to floats (:func:`levels_to_float`):

    x = (2 k + 1) / num_levels - 1,    k in {0, ..., num_levels - 1}  ->  x in (-1, 1),

the centre of bin k when [-1, 1] is cut into num_levels equal bins. These are exactly the bins
that bits/dim dequantizes into (``scoresde.bits_per_dim``: y = -1 + 2 (k + u) / num_levels,
u ~ U[0, 1)), so a model is trained on the centres of the cells its likelihood is measured on.
(The reference score-SDE code trains on k/255 and evaluates on (k + u)/256, which puts the end
levels on the cell edges; negligible at 256 levels, 0.06 of a cell at 17.) Pass
``data_range=ds.data_range`` and ``num_levels=ds.num_levels`` to bits/dim, with ``ds.levels``.

Loaders:
    :func:`digits`        scikit-learn's 8x8 handwritten digits, 1 797 images, 17 gray levels
                          (0..16), fixed train / test split of 1 500 / 297 images, labels 0..9.
    :func:`toy`           2-D toys: "swiss_roll", "two_moons", "8gaussians", "checkerboard",
                          generated from a seed.
    :func:`from_array`    ``.npy`` / ``.npz`` files or in-memory arrays (labels: a ``labels`` key).
    :func:`image_folder`  a folder of image files (PIL), 256 levels per channel; or one
                          sub-folder of images per class (labels: the sorted sub-folder names).
    :func:`load_dataset`  rebuild any of the above from ``Dataset.config()`` (checkpoints).
"""
from __future__ import annotations

import math
import os
from typing import Sequence

import numpy as np
import torch

from ._checks import check_choice, check_positive

__all__ = [
    "Dataset",
    "digits",
    "digits_split",
    "toy",
    "from_array",
    "image_folder",
    "load_dataset",
    "levels_to_float",
    "float_to_levels",
    "DIGITS_LEVELS",
    "TOYS",
    "TOY_RANGE",
]

DIGITS_LEVELS = 17
DIGITS_N = 1797
DIGITS_TRAIN = 1500
DIGITS_SPLIT_SEED = 0
TOYS = ("swiss_roll", "two_moons", "8gaussians", "checkerboard")
TOY_RANGE = (-4.0, 4.0)
LABELS_KEY = "labels"  # the labels array of a .npz (from_array)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


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

    Returns an int64 tensor of x's shape (values outside [-1, 1] go to the end cells).
    Raises ValueError for num_levels < 2 or NaN in x.
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


def digits_split(split: str = "train") -> np.ndarray:
    """Indices into ``sklearn.datasets.load_digits()`` of the fixed train or test split.

    A permutation of the 1 797 images by ``numpy.random.RandomState(0)`` (a stream numpy keeps
    fixed across versions); the first 1 500 are "train", the remaining 297 "test".
    Returns sorted int64 indices. Raises ValueError for a split other than "train" / "test".
    """
    check_choice("split", split, ("train", "test"))
    perm = np.random.RandomState(DIGITS_SPLIT_SEED).permutation(DIGITS_N)
    part = perm[:DIGITS_TRAIN] if split == "train" else perm[DIGITS_TRAIN:]
    return np.sort(part).astype(np.int64)


def digits(split: str = "train") -> Dataset:
    """scikit-learn's 8x8 handwritten digits as integer gray levels 0..16 (num_levels = 17).

    The images ship inside scikit-learn (the UCI optical-recognition test set, 1 797 images of
    8x8 pixels, each pixel a count 0..16 of set bits in a 4x4 block); nothing is downloaded.

    Arguments:
        split: "train" (1 500 images), "test" (297 images) or "all" (1 797), see
            :func:`digits_split`.
    Returns:
        Dataset with levels (n, 1, 8, 8) int64 in [0, 16], data = (2k + 1)/17 - 1 (bin centres,
        in [-16/17, 16/17]), num_levels 17, data_range (-1, 1), D = 64, and the digit classes as
        labels (n,) int64 in 0..9 (``load_digits().target``), num_classes 10, classes "0".."9".
    Raises:
        ValueError: unknown split.
    Reference: Alpaydin & Kaynak 1998 (UCI "Optical Recognition of Handwritten Digits");
        ``sklearn.datasets.load_digits``.
    """
    check_choice("split", split, ("train", "test", "all"))
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = bunch.images  # (1797, 8, 8) float64 holding integers 0..16
    levels = torch.from_numpy(np.rint(images).astype(np.int64)).unsqueeze(1)
    labels = torch.from_numpy(np.asarray(bunch.target).astype(np.int64))
    if split != "all":
        idx = torch.from_numpy(digits_split(split))
        levels, labels = levels[idx], labels[idx]
    return _from_levels(levels, DIGITS_LEVELS, f"digits/{split}", {"loader": "digits", "split": split},
                        labels=labels, num_classes=10, classes=[str(k) for k in range(10)])


def toy(name: str, n: int = 10000, seed: int = 0) -> Dataset:
    """A 2-D toy distribution, n points drawn from ``torch.Generator().manual_seed(seed)``.

    The four FFJORD toys (Grathwohl et al. 2019, ``lib/toy_data.py``), drawn in float64:
        "swiss_roll"    t = 1.5 pi (1 + 2u), (t cos t, t sin t) / 5 + N(0, 0.2^2) noise;
        "two_moons"     two interleaved half circles (as ``sklearn.datasets.make_moons`` with
                        noise 0.1), then 2x + (-1, -0.2);
        "8gaussians"    N(c_k, 0.5^2 I) / sqrt(2), c_k = 4 (cos(k pi/4), sin(k pi/4));
        "checkerboard"  uniform on the 8 dark squares of a 4x4 board over [-4, 4]^2.
    Arguments:
        name: one of the names above.
        n: number of points (> 0).
        seed: the generator seed; the same (name, n, seed) gives the same points.
    Returns:
        Dataset (n, 2) float32, data_range (-4, 4) for all four; "checkerboard" lies in it
        exactly (bounded=True), the others have Gaussian tails and >= 99.9% of their mass in it.
    Raises:
        ValueError: unknown name (the message lists them), n <= 0.
    """
    check_choice("name", name, TOYS)
    check_positive("n", n, integer=True)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an integer; got {seed!r}")
    g = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    if name == "swiss_roll":
        t = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=g, dtype=f64))
        x = torch.stack([t * torch.cos(t), t * torch.sin(t)], 1) / 5 + 0.2 * torch.randn(n, 2, generator=g, dtype=f64)
    elif name == "two_moons":
        n_out = n // 2
        theta_out = math.pi * torch.rand(n_out, generator=g, dtype=f64)
        theta_in = math.pi * torch.rand(n - n_out, generator=g, dtype=f64)
        outer = torch.stack([torch.cos(theta_out), torch.sin(theta_out)], 1)
        inner = torch.stack([1 - torch.cos(theta_in), 0.5 - torch.sin(theta_in)], 1)
        x = torch.cat([outer, inner])[torch.randperm(n, generator=g)]
        x = x + 0.1 * torch.randn(n, 2, generator=g, dtype=f64)
        x = 2 * x + torch.tensor([-1.0, -0.2], dtype=f64)
    elif name == "8gaussians":
        k = torch.randint(0, 8, (n,), generator=g).to(f64)
        centers = 4 * torch.stack([torch.cos(k * math.pi / 4), torch.sin(k * math.pi / 4)], 1)
        x = (centers + 0.5 * torch.randn(n, 2, generator=g, dtype=f64)) / math.sqrt(2)
    else:
        x1 = 4 * torch.rand(n, generator=g, dtype=f64) - 2
        x2 = torch.rand(n, generator=g, dtype=f64) - 2 * torch.randint(0, 2, (n,), generator=g).to(f64)
        x2 = x2 + torch.floor(x1) % 2
        x = 2 * torch.stack([x1, x2], 1)
    return Dataset(x.to(torch.float32), TOY_RANGE, bounded=(name == "checkerboard"), name=f"toy/{name}",
                   config={"loader": "toy", "toy": name, "n_points": n, "seed": seed})


def from_array(source, *, key: str | None = None, num_levels: int | None = None,
               data_range: Sequence[float] | None = None, channels_last: bool = False,
               labels=None, num_classes: int | None = None) -> Dataset:
    """Data from a ``.npy`` / ``.npz`` file or an in-memory numpy array / torch tensor.

    Shapes: (n, d) vectors, (n, H, W) one-channel images (a channel axis is added) or
    (n, C, H, W) images (``channels_last=True`` for (n, H, W, C)).
    Integer arrays are levels: ``num_levels`` defaults to 256 for uint8 and must be given for
    other integer dtypes; floats are returned as they are, with ``data_range`` as given
    (checked) or, if omitted, the observed (min, max).

    Arguments:
        source: path to a .npy or .npz file, or an array / tensor.
        key: the array's name inside a .npz holding several arrays.
        num_levels: number of integer levels (integer data only).
        data_range: (lo, hi) of float data.
        channels_last: the 4-D array is (n, H, W, C).
        labels: class labels. None (default): a .npz's integer array named "labels" (n,), if it
            holds one, else no labels (and with ``key=None`` a .npz of two arrays, one named
            "labels", uses the other as the data); a str: the name of the labels array inside the
            .npz; an integer array / tensor (n,): the labels themselves (for in-memory data; with a
            file path the data set then cannot be rebuilt from its config); False: no labels.
        num_classes: the number of classes K (default: max(labels) + 1); only with labels.
    Returns:
        Dataset (integer data: levels plus bin-centre floats in (-1, 1); float data: float32 as
        given), with ``labels`` (n,) int64 and ``num_classes`` when labels were found.
    Raises:
        FileNotFoundError: no such file. ValueError: unknown extension, a .npz with several
        arrays and no (or a wrong) key, a wrong shape, fewer than 1 sample, NaN / inf, levels
        outside [0, num_levels - 1], floats outside data_range, num_levels for float data, a
        labels key that is not in the .npz (or given for a .npy), labels not of shape (n,) or
        outside [0, num_classes - 1].
        TypeError: bool, complex, object or string dtype; integer data without num_levels; float labels.
    """
    config = None
    auto_labels = labels is None
    if labels is False:
        labels = None
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no such file: {path}")
        ext = os.path.splitext(path)[1].lower()
        if ext not in (".npy", ".npz"):
            raise ValueError(f"unknown array file extension {ext!r} of {path}; valid values are ['.npy', '.npz']")
        try:
            loaded = np.load(path, allow_pickle=False)
        except ValueError as e:
            raise ValueError(f"{path}: cannot read the array ({e}); object arrays are not accepted") from None
        labels_key = None
        if ext == ".npz":
            with loaded:
                names = list(loaded.keys())
                if isinstance(labels, str):
                    if labels not in names:
                        raise ValueError(f"labels key {labels!r} not in {path}; valid values are {names}")
                    labels_key = labels
                elif auto_labels and LABELS_KEY in names and key != LABELS_KEY:
                    labels_key = LABELS_KEY
                if key is None:
                    data_names = [k for k in names if k != labels_key]
                    if len(data_names) != 1:
                        raise ValueError(f"{path} holds arrays {names}; choose one with key=")
                    key = data_names[0]
                if key not in names:
                    raise ValueError(f"key {key!r} not in {path}; valid values are {names}")
                arr = loaded[key]
                if labels_key is not None:
                    labels = loaded[labels_key]
        else:
            if isinstance(labels, str):
                raise ValueError(f"labels={labels!r} names an array of a .npz; {path} is a .npy (pass the labels "
                                 "array itself)")
            arr = loaded
        config = {"loader": "array", "path": os.path.abspath(path), "key": key, "num_levels_arg": num_levels,
                  "data_range_arg": list(data_range) if data_range is not None else None,
                  "channels_last": channels_last}
        if labels_key is not None:  # only then: configs of unlabelled files are unchanged
            config["labels"] = labels_key
            if num_classes is not None:
                config["num_classes_arg"] = num_classes
        elif labels is not None:
            config = None  # labels from memory: the data cannot be rebuilt from the file alone
        name = os.path.basename(path) + (f"[{key}]" if key else "")
    else:
        if isinstance(labels, str):
            raise ValueError(f"labels={labels!r} names an array of a .npz file; pass the labels array for in-memory data")
        arr = source
        name = "array"
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu()
    lab = {"labels": labels, "num_classes": num_classes} if labels is not None else {}
    if isinstance(arr, torch.Tensor):
        arr = arr.detach().cpu().numpy()
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"source must be a path, a numpy array or a torch tensor; got {type(source).__name__}")
    if arr.dtype == np.bool_ or arr.dtype.kind not in "iuf":
        raise TypeError(f"{name}: unsupported dtype {arr.dtype}; use integer levels or floats")
    if arr.ndim == 3:
        arr = arr[:, None]
    elif arr.ndim == 4 and channels_last:
        arr = np.ascontiguousarray(arr.transpose(0, 3, 1, 2))
    elif arr.ndim not in (2, 4):
        raise ValueError(f"{name}: shape {arr.shape} not understood; expected (n, d), (n, H, W) or (n, C, H, W)")
    if arr.shape[0] < 1 or arr.size == 0:
        raise ValueError(f"{name}: the array is empty, shape {arr.shape}")
    if arr.dtype.kind in "iu":
        if num_levels is None:
            if arr.dtype != np.uint8:
                raise TypeError(f"{name}: integer data of dtype {arr.dtype} needs num_levels "
                                "(the number of levels, e.g. 17 for values 0..16)")
            num_levels = 256
        if data_range is not None:
            raise ValueError("data_range applies to float data; integer levels map to (-1, 1)")
        levels = torch.from_numpy(arr.astype(np.int64))
        return _from_levels(levels, num_levels, name, config, **lab)
    if num_levels is not None:
        raise ValueError(f"{name}: num_levels given for float data of dtype {arr.dtype}; pass integer levels")
    data = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float64))
    if not bool(torch.isfinite(data).all()):
        raise ValueError(f"{name}: data contains NaN or infinite values")
    lo, hi = float(data.min()), float(data.max())
    if data_range is None:
        data_range = (lo, hi) if lo < hi else (lo - 1.0, hi + 1.0)
    elif lo < data_range[0] or hi > data_range[1]:
        raise ValueError(f"{name}: values in [{lo:g}, {hi:g}] fall outside data_range {tuple(data_range)}")
    return Dataset(data.to(torch.float32), data_range, name=name, config=config, **lab)


def image_folder(path, *, mode: str = "L", image_size: int | None = None) -> Dataset:
    """The image files of a folder as 8-bit levels; one sub-folder per class gives labels.

    Two layouts (as ``torchvision.datasets.ImageFolder`` for the second):

    * images directly inside ``path`` (sorted by name): no labels (sub-folders are ignored);
    * no images directly inside, but sub-folders holding them: each sub-folder is a class
      (hidden ones, starting with ".", are skipped), class k the k-th name in sorted order, the
      images in class order and by name within a class.

    Arguments:
        path: the folder. Files with extensions .png .jpg .jpeg .bmp .gif .tif .tiff .webp
            are read; others are ignored.
        mode: "L" (one gray channel) or "RGB" (three channels); images are converted by PIL.
        image_size: resize every image to image_size x image_size (PIL bicubic); without it all
            images must have the same size.
    Returns:
        Dataset with levels (n, C, H, W) in [0, 255], num_levels 256, data (2k + 1)/256 - 1 in
        (-1, 1); with class sub-folders also labels (n,) int64, num_classes and ``classes`` (the
        sub-folder names).
    Raises:
        FileNotFoundError: no such folder. ValueError: no image files (directly or in
        sub-folders), a class sub-folder without images, an unreadable file or images of
        different sizes (the message names the file), unknown mode.
    """
    check_choice("mode", mode, ("L", "RGB"))
    folder = os.fspath(path)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"no such folder: {folder}")
    if image_size is not None:
        check_positive("image_size", image_size, integer=True)
    files = _image_files(folder)
    classes, labels = None, None
    if not files:
        classes = sorted(d for d in os.listdir(folder)
                         if not d.startswith(".") and os.path.isdir(os.path.join(folder, d)))
        if not classes:
            raise ValueError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in {folder}, and no class sub-folders")
        per_class = []
        for c in classes:
            fs = _image_files(os.path.join(folder, c))
            if not fs:
                raise ValueError(f"class folder {os.path.join(folder, c)} holds no image files "
                                 f"({', '.join(IMAGE_EXTENSIONS)})")
            per_class.append(fs)
        files = [os.path.join(c, f) for c, fs in zip(classes, per_class) for f in fs]
        labels = torch.tensor([k for k, fs in enumerate(per_class) for _ in fs], dtype=torch.int64)
    from PIL import Image

    arrays, size0 = [], None
    for f in files:
        full = os.path.join(folder, f)
        try:
            with Image.open(full) as im:
                im = im.convert(mode)
                if image_size is not None:
                    im = im.resize((image_size, image_size), Image.BICUBIC)
                a = np.asarray(im, dtype=np.uint8)
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot read image {full}: {e}") from None
        if size0 is None:
            size0 = a.shape
        elif a.shape != size0:
            raise ValueError(f"image {full} has size {a.shape[:2]} but {files[0]} has {size0[:2]}; "
                             "pass image_size= to resize them all")
        arrays.append(a)
    arr = np.stack(arrays)
    arr = arr[:, None] if mode == "L" else arr.transpose(0, 3, 1, 2)
    config = {"loader": "image_folder", "path": os.path.abspath(folder), "mode": mode, "image_size": image_size}
    lab = {"labels": labels, "num_classes": len(classes), "classes": classes} if classes else {}
    return _from_levels(torch.from_numpy(np.ascontiguousarray(arr).astype(np.int64)), 256, os.path.basename(folder),
                        config, **lab)


def _image_files(folder: str) -> list[str]:
    return sorted(f for f in os.listdir(folder) if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS
                  and os.path.isfile(os.path.join(folder, f)))


def load_dataset(config: dict) -> Dataset:
    """Rebuild a data set from :meth:`Dataset.config` (e.g. the "data" entry of a checkpoint).

    Raises:
        ValueError: the config has no known "loader", or describes in-memory data that cannot be
            rebuilt; the rebuilt data's shape differs from the recorded one.
    """
    if not isinstance(config, dict):
        raise TypeError(f"config must be a dict; got {type(config).__name__}")
    loader = config.get("loader")
    if loader == "digits":
        ds = digits(config["split"])
    elif loader == "toy":
        ds = toy(config["toy"], config["n_points"], config["seed"])
    elif loader == "array":
        ds = from_array(config["path"], key=config.get("key"), num_levels=config.get("num_levels_arg"),
                        data_range=config.get("data_range_arg"), channels_last=config.get("channels_last", False),
                        labels=config.get("labels", False), num_classes=config.get("num_classes_arg"))
    elif loader == "image_folder":
        ds = image_folder(config["path"], mode=config["mode"], image_size=config.get("image_size"))
    elif loader == "memory":
        raise ValueError("the data were an in-memory array and cannot be rebuilt from the config; pass them explicitly")
    else:
        raise ValueError(f"unknown loader {loader!r} in data config; valid values are "
                         "['digits', 'toy', 'array', 'image_folder']")
    if "shape" in config and list(ds.shape) != list(config["shape"]):
        raise ValueError(f"rebuilt data have shape {list(ds.shape)} but the config records {config['shape']}")
    return ds
