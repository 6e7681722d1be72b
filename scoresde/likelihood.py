"""Exact likelihood through the probability-flow ODE: log-density, bits/dim, encoding and decoding.

The probability-flow ODE of a forward SDE dx = f(t) x dt + g(t) dw,

    dx/dt = f~(x, t) = f(t) x - 1/2 g(t)^2 score(x, t)                 (Song et al. 2021, Eq. (13))

maps data at time eps to a latent at time T and is a continuous normalizing flow, so

    log p_eps(x) = log p_T(x_T) + int_eps^T div f~(x_t, t) dt          (Song et al. 2021, Eq. (39))

(the sign convention of Song's ``likelihood.py``: the integral is stored as ``delta_logp`` and
added to the prior's log-density). The augmented state (x, delta_logp) is integrated from eps to
T with :func:`scoresde.solvers.ode.solve_ode` (torchdiffeq; never evaluated outside [eps, T]).

The integration variable (``time_variable=``, :mod:`scoresde.likelihood_ode`): "t" (eps to T, the
reference code's) or "lambda" (s = -1/2 log-SNR(t)); the field is multiplied by dt/ds, the
log-density is the same.

The fast way (``method="dpmpp_2m"`` or ``"dpmpp_3m"`` with ``steps`` and ``time_variable="lambda"``,
:mod:`scoresde.likelihood_multistep`): DPM-Solver++'s multistep exponential integrator run from eps
to T on a fixed grid uniform in lambda, one evaluation per step, the linear part of the drift
integrated exactly and delta_logp by quadrature over the nodes. No error control, so measure it
against an adaptive solve once per model; on the digits UNet of ``benchmarks/bench_likelihood.py``
it was within 0.005 bits/dim 3.96x (batch 16) and 3.44x (batch 64) faster than the reference code's
way (docs/benchmarks.md). The default stays the error-controlled dopri5 in t.

Divergence estimators (``divergence=``):
    "hutchinson_rademacher"  eps^T J eps with Rademacher probes (default; lower variance),
    "hutchinson_gaussian"    the same with standard normal probes,
    "exact"                  the full trace of J by D vector-Jacobian products (small D, tests).
The probes are drawn once per solve and held fixed (a fresh probe per evaluation makes the
right-hand side random and breaks the adaptive step control; Grathwohl et al. 2019, Sec. 3.1).
Each evaluation runs the network once: the drift is taken from the same forward pass that the
vector-Jacobian product differentiates (the reference code runs the network twice). The solve
runs under ``torch.no_grad`` with ``enable_grad`` only around that product (not
``inference_mode``, under which the product fails). Put the model in ``eval()`` mode first:
every sample's output must depend on that sample only (no batch-norm statistics), since the
divergence of the whole batch is taken at once.

With the default ``step_control="batch"`` the adaptive step size is shared by the batch: the
local error of (x, delta_logp) is measured by one RMS norm over all their elements together (``rms_norm``, as the reference code's single
scipy system; torchdiffeq's default for a tuple, the max over the parts, took twice the
evaluations, 2336 against 1184, for a small digits UNet at rtol = atol = 1e-5, with the same
bits/dim error, about 1e-3 against a solve at 1e-7), so a sample's result depends slightly (within the
tolerance) on the rest of the batch, and in distributed evaluation ranks take different numbers
of steps: never call a collective inside ``score_fn``. ``step_control="per_sample"`` gives each
sample its own time, step size (on a grid of 16 per octave) and error norm
(:mod:`scoresde.solvers.ode_per_sample`), and calls ``score_fn`` on ``rows_per_call`` rows at a
time, so a sample's result is the same alone and in any batch (for the same probe rows: with
Hutchinson's estimator the (P, B, *S) probes are one draw, so a sample's probe depends on its row; ``"exact"``
has none): on the digits UNet of
``benchmarks/bench_step_control.py`` see there for the figures (without the grid and the fixed
call shape the network's batch-size rounding changed a sample's steps and its logp by 2e-4
relative even in float64). A fixed grid has no step decisions: ``method="dpmpp_2m"``, 40 steps
in lambda, moved it by 2e-15 in float64 and 1.6e-6 in float32 between alone and a batch of 64.

References: Song et al. 2021, "Score-Based Generative Modeling through Stochastic Differential
Equations", Sec. 4.3, App. D.1-D.2, Eq. (13), (39); Chen et al. 2018 and Grathwohl et al. 2019
(FFJORD) for the augmented ODE and Hutchinson's estimator; Hutchinson 1989; Theis et al. 2016 and
Ho et al. 2019 (Flow++) for uniform dequantization.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from ._levels import check_levels
from ._checks import check_batch, check_choice, check_positive
from .grids import check_eps
from .sde import SDE, reverse_drift
from .divergence import DIVERGENCES, draw_probes as _draw_probes, resolve_chunk_size
from .likelihood_ode import (TIME_VARIABLES, TimeChange, check_logp_finite, checked_once_for_coupling, flow_field,
                             likelihood_field)
from .likelihood_multistep import MULTISTEP_METHODS, check_multistep_args, multistep_log_likelihood
from .dequantize import _check_generator, _check_levels, _check_range, uniform_dequantize  # noqa: F401 (public here)
from .solvers.ode import ADAPTIVE_METHODS, HALF_DTYPES, METHODS, STEP_CONTROLS, rms_norm, solve_ode

#: the integration variable of log_likelihood / bits_per_dim / encode / decode (see scoresde.likelihood_ode)
DEFAULT_TIME_VARIABLE = "t"

#: log_likelihood's methods: solve_ode's (torchdiffeq's adaptive and fixed-grid solvers) and the
#: fixed-grid multistep exponential integrators of :mod:`scoresde.likelihood_multistep`
LIKELIHOOD_METHODS = METHODS + MULTISTEP_METHODS

#: rows of every score_fn call with step_control="per_sample" (see log_likelihood's rows_per_call)
PER_SAMPLE_ROWS = 16

@dataclass
class LikelihoodResult:
    """Result of :func:`log_likelihood`.

    A dataclass made by :func:`log_likelihood`: its arguments below are also its attributes.

    Arguments:
        logp: (B,) log p_eps(x) in nats per sample (summed over the D dimensions).
        prior_logp: (B,) log-density of the prior at z, nats per sample.
        delta_logp: (B,) int_eps^T div f~ dt, nats per sample; logp = prior_logp + delta_logp.
        z: (B, *S) the latent x_T, the probability-flow image of x at time T.
        nfe: number of evaluations of the ODE's right-hand side (int): calls of score_fn, except
            with step_control="per_sample", where one evaluation calls it once per rows_per_call rows.
        nfe_per_sample: (B,) int64, the evaluations of each sample with
            ``step_control="per_sample"`` (whose calls leave finished samples out), else None.
    """

    logp: torch.Tensor
    prior_logp: torch.Tensor
    delta_logp: torch.Tensor
    z: torch.Tensor
    nfe: int
    nfe_per_sample: torch.Tensor | None = None


@dataclass
class BitsPerDimResult:
    """Result of :func:`bits_per_dim`.

    A dataclass made by :func:`bits_per_dim`: its arguments below are also its attributes.

    Arguments:
        bpd: (B,) bits per dimension of each sample (mean over the ``n_dequant`` draws).
        logp, prior_logp, delta_logp: (B,) continuous log-density of the model input in
            ``data_range`` and its two parts, nats per sample (means over the draws).
        offset: log2(num_levels / width), the bits/dim added to -logp / (D ln 2).
        nfe: total evaluations of score_fn over all draws (int).
        nfe_per_sample: (B,) int64, each sample's evaluations over all draws with
            ``step_control="per_sample"``, else None.
    """

    bpd: torch.Tensor
    logp: torch.Tensor
    prior_logp: torch.Tensor
    delta_logp: torch.Tensor
    offset: float
    nfe: int
    nfe_per_sample: torch.Tensor | None = None


def pf_drift(score_fn: Callable, sde: SDE, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Drift of the probability-flow ODE, f(t) x - 1/2 g(t)^2 score(x, t).

    Arguments:
        score_fn: callable (x (B, *S), t (B,)) -> (B, *S), an estimate of grad_x log p_t(x).
        sde: the forward SDE.
        x: (B, *S) state. t: (B,) times in [0, T] (no validation: this is the inner loop).
    Returns:
        (B, *S) in x's dtype; one call of ``score_fn`` (checked for shape and NaN / inf).
    Raises:
        ValueError: the score has the wrong shape or holds NaN / inf (from ``call_score``).
    Reference: Song et al. 2021, Eq. (13); the same drift as ``sde.reverse(score_fn, True).sde``.
    """
    return reverse_drift(sde, score_fn, x, t, probability_flow=True)


