"""Score networks: shapes, zero init, time embeddings (case C09), parameter counts, configs, bad input."""
import json
import math

import pytest
import torch

import scoresde
from scoresde.models import MLP, GaussianFourierEmbedding, SinusoidalEmbedding, UNet, model_from_config, small_unet
from scoresde.score import network_time

torch.set_num_threads(1)

SMALL = dict(ch=16, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(8,))


def _nparams(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("side", [8, 16, 32])
@pytest.mark.parametrize("learn_variance", [False, True])
def test_unet_shapes_and_zero_init(side, learn_variance):
    """Issue 5: output shape (B, C, s, s) at s = 8, 16, 32, 2C channels with learn_variance, and
    outputs at init exactly 0 (zero-initialised output conv); non-zero once that conv is perturbed."""
    torch.manual_seed(0)
    net = UNet(in_channels=3, image_size=side, **SMALL, learn_variance=learn_variance)
    x = torch.randn(2, 3, side, side)
    with torch.no_grad():
        out = net(x, torch.tensor([3.0, 700.0]))
        assert out.shape == (2, 6 if learn_variance else 3, side, side)
        assert float(out.abs().max()) <= 1e-6
        net.conv_out.weight.normal_(0, 0.1)
        out = net(x, torch.tensor([3.0, 700.0]))
    assert float(out.abs().max()) > 1e-2 and torch.isfinite(out).all()


def test_unet_time_and_class_conditioning_reach_output():
    """Once trained weights are non-zero, changing the time or the class label changes the output
    (the embedding reaches every block); a scalar time is broadcast to the batch."""
    torch.manual_seed(0)
    net = UNet(in_channels=1, image_size=8, ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,),
               num_classes=3)
    for p in net.parameters():
        if p.dim() > 1:
            torch.nn.init.normal_(p, 0, 0.2)
    x = torch.randn(2, 1, 8, 8)
    y = torch.tensor([0, 2])
    a = net(x, torch.tensor([10.0, 10.0]), y=y)
    b = net(x, torch.tensor([500.0, 500.0]), y=y)
    c = net(x, torch.tensor([10.0, 10.0]), y=torch.tensor([1, 1]))
    assert float((a - b).abs().max().detach()) > 1e-3 and float((a - c).abs().max().detach()) > 1e-3
    assert torch.allclose(net(x, 10.0, y=y), a)


def test_mlp_shapes_and_zero_init():
    """MLP: (B, D) -> (B, D), (B, 2D) with learn_variance, exactly 0 at init."""
    m = MLP(3, hidden=32, num_layers=2, embed_dim=16)
    assert m(torch.randn(5, 3), torch.rand(5) * 999).abs().max() == 0
    assert MLP(3, hidden=32, learn_variance=True)(torch.randn(5, 3), torch.rand(5)).shape == (5, 6)


def _rel_change(emb, sde, kind, t):
    e0 = emb(network_time(sde, t, kind))
    e1 = emb(network_time(sde, t + 1e-3, kind))
    return ((e1 - e0).norm(dim=1) / e0.norm(dim=1)).min().item()


C09_CASES = [("label", scoresde.VPSDE()), ("label", scoresde.SubVPSDE()), ("index", scoresde.VPSDE()),
             ("index", scoresde.VPSDE(N=4000)), ("sigma", scoresde.VESDE()), ("t", scoresde.VPSDE())]


@pytest.mark.parametrize("embedding", [SinusoidalEmbedding, GaussianFourierEmbedding])
@pytest.mark.parametrize("dim", [32, 128])
def test_c09_embedding_not_flat(embedding, dim):
    """Case C09: the embedding of the network time at t and t + 1e-3 differs by more than 5 % of its
    norm, for every t in [1e-5, 1 - 1e-3] and every time input (label 999t, index at N = 1000 and
    4000, VE sigma, raw t). Measured minima: sinusoidal >= 0.15, fourier >= 0.10."""
    t = torch.linspace(1e-5, 1 - 1e-3, 1001, dtype=torch.float64)
    emb = embedding(dim)
    for kind, sde in C09_CASES:
        assert _rel_change(emb, sde, kind, t) > 0.05, (kind, sde)


def test_c09_threshold_catches_ddpm_band_on_raw_t():
    """The same check fails for DDPM's own frequency band [1e-4, 1] fed raw t or sigma (the C09
    symptom: relative change ~2e-4), so the threshold above can fail."""
    t = torch.linspace(1e-5, 1 - 1e-3, 1001, dtype=torch.float64)
    ddpm_band = SinusoidalEmbedding(128, max_freq=1.0)
    assert _rel_change(ddpm_band, scoresde.VPSDE(), "t", t) < 1e-3
    assert _rel_change(ddpm_band, scoresde.VESDE(), "sigma", t) < 1e-3


