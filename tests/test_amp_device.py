"""The GPU path, tested without a GPU (issue 13, item 6): device choice with CUDA availability
monkeypatched, autocast of the network with float32 state (bf16 autocast runs on CPU too), and
training with AMP / torch.compile recorded in the checkpoint and resume-safe.

Numbers checked and their sources:
- bf16 has an 8-bit mantissa (relative rounding 2^-8 = 0.0039): a tiny MLP's score under bf16
  autocast is within 5% (relative, in norm) of float32, its log-density within 0.05 nats per
  dimension, and the ODE state / outputs stay float32.
- A bf16 training run's logged losses are within 2% of the float32 run's (same seed, same data
  and noise); fp16 + GradScaler likewise.
- Resume: a bf16 / fp16 run interrupted at step 2 and resumed to 4 is bit-identical (torch.equal)
  to an uninterrupted one (the scaler's state is checkpointed).
- compile with the "eager" backend runs the same kernels: bit-identical parameters to no compile.
"""
import warnings

import pytest
import torch

import scoresde
from scoresde.amp import TrainPrecision, check_compile
from scoresde.checkpoint import load_checkpoint
from scoresde.data import toy
from scoresde.device import AutocastNet, amp_dtype, autocast, autocast_score, resolve_device
from scoresde.models import MLP
from scoresde.train import TrainConfig, train


def _mlp(sde, seed=0, field=False):
    torch.manual_seed(seed)
    model = scoresde.ScoreModel(MLP(2, hidden=32, num_layers=2, embed_dim=16), sde)
    if field:  # the MLP's last layer starts at zero (score 0): give it a field to compare
        torch.nn.init.normal_(model.net.out.weight, std=0.5)
    return model


# ------------------------------------------------------------------------------------- devices
def test_resolve_device_follows_cuda_availability(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device(None) == torch.device("cpu") and resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device(None) == torch.device("cuda") and resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(ValueError, match="has 2 CUDA device"):
        resolve_device("cuda:2")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


def test_resolve_device_checks_mps_and_the_cpu_index(monkeypatch):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ValueError, match="device 'mps': MPS is not available"):
        resolve_device("mps")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("mps") == torch.device("mps")
    assert resolve_device("cpu:0") == torch.device("cpu:0") and resolve_device("cpu") == torch.device("cpu")
    for bad in ("cpu:3", torch.device("cpu", 1)):
        with pytest.raises(ValueError, match=r"the CPU is one device, 'cpu' \(or 'cpu:0'\)"):
            resolve_device(bad)


def test_train_config_amp_takes_the_spellings_of_amp_dtype():
    from scoresde.train_config import _as_config
    for amp, want in (("bf16", "bf16"), ("bfloat16", "bf16"), (torch.bfloat16, "bf16"), ("fp16", "fp16"),
                      ("float16", "fp16"), (torch.float16, "fp16"), (None, None), (False, None)):
        cfg = _as_config(TrainConfig(amp=amp))
        assert cfg.amp == want and amp_dtype(cfg.amp) == amp_dtype(amp)
        assert _as_config({"amp": amp}).to_dict()["amp"] == want
    for bad in ("fp32", torch.float32, True, 16):
        with pytest.raises(ValueError, match="amp must be None, 'bf16' or 'fp16'"):
            _as_config(TrainConfig(amp=bad))


@pytest.mark.parametrize("bad", ["meta", "gpu", 3.5])
def test_resolve_device_rejects_bad_names(bad):
    with pytest.raises(ValueError, match="device"):
        resolve_device(bad)


def test_amp_dtype_and_autocast_contexts():
    assert amp_dtype(None) is None and amp_dtype(False) is None
    assert amp_dtype("bf16") == amp_dtype("bfloat16") == amp_dtype(torch.bfloat16) == torch.bfloat16
    assert amp_dtype("fp16") == torch.float16
    for bad in ("fp8", torch.float32, 16, True):
        with pytest.raises(ValueError, match="amp must be None, 'bf16' or 'fp16'"):
            amp_dtype(bad)
    with pytest.raises(ValueError, match="not available on device type 'meta'"):
        autocast("meta", torch.bfloat16)
    with pytest.raises(ValueError, match="bfloat16 or torch.float16"):
        autocast("cpu", torch.float64)
    # the CUDA context is built (not entered) without a GPU: the code path stays importable
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "CUDA is not available ... Disabling autocast"
        ctx = autocast(torch.device("cuda"), torch.float16)
    assert isinstance(ctx, torch.autocast) and ctx.device == "cuda" and ctx.fast_dtype == torch.float16