def _check_common(sde: SDE, x: torch.Tensor, eps: float, name: str = "x") -> float:
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be a scoresde SDE (VPSDE, SubVPSDE, VESDE); got {type(sde).__name__}")
    check_batch(name, x)  # a float tensor with data, at least one sample, finite
    if x.dim() < 2:
        raise ValueError(f"{name} must have shape (B, *S) with at least one data dimension; got {tuple(x.shape)}")
    return check_eps(eps, sde)


def _solve_options(method, rtol, atol, steps, max_nfe, min_step, step_control="batch",
                   rows_per_call=PER_SAMPLE_ROWS) -> dict:
    check_choice("step_control", step_control, STEP_CONTROLS)
    if rows_per_call is not None:
        check_positive("rows_per_call", rows_per_call, integer=True)
    return dict(method=method, rtol=rtol, atol=atol, steps=steps, max_nfe=max_nfe, min_step=min_step,
                step_control=step_control, rows_per_call=rows_per_call if step_control == "per_sample" else None)


def log_likelihood(score_fn: Callable, sde: SDE, x: torch.Tensor, *, eps: float = 1e-5, method: str = "dopri5",
                   rtol: float = 1e-5, atol: float = 1e-5, divergence: str = "hutchinson_rademacher",
                   n_probes: int = 1, generator: torch.Generator | None = None, steps: int | None = None,
                   max_nfe: int | None = None, min_step: float | None = None,
                   time_variable: str = DEFAULT_TIME_VARIABLE, step_control: str = "batch",
                   rows_per_call: int | None = PER_SAMPLE_ROWS, chunk_size="auto") -> LikelihoodResult:
    """Log-density of data under the probability-flow ODE of ``sde``.

    Integrates (x, delta_logp) from eps to T with d delta_logp / dt = div f~ and returns
    logp = prior_logp(x_T) + delta_logp.

    Arguments:
        score_fn: callable (x: (B, *S), t: (B,)) -> (B, *S), an estimate of grad_x log p_t(x)
            (e.g. a :class:`~scoresde.ScoreModel` in eval mode).
        sde: the forward SDE (VPSDE, SubVPSDE or VESDE).
        x: (B, *S) floating-point data at time ``eps``, in the model's data range.
        eps: start time of the integration, in (0, T); 1e-5 as in the reference code.
        method, rtol, atol, steps, max_nfe, min_step: passed to
            :func:`~scoresde.solvers.ode.solve_ode` (dopri5 at rtol = atol = 1e-5 by default);
            or ``method="dpmpp_2m"`` / ``"dpmpp_3m"`` with ``steps``: the fixed-grid multistep
            exponential integrator of :mod:`scoresde.likelihood_multistep` (NFE = steps + 1, on a
            grid uniform in ``time_variable``; rtol / atol unused, no error control: on the
            digits UNet "dpmpp_2m" with 40 steps in "lambda" was within 0.0022 bits/dim of a
            float64 1e-9 solve, 3.96x faster than the reference code's way at equal error; the
            same net trained 6x longer was 0.031 off at 40 steps: measure it per model).
        divergence: "hutchinson_rademacher" (default), "hutchinson_gaussian" or "exact" (D
            vector-Jacobian products per evaluation instead of ``n_probes``; for B > 1 one more
            product at the first evaluation checks that the samples are not coupled).
        chunk_size: "exact" only: basis vectors per backward pass; "auto" (default: timed, :class:`~scoresde.
            divergence.ChunkTuner`), None (from D, B, dtype) or an int >= 1 (repeats bit for bit).
        n_probes: number of Hutchinson probes (>= 1) averaged per evaluation; each costs one
            vector-Jacobian product, the network runs once.
        generator: ``torch.Generator`` the probes are drawn from, once per call
            (shape (n_probes, B, *S)), or None (torch's global generator).
        time_variable: the integration variable, "t" or "lambda" (s = -1/2 log-SNR(t), log sigma
            for the VE SDE; :mod:`scoresde.likelihood_ode`). The log-density does not depend on it
            (to the solver's tolerance); the number of evaluations does.
        step_control: "batch" (default: one adaptive step size for the whole batch, from one RMS
            error norm over all its elements, as the reference code, so a sample's logp changes
            within the tolerance with its batch-mates) or "per_sample" (dopri5 only: each sample
            has its own time, step size and error norm, so its logp does not depend on the batch;
            ``score_fn`` is then called on the samples still running, each at its own time; see
            :mod:`scoresde.solvers.ode_per_sample`).
        rows_per_call: with "per_sample", ``score_fn`` gets exactly this many rows per call (the
            running samples in chunks, the last padded with copies of a row; default 16), so the
            network's kernels, which round a row differently for different batch sizes, see one
            shape: a sample's logp is then the same alone and in any batch, given the same probe
            row (the probes are one (n_probes, B, *S) draw; "exact" has none) (to 1e-6 relative in
            float32 on the digits UNet); None: one call on the running samples (cheaper alone, but
            batch-size rounding can change a sample's steps). Raise it on a GPU (e.g. 256).
            Ignored with "batch".
    Returns:
        :class:`LikelihoodResult` with logp (B,) in nats per sample, prior_logp (B,),
        delta_logp (B,), z (B, *S) the latent at T, nfe (evaluations of the field, one per solver stage;
        with rows_per_call several calls of score_fn each) and, with
        ``step_control="per_sample"``, nfe_per_sample (B,); in x's dtype,
        except that float16 / bfloat16 x is solved in float32 (``score_fn`` sees float32) and
        logp and its parts stay float32 (z is cast back to x's dtype).
    Raises:
        ValueError: eps outside (0, T); unknown divergence, method or time_variable (the message
            lists the valid names); "dpmpp_2m" / "dpmpp_3m" without steps, with min_step or with
            step_control="per_sample"; rtol / atol <= 0, or both below the machine epsilon of x's dtype;
            n_probes, rows_per_call or chunk_size < 1; NaN / inf in x; x without a data dimension, empty
            (batch size 0) or on the "meta" device; a score of the wrong shape or with NaN / inf; a score without an
            autograd graph to x (computed under ``torch.no_grad`` / ``inference_mode`` or detached:
            its divergence would silently count as 0); with "exact", a score that couples the
            samples (batch norm in training mode: call ``model.eval()``).
        TypeError: integer x, a non-SDE ``sde``, a ``generator`` that is not a torch.Generator, a
            non-integer rows_per_call, a chunk_size other than "auto", None, an int or a ChunkTuner.
        ODESolverError: max_nfe exceeded or step-size underflow (stiff field near t = 0).
    Reference:
        Song et al. 2021, Sec. 4.3, Eq. (13), (39), App. D.2; Grathwohl et al. 2019 (FFJORD),
        Sec. 3.1 (Hutchinson's estimator with a fixed probe per solve).
    """
    eps = _check_common(sde, x, eps)
    check_choice("method", method, LIKELIHOOD_METHODS)
    check_choice("divergence", divergence, DIVERGENCES)
    # step_control and rows_per_call checked whatever the method, as the docstring says
    options = _solve_options(method, rtol, atol, steps, max_nfe, min_step, step_control, rows_per_call)
    tc = TimeChange(sde, time_variable, eps, sde.T)
    check_positive("n_probes", n_probes, integer=True)
    if not callable(score_fn):
        raise TypeError(f"score_fn must be callable (x, t) -> score; got {type(score_fn).__name__}")
    _check_generator(generator)
    in_dtype = x.dtype
    if in_dtype in HALF_DTYPES:  # see solve_ode: adaptive step control fails in half precision
        x = x.float()
    if method in MULTISTEP_METHODS:  # checked before the probes are drawn from the caller's generator
        check_multistep_args(method, steps, min_step, step_control, rtol, atol, max_nfe)
    B = x.shape[0]
    chunk_size = resolve_chunk_size(chunk_size)  # checked before the probes are drawn
    probes = None if divergence == "exact" else _draw_probes(divergence, (n_probes, *x.shape), x, generator)
    score_fn = checked_once_for_coupling(score_fn) if divergence == "exact" else score_fn  # samples not coupled?

    if method in MULTISTEP_METHODS:
        with torch.no_grad():
            z, delta, nfe = multistep_log_likelihood(score_fn, sde, x, probes, eps=eps, steps=int(steps), method=method,
                                                     time_variable=time_variable, max_nfe=max_nfe,
                                                     chunk_size=chunk_size)
            prior = sde.prior_logp(z).to(x.dtype)
        check_logp_finite(prior + delta, method)
        return LikelihoodResult(logp=prior + delta, prior_logp=prior, delta_logp=delta, z=z.to(in_dtype), nfe=nfe)

    with torch.no_grad():
        delta0 = torch.zeros(B, dtype=x.dtype, device=x.device)
        if method in ADAPTIVE_METHODS:
            options["norm"] = rms_norm  # the error of (x, delta_logp) as one vector (per sample with per_sample)
        if step_control == "per_sample":  # called on the running samples only: their rows of the probes
            def field(s, state, rows):
                p = None if probes is None else probes[:, rows]
                return likelihood_field(score_fn, sde, tc, rows.shape[0], p, chunk_size)(s, state)
        else:
            field = likelihood_field(score_fn, sde, tc, B, probes, chunk_size)
        sol = solve_ode(field, (x, delta0), tc.s_of_t(eps), tc.s_of_t(sde.T), with_rows=step_control == "per_sample",
                        **options)
        z, delta = sol.y
        prior = sde.prior_logp(z).to(x.dtype)
    check_logp_finite(prior + delta, method)
    return LikelihoodResult(logp=prior + delta, prior_logp=prior, delta_logp=delta, z=z.to(in_dtype), nfe=sol.nfe,
                            nfe_per_sample=sol.nfe_per_sample)


