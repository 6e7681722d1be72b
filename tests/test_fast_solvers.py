"""The fast solvers (DPM-Solver, DPM-Solver++, UniPC, EDM Heun) and the solver registry.

Numbers and where they come from:
* convergence orders on the Gaussian oracle, whose probability-flow map is closed form
  (:meth:`scoresde.oracle.GaussianData.flow`), for VP, sub-VP and VE on the "logsnr" grid;
* DPM-Solver++(2M) vs DDIM at 10 steps: the reference facts measured 8.534e-3 vs 6.379e-2 on
  data N(0.5, 0.3^2), VP, eps 1e-3 (a numpy check; fast-solvers.md, Sec. 1.3);
* peers on the same nodes: diffusers' DPMSolverMultistepScheduler / UniPCMultistepScheduler on
  the DDPM table (float32, 1e-5), k-diffusion's sample_dpmpp_2m / sample_heun / sample_euler on
  the continuous VP in sigma-tilde (float64, 1e-6);
* stochastic methods against exact mixture samples (sliced Wasserstein).
"""
from __future__ import annotations

import math


import numpy as np
import pytest
import torch

import scoresde
from scoresde import SubVPSDE, VESDE, VPSDE, sample
from scoresde.oracle import GaussianData, GaussianMixture
from scoresde.solvers.registry import SOLVERS, solver_table

from peers import k_diffusion_sampling

