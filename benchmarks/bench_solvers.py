"""Benchmark: the deterministic samplers of scoresde against diffusers' and k-diffusion's, on an exact score.

Problem: the linear VPSDE() (T = 1), eps = 1e-3, and the exact score of a Gaussian mixture
(:class:`scoresde.oracle.GaussianMixture`), so that the only error left is the solver's:

* "2-D": 8 equal modes on a circle of radius 1.5, std 0.1 (a strongly curved flow);
* "64-D": 4 equal components, random means of norm 2 (seed 0), std 0.3.

x_T is a fixed draw of N(0, I) (seed 1); the reference is ``mixture.flow(sde, x_T, T, eps)``
(float64 DOP853 at rtol = atol = 1e-10). Error = RMS over all elements of (x - reference).

Every method is run at each NFE budget (5, 10, 20, 50, 100) with the largest step count whose
NFE fits in it; adaptive methods are run at a few tolerances and reported with their actual NFE.
NFE is the exact number of score / model calls (scoresde's ``info.nfe``; for the peers, calls
counted by the wrapper we hand them).

* ours: ``scoresde.sample`` in float64 (x_T float64), ``denoise=False``.
* diffusers: the scheduler's discrete table is made equal to the continuous VP,
  trained_betas = 1 - abar_i / abar_{i-1} with abar_i = alpha_bar(t_i), t_i = (i + 1) / 1000, so
  index 0 is t = 1e-3 = eps; the eps-model at timestep k (fractional allowed) is the exact
  -sigma(t) score(x, t) at t = (k + 1) / 1000. Each scheduler's loop as diffusers' pipelines run
  it, stopped when the state is at index 0 (see the notes in the Markdown output for each one).
  diffusers computes in float32 (float32 tables and sigmas; most ``step``s cast the sample to
  float32), so its errors have a floor near 1e-7.
* k-diffusion: the denoiser D(x~, s~) = E[x_0 | x_t] with x = alpha x~, t = t(lambda = -log s~);
  sigmas from get_sigmas_karras / get_sigmas_exponential between s~(eps) and s~(T) without the
  appended zero, so the solve ends at eps; x~_T = x_T / alpha(T), result alpha(eps) x~. Run in
  float64 (torch's default dtype is set to float64 around its calls, since its sigma builders
  and DPM-Solver time grids use the default dtype).

Writes into --out (default benchmarks/results/solvers): solvers.md (tables), solvers.json
(every (problem, library, method, config, nfe, error)), solvers.png (error vs NFE, log-log).
Prints one summary line per problem and budget (best ours vs best peer) and the
same-algorithm pairs (ours vs k-diffusion on the same nodes, which must agree to ~1e-10).

Usage: OMP_NUM_THREADS=1 python benchmarks/bench_solvers.py [--quick] [--out DIR] [--threads 1]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from scoresde import VPSDE, sample
from scoresde.oracle import GaussianMixture
from scoresde.plotting import atomic_file
from scoresde.solvers.registry import SOLVERS

EPS = 1e-3
BUDGETS = (5, 10, 20, 50, 100)
QUICK_BUDGETS = (5, 10, 20)
REF_TOL = 1e-10
SPACINGS = ("logsnr", "karras")
TOLS = ((0.05, 0.0078), (1e-2, 1e-3), (1e-3, 1e-4), (1e-4, 1e-5))  # (rtol, atol) of the adaptive DPM-Solvers
ODE_TOLS = (1e-3, 1e-4, 1e-5, 1e-6)


# ---------------------------------------------------------------------------------------------
# problems
# ---------------------------------------------------------------------------------------------
class Problem:
    """A mixture, its exact score / denoiser, x_T and the reference solutions at eps and t = 0."""

    def __init__(self, name: str, mixture: GaussianMixture, n: int, sde: VPSDE, seed: int = 1):
        self.name, self.mix, self.sde = name, mixture, sde
        self.score = mixture.score_fn(sde)
        self.x0 = mixture.x0_fn(sde)
        g = torch.Generator().manual_seed(seed)
        self.xT = torch.randn((n, mixture.dim), generator=g, dtype=torch.float64)
        t0 = time.perf_counter()
        self.ref = mixture.flow(sde, self.xT, sde.T, EPS, rtol=REF_TOL, atol=REF_TOL)
        # the data end (t = 0) for "ddim", which steps onto alpha-bar = 1
        self.ref0 = mixture.flow(sde, self.ref, EPS, 0.0, rtol=REF_TOL, atol=REF_TOL)
        # accuracy of the reference itself: the same solve at a 10x looser tolerance
        loose = mixture.flow(sde, self.xT, sde.T, EPS, rtol=10 * REF_TOL, atol=10 * REF_TOL)
        self.ref_check = rms(loose - self.ref)
        self.ref_seconds = time.perf_counter() - t0
        self.end_floor = None

    def set_end_floor(self, mismatch: float) -> None:
        """How far the reference moves when the end sigma~ is off by ``mismatch`` (relative)."""
        st = sigma_tilde(self.sde, EPS) * (1.0 + mismatch)
        t = float(self.sde.t_from_log_snr(torch.tensor([-2.0 * math.log(st)], dtype=torch.float64))[0])
        self.end_floor = (mismatch, rms(self.mix.flow(self.sde, self.ref, EPS, t) - self.ref))

    def describe(self) -> str:
        m = self.mix
        return (f"{self.name}: {m.K}-component mixture in {m.dim}-D, std {float(m.stds.flatten()[0]):g}, "
                f"{self.xT.shape[0]} points")


def make_problems(quick: bool, n2: int | None, n64: int | None) -> list[Problem]:
    sde = VPSDE()
    ang = 2 * math.pi * torch.arange(8, dtype=torch.float64) / 8
    mix2 = GaussianMixture(torch.ones(8), 1.5 * torch.stack([ang.cos(), ang.sin()], 1), 0.1)
    probs = [Problem("2-D", mix2, n2 or (200 if quick else 1000), sde)]
    if not quick:
        g = torch.Generator().manual_seed(0)
        mu = torch.randn((4, 64), generator=g, dtype=torch.float64)
        mu = 2.0 * mu / mu.norm(dim=1, keepdim=True)
        probs.append(Problem("64-D", GaussianMixture(torch.ones(4), mu, 0.3), n64 or 256, sde))
    return probs


def rms(d: torch.Tensor) -> float:
    return float(d.to(torch.float64).pow(2).mean().sqrt())


def sigma_tilde(sde, t: float) -> float:
    """sigma / alpha at time t, float64."""
    tt = torch.tensor([t], dtype=torch.float64)
    return float(sde.marginal_std(tt)[0] / sde.mean_coeff(tt)[0])


# ---------------------------------------------------------------------------------------------
# ours
# ---------------------------------------------------------------------------------------------
def ours_configs():
    """(label, method, options) of every deterministic configuration we run."""
    cfgs = [("ddim uniform (t=0)", "ddim", {"skip": "uniform", "alphas": "continuous"}),
            ("ddim quadratic (t=0)", "ddim", {"skip": "quadratic", "alphas": "continuous"})]
    for sp in SPACINGS + ("quadratic",):
        for order in (2, 3):
            cfgs.append((f"dpm_solver-{order} {sp}", "dpm_solver", {"order": order, "spacing": sp}))
    for sp in SPACINGS:
        for lof in (None, False):  # None: the method's default lower_order_final
            tag = "" if lof is None else " lof=False"
            lo = {} if lof is None else {"lower_order_final": lof}
            cfgs.append((f"dpmpp_2m {sp}{tag}", "dpmpp_2m", {"spacing": sp, **lo}))
            for var in ("taylor", "peers"):
                cfgs.append((f"dpmpp_3m-{var} {sp}{tag}", "dpmpp_3m", {"spacing": sp, "variant": var, **lo}))
            for order in (2, 3):
                for var in ("bh1", "bh2"):
                    cfgs.append((f"unipc-{order} {var} {sp}{tag}", "unipc",
                                 {"order": order, "variant": var, "spacing": sp, **lo}))
                cfgs.append((f"deis-{order} {sp}{tag}", "deis", {"order": order, "spacing": sp, **lo}))
    for sp in ("karras", "logsnr"):
        cfgs.append((f"heun {sp}", "heun", {"spacing": sp}))
    return cfgs


def ours_adaptive_configs():
    cfgs = []
    for order in (2, 3):
        for rtol, atol in TOLS:
            cfgs.append((f"dpm_adaptive-{order} rtol={rtol:g} atol={atol:g}", "dpm_adaptive",
                         {"order": order, "rtol": rtol, "atol": atol}))
    for tol in ODE_TOLS:
        cfgs.append((f"ode dopri5 tol={tol:g}", "ode", {"ode_method": "dopri5", "rtol": tol, "atol": tol}))
    return cfgs


def steps_for(method: str, opts: dict, budget: int) -> int | None:
    """The largest steps whose NFE is <= budget (None if even one step does not fit)."""
    inst = SOLVERS[method](**opts)
    best = None
    for s in range(1, budget + 1):
        if inst.nfe(s) <= budget:
            best = s
    return best


def run_ours(prob: Problem, method: str, opts: dict, budget: int | None):
    sde = prob.sde
    kw = dict(method=method, x_T=prob.xT, denoise=False, return_info=True, **opts)
    if method != "ddim":
        kw["eps"] = EPS
    if budget is not None:
        steps = steps_for(method, opts, budget)
        if steps is None:
            return None
        kw["steps"] = steps
    x, info = sample(prob.score, sde, tuple(prob.xT.shape), **kw)
    ref = prob.ref0 if method == "ddim" else prob.ref
    return x, info.nfe, rms(x - ref)


# ---------------------------------------------------------------------------------------------
# diffusers
# ---------------------------------------------------------------------------------------------
def trained_betas(sde) -> np.ndarray:
    """Betas of a 1000-step table with abar_i = alpha_bar(t_i), t_i = (i + 1) / 1000 (float64)."""
    ab = sde.alpha_bar(sde.index_to_t(torch.arange(1000))).to(torch.float64)
    prev = torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
    return (1.0 - ab / prev).numpy()


class CountedEps:
    """The exact eps-model at diffusers timestep k: -sigma(t) score(x, t), t = (k + 1) / 1000."""

    def __init__(self, prob: Problem):
        self.prob, self.calls = prob, 0

    def __call__(self, x: torch.Tensor, timestep) -> torch.Tensor:
        self.calls += 1
        t = (float(timestep) + 1.0) / 1000.0
        sde = self.prob.sde
        tt = torch.full((x.shape[0],), t, dtype=torch.float64)
        sig = sde.marginal_std(tt[:1]).to(torch.float64)
        return (-sig * self.prob.score(x.to(torch.float64), tt)).to(x.dtype)


def diffusers_configs():
    """(label, scheduler class name, constructor kwargs, plan, sample space "x" or "x~"), where
    plan(budget) -> (num_inference_steps, model calls to make, trim): ``trim`` drops the last
    timestep and the duplicated last sigma after set_timesteps (the zero-length step)."""
    full = lambda b: (b, b, False)            # noqa: E731  the loop as is: b calls, ends at index 0
    trim = lambda b: (b + 1, b, True)         # noqa: E731  b + 1 nodes ending at index 0, zero-length step trimmed
    drop_last = lambda b: (b + 1, b, False)   # noqa: E731  b + 1 nodes ending at index 0, stop before the step onto 0
    heun = lambda b: (b // 2 + 1, 2 * (b // 2), False)  # noqa: E731  n - 1 Heun steps; the Euler step onto 0 dropped
    sm = {"final_sigmas_type": "sigma_min"}
    cfgs = []
    for order in (2, 3):
        for lof in (True, False):
            tag = "" if lof else " lof=False"
            base = {"algorithm_type": "dpmsolver++", "solver_order": order, "lower_order_final": lof, **sm}
            cfgs.append((f"DPM++{order}M linspace{tag}", "DPMSolverMultistepScheduler", base, full, "x"))
            cfgs.append((f"DPM++{order}M lu{tag}", "DPMSolverMultistepScheduler",
                         {**base, "use_lu_lambdas": True}, trim, "x"))
            cfgs.append((f"DPM++{order}M karras{tag}", "DPMSolverMultistepScheduler",
                         {**base, "use_karras_sigmas": True}, trim, "x"))
            for var in ("bh1", "bh2"):
                ub = {"solver_order": order, "solver_type": var, "lower_order_final": lof, **sm}
                cfgs.append((f"UniPC-{order} {var} linspace{tag}", "UniPCMultistepScheduler", ub, full, "x"))
                cfgs.append((f"UniPC-{order} {var} karras{tag}", "UniPCMultistepScheduler",
                             {**ub, "use_karras_sigmas": True}, trim, "x"))
            db = {"solver_order": order, "lower_order_final": lof}
            cfgs.append((f"DEIS-{order} linspace{tag}", "DEISMultistepScheduler", db, full, "x"))
            cfgs.append((f"DEIS-{order} karras{tag}", "DEISMultistepScheduler",
                         {**db, "use_karras_sigmas": True}, trim, "x"))
        cfgs.append((f"DPM-Solver-{order} singlestep linspace", "DPMSolverSinglestepScheduler",
                     {"algorithm_type": "dpmsolver++", "solver_order": order, **sm}, full, "x"))
    cfgs.append(("DDIM trailing", "DDIMScheduler",
                 {"set_alpha_to_one": False, "timestep_spacing": "trailing", "clip_sample": False}, full, "x"))
    for name, cls in (("Heun", "HeunDiscreteScheduler"), ("Euler", "EulerDiscreteScheduler")):
        plan = heun if name == "Heun" else drop_last
        cfgs.append((f"{name} linspace", cls, {}, plan, "x~"))
        cfgs.append((f"{name} karras", cls, {"use_karras_sigmas": True}, plan, "x~"))
    return cfgs


DIFFUSERS_NOTES = [
    "diffusers: table index i is t_i = (i + 1) / 1000 of the continuous VP (trained_betas from alpha_bar), "
    "so index 0 is eps; the model is called at the scheduler's (rounded, for karras / lu) timestep, while the "
    "update uses the scheduler's unrounded sigma: a mismatch that is diffusers' own. Computation in float32.",
    "DPMSolverMultistep / UniPC / DEIS 'linspace' and DPMSolverSinglestep: final_sigmas_type='sigma_min' (DEIS "
    "has no such option but ends at index 0 on linspace): NFE = steps, the loop ends exactly at index 0 = eps.",
    "'karras' / 'lu' of DPMSolverMultistep / UniPC / DEIS: the karras/lu sigmas already end at sigma_min (index "
    "0) and 'sigma_min' appends it again, a zero-length last step that costs one model call (and for DPM++3M "
    "with >= 15 steps, where the 3rd-order update runs on it, gives NaN: r0 / (r0 + r1) = inf / inf). We call "
    "set_timesteps(steps + 1) and trim the last timestep and the duplicated last sigma, so the scheduler runs "
    "steps steps (its lower_order_final logic sees steps) on steps + 1 karras / lu nodes ending at index 0 = eps.",
    "lower_order_final defaults: DPM++M / DEIS lower the last steps only below 15 steps; UniPC always lowers "
    "(its own default); 'lof=False' rows switch that off.",
    "DDIMScheduler: timestep_spacing='trailing' (999, 899, ... for 10 steps), set_alpha_to_one=False, so the "
    "last step lands on alphas_cumprod[0] = eps; clip_sample=False (the default clips x0 to [-1, 1]).",
    "Euler / Heun discrete: sigma space (x~ = x / alpha, scale_model_input), fractional timesteps; they always "
    "end with a step onto sigma = 0 (t = 0): Euler gets steps + 1 nodes and stops at index 0 (NFE = steps); "
    "Heun gets n = budget // 2 + 1 nodes and stops before the final Euler step onto 0, so every step is a full "
    "Heun step and NFE = 2 (n - 1) (4 at budget 5). 'linspace' is diffusers' fractional-timestep grid.",
]


class ExactSigmaEps(CountedEps):
    """Diagnostic: the eps-model at the time of the scheduler's own (unrounded) sigma~ of the
    current step, instead of at its rounded integer timestep."""

    def __init__(self, prob: Problem, sched):
        super().__init__(prob)
        self.sched = sched

    def __call__(self, x, timestep):
        i = self.sched.step_index if self.sched.step_index is not None else 0
        st = float(self.sched.sigmas[i])
        t = self.prob.sde.t_from_log_snr(torch.tensor([-2.0 * math.log(st)], dtype=torch.float64))
        return super().__call__(x, float(t[0]) * 1000.0 - 1.0)


def run_diffusers(prob: Problem, clsname: str, kwargs: dict, plan, space: str, budget: int, exact_sigma=False):
    import diffusers

    n_set, n_calls, trim = plan(budget)
    if n_set < 1 or n_calls < 1:
        return None
    sched = getattr(diffusers, clsname)(num_train_timesteps=1000, trained_betas=trained_betas(prob.sde), **kwargs)
    sched.set_timesteps(n_set)
    if trim:  # drop the zero-length last step: n_calls steps on the first n_calls + 1 sigmas
        last, dup = float(sched.sigmas[n_calls]), float(sched.sigmas[-1])
        assert len(sched.timesteps) == n_calls + 1 and len(sched.sigmas) == n_calls + 2, clsname
        assert abs(last / dup - 1.0) < 1e-5, (clsname, last, dup)
        sched.timesteps = sched.timesteps[:n_calls]
        sched.sigmas = sched.sigmas[: n_calls + 1]
        sched.num_inference_steps = n_calls
    model = ExactSigmaEps(prob, sched) if exact_sigma else CountedEps(prob)
    x = prob.xT.clone()
    if space == "x~":
        x = x * math.sqrt(1.0 + float(sched.sigmas[0]) ** 2)
    for ts in sched.timesteps:
        if model.calls == n_calls:
            break
        inp = sched.scale_model_input(x, ts)
        out = model(inp, ts)
        x = sched.step(out, ts, x).prev_sample
    # where it ended: diffusers' sigma (= sigma~) at the current index, which must be sigma~(eps)
    if clsname == "DDIMScheduler":
        ab = float(sched.final_alpha_cumprod)
        s_end = math.sqrt((1 - ab) / ab)
    else:
        s_end = float(sched.sigmas[sched.step_index])
    if space == "x~":
        x = x / math.sqrt(1.0 + s_end**2)
    end_mismatch = abs(s_end / sigma_tilde(prob.sde, EPS) - 1.0)
    return x.to(torch.float64), model.calls, rms(x.to(torch.float64) - prob.ref), end_mismatch


# ---------------------------------------------------------------------------------------------
# k-diffusion
# ---------------------------------------------------------------------------------------------
def k_diffusion_sampling():
    """k-diffusion's ``sampling`` module loaded without its package ``__init__`` (tests/peers.py's loader)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    try:
        from peers import load_k_diffusion_sampling
    finally:
        sys.path.pop(0)
    try:
        return load_k_diffusion_sampling()
    except ImportError as e:
        raise SystemExit(str(e)) from None


