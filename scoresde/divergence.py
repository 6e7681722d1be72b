"""Divergence of a drift with respect to the state, per sample: Hutchinson's estimator or the exact trace.

The probability-flow likelihood (:mod:`scoresde.likelihood`) integrates div f~(x, t); this module
holds the estimators it uses:

* ``"hutchinson_rademacher"`` / ``"hutchinson_gaussian"``: eps^T (d drift / dx) eps, one
  vector-Jacobian product per probe (Hutchinson 1989; Grathwohl et al. 2019, FFJORD, Sec. 3.1);
* ``"exact"``: the full trace, D vector-Jacobian products per evaluation (small D and tests).

The exact trace takes the D products of the drift's graph with the basis vectors e_j (one
product gives row j of every sample's Jacobian, since sample b's drift depends on sample b
only), ``chunk_size`` of them at once: ``torch.func.vmap`` over ``torch.autograd.grad`` runs the
backward pass once for a (chunk, B, *S) stack of cotangents, torch.func's batching rules folding
the chunk into the batch dimension of each backward kernel, which replaces ``chunk_size`` passes
of many small operations by one of larger ones. (``autograd.grad(..., is_grads_batched=True)``
batches with torch's legacy vmap instead, which runs ``convolution_backward`` and
``silu_backward`` once per cotangent and stacks the slices: a conv net lost to the loop with it.)
The network is still called once per evaluation: the products are taken of the graph the caller
built. Too large a chunk loses again (the batched activations fall out of the cache and the
memory grows as chunk x B x activations): the default, :func:`default_chunk_size`, gives a
backward pass about :data:`CHUNK_ROWS` rows, and at most :data:`CHUNK_BYTES` of stacked state.
Which chunk is fastest depends on the network and the machine's state: :class:`ChunkTuner` (the
likelihood's ``chunk_size="auto"``) times the candidates over a solve's first evaluations and keeps
the fastest. ``benchmarks/bench_trace.py`` measures the forms: the batched form wins most where the
network's operations are small (an MLP: 1.4-2.5x at D = 8-256, batch 16); a convolutional net
whose loop is compute-bound at D = 256 (16x16 images, batch 16) gains little, since the D
products' arithmetic is the same (the loop already spends 80% of its time in the convolutions'
backward kernels, which cost the same per row batched or not).
"""
from __future__ import annotations

import time
import warnings

import torch

from ._checks import check_positive

DIVERGENCES = ("hutchinson_rademacher", "hutchinson_gaussian", "exact")

#: the default chunk of the exact trace gives one backward pass about this many rows (chunk x B)
CHUNK_ROWS = 256
#: ... and holds chunk x B x D elements of the stacked state within this many bytes
CHUNK_BYTES = 1 << 17

