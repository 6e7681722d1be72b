"""Training loop: EMA closed form and buffers (case C20), exact resume after SIGKILL, warm-up,
bad input (unwritable folder, mismatched or corrupt checkpoint), EMA weights at load time.

Numbers checked and their sources:
- EMA: ema_k = sum_j w_j p_j with w_1 = prod_{i=2..k} d_i, w_j = (1 - d_j) prod_{i>j} d_i,
  d_i = min(decay, (1+i)/(10+i)) (the reference code's warm-up); to 1e-12 in float64.
- C20: weight left on the first parameters after 1 000 updates = decay^999: 0.9999 -> 0.905,
  0.999 -> 0.368; with warm-up it is < 1e-3.
- Resume: parameters, EMA and Adam state after a SIGKILL + resume are bit-identical (torch.equal)
  to an uninterrupted run (issue 6).
- Warm-up: logged lr at update s = lr * min(1, s / warmup) (reference optimization_manager,
  shifted by one update, see scoresde.train).
"""
import json
import math
import os
import signal
import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn

import scoresde
from scoresde.checkpoint import load_checkpoint
from scoresde.data import toy
from scoresde.models import MLP
from scoresde.train import TrainConfig, ema_decay, ema_model, load_score_model, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _mlp(sde, seed=0):
    torch.manual_seed(seed)
    return scoresde.ScoreModel(MLP(2, hidden=32, num_layers=2, embed_dim=16), sde)


# ------------------------------------------------------------------------------------------ EMA
class _Scalar(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros((), dtype=torch.float64))
        self.register_buffer("table", torch.zeros(4, dtype=torch.float64))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))


def _closed_form(values, decay, warmup):
    k = len(values)
    d = [None, None] + [ema_decay(i, decay, warmup) for i in range(2, k + 1)]
    total = 0.0
    for j in range(1, k + 1):
        w = 1.0 if j == 1 else (1.0 - d[j])
        for i in range(j + 1, k + 1):
            w *= d[i]
        total += w * values[j - 1]
    return total


@pytest.mark.parametrize("decay,warmup", [(0.9999, True), (0.9, False), (0.5, True)])
def test_ema_scalar_closed_form_and_buffers_bit_identical(decay, warmup):
    """ema_k matches the closed-form weighted sum; buffers equal the online ones after every update."""
    g = torch.Generator().manual_seed(0)
    values = torch.randn(60, generator=g, dtype=torch.float64).tolist()
    m = _Scalar()
    ema = ema_model(m, decay, warmup)
    for k, v in enumerate(values, start=1):
        with torch.no_grad():
            m.w.fill_(v)
            m.table.copy_(torch.randn(4, generator=g, dtype=torch.float64))  # e.g. a beta table
            m.count += 1
        ema.update_parameters(m)
        assert torch.equal(ema.module.table, m.table) and torch.equal(ema.module.count, m.count)
        if k in (1, 2, 10, 60):
            assert float(ema.module.w.detach()) == pytest.approx(_closed_form(values[:k], decay, warmup), rel=1e-12, abs=1e-14)
    assert int(ema.n_averaged) == 60


@pytest.mark.parametrize("decay,warmup,expected", [(0.9999, False, 0.905), (0.999, False, 0.368)])
def test_ema_weight_on_first_parameters_c20(decay, warmup, expected):
    """C20: after 1 000 updates the first parameters keep decay^999 of the weight."""
    m = _Scalar()
    ema = ema_model(m, decay, warmup)
    for k in range(1000):
        with torch.no_grad():
            m.w.fill_(1.0 if k == 0 else 0.0)
        ema.update_parameters(m)
    assert float(ema.module.w.detach()) == pytest.approx(decay ** 999, rel=1e-9)
    assert round(float(ema.module.w.detach()), 3) == expected


