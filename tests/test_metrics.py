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


# ---- Frechet distance ---------------------------------------------------------------------

from scoresde.metrics import (  # noqa: E402
    digit_frechet_distance, frechet_distance, frechet_from_moments, train_digit_classifier)


def test_frechet_diagonal_closed_form():
    # diagonal covariances commute: d^2 = |mu1-mu2|^2 + sum_i (s1_i - s2_i)^2
    # = (1 + 4) + ((1-2)^2 + (3-1)^2) = 10 (hand computation)
    mu1, mu2 = np.array([0.0, 0.0]), np.array([1.0, 2.0])
    c1, c2 = np.diag([1.0, 9.0]), np.diag([4.0, 1.0])
    assert frechet_from_moments(mu1, c1, mu2, c2) == pytest.approx(10.0, rel=1e-12)


def test_frechet_general_matches_scipy_sqrtm():
    # peer: Tr sqrtm(C1 C2) by scipy.linalg.sqrtm for non-commuting covariances
    import scipy.linalg
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    c1, c2 = a @ a.T + 0.1 * np.eye(5), b @ b.T + 0.1 * np.eye(5)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    ref = ((mu1 - mu2) ** 2).sum() + np.trace(c1 + c2 - 2 * scipy.linalg.sqrtm(c1 @ c2).real)
    assert frechet_from_moments(mu1, c1, mu2, c2) == pytest.approx(ref, rel=1e-9)


def test_frechet_from_samples_equals_moment_formula_and_zero_on_self():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(200, 3)), rng.normal(1.0, 2.0, size=(150, 3))
    ref = frechet_from_moments(x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False))
    assert frechet_distance(x, y) == pytest.approx(ref, rel=1e-12)
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(x[:1], y)


@pytest.fixture(scope="module")
def digits_split():
    from sklearn.datasets import load_digits
    d = load_digits()
    X, y = d.images.reshape(-1, 64) / 16 * 2 - 1, d.target
    p = np.random.default_rng(0).permutation(len(X))
    return X[p[:1400]], y[p[:1400]], X[p[1400:]], y[p[1400:]]


def test_digit_classifier_accuracy_and_determinism(digits_split):
    # a held-out accuracy >= 95 % means the features separate the classes (measured 98.9 %)
    xtr, ytr, xte, yte = digits_split
    clf = train_digit_classifier(xtr, ytr, seed=0)
    acc = (clf(torch.tensor(xte)).argmax(1).numpy() == yte).mean()
    assert acc >= 0.95
    clf2 = train_digit_classifier(xtr, ytr, seed=0)
    f = torch.tensor(xte[:20])
    assert torch.equal(clf.features(f), clf2.features(f))
    # real-vs-real distance (the floor) is far below real-vs-uniform-noise distance
    floor = digit_frechet_distance(xtr[:397], xte, clf)
    noise = digit_frechet_distance(np.random.default_rng(0).uniform(-1, 1, (397, 64)), xte, clf)
    assert floor * 20 < noise
    with pytest.raises(ValueError, match="shape"):
        digit_frechet_distance(np.zeros((5, 63)), xte, clf)