__all__ = ["DIVERGENCES", "CHUNK_ROWS", "CHUNK_BYTES", "default_chunk_size", "draw_probes", "divergence",
           "check_sample_independent", "ChunkTuner"]


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
        An int in [1, D]: the largest chunk with chunk x B <= :data:`CHUNK_ROWS` (256) rows and
        chunk x B x D x element_size <= :data:`CHUNK_BYTES` (128 KiB) of stacked state, at least 1.
        E.g. float32 with B = 16: all of D = 8, 16 of D = 64, 8 of D = 256; B = 64 on 32x32x3
        images: 1 (the loop).
        The best chunk depends on the network's activations per sample, which this does not see.
        Measured (``benchmarks/bench_trace.py --chunks``, batch 16, float32): an MLP gains up to
        chunks of 16-64 (at D = 256: 1.8x the loop at chunk 4, 2.5x at 8, 2.9x at 16); a
        convolutional net whose activations are 32 x D per sample gains at D = 64 up to chunk 16
        and at D = 256 (16x16 images, 4 MiB of activations per layer at chunk 8) is within
        0.9-1.05x of the loop at chunks 4-8 and loses from 12 on, most when the machine's memory
        is busy (its stacked activations leave the cache). The default is a compromise for both.
    """
    d, b = max(1, int(D)), max(1, int(B))
    by_rows = CHUNK_ROWS // b
    by_bytes = CHUNK_BYTES // (d * b * max(1, int(element_size)))
    return int(max(1, min(d, by_rows, by_bytes)))


def _check_chunk(chunk_size, D: int, B: int, x: torch.Tensor) -> int:
    if chunk_size is None or isinstance(chunk_size, ChunkTuner):
        return default_chunk_size(D, B, x.element_size())
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int):
        raise TypeError(f"chunk_size must be a positive int, None (default from D, B and the dtype) or a ChunkTuner "
                        f"(the likelihood's chunk_size=\"auto\" makes one); got {chunk_size!r}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1 (1: one vector-Jacobian product at a time); got {chunk_size}")
    return max(1, min(chunk_size, D))


def resolve_chunk_size(chunk_size):
    """The likelihood's ``chunk_size`` option: "auto" -> a new :class:`ChunkTuner`; None or an int >= 1 as is.

    Raises:
        TypeError: not "auto", None, an int or a ChunkTuner. ValueError: an int < 1.
    """
    if isinstance(chunk_size, str) and chunk_size == "auto":
        return ChunkTuner()
    if isinstance(chunk_size, str):
        raise TypeError(f'chunk_size must be "auto", None or an int >= 1; got {chunk_size!r}')
    if chunk_size is not None and not isinstance(chunk_size, ChunkTuner):
        _check_chunk(chunk_size, 1, 1, None)
    return chunk_size


def _check_args(drift, x, probes, chunk_size) -> None:
    """chunk_size (always, probes or not), drift's and the probes' shapes against x's."""
    _check_chunk(chunk_size, 1, 1, x)
    if not isinstance(drift, torch.Tensor) or not isinstance(x, torch.Tensor) or drift.shape != x.shape:
        shape = (lambda v: tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__)
        raise ValueError(f"drift must have the shape of x (B, *S): drift {shape(drift)}, x {shape(x)}")
    if x.dim() < 1 or x.numel() == 0:
        raise ValueError(f"x must be (B, *S) with B >= 1 samples of >= 1 element each; got shape {tuple(x.shape)}")
    if probes is not None and (not isinstance(probes, torch.Tensor) or probes.dim() != x.dim() + 1
                               or probes.shape[1:] != x.shape):
        got = tuple(probes.shape) if isinstance(probes, torch.Tensor) else type(probes).__name__
        raise ValueError(f"probes must be (P, *x.shape) = (P, {', '.join(map(str, x.shape))}); got {got}")


def check_sample_independent(drift: torch.Tensor, x: torch.Tensor) -> None:
    """Raise unless sample 0 of ``drift`` depends on sample 0 of ``x`` only (one vector-Jacobian product).

    The exact trace puts each basis vector on every sample at once, so it adds the cross-sample
    entries d drift[b'] / d x[b] into sample b's trace when the samples are coupled (batch norm
    in training mode, ``x - x.mean(0)``): a wrong number, not an error. Hutchinson's estimate
    stays unbiased for such a drift. The likelihood runs this check once per solve before an
    exact-trace solve; it keeps ``drift``'s graph.

    Arguments:
        drift: (B, *S) a function of ``x`` with its autograd graph. x: (B, *S) the leaf that requires grad.
    Raises:
        ValueError: drift not of x's shape, x 0-d or empty; B > 1 and sample 0's output has a
            nonzero derivative with respect to another sample's input (the message says how to fix
            it: ``model.eval()``); NaN / inf entries are not read as coupling (the solve's own
            checks report them).
        RuntimeError: (from autograd) drift has no graph to x.
    """
    _check_args(drift, x, None, None)
    B = x.shape[0]
    if B < 2:
        return
    u = torch.zeros_like(drift)
    u[0] = torch.linspace(1.0, 2.0, x[0].numel(), dtype=x.dtype, device=x.device).view_as(x[0])  # no cancellation
    (g,) = torch.autograd.grad(drift, x, u, retain_graph=True, allow_unused=True)
    # NaN / inf entries are left to the solve's own checks, which name the sample (0 x inf in another
    # sample's backward, e.g. sqrt(|x|) at 0, is NaN without any coupling)
    if g is not None and bool(((g[1:] != 0) & torch.isfinite(g[1:])).any()):
        raise ValueError("divergence='exact' needs a score whose output for sample b depends on sample b of x "
                         "only; this one mixes the samples of the batch (batch norm in training mode? call "
                         "model.eval()), and its exact trace would add the cross-sample terms. Use model.eval(), "
                         "or a Hutchinson divergence, which stays unbiased for a coupled batch")