def test_train_precision_without_cuda_builds_its_cuda_paths():
    p = TrainPrecision(None, False, torch.device("cuda"))
    assert p.scaler is None and p.state_dict() is None and p.describe() == "float32"
    p = TrainPrecision("bf16", "eager", torch.device("cpu"))
    assert p.dtype == torch.bfloat16 and p.describe() == "bf16 autocast, compiled (eager)"
    p = TrainPrecision("fp16", False, torch.device("cpu"))
    assert p.scaler is not None and p.state_dict()["scale"] == 65536.0
    with pytest.raises(ValueError, match="compile"):
        check_compile("no-such-backend")
    with pytest.raises(ValueError, match="compile"):
        check_compile(1)


# ------------------------------------------------------------------------------------- autocast
def test_autocast_score_runs_the_network_in_bf16_and_returns_float32():
    sde = scoresde.VPSDE()
    model = _mlp(sde, field=True).eval()
    seen = []
    model.net.out.register_forward_hook(lambda mod, inp, out: seen.append(out.dtype))
    fast = autocast_score(model)
    assert isinstance(fast, scoresde.ScoreModel) and isinstance(fast.net, AutocastNet)
    assert fast.net.net is model.net  # shared parameters, nothing copied
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(1))
    t = torch.full((64,), 0.5)
    with torch.no_grad():
        ref, got = model(x, t), fast(x, t)
    assert seen == [torch.float32, torch.bfloat16]  # its last layer ran in bf16 under autocast
    assert got.dtype == torch.float32
    rel = float((got - ref).norm() / ref.norm().clamp_min(1e-12))
    assert 0 < rel < 0.02, rel  # bf16 rounding (0.006 measured), not a different function
    # a plain callable: the whole call is autocast, the output comes back in x's dtype
    fn = autocast_score(lambda x, t: model.net(x, t * 999))
    assert fn(x, t).dtype == torch.float32 and fn.autocast_dtype == torch.bfloat16
    with pytest.raises(TypeError, match="callable"):
        autocast_score(3)
    with pytest.raises(ValueError, match="dtype"):
        autocast_score(model, torch.float64)


def test_log_likelihood_with_bf16_network_keeps_float32_state():
    sde = scoresde.VPSDE()
    model = _mlp(sde, field=True).eval()
    x = toy("two_moons", 32).data.float()
    kw = dict(method="rk4", steps=40, generator=None)
    ref = scoresde.log_likelihood(model, sde, x, **{**kw, "generator": torch.Generator().manual_seed(0)})
    got = scoresde.log_likelihood(autocast_score(model), sde, x, **{**kw, "generator": torch.Generator().manual_seed(0)})
    assert got.logp.dtype == torch.float32 and got.z.dtype == torch.float32 and got.nfe == ref.nfe
    err = float((got.logp - ref.logp).abs().max()) / x.shape[1]
    assert 0 < err < 0.02, err  # 0.008 nats per dimension measured


# ------------------------------------------------------------------------------------- training
def _run(out, steps, seed=0, **kw):
    sde = scoresde.VPSDE()
    cfg = TrainConfig(steps=steps, batch_size=32, warmup=0, eval_every=0, log_every=1, checkpoint_every=2,
                      out_dir=str(out) if out else None, quiet=kw.pop("quiet", True), **kw)
    return train(_mlp(sde, seed), sde, "dsm", toy("two_moons", 128), cfg)


