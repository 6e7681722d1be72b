"""Honest progress of the command line (issue 11, item 5): bars count what their totals count.

- ``likelihood``: the PF-ODE bar advances once per network evaluation (the NFE of the adaptive
  solves, which it has no total for: it shows none), with "batch j/B" and the evaluations of
  the current batch in its postfix; it used to count batches and sit at 0/1 for a minute.
  A per-sample solve that calls the network on chunks of rows (``rows_per_call``) ticks once
  per evaluation, not once per chunk.
- the DDPM variational bound that follows has a bar whose total, chain steps x batches, is the
  number of evaluations it counts.
- ``compare``'s bits/dim of an ODE row and of a DDPM row get the same bars.
- ``--quiet`` prints nothing on stderr (likelihood, sample, compare), and without it they do:
  the bars, the weights used, sample's number of batches (one bar each), compare's line before
  it trains the digit classifier (seconds, with no output before) and its line per row.
"""
import json

import pytest
import torch

import scoresde
from scoresde.cli import main
from scoresde.cli.measure import likelihood, vlb_bits
from scoresde.cli.progress import NetBar
from scoresde.data import toy
from scoresde.models import MLP


class FakeBar:
    """Stands in for tqdm.auto.tqdm: records total, updates and postfixes."""

    made = []

    def __init__(self, *args, total=None, desc=None, **kw):
        self.total, self.desc, self.n, self.postfixes, self.closed = total, desc, 0, [], False
        FakeBar.made.append(self)

    def update(self, k=1):
        self.n += k

    def set_postfix_str(self, s, refresh=True):
        self.postfixes.append(s)

    def close(self):
        self.closed = True

    def __iter__(self):  # the library's sampler bars iterate
        return iter(())

    def __getattr__(self, name):  # any other tqdm method the library calls: a no-op
        return lambda *a, **k: None


@pytest.fixture
def bars(monkeypatch):
    import tqdm.auto
    FakeBar.made = []
    monkeypatch.setattr(tqdm.auto, "tqdm", FakeBar)
    return FakeBar.made


def _model(sde):
    torch.manual_seed(0)
    return scoresde.ScoreModel(MLP(2, hidden=16, num_layers=1, embed_dim=8), sde).eval()


def test_likelihood_bar_counts_every_network_evaluation(bars):
    sde = scoresde.VPSDE(N=50)
    model = _model(sde)
    res = likelihood(model, sde, toy("two_moons", 11), batch_size=4, rtol=1e-2, atol=1e-2, progress=True)
    assert len(bars) == 1
    bar = bars[0]
    assert bar.desc == "likelihood (PF-ODE)" and bar.total is None  # an adaptive solve's NFE is not known before
    assert len(res["nfe_per_solve"]) == 3 and min(res["nfe_per_solve"]) > 5
    assert bar.n == sum(res["nfe_per_solve"])  # one tick per evaluation, as the solver counts them
    assert bar.closed
    last = {}
    for p in bar.postfixes:  # the evaluations of the current batch, up to that batch's NFE
        j = int(p.split("batch ")[1].split("/")[0])
        assert p.startswith(f"batch {j}/3")
        last[j] = int(p.rsplit("NFE this batch ", 1)[1])
    assert last == {j + 1: nfe for j, nfe in enumerate(res["nfe_per_solve"])}
    hooks = model.net._forward_hooks
    assert not hooks  # removed afterwards


def test_per_sample_bar_counts_evaluations_not_chunk_calls(bars):
    # rows_per_call=2 on batches of 5: up to 3 network calls per evaluation; the bar counts one
    sde = scoresde.VPSDE(N=50)
    model = _model(sde)
    calls = []
    hook = model.net.register_forward_hook(lambda *a: calls.append(1))
    res = likelihood(model, sde, toy("two_moons", 10), batch_size=5, rtol=1e-2, atol=1e-2, progress=True,
                     step_control="per_sample", rows_per_call=2)
    hook.remove()
    assert len(bars) == 1 and len(res["nfe_per_solve"]) == 2
    assert bars[0].n == sum(res["nfe_per_solve"])  # the solver's NFE, as the JSON reports it
    assert len(calls) > 1.5 * bars[0].n  # the network was called on several chunks per evaluation
    assert int(bars[0].postfixes[-1].rsplit("NFE this batch ", 1)[1]) == res["nfe_per_solve"][-1]