def _batched_vjp(drift: torch.Tensor, x: torch.Tensor, v: torch.Tensor, retain: bool) -> torch.Tensor:
    """(c, B, *S) products v[k]^T (d drift / dx), k < c, of the caller's graph in one vmapped backward pass.

    ``torch.func.vmap`` over ``torch.autograd.grad`` rather than ``autograd.grad(...,
    is_grads_batched=True)``: the latter batches with torch's legacy vmap, which has no batching
    rule for e.g. ``convolution_backward`` or ``silu_backward`` and runs them once per cotangent,
    then stacks the slices (measured, torch 2.13: a conv net's batched form 0.83x the loop at D =
    256); torch.func's rules fold the c cotangents into the batch dimension of one kernel.
    """
    return torch.func.vmap(lambda u: torch.autograd.grad(drift, x, u, retain_graph=retain)[0])(v)


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
            product at a time); default :func:`default_chunk_size` (D, B, x.element_size()); or a
            :class:`ChunkTuner`, which picks it by timing over the calls it serves.
    Returns:
        (B,) in x's dtype: the divergence, sum_i d drift_i / d x_i, of each sample. The exact
        trace equals the loop's (``chunk_size=1``) up to rounding (1e-13 relative in float64).
    Raises:
        TypeError: chunk_size not an int (checked with probes too). ValueError: chunk_size < 1;
            drift not of x's shape; x 0-d or empty; probes not (P, *x.shape).
        RuntimeError: (from autograd) drift does not depend on x through a graph.
    Warns:
        RuntimeWarning: the batched products failed (a backward that ``torch.func.vmap`` cannot
            batch: an extension kernel outside torch, GroupNorm on a channels-last tensor); the
            trace is then taken one product at a time, with the same result.
    The exact trace assumes drift's sample b depends on x's sample b only; a coupled batch gives a
    wrong trace silently here (:func:`check_sample_independent` tests it; the likelihood runs it).
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
    if isinstance(chunk_size, ChunkTuner):
        return chunk_size.trace(drift, x)
    return _exact_trace(drift, x, _check_chunk(chunk_size, D, B, x))[0]


def _exact_trace(drift: torch.Tensor, x: torch.Tensor, chunk: int) -> tuple[torch.Tensor, int]:
    """((B,) exact trace, the chunk used) in chunks of ``chunk`` basis vectors (1: the loop; 1 is also what the
    vmap fallback of :func:`divergence` reports)."""
    if chunk == 1:
        return _loop_trace(drift, x), 1
    B, D = x.shape[0], x[0].numel()
    trace = torch.zeros(B, dtype=x.dtype, device=x.device)
    for j0 in range(0, D, chunk):
        c = min(chunk, D - j0)
        v = _basis(j0, c, x)
        try:  # the first chunk keeps the graph, so the loop can take over if vmap cannot batch it
            rows = _batched_vjp(drift, x, v, retain=j0 == 0 or j0 + c < D)
        except RuntimeError as err:
            if j0 > 0:
                raise
            warnings.warn(f"divergence='exact': the batched vector-Jacobian products failed ({str(err)[:120]}); "
                          "taking them one at a time (chunk_size=1) instead, D backward passes per evaluation",
                          RuntimeWarning, stacklevel=3)
            return _loop_trace(drift, x), 1
        # rows[k, b] = row j0 + k of sample b's Jacobian; its diagonal entry sits at column j0 + k
        trace += torch.diagonal(rows.reshape(c, B, D)[:, :, j0:j0 + c], dim1=0, dim2=2).sum(-1)
    return trace, chunk


