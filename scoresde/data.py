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

Modules: :mod:`scoresde.dataset` (:class:`Dataset`, the levels map), :mod:`scoresde.data_files`
(:func:`from_array`, :func:`image_folder`); this one holds the digits, the toys and
:func:`load_dataset`, and gathers the rest.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ._checks import check_choice, check_positive
# defined here before this module was split; they stay importable from it
from .data_files import IMAGE_EXTENSIONS, LABELS_KEY, _image_files, from_array, image_folder  # noqa: F401
from .dataset import Dataset, _check_labels, _check_levels, _from_levels, float_to_levels, levels_to_float  # noqa: F401

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


def digits_split(split: str = "train") -> np.ndarray:
    """Indices into ``sklearn.datasets.load_digits()`` of the fixed train or test split.

    A permutation of the 1 797 images by ``numpy.random.RandomState(0)`` (a stream numpy keeps
    fixed across versions); the first 1 500 are "train", the remaining 297 "test".

    Arguments:
        split: "train" or "test".
    Returns:
        A sorted int64 numpy array of indices in [0, 1797): (1500,) for "train", (297,) for "test".
    Raises:
        ValueError: a split other than "train" / "test".
    Reference: ``sklearn.datasets.load_digits`` (Alpaydin & Kaynak 1998).
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


def load_dataset(config: dict) -> Dataset:
    """Rebuild a data set from :meth:`Dataset.config` (e.g. the "data" entry of a checkpoint).

    Arguments:
        config: the dict :attr:`Dataset.config` recorded: a "loader" ("digits", "toy", "array",
            "image_folder"), that loader's arguments, and optionally the data's "shape".
    Returns:
        The :class:`Dataset`, reloaded by :func:`digits`, :func:`toy`, :func:`from_array` or
        :func:`image_folder` with the recorded arguments.
    Raises:
        ValueError: the config has no known "loader", or describes in-memory data that cannot be
            rebuilt; the rebuilt data's shape differs from the recorded one (or the loader's own
            errors, e.g. a file that is gone).
        TypeError: config not a dict.
        KeyError: a loader argument missing from the config.
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
