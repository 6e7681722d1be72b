"""Progress bars count what their total counts (issue 11, item 5), and the NaN / inf check of the score
deferred on a cadence (issue 13, item 5) still names the time of the first bad evaluation.

The bar of ``scoresde.sample(progress=True)`` counts score evaluations (NFE); its total is the plan's
exact NFE (Tweedie's step included), or None where the solve is adaptive. A fake tqdm records the total
and the updates; both must equal SampleInfo.nfe (the exact count) for every registered method.
"""
import re

import pytest
import torch
import tqdm.auto

import scoresde
from scoresde import VPSDE
from scoresde.oracle import GaussianData
from scoresde.score_fn import FiniteCheck, call_score
from scoresde.solvers.common import ScoreEval
from scoresde.solvers.registry import METHODS, get_solver
from scoresde.solvers.sdeint import SDE_METHODS

DATA = GaussianData(mu=0.3, std=0.7, shape=(2,))


class FakeBar:
    made = []

    def __init__(self, total=None, **kwargs):
        self.total, self.n, self.closed, self.kwargs = total, 0, False, kwargs
        FakeBar.made.append(self)

    def update(self, k=1):
        self.n += k

    def close(self):
        self.closed = True


def _cases():
    out = []
    for m in METHODS:
        if m == "sde":
            out += [(m, {"sde_method": k}) for k in SDE_METHODS]
        elif m == "ode":
            out += [(m, {}), (m, {"ode_method": "rk4"})]
        elif m == "pc":
            out += [(m, {}), (m, {"corrector_steps": 2}), (m, {"corrector": "none"})]
        else:
            out.append((m, {}))
    return out


def _steps(method, options):
    if method == "dpm_adaptive" or (method == "ode" and "ode_method" not in options):
        return None
    return 5


@pytest.mark.parametrize("hook", [False, True], ids=["plain", "step_hook"])
@pytest.mark.parametrize("method, options", _cases(), ids=lambda v: v if isinstance(v, str) else
                         "-".join(f"{k}={x}" for k, x in v.items()) or "default")
def test_bar_total_equals_the_count(monkeypatch, method, options, hook):
    monkeypatch.setattr(tqdm.auto, "tqdm", FakeBar)
    sde = VPSDE()
    kw = {"step_hook": (lambda x, xm, a, s: (x, xm))} if hook else {}
    _, info = scoresde.sample(DATA.score_fn(sde), sde, (3, 2), method=method, steps=_steps(method, options),
                              progress=True, return_info=True, generator=torch.Generator().manual_seed(0), **kw,
                              **options)
    bar = FakeBar.made[-1]
    assert bar.closed and bar.kwargs.get("unit") == "nfe"
    assert bar.n == info.nfe
    adaptive = get_solver(method).steps_kind == "adaptive"
    if adaptive:
        assert bar.total is None  # no false total: the count alone
    else:
        assert bar.total == info.nfe


def test_resampling_bar_total(monkeypatch):
    """RePaint's schedule: forward jumps cost no NFE, and the total counts only the downward steps."""
    monkeypatch.setattr(tqdm.auto, "tqdm", FakeBar)
    sde = VPSDE()
    for method in ("euler_maruyama", "pc"):
        _, info = scoresde.sample(DATA.score_fn(sde), sde, (3, 2), method=method, steps=8, resample=(2, 2),
                                  progress=True, return_info=True)
        assert FakeBar.made[-1].total == FakeBar.made[-1].n == info.nfe


def _nan_after(sde, t_bad):
    score = DATA.score_fn(sde)

    def bad(x, t):
        s = score(x, t)
        return s * float("nan") if float(t[0]) < t_bad else s
    return bad


@pytest.mark.parametrize("method", ["euler_maruyama", "pc", "sde", "ddim", "dpmpp_2m"])
def test_deferred_nan_check_names_the_first_bad_time(method):
    """check_every=7: the error comes at most 6 evaluations late and names the first bad evaluation's time."""
    sde = VPSDE()
    with pytest.raises(ValueError, match=r"NaN or inf at t in \[") as err:
        scoresde.sample(_nan_after(sde, 0.5), sde, (4, 2), method=method, steps=40, check_every=7)
    msg = str(err.value)
    t_bad = float(re.search(r"t in \[([0-9.e-]+)", msg).group(1))
    assert 0.45 < t_bad < 0.5, msg
    first, read = (int(v) for v in re.search(r"evaluation (\d+); read at evaluation (\d+)", msg).groups())
    assert 0 <= read - first < 7 and "every 7 evaluations" in msg