class ChunkTuner:
    """The exact trace's chunk chosen by timing (``chunk_size="auto"`` of the likelihood): one tuner per solve.

    Which chunk is fastest depends on the network and on the machine's state, not only on D and
    B: measured (``benchmarks/bench_trace.py``, batch 16) a small conv net at D = 256 took 0.46x
    to 1.05x the loop's time with the default chunk 8 in runs on the same machine, while an MLP
    gains 1.4-3x. So the first evaluations of each (B, *S, dtype, device) try the candidates
    :func:`default_chunk_size`, a quarter of it and 1 (the loop), ``trials`` times each in turn,
    and the rest of the solve uses the fastest (the smallest wall time of its trials; on CUDA
    the tuning evaluations synchronise the device). Every candidate gives the same trace up to
    rounding (a few 1e-7 relative in float32, 1e-15 in float64), so a result can change at that level
    between runs that pick different chunks; pass an int ``chunk_size`` for bit-for-bit repeats.

    Arguments:
        trials: timed evaluations per candidate (int >= 1, default 2).
    Attributes:
        chosen: dict (B, *S, dtype, device) -> the chunk in use once tuned.
    Raises:
        TypeError / ValueError: ``trials`` not an int >= 1.
    """

    def __init__(self, trials: int = 2):
        check_positive("trials", trials, integer=True)  # timed evaluations per candidate chunk
        self.trials, self.chosen = trials, {}
        self._times: dict = {}  # key -> {chunk: [seconds]}

    def trace(self, drift: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """(B,) exact trace of ``drift`` (see :func:`divergence`, whose errors it raises) in the chunk tuned for x."""
        _check_args(drift, x, None, None)
        key = (*x.shape, x.dtype, x.device)
        if key in self.chosen:
            return _exact_trace(drift, x, self.chosen[key])[0]
        B, D = x.shape[0], x[0].numel()
        c0 = default_chunk_size(D, B, x.element_size())
        times = self._times.setdefault(key, {c: [] for c in dict.fromkeys((c0, max(1, c0 // 4), 1))})
        if x.device.type not in ("cpu", "cuda") or len(times) == 1:  # nothing to time, or no clock for it
            self.chosen[key] = c0
            return _exact_trace(drift, x, c0)[0]
        chunk = min(times, key=lambda c: len(times[c]))  # the candidates in turn
        sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda *a: None)
        sync(x.device)
        t0 = time.perf_counter()
        out, used = _exact_trace(drift, x, chunk)
        sync(x.device)
        if used != chunk:  # vmap could not batch this backward: the loop ran, and the candidate is dropped
            del times[chunk]
        times.setdefault(used, []).append(time.perf_counter() - t0)
        if all(len(v) >= self.trials for v in times.values()):
            self.chosen[key] = min(times, key=lambda c: min(times[c]))
        return out


def _basis(j0: int, c: int, x: torch.Tensor) -> torch.Tensor:
    """(c, B, *S) cotangents: e_{j0 + k} on every sample, k < c (c x B x D elements; no D x D identity)."""
    B, D = x.shape[0], x[0].numel()
    e = torch.zeros(c, D, dtype=x.dtype, device=x.device)
    k = torch.arange(c, device=x.device)
    e[k, j0 + k] = 1.0
    return e[:, None, :].expand(c, B, D).reshape(c, *x.shape)


def _loop_trace(drift: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(B,) exact trace by D single products: row j of every sample's Jacobian from e_j on every sample."""
    B, D = x.shape[0], x[0].numel()
    trace = torch.zeros(B, dtype=x.dtype, device=x.device)
    flat = torch.zeros(B, D, dtype=x.dtype, device=x.device)
    for j in range(D):
        flat.zero_()
        flat[:, j] = 1.0
        (vjp,) = torch.autograd.grad(drift, x, flat.view_as(x), retain_graph=j < D - 1)
        trace += vjp.reshape(B, D)[:, j]
    return trace
