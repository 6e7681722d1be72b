"""The probability-flow ODE in a chosen integration variable: the fields that ``log_likelihood``,
``encode`` / ``decode`` and the ``"ode"`` sampler hand to :func:`scoresde.solvers.ode.solve_ode`.

The probability-flow ODE dx/dt = f~(x, t) (Song et al. 2021, Eq. (13)) can be integrated in any
variable s that is a monotone function of t: dx/ds = f~(x, t(s)) dt/ds, and the log-density
change d delta_logp / ds = div f~(x, t(s)) dt/ds (the Jacobian factor dt/ds is a scalar per
sample, so it multiplies the divergence too). The integral, and so the log-density, does not
depend on the variable; only the step sizes an adaptive solver picks, and so the cost, do.

Integration variables (``time_variable=``):
    "t"       the SDE's own time, from eps to T (the reference code's choice);
    "lambda"  s = -lambda = -1/2 log(alpha(t)^2 / sigma(t)^2), minus the half-log-SNR, increasing
              with t (for the VE SDE this is log sigma(t)). With d log-SNR / dt = -g(t)^2 /
              sigma(t)^2 (any linear SDE: d sigma^2 / dt = 2 f sigma^2 + g^2), dt/ds = 2 sigma^2 / g^2.
              Near t = 0 the PF-ODE's time scale is sigma(t)^2 ~ t, so t-steps must shrink towards
              eps; in s they do not (for the VP SDE dx/ds = -sigma^2 x + sigma eps_hat(x, t)).

Which is cheaper, measured (dopri5, rtol = atol, batch step control; default stays "t"):
    * 2-D Gaussian oracle (VPSDE, 500 points, exact trace, max / mean |error| in bits/dim vs the
      closed form): "t" NFE 32 / 44 / 56 at 1e-3 / 1e-4 / 1e-5 with errors 4.3e-3 / 4.1e-4 /
      6.0e-5 (mean 4.5e-4 / 7.9e-5 / 1.4e-5); "lambda" NFE 50 / 62 / 98 with errors 0.128 / 0.015
      / 3.9e-4. At 1e-3, "t" is the right setting for 2-D toys: 0.004 bits/dim at most.
    * digits UNet of benchmarks/bench_likelihood.py (batch 16, float32, DDPM's time-embedding band;
      max |error| against a float64 dopri5 solve at 1e-9): "t" NFE 80 / 92 / 104 at 1e-3 / 5e-4 /
      3e-4 with errors 0.0083 / 0.0080 / 0.0043 bits/dim; "lambda" NFE 44 / 56 / 68 with errors
      0.068 / 0.066 / 0.097, and 0.0031 only at 3e-5 (NFE 326). The briefly trained net's
      divergence oscillates in t at t in [0.04, 0.5] (periods near 0.006 in t: the top of DDPM's
      band on 999 t labels), where steps even in lambda are long in t, and the local error
      estimate misses what the long steps skip; at equal error "t" is the cheaper adaptive
      variable and stays the default. What the lambda variable does pay for is a fixed grid: the multistep
      exponential integrator of :mod:`scoresde.likelihood_multistep` reached 0.0022 at 41 NFE there.

The field accepts a time that is a 0-d tensor (one time for the batch, shared step control) or a
(B,) tensor (each sample at its own time, per-sample step control); t(s) is computed in float64
and clamped into [eps, T], so the score never sees a time outside the integration interval.

Reference: Song et al. 2021, Eq. (13), (39); Kingma et al. 2021 (VDM), Sec. 3 and App. (the
log-SNR parameterisation of the diffusion); Lu et al. 2022 (DPM-Solver), Sec. 3.1 (the PF-ODE in
lambda); Chen et al. 2018 (the change of variables of a continuous normalizing flow).
"""
from __future__ import annotations

from typing import Callable

import torch

from ._checks import check_choice
from .divergence import check_sample_independent, divergence as _divergence
from .sde import SDE, reverse_drift

#: integration variables of the probability-flow ODE (see the module docstring)
TIME_VARIABLES = ("t", "lambda")

