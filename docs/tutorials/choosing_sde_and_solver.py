# %% [markdown]
# # Choosing an SDE and a solver
#
# Which sampler should you use, on which SDE, at how many score evaluations (NFE)? This tutorial
# answers with measurements on a problem where the exact answer is known: a 2-D mixture of eight
# Gaussians (`scoresde.oracle.GaussianMixture`), whose score is exact for every SDE. With an
# exact score the only error left is the solver's, so:
#
# * a **deterministic** sampler (a solver of the probability-flow ODE) is scored by its pathwise
#   error: the RMS distance between its output and the reference solution of the same ODE from
#   the same x_T (`mixture.flow`, float64 DOP853 at rtol = atol = 1e-10);
# * every sampler, stochastic or not, is also scored on its samples by the squared **maximum mean
#   discrepancy** (MMD², an unbiased estimate, in units of 1e-3) to the mixture, with a
#   Gaussian kernel as wide as a mode (0.1). Its data-side terms are integrals of the kernel
#   against the mixture, which are closed-form, so the estimate's only noise is the samples'
#   own; exact draws of the same size show that noise (the floor; the estimate goes negative
#   when samples are as good as exact). Blurred modes, mass between the modes or unequal modes
#   all raise it.
#
# Every sampler in the registry (`scoresde.solvers.registry.METHODS`) runs on the VP, sub-VP and
# VE SDEs at each NFE budget, on each time grid it accepts; the decision table at the end is
# computed from those runs.
#
# Run: `python docs/tutorials/choosing_sde_and_solver.py` (full size, about 1.5 minutes on one
# core) or with `--quick` (a few seconds; the test suite runs it). Figures go to `--out`
# (default: next to this script).

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
from scoresde.oracle import GaussianMixture  # noqa: E402
from scoresde.solvers.registry import METHODS, SOLVERS  # noqa: E402

FIGURES = ["choosing_samples_vp.png", "choosing_samples_subvp.png", "choosing_samples_ve.png",
           "choosing_error_vs_nfe.png"]
parser = argparse.ArgumentParser(description="Choosing an SDE and a solver (scoresde tutorial)")
parser.add_argument("--quick", action="store_true", help="toy size, for the tests")
parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path(__file__).resolve().parent)
args, _ = parser.parse_known_args()
args.out.mkdir(parents=True, exist_ok=True)
torch.set_num_threads(1)
T0 = time.perf_counter()

N = 300 if args.quick else 1500           # samples per run
BUDGETS = [10, 50] if args.quick else [5, 10, 20, 50, 100, 200]
GRIDS = ["logsnr", "karras"] if args.quick else ["uniform", "quadratic", "logsnr", "karras"]
TOLS = [1e-3] if args.quick else [1e-2, 1e-3, 1e-4, 1e-5]
PLOT_BUDGET = 20
print(f"size: {'quick' if args.quick else 'full'}; {N} samples per run; NFE budgets {BUDGETS}")

# %% [markdown]
# ## The problem
#
# Eight equal components of standard deviation 0.1 on a circle of radius 1.5: a strongly curved
# probability flow, and modes narrow enough that a blurry sampler is visible at a glance. The
# three SDEs use their defaults: `VPSDE()` (beta from 0.1 to 20), `SubVPSDE()` and `VESDE()`
# (sigma from 0.01 to 50); each sampler stops at the SDE's default `eps` (1e-3 for VP and
# sub-VP, 1e-5 for VE) with `denoise=False`, so it ends where the reference flow ends. DDIM and
# DDPM walk the VP chain onto alpha-bar = 1, i.e. t = 0, and are compared with the flow continued
# to t = 0.

# %%
K = 8
angle = torch.arange(K, dtype=torch.float64) * 2 * math.pi / K
mixture = GaussianMixture(torch.ones(K), 1.5 * torch.stack([angle.cos(), angle.sin()], 1), 0.1)
SDES = {"VP": scoresde.VPSDE(), "sub-VP": scoresde.SubVPSDE(), "VE": scoresde.VESDE()}
FILE = {"VP": "vp", "sub-VP": "subvp", "VE": "ve"}


def applies(method, name):
    """DDPM / DDIM walk the VP chain; ancestral sampling is defined for VP and VE only."""
    if method in ("ddpm", "ddim"):
        return name == "VP"
    if method == "ancestral":
        return name != "sub-VP"
    return True


def steps_for(method, budget):
    """The largest step count whose NFE fits in the budget (the registry's NFE declaration)."""
    solver = SOLVERS[method]()
    fits = [k for k in range(1, budget + 1) if solver.nfe(k) <= budget]
    return max(fits) if fits else None


