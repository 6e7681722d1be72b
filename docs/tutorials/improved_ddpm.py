# %% [markdown]
# # Improved DDPM
#
# Nichol & Dhariwal (2021) changed three things in DDPM: a **cosine** noise schedule, a
# **learned reverse variance** trained by a **hybrid objective** L_simple + lambda L_vlb, and
# **importance sampling of the step k** for the bound. This tutorial shows each piece with
# `scoresde`: the schedules through `scoresde.VPSDE(schedule=...)`, the objective through
# `scoresde.hybrid_loss` and a `ScoreModel(..., learn_variance=True)`, the sampler through
# `scoresde.LossSecondMomentSampler`, and the two likelihoods, the variational bound
# (`scoresde.ddpm_vlb`) and the probability-flow ODE (`scoresde.bits_per_dim`), on
# scikit-learn's 8x8 digits (17 grey levels) with the small UNet of the training guide.
#
# **What this run can and cannot show.** The networks train for a few hundred updates on one CPU
# core; the paper's train for hundreds of thousands on GPUs. The schedules and the sampler's
# variance reduction below are exact computations and do not depend on training. The bits/dim
# numbers are those of briefly trained models: they show how the bound and the ODE likelihood
# are computed and how far apart they are for the same network, not the paper's ranking of the
# objectives, which needs long training (a difference of a few hundredths of a bit between two
# objectives after 400 updates is noise of the run).
#
# Run: `python docs/tutorials/improved_ddpm.py` (full size, about 2 minutes on one core) or with
# `--quick` (about half a minute; the test suite runs it). Figures go to `--out` (default: next
# to this script).

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
from scoresde.data import digits  # noqa: E402
from scoresde.models import UNet  # noqa: E402
from scoresde.train import TrainConfig  # noqa: E402

FIGURES = ["improved_ddpm_schedules.png", "improved_ddpm_bound.png"]
parser = argparse.ArgumentParser(description="Improved DDPM (scoresde tutorial)")
parser.add_argument("--quick", action="store_true", help="toy size, for the tests")
parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path(__file__).resolve().parent)
args, _ = parser.parse_known_args()
args.out.mkdir(parents=True, exist_ok=True)
torch.set_num_threads(1)
torch.manual_seed(0)
T0 = time.perf_counter()

STEPS = 40 if args.quick else 300          # training updates per model
BATCH = 64 if args.quick else 128
N_EVAL = 16 if args.quick else 64          # held-out digits for the likelihoods
VLB_STEPS = 100 if args.quick else None    # None: the full chain (994 steps for the cosine VP)
print(f"size: {'quick' if args.quick else 'full'}; {STEPS} updates of batch {BATCH} per model; "
      f"likelihoods of {N_EVAL} test digits")

# %% [markdown]
# ## 1. Linear against cosine schedule
#
# DDPM's linear schedule (beta from 1e-4 to 0.02 over N = 1000 steps; `VPSDE()`, beta(t) from 0.1
# to 20) destroys the signal early: its log-SNR, log(alpha-bar / (1 - alpha-bar)), falls below
# -5 well before the end, so the last part of the chain adds noise to what is already noise. The
# cosine schedule alpha-bar(t) = cos^2(((t + s) / (1 + s)) pi / 2) / cos^2(s pi / 2) (`VPSDE(
# schedule="cosine")`, s = 0.008) spreads the log-SNR almost linearly over t. Its chain stops at
# t_max = 0.9946 (994 of 1000 steps, where beta is clipped at 0.999). Below: the continuous
# `log_snr(t)` of each SDE and the discrete tables `alphas_cumprod` that DDPM's chain uses
# (step i at t = (i + 1) / N), which lie on them.

# %%
SDES = {"linear": scoresde.VPSDE(), "cosine": scoresde.VPSDE(schedule="cosine")}
t = torch.linspace(1e-3, 1.0, 500, dtype=torch.float64)
curves, tables = {}, {}
for name, sde in SDES.items():
    tt = t[t <= sde.T]
    curves[name] = (tt, sde.log_snr(tt))
    ab = sde.alphas_cumprod.double()[: sde.chain_length]
    tables[name] = (torch.arange(1, len(ab) + 1, dtype=torch.float64) / sde.N, torch.log(ab / (1 - ab)))