DATA = GaussianData(mu=0.5, std=0.3, shape=(1,))
SDES = {"vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE}
FAST = ("dpm_solver", "dpm_adaptive", "dpmpp_2m", "dpmpp_3m", "dpmpp_2m_sde", "unipc", "deis", "heun")


def _flow_error(sde, method, steps, n=400, **kw):
    """RMS error at eps against the exact flow of the Gaussian oracle, float64, same x_T."""
    g = torch.Generator().manual_seed(0)
    xT = sde.prior_sampling((n, 1), g, dtype=torch.float64)
    ref = DATA.flow(sde, xT, sde.T, sde.default_eps)
    x = sample(DATA.score_fn(sde), sde, (n, 1), method=method, steps=steps, x_T=xT, denoise=False, **kw)
    return float((x - ref).pow(2).mean().sqrt())


def _fitted_order(errors, steps):
    """Least-squares slope of -log(error) against log(steps)."""
    return float(-np.polyfit(np.log(steps), np.log(errors), 1)[0])


SECOND = [("dpmpp_2m", {"lower_order_final": False}), ("heun", {"spacing": "logsnr"}), ("unipc", {"order": 2}),
          ("dpm_solver", {"order": 2}), ("deis", {"order": 2, "lower_order_final": False})]


@pytest.mark.parametrize("sde_name", list(SDES))
@pytest.mark.parametrize("method, kw", SECOND, ids=[m for m, _ in SECOND])
def test_second_order_methods_converge_at_order_two(sde_name, method, kw):
    """Fitted order >= 1.75 over steps 20 -> 40 -> 80 on the logsnr grid (measured 1.9-2.9)."""
    sde = SDES[sde_name]()
    steps = (20, 40, 80)
    errs = [_flow_error(sde, method, s, **kw) for s in steps]
    assert _fitted_order(errs, steps) >= 1.75, errs


# dpm_solver order 3 with fast=False takes steps // 3 third-order steps: 21 / 42 / 84 NFE keep every
# step third order (the DPM-Solver-fast split ends on an order-1 or -2 step, which caps the order at 2).
# UniPC-3's 20-step error sits near a sign change (pre-asymptotic) on this oracle: 40 -> 80 -> 160.
THIRD = [("dpmpp_3m", {"lower_order_final": False, "variant": "taylor"}, (20, 40, 80)),
         ("deis", {"order": 3, "lower_order_final": False}, (20, 40, 80)),
         ("unipc", {"order": 3, "lower_order_final": False}, (40, 80, 160)),
         ("dpm_solver", {"order": 3, "fast": False}, (21, 42, 84))]


@pytest.mark.parametrize("sde_name", list(SDES))
@pytest.mark.parametrize("method, kw, steps", THIRD, ids=[m for m, _, _ in THIRD])
def test_third_order_methods_converge_at_order_three(sde_name, method, kw, steps):
    """Fitted order >= 2.5 (measured 2.9-3.9)."""
    sde = SDES[sde_name]()
    errs = [_flow_error(sde, method, s, **kw) for s in steps]
    assert _fitted_order(errs, steps) >= 2.5, errs


def test_peers_3m_coefficient_is_only_second_order():
    """The peers' 3M (variant='peers') converges at order ~2 (its D2 term is half the Taylor term)."""
    sde = VPSDE()
    steps = (40, 80, 160)
    errs = [_flow_error(sde, "dpmpp_3m", s, variant="peers", lower_order_final=False) for s in steps]
    assert 1.8 <= _fitted_order(errs, steps) <= 2.3, errs


def test_dpmpp_2m_beats_ddim_five_fold_at_10_steps():
    """VP, N(0.5, 0.3^2), eps 1e-3, logsnr: 2M 8.5e-3 vs DDIM (DPM-Solver-1) 6.4e-2 in the reference facts."""
    sde = VPSDE()
    e2m = _flow_error(sde, "dpmpp_2m", 10, n=2000)
    eddim = _flow_error(sde, "dpm_solver", 10, n=2000, order=1)
    assert e2m * 5 <= eddim
    assert e2m == pytest.approx(8.534e-3, rel=0.1) and eddim == pytest.approx(6.379e-2, rel=0.1)


@pytest.mark.parametrize("sde_name", list(SDES))
def test_karras_grid_equals_edm_rho_schedule(sde_name):
    """time_grid(spacing='karras') in sigma-tilde equals k-diffusion's get_sigmas_karras (rho 7 and 3)."""
    kd = k_diffusion_sampling()
    sde = SDES[sde_name]()
    for rho in (7.0, 3.0):
        t = scoresde.time_grid(sde, 12, spacing="karras", rho=rho)
        st = torch.exp(-0.5 * sde.log_snr(t))
        ref = kd.get_sigmas_karras(13, float(st[-1]), float(st[0]), rho=rho, device="cpu").double()[:-1]
        assert torch.allclose(st, ref, rtol=1e-5)  # k-diffusion builds the ramp in float32


# ---- peers -----------------------------------------------------------------------------------

def _eps_net(x, k):
    """A fixed non-linear eps-network of the discrete timestep k (int tensor or int)."""
    k = torch.as_tensor(k, dtype=x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
    w = torch.linspace(-1.0, 1.0, x.shape[-1], dtype=x.dtype)
    return 0.6 * torch.tanh(1.3 * x + 0.2 * w) + 0.2 * torch.sin(k / 137.0) * x.roll(1, -1)


def _table_score(sde):
    ab = sde.alphas_cumprod

    def score(x, t):
        k = sde.t_to_index(t)
        return (-_eps_net(x, k) / (1 - ab[k]).sqrt().to(x.dtype).reshape(-1, 1)).to(x.dtype)

    return score


def _diffusers_run(sched, steps, xT):
    sched.set_timesteps(steps)
    x = xT.clone()
    for t in sched.timesteps:
        x = sched.step(_eps_net(x, int(t)), t, x).prev_sample
    return x, sorted(int(t) for t in sched.timesteps)


PARITY = [("dpmpp_2m", 2, {}), ("dpmpp_3m", 3, {"variant": "peers"})]


@pytest.mark.parametrize("steps", [6, 15, 25])
@pytest.mark.parametrize("method, order, kw", PARITY, ids=["2m", "3m"])
def test_dpmpp_equals_diffusers_dpmsolver_multistep(method, order, kw, steps):
    """diffusers DPMSolverMultistepScheduler(algorithm_type='dpmsolver++', solver_order, lower_order_final=False,
    final_sigmas_type='zero', timestep_spacing='linspace') on the linear DDPM table, same timesteps: 1e-5."""
    from diffusers import DPMSolverMultistepScheduler

    sde = VPSDE()
    sched = DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02,
                                        algorithm_type="dpmsolver++", solver_order=order, lower_order_final=False,
                                        final_sigmas_type="zero")
    # float64 on both sides: in float32 either side's rounding (values up to ~280 here) reaches 1e-4, and the
    # order of the update's sums decides the last digits. diffusers keeps its schedule in float32, so its
    # float64 run has float32-rounded coefficients: agreement to ~1e-5 relative; a wrong coefficient shows
    # at 1e-2 ("taylor" against these "peers" coefficients: checked below)
    xT = torch.randn(8, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ref, ts = _diffusers_run(sched, steps, xT)
    x, info = sample(_table_score(sde), sde, xT.shape, method=method, steps=ts, x_T=xT, alphas="table",
                     lower_order_final=False, return_info=True, **kw)
    assert info.nfe == len(ts)
    assert torch.allclose(x, ref, atol=1e-4, rtol=3e-5), float((x - ref).abs().max())
    if method == "dpmpp_3m" and steps > 6:
        other = sample(_table_score(sde), sde, xT.shape, method=method, steps=ts, x_T=xT, alphas="table",
                       lower_order_final=False, variant="taylor")
        assert not torch.allclose(other, ref, atol=1e-2, rtol=1e-3)


@pytest.mark.parametrize("steps", [6, 15, 25])
@pytest.mark.parametrize("order, variant", [(2, "bh2"), (3, "bh2"), (1, "bh2")])
def test_unipc_equals_diffusers_unipc(order, variant, steps):
    """diffusers UniPCMultistepScheduler(solver_order, solver_type, lower_order_final=True, final_sigmas_type='zero')
    on the linear DDPM table, same timesteps, ours with lower_order_final=True: 1e-5 in float32.

    Not "bh1": diffusers 0.42 returns NaN there, since its last step onto sigma = 0 multiplies
    B(h) = -h = -inf by a zero correction; ours takes that step as x = D (finite, tested below)."""
    from diffusers import UniPCMultistepScheduler

    sde = VPSDE()
    sched = UniPCMultistepScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, solver_order=order,
                                    solver_type=variant, lower_order_final=True, final_sigmas_type="zero")
    xT = torch.randn(8, 5, generator=torch.Generator().manual_seed(2))
    ref, ts = _diffusers_run(sched, steps, xT)
    x, info = sample(_table_score(sde), sde, xT.shape, method="unipc", steps=ts, x_T=xT, alphas="table", order=order,
                     variant=variant, lower_order_final=True, return_info=True)
    assert info.nfe == len(ts)
    assert torch.allclose(x, ref, atol=1e-5, rtol=1e-5), float((x - ref).abs().max())


@pytest.mark.parametrize("order", [2, 3])
def test_deis_equals_diffusers_deis_multistep(order):
    """diffusers DEISMultistepScheduler(solver_order, lower_order_final=False) on the linear DDPM table, 20 steps:
    the state at the last chain position (where both evaluate the model) agrees to 1e-5 of its size in float32. diffusers
    ends on table step 0 and we on the data, so the final step itself differs by construction."""
    from diffusers import DEISMultistepScheduler

    sde = VPSDE()
    sched = DEISMultistepScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, solver_order=order,
                                   lower_order_final=False)
    xT = torch.randn(8, 5, generator=torch.Generator().manual_seed(6))
    sched.set_timesteps(20)
    x, seen_peer = xT.clone(), []
    for t in sched.timesteps:
        seen_peer.append(x.clone())
        x = sched.step(_eps_net(x, int(t)), t, x).prev_sample
    seen, base = [], _table_score(sde)

    def score(x, t):
        seen.append(x.clone())
        return base(x, t)

    ts = sorted(int(t) for t in sched.timesteps)
    sample(score, sde, xT.shape, method="deis", steps=ts, x_T=xT, alphas="table", order=order,
           lower_order_final=False)
    assert len(seen) == len(seen_peer) == 20
    scale = float(seen_peer[-1].abs().max())  # the random eps-net drives |x| to ~100: relative to it
    assert float((seen[-1] - seen_peer[-1]).abs().max()) <= 1e-5 * scale


