"""Make the golden fixtures of ``tests/test_reference_checkpoint.py`` with the reference code itself.

Run from the repository root (CPU is enough; about 10 s at reduced width, plus ~30 s for the
full-width parameter counts)::

    OMP_NUM_THREADS=1 python tests/data/reference/make_fixtures.py [--peer PATH] [--layouts]

It imports the reference score-SDE PyTorch code (``yang-song/score_sde_pytorch``, Apache-2.0;
default ``../shared/peers/score_sde_pytorch``, or ``$SCORE_SDE_PYTORCH``) and never scoresde:

* only ``models/{ncsnpp,layers,layerspp,normalization,up_or_down_sampling,utils,ema}.py``,
  ``sde_lib.py`` and ``configs/`` are imported. The CUDA op ``op/`` (JIT-compiled at import,
  score_sde_pytorch #53) is replaced in ``sys.modules`` by the reference's own CPU path,
  ``upfirdn2d_native`` of ``op/upfirdn2d.py``, read from its source; ``ml_collections`` (not
  installed) by a minimal ``ConfigDict``.
* Two layers of the reference cannot run in PyTorch, so no reference model that uses them ever
  ran: ``up_or_down_sampling.upsample_conv_2d`` (the FIR upsampling convolution, used by
  ``progressive="residual"`` and by ``resblock_type="ddpm"`` with ``fir``) flips its weight with
  ``w[..., ::-1, ::-1]`` (PyTorch rejects negative slice steps) and passes TF's NCHW stride
  ``[1, 1, factor, factor]`` to ``F.conv_transpose2d`` (which wants two values; the
  ``output_padding`` computed from its first entry would be H - 1 too); ``layerspp.Upsample``
  without FIR (``resblock_type="ddpm"``) calls ``F.interpolate(x, (H * 2, W * 2), 'nearest')``,
  where the third positional argument is ``scale_factor`` ("only one of size or scale_factor
  should be defined"). For the fixtures that use them (:data:`PORT_FIXES`), these lines, and
  only they, are rewritten to what they mean (StyleGAN2's TF code for the first two:
  ``torch.flip(w, (3, 4))``, ``stride = [factor, factor]`` and so output_padding 0; and
  ``mode='nearest'``) before the modules are executed.

For each case it builds the reference model from its own config (``configs/<name>.py``) with
reduced-width overrides, wraps it in ``nn.DataParallel`` as ``models/utils.create_model`` does,
sets random weights (seeded; every tensor, so no block is the identity as with the zero init),
makes an EMA with the reference's ``models/ema.py`` and perturbs its shadow parameters so they
differ from the online weights, and writes

* ``<case>.pth``: ``{'model', 'ema', 'optimizer', 'step'}`` as ``utils.save_checkpoint`` does;
* ``<case>_io.pth``: the config name and overrides, a fixed input x (B, C, H, W) and t (B,), the
  labels the reference's ``get_score_fn`` passes to the network, the raw network output with the
  EMA weights, and the score of ``get_score_fn(sde, model, train=False, continuous=True)`` with
  the EMA weights (``ema.copy_to``, as the reference evaluates) and with the online weights.

``--layouts`` also builds the full-width reference models of :data:`COUNT_CONFIGS` and writes
``full_width_layouts.json.gz`` (every checkpoint key and shape, in order, and the order of the
EMA's shadow parameters; no weights), and prints their parameter counts (the numbers in the
docstring of ``scoresde/models/ncsnpp.py``).
"""
from __future__ import annotations

import argparse
import ast
import gzip
import importlib
import json
import os
import sys
import types
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
DEFAULT_PEER = ROOT.parent / "shared" / "peers" / "score_sde_pytorch"

SMALL = dict(nf=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), image_size=16)
SMALL_DEEP = dict(SMALL, num_res_blocks=2)
#: case -> (reference config, model overrides, needs PORT_FIXES)
CASES = {
    "vp_ddpmpp": ("vp/cifar10_ddpmpp_continuous", SMALL, False),
    "subvp_ddpmpp": ("subvp/cifar10_ddpmpp_continuous", SMALL, False),
    "subvp_ddpmpp_deep": ("subvp/cifar10_ddpmpp_deep_continuous", SMALL_DEEP, False),
    "ve_ncsnpp": ("ve/cifar10_ncsnpp_continuous", SMALL, False),
    "ve_ncsnpp_deep": ("ve/cifar10_ncsnpp_deep_continuous", SMALL_DEEP, False),
    "vp_ncsnpp": ("vp/cifar10_ncsnpp_continuous", SMALL, False),
    # variants of the family that no CIFAR-10 config uses (the LSUN / CelebA-HQ / FFHQ ones do)
    "variant_output_skip": ("vp/cifar10_ddpmpp_continuous",
                            dict(SMALL, fir=True, progressive="output_skip", progressive_input="input_skip",
                                 progressive_combine="cat"), False),
    "variant_residual": ("ve/cifar10_ncsnpp_continuous", dict(SMALL, progressive="residual"), True),
    "variant_ddpm_blocks": ("vp/cifar10_ddpmpp_continuous",
                            dict(SMALL, resblock_type="ddpm", skip_rescale=False,
                                 conditional=False), True),
    "variant_ddpm_fir": ("ve/cifar10_ncsnpp_continuous",
                         dict(SMALL, resblock_type="ddpm", centered=True, nonlinearity="elu"), True),
}
#: module of models/ -> {line as written: what it means}; see the module docstring
PORT_FIXES = {
    "up_or_down_sampling": {"w[..., ::-1, ::-1]": "torch.flip(w, (3, 4))",
                            "stride = [1, 1, factor, factor]": "stride = [factor, factor]"},
    "layerspp": {"F.interpolate(x, (H * 2, W * 2), 'nearest')": "F.interpolate(x, (H * 2, W * 2), mode='nearest')"},
}
#: reference configs whose full-width parameter count goes in the docstring
COUNT_CONFIGS = ["vp/cifar10_ddpmpp_continuous", "vp/cifar10_ddpmpp_deep_continuous",
                 "ve/cifar10_ncsnpp_continuous", "ve/cifar10_ncsnpp_deep_continuous",
                 "vp/cifar10_ncsnpp_continuous", "vp/cifar10_ncsnpp_deep_continuous"]
