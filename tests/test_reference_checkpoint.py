"""load_reference_checkpoint and models.NCSNpp against the reference score-SDE code's own output.

The fixtures in ``tests/data/reference/`` were made by ``make_fixtures.py`` beside them, with the
reference code (``yang-song/score_sde_pytorch``) itself: its ``ncsnpp`` model built from its own
configs at reduced width (nf 8, ch_mult (1, 2), 1 res block (2 for the deep configs), attention
at 8, 16x16 images), random weights, a perturbed EMA, saved in its checkpoint format, with a
fixed input, t, and the score of its ``get_score_fn(sde, model, continuous=True)`` with the EMA
and the online weights. ``full_width_layouts.json.gz`` holds every key and shape of the
full-width reference models (no weights). Nothing here needs the reference code or a download;
the one test that reruns ``make_fixtures.py`` skips when ``../shared/peers`` is absent.

The numbers checked: the reference's score to 1e-5 (measured: 0 for VE, <= 4e-7 for VP /
sub-VP, where our sigma(t) is computed in float64 and the reference's in float32), its raw network
output to 1e-6 (measured: 0, bit for bit), the labels our ScoreModel feeds the network equal to
the reference's, and the full-width keys / shapes / parameter order / counts equal to the
reference's.
"""
from __future__ import annotations

import gzip
import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from scoresde import SubVPSDE, VESDE, VPSDE, load_reference_checkpoint
from scoresde.models import NCSNpp
from scoresde.models import ncsnpp as ncsnpp_module
from scoresde.models.ncsnpp_configs import REFERENCE_CONFIGS
from scoresde.models.up_or_down import downsample_2d, upsample_2d
from scoresde.score import network_time

