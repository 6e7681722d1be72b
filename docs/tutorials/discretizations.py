# %% [markdown]
# # DDPM and DDIM are discretizations
#
# DDPM's ancestral sampler and DDIM are not separate models: with the same score they are
# discretizations of one VP SDE (Song et al. 2021) and of its probability-flow ODE (Eq. (13)).
# DDIM with eta = 0 is Euler's method for the flow in the variables (x / alpha, sigma / alpha)
# (= DPM-Solver-1, Lu et al. 2022), so it is first order; DDPM is the ancestral reverse of the
# SDE's own discretization. This tutorial measures that, **against the number of score
# evaluations (NFE)** - what a sampler costs - rather than steps (an RK4 step costs 4
# evaluations, a Heun step 2), beside the fast solvers (DPM-Solver++, UniPC, DEIS, Heun), on two
# problems with an exact score:
#
# * Gaussian data N(0.5, 0.5^2) in one dimension, whose probability-flow map is closed-form
#   (`scoresde.oracle.GaussianData.flow`);
# * the 2-D mixture of eight Gaussians of the [solver-choice tutorial](choosing_sde_and_solver.md),
#   whose flow is solved to 1e-10 (`GaussianMixture.flow`).
#
# SDE: `VPSDE()` (beta 0.1 to 20, N = 1000). The continuous solvers stop at eps = 1e-3; DDIM and
# DDPM walk the chain onto alpha-bar = 1 (t = 0), and each is compared with the flow to where it
# stops. Run: `python docs/tutorials/discretizations.py` (full size, about 1.5 minutes on one core)
# or `--quick`.

# %%
import argparse
import math
import pathlib
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

import scoresde  # noqa: E402
from scoresde.oracle import GaussianData, GaussianMixture  # noqa: E402
from scoresde.solvers.registry import SOLVERS  # noqa: E402

FIGURES = ["discretizations.png"]
parser = argparse.ArgumentParser(description="DDPM and DDIM are discretizations (scoresde tutorial)")
parser.add_argument("--quick", action="store_true", help="toy size, for the tests")
parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path(__file__).resolve().parent)
args, _ = parser.parse_known_args()
args.out.mkdir(parents=True, exist_ok=True)
torch.set_num_threads(1)
T0 = time.perf_counter()

SDE = scoresde.VPSDE()
EPS = 1e-3
NFES = [10, 20, 40, 80] if args.quick else [5, 10, 20, 40, 80, 160, 320]
N_GAUSS, N_MIX = (64, 100) if args.quick else (256, 500)
N_VAR = 4000 if args.quick else 40000          # samples for the variance of stochastic samplers
STOCH_NFES = [10, 100] if args.quick else [10, 20, 50, 100, 200, 500, 1000]
gaussian = GaussianData(0.5, 0.5, (1,))
angle = torch.arange(8, dtype=torch.float64) * 2 * math.pi / 8
mixture = GaussianMixture(torch.ones(8), 1.5 * torch.stack([angle.cos(), angle.sin()], 1), 0.1)

g = torch.Generator().manual_seed(0)
problems = {}
for name, data, n in (("Gaussian", gaussian, N_GAUSS), ("mixture", mixture, N_MIX)):
    x_T = torch.randn(n, *data.shape, generator=g, dtype=torch.float64)
    problems[name] = dict(data=data, x_T=x_T, score=data.score_fn(SDE),
                          ref={"eps": data.flow(SDE, x_T, SDE.T, EPS), "t=0": data.flow(SDE, x_T, SDE.T, 0.0)})
print(f"size: {'quick' if args.quick else 'full'}; NFE budgets {NFES}")

# %% [markdown]
# ## Deterministic samplers against the probability flow
#
# Each solver runs at the largest step count whose NFE fits in each budget (the registry declares
# every method's NFE per step); the adaptive dopri5 runs at several tolerances. Error = RMS over
# the samples of (x - exact flow from the same x_T). `ode` with a fixed `ode_method` is the
# PF-ODE integrated by torchdiffeq on a uniform grid in t.