def test_deis_order_one_is_ddim():
    """tAB-1 integrates a constant eps exactly: DDIM (DPM-Solver-1) on the same nodes, to rounding."""
    sde = VESDE()
    a = _flow_error(sde, "deis", 12, order=1)
    b = _flow_error(sde, "dpm_solver", 12, order=1)
    assert a == pytest.approx(b, rel=1e-9)


MIX = GaussianMixture(weights=[0.3, 0.5, 0.2], means=[[1.5, 0.0], [-1.0, 1.0], [0.0, -1.5]], stds=[0.2, 0.3, 0.15])


def _kd_model(sde):
    """k-diffusion denoiser D(x~, sigma~) from the exact mixture score, x = alpha x~."""
    x0 = MIX.x0_fn(sde)

    def model(xt, sigma):
        st = float(sigma.reshape(-1)[0])
        t = sde.t_from_log_snr(torch.tensor([-2.0 * math.log(st)], dtype=torch.float64))
        a = float(sde.mean_coeff(t))
        return x0(a * xt, t.expand(xt.shape[0]))

    return model


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_heun_and_dpmpp_2m_equal_k_diffusion(sde_name):
    """Same sigma-tilde nodes, float64: ours == k-diffusion's sample_dpmpp_2m and sample_heun
    (then sample_euler for our Euler last step) to 1e-6."""
    kd = k_diffusion_sampling()
    sde = SDES[sde_name]()
    M = 9
    t = scoresde.time_grid(sde, M, spacing="karras")
    alpha = sde.mean_coeff(t)
    st = torch.exp(-0.5 * sde.log_snr(t))
    xT = sde.prior_sampling((64, 2), torch.Generator().manual_seed(3), dtype=torch.float64)
    score, model = MIX.score_fn(sde), _kd_model(sde)

    ours = sample(score, sde, xT.shape, method="dpmpp_2m", steps=M, x_T=xT, spacing="karras", denoise=False,
                  lower_order_final=False)
    ref = alpha[-1] * kd.sample_dpmpp_2m(model, xT / alpha[0], st, disable=True)
    assert torch.allclose(ours, ref, atol=1e-6, rtol=1e-6)

    ours, info = sample(score, sde, xT.shape, method="heun", steps=M, x_T=xT, denoise=False, return_info=True)
    y = kd.sample_heun(model, xT / alpha[0], st[:M], disable=True)
    y = kd.sample_euler(model, y, st[M - 1:], disable=True)
    assert info.nfe == 2 * M - 1
    assert torch.allclose(ours, alpha[-1] * y, atol=1e-6, rtol=1e-6)