def bits_per_dim(score_fn: Callable, sde: SDE, x: torch.Tensor, *, data_range=(-1.0, 1.0), num_levels: int = 256,
                 dequantize: bool = True, n_dequant: int = 1, **log_likelihood_options) -> BitsPerDimResult:
    """Bits per dimension of integer-level data under the probability-flow ODE.

    bpd = -logp(y) / (D ln 2) + log2(num_levels / width), width = high - low of ``data_range``,
    where y = low + width (k + u) / num_levels is the uniformly dequantized input (u ~ U[0, 1)^D)
    and logp its continuous log-density under the model (:func:`log_likelihood`, nats). This is
    -log2 of the model density on the level scale [0, num_levels), i.e. an upper bound (in
    expectation over u) on the negative log2-probability per dimension of the discrete data, and
    it does not depend on how the model scales its data: a model uniform over ``data_range``
    scores exactly log2(num_levels) (8.000 for 256 levels) for any range.

    With ``dequantize=False`` x must already be continuous data in [low, high] (no noise is
    added); the number is then the model's log-density at x converted with the same offset,
    -log2(density on the level scale) / D. It is not a bound on a discrete NLL and goes
    negative for densities sharper than one level (case C11): report it only for continuous data.

    Arguments:
        score_fn: callable (x (B, *S), t (B,)) -> score, working on data in ``data_range``.
        sde: the forward SDE.
        x: (B, *S) integer levels in [0, num_levels - 1] (uint8, int, or integer-valued float)
            with ``dequantize=True``; floating data in [low, high] with ``dequantize=False``.
        data_range: (low, high) the model's data interval: (-1, 1) (default) or (0, 1).
        num_levels: number of levels L (256 for 8-bit images, 17 for scikit-learn's digits).
        dequantize: add uniform noise within each level's bin (default True).
        n_dequant: number of independent dequantization draws (>= 1); bpd, logp and its parts
            are averaged over them (one ODE solve per draw; nfe is the total).
        **log_likelihood_options: eps, method, rtol, atol, divergence, n_probes, generator,
            steps, max_nfe, min_step, time_variable, step_control, rows_per_call, chunk_size of :func:`log_likelihood`;
            ``generator`` also draws the dequantization noise (before each solve's probes).
    Returns:
        :class:`BitsPerDimResult`: bpd (B,) bits per dimension per sample; logp, prior_logp,
        delta_logp (B,) in nats per sample (continuous, on the ``data_range`` scale); the offset;
        nfe; nfe_per_sample.
    Warns:
        LevelsWarning: a batch of >= 64 integer-level samples uses fewer than ``num_levels / 4``
            distinct values (``num_levels`` is probably wrong; the offset log2(L) would inflate bpd).
    Raises:
        ValueError: x outside [0, L - 1] or non-integer (dequantize=True), x outside data_range
            (dequantize=False), NaN in x, an empty (batch size 0) or "meta" x, data_range with
            low >= high, num_levels < 2, n_dequant < 1, and everything :func:`log_likelihood` raises.
        TypeError: unknown keyword arguments; non-floating x with dequantize=False.
    Reference:
        Song et al. 2021, App. D.2 (bpd with uniform dequantization, offset 7 - inverse_scaler(-1));
        Theis et al. 2016, Sec. 3.1 (uniform dequantization bounds the discrete log-likelihood).
    """
    check_positive("num_levels", num_levels, integer=True)
    if num_levels < 2:
        raise ValueError(f"num_levels must be >= 2; got {num_levels}")
    check_positive("n_dequant", n_dequant, integer=True)
    low, high = _check_range(data_range)
    allowed = {"eps", "method", "rtol", "atol", "divergence", "n_probes", "generator", "steps", "max_nfe", "min_step",
               "time_variable", "step_control", "rows_per_call", "chunk_size"}
    if "step_control" in log_likelihood_options:  # before the dequantization draws
        check_choice("step_control", log_likelihood_options["step_control"], STEP_CONTROLS)
    if log_likelihood_options.get("rows_per_call") is not None:
        check_positive("rows_per_call", log_likelihood_options["rows_per_call"], integer=True)
    resolve_chunk_size(log_likelihood_options.get("chunk_size", "auto"))  # checked before the draws too
    unknown = set(log_likelihood_options) - allowed
    if unknown:
        raise TypeError(f"bits_per_dim got unknown keyword arguments {sorted(unknown)}; allowed: {sorted(allowed)}")
    generator = log_likelihood_options.get("generator")
    if dequantize:
        _check_levels(x, num_levels)
        # 17-level digits declared as 256 levels read 9.78 instead of 4.27 bits/dim: say so
        check_levels(x, num_levels, stacklevel=2)
    else:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError("with dequantize=False x must be a floating-point tensor of data in data_range")
        check_batch("x", x)
        if float(x.min()) < low or float(x.max()) > high:
            raise ValueError(f"with dequantize=False x must lie in data_range [{low:g}, {high:g}]; got values in "
                             f"[{float(x.min()):g}, {float(x.max()):g}]")
    D = x[0].numel()
    offset = math.log2(num_levels / (high - low))
    # half-precision levels are dequantized in float32: float16 has ~8 values per bin at 256 levels
    fdtype = x.dtype if x.is_floating_point() and x.dtype not in HALF_DTYPES else torch.get_default_dtype()
    acc, nfe, per_sample = None, 0, None
    for _ in range(n_dequant if dequantize else 1):
        y = uniform_dequantize(x, num_levels=num_levels, data_range=(low, high), generator=generator,
                               dtype=fdtype) if dequantize else x
        r = log_likelihood(score_fn, sde, y, **log_likelihood_options)
        nfe += r.nfe
        if r.nfe_per_sample is not None:
            per_sample = r.nfe_per_sample if per_sample is None else per_sample + r.nfe_per_sample
        parts = torch.stack([r.logp, r.prior_logp, r.delta_logp]).to(torch.float64)
        acc = parts if acc is None else acc + parts
    logp, prior, delta = acc / (n_dequant if dequantize else 1)
    bpd = -logp / (D * math.log(2.0)) + offset
    return BitsPerDimResult(bpd=bpd, logp=logp, prior_logp=prior, delta_logp=delta, offset=offset, nfe=nfe,
                            nfe_per_sample=per_sample)


