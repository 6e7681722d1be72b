"""scoresde.sample: step rules, the torchsde adapter, time ranges and bad input (issue 3).

Numbers checked and where they come from:
* Langevin corrector step e = 2 alpha (snr ||z|| / ||s||)^2 with batch-averaged norms (reference
  code), per-sample norms as an option, alpha = ``sde.discrete_alpha(t, t_next)`` of the SDE's own
  discretization (Song et al. 2021, Alg. 4-5); ALD e = 2 alpha (snr sigma(t))^2;
* the torchsde path (s = T - t, C16) with Euler and the increment-only Brownian motion takes the
  same noise as the hand-written Euler-Maruyama loop, so both agree to rounding;
* no score evaluation outside [eps, T] for any method (torchdiffeq overshoot guard);
* bad input raises ValueError / TypeError naming the argument; NaN mid-solve names the time.
"""
import re

import pytest
import torch

from scoresde import VESDE, VPSDE, SubVPSDE, sample
from scoresde.oracle import GaussianData
from scoresde.solvers.common import ScoreEval
from scoresde.solvers.correctors import AnnealedLangevin, LangevinCorrector

DATA = GaussianData(0.5, 0.5, (3,))


def half_x(x, t):
    return -x / 2.0


@pytest.mark.parametrize("sde_cls", [VPSDE, SubVPSDE, VESDE])
@pytest.mark.parametrize("norm", ["batch", "sample"])
def test_langevin_step_formula(sde_cls, norm):
    """x_mean = x + e s, x = x_mean + sqrt(2 e) z, e = 2 alpha (snr ||z|| / ||s||)^2 (Song et al. 2021, Alg. 5)."""
    sde = sde_cls(N=100)
    x = torch.randn(16, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2
    t, tn = 0.5, 0.49
    corr = LangevinCorrector(sde, ScoreEval(half_x), snr=0.2, n_steps=1, norm=norm)
    x_new, x_mean = corr.step(x, t, tn, torch.Generator().manual_seed(5))
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    s = -x / 2
    zn, sn = z.norm(dim=1), s.norm(dim=1)
    if norm == "batch":  # the reference code: per-sample norms averaged over the batch, one e
        zn, sn = zn.mean(), sn.mean()
    # alpha of the SDE's own discretization of the step t -> t_next (not a hard-coded 1000 steps)
    if sde_cls in (VPSDE, SubVPSDE):  # alpha-bar(t) / alpha-bar(t_next): inside (0, 1] on any grid
        t64, tn64 = torch.tensor(t, dtype=torch.float64), torch.tensor(tn, dtype=torch.float64)
        alpha = torch.exp(sde.log_alpha_bar(t64) - sde.log_alpha_bar(tn64))
    else:
        alpha = torch.tensor(1.0, dtype=torch.float64)
    e = 2 * alpha * (0.2 * zn / sn) ** 2
    e = e.reshape(-1, 1) if e.dim() else e
    torch.testing.assert_close(x_mean, x + e * s, rtol=1e-12, atol=0)
    torch.testing.assert_close(x_new, x_mean + torch.sqrt(2 * e) * z, rtol=1e-12, atol=0)
    if sde_cls is VPSDE:  # exp(-int_0.49^0.5 beta) = exp(-(0.1 + 0.495 * 19.9) * 0.01) = 0.90529, far from
        # the value a hard-coded 1000-step table would give, 1 - beta(0.5) / 1000 = 0.98995
        assert abs(float(alpha) - 0.90529) < 1e-5
        assert abs(float(alpha) - (1 - 10.05 / 1000)) > 0.08


def test_langevin_alpha_matches_the_table_on_the_default_grid():
    """On a grid of N steps, alpha = discrete_alpha(t, t - 1/N) = exp(-int beta) is 1 - beta_i of the DDPM table
    up to the beta_i^2 / 2 of log(1 - beta) (here N = 100, so beta_i reaches 0.2)."""
    sde = VPSDE(N=100)
    t = torch.tensor([0.1, 0.3, 0.7, 1.0], dtype=torch.float64)
    alpha = sde.discrete_alpha(t, t - 1.0 / sde.N)
    beta = sde.discrete_betas[sde.t_to_index(t)]
    assert bool(((alpha - (1 - beta)).abs() <= 0.6 * beta**2 + 1e-3).all()), (alpha, 1 - beta)


def test_ald_step_formula():
    """ALD: e = 2 alpha (snr sigma(t))^2 with sigma the marginal std (Song & Ermon 2019, Alg. 1)."""
    sde = VESDE()
    x = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    corr = AnnealedLangevin(sde, ScoreEval(half_x), snr=0.1, n_steps=1)
    _, x_mean = corr.step(x, 0.5, 0.4, torch.Generator().manual_seed(1))
    e = 2 * (0.1 * float(sde.marginal_std(torch.tensor(0.5)))) ** 2
    torch.testing.assert_close(x_mean, x + e * (-x / 2), rtol=1e-12, atol=0)


@pytest.mark.parametrize("sde_cls", [VPSDE, SubVPSDE, VESDE])
def test_torchsde_euler_equals_the_hand_euler_maruyama_loop(sde_cls):
    """C16: the reverse SDE through torchsde in s = T - t (euler, increment-only Brownian motion) draws the
    same noise as the hand loop, so 'sde' == 'euler_maruyama' (float64, 1e-8)."""
    sde = sde_cls()
    score = DATA.score_fn(sde)
    kw = dict(steps=50, dtype=torch.float64, denoise=False)
    a = sample(score, sde, (32, 3), method="sde", generator=torch.Generator().manual_seed(0), **kw)
    b = sample(score, sde, (32, 3), method="euler_maruyama", generator=torch.Generator().manual_seed(0), **kw)
    torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-8 * sde.prior_std)