# ---- stochastic methods ----------------------------------------------------------------------

def _sw_to_data(x):
    ref = MIX.sample(20000, generator=torch.Generator().manual_seed(99))
    return float(scoresde.sliced_wasserstein(x.double(), ref, generator=torch.Generator().manual_seed(5)))


@pytest.mark.parametrize("method, kw, beat_em_at", [("dpmpp_2m_sde", {}, (10, 20)), ("heun", {"s_churn": 5.0}, (20,))])
def test_stochastic_methods_improve_with_steps_and_beat_euler_maruyama(method, kw, beat_em_at):
    """Sliced Wasserstein to 20k exact mixture samples (floor between two exact draws: 0.058) falls from 10 to
    20 steps and is below Euler-Maruyama's at equal NFE (measured: 2M-SDE 0.15 / 0.068 vs EM 0.18 / 0.098 at
    NFE 11 / 21; Heun with churn 0.032 at NFE 39 vs EM 0.045 at 40; with 10 steps churn is still worse)."""
    sde = VPSDE()
    score = MIX.score_fn(sde)
    sw, sw_em = {}, {}
    for steps in (10, 20):
        x, info = sample(score, sde, (20000, 2), method=method, steps=steps, generator=torch.Generator().manual_seed(4),
                         return_info=True, dtype=torch.float64, **kw)
        sw[steps] = _sw_to_data(x)
        if steps in beat_em_at:
            xe = sample(score, sde, (20000, 2), method="euler_maruyama", steps=info.nfe,
                        generator=torch.Generator().manual_seed(4), dtype=torch.float64)
            sw_em[steps] = _sw_to_data(xe)
    assert sw[20] < sw[10], sw
    for steps in beat_em_at:
        assert sw[steps] < sw_em[steps], (sw, sw_em)


