"""The noise-conditional classifier (issue 12, item 2): shapes and time input, learning an easy
problem, train_classifier's checkpoint / EMA / exact resume, accuracy against t.

Numbers checked and their sources:
- Two Gaussians N(+-0.5 * 1, 0.2^2 I) in 1x8x8 (64-D): at t = 0.05 on the VP SDE alpha = 0.97 and
  sigma = 0.24, so the class means stay 64^(1/2) * 0.97 = 7.8 apart in units of the per-axis
  spread sqrt(0.97^2 0.2^2 + 0.24^2) = 0.31: the Bayes accuracy is ~1, and a trained classifier
  must exceed 0.9. At t = T = 1 the signal is alpha = 0.0066 times the data: accuracy ~1/2.
- Resume: an interrupted run continued from its checkpoint gives bit-identical weights, EMA and
  Adam state (torch.equal) to an uninterrupted one, as for scoresde.train.
- torchrun with 2 gloo processes and micro_batches = 2: the classifier and a class-conditional
  score model (label dropout 0.5) are identical on both ranks and equal one process with the same
  global batch within 1e-6 (only the gradient's summation order differs).
- Parameter counts of the documented defaults: Classifier(VPSDE(), 10) 301 322; ch=16 and K = 2: 75 906.
"""
import json

import pytest
import torch

import scoresde
from scoresde.classify import classifier_accuracy, classifier_loss, load_classifier, train_classifier
from scoresde.data import Dataset, digits
from scoresde.models import Classifier, model_from_config
from scoresde.train import TrainConfig, load_score_model

TINY = dict(ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=())


def _two_gaussians(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = (2.0 * y.float() - 1.0)[:, None, None, None] * 0.5 + 0.2 * torch.randn(n, 1, 8, 8, generator=g)
    return Dataset(x, (-2.0, 2.0), bounded=False, name="two-gaussians", labels=y)


def test_logits_shape_and_time_input():
    sde = scoresde.VPSDE()
    torch.manual_seed(0)
    clf = Classifier(sde, 10, **TINY)
    x = torch.randn(5, 1, 8, 8)
    out = clf(x, torch.full((5,), 0.3))
    assert out.shape == (5, 10) and out.dtype == torch.float32
    assert torch.equal(out, torch.zeros(5, 10))  # zero-initialised head: uniform at init
    with torch.no_grad():  # the zero-initialised layers (head, second convs) would hide the time
        for p in clf.parameters():
            if p.dim() > 1 and p.abs().sum() == 0:
                p.normal_(0, 0.2)
    # the continuous time goes through network_time: (N - 1) t for VP ("label")
    assert clf.time_input == "label" and Classifier(scoresde.VESDE(), 3, **TINY).time_input == "sigma"
    a, b = clf(x, 0.3), clf(x, torch.full((5,), 0.3))
    assert torch.equal(a, b) and not torch.allclose(clf(x, 0.3), clf(x, 0.7))
    assert clf(x.double(), 0.3).dtype == torch.float64
    again = model_from_config(json.loads(json.dumps(clf.config())))
    assert isinstance(again, Classifier) and again.config() == clf.config()
    with pytest.raises(ValueError, match="shape"):
        clf(torch.randn(2, 1, 16, 16), 0.3)
    with pytest.raises(ValueError, match="t"):
        clf(x, 1.5)  # outside [0, T]
    with pytest.raises(ValueError, match="num_classes"):
        Classifier(sde, 1)
    with pytest.raises(TypeError, match="SDE"):
        Classifier("vp", 2)
    assert sum(p.numel() for p in Classifier(sde, 10).parameters()) == 301322
    assert sum(p.numel() for p in Classifier(sde, 2, ch=16).parameters()) == 75906


def test_classifier_learns_two_gaussians_at_small_t():
    sde = scoresde.VPSDE()
    ds = _two_gaussians()
    torch.manual_seed(0)
    clf = Classifier(sde, 2, **TINY)
    cfg = TrainConfig(steps=40, batch_size=64, lr=2e-3, warmup=0, ema_decay=0.9, log_every=10, eval_every=0,
                      checkpoint_every=0, quiet=True)
    res = train_classifier(clf, sde, ds, cfg, eps=0.01)
    acc = classifier_accuracy(res.model, sde, _two_gaussians(seed=1), [0.05, 1.0])
    assert acc[0.05] > 0.9
    assert abs(acc[1.0] - 0.5) < 0.15  # at T the data are (almost) gone: chance
    assert res.loss < 0.5  # nats; ln 2 = 0.69 is chance
    with torch.no_grad():
        loss = classifier_loss(res.model, sde, ds.data[:8], y=ds.labels[:8], t=0.05, generator=torch.Generator())
    assert loss.dim() == 0 and loss.item() < 0.3


def _run(out, steps, seed=0):
    sde = scoresde.VPSDE()
    torch.manual_seed(seed)
    clf = Classifier(sde, 2, **TINY)
    cfg = TrainConfig(steps=steps, batch_size=32, micro_batches=2, lr=1e-3, warmup=3, ema_decay=0.9, log_every=2,
                      eval_every=3, checkpoint_every=3, quiet=True, out_dir=str(out))
    return train_classifier(clf, sde, _two_gaussians(64), cfg, eval_dataset=_two_gaussians(32, seed=1))


def test_train_classifier_checkpoint_and_exact_resume(tmp_path):
    full = _run(tmp_path / "full", 8)
    _run(tmp_path / "part", 5)  # "interrupted" at step 5 (checkpoint at 5: the final one)
    resumed = _run(tmp_path / "part", 8, seed=1)  # other initial weights: the checkpoint's are loaded
    assert resumed.step == full.step == 8
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(full.ema_model.state_dict().values(), resumed.ema_model.state_dict().values()):
        assert torch.equal(a, b)
    ca = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)
    cb = torch.load(tmp_path / "part" / "checkpoint.pt", weights_only=True)
    for sa, sb in zip(ca["optimizer"]["state"].values(), cb["optimizer"]["state"].values()):
        assert torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])
    assert ca["config"]["kind"] == "classifier" and ca["config"]["objective"] == {"loss": "cross_entropy", "eps": 1e-5}
    assert full.eval_loss == resumed.eval_loss and full.eval_loss is not None
    clf, cfg = load_classifier(tmp_path / "full", quiet=True)
    assert cfg["weights"] == "ema" and cfg["step"] == 8 and not clf.training
    x = torch.randn(3, 1, 8, 8)
    assert torch.equal(clf(x, 0.2), full.ema_model.eval()(x, 0.2))
    with pytest.raises(ValueError, match="classifier"):
        load_score_model(tmp_path / "full", quiet=True)
    with pytest.raises(ValueError):  # another config on resume
        sde = scoresde.VPSDE()
        train_classifier(Classifier(sde, 2, **TINY), sde, _two_gaussians(64),
                         TrainConfig(steps=9, batch_size=16, out_dir=str(tmp_path / "full"), quiet=True))