@contextlib.contextmanager
def default_dtype(dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


class CountedDenoiser:
    """k-diffusion's model: D(x~, s~) = E[x_0 | x_t] at x = alpha x~, lambda(t) = -log s~ (one s~ per call)."""

    def __init__(self, prob: Problem):
        self.prob, self.calls = prob, 0

    def __call__(self, xt: torch.Tensor, sigma: torch.Tensor, **kw) -> torch.Tensor:
        self.calls += 1
        s = sigma.reshape(-1)[0].to(torch.float64)
        sde = self.prob.sde
        t = sde.t_from_log_snr((-2.0 * torch.log(s)).reshape(1)).to(torch.float64)
        alpha = 1.0 / torch.sqrt(1.0 + s**2)
        return self.prob.x0(alpha * xt.to(torch.float64), t.expand(xt.shape[0])).to(xt.dtype)


def kd_sigmas(kd, grid: str, n: int, s_min: float, s_max: float) -> torch.Tensor:
    """n sigmas from s_max to s_min (no appended zero), float64."""
    with default_dtype(torch.float64):
        if grid == "karras":
            s = kd.get_sigmas_karras(n, s_min, s_max, rho=7.0)
        else:
            s = kd.get_sigmas_exponential(n, s_min, s_max)
    return s[:-1].to(torch.float64)


def kd_configs():
    """(label, sampler, grid, nodes(budget) -> number of sigmas, extra kwargs)."""
    one = lambda b: b + 1         # noqa: E731  one call per step: b steps
    two = lambda b: b // 2 + 1    # noqa: E731  two calls per step (no step onto 0 here)
    cfgs = []
    for grid in ("karras", "exponential"):
        cfgs += [(f"dpmpp_2m {grid}", "sample_dpmpp_2m", grid, one, {}),
                 (f"dpmpp_3m_sde eta=0 {grid}", "sample_dpmpp_3m_sde", grid, one, {"eta": 0.0}),
                 (f"lms-4 {grid}", "sample_lms", grid, one, {}),
                 (f"euler {grid}", "sample_euler", grid, one, {}),
                 (f"heun {grid}", "sample_heun", grid, two, {}),
                 (f"dpm_2 {grid}", "sample_dpm_2", grid, two, {}),
                 (f"dpmpp_2s eta=0 {grid}", "sample_dpmpp_2s_ancestral", grid, two, {"eta": 0.0})]
    cfgs.append(("dpm_fast", "sample_dpm_fast", None, None, {}))
    return cfgs


def run_kd(prob: Problem, sampler: str, grid, nodes, extra: dict, budget: int | None, adaptive_opts=None):
    kd = k_diffusion_sampling()
    sde = prob.sde
    s_min, s_max = sigma_tilde(sde, EPS), sigma_tilde(sde, sde.T)
    model = CountedDenoiser(prob)
    a_T = 1.0 / math.sqrt(1.0 + s_max**2)
    a_eps = 1.0 / math.sqrt(1.0 + s_min**2)
    x = prob.xT / a_T
    fn = getattr(kd, sampler)
    with default_dtype(torch.float64), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if sampler == "sample_dpm_fast":
            out = fn(model, x, torch.tensor(s_min, dtype=torch.float64), torch.tensor(s_max, dtype=torch.float64),
                     budget, disable=True)
        elif sampler == "sample_dpm_adaptive":
            out, _info = fn(model, x, torch.tensor(s_min, dtype=torch.float64),
                            torch.tensor(s_max, dtype=torch.float64), disable=True, return_info=True, **adaptive_opts)
        else:
            n = nodes(budget)
            if n < 2:
                return None
            sig = kd_sigmas(kd, grid, n, s_min, s_max)
            kw = dict(extra)
            if sampler == "sample_dpmpp_3m_sde":
                kw["noise_sampler"] = lambda s, t: torch.zeros_like(x)  # eta = 0: never drawn
            out = fn(model, x, sig, disable=True, **kw)
    xe = a_eps * out.to(torch.float64)
    return xe, model.calls, rms(xe - prob.ref)


# ---------------------------------------------------------------------------------------------
# reporting
# ---------------------------------------------------------------------------------------------
def best_at(entries, problem, budget, libs, exclude_t0=True):
    cands = [e for e in entries if e["problem"] == problem and e["library"] in libs and e["nfe"] <= budget
             and math.isfinite(e["error"]) and not (exclude_t0 and e.get("end") == "t=0")]
    return min(cands, key=lambda e: e["error"]) if cands else None


def fmt(v: float) -> str:
    return "nan" if not math.isfinite(v) else f"{v:.2e}"


def markdown(entries, problems, budgets, pairs, summary, meta) -> str:
    out = ["# Deterministic samplers on an exact mixture score: scoresde vs diffusers vs k-diffusion", ""]
    out.append(f"VPSDE (linear, T = 1), eps = {EPS:g}; exact Gaussian-mixture score; error = RMS over all "
               f"elements of x - reference, reference = float64 DOP853 probability-flow solve at rtol = atol = "
               f"{REF_TOL:g}. Cells: error at the largest step count with NFE <= budget (actual NFE in "
               "parentheses when below the budget). Command: `" + meta["command"] + "`.")
    out.append("")
    for p in problems:
        out.append(f"- {p.describe()}; reference accuracy (vs a 10x looser solve) {p.ref_check:.1e}")
    out.append("")
    out.append("## Summary: best ours vs best peer (ratio > 1: ours is more accurate)")
    out.append("")
    out.append("| problem | NFE <= | ours best | config | peer best | library / config | peer / ours |")
    out.append("|---|---|---|---|---|---|---|")
    for s in summary:
        out.append(f"| {s['problem']} | {s['budget']} | {fmt(s['ours_error'])} | {s['ours_config']} (NFE "
                   f"{s['ours_nfe']}) | {fmt(s['peer_error'])} | {s['peer_library']} {s['peer_config']} (NFE "
                   f"{s['peer_nfe']}) | {s['ratio']:.2f}x |")
    out.append("")
    out.append("## Same algorithm on the same nodes (fairness check)")
    out.append("")
    out.append("k-diffusion runs in float64 on the same sigmas, so its errors must agree with ours to rounding. "
               "diffusers* is a diagnostic run (not in the tables above) with the eps-model called at the time of "
               "the scheduler's own unrounded sigma~ instead of its rounded integer timestep; it is float32, so "
               "agreement is to ~1e-7 absolute. The gap between diffusers* and the plain diffusers row is the effect "
               "of diffusers' timestep rounding.")
    out.append("")
    out.append("| problem | ours | peer | NFE | ours error | peer error | relative difference |")
    out.append("|---|---|---|---|---|---|---|")
    for q in pairs:
        out.append(f"| {q['problem']} | {q['ours']} | {q['peer']} | {q['nfe']} | {fmt(q['ours_error'])} | "
                   f"{fmt(q['peer_error'])} | {q['rel_diff']:.1e} |")
    out.append("")
    for p in problems:
        out.append(f"## {p.name}: fixed-step methods")
        out.append("")
        out.append("| library | config | " + " | ".join(f"NFE {b}" for b in budgets) + " |")
        out.append("|---|---|" + "---|" * len(budgets))
        rows = {}
        for e in entries:
            if e["problem"] == p.name and e["budget"] is not None:
                rows.setdefault((e["library"], e["config"]), {})[e["budget"]] = e
        for (lib, cfg), cells in rows.items():
            vals = []
            for b in budgets:
                e = cells.get(b)
                if e is None:
                    vals.append("-")
                else:
                    vals.append(fmt(e["error"]) + (f" ({e['nfe']})" if e["nfe"] < b else ""))
            out.append(f"| {lib} | {cfg} | " + " | ".join(vals) + " |")
        out.append("")
        out.append(f"## {p.name}: adaptive methods")
        out.append("")
        out.append("| library | config | NFE | error |")
        out.append("|---|---|---|---|")
        for e in entries:
            if e["problem"] == p.name and e["budget"] is None:
                out.append(f"| {e['library']} | {e['config']} | {e['nfe']} | {fmt(e['error'])} |")
        out.append("")
    out.append("## Notes")
    out.append("")
    out.append("- ours: `scoresde.sample(..., x_T=float64, denoise=False)`; 'lof' is lower_order_final (ours: None "
               "= True below 10 steps). 'ddim ... (t=0)' ends on alpha-bar = 1 (the chain's step onto the data), "
               "so it is compared with the reference flow continued to t = 0 and left out of the best-of. "
               "dpm_solver: steps = NFE (DPM-Solver-fast split). heun: NFE = 2 steps - 1 (the last step is Euler "
               "only, as EDM's step onto sigma = 0, although here it ends at eps > 0).")
    for n in DIFFUSERS_NOTES:
        out.append("- " + n)
    out.append("- k-diffusion: sigmas without the appended zero, so every step is a full step ending at eps "
               "(heun / dpm_2 / dpmpp_2s: 2 NFE per step, NFE = 2 (budget // 2)); dpm_fast and dpm_adaptive in "
               "lambda = -log sigma~ between sigma~(T) and sigma~(eps). dpm_adaptive's error norm is the RMS over "
               "the whole batch of x~ (ours: the max over samples of per-sample RMS of x), so equal tolerances "
               "are not equal algorithms. Float64 (default dtype set to float64 around its calls).")
    for p in problems:
        if p.end_floor is not None:
            m, floor = p.end_floor
            out.append(f"- {p.name}: every diffusers run ends at table index 0, but its float32 alphas_cumprod near 1 "
                       f"puts sigma~ there {m:.1e} (relative) away from sigma~(eps): an end-time offset worth "
                       f"{floor:.1e} RMS (the reference flow moved by it), an error floor below the errors here.")
    mism = [e for e in entries if e.get("end_mismatch") is not None and e["end_mismatch"] > 1e-3]
    if mism:
        out.append(f"- WARNING: {len(mism)} diffusers runs ended more than 1e-3 (relative, in sigma~) away from "
                   "eps: " + ", ".join(sorted({e['config'] for e in mism})))
    out.append("")
    return "\n".join(out)


def plot(entries, problems, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"ours": "tab:blue", "diffusers": "tab:orange", "k-diffusion": "tab:green"}
    styles = ["-", "--", ":", "-."]
    fig, axes = plt.subplots(1, len(problems), figsize=(6.5 * len(problems), 5), squeeze=False)
    for ax, p in zip(axes[0], problems):
        for lib in ("ours", "diffusers", "k-diffusion"):
            mine = [e for e in entries if e["problem"] == p.name and e["library"] == lib and e.get("end") != "t=0"
                    and math.isfinite(e["error"])]
            fixed = {}
            for e in mine:
                if e["budget"] is not None:
                    fixed.setdefault(e["config"], []).append(e)
            # the best config of each family (first word of the label, e.g. "unipc-3", "DEIS-3") by mean log
            # error over all budgets, then the best 3 families
            nb = max((len(v) for v in fixed.values()), default=0)
            score = {c: np.mean([math.log(max(e["error"], 1e-300)) for e in v]) for c, v in fixed.items()
                     if len(v) == nb}
            fam = {}
            for c in sorted(score, key=score.get):
                fam.setdefault(c.split(" ")[0], c)
            ranked = sorted(fam.values(), key=score.get)
            for k, cfg in enumerate(ranked[:3]):
                pts = sorted((e["nfe"], e["error"]) for e in fixed[cfg])
                ax.loglog(*zip(*pts), styles[k], marker="o", ms=3, color=colors[lib], label=f"{lib}: {cfg}")
            adapt = {}
            for e in mine:
                if e["budget"] is None:
                    adapt.setdefault(e["method"] + " " + e["config"].split(" ")[0], []).append(e)
            if adapt:
                key = min(adapt, key=lambda c: min(e["error"] * e["nfe"] for e in adapt[c]))
                pts = sorted((e["nfe"], e["error"]) for e in adapt[key])
                ax.loglog(*zip(*pts), styles[3], marker="x", ms=5, color=colors[lib],
                          label=f"{lib}: {adapt[key][0]['config'].split(' rtol')[0].split(' tol')[0]} (adaptive)")
        ax.set_xlabel("NFE")
        ax.set_ylabel("RMS error vs reference")
        ax.set_title(p.describe(), fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6.5)
    fig.tight_layout()
    with atomic_file(path, "path") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="2-D only, NFE 5/10/20, 200 points (< 60 s on one core)")
    ap.add_argument("--out", default=os.path.join("benchmarks", "results", "solvers"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--n2", type=int, default=None, help="points of the 2-D problem (default 1000; quick 200)")
    ap.add_argument("--n64", type=int, default=None, help="points of the 64-D problem (default 256)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    import diffusers

    diffusers.utils.logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning)
    os.makedirs(args.out, exist_ok=True)
    budgets = QUICK_BUDGETS if args.quick else BUDGETS
    t_start = time.perf_counter()
    problems = make_problems(args.quick, args.n2, args.n64)
    for p in problems:
        print(f"{p.describe()}; reference {p.ref_seconds:.1f} s, its accuracy {p.ref_check:.1e}", flush=True)

    entries = []

    def add(prob, lib, method, config, options, budget, res, end="eps"):
        if res is None:
            return
        e = {"problem": prob.name, "library": lib, "method": method, "config": config, "options": options,
             "budget": budget, "nfe": int(res[1]), "error": float(res[2]), "end": end}
        if len(res) > 3:
            e["end_mismatch"] = float(res[3])
        entries.append(e)

    adaptive_tols = TOLS[:2] if args.quick else TOLS
    ode_tols = ODE_TOLS[:2] if args.quick else ODE_TOLS
    for p in problems:
        t0 = time.perf_counter()
        for label, method, opts in ours_configs():
            for b in budgets:
                add(p, "ours", method, label, opts, b, run_ours(p, method, opts, b),
                    end="t=0" if method == "ddim" else "eps")
        for label, method, opts in ours_adaptive_configs():
            if method == "ode" and opts["rtol"] not in ode_tols:
                continue
            if method == "dpm_adaptive" and (opts["rtol"], opts["atol"]) not in adaptive_tols:
                continue
            add(p, "ours", method, label, opts, None, run_ours(p, method, opts, None))
        t1 = time.perf_counter()
        for label, clsname, kw, plan, space in diffusers_configs():
            for b in budgets:
                add(p, "diffusers", clsname, label, kw, b, run_diffusers(p, clsname, kw, plan, space, b))
        t2 = time.perf_counter()
        for label, sampler, grid, nodes, extra in kd_configs():
            for b in budgets:
                add(p, "k-diffusion", sampler, label, extra, b, run_kd(p, sampler, grid, nodes, extra, b))
        for order in (2, 3):
            for rtol, atol in adaptive_tols:
                o = {"order": order, "rtol": rtol, "atol": atol}
                add(p, "k-diffusion", "sample_dpm_adaptive", f"dpm_adaptive-{order} rtol={rtol:g} atol={atol:g}",
                    o, None, run_kd(p, "sample_dpm_adaptive", None, None, {}, None, adaptive_opts=o))
        t3 = time.perf_counter()
        print(f"{p.name}: ours {t1 - t0:.1f} s, diffusers {t2 - t1:.1f} s, k-diffusion {t3 - t2:.1f} s", flush=True)

    for p in problems:
        m = [e["end_mismatch"] for e in entries if e["problem"] == p.name and "end_mismatch" in e]
        if m:
            p.set_end_floor(max(m))

    # same algorithm, same nodes: ours vs k-diffusion
    pair_defs = [("dpmpp_2m karras lof=False", "dpmpp_2m karras"),
                 ("dpmpp_2m logsnr lof=False", "dpmpp_2m exponential"),
                 ("dpm_solver-3 logsnr", "dpm_fast")]
    pairs = []
    dcfg = {c[0]: c for c in diffusers_configs()}
    dpair_defs = [("dpmpp_2m karras lof=False", "DPM++2M karras lof=False"),
                  ("dpmpp_3m-peers logsnr lof=False", "DPM++3M lu lof=False"),
                  ("unipc-2 bh2 karras lof=False", "UniPC-2 bh2 karras lof=False"),
                  ("unipc-3 bh1 karras lof=False", "UniPC-3 bh1 karras lof=False")]
    for p in problems:
        for ours_cfg, d_cfg in dpair_defs:
            _, clsname, kw, plan, space = dcfg[d_cfg]
            for b in budgets:
                eo = [e for e in entries if e["problem"] == p.name and e["library"] == "ours"
                      and e["config"] == ours_cfg and e["budget"] == b]
                res = run_diffusers(p, clsname, kw, plan, space, b, exact_sigma=True)
                if eo and res is not None and eo[0]["nfe"] == res[1]:
                    pairs.append({"problem": p.name, "ours": ours_cfg, "peer": f"diffusers* {d_cfg}",
                                  "nfe": res[1], "ours_error": eo[0]["error"], "peer_error": res[2],
                                  "rel_diff": abs(eo[0]["error"] - res[2]) / res[2]})
        for ours_cfg, kd_cfg in pair_defs:
            for b in budgets:
                eo = [e for e in entries if e["problem"] == p.name and e["library"] == "ours"
                      and e["config"] == ours_cfg and e["budget"] == b]
                ek = [e for e in entries if e["problem"] == p.name and e["library"] == "k-diffusion"
                      and e["config"] == kd_cfg and e["budget"] == b]
                if eo and ek and eo[0]["nfe"] == ek[0]["nfe"]:
                    rel = abs(eo[0]["error"] - ek[0]["error"]) / ek[0]["error"]
                    pairs.append({"problem": p.name, "ours": ours_cfg, "peer": f"k-diffusion {kd_cfg}",
                                  "nfe": eo[0]["nfe"], "ours_error": eo[0]["error"], "peer_error": ek[0]["error"],
                                  "rel_diff": rel})

    summary = []
    for p in problems:
        for b in budgets:
            o = best_at(entries, p.name, b, ("ours",))
            q = best_at(entries, p.name, b, ("diffusers", "k-diffusion"))
            if o is None or q is None:
                continue
            summary.append({"problem": p.name, "budget": b, "ours_error": o["error"], "ours_config": o["config"],
                            "ours_nfe": o["nfe"], "peer_error": q["error"], "peer_library": q["library"],
                            "peer_config": q["config"], "peer_nfe": q["nfe"], "ratio": q["error"] / o["error"]})

    cmd = "OMP_NUM_THREADS=1 python benchmarks/bench_solvers.py" + (" --quick" if args.quick else "")
    meta = {"command": cmd, "eps": EPS, "sde": "VPSDE()", "budgets": list(budgets), "reference_tol": REF_TOL,
            "problems": [{"name": p.name, "describe": p.describe(), "reference_accuracy": p.ref_check}
                         for p in problems],
            "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__},
            "seconds": None}
    md = markdown(entries, problems, budgets, pairs, summary, meta)
    plot(entries, problems, os.path.join(args.out, "solvers.png"))
    meta["seconds"] = round(time.perf_counter() - t_start, 1)
    with atomic_file(os.path.join(args.out, "solvers.md")) as f:
        f.write(md)
    with atomic_file(os.path.join(args.out, "solvers.json")) as f:  # one record per line: small, diffable
        f.write('{"meta": ' + json.dumps(meta) + ',\n')
        for key, rows in (("entries", entries), ("pairs", pairs), ("summary", summary)):
            f.write(f' "{key}": [\n  ' + ",\n  ".join(json.dumps(r) for r in rows) + "\n ]"
                    + (",\n" if key != "summary" else "\n}\n"))

    for q in pairs:
        print(f"same algorithm: {q['problem']} NFE {q['nfe']}: ours {q['ours']} {q['ours_error']:.6e} vs "
              f"{q['peer']} {q['peer_error']:.6e} (relative difference {q['rel_diff']:.1e})")
    for s in summary:
        print(f"{s['problem']} NFE {s['budget']}: ours {s['ours_error']:.1e} ({s['ours_config']}) vs best peer "
              f"{s['peer_error']:.1e} ({s['peer_library']} {s['peer_config']}) -> {s['ratio']:.2f}x")
    print(f"wrote {args.out}/solvers.md, solvers.json, solvers.png in {meta['seconds']} s")


if __name__ == "__main__":
    main()