# ---- NFE, edge cases, errors -----------------------------------------------------------------

@pytest.mark.parametrize("method", [m for m in FAST if m != "dpm_adaptive"])
@pytest.mark.parametrize("steps", [1, 2, 3, 5, 8, 11])
def test_nfe_is_exact_and_small_budgets_are_finite(method, steps):
    """NFE == the declared formula (+1 for denoise); steps 1, 2, 3 and 3n - 1 give finite samples."""
    sde = VPSDE()
    calls = []
    base = DATA.score_fn(sde)

    def score(x, t):
        calls.append(1)
        return base(x, t)

    for denoise in (False, True):
        calls.clear()
        x, info = sample(score, sde, (16, 1), method=method, steps=steps, denoise=denoise, return_info=True,
                         generator=torch.Generator().manual_seed(0))
        expected = SOLVERS[method]().nfe(steps) + int(denoise)
        assert info.nfe == len(calls) == expected
        assert bool(torch.isfinite(x).all())


TABLE = [("dpmpp_2m", {}), ("dpmpp_3m", {}), ("dpmpp_3m", {"variant": "taylor"}), ("deis", {}), ("unipc", {"variant": "bh1", "order": 3}), ("unipc", {}), ("heun", {}),
         ("dpmpp_2m_sde", {})]


@pytest.mark.parametrize("method, kw", TABLE)
@pytest.mark.parametrize("steps", [1, 2, 3, 5])
def test_table_nodes_end_on_the_data_without_nan(method, kw, steps):
    """On DDPM-table nodes the last step lands on sigma = 0 at order 1 (diffusers #9007): finite, NFE exact."""
    sde = VPSDE()
    x, info = sample(DATA.score_fn(sde), sde, (16, 1), method=method, steps=steps, alphas="table",
                     return_info=True, generator=torch.Generator().manual_seed(0), **kw)
    assert bool(torch.isfinite(x).all())
    assert info.nfe == SOLVERS[method]().nfe(info.steps)


def test_dpm_adaptive_is_accurate_and_reports_nfe():
    """DPM-Solver-23 at rtol 1e-4 reaches the exact flow to 1e-3; NFE counted; looser tolerance, fewer NFE."""
    sde = VPSDE()
    g = torch.Generator().manual_seed(0)
    xT = sde.prior_sampling((200, 1), g, dtype=torch.float64)
    ref = DATA.flow(sde, xT, sde.T, sde.default_eps)
    nfes = []
    for tol in (1e-2, 1e-4):
        x, info = sample(DATA.score_fn(sde), sde, xT.shape, method="dpm_adaptive", x_T=xT, denoise=False,
                         rtol=tol, atol=tol, return_info=True)
        nfes.append(info.nfe)
    assert float((x - ref).abs().max()) < 1e-3
    assert nfes[0] < nfes[1]


def test_half_precision_states_are_integrated_in_float32():
    """float16 x_T: the score sees float32, the result comes back float16 and close to the float32 one."""
    sde = VPSDE()
    seen = []
    base = DATA.score_fn(sde)

    def score(x, t):
        seen.append(x.dtype)
        return base(x, t)

    xT = torch.randn(32, 1, generator=torch.Generator().manual_seed(0))
    x16 = sample(score, sde, xT.shape, method="dpmpp_2m", steps=10, x_T=xT.half())
    x32 = sample(base, sde, xT.shape, method="dpmpp_2m", steps=10, x_T=xT)
    assert x16.dtype == torch.float16 and set(seen) == {torch.float32}
    assert torch.allclose(x16.float(), x32, atol=2e-3)