def test_ema_warmup_forgets_first_parameters_c20():
    """C20: with the (1+n)/(10+n) warm-up the weight on the first parameters after 1 000 updates < 1e-3."""
    m = _Scalar()
    ema = ema_model(m, 0.9999, True)
    for k in range(1000):
        with torch.no_grad():
            m.w.fill_(1.0 if k == 0 else 0.0)
        ema.update_parameters(m)
    exact = math.prod((1 + i) / (10 + i) for i in range(2, 1001))
    assert float(ema.module.w.detach()) == pytest.approx(exact, rel=1e-6)
    assert float(ema.module.w.detach()) < 1e-3


class _BNNet(nn.Module):
    """A network with buffers that change in training (BatchNorm running statistics)."""

    def __init__(self):
        super().__init__()
        self.lin1, self.bn, self.lin2 = nn.Linear(3, 16), nn.BatchNorm1d(16), nn.Linear(16, 2)

    def forward(self, x, time):
        h = torch.cat([x, (time / 1000.0)[:, None]], 1)
        return self.lin2(torch.relu(self.bn(self.lin1(h))))


def test_train_ema_buffers_copied_parameters_averaged(tmp_path):
    """In train(): EMA buffers bit-identical to the online model's, parameters averaged (C20)."""
    sde = scoresde.VPSDE()
    torch.manual_seed(0)
    model = scoresde.ScoreModel(_BNNet(), sde)
    cfg = TrainConfig(steps=25, batch_size=32, lr=1e-2, warmup=0, ema_decay=0.9, eval_every=0, log_every=5,
                      checkpoint_every=0, quiet=True)
    r = train(model, sde, "dsm", toy("two_moons", 256), cfg)
    bufs = dict(model.named_buffers())
    assert int(bufs["net.bn.num_batches_tracked"]) == 25
    for name, b in r.ema_model.named_buffers():
        assert torch.equal(b, bufs[name]), name
    online = dict(model.named_parameters())
    assert any(not torch.equal(p, online[n]) for n, p in r.ema_model.named_parameters())


# --------------------------------------------------------------------------------------- resume
def _job(out, steps, every, kill_at=0):
    """The run compared in the resume tests (in this process, or in a worker that may SIGKILL itself)."""
    sde = scoresde.VPSDE()
    model = _mlp(sde)

    def cb(step, info):
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    cfg = TrainConfig.small(steps, batch_size=64, checkpoint_every=every, eval_every=every, out_dir=str(out),
                            quiet=True)
    r = train(model, sde, "dsm", toy("8gaussians", 1000), cfg, eval_dataset=toy("8gaussians", 200, seed=1),
              callback=cb)
    return {"model": model.state_dict(), "ema": r.ema_model.state_dict(), "rng": torch.get_rng_state()}


_WORKER = """
import sys, torch
torch.set_num_threads(1)
sys.path[:0] = [{root!r}, {tests!r}]
from test_train import _job
out, steps, every, kill_at, res = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
torch.save(_job(out, steps, every, kill_at), res)
"""


def _run_worker(tmp_path, out, steps, every, kill_at, res):
    script = tmp_path / "worker.py"
    script.write_text(_WORKER.format(root=ROOT, tests=os.path.join(ROOT, "tests")))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(script), str(out), str(steps), str(every), str(kill_at), str(res)],
                          env=env, capture_output=True, text=True, timeout=600)


