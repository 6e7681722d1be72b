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
    # float32 rounding only (our drift is one fused add: -f y + g^2 s)
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


METHODS = tuple(SDE_METHODS)


@pytest.mark.parametrize("method", METHODS)
def test_score_may_write_to_its_time(method):
    """Each score call gets its own t: writing to it neither fails nor moves the times of later calls."""
    sde = VPSDE()
    base = DATA.score_fn(sde)
    grid = time_grid(sde, 6, 1e-3, "uniform")
    x = torch.randn(32, 2, generator=torch.Generator().manual_seed(4))
    writes = lambda x_, t: base(x_, t.mul_(0.5).mul_(2.0).clamp_(min=0.0))  # noqa: E731  (in place, same values)
    shrinks = lambda x_, t: base(x_, t.mul_(0.9) / 0.9)  # noqa: E731  (a later call would see 0.9 t if t were shared)
    runs = [reverse_sdeint(ScoreEval(fn), sde, x, grid, sde_method=method, generator=torch.Generator().manual_seed(5))
            for fn in (base, writes, shrinks)]
    torch.testing.assert_close(runs[1], runs[0], rtol=0, atol=0)
    torch.testing.assert_close(runs[2], runs[0], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("shape", [(1, 2), (1, 1, 4, 4)])
def test_one_generator_or_a_list_of_one_give_the_same_sample(method, shape):
    """Batch 1: generator=g and generator=[g] draw the same noise (small states included, < 16 elements)."""
    from scoresde import sample

    sde = VPSDE()
    score = (DATA if len(shape) == 2 else GaussianData(mu=0.0, std=0.5, shape=shape[1:])).score_fn(sde)
    a, b = (sample(score, sde, shape, method="sde", sde_method=method, steps=8, generator=g)
            for g in (torch.Generator().manual_seed(6), [torch.Generator().manual_seed(6)]))
    assert torch.equal(a, b)
