"""Data from files and arrays: :func:`from_array` (``.npy`` / ``.npz`` or in-memory arrays) and
:func:`image_folder` (image files, one sub-folder per class for labels). Part of :mod:`scoresde.data`.
"""
from __future__ import annotations

import os
import zipfile
import zlib
from typing import Sequence

import numpy as np
import torch

from ._checks import check_choice, check_positive
from .dataset import Dataset, _from_levels

LABELS_KEY = "labels"  # the labels array of a .npz (from_array)
#: the layouts of 4-D image arrays (from_array's layout)
LAYOUTS = ("nchw", "nhwc")
#: the most channels a layout-inferred image has (gray, gray + alpha, RGB, RGBA)
MAX_CHANNELS = 4
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def from_array(source, *, key: str | None = None, num_levels: int | None = None,
               data_range: Sequence[float] | None = None, channels_last: bool | None = None,
               labels=None, num_classes: int | None = None, layout: str | None = None) -> Dataset:
    """Data from a ``.npy`` / ``.npz`` file or an in-memory numpy array / torch tensor.

    Shapes: (n, d) vectors, (n, H, W) one-channel images (a channel axis is added), and 4-D
    images, (n, C, H, W) (``layout="nchw"``) or (n, H, W, C) (``layout="nhwc"``). Without a
    layout the channel axis of a 4-D array is the one of axes 1 and 3 whose size is at most 4
    (gray, gray + alpha, RGB, RGBA): (n, 3, 32, 32) is NCHW, (n, 32, 32, 3) NHWC. When both or
    neither are (e.g. (n, 3, 8, 3) or (n, 16, 8, 8)) the layout is ambiguous and must be given:
    a ValueError says so rather than guessing. A 3-D array whose last axis is 3 or 4 and whose
    other two are longer, (H, W, 3), looks like one RGB image rather than n gray images of
    width 3: it is an error too, unless ``layout="nhwc"`` (one image, n = 1) or ``"nchw"`` (n
    gray images (n, H, W)) says which. ``layout="nhwc"`` on a 3-D array whose last axis is longer
    than 4, e.g. (n, 8, 8), is an error (it would be one image of 8 channels).
    Integer arrays are levels: ``num_levels`` defaults to 256 for uint8 and must be given for
    other integer dtypes; floats are returned as they are, with ``data_range`` as given
    (checked) or, if omitted, the observed (min, max).

    Arguments:
        source: path to a .npy or .npz file, or an array / tensor.
        key: the array's name inside a .npz holding several arrays.
        num_levels: number of integer levels (integer data only).
        data_range: (lo, hi) of float data.
        layout: "nchw", "nhwc" or None (inferred as above) for image arrays; not for (n, d).
        channels_last: the older spelling of the layout: True = "nhwc", False = "nchw", None =
            ``layout`` (the default). Both given must agree.
        labels: class labels. None (default): a .npz's integer array named "labels" (n,), if it
            holds one, else no labels (and with ``key=None`` a .npz of two arrays, one named
            "labels", uses the other as the data); a str: the name of the labels array inside the
            .npz; an integer array / tensor (n,): the labels themselves (for in-memory data; with a
            file path the data set then cannot be rebuilt from its config); False: no labels.
        num_classes: the number of classes K (default: max(labels) + 1); only with labels.
    Returns:
        Dataset (integer data: levels plus bin-centre floats in (-1, 1); float data: float32 as
        given), images as (n, C, H, W), with ``labels`` (n,) int64 and ``num_classes`` when
        labels were found. Its config records the layout as ``channels_last`` (True for NHWC).
    Raises:
        FileNotFoundError: no such file. ValueError: unknown extension, a .npz with several
        arrays and no (or a wrong) key, a wrong shape, an ambiguous or unknown layout (or one
        given for (n, d) vectors, or contradicting channels_last), fewer than 1 sample, NaN / inf, levels
        outside [0, num_levels - 1], floats outside data_range, num_levels for float data, a
        labels key that is not in the .npz (or given for a .npy), labels not of shape (n,) or
        outside [0, num_classes - 1].
        TypeError: bool, complex, object or string dtype; integer data without num_levels; float labels.
    """
    # a layout for (n, d) vectors is an error only when typed: configs record channels_last=False for them
    for_vectors_ok = layout is None
    layout = _layout_arg(layout, channels_last)
    auto_labels = labels is None
    if labels is False:
        labels = None
    if isinstance(source, (str, os.PathLike)):
        arr, labels, config, name = _read_array_file(os.fspath(source), key, labels, auto_labels, num_levels,
                                                     data_range, num_classes)
    else:
        if isinstance(labels, str):
            raise ValueError(f"labels={labels!r} names an array of a .npz file; pass the labels array for in-memory data")
        arr, config, name = source, None, "array"
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu()
    lab = {"labels": labels, "num_classes": num_classes} if labels is not None else {}
    return _array_dataset(arr, source, name, config, lab, num_levels, data_range, layout, for_vectors_ok)