def _resume_matches(tmp_path, steps, every, kill_at):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the worker, so that float reductions run in the same order
    try:
        a = _job(tmp_path / "full", steps, every)
    finally:
        torch.set_num_threads(threads)
    killed = _run_worker(tmp_path, tmp_path / "cut", steps, every, kill_at, tmp_path / "never.pt")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (tmp_path / "never.pt").exists()
    last = every * (kill_at // every)
    assert load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["step"] == last
    resumed = _run_worker(tmp_path, tmp_path / "cut", steps, every, 0, tmp_path / "resumed.pt")
    assert resumed.returncode == 0, resumed.stderr
    b = torch.load(tmp_path / "resumed.pt")
    for part in ("model", "ema"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f"{part}.{k} differs after resume"
    assert torch.equal(a["rng"], b["rng"])  # the global RNG after train() is the same too
    ca, cb = load_checkpoint(tmp_path / "full" / "checkpoint.pt"), load_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    for k, st in ca["optimizer"]["state"].items():
        for name, v in st.items():
            assert torch.equal(v, cb["optimizer"]["state"][k][name]), f"Adam {name} of param {k}"
    la = [json.loads(x) for x in (tmp_path / "full" / "log.jsonl").read_text().splitlines()]
    lb = [json.loads(x) for x in (tmp_path / "cut" / "log.jsonl").read_text().splitlines()]
    strip = [{k: v for k, v in d.items() if k != "elapsed_s"} for d in la]
    assert strip == [{k: v for k, v in d.items() if k != "elapsed_s"} for d in lb]  # no duplicated steps


def test_resume_after_sigkill_is_bit_identical(tmp_path):
    """Issue 6: 300 updates, checkpoint every 100, SIGKILL at 150, resume -> torch.equal to uninterrupted."""
    _resume_matches(tmp_path, 300, 100, 150)


@pytest.mark.slow
def test_resume_after_sigkill_is_bit_identical_2k(tmp_path):
    """Issue 6 as stated: 2 000 updates, checkpoint at k = 1 000, SIGKILL at 1 500, resume."""
    _resume_matches(tmp_path, 2000, 1000, 1500)


# ---------------------------------------------------------------------------------- schedule / log
def test_warmup_lr_and_log(tmp_path):
    """lr at update s = lr * min(1, s / warmup); log.jsonl has loss, lr, grad_norm; config.json is written."""
    sde = scoresde.VPSDE()
    cfg = TrainConfig(steps=12, batch_size=16, lr=1e-3, warmup=8, log_every=1, eval_every=6, checkpoint_every=0,
                      out_dir=str(tmp_path), quiet=True)
    train(_mlp(sde), sde, "dsm", toy("checkerboard", 128), cfg, eval_dataset=toy("checkerboard", 40, seed=3))
    lines = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    train_lines = [d for d in lines if "lr" in d]
    assert [d["step"] for d in train_lines] == list(range(1, 13))
    for d in train_lines:
        assert d["lr"] == pytest.approx(1e-3 * min(1.0, d["step"] / 8), rel=1e-12)
        assert math.isfinite(d["loss"]) and d["grad_norm"] > 0
    assert [d["step"] for d in lines if "eval_loss" in d] == [6, 12]
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["sde"] == sde.config() and saved["objective"] == {"loss": "dsm"}
    assert saved["data"]["loader"] == "toy" and saved["train"]["warmup"] == 8
    ck = load_checkpoint(tmp_path / "checkpoint.pt")  # the final checkpoint is always written
    assert ck["step"] == 12 and ck["config"] == saved


def test_eval_loss_is_fixed_noise(tmp_path):
    """The eval loss of a fixed model is the same number at every evaluation (fixed noise)."""
    sde = scoresde.VPSDE()
    cfg = TrainConfig(steps=4, batch_size=16, lr=1e-12, warmup=0, ema_decay=0.0, eval_every=2, quiet=True,
                      log_every=0, out_dir=str(tmp_path), checkpoint_every=0)
    train(_mlp(sde), sde, "dsm", toy("two_moons", 64), cfg, eval_dataset=toy("two_moons", 40, seed=3))
    lines = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    ev = [d["eval_loss"] for d in lines if "eval_loss" in d]
    assert len(ev) == 2 and ev[0] == pytest.approx(ev[1], rel=1e-6)


# ------------------------------------------------------------------------------------ bad input
def test_unwritable_out_dir_fails_before_training(tmp_path):
    """A folder that cannot be created is a one-line ValueError before any update."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    sde = scoresde.VPSDE()
    model = _mlp(sde)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calls = []
    cfg = TrainConfig(steps=3, batch_size=8, out_dir=str(blocker / "run"), quiet=True)
    with pytest.raises(ValueError, match="not writable") as e:
        train(model, sde, "dsm", toy("two_moons", 64), cfg, callback=lambda s, i: calls.append(s))
    assert "\n" not in str(e.value) and calls == []
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def _small_run(out, **kw):
    sde = scoresde.VPSDE()
    cfg = TrainConfig(steps=kw.pop("steps", 4), batch_size=16, warmup=0, eval_every=0, log_every=0,
                      checkpoint_every=2, out_dir=str(out), quiet=True, **kw)
    return train(_mlp(sde), sde, "dsm", toy("two_moons", 64), cfg)


def test_resume_with_other_config_refused_and_checkpoint_kept(tmp_path):
    """Resuming with another lr / network / data: one-line ValueError naming the key; file unchanged."""
    _small_run(tmp_path)
    ck = tmp_path / "checkpoint.pt"
    raw = ck.read_bytes()
    with pytest.raises(ValueError, match=r"train\.lr: saved 0\.0002, requested 0\.001") as e:
        _small_run(tmp_path, steps=6, lr=1e-3)
    assert "\n" not in str(e.value)
    sde = scoresde.VPSDE()
    other = scoresde.ScoreModel(MLP(2, hidden=16, num_layers=2, embed_dim=16), sde)
    cfg = TrainConfig(steps=6, batch_size=16, warmup=0, checkpoint_every=2, out_dir=str(tmp_path), quiet=True)
    with pytest.raises(ValueError, match=r"model\.net\.hidden: saved 32, requested 16"):
        train(other, sde, "dsm", toy("two_moons", 64), cfg)
    with pytest.raises(ValueError, match=r"data\.toy"):
        train(_mlp(sde), sde, "dsm", toy("swiss_roll", 64), cfg)
    with pytest.raises(ValueError, match=r"sde\.beta_max"):
        sde2 = scoresde.VPSDE(beta_max=10.0)
        train(_mlp(sde2), sde2, "dsm", toy("two_moons", 64), cfg)
    assert ck.read_bytes() == raw
    r = _small_run(tmp_path, steps=6)  # a longer run with the same settings resumes
    assert r.step == 6 and load_checkpoint(ck)["step"] == 6


def test_corrupt_checkpoint_in_out_dir_refused_and_kept(tmp_path):
    ck = tmp_path / "checkpoint.pt"
    ck.write_bytes(b"\x80\x02garbage" * 10)
    with pytest.raises(ValueError, match="not a readable checkpoint") as e:
        _small_run(tmp_path)
    assert "\n" not in str(e.value) and ck.read_bytes() == b"\x80\x02garbage" * 10


def test_bad_dataset_and_objective():
    sde = scoresde.VPSDE()
    cfg = TrainConfig(steps=2, batch_size=8, quiet=True)
    with pytest.raises(TypeError, match="floats"):
        train(_mlp(sde), sde, "dsm", torch.zeros(16, 2, dtype=torch.long), cfg)
    with pytest.raises(ValueError, match="NaN"):
        train(_mlp(sde), sde, "dsm", torch.full((16, 2), float("nan")), cfg)
    with pytest.raises(ValueError, match="shape"):  # the network names the wrong shape
        train(_mlp(sde), sde, "dsm", torch.zeros(16, 3), cfg)
    with pytest.raises(ValueError, match="larger than the data set"):
        train(_mlp(sde), sde, "dsm", torch.zeros(4, 2), cfg)
    with pytest.raises(ValueError, match="unknown objective"):
        train(_mlp(sde), sde, "l2", torch.zeros(16, 2), cfg)
    with pytest.raises(ValueError, match="unknown train config key"):
        train(_mlp(sde), sde, "dsm", torch.zeros(16, 2), {"step": 3})
    with pytest.raises(ValueError, match="model.sde differs"):
        train(_mlp(sde), scoresde.VESDE(), "dsm", torch.zeros(16, 2), cfg)


def test_nonfinite_gradient_is_an_error(tmp_path):
    sde = scoresde.VPSDE()

    def bad(model, sde, x0, generator=None):
        return model(x0, torch.full((x0.shape[0],), 0.5)).sum() * float("inf")

    with pytest.raises(ValueError, match="non-finite gradient norm at update 1"):
        train(_mlp(sde), sde, bad, toy("two_moons", 64),
              TrainConfig(steps=3, batch_size=8, quiet=True, out_dir=str(tmp_path)))
    assert not (tmp_path / "checkpoint.pt").exists()


def test_nonfinite_gradient_says_whether_a_checkpoint_exists(tmp_path):
    """Issue 10, item 7: the divergence message claimed "the last checkpoint is intact" when there was none."""
    sde = scoresde.VPSDE()
    calls = []

    def diverges_at_3(model, sde, x0, generator=None):
        calls.append(1)
        scale = float("inf") if len(calls) >= 3 else 1.0
        return model(x0, torch.full((x0.shape[0],), 0.5)).pow(2).mean() * scale

    with pytest.raises(ValueError, match=r"at update 1 .*; no checkpoint was written yet \(.*checkpoint\.pt does "
                                         r"not exist\): lower lr") as e:
        train(_mlp(sde), sde, lambda m, s_, x, generator=None: m(x, torch.full((x.shape[0],), 0.5)).sum() * float("inf"),
              toy("two_moons", 64), TrainConfig(steps=3, batch_size=8, quiet=True, out_dir=str(tmp_path / "a")))
    assert "is intact" not in str(e.value)
    with pytest.raises(ValueError, match=r"at update 3 .*; the last checkpoint \(.*checkpoint\.pt, step 2\) is intact"):
        train(_mlp(sde), sde, diverges_at_3, toy("two_moons", 64),
              TrainConfig(steps=6, batch_size=8, warmup=0, checkpoint_every=2, quiet=True, out_dir=str(tmp_path / "b")))
    assert load_checkpoint(tmp_path / "b" / "checkpoint.pt")["step"] == 2
    with pytest.raises(ValueError, match=r"nothing was saved \(no out_dir\)"):
        train(_mlp(sde), sde, lambda m, s_, x, generator=None: m(x, torch.full((x.shape[0],), 0.5)).sum() * float("inf"),
              toy("two_moons", 64), TrainConfig(steps=3, batch_size=8, quiet=True))


def test_vesde_below_the_data_scale_warns_with_the_prior_kl(tmp_path):
    """Issue 10, item 7: a VE sigma_max far below the data's scale trained without a word."""
    from scoresde.data_stats import PriorMismatchWarning, prior_kl, suggest_sigma_max
    data = toy("two_moons", 64)
    sde = scoresde.VESDE(0.01, 1.0)
    kl = prior_kl(sde, data)
    cfg = TrainConfig(steps=1, batch_size=16, quiet=True)
    with pytest.warns(PriorMismatchWarning, match=rf"sigma_max 1 is below the largest pairwise data distance "
                                                  rf"{suggest_sigma_max(data):.4g}.* KL of {kl:.3g} nats per dimension"):
        train(_mlp(sde), sde, "dsm", data, cfg)
    good = scoresde.VESDE(0.01, suggest_sigma_max(data))
    with warnings.catch_warnings():
        warnings.simplefilter("error", PriorMismatchWarning)
        train(_mlp(good), good, "dsm", data, cfg)


# -------------------------------------------------------------------------------------- loading
def test_load_score_model_uses_ema_by_default_and_says_so(tmp_path, capsys):
    """Samplers get the EMA tensors by default (C20); the message says which weights were loaded."""
    sde = scoresde.VPSDE()
    cfg = TrainConfig(steps=20, batch_size=16, lr=1e-2, warmup=0, ema_decay=0.9, log_every=0, eval_every=0,
                      out_dir=str(tmp_path), quiet=True)
    r = train(_mlp(sde), sde, "dsm", toy("two_moons", 64), cfg)
    capsys.readouterr()
    model, sde2, conf = load_score_model(tmp_path / "checkpoint.pt")
    assert "EMA weights (20 updates, decay 0.9)" in capsys.readouterr().err
    assert conf["weights"] == "ema" and conf["step"] == 20 and sde2.config() == sde.config()
    ema_sd, online_sd = r.ema_model.state_dict(), r.model.state_dict()
    for k, v in model.state_dict().items():
        assert torch.equal(v, ema_sd[k])
    assert any(not torch.equal(v, online_sd[k]) for k, v in model.state_dict().items())
    model_o, _, conf_o = load_score_model(tmp_path / "checkpoint.pt", use_ema=False)
    assert "online" in capsys.readouterr().err and conf_o["weights"] == "online"
    assert all(torch.equal(v, online_sd[k]) for k, v in model_o.state_dict().items())
    x, t = torch.randn(5, 2), torch.full((5,), 0.3)
    with torch.no_grad():
        assert torch.equal(model(x, t), r.ema_model(x, t))


def test_load_score_model_mismatch(tmp_path):
    sde = scoresde.VPSDE()
    _small_run(tmp_path)
    path = tmp_path / "checkpoint.pt"
    with pytest.raises(ValueError, match=r"net\.hidden: saved 32, requested 64") as e:
        load_score_model(path, net=MLP(2, hidden=64, num_layers=2, embed_dim=16), quiet=True)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match=r"sde\.beta_min"):
        load_score_model(path, sde=scoresde.VPSDE(beta_min=0.5), quiet=True)
    with pytest.raises(ValueError, match="weights do not fit"):
        load_score_model(path, net=nn.Linear(2, 2), quiet=True)  # no config(): checked by the state dict
    m, s, _ = load_score_model(path, sde=sde, quiet=True)
    assert isinstance(m, scoresde.ScoreModel) and s is sde and not m.training


def test_load_score_model_accepts_the_run_folder(tmp_path):
    # break-test: the CLI takes run folders but load_score_model raised FileNotFoundError on one;
    # the folder loads checkpoint.pt: the same weights as the file, bit for bit
    _small_run(tmp_path)
    m_dir, _, c_dir = load_score_model(tmp_path, quiet=True)
    m_file, _, c_file = load_score_model(str(tmp_path / "checkpoint.pt"), quiet=True)
    assert c_dir == c_file
    assert all(torch.equal(v, m_file.state_dict()[k]) for k, v in m_dir.state_dict().items())
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="checkpoint.pt"):
        load_score_model(tmp_path / "empty", quiet=True)


