"""Time grids and discrete step selections (issue 2, item 3; cases C08, C09)."""
import numpy as np
import pytest
import torch

import scoresde as S


@pytest.mark.parametrize("sde", [S.VPSDE(), S.SubVPSDE(), S.VESDE(), S.VPSDE(schedule="cosine")], ids=repr)
@pytest.mark.parametrize("spacing", ["uniform", "quadratic", "logsnr", "karras"])
def test_grid_starts_at_T_ends_at_eps(sde, spacing):
    g = S.time_grid(sde, 37, spacing=spacing)
    assert g.dtype == torch.float64 and g.shape == (38,)
    assert g[0].item() == sde.T and g[-1].item() == sde.default_eps
    assert (g[1:] < g[:-1]).all()


def test_grid_spacings_are_what_they_say():
    vp = S.VPSDE()
    g = S.time_grid(vp, 10, eps=1e-3, spacing="uniform")
    assert torch.allclose(g[:-1] - g[1:], torch.full((10,), (1 - 1e-3) / 10, dtype=torch.float64))
    g = S.time_grid(vp, 10, eps=1e-3, spacing="quadratic")
    k = torch.arange(11, dtype=torch.float64)
    assert torch.allclose(g, 1e-3 + (1 - 1e-3) * (1 - k / 10) ** 2)
    g = S.time_grid(vp, 10, eps=1e-3, spacing="logsnr")
    lam = vp.log_snr(g)
    assert torch.allclose(lam[1:] - lam[:-1], (lam[-1] - lam[0]).expand(10) / 10, rtol=1e-9)


def test_grid_errors():
    vp = S.VPSDE()
    with pytest.raises(ValueError, match="steps"):
        S.time_grid(vp, 0)
    with pytest.raises(ValueError, match="eps"):
        S.time_grid(vp, 10, eps=1.0)
    with pytest.raises(ValueError, match="eps"):
        S.time_grid(vp, 10, eps=0.0)
    with pytest.raises(ValueError, match="spacing"):
        S.time_grid(vp, 10, spacing="foo")


def test_ddim_selections():
    assert S.select_timesteps(1000, 50, "leading").tolist() == list(range(0, 1000, 20))
    assert S.select_timesteps(1000, 50).tolist() == list(range(19, 1000, 20))  # trailing
    q = S.select_timesteps(1000, 10, "quadratic")  # DDIM App. D.2's quadratic gaps, trailing
    assert q.tolist() == [9, 39, 89, 159, 249, 359, 489, 639, 809, 999]
    assert S.select_timesteps(1000, [5, 1, 999]).tolist() == [1, 5, 999]
    assert S.select_timesteps(1000, "10,15,20").shape[0] == 45
    with pytest.raises(ValueError, match="steps"):
        S.select_timesteps(1000, 0)
    with pytest.raises(ValueError, match="distinct"):
        S.select_timesteps(1000, [1, 1, 2])
    with pytest.raises(ValueError, match="distinct"):
        S.select_timesteps(1000, [1000])
    with pytest.raises(ValueError, match="skip"):
        S.select_timesteps(1000, 10, "cubic")


@pytest.mark.parametrize("K", [1, 2, 7, 10, 50, 1000])
@pytest.mark.parametrize("skip", ["uniform", "quadratic"])
def test_every_selection_starts_at_the_last_step(skip, K):
    """Issue 10, item 3: the first (largest) step of every selection is N - 1, so a chain starts at
    alpha-bar[N - 1]; K = 1 is that single step (was [0]: the prior draw returned as the sample)."""
    for N in (1000, 994, 4000):  # the linear chain, the cosine one (994 steps in [0, T]), a long one
        if K > N:
            continue
        ts = S.select_timesteps(N, K, skip)
        assert int(ts.max()) == N - 1 and int(ts.min()) >= 0
        assert (ts[1:] > ts[:-1]).all()  # sorted and distinct
        if skip == "uniform":
            assert len(ts) == K
    assert S.select_timesteps(1000, 1, skip).tolist() == [999]
    assert S.space_timesteps(1000, str(K))[-1] == 999  # the respacing string "K"
    assert S.space_timesteps(1000, f"{(K + 1) // 2},{(K + 1) // 2}")[-1] == 999  # two sections


def test_leading_keeps_the_ddim_paper_stride():
    """skip="leading" is the DDIM paper's stride N // K, for reproducing published numbers: never N - 1."""
    assert S.select_timesteps(1000, 10, "leading").tolist() == list(range(0, 1000, 100))
    assert S.select_timesteps(1000, 1, "leading").tolist() == [0]
    assert S.select_timesteps(1000, 300, "leading")[-1] == 897
    assert S.space_timesteps(1000, "1") == [999] and S.space_timesteps(1000, "5,1")[-1] == 999


@pytest.mark.parametrize("K", [1, 2, 3, 7, 10, 50, 333, 999, 1000])
def test_uniform_and_leading_equal_diffusers_trailing_and_leading(K):
    diffusers = pytest.importorskip("diffusers")
    for spacing, skip in (("trailing", "uniform"), ("leading", "leading")):
        sched = diffusers.DDIMScheduler(num_train_timesteps=1000, timestep_spacing=spacing, steps_offset=0)
        sched.set_timesteps(K)
        assert sorted(sched.timesteps.tolist()) == S.select_timesteps(1000, K, skip).tolist()


def test_improved_ddpm_respacing_strings():
    assert S.space_timesteps(1000, "ddim50") == list(range(0, 1000, 20))  # never includes 999
    assert S.space_timesteps(4000, "ddim50")[-1] == 3920
    ddim7 = S.space_timesteps(1000, "ddim7")
    assert ddim7[1] == 143 and ddim7[-1] == 858
    ten = S.space_timesteps(1000, "10")
    assert ten[0] == 0 and ten[1] == 111 and ten[-1] == 999 and len(ten) == 10
    assert len(S.space_timesteps(300, [10, 15, 20])) == 45
    with pytest.raises(ValueError, match="stride"):
        S.space_timesteps(1000, "ddim999")
    with pytest.raises(ValueError, match="section"):
        S.space_timesteps(10, "20")


def test_respaced_betas_reproduce_alpha_bar_c08():
    vp = S.VPSDE()
    for spec in ("ddim50", "10,15,20", [0, 7, 500, 999]):
        ts = S.select_timesteps(1000, spec)
        b = S.respaced_betas(vp.alphas_cumprod, ts)
        np.testing.assert_allclose(torch.cumprod(1 - b, 0).numpy(), vp.alphas_cumprod[ts].numpy(), rtol=1e-10)
    # C08: stride 20 at t = 500, effective beta 1 - ab_500/ab_480 = 0.1800 vs betas[500] = 0.01006
    ts = torch.arange(0, 1000, 20)
    b = S.respaced_betas(vp.alphas_cumprod, ts)
    k = int((ts == 500).nonzero())
    assert abs(b[k].item() - 0.1800) < 5e-4 and abs(vp.discrete_betas[500].item() - 0.01006) < 1e-5