def _losses(out):
    import json

    return [json.loads(line)["loss"] for line in open(out / "log.jsonl") if '"loss"' in line]


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_training_loss_close_to_float32_and_recorded(tmp_path, amp):
    ref = _run(tmp_path / "fp32", 6)
    got = _run(tmp_path / amp, 6, amp=amp)
    a, b = _losses(tmp_path / "fp32"), _losses(tmp_path / amp)
    assert len(a) == len(b) == 6
    for la, lb in zip(a, b):
        assert lb == pytest.approx(la, rel=0.02)
    assert a != b  # the autocast arithmetic did run
    ck = load_checkpoint(tmp_path / amp / "checkpoint.pt")
    assert ck["config"]["train"]["amp"] == amp and ck["config"]["train"]["compile"] is False
    assert (ck["grad_scaler"] is not None) == (amp == "fp16")
    assert got.config["train"]["amp"] == amp and ref.config["train"]["amp"] is None


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_resume_is_bit_identical(tmp_path, amp):
    full = _run(tmp_path / "full", 4, amp=amp)
    _run(tmp_path / "cut", 2, amp=amp)
    resumed = _run(tmp_path / "cut", 4, amp=amp)
    for p, q in zip(full.model.parameters(), resumed.model.parameters()):
        assert torch.equal(p, q)
    for p, q in zip(full.ema_model.parameters(), resumed.ema_model.parameters()):
        assert torch.equal(p, q)


def test_amp_must_match_on_resume_compile_may_change(tmp_path):
    _run(tmp_path, 2, amp="bf16")
    with pytest.raises(ValueError, match=r"train\.amp: saved 'bf16', requested None|train\.amp"):
        _run(tmp_path, 4)
    r = _run(tmp_path, 4, amp="bf16", compile="eager")
    assert r.step == 4


def test_compile_eager_gives_the_same_parameters():
    a = _run(None, 3)
    b = _run(None, 3, compile="eager")
    for p, q in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(p, q)
    assert not any(k.startswith("_orig_mod") or "._orig_mod" in k for k in b.model.state_dict())


def test_bad_amp_and_compile_values_are_named():
    with pytest.raises(ValueError, match="amp must be None, 'bf16' or 'fp16'"):
        _run(None, 1, amp="fp32")  # ("float16" is an accepted spelling of "fp16")
    with pytest.raises(ValueError, match="compile"):
        _run(None, 1, compile="nope")


def test_fp16_overflow_skips_the_step_instead_of_failing(tmp_path):
    """A scaled fp16 gradient that overflows is skipped (scale halves, parameters and EMA kept)."""
    sde = scoresde.VPSDE()
    model = _mlp(sde)
    calls = []

    def objective(m, sde_, x0, generator=None):
        calls.append(1)
        loss = scoresde.dsm_loss(m, sde_, x0, generator=generator)
        return loss * (1e30 if len(calls) == 1 else 1.0)  # the first step's scaled gradient overflows

    cfg = TrainConfig(steps=2, batch_size=32, warmup=0, eval_every=0, log_every=0, quiet=True, amp="fp16")
    before = [p.detach().clone() for p in model.parameters()]
    seen = {}

    def cb(step, info):
        seen[step] = [p.detach().clone() for p in model.parameters()]

    r = train(model, sde, objective, toy("two_moons", 128), cfg, callback=cb)
    assert r.step == 2
    assert all(torch.equal(p, q) for p, q in zip(before, seen[1]))  # step 1 skipped
    assert not all(torch.equal(p, q) for p, q in zip(seen[1], seen[2]))  # step 2 trained


# ------------------------------------------------------------------------------------- messages
def _status(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("scoresde.train:")]


def test_train_says_when_it_resumes_and_when_nothing_is_left(tmp_path, capsys):
    _run(tmp_path, 2)
    assert _status(capsys) == []  # a new run (quiet) says nothing
    _run(tmp_path, 4, quiet=False)
    assert _status(capsys) == [f"scoresde.train: resuming from step 2 of 4 in {tmp_path}"]
    r = _run(tmp_path, 3, quiet=False)
    lines = _status(capsys)
    assert r.step == 4 and len(lines) == 1
    assert lines[0] == (f"scoresde.train: nothing trained: the run in {tmp_path} is already at step 4 and "
                        "steps=3 asks for no more (pass steps > 4 to train further)")
    _run(tmp_path, 4, quiet=True)
    assert _status(capsys) == []


def test_public_names_have_the_docstring_layout():
    import scoresde.amp
    import scoresde.device
    from test_docstrings import failures

    assert failures(scoresde.device) == [] and failures(scoresde.amp) == []


def test_train_device_auto_and_cuda_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    r = _run(None, 1, device="auto")
    assert next(r.model.parameters()).device == torch.device("cpu")
    with pytest.raises(ValueError, match="CUDA is not available"):
        _run(None, 1, device="cuda")
    with pytest.raises(ValueError, match="meta"):
        _run(None, 1, device="meta")