def test_small_config_scaling():
    """TrainConfig.small: warm-up steps // 20 (at most 5000), EMA horizon 1/(1-0.999) = 1000 updates."""
    c = TrainConfig.small(2000)
    assert (c.lr, c.warmup, c.ema_decay, c.grad_clip, c.checkpoint_every) == (1e-3, 100, 0.999, 1.0, 200)
    assert TrainConfig.small(10 ** 6).warmup == 5000
    assert TrainConfig().lr == 2e-4 and TrainConfig().warmup == 5000 and TrainConfig().ema_decay == 0.9999


@pytest.mark.parametrize("objective", [{"loss": "dsm", "weighting": "likelihood"}, "ddpm"])
def test_first_logged_loss_equals_the_objective_on_the_sampled_batch(tmp_path, objective):
    """Wiring: the first update's loss is the objective on DistributedSampler's first batch with the
    noise generator seeded from (seed, step 0, part 0); options of the objective reach the loss."""
    from torch.utils.data import DistributedSampler

    from scoresde import losses
    from scoresde.train import _seed

    sde = scoresde.VPSDE()
    discrete = objective == "ddpm"
    torch.manual_seed(0)
    model = scoresde.ScoreModel(MLP(2, hidden=32, num_layers=2, embed_dim=16), sde, discrete=discrete)
    ds = toy("swiss_roll", 100)
    sampler = DistributedSampler(range(100), num_replicas=1, rank=0, shuffle=True, seed=7, drop_last=True)
    sampler.set_epoch(0)
    x0 = ds.data[list(sampler)[:16]]
    gen = torch.Generator().manual_seed(_seed(7, "noise", 0, 0))
    with torch.no_grad():
        if discrete:
            expected = float(losses.ddpm_loss(model, sde, x0, generator=gen))
        else:
            expected = float(losses.dsm_loss(model, sde, x0, generator=gen, weighting="likelihood"))
    cfg = TrainConfig(steps=1, batch_size=16, seed=7, log_every=1, eval_every=0, out_dir=str(tmp_path), quiet=True)
    train(model, sde, objective, ds, cfg)
    first = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[0])
    assert first["step"] == 1 and first["loss"] == pytest.approx(expected, rel=1e-6)