def test_sinusoidal_with_ddpm_band_matches_diffusers():
    """Peer: with max_freq = 1 the sinusoidal embedding is DDPM's, diffusers'
    get_timestep_embedding(flip_sin_to_cos=False, downscale_freq_shift=1), to float32 precision."""
    from diffusers.models.embeddings import get_timestep_embedding

    t = torch.tensor([0.0, 1.0, 17.0, 499.5, 999.0])
    ours = SinusoidalEmbedding(64, max_freq=1.0)(t)
    ref = get_timestep_embedding(t, 64, flip_sin_to_cos=False, downscale_freq_shift=1)
    assert torch.allclose(ours, ref, atol=2e-4)


def test_fourier_embedding_is_reference_formula_of_log_sigma():
    """Reference code (layerspp.GaussianFourierProjection on log sigma): [sin(2 pi W log s), cos(...)],
    W fixed, std 16 (sample std of 512 draws within 10 %), stored in the state dict."""
    emb = GaussianFourierEmbedding(1024)
    sig = torch.tensor([0.01, 1.0, 50.0])
    arg = 2 * math.pi * torch.log(sig.double())[:, None] * emb.W.double()[None]
    assert torch.allclose(emb(sig), torch.cat([arg.sin(), arg.cos()], 1).float(), atol=1e-6)
    assert abs(emb.W.std().item() / 16 - 1) < 0.1
    assert "W" in emb.state_dict()


def test_documented_parameter_counts():
    """The parameter counts written in the UNet / MLP docstrings (DDPM's CIFAR-10 net is 35.7 M,
    Ho et al. 2020, App. B)."""
    assert _nparams(UNet()) == 35_741_697
    assert _nparams(UNet(in_channels=3)) == 35_746_307
    assert _nparams(UNet(ch=64, ch_mult=(1, 2, 2))) == 6_469_889
    assert _nparams(UNet(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), image_size=16)) == 701_345
    assert _nparams(MLP(2)) == 429_058


def test_small_unet_is_the_cli_and_demo_network():
    # the demo's 8x8 digit UNet: ch 16, ch_mult (1, 2), one res block, no attention: 163,985 parameters
    # (164,689 with 10 classes: 11 label rows of 4 ch = 64); (1, 2, 2) and 2 blocks above side 16
    net = small_unet(1, 8)
    assert (net.ch, net.ch_mult, net.num_res_blocks, net.attn_resolutions) == (16, (1, 2), 1, ())
    assert sum(p.numel() for p in net.parameters()) == 163985
    assert sum(p.numel() for p in small_unet(1, 8, num_classes=10).parameters()) == 163985 + 11 * 64
    assert (small_unet(3, 16).ch_mult, small_unet(3, 16).num_res_blocks) == ((1, 2, 2), 1)
    assert (small_unet(3, 32, ch=8).ch_mult, small_unet(3, 32, ch=8).num_res_blocks) == ((1, 2, 2), 2)
    assert small_unet(1, 8, learn_variance=True)(torch.randn(2, 1, 8, 8), torch.rand(2)).shape == (2, 2, 8, 8)
    assert model_from_config(net.config()).config() == net.config()
    with pytest.raises(TypeError, match="image_size"):
        small_unet(1, 8.0)
    with pytest.raises(ValueError, match="ch"):
        small_unet(1, 8, ch=6)


def test_default_attention_resolution_adapts_to_the_image_size():
    # break-test: docs/training.md's UNet(in_channels=1, image_size=8) failed (default (16,) not reachable);
    # the default is now 16 where reached, else the largest side below the image (4 at side 8)
    net = UNet(in_channels=1, image_size=8)
    assert net.attn_resolutions == (4,) and list(net.config()["attn_resolutions"]) == [4]
    assert sum(isinstance(m, scoresde.models.unet.AttnBlock) for m in net.modules()) == 2 + 3 + 1  # down, up, mid
    assert UNet(image_size=32).attn_resolutions == (16,) and UNet(image_size=16).attn_resolutions == (16,)
    assert UNet(image_size=256, ch=32).attn_resolutions == (32,)
    assert UNet(image_size=8, ch=32, ch_mult=(1,)).attn_resolutions == ()
    # the round trip rebuilds the same network
    assert _nparams(model_from_config(json.loads(json.dumps(net.config())))) == _nparams(net)


