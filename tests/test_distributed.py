"""Multi-process training under torchrun (gloo on CPU) and sharded evaluation (issue 6).

Numbers checked:
- ``torchrun --nproc_per_node=2``, 6 updates: parameters bit-identical on both ranks (DDP) and
  equal to a one-process run with the same global batch (32) and micro_batches = 2 within
  float tolerance (atol 1e-6: only the summation order of the gradient differs).
- The same with the hybrid loss and importance-sampled steps (the sampler's history is fed in
  micro-batch order from every process): identical ranks, equal to one process, same draws.
- Only rank 0 writes: one log line per step, one checkpoint.
- shard_evaluate: each rank evaluates its own contiguous rows with a rank-dependent number of
  inner iterations (an adaptive solve) and no collective; the gathered result equals the
  one-process result row for row (case C13). With ``aligned=True`` the ranks take whole chunks
  0, 2, 4, ... and 1, 3, 5, ... of the same rows as one process, results back in row order; a
  chunk that fails on one rank raises on every rank (no rank left waiting in the gather).
- _wrap_ddp: a UNet whose attention 1x1 projection gets gradients with strides unlike its
  weight's trains under DDP with no "Grad strides do not match" warning (see also
  tests/test_cli_distributed.py) and with the same weights as without the layout hook.
"""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

import scoresde
from scoresde.data import toy
from scoresde.models import MLP
from scoresde.train import TrainConfig, shard_evaluate, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(out):
    return TrainConfig(steps=6, batch_size=32, lr=1e-3, warmup=2, ema_decay=0.9, log_every=1, checkpoint_every=3,
                       eval_every=3, micro_batches=2, out_dir=str(out), quiet=True)


def _model(sde):
    torch.manual_seed(0)
    return scoresde.ScoreModel(MLP(2, hidden=32, num_layers=2, embed_dim=16), sde)


def _hybrid_run(out):
    """Hybrid loss with importance sampling: the sampler is fed every process's losses (all-gather)."""
    sde = scoresde.VPSDE(N=50)
    torch.manual_seed(1)
    model = scoresde.ScoreModel(MLP(2, hidden=16, num_layers=1, embed_dim=16, learn_variance=True), sde,
                                discrete=True, learn_variance=True)
    cfg = TrainConfig(steps=20, batch_size=32, lr=1e-3, warmup=0, log_every=0, eval_every=0, checkpoint_every=0,
                      micro_batches=2, out_dir=str(out), quiet=True)
    train(model, sde, {"loss": "hybrid", "importance_sampling": True}, toy("two_moons", 256), cfg)
    return model.state_dict()


def _rowfn(x, idx):
    return {"s": x.double().sum(1), "i": idx}