def test_importance_sampling_state_resumes_exactly(tmp_path):
    """Hybrid loss with LossSecondMomentSampler: the sampler's history goes through the checkpoint, so
    20 + 20 updates in two calls give bit-identical weights and sampler state to 40 in one call."""
    sde = scoresde.VPSDE(N=50)
    obj = {"loss": "hybrid", "importance_sampling": True}

    def run(out, steps):
        torch.manual_seed(0)
        model = scoresde.ScoreModel(MLP(2, hidden=16, num_layers=1, embed_dim=16, learn_variance=True), sde,
                                    discrete=True, learn_variance=True)
        cfg = TrainConfig(steps=steps, batch_size=32, lr=1e-3, warmup=0, checkpoint_every=20, log_every=0,
                          eval_every=0, out_dir=str(out), quiet=True)
        return train(model, sde, obj, toy("two_moons", 128), cfg)

    a = run(tmp_path / "a", 40)
    run(tmp_path / "b", 20)
    b = run(tmp_path / "b", 40)
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, b.model.state_dict()[k])
    sa, sb = load_checkpoint(tmp_path / "a" / "checkpoint.pt"), load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    for k in sa["loss_sampler"]:
        assert torch.equal(sa["loss_sampler"][k], sb["loss_sampler"][k])
    from scoresde.losses import LossSecondMomentSampler
    from scoresde.train import _sampler_load

    smp = LossSecondMomentSampler(50)
    _sampler_load(smp, sa["loss_sampler"])
    assert smp.warmed_up() and float(smp.weights().std()) > 0  # the weighted path was exercised
    with pytest.raises(ValueError, match="importance_sampling applies"):
        train(_mlp(sde), sde, {"loss": "dsm", "importance_sampling": True}, toy("two_moons", 64),
              TrainConfig(steps=1, batch_size=8, quiet=True))