def encode(score_fn: Callable, sde: SDE, x: torch.Tensor, *, eps: float = 1e-5, method: str = "dopri5",
           rtol: float = 1e-5, atol: float = 1e-5, steps: int | None = None, max_nfe: int | None = None,
           min_step: float | None = None, time_variable: str = DEFAULT_TIME_VARIABLE,
           step_control: str = "batch", rows_per_call: int | None = PER_SAMPLE_ROWS) -> torch.Tensor:
    """Latent code of x: the probability-flow ODE integrated from eps to T.

    Arguments:
        score_fn: callable (x (B, *S), t (B,)) -> score. sde: the forward SDE.
        x: (B, *S) floating data at time eps. eps, method, rtol, atol, steps, max_nfe, min_step,
            time_variable, step_control, rows_per_call: as in :func:`log_likelihood`.
    Returns:
        z (B, *S), the state at time T (the same z :func:`log_likelihood` returns), in x's dtype
        (float16 / bfloat16 x is solved in float32 and cast back, see :func:`solve_ode`).
    Raises:
        ValueError: eps outside (0, T), unknown method, time_variable or step_control, rtol / atol <= 0 (or both below the
            epsilon of x's dtype), NaN in x, an empty (batch size 0) or "meta" x.
        ODESolverError: max_nfe exceeded or step-size underflow.
    Reference: Song et al. 2021, Sec. 4.3 ("uniquely identifiable encoding"), Eq. (13).
    """
    eps = _check_common(sde, x, eps)
    return _flow(score_fn, sde, x, eps, sde.T, _solve_options(method, rtol, atol, steps, max_nfe, min_step, step_control,
                                                                 rows_per_call),
                 time_variable)


