"""scoresde.from_diffusers: diffusers UNet2DModel folders as score models (issue 15, items 1 and 4).

Offline: tiny random UNet2DModels (block_out_channels (32, 64), one layer per block, 8x8 inputs,
after diffusers' own test configs) are written with ``save_pretrained`` beside a scheduler config
(pipeline layout ``unet/`` + ``scheduler/``, or a bare UNet folder) and loaded back.

Numbers checked and where they come from:
* the SDE read from the scheduler config: N, the DDPM betas (diffusers' own table, 1e-9 in
  float32 rounding) or sigma_min / sigma_max;
* the score against the hand formula from the UNet's raw output, 1e-6: DDPM -eps / sqrt(1 -
  alpha-bar_i) at i = sde.t_to_index(t); v / x0 models through the same table; NCSN++ the raw
  output at sigma(t) (the UNet divides by sigma and centres its input itself);
* sampling against diffusers' own scheduler loops (the peer) on the same UNet and noise, float32,
  diffusers with its own float32 table: DDIMScheduler (leading spacing, steps_offset 0,
  set_alpha_to_one) and DPMSolverMultistepScheduler (dpmsolver++, order 2, lower_order_final
  False, final_sigmas_type "zero"), to 1e-5 of max(1, |x|): a random eps-UNet's DDIM sample
  reaches |x| ~ 200 (its x0 estimates are (x - sigma eps) / alpha with an eps that does not
  cancel x), where float32 leaves ~1e-7 relative; measured figures in the test docstrings.
"""
from __future__ import annotations

import math
import sys

import pytest
import torch

import scoresde
from scoresde import VESDE, VPSDE, sample
from scoresde.pretrained import ve_from_config, vp_from_config

diffusers = pytest.importorskip("diffusers")
from diffusers import (DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler,  # noqa: E402
                       ScoreSdeVeScheduler, UNet2DModel)

SHAPE = (2, 3, 8, 8)
PREDICTION = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}


def ddpm_unet(seed=0, out_channels=3):
    torch.manual_seed(seed)
    return UNet2DModel(sample_size=8, in_channels=3, out_channels=out_channels, block_out_channels=(32, 64),
                       layers_per_block=1, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8,
                       attention_head_dim=8).eval()


def ncsnpp_unet(seed=0):
    """diffusers' NCSNppModelTesterConfig, reduced to two levels."""
    torch.manual_seed(seed)
    return UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(32, 64), layers_per_block=1,
                       time_embedding_type="fourier", norm_eps=1e-6, mid_block_scale_factor=math.sqrt(2.0),
                       norm_num_groups=None, center_input_sample=True,
                       down_block_types=("SkipDownBlock2D", "AttnSkipDownBlock2D"),
                       up_block_types=("AttnSkipUpBlock2D", "SkipUpBlock2D")).eval()


def save_pipeline(root, unet, scheduler):
    unet.save_pretrained(root / "unet")
    scheduler.save_pretrained(root / "scheduler")
    return root


@pytest.fixture(scope="module")
def ddpm_folders(tmp_path_factory):
    """{prediction_type: (pipeline folder, unet, scheduler)}, linear betas, clip off."""
    out = {}
    for k, ptype in enumerate(PREDICTION):
        unet = ddpm_unet(seed=k)
        sched = DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                              clip_sample=False, prediction_type=ptype)
        out[ptype] = (save_pipeline(tmp_path_factory.mktemp(f"ddpm_{ptype}"), unet, sched), unet, sched)
    return out


@pytest.fixture(scope="module")
def ve_folder(tmp_path_factory):
    unet = ncsnpp_unet()
    sched = ScoreSdeVeScheduler(num_train_timesteps=200, sigma_min=0.01, sigma_max=50.0)
    return save_pipeline(tmp_path_factory.mktemp("ncsnpp"), unet, sched), unet, sched


def xt(seed=1, shape=SHAPE):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


# ---- the SDE and the score ------------------------------------------------------------------