class _DropNet(_BNNet):
    """BatchNorm buffers and dropout (global RNG) in one network."""

    def __init__(self):
        super().__init__()
        self.drop = nn.Dropout(0.5)

    def forward(self, x, time):
        h = torch.cat([x, (time / 1000.0)[:, None]], 1)
        return self.lin2(self.drop(torch.relu(self.bn(self.lin1(h)))))


def test_resume_exact_with_dropout_and_buffers(tmp_path):
    """Dropout draws and BatchNorm buffers survive a resume: 3 + 3 updates == 6 updates (torch.equal)."""
    sde = scoresde.VPSDE()

    def run(out, steps):
        torch.manual_seed(0)
        model = scoresde.ScoreModel(_DropNet(), sde)
        cfg = TrainConfig(steps=steps, batch_size=16, lr=1e-2, warmup=2, ema_decay=0.5, log_every=1, eval_every=0,
                          checkpoint_every=3, out_dir=str(out), quiet=True)
        return train(model, sde, "dsm", toy("two_moons", 64), cfg)

    a = run(tmp_path / "a", 6)
    run(tmp_path / "b", 3)
    b = run(tmp_path / "b", 6)
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, b.model.state_dict()[k]), k
    for k, v in a.ema_model.state_dict().items():
        assert torch.equal(v, b.ema_model.state_dict()[k]), k


