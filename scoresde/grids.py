"""Time grids: the one place a sampler's times and a discrete sampler's steps come from.

* :func:`time_grid` builds the descending grid of continuous times of a sampler: ``steps + 1``
  points from exactly ``T`` to exactly ``eps``; step k goes from ``grid[k]`` to ``grid[k + 1]``.
* :func:`select_timesteps` picks the integer steps of the discrete chain a DDPM / DDIM sampler
  visits: DDIM's "uniform" stride and "quadratic" selection, Improved DDPM's respacing strings
  ("ddim50", "250", "10,15,20") or an explicit list.
* :func:`respaced_betas` gives the betas of the chain restricted to those steps.

Samplers read consecutive steps from these arrays and never recompute the previous step.

References: Song, Meng & Ermon 2021 (DDIM), Sec. 4.2 and App. D.2 (uniform / quadratic);
Nichol & Dhariwal 2021, Sec. 4 ("space_timesteps"); Lu et al. 2022 (DPM-Solver) (log-SNR spacing).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ._checks import check_choice, check_positive
from .sde import SDE

SPACINGS = ("uniform", "quadratic", "logsnr", "karras")
SKIPS = ("uniform", "quadratic", "leading")


def check_eps(eps: float, sde: SDE) -> float:
    """Validate a last time ``eps`` in (0, T); raises ValueError naming ``eps`` otherwise."""
    check_positive("eps", eps)
    if not eps < sde.T:
        raise ValueError(f"eps must lie in (0, T={sde.T:g}); got {eps}")
    return float(eps)


def time_grid(sde: SDE, steps: int, eps: float | None = None, spacing: str = "uniform", *, rho: float = 7.0,
              device=None, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Descending grid of ``steps + 1`` continuous times from T to eps.

    Arguments:
        sde: the forward SDE (gives T and, for "logsnr", log-SNR(t) and its inverse).
        steps: number of steps (>= 1).
        eps: last time, in (0, T); default ``sde.default_eps``.
        spacing: "uniform" in t; "quadratic" in t (dense near eps: t_k = eps + (T - eps)(1 - k/steps)^2);
            "logsnr" uniform in log-SNR (DPM-Solver's choice); "karras": EDM's rho-schedule in
            sigma-tilde = sigma / alpha = exp(-lambda), sigma-tilde_k = (s_T^(1/rho) + k / steps
            (s_eps^(1/rho) - s_T^(1/rho)))^rho (Karras et al. 2022, Eq. (5)); rho -> inf is "logsnr".
        rho: the "karras" exponent (> 0, default 7); ignored by the other spacings.
        device, dtype: of the result (float64 by default, so that grid ends are exact).
    Returns:
        (steps + 1,) tensor with grid[0] == T and grid[-1] == eps exactly, strictly decreasing.
    Raises:
        ValueError: steps < 1, eps outside (0, T), unknown spacing, rho <= 0.
    """
    check_positive("steps", steps, integer=True)
    check_positive("rho", rho)
    eps = check_eps(sde.default_eps if eps is None else eps, sde)
    check_choice("spacing", spacing, SPACINGS)
    T = sde.T
    u = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    if spacing == "uniform":
        grid = T + (eps - T) * u
    elif spacing == "quadratic":
        grid = eps + (T - eps) * (1.0 - u) ** 2
    elif spacing == "logsnr":
        lam = sde.log_snr(torch.tensor([T, eps], dtype=torch.float64))
        grid = sde.t_from_log_snr(lam[0] + (lam[1] - lam[0]) * u)
    else:  # karras: sigma-tilde = exp(-lambda) = exp(-log_snr / 2); the ramp in logs (no overflow at small rho)
        log_st = -0.5 * sde.log_snr(torch.tensor([T, eps], dtype=torch.float64))
        a, b = float(log_st[0]) / rho, float(log_st[1]) / rho
        ramp = torch.logaddexp(torch.log1p(-u) + a, torch.log(u) + b)
        grid = sde.t_from_log_snr(-2.0 * rho * ramp)
    grid[0], grid[-1] = T, eps
    if not bool((grid[1:] < grid[:-1]).all()):
        hint = f"; rho={rho:g} packs the grid into its ends, use rho >= 1" if spacing == "karras" and rho < 1 else ""
        raise ValueError(f"the {spacing!r} grid with steps={steps} and eps={eps} is not strictly decreasing "
                         f"in float64; use fewer steps{hint}")
    return grid.to(device=device, dtype=dtype)