def test_ddpm_folder_gives_the_discrete_vp_model_and_its_table(ddpm_folders):
    root, _, sched = ddpm_folders["epsilon"]
    model = scoresde.from_diffusers(root)
    sde = model.sde
    assert isinstance(sde, VPSDE) and sde.N == 1000 and sde.schedule.name == "linear"
    assert sde.beta_min == pytest.approx(0.1) and sde.beta_max == pytest.approx(20.0)
    assert (model.prediction, model.time_input, model.discrete, model.learn_variance) == ("eps", "index", True, False)
    assert model.pretrained_info["kind"] == "ddpm" and model.pretrained_info["sde_from"] == "scheduler"
    assert float((sde.discrete_betas.float() - sched.betas).abs().max()) < 1e-8
    assert float((sde.alphas_cumprod.float() - sched.alphas_cumprod).abs().max()) < 1e-6


@pytest.mark.parametrize("ptype", list(PREDICTION))
def test_ddpm_score_is_the_hand_formula_from_the_raw_output(ddpm_folders, ptype):
    """score = -eps / sqrt(1 - ab_i) at i = t_to_index(t), eps from the raw output (eps; v; x0): 1e-6."""
    root, unet, _ = ddpm_folders[ptype]
    model = scoresde.from_diffusers(root)
    assert model.prediction == PREDICTION[ptype]
    sde, x, t = model.sde, xt(), torch.tensor([0.05, 0.731])
    i = sde.t_to_index(t)
    assert i.tolist() == [49, 730]
    ab = sde.alphas_cumprod[i].reshape(-1, 1, 1, 1)
    a, s = ab.sqrt(), (1 - ab).sqrt()
    with torch.no_grad():
        out = unet(x, i).sample.double()
        score = model(x, t).double()
    eps = {"epsilon": out, "v_prediction": s * x + a * out, "sample": (x - a * out) / s}[ptype]
    torch.testing.assert_close(score, -eps / s, rtol=0, atol=1e-6 * max(1.0, float((eps / s).abs().max())))


def test_ncsnpp_folder_gives_the_ve_score_model(ve_folder):
    """Fourier UNet: VESDE(sigma_min, sigma_max, N) of the ScoreSdeVeScheduler config; score = unet(x, sigma(t)).sample
    (already divided by sigma, input centred once by the UNet): 1e-6."""
    root, unet, _ = ve_folder
    model = scoresde.from_diffusers(root)
    sde = model.sde
    assert isinstance(sde, VESDE) and (sde.sigma_min, sde.sigma_max, sde.N) == (0.01, 50.0, 200)
    assert (model.prediction, model.time_input, model.discrete) == ("score", "sigma", False)
    assert model.pretrained_info["kind"] == "ncsnpp"
    x, t = xt().abs().clamp(max=1), torch.tensor([0.1, 0.9])
    sigma = sde.sigma(t).float()
    with torch.no_grad():
        ref = unet(x, sigma).sample
        score = model(x, t)
        assert not torch.allclose(ref, unet(2 * x - 1, sigma).sample, atol=1e-3)  # centring matters here
    torch.testing.assert_close(score, ref, rtol=0, atol=1e-6 * max(1.0, float(ref.abs().max())))


def test_bare_unet_folder_with_scheduler_config_beside_it(tmp_path, ddpm_folders):
    _, unet, _ = ddpm_folders["epsilon"]
    unet.save_pretrained(tmp_path)
    DDPMScheduler(num_train_timesteps=500, beta_start=2e-4, beta_end=0.04,
                  prediction_type="v_prediction").save_pretrained(tmp_path)
    model = scoresde.from_diffusers(tmp_path)
    assert model.sde.N == 500 and model.sde.beta_min == pytest.approx(0.1) and model.sde.beta_max == pytest.approx(20.0)
    assert model.prediction == "v"


def test_unet_folder_of_a_pipeline_finds_the_sibling_scheduler(ddpm_folders):
    root, _, _ = ddpm_folders["sample"]
    model = scoresde.from_diffusers(root / "unet")
    assert model.prediction == "x0" and model.pretrained_info["scheduler_source"].endswith("scheduler_config.json")


