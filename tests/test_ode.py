"""Tests of the torchdiffeq adapter scoresde.solvers.ode.solve_ode.

Numbers come from closed forms: y' = A y has y(t1) = expm(A (t1 - t0)) y0; the NFE of a solve
equals the calls counted by an independent hook; fixed-grid methods cost a known number of
evaluations per step (euler 1, midpoint 2, rk4 4).
"""
import math

import pytest
import torch

from scoresde.solvers.ode import ADAPTIVE_METHODS, ODESolution, ODESolverError, rms_norm, solve_ode


def _linear_field(A, log=None):
    def f(t, y):
        if log is not None:
            log.append(float(t))
        return y @ A.T

    return f


A = torch.tensor([[-1.0, 2.0], [-2.0, -0.5]], dtype=torch.float64)


@pytest.mark.parametrize("t0,t1", [(1.0, 1e-3), (1e-3, 1.0)])
@pytest.mark.parametrize("method", ["dopri5", "bosh3", "adaptive_heun", "fehlberg2", "dopri8"])
def test_adaptive_never_leaves_interval(method, t0, t1):
    # torchdiffeq's dopri5 alone evaluates at t = -0.132 going 1 -> 1e-3 (solvers.md Sec. 3.2)
    log = []
    y0 = torch.tensor([[1.0, 0.5], [0.3, -2.0]], dtype=torch.float64)
    solve_ode(_linear_field(A, log), y0, t0, t1, method=method, rtol=1e-5, atol=1e-5)
    lo, hi = min(t0, t1), max(t0, t1)
    assert min(log) >= lo and max(log) <= hi
    assert lo in log or hi in log  # both ends are reached exactly (no interpolation beyond)


def test_float32_state_stays_inside_float64_interval():
    # torchdiffeq hands t in the state's dtype and float32(1e-5) < 1e-5: the bounds are rounded inwards
    log = []
    y0 = torch.ones(4, dtype=torch.float32)
    solve_ode(lambda t, y: (log.append(float(t)), -y)[1], y0, 1.0, 1e-5, rtol=1e-3, atol=1e-3)
    assert min(log) >= 1e-5 and max(log) <= 1.0


@pytest.mark.parametrize("method", ["dopri5", "rk4"])
def test_linear_ode_exact_and_nfe_counted(method):
    # closed form y(t1) = expm(A (t1 - t0)) y0; NFE == calls counted by a separate hook
    log = []
    y0 = torch.tensor([[1.0, 0.5], [0.3, -2.0]], dtype=torch.float64)
    t0, t1 = 1.0, 0.1
    kw = dict(rtol=1e-9, atol=1e-9) if method == "dopri5" else dict(steps=200)
    sol = solve_ode(_linear_field(A, log), y0, t0, t1, method=method, **kw)
    exact = y0 @ torch.linalg.matrix_exp(A * (t1 - t0)).T
    assert isinstance(sol, ODESolution)
    assert torch.allclose(sol.y, exact, atol=1e-7, rtol=0)
    assert sol.nfe == len(log)
    if method == "rk4":
        assert sol.nfe == 4 * 200  # torchdiffeq's rk4 (3/8 rule) costs 4 evaluations per step


@pytest.mark.parametrize("method,per_step", [("euler", 1), ("midpoint", 2), ("rk4", 4)])
def test_fixed_grid_steps_and_order(method, per_step):
    # y' = -y from 0 to 1: Euler with h = 1/n gives (1 - h)^n exactly; each method's NFE is per_step * steps
    log = []
    y0 = torch.ones(3, dtype=torch.float64)
    sol = solve_ode(lambda t, y: (log.append(float(t)), -y)[1], y0, 0.0, 1.0, method=method, steps=10)
    assert sol.nfe == per_step * 10 == len(log)
    assert min(log) >= 0.0 and max(log) <= 1.0
    if method == "euler":
        assert torch.allclose(sol.y, torch.full((3,), 0.9**10, dtype=torch.float64), atol=1e-14)
    err10 = abs(float(sol.y[0]) - math.exp(-1))
    err20 = abs(float(solve_ode(lambda t, y: -y, y0, 0.0, 1.0, method=method, steps=20).y[0]) - math.exp(-1))
    order = math.log2(err10 / err20)
    assert abs(order - {"euler": 1, "midpoint": 2, "rk4": 4}[method]) < 0.25