def run(method, sde, x_T, steps=None, **opts):
    x, info = scoresde.sample(mixture.score_fn(sde), sde, tuple(x_T.shape), method=method, steps=steps,
                              x_T=x_T, denoise=False, return_info=True,
                              generator=torch.Generator().manual_seed(0), **opts)
    return x, info.nfe


def rms(a, b):
    return float(((a - b) ** 2).mean().sqrt())


H = 0.1  # kernel width


def mmd(x):
    """Unbiased estimate of MMD^2 between the samples x (n, 2) and the mixture, in units of 1e-3,
    with k(x, y) = exp(-|x - y|^2 / (2 H^2)); negative when x is indistinguishable from exact. For a component N(m, s^2 I) in 2-D,
    E_y k(x, y) = H^2 / (H^2 + s^2) exp(-|x - m|^2 / (2 (H^2 + s^2))), and likewise for E_yy'."""
    w, m, s2 = mixture.weights, mixture.means, mixture.stds[:, 0] ** 2
    v = H**2 + s2[:, None] + s2[None, :]
    e_pp = (w[:, None] * w[None, :] * H**2 / v * torch.exp(-torch.cdist(m, m) ** 2 / (2 * v))).sum()
    e_xp = (w * H**2 / (H**2 + s2) * torch.exp(-torch.cdist(x, m) ** 2 / (2 * (H**2 + s2)))).sum(1).mean()
    kxx = torch.exp(-torch.cdist(x, x) ** 2 / (2 * H**2))
    n = x.shape[0]
    e_xx = (kxx.sum() - n) / (n * (n - 1))
    return 1e3 * float(e_pp - 2 * e_xp + e_xx)


exact_mmd = [mmd(mixture.sample(N, generator=torch.Generator().manual_seed(10 + i))) for i in range(5)]
FLOOR = max(abs(v) for v in exact_mmd)
data_a = mixture.sample(N, generator=torch.Generator().manual_seed(10))
refs, starts = {}, {}
for name, sde in SDES.items():
    g = torch.Generator().manual_seed(1)
    x_T = sde.prior_sampling((N, 2), generator=g).to(torch.float64)
    starts[name] = x_T
    refs[name] = {"eps": mixture.flow(sde, x_T, sde.T, sde.default_eps)}
    if name == "VP":
        refs[name]["t=0"] = mixture.flow(sde, x_T, sde.T, 0.0)
print(f"reference flows solved; MMD^2 (1e-3) of five exact draws of {N} points: "
      + ", ".join(f"{v:+.3f}" for v in exact_mmd) + f" (the floor: {FLOOR:.3f})")

# %% [markdown]
# ## Samples of every sampler at 20 NFE
#
# One panel per registered method, each with its default options (its default grid), all from
# the same prior draw, at the largest step count whose NFE fits in 20 (`pc` then gets 10 predictor + 10 corrector evaluations, `heun` 10 steps, the
# adaptive `ode` and `dpm_adaptive` a loose tolerance, with their actual NFE in the title). The
# title gives the MMD² to the mixture (floor above).

