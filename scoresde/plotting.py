"""Figures of the `scoresde` command: image grids, 2-D scatter plots, quality against NFE.

Every writer goes through :func:`atomic_file`, so a failed or interrupted run never leaves a
partial file behind: output is written to a temporary file in the target folder and renamed.

The writers never touch matplotlib's global state: no ``matplotlib.use(...)``, no pyplot.
Figures are ``matplotlib.figure.Figure`` objects drawn on their own Agg canvas
(``FigureCanvasAgg``) and image grids go through ``matplotlib.image.imsave``, so they work
headless and leave the backend of a notebook or GUI session, and its open figures, as they were.
"""
from __future__ import annotations

import contextlib
import math
import os
import tempfile
from pathlib import Path

import numpy as np

from .checkpoint import _umask

__all__ = ["atomic_file", "image_grid", "save_image_grid", "save_scatter", "save_quality_vs_nfe"]


@contextlib.contextmanager
def atomic_file(path, mode: str = "w"):
    """Open a temporary file beside ``path``; rename it onto ``path`` only if the block succeeds.

    Arguments:
        path: the final file path (its folder must exist).
        mode: "w" (text, yields an open file), "wb" (binary, open file) or "path" (yields the
            temporary path as a str, with the same suffix, for writers that take a file name).
    Returns:
        a context manager yielding the open temporary file (or its path for ``mode="path"``).
    Raises:
        whatever the block raises; the temporary file is removed and ``path`` is untouched.
    Reference:
        POSIX ``rename(2)`` atomicity within one file system (``os.replace``).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get ordinary permissions
        if mode == "path":
            os.close(fd)
            yield tmp
        else:
            with os.fdopen(fd, mode) as f:
                yield f
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _figure(figsize):
    """A ``matplotlib.figure.Figure`` on its own Agg canvas: no pyplot, no global backend switch,
    nothing registered with pyplot's figure manager (so nothing to close)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def _save_png(fig, path) -> None:
    """Write a figure of :func:`_figure` as PNG atomically (temporary file, then rename)."""
    fig.tight_layout()
    with atomic_file(path, "path") as tmp:
        fig.savefig(tmp, dpi=120, format="png")


def image_grid(x, nrow: int | None = None, data_range=(-1.0, 1.0), pad: int = 1,
               pad_value: float = 1.0) -> np.ndarray:
    """Tile images into one array for display.

    Arguments:
        x: (B, C, H, W) or (B, H, W) images (tensor or array), C in {1, 3}.
        nrow: images per row; default ceil(sqrt(B)).
        data_range: (low, high) mapped to (0, 1); values outside are clipped.
        pad: pixels of padding between images, of value ``pad_value`` in [0, 1].
        pad_value: the padding's value in [0, 1].
    Returns:
        (rows*(H+pad)+pad, nrow*(W+pad)+pad) array in [0, 1] for C = 1, with a trailing channel
        axis of 3 for C = 3.
    Raises:
        ValueError: unsupported shape.
    Reference:
        the layout of torchvision's ``make_grid``.
    """
    x = np.asarray(x.detach().cpu() if hasattr(x, "detach") else x, dtype=np.float64)
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"images must have shape (B, C, H, W) with C in (1, 3) or (B, H, W); got {x.shape}")
    lo, hi = data_range
    x = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    b, c, h, w = x.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(b)))
    rows = math.ceil(b / nrow)
    grid = np.full((c, rows * (h + pad) + pad, nrow * (w + pad) + pad), float(pad_value))
    for k in range(b):
        r, q = divmod(k, nrow)
        grid[:, pad + r * (h + pad): pad + r * (h + pad) + h, pad + q * (w + pad): pad + q * (w + pad) + w] = x[k]
    return grid[0] if c == 1 else grid.transpose(1, 2, 0)