def test_likelihood_without_progress_shows_no_bar(bars):
    sde = scoresde.VPSDE(N=50)
    res = likelihood(_model(sde), sde, toy("two_moons", 5), batch_size=5, rtol=1e-2, atol=1e-2, progress=False)
    assert bars == [] and res["n_points"] == 5


def test_variational_bound_bar_total_is_steps_times_batches(bars):
    sde = scoresde.VPSDE(N=40)
    levels = torch.randint(0, 17, (7, 2), generator=torch.Generator().manual_seed(0))
    r = vlb_bits(_model(sde), sde, levels, 17, batch_size=3, progress=True)
    assert len(bars) == 1
    bar = bars[0]
    assert bar.desc == "variational bound (DDPM)"
    assert bar.total == r["vlb_steps"] * 3 == bar.n  # 3 batches of a chain of vlb_steps network calls
    assert bar.postfixes[-1].startswith("batch 3/3")
    same = vlb_bits(_model(sde), sde, levels, 17, batch_size=3, progress=False)  # the bar does not change the numbers
    assert same["vlb"] == r["vlb"]


def test_net_bar_counts_calls_of_the_wrapped_network(bars):
    net = torch.nn.Linear(2, 2)
    with NetBar(net, "x", total=3) as bar:
        bar.batch(2)
        for _ in range(3):
            net(torch.zeros(1, 2))
    assert bars[0].n == 3 == bar.count and bars[0].total == 3 and not net._forward_hooks
    with pytest.raises(ValueError, match="total must be >= 0"):
        NetBar(net, "x", total=-1)


@pytest.fixture(scope="module")
def digit_run(tmp_path_factory):
    """A tiny continuous-VP run on the digits (MLP), with a 40-step chain for the bound."""
    out = tmp_path_factory.mktemp("prog") / "run"
    assert main(["train", "--data", "digits", "--out", str(out), "--steps", "3", "--model", "mlp", "--hidden", "16",
                 "--layers", "1", "--batch-size", "16", "--warmup", "1", "--num-scales", "40", "--quiet"]) == 0
    return out


def test_cli_likelihood_bars(digit_run, tmp_path, bars, capsys):
    out = tmp_path / "l.json"
    assert main(["likelihood", str(digit_run), "-n", "5", "--batch-size", "2", "--rtol", "1e-2", "--atol", "1e-2",
                 "--vlb", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    by = {b.desc: b for b in bars}
    ode, vlb = by["likelihood (PF-ODE)"], by["variational bound (DDPM)"]
    assert ode.total is None and ode.n == sum(res["nfe_per_solve"]) and len(res["nfe_per_solve"]) == 3
    assert vlb.total == vlb.n == res["vlb_steps"] * 3 and res["vlb_steps"] == 40


@pytest.mark.parametrize("quiet", [True, False])
def test_quiet_prints_nothing_on_stderr(digit_run, tmp_path, capsys, quiet):
    q = ["--quiet"] if quiet else []
    assert main(["likelihood", str(digit_run), "-n", "3", "--rtol", "1e-2", "--atol", "1e-2", "--vlb",
                 "--out", str(tmp_path / "l.json"), *q]) == 0
    assert main(["sample", str(digit_run), "-n", "4", "--batch-size", "2", "--steps", "3", "--out", str(tmp_path / "s"),
                 *q]) == 0
    assert main(["compare", str(digit_run), "--methods", "euler_maruyama:3", "ode:0.1", "ddpm:4", "-n", "8",
                 "--bpd-points", "3", "--out", str(tmp_path / "cmp"), *q]) == 0
    captured = capsys.readouterr()
    assert "bits/dim" in captured.out and "samples by" in captured.out
    if quiet:
        assert captured.err == ""
    else:
        for what in ("likelihood (PF-ODE)", "variational bound (DDPM)", "using the EMA weights", "[3/3]",
                     "2 batches of up to 2 samples, one bar each",
                     "preparing the quality metric and its real-data floor (training the digit classifier)"):
            assert what in captured.err, what


def test_compare_bits_per_dim_bars(digit_run, tmp_path, bars, capsys):
    assert main(["compare", str(digit_run), "--methods", "ode:0.1", "ddpm:4", "-n", "8", "--bpd-points", "3",
                 "--out", str(tmp_path / "cmp")]) == 0
    res = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    by = {b.desc: b for b in bars}
    ode = by["bits/dim (PF-ODE, tol 0.1)"]
    assert ode.total is None and ode.n == next(r["bpd_nfe"] for r in res["rows"] if r["method"] == "ode")
    vlb = by["variational bound (4 steps)"]
    assert vlb.total == vlb.n == 4
