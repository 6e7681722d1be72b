"""Constrained sampling: inpainting and colorization with every sampler of :func:`scoresde.sample`.

Known entries y_k (a mask, in some orthonormal basis of the data) are imposed by replacement
(Song et al. 2021, App. I.2): on the start state and after every step of any method, the known
part is replaced by a draw of the forward perturbation of y at the state's time,
alpha y_k + sigma z, through the solvers' one step hook
(:data:`scoresde.solvers.base.StepHook`). Differences from the reference PC inpainter:

* the noise-free mean of the unknown part is kept (the reference rebuilds ``x_mean`` from the
  already re-noised state, so ``denoise=True`` left the last step's noise in the unknown region);
* the start is consistent: the known part of x_T is a draw of the marginal at T, not clean data
  (score_sde #39);
* the known part is pasted exactly at the end (``y`` itself, not its last noisy draw);
* it works with every method (grid samplers, torchsde, the probability-flow ODE, DDPM / DDIM and
  the fast solvers), not only PC.

RePaint resampling (Lugmayr et al. 2022, Alg. 1, written from the paper): with ``jump_length``
j and ``jump_n_sample`` r, the grid samplers go back j steps along the forward process (no NFE)
and redo them, r - 1 times per block of j steps, which harmonises the unknown part with the
known one at the price of about r times the NFE (reported exactly).

Colorization constrains the first axis of the orthonormal channel basis whose first vector is
(1, ..., 1) / sqrt(C) (the reference's decoupling matrix for C = 3), where a gray image is known.

Reference: Song et al. 2021, Sec. 5 and App. I.2-I.3; Lugmayr et al. 2022, "RePaint", Alg. 1.
"""
from __future__ import annotations

import torch

from ._checks import bcast, check_batch
from .grids import repaint_schedule  # noqa: F401  (public here too)
from .sampling import _check_device, sample
from .solvers.common import randn

__all__ = ["inpaint", "colorize", "colorization_basis", "repaint_schedule"]

GRID_METHODS = ("euler_maruyama", "reverse_diffusion", "ancestral", "pc")


def _check_known(y, mask) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(y, torch.Tensor) or not y.is_floating_point() or y.dim() < 2:
        raise TypeError("y must be a floating tensor (B, *S) of data in the model's range")
    check_batch("y", y, finite=False)  # the 'meta' device, an empty batch
    if not bool(torch.isfinite(y).all()):
        raise ValueError("y contains NaN or inf")
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a bool or {{0, 1}} tensor broadcastable to y; got {type(mask).__name__}")
    if mask.device.type == "meta":
        raise ValueError("mask is on the 'meta' device, which holds shapes but no values; create it on 'cpu' or 'cuda'")
    if mask.dtype != torch.bool:
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError("mask must hold only 0 / 1 (1 = known) or be a bool tensor")
        mask = mask != 0
    try:
        mask = torch.broadcast_to(mask.to(y.device), y.shape)
    except RuntimeError:
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not broadcast to y's {tuple(y.shape)}") from None
    return y, mask


def _constrained(score_fn, sde, y_basis, mask, to_basis, from_basis, *, method, generator, jump_length,
                 jump_n_sample, **kwargs):
    """Sample with the known part ``mask`` of ``to_basis(x)`` constrained to ``y_basis``."""
    taken = sorted({"shape", "step_hook", "resample"} & set(kwargs))
    if taken:
        raise TypeError(f"{taken} are set by the constrained sampler itself and cannot be passed")
    resample = None
    if jump_length is not None or jump_n_sample != 1:
        if method not in GRID_METHODS:
            raise ValueError(f"RePaint resampling (jump_length, jump_n_sample) needs a grid sampler {list(GRID_METHODS)}; "
                             f"got method {method!r}")
        resample = (1 if jump_length is None else jump_length, jump_n_sample)
        steps = kwargs.get("steps")
        n = getattr(sde, "N", None) if steps is None else steps  # steps=None: the grid samplers take sde.N steps
        if isinstance(n, int) and not isinstance(n, bool) and resample[0] >= n:
            given = f"steps={n}" if steps is not None else f"steps=None (sde.N = {n})"
            raise ValueError(f"jump_length={resample[0]} must be smaller than {given}, or nothing is resampled")
    x_T = kwargs.get("x_T")
    if isinstance(x_T, torch.Tensor):
        check_batch("x_T", x_T, finite=False)  # meta / empty named here (NaN is sample()'s to report)
    dtype = kwargs.pop("dtype", None) or (x_T.dtype if isinstance(x_T, torch.Tensor) else y_basis.dtype)
    device = kwargs.pop("device", None)
    device = y_basis.device if device is None else _check_device(device)
    y_basis, mask = y_basis.to(device), mask.to(device)

    def hook(x, x_mean, alpha, sigma):
        xb, mb = to_basis(x), to_basis(x_mean)
        a, s = (bcast(torch.as_tensor(v, dtype=torch.float64, device=x.device).reshape(-1), xb).to(x.dtype)
                for v in (alpha, sigma))
        known_mean = a * y_basis.to(x.dtype)
        known = known_mean + s * randn(x.shape, generator, x.device, x.dtype)
        return from_basis(torch.where(mask, known, xb)), from_basis(torch.where(mask, known_mean, mb))

    out = sample(score_fn, sde, tuple(y_basis.shape), method=method, generator=generator, step_hook=hook,
                 device=device, dtype=dtype, resample=resample, **kwargs)
    x, info = out if isinstance(out, tuple) else (out, None)
    x = from_basis(torch.where(mask, y_basis.to(x.dtype), to_basis(x)))  # the known part exactly
    return (x, info) if info is not None else x