def decode(score_fn: Callable, sde: SDE, z: torch.Tensor, *, eps: float = 1e-5, method: str = "dopri5",
           rtol: float = 1e-5, atol: float = 1e-5, steps: int | None = None, max_nfe: int | None = None,
           min_step: float | None = None, time_variable: str = DEFAULT_TIME_VARIABLE,
           step_control: str = "batch", rows_per_call: int | None = PER_SAMPLE_ROWS) -> torch.Tensor:
    """Data from a latent: the probability-flow ODE integrated from T back to eps (inverse of :func:`encode`).

    Arguments:
        score_fn: callable (x (B, *S), t (B,)) -> score. sde: the forward SDE.
        z: (B, *S) floating latent at time T. eps, method, rtol, atol, steps, max_nfe, min_step,
            time_variable, step_control, rows_per_call: as in :func:`log_likelihood`.
    Returns:
        x (B, *S), the state at time eps, in z's dtype (float16 / bfloat16 solved in float32).
    Raises:
        ValueError: eps outside (0, T), unknown method, time_variable or step_control, rtol / atol <= 0 (or both below the
            epsilon of z's dtype), NaN in z, an empty (batch size 0) or "meta" z.
        ODESolverError: max_nfe exceeded or step-size underflow.
    Reference: Song et al. 2021, Sec. 4.3, Eq. (13).
    """
    eps = _check_common(sde, z, eps, name="z")
    return _flow(score_fn, sde, z, sde.T, eps, _solve_options(method, rtol, atol, steps, max_nfe, min_step, step_control,
                                                                 rows_per_call),
                 time_variable)


def _flow(score_fn, sde, x, t0, t1, options, time_variable):
    if not callable(score_fn):
        raise TypeError(f"score_fn must be callable (x, t) -> score; got {type(score_fn).__name__}")
    tc = TimeChange(sde, time_variable, min(t0, t1), max(t0, t1))
    with torch.no_grad():
        if options["step_control"] == "per_sample":  # called on the running samples, each at its own time
            def field(s, y):
                return flow_field(score_fn, sde, tc, y.shape[0])(s, y)
        else:
            field = flow_field(score_fn, sde, tc, x.shape[0])
        return solve_ode(field, x, tc.s_of_t(t0), tc.s_of_t(t1), **options).y
