"""Data from files and arrays: :func:`from_array` (``.npy`` / ``.npz`` or in-memory arrays) and
:func:`image_folder` (image files, one sub-folder per class for labels). Part of :mod:`scoresde.data`.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch

from ._checks import check_choice, check_positive
from .dataset import Dataset, _from_levels

LABELS_KEY = "labels"  # the labels array of a .npz (from_array)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


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
    auto_labels = labels is None
    if labels is False:
        labels = None
    if isinstance(source, (str, os.PathLike)):
        arr, labels, config, name = _read_array_file(os.fspath(source), key, labels, auto_labels, num_levels,
                                                     data_range, channels_last, num_classes)
    else:
        if isinstance(labels, str):
            raise ValueError(f"labels={labels!r} names an array of a .npz file; pass the labels array for in-memory data")
        arr, config, name = source, None, "array"
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu()
    lab = {"labels": labels, "num_classes": num_classes} if labels is not None else {}
    return _array_dataset(arr, source, name, config, lab, num_levels, data_range, channels_last)


def _read_array_file(path: str, key, labels, auto_labels: bool, num_levels, data_range, channels_last: bool,
                     num_classes) -> tuple:
    """(array, labels, config or None, name) of a .npy / .npz file, as :func:`from_array` reads it."""
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
    return arr, labels, config, name


def _array_dataset(arr, source, name: str, config: dict | None, lab: dict, num_levels, data_range,
                   channels_last: bool) -> Dataset:
    """The Dataset of an array (levels or floats), checked, as :func:`from_array` returns it."""
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