def space_timesteps(num_timesteps: int, section_counts) -> list[int]:
    """Improved DDPM's respacing: which of ``num_timesteps`` steps to keep.

    ``section_counts`` is "ddimK" (DDIM's integer stride giving exactly K steps: 0, s, 2s, ...,
    kept exactly as improved-diffusion has it, for reproducing published numbers; like
    ``skip="leading"`` it does not start at step N - 1 unless the stride divides N - 1), "K" or
    "K1,K2,..." (equal sections of [0, N), each strided evenly with rounding from its first to its
    last step, so the last section always ends on N - 1), or a list of ints of the latter kind.
    A section of count 1 keeps its last step (improved-diffusion keeps its first, which for "1"
    would be step 0, a chain that never leaves the data end), so "1" is [N - 1].

    Arguments:
        num_timesteps: N, the number of steps of the full chain (int).
        section_counts: "ddimK", "K", "K1,K2,..." or a list of ints (see above).
    Returns:
        The sorted kept step indices, a list of ints in [0, N).
    Raises:
        ValueError: a malformed spec, a count < 1, a section that cannot hold its count, or no
            DDIM stride giving exactly K steps.
    Reference:
        Nichol & Dhariwal 2021, Sec. 4; improved-diffusion ``space_timesteps``.
    """
    N = int(num_timesteps)
    if isinstance(section_counts, str):
        spec = section_counts.strip()
        if spec.startswith("ddim"):
            try:
                k = int(spec[4:])
            except ValueError:
                raise ValueError(f"steps spec {section_counts!r}: expected 'ddimK' with an integer K") from None
            for stride in range(1, N):
                if len(range(0, N, stride)) == k:
                    return list(range(0, N, stride))
            if k == N:
                return list(range(N))
            raise ValueError(f"steps spec {section_counts!r}: no integer stride gives exactly {k} of {N} steps")
        try:
            counts = [int(c) for c in spec.split(",")]
        except ValueError:
            raise ValueError(f"steps spec {section_counts!r}: expected 'ddimK', 'K' or 'K1,K2,...'") from None
    else:
        counts = [int(c) for c in section_counts]
    if not counts or any(c < 1 for c in counts):
        raise ValueError(f"steps spec {section_counts!r}: every count must be >= 1")
    size_per, extra = divmod(N, len(counts))
    start, kept = 0, []
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise ValueError(f"steps spec {section_counts!r}: cannot take {count} steps from a section of {size}")
        if count == 1:  # one step from the section's top (improved-diffusion takes its bottom)
            kept.append(start + size - 1)
        else:
            frac = (size - 1) / (count - 1)
            kept += [start + round(j * frac) for j in range(count)]
        start += size
    return sorted(set(kept))