_WORKER = """
import os, sys, torch
torch.set_num_threads(1)
sys.path[:0] = [{root!r}, {tests!r}]
import torch.distributed as dist
import scoresde
from scoresde.data import toy
from scoresde.train import train, shard_evaluate
from test_distributed import _config, _hybrid_run, _model, _rowfn
out, res = sys.argv[1], sys.argv[2]
sde = scoresde.VPSDE()
model = _model(sde)
r = train(model, sde, "dsm", toy("two_moons", 256), _config(out), eval_dataset=toy("two_moons", 64, seed=1))
rank = dist.get_rank()
hybrid = _hybrid_run(out + "-hybrid")
calls = []
def fn(x, idx):
    calls.append(idx.clone())
    y = x
    for _ in range(1 + 3 * rank):  # a different number of inner steps per rank, as an adaptive solve takes
        y = y * 1.0
    return _rowfn(y, idx)
gathered = shard_evaluate(fn, toy("two_moons", 37).data, batch_size=5, with_indices=True)
calls_before = len(calls)
aligned = shard_evaluate(fn, toy("two_moons", 37).data, batch_size=5, with_indices=True, aligned=True)
aligned_calls = torch.cat(calls[calls_before:])
def bad(x, idx):
    if rank == 1 and int(idx[0]) == 5:
        raise ValueError("chunk 1 diverged")
    return x.sum(1)
try:
    shard_evaluate(bad, toy("two_moons", 37).data, batch_size=5, with_indices=True, aligned=True)
    failure = None
except Exception as e:
    failure = type(e).__name__ + ": " + str(e)
torch.save({{"model": model.state_dict(), "ema": r.ema_model.state_dict(), "loss": r.loss, "eval_loss": r.eval_loss,
            "gathered": gathered, "calls": torch.cat(calls[:calls_before]), "world": dist.get_world_size(),
            "aligned": aligned, "aligned_calls": aligned_calls, "failure": failure,
            "hybrid": hybrid}}, res + "." + str(rank))
dist.barrier()  # both done before the group goes: a rank leaving early can abort the other's gloo threads
dist.destroy_process_group()
"""


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="torch.distributed with gloo is not available")
def test_torchrun_two_processes_equals_one_process(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(_WORKER.format(root=ROOT, tests=os.path.join(ROOT, "tests")))
    out, res = tmp_path / "ddp", str(tmp_path / "res.pt")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run(torchrun + [str(script), str(out), res], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    r0, r1 = torch.load(res + ".0"), torch.load(res + ".1")
    assert r0["world"] == 2
    for part in ("model", "ema"):
        for k in r0[part]:
            assert torch.equal(r0[part][k], r1[part][k]), f"ranks differ in {part}.{k}"

    sde = scoresde.VPSDE()
    model = _model(sde)
    single = train(model, sde, "dsm", toy("two_moons", 256), _config(tmp_path / "single"),
                   eval_dataset=toy("two_moons", 64, seed=1))
    moved = 0.0
    init = _model(sde).state_dict()
    for k, v in model.state_dict().items():
        torch.testing.assert_close(r0["model"][k], v, atol=1e-6, rtol=1e-5)
        moved = max(moved, float((v - init[k]).abs().max()))
    assert moved > 1e-3  # the runs did train (the comparison is not between untouched weights)
    for k, v in single.ema_model.state_dict().items():
        torch.testing.assert_close(r0["ema"][k], v, atol=1e-6, rtol=1e-5)
    assert r0["loss"] == pytest.approx(single.loss, rel=1e-5)
    assert r0["eval_loss"] == pytest.approx(single.eval_loss, rel=1e-5)

    hybrid = _hybrid_run(tmp_path / "single-hybrid")
    for k, v in hybrid.items():
        assert torch.equal(r0["hybrid"][k], r1["hybrid"][k])
        torch.testing.assert_close(r0["hybrid"][k], v, atol=1e-6, rtol=1e-5)
    ck = torch.load(tmp_path / "ddp-hybrid" / "checkpoint.pt", weights_only=True)
    ck1 = torch.load(tmp_path / "single-hybrid" / "checkpoint.pt", weights_only=True)
    assert torch.equal(ck["loss_sampler"]["counts"], ck1["loss_sampler"]["counts"])
    torch.testing.assert_close(ck["loss_sampler"]["losses"], ck1["loss_sampler"]["losses"], atol=1e-5, rtol=1e-4)

    lines = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [d["step"] for d in lines if "loss" in d] == [1, 2, 3, 4, 5, 6]  # rank 0 alone writes
    assert sorted(os.listdir(out)) == ["checkpoint.pt", "config.json", "log.jsonl"]
    ref = _rowfn(toy("two_moons", 37).data, torch.arange(37))
    for rk in (r0, r1):
        assert torch.equal(rk["gathered"]["s"], ref["s"]) and torch.equal(rk["gathered"]["i"], ref["i"])
    assert torch.equal(r0["calls"], torch.arange(0, 18)) and torch.equal(r1["calls"], torch.arange(18, 37))
    for rk in (r0, r1):  # aligned: whole chunks of 5, dealt 0, 2, 4, 6 / 1, 3, 5, 7, gathered in row order
        assert torch.equal(rk["aligned"]["s"], ref["s"]) and torch.equal(rk["aligned"]["i"], ref["i"])
    assert torch.equal(r0["aligned_calls"], torch.cat([torch.arange(a, a + 5) for a in (0, 10, 20, 30)]))
    assert torch.equal(r1["aligned_calls"], torch.cat([torch.arange(5, 20).reshape(3, 5)[::2].reshape(-1),
                                                       torch.arange(25, 30), torch.arange(35, 37)]))
    assert r1["failure"] == "ValueError: chunk 1 diverged"
    assert r0["failure"] == "RuntimeError: process 1 of 2 failed: ValueError: chunk 1 diverged"


def test_micro_batches_must_divide_batch():
    sde = scoresde.VPSDE()
    with pytest.raises(ValueError, match="divisible by micro_batches 3"):
        train(_model(sde), sde, "dsm", toy("two_moons", 64), TrainConfig(steps=1, batch_size=16, micro_batches=3,
                                                                          quiet=True))


def test_shard_evaluate_single_process_and_errors():
    x = torch.arange(20.0).reshape(10, 2)
    out = shard_evaluate(lambda a: a.sum(1), x, batch_size=3)
    assert torch.equal(out, x.sum(1))
    with pytest.raises(ValueError, match="first dimension"):
        shard_evaluate(lambda a: a.sum(), x, batch_size=3)
    with pytest.raises(TypeError, match="tensor"):
        shard_evaluate(lambda a: 1.0, x)
    seen = []
    out = shard_evaluate(lambda a, i: seen.append(i.tolist()) or a.sum(1), x, batch_size=4, with_indices=True,
                         aligned=True)
    assert torch.equal(out, x.sum(1)) and seen == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    with pytest.raises(ValueError, match="aligned=True needs a batch_size"):
        shard_evaluate(lambda a: a.sum(1), x, aligned=True)
    with pytest.raises(ValueError, match="diverged"):  # one process: the original error, unchanged
        shard_evaluate(lambda a: (_ for _ in ()).throw(ValueError("diverged")), x, batch_size=4, aligned=True)


def test_layout_hook_copies_only_mismatched_gradients():
    """The hook _wrap_ddp registers gives a 1x1 conv weight its own strides, values unchanged."""
    from scoresde.distributed import _match_grad_layout
    conv = torch.nn.Conv2d(16, 16, 1)
    _match_grad_layout(conv)
    _match_grad_layout(conv)  # registered once
    assert conv.weight._scoresde_layout_hook and not hasattr(conv.bias, "_scoresde_layout_hook")
    h = torch.randn(2, 4, 16, requires_grad=False)  # (B, HW, C), then a transposed view as the UNet's attention
    x = h.transpose(1, 2).reshape(2, 16, 2, 2)
    conv(x).square().sum().backward()
    assert conv.weight.grad.stride() == conv.weight.stride()
    ref = torch.nn.Conv2d(16, 16, 1)
    ref.load_state_dict(conv.state_dict())
    ref(x).square().sum().backward()
    torch.testing.assert_close(conv.weight.grad, ref.weight.grad, rtol=0, atol=0)


def test_shard_evaluate_rejects_empty_data():
    """The docstring promises the concatenated outputs of all n rows: n = 0 (or a 0-d tensor) is a ValueError,
    not None."""
    for data in (torch.zeros(0, 3), torch.tensor(1.0)):
        with pytest.raises(ValueError, match="data must hold at least one row"):
            scoresde.shard_evaluate(lambda x: x, data, batch_size=2)
    assert torch.equal(scoresde.shard_evaluate(lambda x: 2 * x, torch.ones(3, 2), batch_size=2), 2 * torch.ones(3, 2))
