"""Regressions from a break-test of controllable generation (guidance, inpainting, colorization).

1. A classifier-guided score keeps its graph to x when the caller differentiates it, so the
   likelihood code takes it unchanged: with the exact posterior of a two-component mixture at
   scale 1 the guided PF-ODE is component y's: delta_logp plus that Gaussian's log p_T(z) is its
   log p_eps(x) (closed form).
2. Constrained sampling with ``method="ode"`` and a fixed-grid ``ode_method`` takes ``steps``
   steps in all (it took 20 pieces of steps // 20, at least 1 each: NFE 21 for steps 5 and 30).
3. inpaint / colorize name a device this torch cannot use and refuse 'meta' tensors (y, mask,
   x_T) before torch does; RePaint's "nothing is resampled" check also holds for steps=None.
4. Guidance arguments: integer logits, NumPy scalars, label shapes and the classifier-free
   null label give messages about what the user passed.
5. The CLI reads 256-level images into a pretrained model's range ([0, 1] for the reference's VE
   configs, whose net maps x to 2 x - 1 itself), not always [-1, 1].
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch

from scoresde import VPSDE, classifier_free_guidance, classifier_guidance, inpaint, log_likelihood
from scoresde.oracle import GaussianData, GaussianMixture

MIX = GaussianMixture(weights=[0.6, 0.4], means=[[1.5, 0.5], [-1.0, -1.0]], stds=[0.3, 0.4])
DATA = Path(__file__).resolve().parent / "data" / "reference"


@pytest.mark.parametrize("y", [0, 1])
def test_likelihood_of_the_guided_score_is_the_component_density(y):
    sde = VPSDE()
    guided = classifier_guidance(MIX.score_fn(sde), MIX.logits_fn(sde), y, scale=1.0)
    x = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 0.5 + MIX.means[y]
    r = log_likelihood(guided, sde, x, divergence="exact", rtol=1e-7, atol=1e-7, eps=1e-5)
    comp = MIX.component(y)
    exact = comp.logp(sde, x, 1e-5)
    # delta_logp plus the component's own density at T (the prior N(0, I) differs from it by ~0.03 nats)
    torch.testing.assert_close(r.delta_logp + comp.logp(sde, r.z, sde.T), exact, rtol=0, atol=1e-4)
    # the unguided mixture's density differs by far more: the test can fail
    assert float((MIX.logp(sde, x, 1e-5) - exact).abs().max()) > 0.1
    # inside the samplers (no grad) the guided score stays detached
    with torch.no_grad():
        assert not guided(x.requires_grad_(True), torch.full((6,), 0.5, dtype=torch.float64)).requires_grad


@pytest.mark.parametrize("steps", [5, 30])
def test_inpaint_with_a_fixed_grid_ode_takes_the_steps_asked_for(steps):
    sde = VPSDE()
    data = GaussianData(mu=0.0, std=1.0, shape=(2,))
    _, info = inpaint(data.score_fn(sde), sde, torch.zeros(4, 2), torch.tensor([1.0, 0.0]), method="ode",
                      ode_method="euler", steps=steps, return_info=True)
    assert info.nfe == steps + 1  # steps Euler evaluations and Tweedie's step (denoise=True)
    _, info = inpaint(data.score_fn(sde), sde, torch.zeros(4, 2), torch.tensor([1.0, 0.0]), method="ode",
                      ode_method="rk4", steps=steps, return_info=True, denoise=False)
    assert info.nfe == 4 * steps


def test_constrained_devices_meta_and_repaint_defaults():
    sde = VPSDE()
    score = GaussianData(mu=0.0, std=1.0, shape=(2,)).score_fn(sde)
    y, m = torch.zeros(4, 2), torch.tensor([1.0, 0.0])
    with pytest.raises(ValueError, match="device 'bogus'|not usable"):
        inpaint(score, sde, y, m, method="euler_maruyama", steps=3, device="bogus")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device 'cuda' is not usable here"):
            inpaint(score, sde, y, m, method="euler_maruyama", steps=3, device="cuda")
    for kw in (dict(y=torch.zeros(4, 2, device="meta"), mask=m), dict(y=y, mask=m.to("meta")),
               dict(y=y, mask=m, x_T=torch.zeros(4, 2, device="meta"))):
        yy, mm = kw.pop("y"), kw.pop("mask")
        with pytest.raises(ValueError, match="meta"):
            inpaint(score, sde, yy, mm, method="pc", steps=3, **kw)
    with pytest.raises(ValueError, match="meta"):
        inpaint(score, sde, y, m, method="pc", steps=3, device="meta")
    with pytest.raises(ValueError, match=r"jump_length=1000 must be smaller than steps=None \(sde.N = 1000\)"):
        inpaint(score, sde, y, m, method="pc", jump_length=1000, jump_n_sample=2)


def test_guidance_argument_messages():
    sde = VPSDE()
    score, logits = MIX.score_fn(sde), MIX.logits_fn(sde)
    x, t = torch.randn(4, 2, dtype=torch.float64), torch.full((4,), 0.5, dtype=torch.float64)
    with pytest.raises(TypeError, match="floating-point logits"):
        classifier_guidance(score, lambda x, t: logits(x, t).long(), 0)(x, t)
    ref = classifier_guidance(score, logits, 1, scale=2.0)(x, t)
    torch.testing.assert_close(classifier_guidance(score, logits, np.int64(1), scale=np.float32(2.0))(x, t), ref)
    with pytest.raises(TypeError, match="scale must be a real number"):
        classifier_guidance(score, logits, 0, scale="2")
    with pytest.raises(ValueError, match="finite"):
        classifier_guidance(score, logits, 0, scale=np.float64("inf"))
    with pytest.raises(ValueError, match=r"shape \(2, 2\)"):
        classifier_guidance(score, logits, torch.zeros(2, 2, dtype=torch.long))(x, t)
    with pytest.raises(ValueError, match="meta"):
        classifier_guidance(score, logits, torch.zeros(4, dtype=torch.long, device="meta"))(x, t)

    class Cond:  # a conditional model with a null label 3 (3 classes)
        null_class = 3

        def __call__(self, x, t, y=None):
            return -x

    with pytest.raises(ValueError, match=r"y must lie in \[0, 2\].*got values in \[-1, -1\]"):
        classifier_free_guidance(Cond(), -1, 1.0)
    with pytest.raises(ValueError, match=r"got values in \[0, 3\]"):
        classifier_free_guidance(Cond(), torch.tensor([0, 3, 1, 2]), 1.0)
    torch.testing.assert_close(classifier_free_guidance(Cond(), 2, 1.0)(x, t), -x)


def test_cli_reads_levels_in_a_pretrained_models_range():
    from scoresde.cli.pretrained import in_model_range, load_model
    from scoresde.dataset import Dataset, levels_to_float

    io = torch.load(DATA / "ve_ncsnpp_io.pth", weights_only=True)
    ov = [f"{k}={v!r}" for k, v in io["overrides"].items()]
    ns = argparse.Namespace(diffusers=None, reference_ckpt=str(DATA / "ve_ncsnpp.pth"), config=io["config"],
                            override=ov, no_ema=False, device="cpu")
    _, _, cfg, _ = load_model(ns)
    assert cfg["data"]["data_range"] == [0.0, 1.0]
    ns.reference_ckpt, ns.config = str(DATA / "vp_ddpmpp.pth"), torch.load(DATA / "vp_ddpmpp_io.pth")["config"]
    ns.override = [f"{k}={v!r}" for k, v in torch.load(DATA / "vp_ddpmpp_io.pth")["overrides"].items()]
    assert load_model(ns)[2]["data"]["data_range"] == [-1.0, 1.0]
    lv = torch.randint(0, 256, (2, 3, 4, 4), generator=torch.Generator().manual_seed(0))
    ds = Dataset(levels_to_float(lv, 256), (-1.0, 1.0), levels=lv, num_levels=256)
    moved = in_model_range(ds, cfg)
    assert moved.data_range == (0.0, 1.0) and torch.equal(moved.levels, lv)
    assert in_model_range(ds, {"data": {"data_range": [-1.0, 1.0]}}) is ds
