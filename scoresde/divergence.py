"""Divergence of a drift with respect to the state, per sample: Hutchinson's estimator or the exact trace.

The probability-flow likelihood (:mod:`scoresde.likelihood`) integrates div f~(x, t); this module
holds the estimators it uses:

* ``"hutchinson_rademacher"`` / ``"hutchinson_gaussian"``: eps^T (d drift / dx) eps, one
  vector-Jacobian product per probe (Hutchinson 1989; Grathwohl et al. 2019, FFJORD, Sec. 3.1);
* ``"exact"``: the full trace, D vector-Jacobian products per evaluation (small D and tests).

The exact trace takes the D products of the drift's graph with the basis vectors e_j (one
product gives row j of every sample's Jacobian, since sample b's drift depends on sample b
only), ``chunk_size`` of them at once: ``torch.autograd.grad(..., is_grads_batched=True)`` runs
the backward pass once for a (chunk, B, *S) stack of cotangents (vmap over the backward graph),
which replaces ``chunk_size`` passes of many small operations by one of larger ones. The network
is still called once per evaluation: the products are taken of the graph the caller built. Too
large a chunk loses again (the batched activations fall out of the cache and the memory grows
as chunk x B x activations): the default, :func:`default_chunk_size`, keeps the stacked state
of a chunk near :data:`CHUNK_BYTES`. ``benchmarks/bench_trace.py`` measures both forms: the
batched form wins most where the network's operations are small (an MLP: 1.5-4x at D = 8-256,
batch 16); a convolutional net at batch 16 is already compute-bound in the loop, and gains
little or nothing (0.9-1.3x across runs on a shared machine), since the D products' arithmetic
is the same.
"""
from __future__ import annotations

import torch

DIVERGENCES = ("hutchinson_rademacher", "hutchinson_gaussian", "exact")

#: the default chunk of the exact trace holds chunk x B x D elements of the state within this many bytes
CHUNK_BYTES = 1 << 16

__all__ = ["DIVERGENCES", "CHUNK_BYTES", "default_chunk_size", "draw_probes", "divergence"]


def draw_probes(kind: str, shape, x: torch.Tensor, generator) -> torch.Tensor:
    """Hutchinson probes of ``shape`` (P, B, *S): Rademacher (+-1) or standard normal, in x's dtype and device.

    Arguments:
        kind: "hutchinson_rademacher" or "hutchinson_gaussian". shape: (P, B, *S).
        x: a tensor whose dtype and device the probes take. generator: torch.Generator or None.
    Returns:
        (P, B, *S) probes in x's dtype on x's device.
    Reference: Hutchinson 1989; Grathwohl et al. 2019 (FFJORD), Sec. 3.1.
    """
    device = generator.device if generator is not None else x.device
    if kind == "hutchinson_rademacher":
        e = torch.randint(0, 2, shape, generator=generator, device=device).to(x.dtype) * 2 - 1
    else:
        e = torch.randn(shape, generator=generator, device=device, dtype=x.dtype)
    return e.to(x.device)