def test_existing_checkpoint_never_overwritten_by_a_fresh_run(tmp_path):
    _small_run(tmp_path)
    raw = (tmp_path / "checkpoint.pt").read_bytes()
    with pytest.raises(ValueError, match="resume=False"):
        _small_run(tmp_path, resume=False)
    assert (tmp_path / "checkpoint.pt").read_bytes() == raw
    r = _small_run(tmp_path)  # nothing left to do: the stored loss is reported
    assert r.step == 4 and r.loss == load_checkpoint(tmp_path / "checkpoint.pt")["metrics"]["loss"]


_SDES = {"vp": lambda: scoresde.VPSDE(), "vp_cosine": lambda: scoresde.VPSDE(schedule="cosine"),
         "subvp": lambda: scoresde.SubVPSDE(), "ve": lambda: scoresde.VESDE(sigma_max=10.0)}
_OBJECTIVES = ["dsm", {"loss": "dsm", "weighting": "likelihood"}, "ddpm", "hybrid",
               {"loss": "ddpm", "importance_sampling": True}, {"loss": "hybrid", "importance_sampling": True}]


@pytest.mark.parametrize("sde_name", list(_SDES))
@pytest.mark.parametrize("objective", _OBJECTIVES, ids=lambda o: o if isinstance(o, str) else "-".join(
    str(v) for v in o.values()))