print(f"{'schedule':8s} {'steps':>5s} {'log-SNR t=0.25':>15s} {'t=0.5':>7s} {'t=0.75':>7s} {'at T':>7s} "
      f"{'steps below -5':>15s}")
for name, sde in SDES.items():
    tab_t, tab = tables[name]
    at = [float(sde.log_snr(torch.tensor([v], dtype=torch.float64))) for v in (0.25, 0.5, 0.75)]
    print(f"{name:8s} {sde.chain_length:5d} {at[0]:15.2f} {at[1]:7.2f} {at[2]:7.2f} {float(tab[-1]):7.2f} "
          f"{int((tab < -5).sum()):9d} ({float((tab < -5).double().mean()):.0%})")

fig, axes = plt.subplots(1, 2, figsize=(11, 4))
for (name, (tt, ls)), color in zip(curves.items(), ("C0", "C1")):
    axes[0].plot(tt, ls, color=color, label=f"{name}: VPSDE.log_snr(t)")
    tab_t, tab = tables[name]
    axes[0].plot(tab_t[::40], tab[::40], "o", color=color, ms=3, label=f"{name}: alphas_cumprod table")
    axes[1].plot(tab_t, SDES[name].alphas_cumprod.double()[: len(tab_t)], color=color, label=name)
axes[0].axhline(-5, color="k", lw=0.6, ls=":")
axes[0].set_xlabel("t")
axes[0].set_ylabel("log-SNR = log(alpha-bar / (1 - alpha-bar))")
axes[0].set_title("log-SNR against t")
axes[0].legend(fontsize=8)
axes[1].set_xlabel("t")
axes[1].set_ylabel("alpha-bar")
axes[1].set_title("signal kept, alpha-bar(t)")
axes[1].legend(fontsize=8)
fig.tight_layout()
fig.savefig(args.out / "improved_ddpm_schedules.png", dpi=80)
plt.close(fig)

# %% [markdown]
# The linear schedule spends a large share of its steps below log-SNR -5 (alpha-bar < 0.007),
# the cosine schedule few; at its last step the cosine chain still has log-SNR about -9, i.e.
# alpha-bar = 8.7e-5, and the bound's prior term stays small.
#
# ## 2. Learned variance and the hybrid objective
#
# DDPM fixes the reverse variance to beta_k or to the posterior's beta-tilde_k. Improved DDPM
# lets the network output v in [-1, 1] per dimension and uses
# log sigma^2 = f log beta_k + (1 - f) log beta-tilde_k with f = (v + 1) / 2 (Eq. 15). L_simple
# carries no signal about sigma, so the variance is trained by the bound: `hybrid_loss` is
# L_simple + lambda N L_k with lambda = 0.001, where L_k is the bound's term at the sampled step
# and the mean inside it uses eps-hat with its gradient stopped, so that the bound trains only
# v. The network then has 2C output channels (`UNet(..., learn_variance=True)`) and the
# `ScoreModel` is told so (`learn_variance=True`); the discrete objectives also need
# `discrete=True` (the network sees the step index). Three runs on the cosine VP, same
# network size and seed:
#
# * `ddpm`: L_simple, fixed variance (the bound is then evaluated with beta-tilde);
# * `hybrid`: L_hybrid with learned variance, k uniform;
# * `hybrid + IS`: the same with k importance-sampled (section 3), `{"loss": "hybrid",
#   "importance_sampling": True}`.

# %%
sde = SDES["cosine"]
train_ds, test_ds = digits("train"), digits("test")


def make_model(learn_variance):
    net = UNet(in_channels=1, image_size=8, ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(),
               learn_variance=learn_variance)
    return scoresde.ScoreModel(net, sde, discrete=True, learn_variance=learn_variance)


RUNS = {"ddpm": (False, "ddpm"), "hybrid": (True, "hybrid"),
        "hybrid + IS": (True, {"loss": "hybrid", "importance_sampling": True})}