# %%
SOLVER_RUNS = {  # label: (method, options, NFE per step of the fixed-step torchdiffeq methods)
    "DDIM (eta = 0)": ("ddim", {}, None),
    "PF-ODE Euler": ("ode", {"ode_method": "euler"}, 1),
    "PF-ODE midpoint": ("ode", {"ode_method": "midpoint"}, 2),
    "PF-ODE RK4": ("ode", {"ode_method": "rk4"}, 4),
    "Heun (EDM)": ("heun", {}, None),
    "DPM-Solver++(2M)": ("dpmpp_2m", {}, None),
    "DPM-Solver++(3M)": ("dpmpp_3m", {}, None),
    "UniPC": ("unipc", {}, None),
    "DEIS": ("deis", {}, None),
}


def steps_for(method, budget, per_step):
    if per_step is not None:
        return budget // per_step if budget >= per_step else None
    solver = SOLVERS[method]()
    fits = [k for k in range(1, budget + 1) if solver.nfe(k) <= budget]
    return max(fits) if fits else None


def rms(a, b):
    return float(((a - b) ** 2).mean().sqrt())


def solve(prob, method, steps=None, **opts):
    x, info = scoresde.sample(prob["score"], SDE, tuple(prob["x_T"].shape), method=method, steps=steps,
                              x_T=prob["x_T"], denoise=False, return_info=True, **opts)
    return info.nfe, rms(x, prob["ref"]["t=0" if method in ("ddim", "ddpm") else "eps"])


curves = {p: {} for p in problems}
for pname, prob in problems.items():
    for label, (method, opts, per_step) in SOLVER_RUNS.items():
        pts = []
        for budget in NFES:
            steps = steps_for(method, budget, per_step)
            if steps:
                pts.append(solve(prob, method, steps, **opts))
        curves[pname][label] = pts
    curves[pname]["PF-ODE dopri5 (adaptive)"] = [solve(prob, "ode", rtol=tol, atol=tol)
                                                 for tol in ([1e-3, 1e-5] if args.quick else
                                                             [1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7])]


def order(pts, min_nfe=20, floor=1e-11):
    """Least-squares slope of -log(error) against log(NFE) over the budgets >= min_nfe."""
    pts = [(n, e) for n, e in pts if n >= min_nfe and e > floor]
    if len(pts) < 2:
        return float("nan")
    xs, ys = [math.log(n) for n, _ in pts], [math.log(e) for _, e in pts]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return -sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


# %% [markdown]
# ### Measured orders
#
# The slope of log(error) against log(NFE) over the budgets from 20 NFE up (asymptotic, before
# any floor), beside the order the registry declares for the method (the torchdiffeq methods
# are the textbook orders). Measured per evaluation, a method of order p per step has slope p
# whatever its evaluations per step: what the NFE axis changes is the constant in front.

# %% output="markdown"
declared = {"PF-ODE Euler": 1, "PF-ODE midpoint": 2, "PF-ODE RK4": 4}
print("| solver | declared order | measured, Gaussian | measured, mixture | RMS error at NFE ~ "
      f"{NFES[2]}, Gaussian / mixture |")
print("|---|---|---|---|---|")
for label, (method, opts, _) in SOLVER_RUNS.items():
    d = declared.get(label, SOLVERS[method]().order_of())
    at = [dict(curves[p][label]) for p in problems]
    e = [min(c.items(), key=lambda kv: abs(kv[0] - NFES[2])) for c in at]
    print(f"| {label} | {d} | {order(curves['Gaussian'][label]):.2f} | {order(curves['mixture'][label]):.2f} | "
          f"{e[0][1]:.1e} (NFE {e[0][0]}) / {e[1][1]:.1e} (NFE {e[1][0]}) |")

# %% [markdown]
# ## Stochastic samplers and the eta family
#
# A stochastic sampler has no pathwise reference, but on Gaussian data its samples should have
# the data's standard deviation 0.5: the relative error of the sample std of many samples
# measures its discretization bias (standard error 1/sqrt(2n)). DDIM's eta interpolates
# between the deterministic DDIM (eta = 0) and DDPM (eta = 1, whose per-step variance is
# DDPM's fixed_small beta-tilde).

