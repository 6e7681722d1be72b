"""The torchsde adapter's shortcuts for additive noise give torchsde's own steps (issue 13, item 5).

``method="sde"`` steps torchsde's solver classes directly. Three shortcuts cut work per step:
Milstein is taken by torchsde's Euler class (its correction term is exactly 0 for additive
noise), Euler scales its Brownian increment in place, reversible Heun gets g as a number
instead of a (B, D) tensor, and the increments are drawn by one ``torch.normal`` call. Each is
checked here against torchsde's own class stepped on the textbook protocol (a (B, D) ``g``,
new tensors everywhere), with the same Brownian draws: a mutation of the shortcuts (a dropped
term, a wrong scale, an increment scaled twice) changes the result by far more than the
tolerance.
"""
import math

import pytest
import torch
from torchsde._core.base_sde import ForwardSDE
from torchsde._core.methods import select

from scoresde import VPSDE
from scoresde.grids import time_grid
from scoresde.oracle import GaussianData
from scoresde.solvers.common import ScoreEval
from scoresde.solvers.sdeint import SDE_METHODS, reverse_sdeint

DATA = GaussianData(mu=torch.tensor([1.0, -0.5]), std=torch.tensor([0.5, 1.5]), shape=(2,))


class _Textbook:
    """The reverse SDE in s = T - t on torchsde's plain protocol: g a (B, D) tensor, no memo, no in-place."""

    def __init__(self, sde, score, T, noise_type, sde_type):
        self.sde, self.score, self.T = sde, score, T
        self.noise_type, self.sde_type = noise_type, sde_type

    def _fg(self, s):
        t = torch.tensor([self.T - float(s)], dtype=torch.float64)
        return float(self.sde.drift_coeff(t)), float(self.sde.diffusion_coeff(t)), float(t)

    def f(self, s, y):
        f, g, t = self._fg(s)
        return g * g * self.score(y, torch.full((y.shape[0],), t, dtype=torch.float64)) - f * y

    def g(self, s, y):
        return torch.full_like(y, self._fg(s)[1])

    def g_prod(self, s, y, v):
        return self.g(s, y) * v


class _Draws:
    """torchsde's BaseBrownian protocol from torch.randn: increment W and, asked, U = h (W / 2 + H)."""

    def __init__(self, shape, generator, levy):
        self.shape, self.generator, self.levy_area_approximation = shape, generator, levy

    def __call__(self, ta, tb, return_U=False, return_A=False):
        h = float(tb) - float(ta)
        w = torch.randn(self.shape, generator=self.generator) * math.sqrt(h)
        if not return_U:
            return w
        return w, h * (0.5 * w + torch.randn(self.shape, generator=self.generator) * math.sqrt(h / 12.0))


def _textbook_solve(method, x, grid, seed, noise_type):
    sde, T = VPSDE(), float(grid[0])
    sv = (T - grid).tolist()
    ref = _Textbook(sde, DATA.score_fn(sde), T, noise_type, SDE_METHODS[method])
    bm = _Draws(tuple(x.shape), torch.Generator().manual_seed(seed), "space-time" if method == "srk" else "none")
    solver = select(method, ref.sde_type)(sde=ForwardSDE(ref), bm=bm, dt=sv[1] - sv[0], adaptive=False, rtol=1e-5,
                                          atol=1e-4, dt_min=1e-5, options={})
    y, extra = x.clone(), solver.init_extra_solver_state(sv[0], x)
    for k in range(len(sv) - 1):
        y, extra = solver.step(sv[k], sv[k + 1], y, extra)
    return y


@pytest.mark.parametrize("method", ["euler", "milstein", "euler_heun", "reversible_heun", "srk", "heun", "midpoint"])
def test_adapter_equals_torchsde_textbook_step(method):
    sde = VPSDE()
    grid = time_grid(sde, 20, 1e-3, "uniform")
    x = torch.randn(256, 2, generator=torch.Generator().manual_seed(1))
    noise = "diagonal" if method == "reversible_heun" else "additive"
    ref = _textbook_solve(method, x, grid, seed=7, noise_type=noise)
    ours = reverse_sdeint(ScoreEval(DATA.score_fn(sde)), sde, x, grid, sde_method=method,
                          generator=torch.Generator().manual_seed(7))
    # float32 rounding only (reversible Heun adds g0 + g1 as numbers, then rounds once)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    assert (ours - x).abs().mean() > 0.1  # the solve moved the state: the comparison is not of two inputs


def test_milstein_shortcut_is_euler_bitwise():
    """On additive noise Milstein's step is Euler's: the same draws give the same samples, exactly."""
    sde = VPSDE()
    grid = time_grid(sde, 30, 1e-3, "uniform")
    x = torch.randn(128, 2, generator=torch.Generator().manual_seed(2))
    a, b = (reverse_sdeint(ScoreEval(DATA.score_fn(sde)), sde, x, grid, sde_method=m,
                           generator=torch.Generator().manual_seed(3)) for m in ("euler", "milstein"))
    assert torch.equal(a, b)
    ref = _textbook_solve("milstein", x, grid, seed=3, noise_type="additive")  # torchsde's own Milstein class
    torch.testing.assert_close(b, ref, rtol=1e-5, atol=1e-5)