models, train_s = {}, {}
print(f"{'run':12s} {'params':>7s} {'final loss':>10s} {'eval loss':>9s} {'time':>6s}")
for name, (learn_var, objective) in RUNS.items():
    t1 = time.perf_counter()
    model = make_model(learn_var)
    res = scoresde.train(model, sde, objective, train_ds,
                         TrainConfig.small(STEPS, batch_size=BATCH, quiet=True, eval_every=STEPS),
                         eval_dataset=test_ds)
    models[name] = res.ema_model.eval()
    train_s[name] = time.perf_counter() - t1
    n_par = sum(p.numel() for p in model.parameters())
    print(f"{name:12s} {n_par:7d} {res.loss:10.4f} {res.eval_loss:9.4f} {train_s[name]:5.1f}s")

# %% [markdown]
# The hybrid losses are larger than L_simple by the weighted bound term, so the three columns
# are not comparable with each other; the learned-variance network has a few more parameters
# (the second half of its output convolution).
#
# ## 3. The variational bound against the PF-ODE bits/dim
#
# `ddpm_vlb` evaluates the whole bound on integer levels: L_prior + the KL terms
# L_{N-1} .. L_1 + the decoder's -log p(x_0 | x_1) on the 17 levels, per image, in bits per
# dimension (the column "first 10% of k" is the share of the bound in the steps nearest the data),
# with the fixed beta-tilde variance for the `ddpm` model and the learned one
# ("learned_range") for the hybrid models. `bits_per_dim` integrates the probability-flow ODE of
# the same networks (their eps turned into a score) on uniformly dequantized levels: a different
# upper bound on the same discrete NLL, which needs no variance at all. The same held-out digits
# are scored by both.

# %%
levels = test_ds.levels[:N_EVAL]
L = test_ds.num_levels
results = {}
print(f"bound over {'the full chain' if VLB_STEPS is None else f'a chain respaced to {VLB_STEPS} steps'}; "
      f"PF-ODE: dopri5, rtol = atol = 1e-4, one Rademacher probe")
print(f"{'run':12s} {'variance':>13s} {'bound (bpd)':>11s} {'prior':>8s} {'first 10% of k':>14s} {'PF-ODE (bpd)':>12s} "
      f"{'NFE':>5s}")
for name, model in models.items():
    with torch.no_grad():
        vlb = scoresde.ddpm_vlb(model, sde, levels, num_levels=L, timesteps=VLB_STEPS,
                                generator=torch.Generator().manual_seed(11))
    ode = scoresde.bits_per_dim(model, sde, levels, data_range=test_ds.data_range, num_levels=L,
                                rtol=1e-4, atol=1e-4, generator=torch.Generator().manual_seed(12))
    results[name] = (vlb, ode)
    print(f"{name:12s} {vlb.variance:>13s} {float(vlb.bpd.mean()):11.3f} {float(vlb.prior_bpd.mean()):8.1e} "
          f"{float(vlb.terms[:, : max(1, vlb.terms.shape[1] // 10)].sum(1).mean() / vlb.bpd.mean()):14.0%} "
          f"{float(ode.bpd.mean()):12.3f} {ode.nfe:5d}")
print(f"(uniform over the 17 levels: log2(17) = {math.log2(L):.3f} bits/dim)")

# %% [markdown]
# Read the table with the caveat above. What holds for any training length: the bound and the
# ODE are two different upper bounds, so they differ for the same network, and the bound of a
# fixed-variance model depends on which fixed variance it is evaluated with, while the learned
# variance is the one its training chose. What needs long training: the paper's result that the
# learned variance and the cosine schedule improve the bound, and bounds below the ODE's; a
# network this briefly trained can have a bound above log2(17), the cost of a model uniform over
# the levels, while the ODE bits/dim of the same network is lower. The per-step terms (right
# panel of the figure below) show where the bits are spent: the terms nearest the data (small k)
# are orders of magnitude larger than the rest, which is why a uniform draw of k is a noisy
# estimate of the bound.
#
# ## 4. Importance-sampled t
#
# The bound is N E_k[L_k] with k uniform; its terms differ by orders of magnitude, so a
# single-sample estimate N L_k is very noisy, and training on L_vlb alone with uniform k is
# unstable (Nichol & Dhariwal, Fig. 2). `LossSecondMomentSampler` keeps the last 10 losses of
# every step, draws k with p_k proportional to sqrt(E[L_k^2]) (mixed with 0.1% of uniform) and
# returns the weight 1 / (N p_k), which keeps the estimate unbiased. Here it is fed with the
# per-step terms of the `hybrid` model's bound on held-out digits (`ddpm_vlb`'s `terms`), and the
# spread of the one-draw estimate of the bound is computed exactly under both laws on other
# digits: the variance reduction is the sampler's, measured on this model's terms.