# %%
STOCH_RUNS = {
    "DDPM fixed_small": ("ddpm", {"variance": "fixed_small"}),
    "DDPM fixed_large": ("ddpm", {"variance": "fixed_large"}),
    "Euler-Maruyama": ("euler_maruyama", {}),
    "reverse diffusion": ("reverse_diffusion", {}),
    "ancestral": ("ancestral", {}),
    "SDE-DPM-Solver++(2M)": ("dpmpp_2m_sde", {}),
}
ETAS = [0.0, 0.5, 1.0] if args.quick else [0.0, 0.25, 0.5, 0.75, 1.0]


def std_error(method, steps, **opts):
    x, info = scoresde.sample(gaussian.score_fn(SDE), SDE, (N_VAR, 1), method=method, steps=steps,
                              generator=torch.Generator().manual_seed(0), dtype=torch.float64,
                              return_info=True, **opts)
    return info.nfe, float(x.std()) / 0.5 - 1


stoch = {label: [std_error(m, n, **o) for n in STOCH_NFES] for label, (m, o) in STOCH_RUNS.items()}
etas = {eta: [std_error("ddim", n, eta=eta) for n in STOCH_NFES] for eta in ETAS}
print(f"relative error of the sample std ({N_VAR} samples; standard error {1 / math.sqrt(2 * N_VAR):.2%})")
print(f"{'NFE':>24s} " + " ".join(f"{n:>7d}" for n in STOCH_NFES))
for label, pts in list(stoch.items()) + [(f"DDIM eta = {eta:g}", pts) for eta, pts in etas.items()]:
    print(f"{label:>24s} " + " ".join(f"{e:+7.2%}" for _, e in pts))

# %% [markdown]
# ## Time grids: uniform, quadratic, log-SNR, Karras
#
# The same solver on different grids, on the mixture: `spacing="uniform"` (in t),
# `"quadratic"` (dense near eps), `"logsnr"` (uniform in lambda = log(alpha / sigma), DPM-Solver's
# choice) and `"karras"` (EDM's sigma^(1/rho) spacing, rho = 7). DDIM takes the chain's `skip`
# ("uniform" or "quadratic") instead.

# %%
GRIDS = ["uniform", "quadratic", "logsnr", "karras"]
grid_curves = {}
for method in ("dpmpp_2m", "heun"):
    for grid in GRIDS:
        grid_curves[(method, grid)] = [solve(problems["mixture"], method, steps_for(method, b, None), spacing=grid)
                                       for b in NFES if steps_for(method, b, None)]
for skip in ("uniform", "quadratic"):
    grid_curves[("ddim", skip)] = [solve(problems["mixture"], "ddim", b, skip=skip) for b in NFES if b >= 2]
at = NFES[2]
print(f"RMS error on the mixture at NFE <= {at}:")
for (method, grid), pts in grid_curves.items():
    nfe, err = max((p for p in pts if p[0] <= at), key=lambda p: p[0])
    print(f"  {method:9s} {grid:10s} {err:.2e} (NFE {nfe})")

# %% [markdown]
# ## The figure
#
# Top: deterministic error against NFE on the Gaussian and on the mixture, and the grids on the
# mixture. Bottom: the std error of the stochastic samplers and of the eta family (grey band: two
# standard errors), and what the four grids look like in log-SNR for 10 steps.

# %%
fig, axes = plt.subplots(2, 3, figsize=(16, 9))
for ax, pname in zip(axes[0, :2], problems):
    for i, (label, pts) in enumerate(curves[pname].items()):
        ax.loglog(*zip(*pts), marker="o" if "DDIM" in label else ".", ms=4, color=f"C{i % 10}",
                  ls=":" if "adaptive" in label else "-", label=label)
    n0, e0 = curves[pname]["DDIM (eta = 0)"][0]
    ax.loglog(NFES, [e0 * n0 / n for n in NFES], "k:", lw=0.8, label="slope -1")
    ax.set_title(f"{pname}: deterministic samplers vs the probability flow")
    ax.set_xlabel("NFE")
    ax.set_ylabel("RMS error")
axes[0, 0].legend(fontsize=7)
ax = axes[0, 2]
for (method, grid), pts in grid_curves.items():
    ls = {"dpmpp_2m": "-", "heun": "--", "ddim": ":"}[method]
    color = {"uniform": "C0", "quadratic": "C1", "logsnr": "C2", "karras": "C3"}[grid]
    ax.loglog(*zip(*pts), ls=ls, color=color, marker=".", label=f"{method}, {grid}")
