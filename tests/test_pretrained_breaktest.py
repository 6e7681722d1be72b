"""Break-test of the pretrained loaders: bad files give one-line named errors, never garbage weights.

``from_diffusers`` on tiny diffusers folders (a two-level UNet2DModel, 8x8, one channel) whose
weights, ``config.json`` or ``scheduler_config.json`` are damaged: a missing, extra or
mis-shaped weight (diffusers itself only logs "newly initialized" and leaves the tensor
uninitialised), NaN / inf weights (.safetensors and .bin), corrupt JSON; the model comes back in
eval mode so that ``autocast_score`` does not switch dropout on. ``load_reference_checkpoint`` on
mutated copies of the ``vp_ddpmpp`` fixture of ``tests/data/reference``: non-finite or
integer / complex tensors, a corrupt file, a malformed structure.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

import scoresde
from scoresde import autocast_score, load_reference_checkpoint
from scoresde.pretrained import _shape_error

diffusers = pytest.importorskip("diffusers")
from diffusers import DDPMScheduler, UNet2DModel  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

WEIGHTS = "diffusion_pytorch_model.safetensors"
DATA = Path(__file__).resolve().parent / "data" / "reference"
X, T = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([0.3, 0.7])


def tiny_unet(seed=0, **kw):
    torch.manual_seed(seed)
    return UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(8, 16),
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4, **kw)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A good pipeline folder (unet/ + scheduler/), to copy and damage."""
    root = tmp_path_factory.mktemp("good")
    tiny_unet().save_pretrained(root / "unet")
    DDPMScheduler(num_train_timesteps=100).save_pretrained(root / "scheduler")
    return root


def _copy(folder: Path, dst: Path) -> Path:
    for f in folder.rglob("*"):
        if f.is_file():
            (dst / f.relative_to(folder)).parent.mkdir(parents=True, exist_ok=True)
            (dst / f.relative_to(folder)).write_bytes(f.read_bytes())
    return dst


def _drop(d: dict, key) -> None:
    del d[key]


def _weights(folder, tmp_path, mutate, bin_file=False):
    """A copy of ``folder`` whose UNet state dict went through ``mutate`` (saved as .bin with ``bin_file``)."""
    root = _copy(folder, tmp_path / "copy")
    sd = load_file(root / "unet" / WEIGHTS)
    out = mutate(sd)
    sd = sd if out is None else out
    (root / "unet" / WEIGHTS).unlink()
    if bin_file:
        torch.save(sd, root / "unet" / "diffusion_pytorch_model.bin")
    else:
        save_file(sd, root / "unet" / WEIGHTS)
    return root


def test_good_folder_loads_in_eval_mode(folder):
    model = scoresde.from_diffusers(folder)
    assert model.training is False and model.net.unet.training is False
    assert torch.isfinite(model(X, T)).all()


def test_missing_extra_and_misshaped_weights_are_named(folder, tmp_path):
    root = _weights(folder, tmp_path / "a", lambda sd: _drop(sd, "conv_out.weight"))
    with pytest.raises(ValueError, match=r"unet/diffusion_pytorch_model\.safetensors' lacks the UNet weight "
                                         r"'conv_out\.weight' \(1 missing in all"):
        scoresde.from_diffusers(root)
    root = _weights(folder, tmp_path / "b", lambda sd: {})
    with pytest.raises(ValueError, match=r"safetensors' lacks the UNet weight 'conv_in\.weight' \(\d{2,} missing"):
        scoresde.from_diffusers(root)
    root = _weights(folder, tmp_path / "c", lambda sd: sd.update({"extra.weight": torch.zeros(2)}))
    with pytest.raises(ValueError, match=r"safetensors' has 'extra\.weight', which the UNet of config\.json does not"):
        scoresde.from_diffusers(root)
    root = _weights(folder, tmp_path / "d", lambda sd: sd.update({"conv_in.bias": torch.zeros(3, 3)}), bin_file=True)
    with pytest.raises(ValueError, match=r"diffusion_pytorch_model\.bin': conv_in\.bias has shape \(3, 3\); the UNet "
                                         r"of config\.json expects \(8,\)"):
        scoresde.from_diffusers(root)
    root = _weights(folder, tmp_path / "e", lambda sd: _drop(sd, "conv_in.bias"), bin_file=True)
    with pytest.raises(ValueError, match=r"\.bin' lacks the UNet weight 'conv_in\.bias'"):
        scoresde.from_diffusers(root)