def test_train_classifier_bad_input():
    sde = scoresde.VPSDE()
    clf = Classifier(sde, 2, **TINY)
    cfg = TrainConfig(steps=1, batch_size=8, quiet=True)
    unlabelled = Dataset(torch.randn(16, 1, 8, 8), (-4.0, 4.0), bounded=False)
    with pytest.raises(ValueError, match="no labels"):
        train_classifier(clf, sde, unlabelled, cfg)
    with pytest.raises(ValueError, match="num_classes"):
        train_classifier(clf, sde, digits("test"), cfg)  # 10 classes, a 2-class classifier
    with pytest.raises(ValueError, match="label_dropout"):
        train_classifier(clf, sde, _two_gaussians(16), TrainConfig(steps=1, batch_size=8, quiet=True,
                                                                   label_dropout=0.1))
    with pytest.raises(ValueError, match="differs"):
        train_classifier(clf, scoresde.VPSDE(beta_max=10.0), _two_gaussians(16), cfg)
    with pytest.raises(TypeError, match="Classifier"):
        train_classifier(torch.nn.Linear(2, 2), sde, _two_gaussians(16), cfg)
    with pytest.raises(ValueError, match="labels"):
        classifier_accuracy(clf, sde, unlabelled, [0.5])


_WORKER = """
import sys, torch
torch.set_num_threads(1)
sys.path[:0] = [{root!r}, {tests!r}]
import torch.distributed as dist
from test_classifier import _ddp_runs
out = _ddp_runs(sys.argv[1])
torch.save(out, sys.argv[2] + "." + str(dist.get_rank()))
dist.barrier()
dist.destroy_process_group()
"""


def _ddp_runs(out):
    """A classifier and a class-conditional score model (label dropout 0.5), 4 updates of 2 micro-batches."""
    from scoresde.models import UNet

    sde = scoresde.VPSDE()
    torch.manual_seed(0)
    clf = Classifier(sde, 2, **TINY)
    cfg = dict(steps=4, batch_size=32, micro_batches=2, lr=1e-3, warmup=0, ema_decay=0.9, log_every=1,
               eval_every=0, checkpoint_every=0, quiet=True)
    r = train_classifier(clf, sde, _two_gaussians(64), TrainConfig(**cfg, out_dir=out + "/clf"))
    torch.manual_seed(0)
    model = scoresde.ScoreModel(UNet(num_classes=2, in_channels=1, image_size=8, **TINY), sde)
    scoresde.train(model, sde, "dsm", _two_gaussians(64), TrainConfig(**cfg, label_dropout=0.5, out_dir=out + "/cond"))
    return {"clf": clf.state_dict(), "clf_loss": r.loss, "cond": model.state_dict()}


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="torch.distributed with gloo is not available")
def test_torchrun_two_processes_equal_one_process(tmp_path):
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = tmp_path / "worker.py"
    script.write_text(_WORKER.format(root=root, tests=os.path.join(root, "tests")))
    res = str(tmp_path / "res.pt")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
           str(tmp_path / "ddp"), res]
    r = subprocess.run(cmd, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    r0, r1 = torch.load(res + ".0"), torch.load(res + ".1")
    single = _ddp_runs(str(tmp_path / "single"))
    for part in ("clf", "cond"):
        for k, v in single[part].items():
            assert torch.equal(r0[part][k], r1[part][k])
            torch.testing.assert_close(r0[part][k], v, atol=1e-6, rtol=1e-5)
    assert r0["clf_loss"] == pytest.approx(single["clf_loss"], rel=1e-5)