# %%
for name, sde in SDES.items():
    fig, axes = plt.subplots(3, 6, figsize=(15, 8.4), sharex=True, sharey=True)
    axes = axes.ravel()
    axes[0].scatter(data_a[:, 0], data_a[:, 1], s=1, c="k")
    axes[0].set_title(f"exact draw\nMMD² {exact_mmd[0]:+.2f}", fontsize=9)
    x_sw = starts[name]
    for ax, method in zip(axes[1:], METHODS):
        if not applies(method, name):
            ax.text(0.5, 0.5, f"{method}\nnot defined for {name}", ha="center", va="center",
                    transform=ax.transAxes, fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        if SOLVERS[method].steps_kind == "adaptive":
            opts = {"rtol": 1e-2, "atol": 1e-2} if method == "ode" else {"rtol": 0.1, "atol": 0.05}
            x, nfe = run(method, sde, x_sw, **opts)
        else:
            x, nfe = run(method, sde, x_sw, steps=steps_for(method, PLOT_BUDGET))
        ax.scatter(x[:, 0], x[:, 1], s=1, c="C0" if SOLVERS[method].stochastic else "C1")
        ax.set_title(f"{method}\nNFE {nfe}, MMD² {mmd(x):+.2f}", fontsize=9)
    for ax in axes[1 + len(METHODS):]:
        ax.axis("off")
    axes[0].set_xlim(-2.6, 2.6)
    axes[0].set_ylim(-2.6, 2.6)
    fig.suptitle(f"{name} SDE: {N} samples per sampler at NFE <= {PLOT_BUDGET} "
                 "(blue: stochastic, orange: deterministic)")
    fig.tight_layout()
    fig.savefig(args.out / f"choosing_samples_{FILE[name]}.png", dpi=80)
    plt.close(fig)

# %% [markdown]
# At 20 NFE the stochastic first-order samplers (Euler-Maruyama, reverse diffusion, ancestral,
# PC, torchsde, DDPM) leave the modes visibly blurred, while the exponential-integrator and
# multistep ODE solvers are already close to exact. The sweep below puts numbers on that,
# budget by budget.
#
# ## The sweep
#
# Deterministic methods: every fixed-step ODE solver on every grid (`spacing` = uniform,
# quadratic, log-SNR, Karras; DDIM with its `skip` = uniform or quadratic), and the adaptive
# solvers at several tolerances (placed in the smallest budget their actual NFE fits). Stochastic
# methods: on their default grid and on the log-SNR grid.

# %%
DET = [m for m in METHODS if not SOLVERS[m].stochastic]
STO = [m for m in METHODS if SOLVERS[m].stochastic]
rows = []  # dicts: sde, method, grid, budget, nfe, err (pathwise RMS, deterministic only), mmd
for name, sde in SDES.items():
    x_T = starts[name]
    for method in METHODS:
        if not applies(method, name):
            continue
        cls = SOLVERS[method]
        if cls.steps_kind == "adaptive":
            for tol in TOLS:
                opts = {"rtol": tol, "atol": tol} if method == "ode" else {"rtol": 50 * tol, "atol": 10 * tol}
                x, nfe = run(method, sde, x_T, **opts)
                budget = min([b for b in BUDGETS if b >= nfe], default=None)
                rows.append(dict(sde=name, method=method, grid=f"rtol {opts['rtol']:g}", budget=budget, nfe=nfe,
                                 err=rms(x, refs[name]["eps"]), mmd=mmd(x)))
            continue
        if method == "ddim":
            grids = [("skip", "uniform"), ("skip", "quadratic")]
        elif "spacing" in cls.options:
            grids = [("spacing", g) for g in (GRIDS if not cls.stochastic else sorted({cls.options["spacing"], "logsnr"}))]
        else:
            grids = [(None, "uniform")]
        for key, grid in grids:
            opts = {key: grid} if key else {}
            for budget in BUDGETS:
                steps = steps_for(method, budget)
                if steps is None or (method == "ddim" and grid == "quadratic" and steps < 2):
                    continue
                row = dict(sde=name, method=method, grid=grid, budget=budget)
                x, nfe = run(method, sde, x_T, steps=steps, **opts)
                if not cls.stochastic:
                    row["err"] = rms(x, refs[name]["t=0" if method == "ddim" else "eps"])
                row.update(nfe=nfe, mmd=mmd(x))
                rows.append(row)
print(f"{len(rows)} runs in {time.perf_counter() - T0:.0f} s")

# %% [markdown]
# ### Pathwise error of the deterministic samplers
#
# The RMS error against the reference flow, for each method on its best grid at each budget
# (the grid in parentheses); "-" where the method did not run at that budget.

# %% output="markdown"
def best(rows, key):
    return min(rows, key=lambda r: r[key]) if rows else None


for name in SDES:
    print(f"**{name}** (RMS error; best grid in parentheses)\n")
    print("| method | " + " | ".join(f"NFE <= {b}" for b in BUDGETS) + " |")
    print("|---|" + "---|" * len(BUDGETS))
    for method in DET:
        cells = []
        for b in BUDGETS:
            r = best([r for r in rows if r["sde"] == name and r["method"] == method and r["budget"] == b], "err")
            cells.append("-" if r is None else f"{r['err']:.2e} ({r['grid']}" + (f", NFE {r['nfe']})" if
                                                                             r["nfe"] != b else ")"))
        if any(c != "-" for c in cells):
            print(f"| `{method}` | " + " | ".join(cells) + " |")
    print()

# %% [markdown]
# ### Which grid?
#
# For the multistep solvers, the error at 20 NFE on each grid (a lower number is better): the
# grid matters as much as the solver.

# %% output="markdown"
GRID_METHODS = [m for m in ("dpmpp_2m", "dpmpp_3m", "unipc", "deis", "heun", "dpm_solver") if m in SOLVERS]
grid_budget = 20 if 20 in BUDGETS else BUDGETS[-1]
print(f"| SDE | method | " + " | ".join(GRIDS) + " | best |")
print("|---|---|" + "---|" * (len(GRIDS) + 1))
grid_wins = {g: 0 for g in GRIDS}
for name in SDES:
    for method in GRID_METHODS:
        errs = {r["grid"]: r["err"] for r in rows if r["sde"] == name and r["method"] == method
                and r["budget"] == grid_budget and r["grid"] in GRIDS}
        if not errs:
            continue
        g_best = min(errs, key=errs.get)
        grid_wins[g_best] += 1
        print(f"| {name} | `{method}` | " + " | ".join(f"{errs[g]:.2e}" if g in errs else "-" for g in GRIDS)
              + f" | {g_best} |")
print(f"\nBest grid at NFE <= {grid_budget}, counted over SDEs and methods: "
      + ", ".join(f"{g} {n}" for g, n in grid_wins.items()) + ".")

# %% [markdown]
# ### The adaptive solvers
#
# `ode` (torchdiffeq dopri5, rtol = atol = tol) and `dpm_adaptive` (DPM-Solver-12/23 with step
# control, rtol = 50 tol, atol = 10 tol) choose their own steps; their NFE is what they used.

# %% output="markdown"
print("| SDE | method | tolerance | NFE | RMS error | MMD² (1e-3) |\n|---|---|---|---|---|---|")
for r in rows:
    if SOLVERS[r["method"]].steps_kind == "adaptive":
        print(f"| {r['sde']} | `{r['method']}` | {r['grid']} | {r['nfe']} | {r['err']:.2e} | {r['mmd']:+.3f} |")

# %% [markdown]
# ### Error against NFE
#
# Each method on its best grid per budget: the pathwise error of the deterministic samplers
# (left column) and the MMD² of every sampler's samples (right column; dashed: stochastic; the
# dotted line is the floor of exact draws, values below it are drawn on it), one row per SDE.

# %%
fig, axes = plt.subplots(len(SDES), 2, figsize=(12, 3.6 * len(SDES)))
for i, name in enumerate(SDES):
    for j, method in enumerate(METHODS):
        mine = [r for r in rows if r["sde"] == name and r["method"] == method and r["budget"] is not None]
        if not mine:
            continue
        color, style = plt.cm.tab20(j % 20), "--" if SOLVERS[method].stochastic else "-"
        if SOLVERS[method].steps_kind == "adaptive":
            mine = sorted(mine, key=lambda r: r["nfe"])
            pts = mine
        else:
            pts = [best([r for r in mine if r["budget"] == b], "err" if "err" in mine[0] else "mmd") for b in BUDGETS]
            pts = [r for r in pts if r is not None]
        axes[i, 1].loglog([r["nfe"] for r in pts], [max(r["mmd"], FLOOR) for r in pts], style, color=color,
                          marker=".", label=method)
        if not SOLVERS[method].stochastic:
            axes[i, 0].loglog([r["nfe"] for r in pts], [r["err"] for r in pts], style, color=color, marker=".",
                              label=method)
    axes[i, 1].axhline(FLOOR, color="k", ls=":", lw=1)
    axes[i, 0].set_title(f"{name}: deterministic samplers, pathwise error")
    axes[i, 1].set_title(f"{name}: MMD² of the samples to the mixture")
    axes[i, 0].set_ylabel("RMS error vs reference flow")
    axes[i, 1].set_ylabel("MMD² (1e-3)")
    for ax in axes[i]:
        ax.set_xlabel("NFE")
axes[0, 0].legend(fontsize=7, ncol=2)
axes[0, 1].legend(fontsize=6, ncol=3)
fig.tight_layout()
fig.savefig(args.out / "choosing_error_vs_nfe.png", dpi=80)
plt.close(fig)

# %% [markdown]
# ## The decision table
#
# For each NFE budget: the deterministic configuration (method and grid) with the smallest
# geometric-mean pathwise error over the three SDEs, among those that run on all three; the
# stochastic configuration with the smallest mean MMD²; and which kind gives the better samples
# at that budget ("either" when both are at the floor of exact draws).
# The errors behind each pick are in its columns. The same table is quoted on the
# [How to choose a solver](../choosing-a-solver.md) page.

# %% output="markdown"
def gmean(values):
    return math.exp(sum(math.log(max(v, 1e-300)) for v in values) / len(values))


def pick(kind_rows, score):
    """The (method, grid) present on every SDE with the smallest score(rows of the three SDEs)."""
    configs = {}
    for r in kind_rows:
        configs.setdefault((r["method"], r["grid"]), {})[r["sde"]] = r
    full = {c: v for c, v in configs.items() if len(v) == len(SDES)}
    if not full:
        return None, None
    c = min(full, key=lambda c: score(list(full[c].values())))
    return c, full[c]


def mean_mmd(rs):
    return sum(r["mmd"] for r in rs) / len(rs)


lines = ["| NFE <= | deterministic: method (grid) | RMS error VP / sub-VP / VE | MMD² (1e-3) | "
         "stochastic: method (grid) | MMD² (1e-3) VP / sub-VP / VE | better samples |",
         "|---|---|---|---|---|---|---|"]
for b in BUDGETS:
    in_b = [r for r in rows if r["budget"] == b]
    det_c, det_r = pick([r for r in in_b if not SOLVERS[r["method"]].stochastic],
                        lambda rs: gmean([r["err"] for r in rs]))
    sto_c, sto_r = pick([r for r in in_b if SOLVERS[r["method"]].stochastic], mean_mmd)
    det_w = mean_mmd(list(det_r.values())) if det_r else float("inf")
    sto_w = mean_mmd(list(sto_r.values())) if sto_r else float("inf")
    kind = ("either" if max(det_w, sto_w) <= FLOOR else "deterministic" if det_w < sto_w else "stochastic")
    lines.append(
        f"| {b} | " + ("-" if det_c is None else f"`{det_c[0]}` ({det_c[1]})") + " | "
        + ("-" if det_r is None else " / ".join(f"{det_r[s]['err']:.1e}" for s in SDES)) + " | "
        + ("-" if det_r is None else " / ".join(f"{det_r[s]['mmd']:+.3f}" for s in SDES)) + " | "
        + ("-" if sto_c is None else f"`{sto_c[0]}` ({sto_c[1]})") + " | "
        + ("-" if sto_r is None else " / ".join(f"{sto_r[s]['mmd']:+.3f}" for s in SDES)) + f" | {kind} |")
adaptive = [r for r in rows if r["method"] == "ode" and r["grid"] == f"rtol {TOLS[-1]:g}"]
table = "\n".join(lines) + (
    f"\n\nRMS error: against the reference probability flow from the same x_T ({N} samples). MMD²: to the "
    f"mixture in units of 1e-3, kernel width {H}; five exact draws of {N} points reach at most {FLOOR:.3f} in "
    "absolute value (the floor). "
    f"The adaptive `ode` (dopri5) at tolerance {TOLS[-1]:g}: "
    + ", ".join(f"{r['sde']} NFE {r['nfe']}, error {r['err']:.1e}" for r in adaptive) + ".")
print(table)
(args.out / "decision_table.md").write_text(table + "\n")
DECISIONS = {b: k for b, k in zip(BUDGETS, [ln.rsplit("|", 2)[-2].strip() for ln in lines[2:]])}

# %% [markdown]
# ## Reading it
#
# What this run found (the numbers above; a quick-size run has fewer budgets and noisier numbers):

# %% output="markdown"
by_kind = {k: [b for b, v in DECISIONS.items() if v == k] for k in ("deterministic", "stochastic", "either")}
print(f"* **Deterministic or stochastic.** Better samples from the deterministic pick at NFE <= "
      f"{', '.join(map(str, by_kind['deterministic'])) or 'none'}; from the stochastic pick at "
      f"{', '.join(map(str, by_kind['stochastic'])) or 'none'}; both at the floor of exact draws at "
      f"{', '.join(map(str, by_kind['either'])) or 'none'}. With an exact score the ODE solvers' higher order "
      "wins at small budgets; the stochastic samplers' strength, correcting the errors of a *learned* score "
      "with the noise they inject (Karras et al. 2022, Sec. 4), cannot show here.")
top = sorted(grid_wins.items(), key=lambda kv: -kv[1])
print(f"* **Which grid.** At NFE <= {grid_budget} the best grid per (SDE, method) was "
      + ", ".join(f"{g} {n} times" for g, n in top) + f" (of {sum(grid_wins.values())}). "
      "On VE, `uniform` and `logsnr` are the same grid (log sigma is linear in t), hence equal errors.")
det_picks = sorted({ln.split("|")[2].strip() for ln in lines[2:]})
print(f"* **Which solver.** The deterministic picks over the budgets: {', '.join(det_picks)}; "
      "the multistep exponential integrators (DPM-Solver++, UniPC, DEIS) are within a small factor of each other, "
      "DDIM (first order) and Heun (two evaluations per step) trail them at equal NFE.")
print(f"* **Which SDE.** A configuration that wins on one SDE is close to the best on the others: the "
      "exponential-integrator solvers work in the SDE's own (alpha, sigma), so VP, sub-VP and VE look alike to them.")
print(f"\n(size: {'quick' if args.quick else 'full'}; {time.perf_counter() - T0:.0f} s)")