def test_shape_error_of_either_diffusers_loader_is_parsed():
    torch_msg = ("Error(s) in loading state_dict for UNet2DModel:\n\tsize mismatch for conv_in.bias: copying a param "
                 "with shape torch.Size([3, 3]) from checkpoint, the shape in current model is torch.Size([8]).")
    meta_msg = "Cannot load x because conv_in.bias expected shape torch.Size([8]), but got torch.Size([3, 3]). If you"
    assert _shape_error(RuntimeError(torch_msg)) == _shape_error(ValueError(meta_msg)) == ("conv_in.bias", (3, 3), (8,))
    assert _shape_error(RuntimeError("something else")) is None


@pytest.mark.parametrize("bin_file", [False, True])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused(folder, tmp_path, value, bin_file):
    def poison(sd):
        sd["conv_out.weight"] = sd["conv_out.weight"].clone()
        sd["conv_out.weight"].view(-1)[3] = value

    root = _weights(folder, tmp_path, poison, bin_file=bin_file)
    name = "diffusion_pytorch_model." + ("bin" if bin_file else "safetensors")
    with pytest.raises(ValueError, match=rf"{re.escape(name)}': conv_out\.weight holds 1 non-finite value\(s\)"):
        scoresde.from_diffusers(root)


def test_hub_loading_info_is_checked(monkeypatch):
    unet = tiny_unet().eval()

    def fake(cls, name, subfolder=None, **kw):
        assert kw.get("output_loading_info") is True
        return unet, {"missing_keys": ["conv_in.weight"], "unexpected_keys": [], "mismatched_keys": []}

    monkeypatch.setattr(UNet2DModel, "from_pretrained", classmethod(fake))
    with pytest.raises(ValueError, match=r"hub org/tiny \(unet\) lacks the UNet weight 'conv_in\.weight'"):
        scoresde.from_diffusers("org/tiny")


def test_eval_mode_keeps_autocast_deterministic(tmp_path):
    root = tmp_path / "drop"
    tiny_unet(dropout=0.5).save_pretrained(root / "unet")
    DDPMScheduler(num_train_timesteps=100).save_pretrained(root / "scheduler")
    model = scoresde.from_diffusers(root)
    assert model.training is False
    amp = autocast_score(model)
    assert amp.training is False and model.net.unet.training is False
    torch.manual_seed(1)
    first = amp(X, T)
    torch.manual_seed(2)
    assert torch.equal(first, amp(X, T))
    assert torch.equal(model(X, T), model(X, T))
    # a UNet passed in keeps its own mode (the caller's object is not switched), and the model takes it
    unet = tiny_unet().train()
    assert scoresde.from_diffusers(unet, scheduler=DDPMScheduler()).training is True and unet.training is True


@pytest.mark.parametrize("text, problem", [("{garbage", "is not valid JSON"), ("", "is not valid JSON"),
                                           ("[1]", "holds an array; expected a JSON object")])
def test_bad_json_files_are_named(folder, tmp_path, text, problem):
    root = _copy(folder, tmp_path / "s")
    (root / "scheduler" / "scheduler_config.json").write_text(text)
    with pytest.raises(ValueError, match=rf"scheduler config '.*scheduler_config\.json' {re.escape(problem)}"):
        scoresde.from_diffusers(root)
    with pytest.raises(ValueError, match=rf"scheduler_config\.json' {re.escape(problem)}"):
        scoresde.from_diffusers(tiny_unet(), scheduler=root / "scheduler")
    root = _copy(folder, tmp_path / "u")
    (root / "unet" / "config.json").write_text(text)
    with pytest.raises(ValueError, match=rf"UNet config '.*unet/config\.json' {re.escape(problem)}"):
        scoresde.from_diffusers(root)


def test_unknown_time_embedding_and_missing_scheduler_file(folder, tmp_path):
    root = _copy(folder, tmp_path / "t")
    cfg_file = root / "unet" / "config.json"
    cfg_file.write_text(json.dumps({**json.loads(cfg_file.read_text()), "time_embedding_type": "foo"}))
    with pytest.raises(ValueError, match=r"unknown time_embedding_type 'foo' in '.*unet/config\.json'; expected one of "
                                         r"\['positional', 'learned', 'fourier'\]"):
        scoresde.from_diffusers(root)
    with pytest.raises(FileNotFoundError, match=r"no scheduler config file '/nonexistent\.json'"):
        scoresde.from_diffusers(folder, scheduler="/nonexistent.json")


@pytest.mark.parametrize("n", [10.7, "1000", True])
def test_non_integer_num_train_timesteps_is_refused(folder, tmp_path, n):
    root = _copy(folder, tmp_path / "n")
    cfg_file = root / "scheduler" / "scheduler_config.json"
    cfg_file.write_text(json.dumps({**json.loads(cfg_file.read_text()), "num_train_timesteps": n}))
    with pytest.raises(ValueError, match=r"num_train_timesteps of the scheduler config must be an integer; got "
                                         rf"{re.escape(repr(n))} \[scheduler config: .*scheduler_config\.json\]"):
        scoresde.from_diffusers(root)
    assert scoresde.from_diffusers(folder, scheduler={"num_train_timesteps": 100.0}).sde.N == 100


