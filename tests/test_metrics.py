"""Tests of scoresde.metrics: each checks a closed-form value."""
import math

import numpy as np
import pytest
import torch

from scoresde.metrics import sliced_wasserstein


def test_sw_1d_unequal_sizes_exact():
    # x = {0, 1}, y = {0, 0.5, 1}: quantile functions differ by 0.5 on u in (1/3, 2/3),
    # so W2^2 = 0.25 * 1/3 = 1/12 (hand computation); in 1-D sliced W2 == W2 exactly.
    x = torch.tensor([[0.0], [1.0]])
    y = torch.tensor([[0.0], [0.5], [1.0]])
    assert sliced_wasserstein(x, y, n_projections=3) == pytest.approx(math.sqrt(1 / 12), rel=1e-12)


def test_sw_1d_equal_sizes_sorted_matching():
    # equal sizes: W2^2 = mean((sort x - sort y)^2) = mean([(1-3)^2, (2-4)^2, (3-6)^2]) = 17/3
    x = torch.tensor([[3.0], [1.0], [2.0]])
    y = torch.tensor([[4.0], [6.0], [3.0]])
    assert sliced_wasserstein(x, y, n_projections=1) == pytest.approx(math.sqrt(17 / 3), rel=1e-12)


def test_sw_translation_closed_form():
    # y = x + v: every projection is a pure shift by theta.v, so SW2^2 = E[(theta.v)^2] = |v|^2/d.
    # With 20000 directions the Monte Carlo relative error of SW2^2 is ~ sqrt(2/20000)*... < 2 %.
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 4, generator=g, dtype=torch.float64)
    v = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
    expected = math.sqrt(float(v @ v) / 4)
    got = sliced_wasserstein(x, x + v, n_projections=20000, generator=g)
    assert got == pytest.approx(expected, rel=0.03)


def test_sw_zero_and_symmetric_and_seeded():
    g = torch.Generator().manual_seed(1)
    x = np.random.default_rng(0).normal(size=(50, 2))
    y = np.random.default_rng(1).normal(size=(70, 2))
    assert sliced_wasserstein(x, x, 16) == pytest.approx(0.0, abs=1e-12)
    a = sliced_wasserstein(x, y, 64, torch.Generator().manual_seed(5))
    b = sliced_wasserstein(y, x, 64, torch.Generator().manual_seed(5))
    assert a == pytest.approx(b, rel=1e-12)
    assert a > 0


def test_sw_bad_input():
    with pytest.raises(ValueError, match="same dimension"):
        sliced_wasserstein(torch.zeros(3, 2), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="NaN"):
        sliced_wasserstein(torch.tensor([[float("nan"), 0.0]]), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="n_projections"):
        sliced_wasserstein(torch.zeros(3, 2), torch.zeros(3, 2), n_projections=0)
    with pytest.raises(ValueError, match="shape"):
        sliced_wasserstein(torch.zeros(3), torch.zeros(3))