ax.set_title("mixture: grids (solid DPM++2M, dashed Heun, dotted DDIM)", fontsize=10)
ax.set_xlabel("NFE")
ax.set_ylabel("RMS error")
ax.legend(fontsize=7, ncol=2)
band = 200 / math.sqrt(2 * N_VAR)
for ax, series, title in ((axes[1, 0], stoch, "stochastic samplers"),
                          (axes[1, 1], {f"DDIM eta = {e:g}": p for e, p in etas.items()}, "the eta family")):
    for label, pts in series.items():
        ax.semilogx([n for n, _ in pts], [100 * e for _, e in pts], marker=".", label=label)
    ax.axhspan(-band, band, color="0.85")
    ax.axhline(0, color="k", lw=0.8)
    ax.set_ylim(-30, 30)
    ax.set_title(f"Gaussian: {title}, error of the sample std")
    ax.set_xlabel("NFE")
    ax.set_ylabel("std / 0.5 - 1 (%)")
    ax.legend(fontsize=7)
ax = axes[1, 2]
for grid in GRIDS:
    ts = scoresde.time_grid(SDE, 10, EPS, grid)
    ax.plot(range(11), SDE.log_snr(ts).numpy() / 2, marker="o", label=grid)
ax.set_title("10-step grids from T to eps, in half log-SNR")
ax.set_xlabel("step k")
ax.set_ylabel("lambda = log(alpha / sigma)")
ax.legend(fontsize=8)
fig.suptitle("VP SDE (beta 0.1..20): samplers as discretizations, against NFE")
fig.tight_layout()
fig.savefig(args.out / "discretizations.png", dpi=80)
plt.close(fig)
print(f"(size: {'quick' if args.quick else 'full'}; {time.perf_counter() - T0:.0f} s)")

# %% [markdown]
# ## Reading it
#
# What this run measured (a quick-size run has fewer budgets and samples):

# %% output="markdown"
def at_nfe(pts, n):
    return min(pts, key=lambda p: abs(p[0] - n))


mid = 20 if 20 in NFES else NFES[1]
ddim_g, ddim_m = order(curves["Gaussian"]["DDIM (eta = 0)"]), order(curves["mixture"]["DDIM (eta = 0)"])
rk4, deis = at_nfe(curves["mixture"]["PF-ODE RK4"], mid), at_nfe(curves["mixture"]["DEIS"], mid)
print(f"* **DDIM is first order**: measured slope {ddim_g:.2f} on the Gaussian and {ddim_m:.2f} on the mixture, "
      "Euler's order on the same flow; the exponential integrators built on the same variables (DPM-Solver++, "
      "UniPC, DEIS) add multistep corrections and reach the higher slopes of the table.")
print(f"* **Steps are not the cost**: on the mixture at about {mid} NFE, RK4 (4 evaluations per step, "
      f"{rk4[0] // 4} steps) has error {rk4[1]:.1e} and DEIS ({deis[0]} steps) {deis[1]:.1e}; plotted against "
      "steps RK4 would look four times cheaper than it is.")
n_eta = STOCH_NFES[min(1, len(STOCH_NFES) - 1)]
e0, e1 = dict(etas[ETAS[0]])[n_eta], dict(etas[ETAS[-1]])[n_eta]
fs = dict(stoch["DDPM fixed_small"])[n_eta]
print(f"* **The eta family**: at {n_eta} NFE the sample std is off by {e0:+.1%} with eta = 0 (DDIM) and by "
      f"{e1:+.1%} with eta = 1, the same as DDPM fixed_small ({fs:+.1%}): on the same steps, DDIM with eta = 1 is "
      "DDPM. Each converges to the data std as the NFE grows.")
g_at = {grid: at_nfe(grid_curves[("dpmpp_2m", grid)], mid)[1] for grid in GRIDS}
best_grid = min(g_at, key=g_at.get)
print(f"* **The grid matters as much as the order**: DPM-Solver++(2M) at about {mid} NFE on the mixture has error "
      + ", ".join(f"{g_at[g]:.1e} ({g})" for g in GRIDS) + f"; the best here is {best_grid}, "
      f"{g_at['uniform'] / g_at[best_grid]:.0f} times more accurate than the uniform grid in t.")
