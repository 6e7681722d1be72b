"""Pretrained networks on the command line: ``sample --diffusers PATH`` and
``likelihood --reference-ckpt PATH --config NAME`` (issue: pretrained score networks).

:func:`load_model` returns what :func:`scoresde.cli.common.load_run` returns for a scoresde run,
(model in eval mode, sde, a config with the data's shape and range, training data or None),
so the commands do not care where the network came from.
"""
from __future__ import annotations


def wants_pretrained(args) -> bool:
    return bool(getattr(args, "diffusers", None) or getattr(args, "reference_ckpt", None))


def check_source(args) -> None:
    """Exactly one of the positional checkpoint, --diffusers, --reference-ckpt (with --config)."""
    given = [n for n, v in (("a checkpoint", args.checkpoint), ("--diffusers", getattr(args, "diffusers", None)),
                            ("--reference-ckpt", getattr(args, "reference_ckpt", None))) if v]
    if len(given) != 1:
        raise ValueError("give exactly one model: a scoresde checkpoint, --diffusers PATH or --reference-ckpt PATH "
                         f"--config NAME; got {', '.join(given) if given else 'none'}")
    if getattr(args, "reference_ckpt", None) and not getattr(args, "config", None):
        raise ValueError("--reference-ckpt needs --config NAME, e.g. vp/cifar10_ddpmpp_deep_continuous")
    if getattr(args, "config", None) and not getattr(args, "reference_ckpt", None):
        raise ValueError("--config names the reference config of --reference-ckpt; give --reference-ckpt PATH")


def parse_overrides(items) -> dict:
    """``--override KEY=VALUE`` entries as a dict of Python literals; ValueError naming a bad one."""
    import ast
    out = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--override expects KEY=VALUE (e.g. nf=64); got {item!r}")
        try:
            out[key.strip()] = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            raise ValueError(f"--override {item!r}: the value must be a Python literal (e.g. 64, (1, 2), True)") from None
    return out


def load_model(args):
    """(model (eval, on args.device), sde, cfg, None) of --diffusers / --reference-ckpt (its EMA
    weights, or with --no-ema its online ones; a diffusers folder holds one set: --no-ema is an error).

    ``cfg["data"]["data_range"]`` is the model's data range: [0, 1] for a net that maps its input
    to 2 x - 1 itself (the reference's VE configs, ``centered=False``; a diffusers UNet with
    ``center_input_sample``), else [-1, 1]."""
    no_ema = bool(getattr(args, "no_ema", False))
    if getattr(args, "diffusers", None):
        if no_ema:
            raise ValueError("--no-ema: a diffusers folder holds one set of weights (no EMA to leave out); "
                             "drop --no-ema")
        from ..pretrained import from_diffusers
        model = from_diffusers(args.diffusers)
        net = model.net
        unet = getattr(net, "unet", net)
        c = getattr(unet, "config", {})
        get = c.get if hasattr(c, "get") else (lambda k, d=None: getattr(c, k, d))
        size = get("sample_size", 32)
        size = size if isinstance(size, int) else int(size[0])
        shape = (int(get("in_channels", 3)), size, size)
        unit = bool(get("center_input_sample", False))  # the UNet maps [0, 1] data to 2 x - 1 itself
        source = f"diffusers {args.diffusers}"
    else:
        from ..reference import load_reference_checkpoint
        model = load_reference_checkpoint(args.reference_ckpt, args.config, use_ema=not no_ema,
                                          **parse_overrides(args.override))
        net_cfg = model.net.config() if hasattr(model.net, "config") else {}
        size = int(net_cfg.get("image_size", 32))
        shape = (int(net_cfg.get("num_channels", 3)), size, size)
        unit = net_cfg.get("centered", True) is False  # VE configs: [0, 1] data, mapped to [-1, 1] by the net
        source = f"reference checkpoint {args.reference_ckpt} ({args.config}, {'online' if no_ema else 'EMA'} weights)"
    model = model.to(args.device).eval()
    data_range = [0.0, 1.0] if unit else [-1.0, 1.0]
    cfg = {"data": {"shape": list(shape), "data_range": data_range}, "weights": "pretrained", "source": source}
    return model, model.sde, cfg, None


def in_model_range(ds, cfg):
    """``ds`` with its integer levels read in the model's ``cfg["data"]["data_range"]`` (a pretrained
    model's data range, e.g. [0, 1] for VE); ``ds`` itself when it has no levels or the ranges agree."""
    from ..dataset import Dataset
    want = tuple(float(v) for v in cfg["data"]["data_range"])
    if ds.levels is None or tuple(ds.data_range) == want:
        return ds
    return Dataset(ds.data, want, levels=ds.levels, num_levels=ds.num_levels, name=ds.name, labels=ds.labels,
                   num_classes=ds.num_classes, classes=ds.classes)