def test_instance_defaults_warn_and_arguments_win(ddpm_folders, ve_folder):
    _, unet, _ = ddpm_folders["epsilon"]
    with pytest.warns(UserWarning, match="DDPMScheduler defaults"):
        model = scoresde.from_diffusers(unet)
    assert model.pretrained_info["sde_from"] == "defaults" and model.sde.config() == VPSDE().config()
    with pytest.warns(UserWarning, match="ScoreSdeVeScheduler defaults"):
        ve = scoresde.from_diffusers(ve_folder[1])
    assert (ve.sde.sigma_min, ve.sde.sigma_max, ve.sde.N) == (0.01, 1348.0, 2000)
    sde = VPSDE(beta_min=0.2, beta_max=10.0, N=400)
    model = scoresde.from_diffusers(unet, sde, scheduler=DDPMScheduler(prediction_type="v_prediction"))
    assert model.sde is sde and model.prediction == "v" and model.pretrained_info["sde_from"] == "argument"
    model = scoresde.from_diffusers(unet, scheduler={"num_train_timesteps": 100, "beta_schedule": "squaredcos_cap_v2"})
    assert model.sde.N == 100 and model.sde.schedule.name == "cosine"


def test_scheduler_configs_map_to_sdes_or_named_errors():
    cos = DDPMScheduler(beta_schedule="squaredcos_cap_v2")
    sde = vp_from_config(dict(cos.config))
    assert sde.schedule.name == "cosine" and sde.N == 1000
    assert float((sde.discrete_betas.float() - cos.betas).abs().max()) < 1e-6  # diffusers' cosine table, max_beta 0.999
    ve = ve_from_config(dict(ScoreSdeVeScheduler().config))
    assert (ve.sigma_min, ve.sigma_max, ve.N) == (0.01, 1348.0, 2000)
    with pytest.raises(ValueError, match="scaled_linear"):
        vp_from_config(dict(DDPMScheduler(beta_schedule="scaled_linear").config))
    with pytest.raises(ValueError, match="trained_betas"):
        vp_from_config({"trained_betas": [0.1, 0.2]})
    with pytest.raises(ValueError, match="VE scheduler config"):
        vp_from_config(dict(ScoreSdeVeScheduler().config))
    with pytest.raises(ValueError, match="DDPM-family"):
        ve_from_config(dict(DDPMScheduler().config))


def test_named_errors(tmp_path, ddpm_folders):
    _, unet, _ = ddpm_folders["epsilon"]
    with pytest.raises(ValueError, match="prediction_type"):
        scoresde.from_diffusers(unet, scheduler={"prediction_type": "flow_prediction"})
    with pytest.raises(FileNotFoundError, match="neither config.json"):
        scoresde.from_diffusers(tmp_path)
    with pytest.raises(FileNotFoundError, match="no folder"):
        scoresde.from_diffusers(str(tmp_path / "missing"))
    with pytest.raises(TypeError, match="from_pretrained keyword"):
        scoresde.from_diffusers(unet, torch_dtype=torch.float16)
    with pytest.raises(TypeError, match="unet must be"):
        scoresde.from_diffusers(3)


def test_learned_variance_unet_gets_learn_variance(ddpm_folders):
    model = scoresde.from_diffusers(ddpm_unet(out_channels=6), scheduler=DDPMScheduler(variance_type="learned_range"))
    assert model.learn_variance
    assert model(xt(), torch.tensor([0.5, 0.5])).shape == SHAPE


def test_hub_id_goes_to_from_pretrained(monkeypatch, ddpm_folders):
    """A hub id is passed to from_pretrained (pipeline layout first) and its scheduler config read (offline stand-ins)."""
    _, unet, sched = ddpm_folders["v_prediction"]
    calls = []

    def fake_unet(cls, name, subfolder=None, **kw):
        calls.append((name, subfolder))
        return unet

    def fake_config(cls, name, subfolder=None, **kw):
        calls.append(("config", subfolder))
        return dict(sched.config)

    monkeypatch.setattr(UNet2DModel, "from_pretrained", classmethod(fake_unet))
    monkeypatch.setattr(DDPMScheduler, "load_config", classmethod(fake_config))
    model = scoresde.from_diffusers("org/tiny-ddpm")
    assert calls == [("org/tiny-ddpm", "unet"), ("config", "scheduler")]
    assert model.prediction == "v" and model.pretrained_info["scheduler_source"] == "hub org/tiny-ddpm"


