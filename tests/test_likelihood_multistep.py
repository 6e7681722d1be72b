"""The likelihood by a fixed-grid multistep exponential integrator (scoresde.likelihood_multistep; issue 13, item 1).

``log_likelihood(..., method="dpmpp_2m" | "dpmpp_3m", steps=M)``: DPM-Solver++'s multistep update
run from eps to T with the log-density change integrated over the nodes. Checked against the
closed form of Gaussian data (convergence order 2 / >= 3 on the lambda grid, for VP, sub-VP and
VE), the exact density of a Gaussian mixture, a tight dopri5 solve on a small digits UNet (the
same probe), and for its argument errors.
"""
import math

import numpy as np
import pytest
import torch

from scoresde import SubVPSDE, VESDE, VPSDE
from scoresde.likelihood import bits_per_dim, log_likelihood
from scoresde.likelihood_multistep import MULTISTEP_METHODS, forward_nodes, quadrature_weights
from scoresde.oracle import GaussianData, GaussianMixture
from scoresde.solvers.ode_types import ODESolverError

EPS = 1e-5
SDES = {"vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE}


def _gaussian(D=8):
    return GaussianData(mu=torch.linspace(-0.5, 0.5, D), std=torch.linspace(0.2, 0.6, D), shape=(D,))


@pytest.mark.parametrize("M", [1, 2, 5, 7, 8, 31])
def test_quadrature_weights_are_exact_for_their_polynomials(M):
    w = np.array(quadrature_weights(M))
    assert len(w) == M + 1 and abs(w.sum() - M) < 1e-12
    s = np.linspace(0.0, 1.0, M + 1)
    degree = 3 if M >= 7 else 1
    for k in range(degree + 1):
        assert abs(w @ s**k / M - 1.0 / (k + 1)) < 1e-12, k
    if M >= 7:  # a quartic is not exact (the rule is fourth order, not higher), and no weight alternates
        assert abs(w @ s**4 / M - 0.2) > 1e-8
        assert np.all(w[4:-4] == 1.0)


def test_forward_nodes_run_from_eps_to_t_uniform_in_lambda():
    sde = VPSDE()
    n = forward_nodes(sde, 10, EPS, "lambda")
    assert float(n.times[0]) == pytest.approx(EPS) and float(n.times[-1]) == pytest.approx(sde.T)
    d = np.diff(n.lam)
    assert np.all(d < 0) and np.allclose(d, d[0], rtol=1e-9)  # lambda falls uniformly
    assert np.all(np.diff(forward_nodes(sde, 10, EPS, "t").times.numpy()) > 0)


def _errors(name, method, steps, tv="lambda"):
    sde, data = SDES[name](), _gaussian()
    x = data.sample(3, torch.Generator().manual_seed(1))
    ref = data.pf_logp(sde, x, EPS)
    out = []
    for M in steps:
        r = log_likelihood(data.score_fn(sde), sde, x, eps=EPS, divergence="exact", method=method, steps=M,
                           time_variable=tv)
        assert r.nfe == M + 1
        out.append(float((r.logp - ref).abs().max()))
    return out


@pytest.mark.parametrize("name", list(SDES))
def test_gaussian_closed_form_converges_at_the_method_order(name):
    # measured orders (20 -> 40 -> 80 steps, lambda grid): 2M 1.8-2.0; 3M 3.2-3.9 (taylor update + Simpson)
    e2 = _errors(name, "dpmpp_2m", [20, 40, 80])
    e3 = _errors(name, "dpmpp_3m", [20, 40, 80])
    assert min(math.log2(a / b) for a, b in zip(e2, e2[1:])) > 1.7, e2
    assert min(math.log2(a / b) for a, b in zip(e3, e3[1:])) > 2.8, e3
    assert e3[-1] < 2e-3 and e3[-1] < e2[-1]


def test_long_lambda_steps_are_refused():
    # run forwards a step of h in lambda multiplies rounding errors by ~e^|h|: eps = 1e-300 on the VP SDE once
    # returned logp = -1.7e268 (for -5.3) at 40 steps; the t grid's first step on VP is 4.5 units of lambda long
    sde, data = VPSDE(), _gaussian(4)
    x = data.sample(2, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"step of .* in lambda.*steps >= \d+"):
        log_likelihood(data.score_fn(sde), sde, x, eps=1e-300, method="dpmpp_2m", steps=40, time_variable="lambda")
    with pytest.raises(ValueError, match="time_variable='lambda'"):
        log_likelihood(data.score_fn(sde), sde, x, method="dpmpp_2m", steps=40, time_variable="t")
    with pytest.raises(ValueError, match="steps >= 5"):  # the default eps: 4 steps of 2.97 in lambda
        log_likelihood(data.score_fn(sde), sde, x, method="dpmpp_2m", steps=4, time_variable="lambda")
    # on the VE SDE the t grid is the lambda grid (lambda = -log sigma is linear in t): the same numbers
    ve = VESDE()
    a, b = (log_likelihood(data.score_fn(ve), ve, x, method="dpmpp_3m", steps=40, time_variable=tv,
                           divergence="exact").logp for tv in ("t", "lambda"))
    assert torch.allclose(a, b, rtol=1e-10)


def test_a_score_without_x_dependence_has_divergence_zero():
    sde, data = VPSDE(), _gaussian(4)
    x = data.sample(2, torch.Generator().manual_seed(0))
    p = torch.nn.Parameter(torch.zeros(4, dtype=torch.float64))

    def flat(x, t):  # the score of N(0, I) at T only; independent of x but with a graph (to p)
        return torch.zeros_like(x) + p

    ours = log_likelihood(flat, sde, x, method="dpmpp_2m", steps=10, time_variable="lambda", divergence="exact")
    ref = log_likelihood(flat, sde, x, divergence="exact", rtol=1e-8, atol=1e-8)
    assert torch.allclose(ours.logp, ref.logp, rtol=1e-6)


def test_gaussian_mixture_exact_density():
    sde = VPSDE()
    mix = GaussianMixture([0.3, 0.7], torch.tensor([[-1.0, 0.5], [1.0, -0.5]]), torch.tensor([0.3, 0.15]))
    x = mix.sample(5, torch.Generator().manual_seed(2))
    truth = mix.logp(sde, x, EPS)
    errs = []
    for M in (40, 160):
        r = log_likelihood(mix.score_fn(sde), sde, x, eps=EPS, divergence="exact", method="dpmpp_3m", steps=M,
                           time_variable="lambda")
        errs.append(float((r.delta_logp + mix.logp(sde, r.z, sde.T) - truth).abs().max()))
    assert errs[1] < 1e-3 and errs[1] < errs[0] / 4, errs


def _small_unet():
    from scoresde import ScoreModel
    from scoresde.models import UNet

    torch.manual_seed(0)
    net = UNet(in_channels=1, image_size=8, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=())
    torch.nn.init.normal_(net.conv_out.weight, std=0.02)
    return ScoreModel(net, VPSDE(), prediction="eps").double().eval()


def test_digits_unet_agrees_with_dopri5_and_is_batch_independent():
    # the same probe (same generator), float64, against dopri5 at 1e-8 (4e-8 from 1e-9): 3M off by 1.09 / 0.066 /
    # 3.0e-3 / 3.9e-4 bits/dim at 10 / 40 / 80 / 160 steps (order 3; 2M: 0.92 / 0.061 / 0.017 / 4.6e-3) on this
    # untrained net (15 bits/dim: a strong field); a sample alone gives the same number as in the batch
    from scoresde.data import digits

    score, sde = _small_unet(), VPSDE()
    levels = digits("test").levels[:3]
    kw = dict(data_range=(-1.0, 1.0), num_levels=17)

    def bpd(lv, **o):
        return bits_per_dim(score, sde, lv.double(), generator=torch.Generator().manual_seed(4), **kw, **o).bpd

    ref = bpd(levels, rtol=1e-8, atol=1e-8)
    err = {M: float((bpd(levels, method="dpmpp_3m", steps=M, time_variable="lambda") - ref).abs().max())
           for M in (40, 160)}
    assert err[160] < 1e-3 and err[40] > 50 * err[160], err
    r3 = log_likelihood(score, sde, torch.linspace(-0.9, 0.9, 3 * 64, dtype=torch.float64).reshape(3, 1, 8, 8),
                        method="dpmpp_2m", steps=20, time_variable="lambda", divergence="exact")
    r1 = log_likelihood(score, sde, torch.linspace(-0.9, 0.9, 3 * 64, dtype=torch.float64).reshape(3, 1, 8, 8)[1:2],
                        method="dpmpp_2m", steps=20, time_variable="lambda", divergence="exact")
    assert abs(float(r3.logp[1]) - float(r1.logp[0])) < 1e-9 * abs(float(r1.logp[0]))


@pytest.mark.parametrize("method", MULTISTEP_METHODS)
def test_bad_arguments(method):
    sde, data = VPSDE(), _gaussian(4)
    x = data.sample(2, torch.Generator().manual_seed(0))
    score = data.score_fn(sde)
    with pytest.raises(ValueError, match="steps"):
        log_likelihood(score, sde, x, method=method)
    with pytest.raises(ValueError, match="steps"):
        log_likelihood(score, sde, x, method=method, steps=0)
    with pytest.raises(ValueError, match="per_sample"):
        log_likelihood(score, sde, x, method=method, steps=5, step_control="per_sample")
    with pytest.raises(ValueError, match="min_step"):
        log_likelihood(score, sde, x, method=method, steps=5, min_step=1e-6)
    with pytest.raises(ODESolverError, match="max_nfe"):
        log_likelihood(score, sde, x, method=method, steps=5, max_nfe=5)
    assert log_likelihood(score, sde, x, method=method, steps=5, max_nfe=6, time_variable="lambda").nfe == 6
    for bad in (dict(max_nfe=0), dict(max_nfe=2.5), dict(rtol=-1.0), dict(atol=float("nan")), dict(steps=10**10)):
        with pytest.raises((ValueError, TypeError), match=next(iter(bad))):
            log_likelihood(score, sde, x, method=method, **{"steps": 5, **bad})
    with pytest.raises(ValueError, match="dpmpp_2m"):  # an unknown method: the message lists these too
        log_likelihood(score, sde, x, method="dpmpp_9m", steps=5)

    def detached(x, t):
        return score(x, t).detach()

    with pytest.raises(ValueError, match="autograd graph"):
        log_likelihood(detached, sde, x, method=method, steps=5, time_variable="lambda")


def test_nan_is_caught_with_the_device_cadence(monkeypatch):
    # on a GPU the NaN / inf flag is read every 16 evaluations (no host sync per call); a NaN is still an error
    import scoresde.likelihood_multistep as lm

    monkeypatch.setattr(lm, "check_every_default", lambda device: 16)
    sde, data = VPSDE(), _gaussian(4)
    x = data.sample(2, torch.Generator().manual_seed(0))
    score = data.score_fn(sde)

    def late_nan(x, t):  # finite except near T, after the last read at a multiple of 16
        out = score(x, t)
        return out * float("nan") if float(t[0]) > 0.99 else out

    with pytest.raises(ValueError, match="NaN or inf"):
        log_likelihood(late_nan, sde, x, method="dpmpp_2m", steps=20, time_variable="lambda")


def _sqrt_score(x, t):
    """Finite everywhere, but its derivative in x is inf / NaN where x == 0."""
    return -x + 0.01 * x.abs().sqrt()


@pytest.mark.parametrize("kw", [dict(method="dpmpp_2m", steps=20), dict(method="dpmpp_3m", steps=20),
                                dict(method="rk4", steps=20), {}, dict(step_control="per_sample")],
                         ids=["dpmpp_2m", "dpmpp_3m", "rk4", "dopri5", "per_sample"])
def test_a_non_finite_divergence_raises_instead_of_a_nan_logp(kw):
    """A score whose derivative is NaN at some x: every method raises (before: the fixed grids returned
    logp NaN silently, per-sample control called score_fn at t = NaN, dopri5 blamed the tolerances)."""
    x = torch.tensor([[0.3, -0.2, 0.5, 0.1], [0.4, 0.0, -0.3, 0.2]], dtype=torch.float64)
    if "steps" in kw:
        kw = dict(kw, time_variable="lambda") if kw["method"] != "rk4" else kw
    with pytest.raises((ValueError, ODESolverError), match="NaN (or|/) inf"):
        log_likelihood(_sqrt_score, VPSDE(), x, **kw)


def test_gaussian_probes_give_the_adaptive_solves_estimate():
    """With Gaussian probes the fixed grid estimates the linear part f(t) x by f(t) |v|^2, as the adaptive
    solve's v^T J v does (before: by its exact trace D f(t), which left the score part's probe noise
    uncancelled: 21.5 nats of spread against 3.4 on this oracle, up to 90 nats apart with the same probes)."""
    D = 6
    data = GaussianData(mu=torch.linspace(-0.5, 0.5, D), std=torch.linspace(0.2, 0.6, D), shape=(D,))
    sde = VPSDE()
    x = data.sample(8, torch.Generator().manual_seed(0))
    for seed in range(3):
        kw = dict(divergence="hutchinson_gaussian", generator=torch.Generator().manual_seed(seed))
        a = log_likelihood(data.score_fn(sde), sde, x, rtol=1e-7, atol=1e-7, **kw)
        kw["generator"] = torch.Generator().manual_seed(seed)
        b = log_likelihood(data.score_fn(sde), sde, x, method="dpmpp_3m", steps=160, time_variable="lambda", **kw)
        torch.testing.assert_close(b.logp, a.logp, rtol=0, atol=1e-3)


def test_rows_per_call_is_checked_with_the_fixed_grid_too():
    x = torch.randn(2, 4, dtype=torch.float64)
    score = GaussianData(0.0, 0.5, (4,)).score_fn(VPSDE())
    for bad in (0, -1, 2.5, True):
        with pytest.raises((ValueError, TypeError), match="rows_per_call"):
            log_likelihood(score, VPSDE(), x, method="dpmpp_2m", steps=40, time_variable="lambda", rows_per_call=bad)