DATA_FIELDS = ("image_size", "centered", "num_channels")
BATCH = 3


class ConfigDict:
    """The part of ``ml_collections.ConfigDict`` the reference configs use: attribute get / set."""

    def __init__(self):
        object.__setattr__(self, "_d", {})

    def __getattr__(self, k):
        try:
            return self._d[k]
        except KeyError:
            raise AttributeError(k) from None

    def __setattr__(self, k, v):
        self._d[k] = v


def _native_upfirdn2d(peer: Path):
    """The reference's own CPU upfirdn2d (``op/upfirdn2d.py``), without its CUDA build at import."""
    src = (peer / "op" / "upfirdn2d.py").read_text()
    tree = ast.parse(src)
    keep = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in ("upfirdn2d_native", "upfirdn2d")]
    ns = {"torch": torch, "F": torch.nn.functional}
    exec(compile(ast.Module(body=keep, type_ignores=[]), str(peer / "op" / "upfirdn2d.py"), "exec"), ns)
    return ns["upfirdn2d"]  # its CPU branch calls upfirdn2d_native


def import_reference(peer: Path, port_fixes: bool):
    """(models.ncsnpp, models.utils, models.ema, sde_lib, configs loader) of the reference code."""
    for name in [m for m in sys.modules if m.split(".")[0] in ("models", "op", "sde_lib", "configs")]:
        del sys.modules[name]
    op = types.ModuleType("op")
    op.upfirdn2d = _native_upfirdn2d(peer)
    op.FusedLeakyReLU = op.fused_leaky_relu = None  # imported by nothing ncsnpp needs
    sys.modules["op"] = op
    mlc = types.ModuleType("ml_collections")
    mlc.ConfigDict = ConfigDict
    sys.modules["ml_collections"] = mlc
    if str(peer) not in sys.path:
        sys.path.insert(0, str(peer))
    if port_fixes:
        importlib.import_module("models")
        for mod_name, fixes in PORT_FIXES.items():  # up_or_down_sampling first: layerspp imports it
            path = peer / "models" / f"{mod_name}.py"
            src = path.read_text()
            for old, new in fixes.items():
                assert src.count(old) == 1, old
                src = src.replace(old, new)
            mod = types.ModuleType(f"models.{mod_name}")
            mod.__file__, mod.__package__ = str(path), "models"
            sys.modules[mod.__name__] = mod
            exec(compile(src, str(path), "exec"), mod.__dict__)
    ncsnpp = importlib.import_module("models.ncsnpp")
    return (ncsnpp, importlib.import_module("models.utils"), importlib.import_module("models.ema"),
            importlib.import_module("sde_lib"), lambda name: importlib.import_module("configs." + name.replace(
                "/", ".")).get_config())


def reference_config(get_config, name: str, overrides: dict):
    config = get_config(name)
    for k, v in overrides.items():
        setattr(config.data if k in DATA_FIELDS else config.model, k, v)
    return config


def reference_sde(sde_lib, config):
    m = config.model
    if config.training.sde == "vpsde":
        return sde_lib.VPSDE(beta_min=m.beta_min, beta_max=m.beta_max, N=m.num_scales)
    if config.training.sde == "subvpsde":
        return sde_lib.subVPSDE(beta_min=m.beta_min, beta_max=m.beta_max, N=m.num_scales)
    return sde_lib.VESDE(sigma_min=m.sigma_min, sigma_max=m.sigma_max, N=m.num_scales)