@pytest.mark.parametrize("method, options", [
    ("ode", {}), ("ode", {"ode_method": "bosh3", "rtol": 1e-3, "atol": 1e-3}), ("ode", {"ode_method": "rk4"}),
    ("sde", {"sde_method": "srk"}), ("sde", {"sde_method": "heun"}), ("sde", {"sde_method": "reversible_heun"}),
    ("pc", {}), ("euler_maruyama", {"spacing": "logsnr"}), ("ancestral", {"spacing": "quadratic"})])
def test_score_is_only_evaluated_inside_eps_T(method, options):
    """No evaluation outside [eps, T] (dopri5 would step past eps unless stopped there); the ends are reached."""
    sde = VPSDE()
    score = DATA.score_fn(sde)
    seen = []

    def spy(x, t):
        seen.append(t.clone())
        assert t.dtype == torch.float64 and t.shape == (x.shape[0],)
        return score(x, t)

    steps = None if (method == "ode" and "ode_method" not in options) or options.get("ode_method") == "bosh3" else 20
    sample(spy, sde, (8, 3), method=method, steps=steps, eps=1e-2, generator=torch.Generator().manual_seed(0),
           **options)
    ts = torch.cat(seen)
    assert float(ts.min()) >= 1e-2 and float(ts.max()) <= 1.0
    assert float(ts.max()) == 1.0


def test_nan_mid_solve_names_the_time():
    """A score that turns NaN below t = 0.5 raises ValueError saying at which time (no NaN samples)."""
    sde = VPSDE()
    score = DATA.score_fn(sde)

    def bad(x, t):
        s = score(x, t)
        return s * float("nan") if float(t[0]) < 0.5 else s

    for method in ("euler_maruyama", "pc", "sde", "ode", "ddpm", "ddim"):
        with pytest.raises(ValueError, match=r"NaN or inf at t in \[") as err:
            sample(bad, sde, (4, 3), method=method, steps=20 if method != "ode" else None)
        t_bad = float(re.search(r"t in \[([0-9.e-]+)", str(err.value)).group(1))
        low = 0.0 if method == "ode" else 0.4  # dopri5 takes long steps: the first time below 0.5 it saw
        assert low < t_bad < 0.5, (method, str(err.value))


