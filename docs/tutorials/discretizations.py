"""DDPM, DDIM and the SDE samplers as discretizations of one VP SDE, on the exact Gaussian oracle.

Run:  python docs/tutorials/discretizations.py   (about a minute on one CPU core)
Writes docs/tutorials/discretizations.png with two panels:

1. Deterministic samplers against the probability-flow ODE (Song et al. 2021, Eq. (13)): the
   largest error over 256 samples from the same x_T, against steps, for DDIM with eta = 0 on the
   DDPM table (Song, Meng & Ermon 2021) and for Euler / RK4 on the continuous PF-ODE (torchdiffeq).
   The reference is the closed-form flow of Gaussian data. DDIM and Euler fall with slope -1
   (first order), RK4 with slope -4.
2. Stochastic samplers: the sample variance of 10 000 samples against steps, for DDPM
   (fixed_small / fixed_large variances), Euler-Maruyama, reverse diffusion and ancestral
   sampling, against the data variance. fixed_small under-disperses and fixed_large
   over-disperses on coarse chains; every method converges to the target as the steps grow.

Data: N(0.5, 0.5^2) in one dimension; SDE: VPSDE(0.1, 20, N=1000).
"""
from __future__ import annotations

import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from scoresde import ScoreModel, VPSDE, sample  # noqa: E402
from scoresde.oracle import GaussianData  # noqa: E402

MU, STD = 0.5, 0.5
SDE = VPSDE()
DATA = GaussianData(MU, STD, (1,))
OUT = pathlib.Path(__file__).with_suffix(".png")


class TableEps(torch.nn.Module):
    """The exact eps of Gaussian data at alpha-bar_i of the DDPM table (input: the step index i)."""

    def forward(self, x, i):
        ab = SDE.alphas_cumprod.to(x.device)[i.round().long()].to(x.dtype).reshape(-1, *[1] * (x.dim() - 1))
        a, s = ab.sqrt(), (1 - ab).sqrt()
        return s * (x - a * MU) / (a * a * STD**2 + s * s)


def deterministic_panel(ax):
    torch.manual_seed(0)
    x_T = torch.randn(256, 1, dtype=torch.float64)
    score = DATA.score_fn(SDE)
    # DDIM: positions i_k = (k + 1) 800 / K - 1 start at alpha-bar_799 for every K and end on alpha-bar = 1;
    # the exact ODE map between those two noise levels is the Gaussian standardization
    ab = SDE.alphas_cumprod[799]
    exact_ddim = MU + STD * (x_T - ab.sqrt() * MU) / torch.sqrt(ab * STD**2 + 1 - ab)
    net = ScoreModel(TableEps(), SDE, prediction="eps", discrete=True)
    ks = [10, 20, 40, 80, 160, 400, 800]
    err = [float((sample(net, SDE, x_T.shape, method="ddim", steps=[(k + 1) * (800 // K) - 1 for k in range(K)],
                         x_T=x_T) - exact_ddim).abs().max()) for K in ks]
    ax.loglog(ks, err, "o-", label="DDIM, eta = 0 (DDPM table)")
    # the continuous PF-ODE from T to eps with fixed-step torchdiffeq solvers
    eps = 1e-3
    exact = DATA.flow(SDE, x_T, SDE.T, eps)
    for method, marker in (("euler", "s-"), ("rk4", "^-")):
        steps = [10, 20, 40, 80, 160, 320] if method == "euler" else [5, 10, 20, 40, 80]
        e = [float((sample(score, SDE, x_T.shape, method="ode", ode_method=method, steps=n, x_T=x_T,
                           denoise=False) - exact).abs().max()) for n in steps]
        ax.loglog(steps, e, marker, label=f"PF-ODE, {method} (torchdiffeq)")
    ax.loglog(ks, [err[0] * ks[0] / k for k in ks], "k:", lw=1, label="slope -1")
    ax.set_xlabel("steps")
    ax.set_ylabel("max |x - exact PF-ODE solution|")
    ax.set_title("deterministic samplers vs the probability flow")
    ax.legend(fontsize=8)


def stochastic_panel(ax):
    score = DATA.score_fn(SDE)
    steps = [10, 20, 50, 100, 200, 500, 1000]
    runs = [("ddpm", {"variance": "fixed_small"}, "DDPM fixed_small"),
            ("ddpm", {"variance": "fixed_large"}, "DDPM fixed_large"),
            ("euler_maruyama", {}, "Euler-Maruyama"),
            ("reverse_diffusion", {}, "reverse diffusion"),
            ("ancestral", {}, "ancestral")]
    for method, opts, label in runs:
        var = []
        for n in steps:
            x = sample(score, SDE, (10_000, 1), method=method, steps=n, generator=torch.Generator().manual_seed(0),
                       dtype=torch.float64, **opts)
            var.append(float(x.var()))
        ax.semilogx(steps, var, "o-", label=label)
    ax.axhline(STD**2, color="k", ls=":", lw=1, label="data variance 0.25")
    ax.set_ylim(0.1, 0.4)
    ax.set_xlabel("steps")
    ax.set_ylabel("sample variance (10 000 samples)")
    ax.set_title("stochastic samplers: variance vs steps")
    ax.legend(fontsize=8)


def main():
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    deterministic_panel(axes[0])
    stochastic_panel(axes[1])
    fig.suptitle("VP SDE (beta 0.1..20, N = 1000), data N(0.5, 0.5^2): samplers as discretizations")
    fig.tight_layout()
    fig.savefig(OUT, dpi=110)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