def save_image_grid(x, path, nrow: int | None = None, data_range=(-1.0, 1.0), scale: int = 6,
                    pad_value: float | None = None) -> None:
    """Write images x (B, C, H, W) as one PNG grid (dark strokes on white for C = 1).

    Each pixel becomes a ``scale`` x ``scale`` block, so 8x8 digits stay legible. The file is
    written by ``matplotlib.image.imsave`` through a temporary file and a rename; matplotlib's
    backend and pyplot's figures are left as they were (works headless, in notebooks and in GUI
    sessions alike).

    Arguments:
        x: (B, C, H, W) or (B, H, W) images (tensor or array), C in {1, 3}, in ``data_range``.
        path: the PNG file to write (its folder must exist).
        nrow: images per row; default ceil(sqrt(B)).
        data_range: (low, high) of the images; low is drawn white for C = 1 ("no ink").
        scale: each pixel becomes a ``scale`` x ``scale`` block.
        pad_value: the padding's value in [0, 1] of the grid (default light gray for C = 1,
            white for C = 3).
    Returns:
        None; the grid is at ``path``.
    Raises:
        ValueError: unsupported shape (from :func:`image_grid`); OSError: ``path`` not writable.
    Reference:
        the layout of torchvision's ``make_grid``, without torchvision.
    """
    from matplotlib.image import imsave
    gray = np.shape(x)[1] == 1 if len(np.shape(x)) == 4 else True
    # grayscale: the low end of data_range is "no ink", drawn white, with light-gray padding
    if pad_value is None:
        pad_value = 0.25 if gray else 1.0
    g = image_grid(x, nrow, data_range, pad_value=pad_value)
    g = np.kron(g, np.ones((scale, scale))) if g.ndim == 2 else np.repeat(np.repeat(g, scale, 0), scale, 1)
    with atomic_file(path, "path") as tmp:
        if g.ndim == 2:
            imsave(tmp, g, cmap="gray_r", vmin=0.0, vmax=1.0, format="png")
        else:
            imsave(tmp, g, format="png")


def save_scatter(x, path, reference=None, title: str | None = None) -> None:
    """Write a scatter plot of 2-D points x (B, 2), optionally over reference points (M, 2).

    Arguments:
        x: (B, 2) points (tensor or array); path: the PNG to write; reference: (M, 2) or None,
        drawn in gray under the samples; title: the axes title or None.
    Returns:
        None. Matplotlib's global backend is left as it was (an Agg canvas of its own).
    Raises:
        ValueError: points that are not 2-D.
    """
    x = np.asarray(x.detach().cpu() if hasattr(x, "detach") else x).reshape(len(x), -1)
    if x.shape[1] != 2:
        raise ValueError(f"a scatter plot needs 2-D points (B, 2); got {x.shape}")
    fig = _figure((4.5, 4.5))
    ax = fig.subplots()
    if reference is not None:
        r = np.asarray(reference.detach().cpu() if hasattr(reference, "detach") else reference).reshape(len(reference), 2)
        ax.scatter(r[:, 0], r[:, 1], s=3, c="0.7", label="data")
    ax.scatter(x[:, 0], x[:, 1], s=3, c="C0", label="samples")
    ax.set_aspect("equal")
    ax.legend(loc="upper right", fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    _save_png(fig, path)


def save_quality_vs_nfe(rows, path, quality_name: str, floor: float | None = None) -> None:
    """Plot sample quality against NFE, one line per method.

    Arguments:
        rows: iterable of dicts with keys "method", "nfe", "quality" (rows with quality None or
            non-finite are skipped).
        path: the PNG to write.
        quality_name: y-axis label (e.g. "Frechet distance (digit features)").
        floor: if given, a horizontal line for the real-data floor of the metric.
    Returns:
        None. Matplotlib's global backend is left as it was (an Agg canvas of its own).
    Raises:
        OSError: ``path`` not writable.
    """
    fig = _figure((6, 4))
    ax = fig.subplots()
    methods = []
    for r in rows:
        if r["method"] not in methods:
            methods.append(r["method"])
    for k, m in enumerate(methods):
        pts = sorted((r["nfe"], r["quality"]) for r in rows if r["method"] == m
                     and r.get("quality") is not None and math.isfinite(r["quality"]))
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=4, label=m, color=f"C{k % 10}")
    if floor is not None:
        ax.axhline(floor, color="k", ls="--", lw=1, label="real-data floor")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("NFE (score evaluations per sample)")
    ax.set_ylabel(quality_name)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    _save_png(fig, path)