BAD = [
    (dict(method="dpmpp_2m", foo=1), TypeError, "does not take"),
    (dict(method="dpm_solver", order=4), ValueError, "order"),
    (dict(method="unipc", order=0), ValueError, "order"),
    (dict(method="dpm_adaptive", order=1), ValueError, "order"),
    (dict(method="unipc", variant="bh3"), ValueError, "variant.*bh1"),
    (dict(method="heun", rho=0.0), ValueError, "rho"),
    (dict(method="dpmpp_2m", spacing="karras", rho=-1.0), ValueError, "rho"),
    (dict(method="dpmpp_2m", spacing="foo"), ValueError, "spacing.*karras"),
    (dict(method="dpmpp_2m", lower_order_final="yes"), TypeError, "lower_order_final"),
    (dict(method="dpmpp_3m", variant="x"), ValueError, "variant"),
    (dict(method="dpm_solver", alphas="table"), ValueError, "between grid nodes"),
    (dict(method="dpmpp_2m", alphas="table", eps=1e-3), ValueError, "eps"),
    (dict(method="dpm_adaptive", steps=10), ValueError, "steps"),
    (dict(method="heun", s_churn=-1.0), ValueError, "s_churn"),
    (dict(method="heun", s_churn=1.0, alphas="table"), ValueError, "s_churn"),
    (dict(method="dpmpp_2m", steps=0), ValueError, "steps"),
    (dict(method="dpmpp_2m", alphas="foo"), ValueError, "alphas"),
]


@pytest.mark.parametrize("kwargs, exc, pattern", BAD)
def test_bad_options_are_named_errors(kwargs, exc, pattern):
    sde = VPSDE()
    kwargs = dict(kwargs)
    kwargs.setdefault("steps", None if kwargs["method"] == "dpm_adaptive" else 5)
    with pytest.raises(exc, match=pattern):
        sample(DATA.score_fn(sde), sde, (4, 1), **kwargs)


def test_registry_declares_every_method():
    """Every method is a registered Solver with a summary, options and an NFE rule; the old eight are kept."""
    rows = {r["name"]: r for r in solver_table()}
    for name in ("euler_maruyama", "reverse_diffusion", "ancestral", "pc", "sde", "ode", "ddpm", "ddim", *FAST):
        assert name in rows and rows[name]["summary"]
    assert rows["heun"]["nfe"] == "2 steps - 1" and rows["dpmpp_2m"]["nfe"] == "steps"
    assert rows["dpmpp_3m"]["order"] == 2 and rows["dpmpp_2m_sde"]["stochastic"]  # the peers' 3M by default
    assert SOLVERS["dpmpp_3m"](variant="taylor").order_of() == 3 and rows["deis"]["order"] == 3
    assert rows["pc"]["nfe"] == "2 steps"