def inpaint(score_fn, sde, y: torch.Tensor, mask: torch.Tensor, *, method: str, steps=None, generator=None,
            jump_length: int | None = None, jump_n_sample: int = 1, **options):
    """Sample the unknown entries of ``y`` given the known ones (``mask`` True / 1), with any sampler.

    Arguments:
        score_fn: callable (x (B, *S), t (B,)) -> (B, *S), the (unconditional) score.
        sde: the forward SDE.
        y: (B, *S) data in the model's range; only the entries where ``mask`` is set are used.
        mask: bool or {0, 1} tensor broadcastable to y; 1 / True on the known entries (the
            reference's convention).
        method, steps, generator, and ``**options``: as :func:`scoresde.sample` (eps, denoise,
            progress, return_info, x_T, the method's own options).
        jump_length, jump_n_sample: RePaint resampling (grid samplers only; default off).
    Returns:
        (B, *S) samples with the known entries equal to y exactly; with ``return_info=True`` the
        pair (samples, :class:`scoresde.SampleInfo`), its NFE exact (resampling included).
    Raises:
        TypeError: y not a floating (B, *S) tensor, mask not a tensor; ValueError: NaN in y, y /
        mask / x_T on the "meta" device or empty, a device this torch cannot use, a mask that is
        not 0 / 1 or does not broadcast, resampling with a non-grid method or with jump_length
        >= the steps (``sde.N`` for steps=None), and everything :func:`scoresde.sample` raises.
    Reference: Song et al. 2021, App. I.2; Lugmayr et al. 2022, Alg. 1 (resampling).
    """
    y, mask = _check_known(y, mask)
    ident = lambda v: v  # noqa: E731
    return _constrained(score_fn, sde, y, mask, ident, ident, method=method, steps=steps, generator=generator,
                        jump_length=jump_length, jump_n_sample=jump_n_sample, **options)


def colorization_basis(channels: int = 3, dtype=torch.float64) -> torch.Tensor:
    """(C, C) orthonormal matrix M whose first column is (1, ..., 1) / sqrt(C); decoupled = M^T x per pixel.

    For C = 3 its first column equals the reference's decoupling matrix's (its other two columns
    span the same plane). Raises ValueError for channels < 2.
    """
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 2:
        raise ValueError(f"channels must be an integer >= 2; got {channels!r}")
    a = torch.eye(channels, dtype=torch.float64)
    a[:, 0] = 1.0
    q, r = torch.linalg.qr(a)
    q = q * torch.sign(torch.diagonal(r))[None, :]  # first column +(1, ..., 1)/sqrt(C)
    return q.to(dtype)


def colorize(score_fn, sde, gray: torch.Tensor, *, method: str, steps=None, generator=None, channels: int | None = None,
             jump_length: int | None = None, jump_n_sample: int = 1, **options):
    """Colour images whose gray level is known: constrain the (1, ..., 1)/sqrt(C) axis of every pixel.

    Arguments:
        score_fn, sde, method, steps, generator, ``**options``: as :func:`inpaint`.
        gray: (B, C, H, W) with equal channels, or (B, 1, H, W) broadcast to ``channels``.
        channels: C when gray has one channel (default 3); must match gray's otherwise.
        jump_length, jump_n_sample: RePaint resampling, as :func:`inpaint`.
    Returns:
        (B, C, H, W) colour samples whose per-pixel channel mean equals the gray input's (the
        decoupled channel 0 is pasted from ``gray``: equal up to the rounding of the basis change
        in the sample's dtype, about 1e-7 in float32 and 1e-3 to 1e-2 in float16 / bfloat16);
        with ``return_info`` also SampleInfo.
    Raises:
        TypeError / ValueError: gray not (B, C, H, W) floating, unequal channels, channels < 2.
    Reference: Song et al. 2021, App. I.3 (colorization by a channel-decoupling orthogonal map).
    """
    if not isinstance(gray, torch.Tensor) or not gray.is_floating_point() or gray.dim() != 4:
        raise TypeError("gray must be a floating tensor (B, C, H, W) (or (B, 1, H, W))")
    if not bool(torch.isfinite(gray).all()):
        raise ValueError("gray contains NaN or inf")
    if channels is not None and (isinstance(channels, bool) or not isinstance(channels, int)):
        raise TypeError(f"channels must be an int; got {channels!r}")
    C = gray.shape[1]
    if C == 1:
        C = 3 if channels is None else channels
        gray = gray.expand(-1, C, -1, -1)
    elif channels is not None and channels != C:
        raise ValueError(f"channels={channels} but gray has {C} channels")
    if C < 2:
        raise ValueError("colorize needs at least 2 channels")
    if not torch.allclose(gray, gray[:, :1].expand_as(gray), atol=1e-6):
        raise ValueError("gray must have equal channels (a gray image); got channels that differ")
    M = colorization_basis(C, gray.dtype).to(gray.device)

    def to_basis(v):  # M in v's dtype: the fast solvers hand the hook float32 states of a half-precision sample
        return torch.einsum("bihw,ij->bjhw", v, M.to(device=v.device, dtype=v.dtype))

    def from_basis(v):
        return torch.einsum("bjhw,ij->bihw", v, M.to(device=v.device, dtype=v.dtype))

    mask = torch.zeros_like(gray, dtype=torch.bool)
    mask[:, 0] = True
    return _constrained(score_fn, sde, to_basis(gray), mask, to_basis, from_basis, method=method, steps=steps,
                        generator=generator, jump_length=jump_length, jump_n_sample=jump_n_sample, **options)