@pytest.mark.parametrize("make", [lambda: UNet(image_size=8, num_classes=4, embedding="fourier", **SMALL | {"attn_resolutions": (4,)}),
                                  lambda: MLP(2, hidden=32, embedding="fourier", learn_variance=True)])
def test_config_round_trip(make):
    """config() is JSON-serialisable and model_from_config + load_state_dict rebuild the same function."""
    torch.manual_seed(0)
    net = make()
    for p in net.parameters():
        torch.nn.init.normal_(p, 0, 0.1)
    cfg = json.loads(json.dumps(net.config()))
    net2 = model_from_config(cfg)
    net2.load_state_dict(net.state_dict())
    if isinstance(net, UNet):
        x, kw = torch.randn(2, 1, 8, 8), {"y": torch.tensor([0, 3])}
    else:
        x, kw = torch.randn(2, 2), {}
    t = torch.tensor([0.05, 7.0])
    assert torch.equal(net(x, t, **kw), net2(x, t, **kw))
    with pytest.raises(ValueError, match="model"):
        model_from_config({"model": "ResNet"})
    with pytest.raises(TypeError, match="argument"):
        model_from_config({**cfg, "widht": 3})


def test_networks_work_inside_score_model():
    """ScoreModel(net, sde) calls net(x, network_time) and checks the shape (learned variance split)."""
    sde = scoresde.VPSDE()
    net = UNet(in_channels=1, image_size=8, ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), learn_variance=True)
    m = scoresde.ScoreModel(net, sde, discrete=True, learn_variance=True)
    pred, var, _ = m.raw(torch.randn(3, 1, 8, 8), torch.tensor([0.1, 0.5, 1.0]))
    assert pred.shape == var.shape == (3, 1, 8, 8)


def test_bad_input_errors_name_the_argument():
    """Bad input: sides the down-sampling cannot take, unreachable attention sides, wrong channels or
    side of x, wrong time shape, NaN time, unknown embedding, y for an unconditional net."""
    with pytest.raises(ValueError, match="image_size"):
        UNet(image_size=20, ch_mult=(1, 2, 2, 2))  # 20 not divisible by 8
    with pytest.raises(ValueError, match="image_size"):
        UNet(image_size=4, ch_mult=(1,))
    with pytest.raises(ValueError, match="image_size"):
        UNet(image_size=512, ch_mult=(1,))
    with pytest.raises(ValueError, match="attn_resolutions"):
        UNet(image_size=16, ch=16, ch_mult=(1, 2), attn_resolutions=(4,))
    with pytest.raises(ValueError, match="ch"):
        UNet(ch=18)
    with pytest.raises(ValueError, match="embedding"):
        UNet(embedding="positional")
    with pytest.raises(ValueError, match="in_channels"):
        UNet(in_channels=0)
    net = UNet(in_channels=1, image_size=8, ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=())
    with pytest.raises(ValueError, match="in_channels"):
        net(torch.randn(2, 3, 8, 8), torch.zeros(2))
    with pytest.raises(ValueError, match="image_size"):
        net(torch.randn(2, 1, 16, 16), torch.zeros(2))
    with pytest.raises(ValueError, match="time"):
        net(torch.randn(2, 1, 8, 8), torch.zeros(2, 1))
    with pytest.raises(ValueError, match="time"):
        net(torch.randn(2, 1, 8, 8), torch.zeros(3))
    with pytest.raises(ValueError, match="time"):
        net(torch.randn(2, 1, 8, 8), torch.tensor([0.0, float("nan")]))
    with pytest.raises(ValueError, match="y"):
        net(torch.randn(2, 1, 8, 8), torch.zeros(2), y=torch.tensor([0, 1]))
    cond = UNet(in_channels=1, image_size=8, ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), num_classes=2)
    xb = torch.randn(2, 1, 8, 8)  # y=None on a conditional net is the null class, index num_classes
    assert torch.equal(cond(xb, torch.zeros(2)), cond(xb, torch.zeros(2), y=torch.tensor([2, 2])))
    with pytest.raises(ValueError, match="num_classes"):
        cond(torch.randn(2, 1, 8, 8), torch.zeros(2), y=torch.tensor([0, 3]))
    mlp = MLP(2, hidden=16)
    with pytest.raises(ValueError, match="dim"):
        mlp(torch.randn(4, 3), torch.zeros(4))
    with pytest.raises(ValueError, match="time"):
        mlp(torch.randn(4, 2), torch.zeros(4, 4))