def _layout_arg(layout, channels_last) -> str | None:
    """The layout asked for ("nchw", "nhwc" or None) from ``layout`` and the older ``channels_last``."""
    if layout is not None:
        check_choice("layout", layout, LAYOUTS)
    if channels_last is None:
        return layout
    old = "nhwc" if channels_last else "nchw"
    if layout is not None and layout != old:
        raise ValueError(f"layout={layout!r} contradicts channels_last={channels_last!r} (which means {old!r}); "
                         "give one of them")
    return old


def _to_nchw(arr: np.ndarray, layout: str | None, name: str, for_vectors_ok: bool) -> tuple[np.ndarray, bool]:
    """(array as (n, d) or (n, C, H, W), channels_last) for ``layout``: see :func:`from_array`."""
    fix = "pass layout='nchw' or layout='nhwc' (the command line's --layout)"
    if arr.ndim == 2:
        if layout is not None and not for_vectors_ok:
            raise ValueError(f"{name}: layout={layout!r} applies to image arrays; shape {arr.shape} is (n, d) vectors")
        return arr, False
    if arr.ndim == 3:
        looks_rgb = arr.shape[2] in (3, 4) and min(arr.shape[:2]) > arr.shape[2]
        if layout == "nhwc":
            if arr.shape[2] > MAX_CHANNELS:  # (n, 8, 8) is n gray images, not one image of 8 channels
                raise ValueError(f"{name}: layout='nhwc' on the 3-D shape {arr.shape} would make one image of "
                                 f"{arr.shape[2]} channels (more than {MAX_CHANNELS}); a 3-D (n, H, W) array is n "
                                 "gray images (omit the layout, or pass layout='nchw'), and layout applies to 4-D "
                                 "arrays; give one (H, W, C) image as (1, H, W, C)")
            return np.ascontiguousarray(arr.transpose(2, 0, 1))[None], True
        if looks_rgb and layout is None:
            raise ValueError(f"{name}: shape {arr.shape} looks like one (H, W, C) image with {arr.shape[2]} channels, "
                             f"not {arr.shape[0]} gray images of {arr.shape[1]}x{arr.shape[2]}; give images as "
                             "(n, H, W, C) or (n, C, H, W), or pass layout='nhwc' (one image) or layout='nchw' "
                             "((n, H, W) gray images)")
        return arr[:, None], False
    if arr.ndim != 4:
        raise ValueError(f"{name}: shape {arr.shape} not understood; expected (n, d), (n, H, W), (n, C, H, W) or "
                         "(n, H, W, C)")
    if layout is None:
        first, last = arr.shape[1] <= MAX_CHANNELS, arr.shape[3] <= MAX_CHANNELS
        if first == last:
            which = "both could be" if first else "neither looks like"
            raise ValueError(f"{name}: shape {arr.shape} is ambiguous: axes 1 and 3 ({which} the channel axis, "
                             f"of at most {MAX_CHANNELS}); {fix}")
        layout = "nchw" if first else "nhwc"
    if layout == "nhwc":
        return np.ascontiguousarray(arr.transpose(0, 3, 1, 2)), True
    return arr, False