def test_tuple_state():
    # (x, c) with x' = -x, c' = 1: c(t1) - c(t0) = t1 - t0 exactly
    x0 = torch.ones(2, 3, dtype=torch.float64)
    c0 = torch.zeros(2, dtype=torch.float64)
    sol = solve_ode(lambda t, y: (-y[0], torch.ones_like(y[1])), (x0, c0), 1.0, 0.25)
    assert isinstance(sol.y, tuple) and sol.y[0].shape == (2, 3)
    assert torch.allclose(sol.y[1], torch.full((2,), -0.75, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(sol.y[0], torch.full((2, 3), math.exp(0.75), dtype=torch.float64), atol=1e-6)


def test_nfe_increases_with_tolerance():
    # tighter tolerances need more evaluations (case C13)
    y0 = torch.tensor([[1.0, 0.5]], dtype=torch.float64)
    nfes = [solve_ode(_linear_field(A), y0, 0.0, 2.0, rtol=tol, atol=tol).nfe for tol in (1e-3, 1e-5, 1e-8)]
    assert nfes[0] < nfes[1] < nfes[2]


def test_max_nfe_guard():
    # a stiff field y' = -1e6 (y - cos t) needs far more than 50 dopri5 evaluations over [0, 1]
    calls = []

    def stiff(t, y):
        calls.append(1)
        return -1e6 * (y - torch.cos(t))

    y0 = torch.zeros(1, dtype=torch.float64)
    with pytest.raises(ODESolverError, match=r"max_nfe=50 .*reached t="):
        solve_ode(stiff, y0, 0.0, 1.0, rtol=1e-8, atol=1e-8, max_nfe=50)
    assert len(calls) == 50


def test_underflow_becomes_solver_error():
    # y' = y^2 from y(0) = 1 blows up at t = 1: the step size underflows before t1 = 2
    y0 = torch.ones(1, dtype=torch.float64)
    with pytest.raises(ODESolverError, match="loosen rtol/atol"):
        solve_ode(lambda t, y: y * y, y0, 0.0, 2.0, rtol=1e-6, atol=1e-6)


def test_min_step_passes_through():
    # with min_step = 0.1 dopri5 takes at most 10 steps of 6 evaluations (+2 for the initial step)
    y0 = torch.ones(1, dtype=torch.float64)
    sol = solve_ode(lambda t, y: -50.0 * y, y0, 0.0, 1.0, rtol=1e-10, atol=1e-10, min_step=0.1)
    assert sol.nfe <= 2 + 6 * 10 + 6


def test_norm_option():
    # rms_norm of a tuple is the RMS of all elements together: sqrt((4 * 1 + 2 * 16) / 6) = sqrt(6)
    y = (torch.ones(2, 2), torch.full((2,), 4.0))
    assert float(rms_norm(y)) == pytest.approx(math.sqrt(6.0))
    # a norm that ignores the second (fast, large) component lets dopri5 take fewer steps than the
    # default max-over-parts norm; both reach the closed form of the first component
    x0, c0 = torch.ones(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    f = lambda t, y: (-y[0], 100 * torch.cos(100 * t) * torch.ones_like(y[1]))  # noqa: E731
    full = solve_ode(f, (x0, c0), 0.0, 1.0, rtol=1e-6, atol=1e-6)
    first = solve_ode(f, (x0, c0), 0.0, 1.0, rtol=1e-6, atol=1e-6, norm=lambda y: y[0].abs().max())
    assert first.nfe < full.nfe
    assert abs(float(full.y[1][0]) - math.sin(100.0)) < 1e-4
    for sol in (full, first):
        assert abs(float(sol.y[0][0]) - math.exp(-1)) < 1e-5


def test_bad_input():
    y0 = torch.ones(1)
    f = lambda t, y: -y  # noqa: E731
    with pytest.raises(ValueError, match="dopri5"):  # message lists the valid methods
        solve_ode(f, y0, 1.0, 0.0, method="rk45")
    for kw, word in [(dict(rtol=0.0), "rtol"), (dict(atol=-1.0), "atol"), (dict(method="euler"), "steps"),
                     (dict(method="euler", steps=0), "steps"), (dict(steps=10), "steps"),
                     (dict(min_step=-1.0), "min_step"), (dict(method="rk4", steps=4, min_step=0.1), "min_step"),
                     (dict(method="rk4", steps=4, norm=rms_norm), "norm")]:
        with pytest.raises(ValueError, match=word):
            solve_ode(f, y0, 1.0, 0.0, **kw)
    with pytest.raises(ValueError, match="t0"):
        solve_ode(f, y0, float("nan"), 0.0)
    with pytest.raises(ValueError, match="differ"):
        solve_ode(f, y0, 0.5, 0.5)
    with pytest.raises(TypeError, match="steps"):
        solve_ode(f, y0, 1.0, 0.0, method="euler", steps=2.5)
    with pytest.raises(TypeError, match="y0"):
        solve_ode(f, [y0], 1.0, 0.0)
    with pytest.raises(TypeError, match="norm"):
        solve_ode(f, y0, 1.0, 0.0, norm="rms")
    assert "dopri5" in ADAPTIVE_METHODS and "rk4" not in ADAPTIVE_METHODS


@pytest.mark.parametrize("dtype, tol", [(torch.float16, 2e-3), (torch.bfloat16, 1.6e-2)])
def test_half_precision_state_is_solved_in_float32(dtype, tol):
    # break-test: torchdiffeq's dopri5 step control in float16 rounds t and overflows the error norm
    # (NaN t); the state is upcast, so the result is the closed form expm(A (t1 - t0)) y0 up to the
    # rounding of the half-precision input and output (half eps 9.8e-4, bfloat16 7.8e-3, |y| < 2)
    seen = []
    y0 = torch.tensor([[1.0, 0.5], [0.3, -2.0]], dtype=dtype)
    f = _linear_field(A.float())
    sol = solve_ode(lambda t, y: (seen.append(y.dtype), f(t, y))[1], y0, 1.0, 1e-3, rtol=1e-5, atol=1e-5)
    exact = y0.double() @ torch.linalg.matrix_exp(A * (1e-3 - 1.0)).T
    assert sol.y.dtype == dtype and set(seen) == {torch.float32}
    assert float((sol.y.double() - exact).abs().max()) < tol
    # a tuple (the likelihood's (x, delta_logp)): each half part solved in float32, cast back
    sol2 = solve_ode(lambda t, y: (seen.append(y[1].dtype), (f(t, y[0]), -y[1]))[1],
                     (y0, torch.ones(2, dtype=dtype)), 1.0, 1e-3)
    assert sol2.y[0].dtype == dtype and sol2.y[1].dtype == dtype and set(seen) == {torch.float32}
    assert abs(float(sol2.y[1][0]) - math.exp(1.0 - 1e-3)) < tol  # y' = -y backwards: y(t1) = e^(t0 - t1)


def test_min_step_longer_than_a_tenth_of_the_interval_is_refused():
    # a floor of 10 on [1e-5, 1] took 8 evaluations and returned wrong log-densities without a word
    y0 = torch.ones(2, dtype=torch.float64)
    for kw in ({}, {"step_control": "per_sample"}):
        with pytest.raises(ValueError, match="min_step must be at most a tenth"):
            solve_ode(lambda t, y: -y, y0, 1e-5, 1.0, min_step=10.0, **kw)
    assert solve_ode(lambda t, y: -y, y0, 0.0, 1.0, min_step=0.1).nfe > 0  # a tenth is allowed