# ---- load_reference_checkpoint ------------------------------------------------------------------
IO = torch.load(DATA / "vp_ddpmpp_io.pth", weights_only=True) if (DATA / "vp_ddpmpp_io.pth").exists() else None
pytestmark_ref = pytest.mark.skipif(IO is None, reason="tests/data/reference fixtures absent")


def _ref(tmp_path, mutate=None, **kw):
    ckpt = torch.load(DATA / "vp_ddpmpp.pth", weights_only=True)
    out = mutate(ckpt) if mutate else None
    path = tmp_path / "ref.pth"
    torch.save(ckpt if out is None else out, path)
    return lambda: load_reference_checkpoint(path, IO["config"], **IO["overrides"], **kw)


def _set(tensor, value):
    tensor.view(-1)[0] = value


@pytestmark_ref
def test_reference_non_finite_and_non_float_tensors_are_refused(tmp_path):
    key = "module.all_modules.3.GroupNorm_0.weight"
    with pytest.raises(ValueError, match=r"ref\.pth': ema\.shadow_params\[0\] \(module\.all_modules\.0\.weight\) holds "
                                         r"1 non-finite"):
        _ref(tmp_path, lambda c: _set(c["ema"]["shadow_params"][0], float("nan")))()
    with pytest.raises(ValueError, match=rf"ref\.pth': 'model' entry {re.escape(key)} holds 1 non-finite"):
        _ref(tmp_path, lambda c: _set(c["model"][key], float("inf")), use_ema=False)()
    with pytest.raises(ValueError, match=r"'model' entry module\.sigmas holds 1 non-finite"):  # a buffer
        _ref(tmp_path, lambda c: _set(c["model"]["module.sigmas"], float("nan")))()
    with pytest.raises(ValueError, match=r"ema\.shadow_params\[0\] \(module\.all_modules\.0\.weight\) is torch\.int64; "
                                         r"the network's tensor there is torch\.float32"):
        _ref(tmp_path, lambda c: c["ema"].update(shadow_params=[(p * 9).long() for p in c["ema"]["shadow_params"]]))()
    with pytest.raises(ValueError, match=rf"'model' entry {re.escape(key)} is torch\.complex64"):
        _ref(tmp_path, lambda c: c["model"].update({key: c["model"][key].to(torch.complex64)}), use_ema=False)()


@pytestmark_ref
def test_reference_corrupt_files_are_one_line_value_errors(tmp_path):
    text = tmp_path / "text.pth"
    text.write_bytes(b"hello" * 100)
    with pytest.raises(ValueError, match=r"'.*text\.pth' is not a readable reference checkpoint \(corrupt"):
        load_reference_checkpoint(text, IO["config"], **IO["overrides"])
    data = bytearray((DATA / "vp_ddpmpp.pth").read_bytes())
    data[1000] ^= 0xFF
    flipped = tmp_path / "flipped.pth"
    flipped.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"flipped\.pth' is not a readable reference checkpoint"):
        load_reference_checkpoint(flipped, IO["config"], **IO["overrides"])
    cut = tmp_path / "cut.pth"
    cut.write_bytes(bytes(data[:-1]))
    with pytest.raises(ValueError) as err:
        load_reference_checkpoint(cut, IO["config"], **IO["overrides"])
    msg = str(err.value)
    assert "\n" not in msg and "If yo)" not in msg and (msg.endswith(" ...)") or msg.endswith(".)")), msg


@pytestmark_ref
@pytest.mark.parametrize("mutate, pattern", [
    (lambda c: c["model"].update({5: torch.zeros(1)}), r"'model' has the key 5 \(int\)"),
    (lambda c: c["ema"].update(shadow_params=None), r"ema\.shadow_params is a NoneType; expected the list"),
    (lambda c: c["ema"].update(shadow_params={"a": torch.zeros(1)}), r"ema\.shadow_params is a dict"),
    (lambda c: c["ema"]["shadow_params"].__setitem__(2, "x"), r"ema\.shadow_params\[2\] is a str, not a tensor"),
    (lambda c: c.update(model=[1]), r"'model' is a list; expected the network's state dict"),
    (lambda c: _drop(c, "model"), r"is not a reference checkpoint: it has no 'model'"),
])
def test_reference_malformed_structure_is_named(tmp_path, mutate, pattern):
    with pytest.raises(ValueError, match=r"ref\.pth'.*" + pattern) as err:
        _ref(tmp_path, mutate)()
    assert "got dict" not in str(err.value) and "\n" not in str(err.value)