def test_nan_in_the_last_evaluations_is_reported_at_the_end():
    """A NaN in an evaluation after the last cadence read is still caught: sample() reads the flags at the end."""
    sde = VPSDE()
    with pytest.raises(ValueError, match="NaN or inf"):
        scoresde.sample(_nan_after(sde, 0.12), sde, (4, 2), method="euler_maruyama", steps=20, check_every=1000)


def test_default_cadence_checks_every_call_on_cpu():
    """On the CPU (free to read) the default reads every call: the error names the evaluation itself."""
    sde = VPSDE()
    with pytest.raises(ValueError, match="NaN or inf") as err:
        scoresde.sample(_nan_after(sde, 0.5), sde, (4, 2), method="euler_maruyama", steps=40)
    assert "read at evaluation" not in str(err.value)  # reported at once
    score = ScoreEval(DATA.score_fn(sde))
    score(torch.zeros(2, 2), 0.5)
    assert score.checker(torch.zeros(1)).every == 1


def test_finite_check_reads_on_its_cadence():
    check = FiniteCheck(3)
    ok, bad = torch.zeros(2), torch.tensor([0.0, float("inf")])
    t = torch.full((2,), 0.25)
    check.add(ok, t)
    check.add(bad, t)  # pending: no read yet
    with pytest.raises(ValueError, match=r"t in \[0.25, 0.25\] \(evaluation 2; read at evaluation 3"):
        check.add(ok, t)
    check.add(bad, t)
    with pytest.raises(ValueError, match="evaluation 4"):
        check.flush()
    check.flush()  # nothing pending: no error
    for every, exc in ((0, ValueError), (1.5, TypeError), (True, TypeError)):
        with pytest.raises(exc, match="check_every"):
            FiniteCheck(every)
    with pytest.raises(ValueError, match="check_every"):
        scoresde.sample(DATA.score_fn(VPSDE()), VPSDE(), (2, 2), method="ddim", steps=3, check_every=0)


def test_call_score_still_checks_shape_and_nan_at_once():
    x, t = torch.zeros(2, 3), torch.full((2,), 0.5)
    with pytest.raises(ValueError, match="shape"):
        call_score(lambda x, t: x[:, :2], x, t)
    with pytest.raises(ValueError, match=r"NaN or inf at t in \[0.5, 0.5\]"):
        call_score(lambda x, t: x / 0.0, x, t)
    # deferred: no error until the check reads
    check = FiniteCheck(10)
    call_score(lambda x, t: x / 0.0, x, t, check)
    with pytest.raises(ValueError, match="evaluation 1"):
        check.flush()


def test_check_cadence_default_by_device():
    """Free reads on the CPU (every call); a GPU (any non-CPU device) reads every DEVICE_CHECK_EVERY calls."""
    from scoresde.score_fn import DEVICE_CHECK_EVERY, check_every_default
    assert check_every_default("cpu") == 1
    assert check_every_default(torch.device("meta")) == DEVICE_CHECK_EVERY > 1


@pytest.mark.parametrize("name", ["euler_maruyama", "reverse_diffusion", "ancestral"])
def test_predictor_scalars_match_the_formulas(name):
    """The per-step (a, b, c) of a predictor, from floats or per-sample (B,) times, give Song et al.'s updates
    (float64, 1e-12): EM x + (f x - g^2 s) dt; reverse diffusion x - f + G^2 s (sde.discretize); ancestral
    (x + beta s) / sqrt(1 - beta)."""
    from scoresde.solvers.predictors import PREDICTORS
    sde = VPSDE()
    score = ScoreEval(lambda x, t: -x / 2.0)
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    t, tn = 0.6, 0.55
    tb, tnb = torch.full((4,), t, dtype=torch.float64), torch.full((4,), tn, dtype=torch.float64)
    s = -x / 2.0
    if name == "euler_maruyama":
        f, g = sde.drift_coeff(tb)[:, None], sde.diffusion_coeff(tb)[:, None]
        mean = x + (f * x - g**2 * s) * (tn - t)
    elif name == "reverse_diffusion":
        fv, G = sde.discretize(x, tb, tnb)
        mean = x - fv + G[:, None] ** 2 * s
    else:
        beta = (1.0 - sde.discrete_alpha(tb, tnb))[:, None]
        mean = (x + beta * s) / torch.sqrt(1.0 - beta)
    pred = PREDICTORS[name](sde, score)
    for tt, ttn in ((t, tn), (tb, tnb)):
        _, m = pred.step(x, tt, ttn, torch.Generator().manual_seed(1))
        torch.testing.assert_close(m, mean, rtol=1e-12, atol=1e-12)
