"""Data statistics that catch silently wrong numbers (issue 10, item 7): the level count of
bits/dim data and VE's sigma_max against the data (Song & Ermon 2020, Technique 1).

Numbers checked: suggest_sigma_max equals the brute-force maximum of all pairwise distances
(torch.cdist, float64) for n <= 2000 and is a lower bound, equal on Gaussian data, above;
prior_kl equals the closed-form per-dimension KL of N(mu, v + s^2) against N(0, s^2).
"""
import math
import warnings

import pytest
import torch

import scoresde
from scoresde import VESDE, VPSDE
from scoresde._levels import LevelsWarning, check_levels
from scoresde.data import digits
from scoresde.data_stats import (PRIOR_KL_TOL, PriorMismatchWarning, check_prior, prior_kl, recommended_sigma_max,
                                 suggest_sigma_max)


# ------------------------------------------------------------------------------- check_levels (7a)
def test_digits_with_256_levels_warn_and_with_17_do_not():
    levels = digits("test").levels  # 297 images, values 0..16
    with pytest.warns(LevelsWarning, match=r"only 17 distinct values in a batch of 297 but num_levels=256"):
        msg = check_levels(levels, 256)
    assert "true number of levels" in msg and "\n" not in msg
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_levels(levels, 17) is None
        assert check_levels(levels, 64) is None  # 17 >= 64 / 4: not flagged
        assert check_levels(levels[:63], 256) is None  # too small a batch to tell
        assert check_levels(levels, 256, warn=False).startswith("the data use only 17")


def test_check_levels_threshold_and_dtypes():
    x = torch.arange(64 * 10).remainder(63).reshape(64, 10)  # 63 distinct values
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_levels(x, 252) is None  # 63 >= 252 / 4
    with pytest.warns(LevelsWarning, match="63 distinct"):
        check_levels(x.to(torch.uint8), 256)
    with pytest.warns(LevelsWarning, match="2 distinct"):
        check_levels(torch.zeros(64, 3).bernoulli_(0.5), 256)  # integer-valued floats count too


# ---------------------------------------------------------------------------- sigma_max (7b)
def test_suggest_sigma_max_is_the_largest_pairwise_distance():
    g = torch.Generator().manual_seed(0)
    for x in (torch.randn(300, 2, generator=g) * 3 + 7, torch.rand(1500, 1, 8, 8, generator=g)):
        flat = x.reshape(len(x), -1).double()
        exact = float(torch.cdist(flat, flat, compute_mode="donot_use_mm_for_euclid_dist").max())
        assert suggest_sigma_max(x) == pytest.approx(exact, rel=1e-12)
    ds = digits("train")
    assert scoresde.suggest_sigma_max(ds) == pytest.approx(9.0359, abs=1e-4)
    assert suggest_sigma_max(torch.ones(5, 3)) == 0.0
    with pytest.raises(ValueError, match="at least 2 samples"):
        suggest_sigma_max(torch.ones(1, 3))
    with pytest.raises(ValueError, match="NaN"):
        suggest_sigma_max(torch.tensor([[0.0], [float("nan")]]))


def test_suggest_sigma_max_on_large_data_uses_a_subset_that_keeps_the_extremes():
    x = torch.randn(5000, 3, generator=torch.Generator().manual_seed(0))
    full = suggest_sigma_max(x, max_points=5000)
    sub = suggest_sigma_max(x)  # 2000 of 5000: the 1000 farthest from the mean and 1000 random
    assert sub <= full and sub == pytest.approx(full, rel=1e-9)
    assert suggest_sigma_max(x, seed=1) == sub  # the far points decide it here, whatever the seed


def test_prior_kl_closed_form():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4000, 3, generator=g) * torch.tensor([0.5, 1.0, 2.0]) + torch.tensor([3.0, 0.0, -1.0])
    s = 4.0
    mu, v = x.double().mean(0), x.double().var(0, unbiased=False)
    q = (v + s * s) / (s * s)
    want = float((0.5 * (q + mu**2 / s**2 - 1 - torch.log(q))).mean())
    assert prior_kl(VESDE(0.01, s), x) == pytest.approx(want, rel=1e-10)
    # VP at T = 1: alpha-bar(1) = exp(-10.05): the terminal marginal is the prior to ~1e-5
    assert prior_kl(VPSDE(), x) < 1e-3


def test_recommended_sigma_max_covers_off_centre_data():
    g = torch.Generator().manual_seed(2)
    centred = torch.randn(1000, 2, generator=g)
    assert recommended_sigma_max(centred) == suggest_sigma_max(centred)  # Technique 1 suffices
    off = centred + 100.0  # pairwise distances of ~7, but 141 from the prior's mean
    d = suggest_sigma_max(off)
    assert d < 10 and prior_kl(VESDE(0.01, d), off) > 50  # Technique 1 alone: KL ~ 100 nats / dim
    s = recommended_sigma_max(off)
    assert prior_kl(VESDE(0.01, s), off) == pytest.approx(PRIOR_KL_TOL, rel=1e-4)
    assert prior_kl(VESDE(0.01, s * 0.99), off) > PRIOR_KL_TOL


def test_check_prior_warns_with_the_measured_kl():
    # the case: sigma_max = 1 on data of norm ~28 in D = 3072
    x = torch.rand(256, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    assert 25 < float(x.reshape(256, -1).norm(dim=1).mean()) < 35
    sde = VESDE(0.01, 1.0)
    kl = prior_kl(sde, x)
    with pytest.warns(PriorMismatchWarning, match=r"sigma_max 1 is below the largest pairwise data distance") as rec:
        msg = check_prior(sde, x)
    assert f"{kl:.3g} nats per dimension" in msg and f"{kl * 3072:.4g} nats per sample" in msg
    assert str(rec[0].message) == msg and "\n" not in msg
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_prior(VESDE(0.01, recommended_sigma_max(x)), x) is None
        assert check_prior(VPSDE(), x) is None  # VE only
    off = torch.randn(500, 2, generator=torch.Generator().manual_seed(4)) + 100.0
    with pytest.warns(PriorMismatchWarning, match=r"distance from the prior's mean 0 \(mean norm 141"):
        check_prior(VESDE(0.01, suggest_sigma_max(off) * 1.5), off)
    with warnings.catch_warnings():  # evaluation data: only the KL counts
        warnings.simplefilter("error")
        assert check_prior(VESDE(0.01, recommended_sigma_max(x) * 0.9), x, distance=False) is None
    assert math.isfinite(kl)