def _read_array_file(path: str, key, labels, auto_labels: bool, num_levels, data_range, num_classes) -> tuple:
    """(array, labels, config or None, name) of a .npy / .npz file, as :func:`from_array` reads it."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such file: {path}")
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".npy", ".npz"):
        raise ValueError(f"unknown array file extension {ext!r} of {path}; valid values are ['.npy', '.npz']")
    if ext == ".npy" and key is not None:
        raise ValueError(f"key= applies to .npz files; {path} is a .npy (it holds one array)")
    try:
        loaded = np.load(path, allow_pickle=False)
    except ValueError as e:
        if "pickle" in str(e):  # numpy's word for anything it cannot parse as an array without pickle
            raise ValueError(f"{path}: not a readable {ext} array file (corrupt, or it holds pickled object "
                             "arrays, which are not accepted)") from None
        raise ValueError(f"{path}: truncated or unreadable {ext} file ({e})") from None
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path}: corrupt or truncated {ext} file ({e})") from None
    if ext == ".npz":
        try:
            with loaded:
                return _read_npz(loaded, path, key, labels, auto_labels, num_levels, data_range, num_classes)
        except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
            raise ValueError(f"{path}: corrupt or truncated .npz file ({e})") from None
        except ValueError as e:
            if str(e).startswith(path) or path in str(e):
                raise
            raise ValueError(f"{path}: corrupt or truncated .npz file ({e})") from None
    if isinstance(labels, str):
        raise ValueError(f"labels={labels!r} names an array of a .npz; {path} is a .npy (pass the labels "
                         "array itself)")
    return _file_result(loaded, labels, path, key, None, num_levels, data_range, num_classes)


def _read_npz(loaded, path: str, key, labels, auto_labels: bool, num_levels, data_range, num_classes) -> tuple:
    """:func:`_read_array_file` of an open .npz."""
    labels_key = None
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
    return _file_result(arr, labels, path, key, labels_key, num_levels, data_range, num_classes)


def _file_result(arr, labels, path: str, key, labels_key, num_levels, data_range, num_classes) -> tuple:
    """(array, labels, config or None, name) of an array read from ``path``."""
    config = {"loader": "array", "path": os.path.abspath(path), "key": key, "num_levels_arg": num_levels,
              "data_range_arg": list(data_range) if data_range is not None else None,
              "channels_last": False}  # the layout found: set by _array_dataset
    if labels_key is not None:  # only then: configs of unlabelled files are unchanged
        config["labels"] = labels_key
        if num_classes is not None:
            config["num_classes_arg"] = num_classes
    elif labels is not None:
        config = None  # labels from memory: the data cannot be rebuilt from the file alone
    name = os.path.basename(path) + (f"[{key}]" if key else "")
    return arr, labels, config, name


def _array_dataset(arr, source, name: str, config: dict | None, lab: dict, num_levels, data_range,
                   layout: str | None, for_vectors_ok: bool = True) -> Dataset:
    """The Dataset of an array (levels or floats), checked, as :func:`from_array` returns it."""
    if isinstance(arr, torch.Tensor):
        arr = arr.detach().cpu().numpy()
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"source must be a path, a numpy array or a torch tensor; got {type(source).__name__}")
    if arr.dtype == np.bool_ or arr.dtype.kind not in "iuf":
        raise TypeError(f"{name}: unsupported dtype {arr.dtype}; use integer levels or floats")
    arr, channels_last = _to_nchw(arr, layout, name, for_vectors_ok)
    if config is not None:
        config["channels_last"] = channels_last  # load_dataset reads the file again in this layout
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