DATA = Path(__file__).resolve().parent / "data" / "reference"
PEER = Path(__file__).resolve().parents[2] / "shared" / "peers" / "score_sde_pytorch"
CASES = sorted(p.name[:-len("_io.pth")] for p in DATA.glob("*_io.pth"))
NAMED = ["vp_ddpmpp", "subvp_ddpmpp", "subvp_ddpmpp_deep", "ve_ncsnpp", "ve_ncsnpp_deep", "vp_ncsnpp"]
SDE_OF = {"vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE}


def _io(case: str) -> dict:
    return torch.load(DATA / f"{case}_io.pth", weights_only=True)


def _load(path, io, **kw):
    return load_reference_checkpoint(path, io["config"], **io["overrides"], **kw)


def test_fixtures_present():
    assert set(NAMED) <= set(CASES), f"fixtures missing from {DATA}: {sorted(set(NAMED) - set(CASES))}"
    assert len(CASES) >= 10
    for case in CASES:  # small: well under 1 MB each
        assert (DATA / f"{case}.pth").stat().st_size + (DATA / f"{case}_io.pth").stat().st_size < 800_000


@pytest.mark.parametrize("case", CASES)
def test_score_matches_reference(case):
    io = _io(case)
    model = _load(DATA / f"{case}.pth", io)
    assert isinstance(model.sde, SDE_OF[io["config"].split("/")[0]])
    assert not model.training and not model.net.training
    # the time input our ScoreModel gives the network: the reference's labels (999 t or sigma(t))
    labels = network_time(model.sde, io["t"], model.time_input)
    torch.testing.assert_close(labels, io["labels"], rtol=0, atol=0)
    with torch.no_grad():
        # float32 convolutions round differently on different CPUs (the fixtures' machine against an AMD EPYC:
        # 6.7e-6 at most, on outputs of order 1); a wrong layer or weight is off by 1e-2 or more
        torch.testing.assert_close(model.net(io["x"], io["labels"]), io["net_out"], rtol=1e-4, atol=1e-5)
        score = model(io["x"], io["t"])
    torch.testing.assert_close(score, io["score"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("case", ["vp_ddpmpp", "subvp_ddpmpp", "ve_ncsnpp", "variant_residual"])
def test_use_ema_false_gives_online_weights(case):
    io = _io(case)
    path = DATA / f"{case}.pth"
    online = _load(path, io, use_ema=False)
    ema = _load(path, io)
    ckpt = torch.load(path, weights_only=True)
    for k, v in online.net.state_dict().items():
        assert torch.equal(v, ckpt["model"]["module." + k]), k
    with torch.no_grad():
        s_online = online(io["x"], io["t"])
        s_ema = ema(io["x"], io["t"])
    torch.testing.assert_close(s_online, io["score_online"], rtol=0, atol=1e-5)
    # the fixture's EMA differs from the online weights by far more than the tolerance
    assert (s_ema - s_online).abs().max() > 1e-2
    assert ema.reference_step == ckpt["step"]


def test_ema_weights_are_the_shadow_params_in_parameter_order():
    io = _io("ve_ncsnpp")
    path = DATA / "ve_ncsnpp.pth"
    net = _load(path, io).net
    ckpt = torch.load(path, weights_only=True)
    trainable = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
    assert len(trainable) == len(ckpt["ema"]["shadow_params"])
    for (n, p), s in zip(trainable, ckpt["ema"]["shadow_params"]):
        assert torch.equal(p, s), n
    # the Fourier W is not trainable, not in the EMA list, and comes from 'model'
    assert not net.all_modules[0].W.requires_grad
    assert torch.equal(net.all_modules[0].W, ckpt["model"]["module.all_modules.0.W"])
    assert net.sigmas.dtype == torch.float64


# ---- named errors -------------------------------------------------------------------------------
def _mutated(tmp_path, mutate, case="vp_ddpmpp"):
    ckpt = torch.load(DATA / f"{case}.pth", weights_only=True)
    mutate(ckpt)
    path = tmp_path / "mutated.pth"
    torch.save(ckpt, path)
    return path, _io(case)


def _rename(ckpt, old, new):
    ckpt["model"] = {(new if k == old else k): v for k, v in ckpt["model"].items()}


def test_renamed_key_is_named(tmp_path):
    old, new = "module.all_modules.3.Conv_0.weight", "module.all_modules.3.Conv_9.weight"
    path, io = _mutated(tmp_path, lambda c: _rename(c, old, new))
    with pytest.raises(ValueError, match=r"lacks module\.all_modules\.3\.Conv_0\.weight"):
        _load(path, io)
    path, io = _mutated(tmp_path, lambda c: c["model"].update({"module.extra.weight": torch.zeros(2)}))
    with pytest.raises(ValueError, match=r"has module\.extra\.weight, which .* does not have"):
        _load(path, io)


def test_shape_mismatch_is_named(tmp_path):
    key = "module.all_modules.6.NIN_1.W"  # the attention block at side 8: NIN (in, out)

    def transpose_one(c):
        w = c["model"][key]
        c["model"][key] = torch.zeros(w.shape[0], w.shape[1] + 1)

    path, io = _mutated(tmp_path, transpose_one)
    with pytest.raises(ValueError, match=r"module\.all_modules\.6\.NIN_1\.W has shape \(16, 17\).*expects \(16, 16\)"):
        _load(path, io)
    # a config field that disagrees with the checkpoint names the first tensor that does not fit
    io = _io("vp_ddpmpp")
    with pytest.raises(ValueError, match=r"module\.all_modules\.0\.weight has shape \(32, 8\).*expects \(64, 16\)"):
        load_reference_checkpoint(DATA / "vp_ddpmpp.pth", io["config"], **{**io["overrides"], "nf": 16})


def test_missing_ema_entry_is_named(tmp_path):
    path, io = _mutated(tmp_path, lambda c: c["ema"]["shadow_params"].pop(4))
    with pytest.raises(ValueError, match=r"ema\.shadow_params\[4\] has shape .* matched to module\.all_modules\.2"):
        _load(path, io)
    path, io = _mutated(tmp_path, lambda c: c["ema"]["shadow_params"].pop())
    with pytest.raises(ValueError, match=r"has \d+ tensors for \d+ trainable parameters: entries missing "
                                         r"\(from module\.all_modules\.\d+\.bias on\)"):
        _load(path, io)
    path, io = _mutated(tmp_path, lambda c: c.pop("ema"))
    with pytest.raises(ValueError, match="no 'ema' dict"):
        _load(path, io)
    _load(path, io, use_ema=False)  # the online weights need no EMA


def test_bad_config_and_file(tmp_path):
    io = _io("vp_ddpmpp")
    with pytest.raises(ValueError, match="unknown reference config 'vp/cifar10_ddpmpp'.*valid names"):
        load_reference_checkpoint(DATA / "vp_ddpmpp.pth", "vp/cifar10_ddpmpp")
    with pytest.raises(TypeError, match=r"unknown NCSNpp field\(s\) \['width'\]"):
        load_reference_checkpoint(DATA / "vp_ddpmpp.pth", io["config"], width=8)
    model = load_reference_checkpoint(DATA / "vp_ddpmpp.pth", "configs/vp/cifar10_ddpmpp_continuous.py",
                                      **io["overrides"])
    assert isinstance(model.net, NCSNpp)
    torch.save({"state_dict": {}}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="not a reference checkpoint"):
        load_reference_checkpoint(tmp_path / "other.pth", io["config"])
    with open(tmp_path / "pickled.pth", "wb") as f:  # weights_only=True refuses arbitrary objects
        torch.save({"model": {}, "obj": _Opaque()}, f)
    with pytest.raises(pickle.UnpicklingError):
        load_reference_checkpoint(tmp_path / "pickled.pth", io["config"])


class _Opaque:
    pass


# ---- full-width layout and parameter counts ----------------------------------------------------
LAYOUTS = json.loads(gzip.open(DATA / "full_width_layouts.json.gz", "rt").read())


@pytest.mark.parametrize("config", sorted(LAYOUTS))
def test_full_width_layout_and_count(config):
    ref = LAYOUTS[config]
    with torch.device("meta"):
        net = NCSNpp.named(REFERENCE_CONFIGS[config][0])
    keys = [["module." + k, list(v.shape)] for k, v in net.state_dict().items()]
    assert keys == ref["keys"]  # names, shapes and order of the reference's checkpoint 'model'
    index = {k: i for i, (k, _) in enumerate(keys)}
    assert [index["module." + n] for n, p in net.named_parameters() if p.requires_grad] == ref["trainable"]
    count = sum(p.numel() for p in net.parameters())
    assert count == ref["params"]
    assert f"{count:,}" in ncsnpp_module.__doc__  # the documented count


# ---- the FIR resampling and the network's own checks ---------------------------------------------
def test_fir_resampling_keeps_constants_and_shapes():
    x = torch.full((1, 2, 8, 8), 3.0)
    up, down = upsample_2d(x), downsample_2d(x)
    assert up.shape == (1, 2, 16, 16) and down.shape == (1, 2, 4, 4)
    torch.testing.assert_close(up[..., 2:-2, 2:-2], torch.full_like(up[..., 2:-2, 2:-2], 3.0))
    torch.testing.assert_close(down[..., 1:-1, 1:-1], torch.full_like(down[..., 1:-1, 1:-1], 3.0))


def test_ncsnpp_checks():
    with pytest.raises(ValueError, match="unknown NCSNpp config"):
        NCSNpp.named("ddpm")
    with pytest.raises(ValueError, match="progressive"):
        NCSNpp(progressive="skip")
    net = NCSNpp.named("ncsnpp_continuous", nf=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,),
                       image_size=16)
    with pytest.raises(ValueError, match="16x16 images"):
        net(torch.zeros(1, 3, 8, 8), torch.ones(1))
    with pytest.raises(ValueError, match=r"time must be a \(2,\) tensor"):
        net(torch.zeros(2, 3, 16, 16), torch.ones(1))
    assert net.config()["model"] == "NCSNpp" and NCSNpp(**{k: v for k, v in net.config().items()
                                                           if k != "model"}).config() == net.config()


# ---- the fixtures are what the reference code makes ---------------------------------------------
@pytest.mark.skipif(not (PEER / "models" / "ncsnpp.py").exists(),
                    reason=f"the reference code is not at {PEER} (only needed to remake the fixtures)")
def test_make_fixtures_reproduces_a_fixture(tmp_path):
    script = DATA / "make_fixtures.py"
    run = subprocess.run([sys.executable, str(script), "--peer", str(PEER), "--out", str(tmp_path),
                          "--cases", "ve_ncsnpp", "variant_ddpm_fir"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    for case in ("ve_ncsnpp", "variant_ddpm_fir"):
        new, old = torch.load(tmp_path / f"{case}_io.pth", weights_only=True), _io(case)
        for k in ("x", "t", "labels"):  # the inputs: exactly
            assert torch.equal(new[k], old[k]), (case, k)
        for k in ("net_out", "score", "score_online"):  # the peer's float32 outputs: to the CPU's rounding (see above)
            torch.testing.assert_close(new[k], old[k], rtol=1e-4, atol=1e-5, msg=f"{case} {k}")


def test_ncsnpp_config_round_trip():
    """model_from_config rebuilds an NCSNpp from its config(): same outputs with the same state dict."""
    from scoresde.models import NCSNpp, model_from_config

    net = NCSNpp(nf=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), image_size=16).eval()
    other = model_from_config(net.config()).eval()
    other.load_state_dict(net.state_dict())
    x, t = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)), torch.tensor([10.0, 500.0])
    assert torch.equal(other(x, t), net(x, t))


def test_unreadable_reference_checkpoint_is_a_named_error(tmp_path):
    """A file that is not a torch file is an UnpicklingError naming it (not torch's message advising
    weights_only=False), a truncated one a ValueError naming it, a missing one FileNotFoundError."""
    bad = tmp_path / "garbage.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(pickle.UnpicklingError, match="garbage.pth.*not a readable reference checkpoint"):
        load_reference_checkpoint(bad, "vp/cifar10_ddpmpp_continuous")
    cut = tmp_path / "cut.pth"
    cut.write_bytes((DATA / "vp_ddpmpp.pth").read_bytes()[:5000])
    with pytest.raises(ValueError, match="not a readable reference checkpoint"):
        load_reference_checkpoint(cut, "vp/cifar10_ddpmpp_continuous")
    with pytest.raises(FileNotFoundError, match="no such reference checkpoint"):
        load_reference_checkpoint(tmp_path / "none.pth", "vp/cifar10_ddpmpp_continuous")