__all__ = ["TIME_VARIABLES", "TimeChange", "flow_field", "likelihood_field", "traced", "checked_once_for_coupling",
           "check_logp_finite"]


class TimeChange:
    """The integration variable s(t) of the probability-flow ODE and its Jacobian dt/ds.

    Arguments:
        sde: the forward SDE (VPSDE, SubVPSDE or VESDE).
        kind: "t" (s = t) or "lambda" (s = -1/2 log-SNR(t); log sigma for the VE SDE).
        lo, hi: the time interval [lo, hi] (0 <= lo < hi <= T) that :meth:`time` clamps into.
    Raises:
        ValueError: an unknown ``kind`` (the message lists :data:`TIME_VARIABLES`).
    Reference: Kingma et al. 2021 (VDM), Sec. 3 (log-SNR); Lu et al. 2022 (DPM-Solver), Sec. 3.1.
    """

    def __init__(self, sde: SDE, kind: str, lo: float, hi: float):
        check_choice("time_variable", kind, TIME_VARIABLES)
        self.sde, self.kind, self.lo, self.hi = sde, kind, float(lo), float(hi)

    def s_of_t(self, t: float) -> float:
        """The integration variable at time t (a float in, a float out)."""
        if self.kind == "t":
            return float(t)
        return float(-0.5 * self.sde.log_snr(torch.tensor(float(t), dtype=torch.float64)))

    def time(self, s: torch.Tensor) -> torch.Tensor:
        """t(s) in float64, shaped like s (0-d or (B,)), clamped into [lo, hi]."""
        s = s.to(torch.float64)
        t = s if self.kind == "t" else self.sde.t_from_log_snr(-2.0 * s)
        return t.clamp(self.lo, self.hi)

    def dt_ds(self, t: torch.Tensor) -> torch.Tensor | None:
        """dt/ds at t (float64, shaped like t), or None for s = t (no factor)."""
        if self.kind == "t":
            return None
        return 2.0 * self.sde.marginal_std(t) ** 2 / self.sde.diffusion_coeff(t) ** 2


def _batch_times(tc: TimeChange, s: torch.Tensor, B: int):
    """(t (B,) float64, dt/ds as a (1,) or (B,) float64 tensor or None) for a 0-d or (B,) s."""
    t = tc.time(s)
    j = tc.dt_ds(t)
    t = t.reshape(1).expand(B) if t.numel() == 1 else t.reshape(B)
    return t, (None if j is None else j.reshape(-1))


def flow_field(score_fn: Callable, sde: SDE, tc: TimeChange, B: int) -> Callable:
    """The probability-flow ODE in the variable of ``tc``: a field (s, x) -> dx/ds.

    Arguments:
        score_fn: callable (x (B, *S), t (B,)) -> (B, *S). sde: the forward SDE.
        tc: the :class:`TimeChange`. B: the batch size.
    Returns:
        callable (s: 0-d or (B,) tensor, x: (B, *S)) -> (B, *S), f~(x, t(s)) dt/ds in x's dtype; one
        call of ``score_fn`` per call.
    Reference: Song et al. 2021, Eq. (13).
    """

    def field(s, x):
        t, j = _batch_times(tc, s, B)
        drift = reverse_drift(sde, score_fn, x, t, probability_flow=True)
        if j is None:
            return drift
        return drift * j.to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))

    return field


def traced(score_fn: Callable) -> Callable:
    """``score_fn`` that raises when its output has no autograd graph to x (the divergence needs one).

    Arguments:
        score_fn: callable (x (B, *S), t (B,)) -> (B, *S).
    Returns:
        callable (x, t) -> score_fn(x, t), the same output.
    Raises (from the returned callable):
        ValueError: the output does not require grad (``torch.no_grad`` / ``inference_mode`` /
            ``detach`` inside ``score_fn``): its divergence would silently count as 0.
    """

    def traced_score(x, t):
        out = score_fn(x, t)
        if isinstance(out, torch.Tensor) and not out.requires_grad:
            raise ValueError(
                "score_fn returned a score without an autograd graph to x (it ran under torch.no_grad() / "
                "torch.inference_mode(), detached its output, or does not depend on x), so its divergence cannot be taken and the "
                "log-density would miss the score's part; let score_fn build its graph (log_likelihood "
                "enables gradients around the call itself and uses no more memory than one backward pass)")
        return out

    return traced_score