def select_timesteps(N: int, steps, skip: str = "uniform") -> torch.Tensor:
    """Integer steps of the N-step discrete chain that a DDPM / DDIM sampler visits.

    Every selection made from an int K (except ``skip="leading"``) or a respacing string "K" /
    "K1,K2,..." holds the last step N - 1, so the sampler starts at alpha-bar[N - 1], the end of
    the forward chain that the prior N(0, I) approximates; K = 1 is the single step N - 1, a
    one-step jump from T to alpha-bar = 1 (x0-prediction from the prior draw).

    Arguments:
        N: length of the chain.
        steps: an int K with ``skip``:
            "uniform" (default): diffusers' "trailing" spacing, round(N - j N / K) - 1 for
                j = 0..K-1 (N - 1, N - 1 - N / K, ...; equal gaps of N / K, rounded);
            "quadratic": the trailing form of DDIM App. D.2's quadratic selection, with gaps
                growing quadratically towards T: round(N ((j + 1) / K)^2) - 1 for j = 0..K-1
                (at least 0, repeats dropped, so K = 500 at N = 1000 gives fewer distinct steps);
                K = 10 at N = 1000: 9, 39, 89, ..., 809, 999. DDIM's own
                int(linspace(0, sqrt(0.8 N), K)^2) stops at step 0.8 N (800); pass that list
                explicitly to reproduce it. (Shifting it up to end on N - 1 instead would make the
                last jump one from step 0.2 N to the data: measured on N(5, 0.5^2) at K = 10 its
                std error is -0.222, against -0.077 for this selection);
            "leading": the DDIM paper's stride N // K, 0, s, 2s, ..., (K - 1) s (diffusers'
                ``timestep_spacing="leading"`` with ``steps_offset=0``): it never holds N - 1
                (K = 10 at N = 1000 starts at step 900, K = 1 is step 0, pure noise); only for
                reproducing published numbers;
            or a respacing string as in :func:`space_timesteps` ("250", "10,15,20", or "ddim50",
            improved-diffusion's DDIM stride, which like "leading" is kept as published); or an
            explicit list of indices (used as given).
        skip: "uniform", "quadratic" or "leading" (only used with an int).
    Returns:
        int64 tensor of K sorted, distinct indices in [0, N - 1] (ascending; samplers walk it
        backwards, the step after index ``ts[0]`` landing on alpha-bar = 1).
    Raises:
        ValueError: K < 1 or K > N, unknown skip, a list with duplicates or indices outside [0, N-1].
    Reference: Song, Meng & Ermon 2021, Sec. 4.2, App. D.2; Lin et al. 2024 ("Common diffusion
    noise schedules and sample steps are flawed", Sec. 3.3: trailing spacing); diffusers' schedulers.
    """
    if isinstance(steps, str):
        idx = space_timesteps(N, steps)
    elif isinstance(steps, (int, np.integer)) and not isinstance(steps, bool):
        steps = int(steps)
        if not 1 <= steps <= N:
            raise ValueError(f"steps must lie in [1, N={N}]; got {steps}")
        check_choice("skip", skip, SKIPS)
        if skip == "uniform":
            # diffusers' "trailing": gaps of N / K >= 1, so the rounded steps are distinct
            idx = sorted(int(v) for v in np.round(N - np.arange(steps) * (N / steps)) - 1)
        elif skip == "leading":
            idx = [i * (N // steps) for i in range(steps)]
        else:
            # rounding repeats the first few steps for larger K (e.g. 0, 0, 1, ...); a repeat is a no-op
            # step (alpha-bar unchanged), so dropping it leaves the samples unchanged
            q = np.round(N * (np.arange(1, steps + 1) / steps) ** 2)
            idx = sorted(set(int(max(v, 1.0)) - 1 for v in q))
    elif isinstance(steps, (Sequence, torch.Tensor, np.ndarray)):
        idx = [int(i) for i in (steps.tolist() if hasattr(steps, "tolist") else steps)]
        if len(idx) == 0 or len(set(idx)) != len(idx) or min(idx) < 0 or max(idx) > N - 1:
            raise ValueError(f"an explicit steps list must hold distinct indices in [0, {N - 1}]; got {steps}")
        idx = sorted(idx)
    else:
        raise TypeError(f"steps must be an int, a respacing string or a list of ints; got {type(steps).__name__}")
    return torch.tensor(idx, dtype=torch.long)


def respaced_betas(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """Betas of the chain restricted to ``timesteps``: beta'_k = 1 - alpha-bar[t_k] / alpha-bar[t_{k-1}].

    The first kept step uses alpha-bar = 1 before it, so ``cumprod(1 - beta') ==
    alphas_cumprod[timesteps]`` (up to float64 rounding).

    Arguments:
        alphas_cumprod: (N,) alpha-bar of the full chain.
        timesteps: (K,) sorted int64 indices of the kept steps into ``alphas_cumprod``.
    Returns:
        (K,) float64 betas of the respaced chain.
    Raises:
        IndexError: an index outside [0, N) (from the tensor indexing; not validated here).
    Reference:
        Nichol & Dhariwal 2021, Sec. 4 (Eq. (19)).
    """
    ab = alphas_cumprod.to(torch.float64)[timesteps]
    prev = torch.cat([ab.new_ones(1), ab[:-1]])
    return 1.0 - ab / prev


def repaint_schedule(times: torch.Tensor, jump_length: int, jump_n_sample: int) -> list[float]:
    """RePaint's time sequence on a descending grid: after every ``jump_length`` steps down, go back up
    ``jump_length`` steps and come down again, ``jump_n_sample - 1`` times (Lugmayr et al. 2022, Alg. 1).

    Returns the list of times (down steps are sampler steps, up steps forward-process jumps).
    Raises ValueError for jump_length < 1 or jump_n_sample < 1.
    """
    for name, v in (("jump_length", jump_length), ("jump_n_sample", jump_n_sample)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an integer >= 1; got {v!r}")
    ts = times.tolist()
    M = len(ts) - 1
    left = {k: jump_n_sample - 1 for k in range(jump_length, M, jump_length)}
    seq, k = [0], 0
    while k < M:
        k += 1
        seq.append(k)
        if left.get(k, 0) > 0:
            left[k] -= 1
            for _ in range(jump_length):
                k -= 1
                seq.append(k)
    return [ts[i] for i in seq]
