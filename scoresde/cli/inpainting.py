"""``scoresde inpaint``: fill in a hidden region of held-out images with any sampler.

The masks (:func:`make_mask`, True = known, the convention of :func:`scoresde.inpaint`) hide a
half of the image (``left``, ``right``, ``top``, ``bottom``), its central square of half the
side (``center``), or each pixel independently with probability 1/2 (``random``, one draw per
image from ``--seed``; all channels of a pixel together). The samples come from
:func:`scoresde.inpaint` with the run's unconditional score (for a class-conditional run, the
null class), through :func:`scoresde.cli.samples.draw` like ``scoresde sample``; the known
pixels of every sample equal the truth exactly.
"""
from __future__ import annotations

import time
import warnings

import numpy as np
import torch

from ..plotting import atomic_file
from .common import _log, _weights_note

__all__ = ["make_mask", "inpaint_rows", "run_inpaint"]

#: the colour (RGB in [0, 1]) of a hidden pixel in the masked input of the grid
HIDDEN_RGB = (1.0, 0.62, 0.62)

def make_mask(name: str, shape, n: int = 1, seed: int = 0) -> torch.Tensor:
    """The known entries (n, C, H, W) bool of mask ``name`` for images of shape (C, H, W).

    Raises ValueError for an unknown name or a shape that is not (C, H, W) with H, W >= 2.
    """
    from .parser import MASKS
    if name not in MASKS:
        raise ValueError(f"unknown mask {name!r}; valid values are {list(MASKS)}")
    if len(shape) != 3 or shape[1] < 2 or shape[2] < 2:
        raise ValueError(f"inpaint needs images (C, H, W) with H, W >= 2; the run's data have shape {tuple(shape)}")
    c, h, w = (int(v) for v in shape)
    hidden = torch.zeros(n, 1, h, w, dtype=torch.bool)
    if name == "left":
        hidden[..., : w // 2] = True
    elif name == "right":
        hidden[..., w // 2:] = True
    elif name == "top":
        hidden[..., : h // 2, :] = True
    elif name == "bottom":
        hidden[..., h // 2:, :] = True
    elif name == "center":
        hidden[..., h // 4: h // 4 + h // 2, w // 4: w // 4 + w // 2] = True
    else:
        g = torch.Generator().manual_seed(seed)
        hidden = torch.rand(n, 1, h, w, generator=g) < 0.5
    return (~hidden).expand(n, c, h, w).clone()


def _rgb(x: torch.Tensor, data_range) -> torch.Tensor:
    """Images (B, C, H, W) as RGB in [0, 1], gray ones drawn as dark ink on white (as ``save_image_grid``)."""
    lo, hi = data_range
    v = ((x.float() - lo) / (hi - lo)).clamp(0.0, 1.0)
    return (1.0 - v).expand(-1, 3, -1, -1) if v.shape[1] == 1 else v


def inpaint_rows(truth: torch.Tensor, known: torch.Tensor, samples: torch.Tensor, data_range=(-1.0, 1.0)):
    """RGB images (n (k + 2), 3, H, W) in [0, 1] of a grid with one row per image: the masked input (hidden
    pixels in light red), its k samples (n, k, C, H, W), the truth."""
    n, k = samples.shape[:2]
    hidden = ~known.all(dim=1, keepdim=True).expand(-1, 3, -1, -1)
    tint = torch.tensor(HIDDEN_RGB).view(1, 3, 1, 1).expand_as(hidden)
    masked = torch.where(hidden, tint, _rgb(truth, data_range))
    rows = _rgb(samples.reshape(n * k, *samples.shape[2:]), data_range).reshape(n, k, 3, *truth.shape[2:])
    return torch.cat([masked[:, None], rows, _rgb(truth, data_range)[:, None]], dim=1).reshape(-1, 3, *truth.shape[2:])


def _check_resampling(args) -> dict:
    from ..constrained import GRID_METHODS
    if args.jump_length is None and args.jump_n_sample == 1:
        return {}
    if args.method not in GRID_METHODS:
        raise ValueError(f"--jump-length / --jump-n-sample (RePaint) need a grid sampler {list(GRID_METHODS)}; got "
                         f"--method {args.method}")
    if args.jump_length is not None and args.jump_length >= args.steps:
        raise ValueError(f"--jump-length {args.jump_length} must be smaller than --steps {args.steps}")
    return {"jump_length": args.jump_length, "jump_n_sample": args.jump_n_sample}


def run_inpaint(args) -> int:
    """``scoresde inpaint``: check the options and --out first, then inpaint, write <out>.npz / .png, print a line."""
    from .common import load_run
    from .measure import eval_split
    from .outputs import output_pair
    from .samples import as_data, draw, sampler_options, save_samples_figure
    opts = sampler_options(args.method, args)
    opts.update(_check_resampling(args))
    npz, png = output_pair(args.out, "inpaint")  # before any work, as sample
    model, sde, cfg, ds = load_run(args.checkpoint, device=args.device, quiet=args.quiet, use_ema=not args.no_ema)
    shape = tuple(cfg["data"]["shape"])
    known1 = make_mask(args.mask, shape, 1)  # shape check before the data are read
    if model.num_classes is not None and not float(cfg.get("train", {}).get("label_dropout", 0.0) or 0.0):
        warnings.warn("the run is class-conditional with label dropout 0: its null class (the unconditional score "
                      "used here) was never trained")
    evd, desc = eval_split(None, args.split, cfg, ds, args.seed)
    n, k = min(args.num_images, len(evd)), args.samples_per_image
    truth = evd.data[:n].float()
    known = make_mask(args.mask, shape, n, args.seed) if args.mask == "random" else known1.expand(n, *shape)
    _log(args, _weights_note(cfg))
    t0 = time.perf_counter()
    x, nfes = draw(model, sde, shape, method=args.method, steps=args.steps, n=n * k, batch_size=args.batch_size,
                     seed=args.seed, progress=not args.quiet, eps=args.eps, denoise=not args.no_denoise,
                     device=args.device, known=(truth.repeat_interleave(k, 0), known.repeat_interleave(k, 0)),
                     **opts)
    wall = time.perf_counter() - t0
    x, arrays, picture = as_data(x, cfg, ds)
    arrays = {key: v.reshape(n, k, *shape) for key, v in arrays.items()}
    data_range = tuple(cfg["data"].get("data_range", (-1.0, 1.0)))
    rows = inpaint_rows(truth, known, picture.reshape(n, k, *shape), data_range)
    save_samples_figure(rows, rows.shape[1:], png, (0.0, 1.0), nrow=k + 2, pad_value=0.75)
    extra = {"labels": evd.labels[:n].numpy()} if getattr(evd, "labels", None) is not None else {}
    if evd.levels is not None:
        extra["truth_levels"] = evd.levels[:n].numpy().astype(np.int16)
    with atomic_file(npz, "wb") as f:
        np.savez(f, **arrays, truth=truth.numpy().astype(np.float32), known=known.numpy(),
                 mask=args.mask, method=args.method,
                 nfe=np.array(nfes), **extra)
    hidden = f"{float((~known).float().mean()):.0%} of the values hidden"
    print(f"inpainted {n} images of the {desc} (mask {args.mask}: {hidden}) x {k} samples by {args.method} "
          f"(NFE {nfes[0]} per batch) in {wall:.2f} s -> {npz}, {png}")
    return 0