def check_logp_finite(logp: torch.Tensor, method: str) -> None:
    """Raise if a log-density came out NaN / inf (a fixed grid checks the score's values, not its derivative).

    Arguments:
        logp: (B,) log-densities (nats per sample). method: the likelihood's method, for the message.
    Raises:
        ValueError: some entry is NaN / inf; the message names up to 8 samples.
    """
    bad = ~torch.isfinite(logp)
    if bool(bad.any()):
        rows = bad.nonzero().flatten()[:8].tolist()
        raise ValueError(f"log_likelihood (method {method!r}): the log-density is NaN or inf for sample(s) {rows}: "
                         "the score's divergence (its derivative in x) or the latent is non-finite along the path, "
                         "e.g. a score whose derivative is infinite or NaN somewhere (sqrt(|x|) at 0)")


def checked_once_for_coupling(score_fn: Callable) -> Callable:
    """``score_fn`` whose first call with a graph raises if it couples the samples (exact trace: one more product).

    Arguments:
        score_fn: callable (x (B, *S), t (B,)) -> (B, *S).
    Returns:
        The same callable (no other attributes): its first call whose x requires grad and whose
        output has a graph is followed by one vector-Jacobian product
        (:func:`scoresde.divergence.check_sample_independent`); later calls pass through.
    Raises (from the returned callable):
        ValueError: B > 1 and sample 0's score depends on another sample's input (batch norm in
            training mode): the exact trace would silently add the cross-sample terms.
    """
    done = False

    def checked(x, t):
        nonlocal done
        out = score_fn(x, t)
        if not done and x.requires_grad and isinstance(out, torch.Tensor) and out.requires_grad \
                and out.shape == x.shape:
            check_sample_independent(out, x)  # other outputs: the solve's own checks raise
            done = True
        return out

    return checked


def likelihood_field(score_fn: Callable, sde: SDE, tc: TimeChange, B: int,
                     probes: torch.Tensor | None, chunk_size=None) -> Callable:
    """The augmented probability-flow ODE of (x, delta_logp) in the variable of ``tc``.

    Arguments:
        score_fn: callable (x (B, *S), t (B,)) -> (B, *S). sde: the forward SDE.
        tc: the :class:`TimeChange`. B: the batch size.
        probes: (P, B, *S) Hutchinson probes held fixed for the solve, or None for the exact trace.
        chunk_size: the exact trace's (:func:`scoresde.divergence.divergence`): None, an int or a ChunkTuner.
    Returns:
        callable (s, (x, delta)) -> (dx/ds (B, *S), d delta/ds (B,)) with d delta/ds = div f~ dt/ds
        (nats per sample per unit of s); one call of ``score_fn`` and P (or D) vector-Jacobian
        products per call. s is a 0-d or (B,) tensor.
    Raises (from the returned field):
        ValueError: the score has no autograd graph to x (``torch.no_grad`` / ``inference_mode`` /
            ``detach`` inside ``score_fn``): its divergence would silently count as 0.
    Reference: Song et al. 2021, Eq. (39); Grathwohl et al. 2019 (FFJORD), Sec. 3.1.
    """

    traced_score = traced(score_fn)

    def field(s, state):
        t, j = _batch_times(tc, s, B)
        with torch.enable_grad():
            xg = state[0].detach().requires_grad_(True)
            drift = reverse_drift(sde, traced_score, xg, t, probability_flow=True)
            div = _divergence(drift, xg, probes, chunk_size=chunk_size)
        drift, div = drift.detach(), div.detach()
        if j is None:
            return drift, div
        j = j.to(drift.dtype)
        return drift * j.reshape(-1, *([1] * (drift.dim() - 1))), div * j

    return field