# %%
terms = results["hybrid"][0].terms.double()            # (B, K) bits/dim, terms[:, 0] = decoder
K = terms.shape[1]
fit, test = terms[: N_EVAL // 2], terms[N_EVAL // 2:]
sampler = scoresde.LossSecondMomentSampler(K, history=min(10, len(fit)))
for row in fit:                                        # one loss for every step per image
    sampler.update(torch.arange(K), row)
p = sampler.weights()
print(f"sampler warmed up: {sampler.warmed_up()}; largest p_k = {float(p.max()):.3f} at k = {int(p.argmax())}, "
      f"smallest {float(p.min()):.1e}")


def spread(p_law):
    """Std (bits/dim) of the one-draw estimate L_k / p_k of the bound's sum of KL/decoder terms, k ~ p_law,
    averaged over the held-out images (exact: a sum over k)."""
    est = test / p_law                                  # (B, K)
    mean = (p_law * est).sum(1, keepdim=True)           # = the sum of the terms, unbiased
    return float(((p_law * (est - mean) ** 2).sum(1)).sqrt().mean()), float(mean.mean())


sd_u, total = spread(torch.full((K,), 1.0 / K, dtype=torch.float64))
sd_is, total_is = spread(p)
print(f"sum of the terms: {total:.3f} bits/dim (same under both laws: {total_is:.3f})")
print(f"std of the one-draw estimate: uniform k {sd_u:.2f}, importance-sampled k {sd_is:.2f} bits/dim "
      f"({sd_u / sd_is:.0f}x smaller, {(sd_u / sd_is) ** 2:.0f}x fewer draws for the same error)")

fig, axes = plt.subplots(1, 2, figsize=(11, 4))
names = list(results)
x = range(len(names))
axes[0].bar([i - 0.2 for i in x], [float(results[n][0].bpd.mean()) for n in names], 0.4, label="DDPM bound")
axes[0].bar([i + 0.2 for i in x], [float(results[n][1].bpd.mean()) for n in names], 0.4, label="PF-ODE (dequantized)")
axes[0].axhline(math.log2(L), color="k", ls=":", lw=0.8, label="uniform over 17 levels")
axes[0].set_xticks(list(x), names)
axes[0].set_ylabel("bits/dim")
axes[0].set_title(f"test digits, after {STEPS} updates")
axes[0].set_ylim(0, 1.3 * max(float(r.bpd.mean()) for pair in results.values() for r in pair))
axes[0].legend(fontsize=8, ncol=3, loc="upper center")
steps_k = results["hybrid"][0].timesteps
axes[1].loglog(steps_k[1:], test.mean(0)[1:], label="hybrid: mean KL term L_k (bits/dim)")
axes[1].loglog(steps_k[1:], p[1:], label="sampler's p_k")
axes[1].loglog(steps_k[1:], torch.full((K - 1,), 1.0 / K), "k:", lw=0.8, label="uniform 1/K")
axes[1].set_xlabel("chain step k (k = 0, the decoder, not shown)")
axes[1].set_title("where the bound's bits are, and where the sampler looks")
axes[1].legend(fontsize=8)
fig.tight_layout()
fig.savefig(args.out / "improved_ddpm_bound.png", dpi=80)
plt.close(fig)
print(f"(size: {'quick' if args.quick else 'full'}; {time.perf_counter() - T0:.0f} s)")

# %% [markdown]
# With the importance-sampled law the one-draw estimate of the bound is far less noisy, at the
# same expectation: that is what lets Improved DDPM train on L_vlb directly. In training
# (`"importance_sampling": True`) the sampler is uniform until every step holds 10 losses (10 N =
# 9 940 draws, i.e. about 80 updates of batch 128 at the earliest, more in practice since some
# steps are drawn late), so in a run of a few hundred updates it acts only in the later part, and
# its effect on the bits/dim above cannot be told from the noise of such a short run.