def test_every_objective_trains_on_every_sde(sde_name, objective):
    """Issue 10, item 1: each objective x SDE trains 3 updates with a tiny MLP to a finite loss.

    The discrete objectives need the VP chain (VP, sub-VP): on VE they are a named ValueError. On
    the cosine VP (T = t_max = 0.9946) ddpm / hybrid and the importance sampler draw from the 994
    chain steps with t_i <= T; they drew from all 1000 and failed with "t must lie in [0, T]".
    """
    sde = _SDES[sde_name]()
    name = objective if isinstance(objective, str) else objective["loss"]
    discrete = name in ("ddpm", "hybrid")
    learn = name == "hybrid"
    cfg = TrainConfig(steps=3, batch_size=16, lr=1e-3, warmup=0, log_every=1, eval_every=0, quiet=True)
    torch.manual_seed(0)
    net = MLP(2, hidden=16, num_layers=1, embed_dim=16, learn_variance=learn)
    if discrete and sde_name == "ve":  # no DDPM chain (nor discrete=True ScoreModel) on VE
        model = scoresde.ScoreModel(net, sde, learn_variance=learn)
        with pytest.raises(ValueError, match="VPSDE or SubVPSDE"):
            train(model, sde, objective, toy("two_moons", 64), cfg)
        return
    model = scoresde.ScoreModel(net, sde, discrete=discrete, learn_variance=learn)
    res = train(model, sde, objective, toy("two_moons", 64), cfg)
    assert res.step == 3 and res.loss is not None and math.isfinite(res.loss)


def test_cosine_chain_is_what_the_discrete_objectives_draw_from():
    """The cosine VP's chain is its table steps with t_i <= T: 994 of 1000, the importance sampler's
    length; t_index beyond it is a named error; training the hybrid objective with importance
    sampling stores a 994-step history."""
    from scoresde.losses import ddpm_loss

    sde = scoresde.VPSDE(schedule="cosine")
    assert sde.chain_length == 994 and scoresde.VPSDE().chain_length == 1000
    model = scoresde.ScoreModel(MLP(2, hidden=16, num_layers=1, embed_dim=16), sde, discrete=True)
    x0 = toy("two_moons", 8).data
    with torch.no_grad():
        loss = ddpm_loss(model, sde, x0, t_index=torch.full((8,), 993))
    assert math.isfinite(float(loss))
    with pytest.raises(ValueError, match=r"t_index must lie in \[0, 994\)"):
        ddpm_loss(model, sde, x0, t_index=torch.full((8,), 994))
