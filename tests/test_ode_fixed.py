"""The fixed-grid loop of solve_ode (scoresde.solvers.ode_fixed) against torchdiffeq's driver and the
convergence order of each tableau."""
import math

import pytest
import torch
from torchdiffeq import odeint

from scoresde.solvers.ode import solve_ode
from scoresde.solvers.ode_fixed import TABLEAUX

ORDER = {"euler": 1, "midpoint": 2, "heun2": 2, "heun3": 3, "rk4": 4}


def field(t, y):  # dy/dt = -y cos(3t) + t, a non-autonomous linear field
    return -y * torch.cos(3 * t) + t


@pytest.mark.parametrize("method", sorted(TABLEAUX))
@pytest.mark.parametrize("t0,t1", [(0.1, 1.0), (1.0, 1e-3)])
def test_same_numbers_as_torchdiffeq(method, t0, t1):
    y0 = torch.linspace(-1, 1, 7, dtype=torch.float64)
    steps = 13

    def grid(func, y, t):
        g = torch.linspace(float(t[0]), float(t[-1]), steps + 1, dtype=torch.float64)
        g[0], g[-1] = t[0], t[-1]
        return g

    ref = odeint(field, y0, torch.tensor([t0, t1], dtype=torch.float64), method=method,
                 options={"grid_constructor": grid})[-1]
    sol = solve_ode(field, y0, t0, t1, method=method, steps=steps)
    assert sol.nfe == steps * len(TABLEAUX[method][0])
    torch.testing.assert_close(sol.y, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method", sorted(TABLEAUX))
def test_convergence_order(method):
    """Error vs the closed form of dy/dt = -cos(3t) y, y(t) = y(0.1) exp(-(sin 3t - sin 0.3) / 3), halves as 2^order."""
    def f(t, y):
        return -y * torch.cos(3 * t)

    y0 = torch.tensor([1.0, -2.0], dtype=torch.float64)
    exact = y0 * math.exp(-(math.sin(3.0) - math.sin(0.3)) / 3)
    errs = [float((solve_ode(f, y0, 0.1, 1.0, method=method, steps=n).y - exact).abs().max()) for n in (32, 64)]
    assert math.log2(errs[0] / errs[1]) == pytest.approx(ORDER[method], abs=0.35)


def test_tuple_state_float32_and_the_interval():
    """A tuple state (the likelihood's (x, delta_logp)) in float32: the times stay inside [eps, T] after rounding."""
    seen = []

    def f(t, y):
        seen.append(float(t))
        return -y[0], y[0].sum(dim=1)

    x = torch.ones(3, 2)
    sol = solve_ode(f, (x, torch.zeros(3)), 1.0, 1e-5, method="rk4", steps=4)
    assert min(seen) >= 1e-5 and max(seen) <= 1.0
    assert sol.y[0].dtype == torch.float32 and sol.y[1].shape == (3,)
    # x(1e-5) = e^{1 - 1e-5}; delta = int_1^eps 2 x dt = -2 (e^{1-eps} - 1)
    torch.testing.assert_close(sol.y[0], torch.full((3, 2), math.exp(1 - 1e-5)), rtol=2e-3, atol=0)
    torch.testing.assert_close(sol.y[1], torch.full((3,), -2 * (math.exp(1 - 1e-5) - 1)), rtol=2e-3, atol=0)


def test_max_nfe_counts_stages():
    with pytest.raises(Exception, match="max_nfe=5"):
        solve_ode(field, torch.ones(2), 0.0, 1.0, method="rk4", steps=2, max_nfe=5)