def test_return_info_progress_dtype_device():
    """SampleInfo fields; progress bar does not change the result; dtype and device are honoured."""
    sde = VPSDE()
    score = DATA.score_fn(sde)
    x, info = sample(score, sde, (5, 3), method="pc", steps=7, corrector_steps=2, return_info=True,
                     generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert x.dtype == torch.float64 and x.shape == (5, 3) and x.device.type == "cpu"
    assert info.nfe == 21 and info.steps == 7 and info.method == "pc" and info.times.shape == (8,)
    assert float(info.times[0]) == 1.0 and float(info.times[-1]) == sde.default_eps
    y = sample(score, sde, (5, 3), method="pc", steps=7, corrector_steps=2, progress=True,
               generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.equal(x, y)
    assert sample(score, sde, (5, 3), method="ddim", steps=5).dtype == torch.float32


def test_samples_run_without_autograd():
    """All methods run under torch.no_grad(): a score that builds a graph does not leak into the result."""
    sde = VPSDE()
    w = torch.tensor(1.0, requires_grad=True)
    score = DATA.score_fn(sde)
    for method in ("euler_maruyama", "sde", "ode", "ddpm", "pc"):
        x = sample(lambda x, t: w * score(x, t), sde, (4, 3), method=method, steps=5 if method != "ode" else None)
        assert not x.requires_grad


BAD = [
    (dict(method="not_a_method"), ValueError, "method.*euler_maruyama"),
    (dict(method="pc", predictor="foo"), ValueError, "predictor.*reverse_diffusion"),
    (dict(method="pc", corrector="foo"), ValueError, "corrector.*langevin.*ald.*none"),
    (dict(method="pc", corrector_norm="foo"), ValueError, "corrector_norm.*batch"),
    (dict(method="pc", corrector="ald", corrector_norm="foo"), ValueError, "corrector_norm.*batch"),
    (dict(method="euler_maruyama", device="meta"), ValueError, "device .meta. holds no values"),  # not "a meta generator", which torch refuses
    (dict(method="sde", sde_method="foo"), ValueError, "sde_method.*milstein"),
    (dict(method="ode", ode_method="foo"), ValueError, "ode_method.*dopri5"),
    (dict(method="ddpm", variance="foo"), ValueError, "variance.*fixed_small"),
    (dict(method="ddim", skip="foo"), ValueError, "skip.*quadratic"),
    (dict(method="euler_maruyama", spacing="foo"), ValueError, "spacing.*uniform"),
    (dict(method="euler_maruyama", steps=0), ValueError, "steps"),
    (dict(method="pc", steps=-3), ValueError, "steps"),
    (dict(method="ddim", steps=0), ValueError, "steps"),
    (dict(method="ode", ode_method="euler", steps=0), ValueError, "steps"),
    (dict(method="ode", ode_method="euler", steps=None), ValueError, "steps"),
    (dict(method="ode", steps=10), ValueError, "steps"),
    (dict(method="ddim", eta=-0.1), ValueError, "eta"),
    (dict(method="ddim", eta=1.5), ValueError, "eta"),
    (dict(method="pc", snr=0.0), ValueError, "snr"),
    (dict(method="pc", snr=-1.0, corrector="none"), ValueError, "snr"),
    (dict(method="pc", corrector_steps=0), ValueError, "corrector_steps"),
    (dict(method="ode", rtol=0.0), ValueError, "rtol"),
    (dict(method="ode", atol=-1e-5), ValueError, "atol"),
    (dict(method="euler_maruyama", eps=0.0), ValueError, "eps"),
    (dict(method="euler_maruyama", eps=1.0), ValueError, "eps"),
    (dict(method="ode", eps=-1e-3), ValueError, "eps"),
    (dict(method="ddpm", eps=1e-3), ValueError, "eps"),
    (dict(method="ddim", eta=0.5, predictor="ancestral"), TypeError, "predictor"),
    (dict(method="euler_maruyama", generator=123), TypeError, "generator"),
    (dict(method="euler_maruyama", generator=[torch.Generator()]), ValueError, "generator"),
    (dict(method="euler_maruyama", x_T=torch.zeros(3, 3)), ValueError, "x_T"),
]


@pytest.mark.parametrize("kwargs, exc, pattern", BAD)
def test_bad_input(kwargs, exc, pattern):
    """Bad input raises a clear error naming the argument (the message lists valid names where there are some)."""
    sde = VPSDE()
    kwargs = dict(kwargs)
    kwargs.setdefault("steps", 5)
    if kwargs["method"] == "ode" and "ode_method" not in kwargs and kwargs["steps"] == 5:
        kwargs["steps"] = None
    kwargs.setdefault("generator", torch.Generator().manual_seed(0))
    with pytest.raises(exc, match=pattern):
        sample(DATA.score_fn(sde), sde, (4, 3), **kwargs)


@pytest.mark.parametrize("sde, method", [(SubVPSDE(), "ancestral"), (VESDE(), "ddpm"), (SubVPSDE(), "ddim")])
def test_method_not_defined_for_the_sde(sde, method):
    """ancestral needs VP or VE; ddpm / ddim need VP: a ValueError naming the alternatives."""
    with pytest.raises(ValueError, match="VPSDE"):
        sample(DATA.score_fn(sde), sde, (4, 3), method=method, steps=5)


def test_bad_score_and_shape():
    """A score_fn of the wrong output shape, a bad shape, a non-callable: clear errors."""
    sde = VPSDE()
    with pytest.raises(ValueError, match="shape"):
        sample(lambda x, t: x[:, :2], sde, (4, 3), method="euler_maruyama", steps=3)
    with pytest.raises(ValueError, match="shape"):
        sample(DATA.score_fn(sde), sde, (0, 3), method="euler_maruyama", steps=3)
    with pytest.raises(TypeError, match="score_fn"):
        sample(None, sde, (4, 3), method="euler_maruyama", steps=3)
    with pytest.raises(TypeError, match="sde"):
        sample(DATA.score_fn(sde), "vp", (4, 3), method="euler_maruyama", steps=3)


@pytest.mark.parametrize("dtype, tol", [(torch.float16, 3e-3), (torch.bfloat16, 1.6e-2)])
@pytest.mark.parametrize("sde_cls", [VPSDE, VESDE])
def test_ode_in_half_precision_matches_the_exact_flow(sde_cls, dtype, tol):
    """Break-test: method="ode" with dtype float16 ended in "t contains NaN"; the solve now runs in
    float32 and the sample (cast back to dtype) equals GaussianData.flow from x_T within the rounding
    of the dtype (values < 2: half spacing <= 9.8e-4, bfloat16 <= 7.8e-3)."""
    sde, data = sde_cls(), GaussianData(0.5, 0.1, (4,))
    x_T = sde.prior_sampling((3, 4), torch.Generator().manual_seed(0), "cpu", torch.float32).to(dtype)
    x = sample(data.score_fn(sde), sde, (3, 4), method="ode", x_T=x_T, denoise=False)
    assert x.dtype == dtype
    exact = data.flow(sde, x_T.double(), sde.T, sde.default_eps)
    assert float((x.double() - exact).abs().max()) < tol


def test_bad_dtype_shape_device():
    """Break-test: integer dtype, shape=4 and an unavailable device raised raw torch errors; now named ones."""
    sde = VPSDE()
    score = DATA.score_fn(sde)
    with pytest.raises(TypeError, match="dtype must be a floating"):
        sample(score, sde, (4, 3), method="euler_maruyama", steps=3, dtype=torch.int64)
    with pytest.raises(TypeError, match="shape must be a tuple"):
        sample(score, sde, 4, method="euler_maruyama", steps=3)
    with pytest.raises(TypeError, match="shape"):
        sample(score, sde, (4, 3.5), method="euler_maruyama", steps=3)
    assert sample(score, sde, torch.Size([2, 3]), method="euler_maruyama", steps=2).shape == (2, 3)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device 'cuda'"):
            sample(score, sde, (4, 3), method="euler_maruyama", steps=3, device="cuda")
    with pytest.raises(ValueError, match="device"):
        sample(score, sde, (4, 3), method="euler_maruyama", steps=3, device="nodevice")


@pytest.mark.parametrize("method", ["ode", "dpm_adaptive"])
def test_a_deferred_nan_is_reported_as_nan_not_as_a_solver_failure(method):
    """check_every=16: a NaN score that makes the adaptive solve fail (step underflow, non-finite error estimate)
    before its flag is read is raised as the NaN ValueError, chained from the solver's error."""
    from scoresde.solvers.ode_types import ODESolverError
    sde = VPSDE()
    sf = GaussianData(mu=0.5, std=0.3, shape=(3,)).score_fn(sde)

    def bad(x, t):
        return sf(x, t) * (float("nan") if float(t.max()) < 0.5 else 1.0)

    with pytest.raises(ValueError, match="NaN or inf at t") as info:
        sample(bad, sde, (8, 3), method=method, check_every=16, generator=torch.Generator().manual_seed(0))
    assert isinstance(info.value.__cause__, ODESolverError)