def test_missing_diffusers_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)
    with pytest.raises(ImportError, match=r"scoresde\[pretrained\]"):
        scoresde.from_diffusers("anything")


# ---- sampling against diffusers' loops ------------------------------------------------------

def _diffusers_loop(unet, sched, steps, x_T):
    sched.set_timesteps(steps)
    x = x_T.clone()
    with torch.no_grad():
        for t in sched.timesteps:
            x = sched.step(unet(x, t).sample, t, x).prev_sample
    return x, sorted(int(t) for t in sched.timesteps)


def _close(x, ref, rel=1e-5):
    err = float((x - ref).abs().max())
    assert err <= rel * max(1.0, float(ref.abs().max())), (err, float(ref.abs().max()))


@pytest.mark.parametrize("ptype", list(PREDICTION))
def test_ddim_equals_diffusers_ddim_scheduler(ddpm_folders, ptype):
    """sample(method='ddim', steps=10, skip='leading') == DDIMScheduler.from_config(the folder's config) loop
    (leading, steps_offset 0, set_alpha_to_one, clip off), same x_T, float32 (measured max |diff| 7.6e-5 on
    max |x| = 223 for eps; 1.4e-6 on 2.3 for v; 4.1e-6 on 1.1 for x0)."""
    root, unet, sched = ddpm_folders[ptype]
    model = scoresde.from_diffusers(root)
    ddim = DDIMScheduler.from_config(sched.config)
    assert (ddim.config.timestep_spacing, ddim.config.steps_offset, ddim.config.set_alpha_to_one) == ("leading", 0, True)
    x_T = xt(seed=3)
    ref, ts = _diffusers_loop(unet, ddim, 10, x_T)
    assert ts == list(range(0, 1000, 100))
    with torch.no_grad():
        x = sample(model, model.sde, SHAPE, method="ddim", steps=10, skip="leading", x_T=x_T)
    _close(x, ref)


@pytest.mark.parametrize("ptype", ["epsilon", "v_prediction"])
def test_dpmpp_2m_equals_diffusers_dpmsolver_multistep(ddpm_folders, ptype):
    """sample(method='dpmpp_2m', alphas='table', steps=diffusers' timesteps, lower_order_final=False) ==
    DPMSolverMultistepScheduler(dpmsolver++, order 2, lower_order_final False, final_sigmas_type 'zero'), 10 steps,
    float32 (measured max |diff| 2.1e-4 on max |x| = 470 for eps; 9.5e-7 on 3.1 for v)."""
    root, unet, sched = ddpm_folders[ptype]
    model = scoresde.from_diffusers(root)
    dpm = DPMSolverMultistepScheduler.from_config(sched.config, algorithm_type="dpmsolver++", solver_order=2,
                                                  lower_order_final=False, final_sigmas_type="zero")
    x_T = xt(seed=4)
    ref, ts = _diffusers_loop(unet, dpm, 10, x_T)
    with torch.no_grad():
        x, info = sample(model, model.sde, SHAPE, method="dpmpp_2m", steps=ts, x_T=x_T, alphas="table",
                         lower_order_final=False, return_info=True)
    assert info.nfe == len(ts) == 10
    _close(x, ref)


@pytest.mark.parametrize("method, kw", [("pc", {"snr": 0.15}), ("euler_maruyama", {})])
def test_ve_short_sample_is_finite(ve_folder, method, kw):
    root, _, _ = ve_folder
    model = scoresde.from_diffusers(root)
    with torch.no_grad():
        x, info = sample(model, model.sde, SHAPE, method=method, steps=5, return_info=True,
                         generator=torch.Generator().manual_seed(0), **kw)
    assert x.shape == SHAPE and bool(torch.isfinite(x).all()) and info.nfe >= 5