def default_chunk_size(D: int, B: int, element_size: int) -> int:
    """The number of basis vectors the exact trace stacks into one backward pass by default.

    Arguments:
        D: data dimensions per sample. B: batch size. element_size: bytes per element of x.
    Returns:
        An int in [1, D]: the largest chunk with chunk x B x D x element_size <= :data:`CHUNK_BYTES`
        (64 KiB), at least 1. E.g. float32 with B = 16: all of D = 8, 16 of D = 64, 4 of D = 256.
        The best chunk depends on the network's activations per sample, which this does not see:
        measured (``benchmarks/bench_trace.py --chunks``), an MLP gains up to chunks of 16-64,
        while a convolutional net whose activations are 32 x D per sample loses beyond 4-16
        (its stacked activations leave the cache); the default is a compromise for both.
    """
    per = max(1, int(D) * int(B) * int(element_size))
    return int(max(1, min(int(D), CHUNK_BYTES // per)))


def _check_chunk(chunk_size, D: int, B: int, x: torch.Tensor) -> int:
    if chunk_size is None:
        return default_chunk_size(D, B, x.element_size())
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int):
        raise TypeError(f"chunk_size must be a positive int or None (default from D, B and the dtype); "
                        f"got {chunk_size!r}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1 (1: one vector-Jacobian product at a time); got {chunk_size}")
    return min(chunk_size, D)


def _check_args(drift, x, probes, chunk_size) -> None:
    """chunk_size (always, probes or not), drift's and the probes' shapes against x's."""
    _check_chunk(chunk_size, 1, 1, x)
    if not isinstance(drift, torch.Tensor) or not isinstance(x, torch.Tensor) or drift.shape != x.shape:
        shape = (lambda v: tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__)
        raise ValueError(f"drift must have the shape of x (B, *S): drift {shape(drift)}, x {shape(x)}")
    if probes is not None and (not isinstance(probes, torch.Tensor) or probes.dim() != x.dim() + 1
                               or probes.shape[1:] != x.shape):
        got = tuple(probes.shape) if isinstance(probes, torch.Tensor) else type(probes).__name__
        raise ValueError(f"probes must be (P, *x.shape) = (P, {', '.join(map(str, x.shape))}); got {got}")


def divergence(drift: torch.Tensor, x: torch.Tensor, probes: torch.Tensor | None, *,
               chunk_size: int | None = None) -> torch.Tensor:
    """Divergence of ``drift`` with respect to ``x`` per sample: Hutchinson's estimate or the exact trace.

    Arguments:
        drift: (B, *S) a function of ``x`` with its autograd graph (sample b's row depending on
            sample b of x only); the graph is freed by the last product taken.
        x: (B, *S) the leaf that requires grad, of which ``drift`` was computed.
        probes: (P, B, *S) Hutchinson probes (:func:`draw_probes`): the mean over p of
            probes[p] . (J^T probes[p]), P products; or None for the exact trace of J (D products).
        chunk_size: exact trace only: basis vectors per batched backward pass (int >= 1; 1 is one
            product at a time); default :func:`default_chunk_size` (D, B, x.element_size()).
    Returns:
        (B,) in x's dtype: the divergence, sum_i d drift_i / d x_i, of each sample. The exact
        trace equals the loop's (``chunk_size=1``) up to rounding (1e-13 relative in float64).
    Raises:
        TypeError: chunk_size not an int (checked with probes too). ValueError: chunk_size < 1;
            drift not of x's shape; probes not (P, *x.shape).
        RuntimeError: (from autograd) drift does not depend on x through a graph.
    Reference:
        Hutchinson 1989; Grathwohl et al. 2019 (FFJORD), Sec. 3.1 (probes) and App. (the exact
        trace of D products); Song et al. 2021, Eq. (39).
    """
    _check_args(drift, x, probes, chunk_size)
    B = x.shape[0]
    if probes is not None:
        total = 0.0
        for p in range(probes.shape[0]):
            (vjp,) = torch.autograd.grad(drift, x, probes[p], retain_graph=p < probes.shape[0] - 1)
            total = total + (vjp * probes[p]).reshape(B, -1).sum(1)
        return total / probes.shape[0]
    D = x[0].numel()
    chunk = _check_chunk(chunk_size, D, B, x)
    trace = torch.zeros(B, dtype=x.dtype, device=x.device)
    if chunk == 1:  # one product per basis vector: row j of every sample's Jacobian from e_j
        flat = torch.zeros(B, D, dtype=x.dtype, device=x.device)
        for j in range(D):
            flat.zero_()
            flat[:, j] = 1.0
            (vjp,) = torch.autograd.grad(drift, x, flat.view_as(x), retain_graph=j < D - 1)
            trace += vjp.reshape(B, D)[:, j]
        return trace
    eye = torch.eye(D, dtype=x.dtype, device=x.device)
    for j0 in range(0, D, chunk):
        c = min(chunk, D - j0)
        # cotangents (c, B, *S): e_{j0 + k} for every sample, k < c
        v = eye[j0:j0 + c, None, :].expand(c, B, D).reshape(c, *x.shape)
        (rows,) = torch.autograd.grad(drift, x, v, retain_graph=j0 + c < D, is_grads_batched=True)
        # rows[k, b] = row j0 + k of sample b's Jacobian; its diagonal entry sits at column j0 + k
        trace += torch.diagonal(rows.reshape(c, B, D)[:, :, j0:j0 + c], dim1=0, dim2=2).sum(-1)
    return trace