def test_cosine_vp_fast_solvers_stay_finite():
    """The cosine VP (lambda_T = -4.78 at its cut T = 0.9946) with every fast solver at 10 steps."""
    sde = VPSDE(schedule="cosine")
    assert 0.5 * float(sde.log_snr(torch.tensor([sde.T], dtype=torch.float64))) > -5.1
    xT = sde.prior_sampling((200, 1), torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = DATA.flow(sde, xT, sde.T, sde.default_eps)
    for method in ("dpmpp_2m", "dpmpp_3m", "unipc", "heun", "dpm_solver"):
        x = sample(DATA.score_fn(sde), sde, xT.shape, method=method, steps=10, x_T=xT, denoise=False)
        assert float((x - ref).pow(2).mean().sqrt()) < 0.1, method


def test_docs_solver_table_is_the_registry():
    """docs/sampling.md's method table is the registry's markdown_table() (regenerate it when a solver is added)."""
    from pathlib import Path

    from scoresde.solvers.registry import markdown_table

    page = (Path(__file__).resolve().parents[1] / "docs" / "sampling.md").read_text()
    table = page.split("<!-- solver-table:start -->\n")[1].split("<!-- solver-table:end -->")[0]
    assert table == markdown_table()


# ---- regressions from the break-test -----------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("sigma_max", [50.0, 10.0])
def test_dpm_adaptive_on_ve_is_accurate_in_every_dtype(dtype, sigma_max):
    """The step growth is capped: in float64 the first error estimate was ~1e-9 and a 2000x longer step
    was accepted (max error 1.47, std 0.70 against 0.30)."""
    sde = VESDE(sigma_max=sigma_max)
    data = GaussianData(mu=0.5, std=0.3, shape=(2,))
    xT = sde.prior_sampling((512, 2), torch.Generator().manual_seed(1), dtype=torch.float64).to(dtype)
    x = sample(data.score_fn(sde), sde, xT.shape, method="dpm_adaptive", x_T=xT, denoise=False)
    ref = data.flow(sde, xT.double(), sde.T, sde.default_eps)
    assert float((x.double() - ref).abs().max()) < 0.1


class _Discrete(torch.nn.Module):
    """A stand-in for ScoreModel(discrete=True): the exact DDPM-table score of N(0.5, 0.05^2)."""

    discrete = True

    def __init__(self, sde):
        super().__init__()
        self.sde = sde
        self.data = GaussianData(mu=0.5, std=0.05, shape=(2,))

    def forward(self, x, t):
        eps = self.data.eps_fn(self.sde, discrete=True)(x, t)
        ab = self.sde.alphas_cumprod[self.sde.t_to_index(t)].to(x.dtype)
        return -eps / (1 - ab).sqrt().reshape(-1, 1)


def test_guided_scores_keep_a_discrete_models_table_nodes():
    """classifier_guidance at scale 0 samples exactly as the wrapped discrete model (table nodes, NFE = steps)."""
    sde = VPSDE()
    m = _Discrete(sde)
    g = scoresde.classifier_guidance(m, lambda x, t: torch.zeros(len(x), 2) + 0 * x[:, :1], 0, scale=0.0)
    xT = sde.prior_sampling((256, 2), torch.Generator().manual_seed(0))
    a, ia = sample(m, sde, xT.shape, method="dpmpp_2m", steps=10, x_T=xT, return_info=True)
    b, ib = sample(g, sde, xT.shape, method="dpmpp_2m", steps=10, x_T=xT, return_info=True)
    assert ia.nfe == ib.nfe == 10 and torch.equal(a, b) and float(ib.times[-1]) == 0.0


def test_dpm_adaptive_refuses_a_discrete_model_and_table_nodes_need_a_vp_sde():
    sde = VPSDE()
    with pytest.raises(ValueError, match="between grid nodes"):
        sample(_Discrete(sde), sde, (4, 2), method="dpm_adaptive")
    with pytest.raises(ValueError, match="alphas='continuous'"):
        sample(DATA.score_fn(SubVPSDE()), SubVPSDE(), (4, 1), method="dpmpp_2m", steps=5, alphas="table")


def test_numpy_integer_steps_are_steps():
    """np.int64 steps behave as int: the same logsnr table selection, and accepted on continuous nodes."""
    sde = VPSDE()
    a = sample(_Discrete(sde), sde, (4, 2), method="dpmpp_2m", steps=10, return_info=True)[1].times
    b = sample(_Discrete(sde), sde, (4, 2), method="dpmpp_2m", steps=np.int64(10), return_info=True)[1].times
    assert torch.equal(a, b)
    assert sample(DATA.score_fn(sde), sde, (4, 1), method="dpmpp_2m", steps=np.int64(5)).shape == (4, 1)


def test_dpm_solver_info_reports_its_outer_steps():
    """steps is the NFE budget; SampleInfo.steps and times are the outer steps taken (7 for 20 NFE at order 3)."""
    sde = VPSDE()
    _, info = sample(DATA.score_fn(sde), sde, (4, 1), method="dpm_solver", steps=20, return_info=True)
    assert info.nfe == 21 and info.steps == 7 and len(info.times) == info.steps + 1