def randomize(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Random weights of O(1) activations for every trainable tensor (the Fourier W is kept)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            if p.dim() >= 2:
                fan_in = p.shape[0] if name.split(".")[-2].startswith("NIN") else p.numel() // p.shape[0]
                p.copy_(torch.randn(p.shape, generator=gen) / fan_in ** 0.5)
            else:
                base = 1.0 if "GroupNorm" in name and name.endswith("weight") else 0.0
                p.copy_(base + 0.1 * torch.randn(p.shape, generator=gen))


def make_case(case: str, peer: Path, out: Path, seed: int) -> dict:
    config_name, overrides, port_fixes = CASES[case]
    ncsnpp, mutils, ema_mod, sde_lib, get_config = import_reference(peer, port_fixes)
    config = reference_config(get_config, config_name, overrides)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = torch.nn.DataParallel(ncsnpp.NCSNpp(config))  # as models/utils.create_model (no device)
    randomize(model, gen)
    ema = ema_mod.ExponentialMovingAverage(model.parameters(), decay=config.model.ema_rate)
    for s in ema.shadow_params:
        s.add_(0.05 * torch.randn(s.shape, generator=gen) * (s.std() if s.numel() > 1 else 1.0))
    ema.num_updates = 1234
    optimizer = torch.optim.Adam(model.parameters(), lr=config.optim.lr)
    ckpt = {"optimizer": optimizer.state_dict(), "model": model.state_dict(), "ema": ema.state_dict(), "step": 1234}
    torch.save(ckpt, out / f"{case}.pth")

    sde = reference_sde(sde_lib, config)
    size, ch = config.data.image_size, config.data.num_channels
    t = torch.tensor([0.1, 0.45, 0.9][:BATCH])
    mean, std = sde.marginal_prob(torch.zeros(BATCH, ch, size, size), t)
    x0 = torch.rand(BATCH, ch, size, size, generator=gen)
    x0 = 2 * x0 - 1 if config.data.centered else x0
    x = sde.marginal_prob(x0, t)[0] + std.reshape(-1, 1, 1, 1) * torch.randn(x0.shape, generator=gen)
    score_fn = mutils.get_score_fn(sde, model, train=False, continuous=True)
    with torch.no_grad():
        score_online = score_fn(x, t)
        ema.copy_to(model.parameters())
        score = score_fn(x, t)
        labels = std if isinstance(sde, sde_lib.VESDE) else t * 999
        net_out = mutils.get_model_fn(model, train=False)(x, labels)
    io = {"config": config_name, "overrides": dict(overrides), "x": x, "t": t, "labels": labels,
          "net_out": net_out, "score": score, "score_online": score_online}
    torch.save(io, out / f"{case}_io.pth")
    return {"case": case, "params": sum(p.numel() for p in model.parameters()),
            "kb": ((out / f"{case}.pth").stat().st_size + (out / f"{case}_io.pth").stat().st_size) / 1024,
            "score_max": float(score.abs().max())}


def full_width_layouts(peer: Path, out: Path) -> dict:
    """Build each full-width reference model of COUNT_CONFIGS; write the layouts; print the counts.

    ``full_width_layouts.json.gz``: {config: {"keys": [[checkpoint key, shape], ...] in
    state-dict order, "trainable": indices into keys of the EMA's shadow_params, in
    parameters() order, "params": the parameter count}}.
    """
    ncsnpp, _, _, _, get_config = import_reference(peer, False)
    layouts = {}
    for name in COUNT_CONFIGS:
        model = torch.nn.DataParallel(ncsnpp.NCSNpp(get_config(name)))
        keys = [[k, list(v.shape)] for k, v in model.state_dict().items()]
        index = {k: i for i, (k, _) in enumerate(keys)}
        trainable = [index[n] for n, p in model.named_parameters() if p.requires_grad]
        params = sum(p.numel() for p in model.parameters())
        layouts[name] = {"keys": keys, "trainable": trainable, "params": params}
        print(f"{name}: {params:,} parameters ({sum(p.numel() for p in model.parameters() if p.requires_grad):,} "
              f"trainable), {len(keys)} state-dict entries", flush=True)
        del model
    with gzip.open(out / "full_width_layouts.json.gz", "wt") as f:
        json.dump(layouts, f, separators=(",", ":"))
    return layouts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peer", type=Path, default=Path(os.environ.get("SCORE_SDE_PYTORCH", DEFAULT_PEER)))
    ap.add_argument("--out", type=Path, default=HERE)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES), metavar="CASE",
                    help="the fixtures to write (default: all)")
    ap.add_argument("--layouts", action="store_true",
                    help="also build the full-width models, write their layouts and print their parameter counts")
    args = ap.parse_args()
    if not (args.peer / "models" / "ncsnpp.py").exists():
        sys.exit(f"reference code not found at {args.peer} (pass --peer or set SCORE_SDE_PYTORCH)")
    torch.set_num_threads(1)
    for case in args.cases:
        r = make_case(case, args.peer, args.out, args.seed + list(CASES).index(case))
        print(f"{r['case']}: {r['params']:,} parameters, {r['kb']:.0f} kB, max |score| {r['score_max']:.3g}",
              flush=True)
    if args.layouts:
        full_width_layouts(args.peer, args.out)


if __name__ == "__main__":
    main()
