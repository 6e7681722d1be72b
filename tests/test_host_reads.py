"""Host reads (GPU synchronisations) per score evaluation (issue 13, item 5).

A read of a tensor's value on the host (``item``, ``tolist``, ``bool``, ``float``, ``int``,
``__index__``) waits for the GPU to finish everything queued before it. These tests count such
reads on the CPU by wrapping those methods of ``torch.Tensor`` (no GPU is needed: the count is the
same on any device, since the code path does not depend on it).

Counts per ``ScoreModel`` call (an eps network, target "score", t a (B,) tensor), measured with
the same counter on the code before this change / after:
- unconditional: 4 reads (float(t.min()), float(t.max()), the network's isfinite(time),
  any(sigma <= 0)) / 1 (t's range, sigma's minimum and the labels' range stacked in one read);
- with labels y: 6 / 1; ``predict(target=prediction)``: 3 / 1; a Python-number t with
  target = prediction: 3 / 0.
The samplers' NaN check adds 1 read per ``check_every`` evaluations (``FiniteCheck``), the
direct call of a network (no ScoreModel) 1 (2 with labels), none inside ``torch.compile``.
"""
import contextlib

import pytest
import torch

from scoresde import VESDE, VPSDE, ScoreModel
from scoresde.losses import dsm_loss
from scoresde.models import MLP, UNet
from scoresde.score_fn import FiniteCheck, call_score

READS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__")
SMALL = dict(in_channels=1, image_size=8, ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=())


@contextlib.contextmanager
def count_reads():
    """Count the host reads of tensor values inside the block (a list of method names)."""
    log, orig = [], {name: getattr(torch.Tensor, name) for name in READS}

    def counted(name, method):
        def read(self, *args, **kwargs):
            log.append(name)
            return method(self, *args, **kwargs)
        return read

    for name in READS:
        setattr(torch.Tensor, name, counted(name, orig[name]))
    try:
        yield log
    finally:
        for name in READS:
            setattr(torch.Tensor, name, orig[name])


def _model(kind):
    torch.manual_seed(0)
    if kind == "unet-ve":
        return ScoreModel(UNet(**SMALL), VESDE()), torch.randn(3, 1, 8, 8)
    if kind == "unet-labels":
        return ScoreModel(UNet(**SMALL, num_classes=4), VPSDE()), torch.randn(3, 1, 8, 8)
    if kind == "mlp-discrete":
        return ScoreModel(MLP(dim=2, hidden=16), VPSDE(), discrete=True), torch.randn(3, 2)
    if kind == "mlp-variance":
        return ScoreModel(MLP(dim=2, hidden=16, learn_variance=True), VPSDE(), learn_variance=True), torch.randn(3, 2)
    return ScoreModel(MLP(dim=2, hidden=16, num_classes=3), VPSDE()), torch.randn(3, 2)


@pytest.mark.parametrize("kind", ["mlp", "unet-ve", "unet-labels", "mlp-discrete", "mlp-variance"])
def test_a_score_model_call_reads_the_host_once(kind):
    model, x = _model(kind)
    t = torch.tensor([0.3, 0.5, 0.9])
    y = torch.tensor([0, 2, 1]) if model.num_classes else None
    calls = {"score": lambda: model(x, t), "score y": lambda: model(x, t, y=y),
             "eps": lambda: model.predict(x, t, "eps"), "x0": lambda: model.predict(x, t, "x0", y=y),
             "raw": lambda: model.raw(x, t, y=y), "number t, eps": lambda: model.predict(x, 0.5, "eps"),
             "number t, score": lambda: model(x, 0.5)}
    for name, call in calls.items():
        if "y" in name and y is None:
            continue
        with count_reads() as log:
            out = call()
        # a number t is checked on the host; so is the discrete table's sigma (> 0 at every step)
        want = 0 if name == "number t, eps" or (name == "number t, score" and model.discrete) else 1
        assert len(log) == want, (name, log)
        assert torch.isfinite(out[0] if isinstance(out, tuple) else out).all()


def test_the_samplers_call_path_reads_once_per_call_plus_the_deferred_nan_check():
    model, x = _model("mlp")
    check = FiniteCheck(every=4)
    with count_reads() as log:
        for _ in range(8):
            call_score(model, x, torch.full((3,), 0.5), check=check)
        check.flush()
    assert len(log) == 8 + 2


def test_a_network_called_directly_checks_its_inputs_and_none_inside_compile(monkeypatch):
    import scoresde._checks as checks

    net, x = MLP(dim=2, hidden=16, num_classes=3), torch.randn(3, 2)
    t, y = torch.tensor([1.0, 500.0, 999.0]), torch.tensor([0, 3, 1])
    for args, want in (((x, t), 1), ((x, t, y), 2)):
        with count_reads() as log:
            net(*args)
        assert len(log) == want
    with pytest.raises(ValueError, match="time contains NaN or infinite values"):
        net(x, torch.tensor([1.0, float("nan"), 3.0]))
    with pytest.raises(ValueError, match=r"y must lie in \[0, num_classes=3\] .* got values in \[0, 4\]"):
        net(x, t, y=torch.tensor([0, 4, 1]))
    monkeypatch.setattr(checks, "_is_compiling", lambda: True)  # a torch.compile trace: no host read
    with count_reads() as log:
        net(x, t, y)
    assert log == []


def test_errors_are_raised_from_the_one_read():
    model, x = _model("mlp")
    with pytest.raises(ValueError, match="t contains NaN or infinite values"):
        model(x, torch.tensor([0.5, float("nan"), 0.5]))
    with pytest.raises(ValueError, match=r"t must lie in \[0, T=1\]; got values in \[0.5, 2\]"):
        model(x, torch.tensor([0.5, 2.0, 0.5]))
    with pytest.raises(ValueError, match=r"t must lie in \[0, T=1\]"):
        model(x, 1.5)
    with pytest.raises(ValueError, match=r"y must lie in \[0, num_classes=3\] .* got values in \[-1, 1\]"):
        model(x, 0.5, y=torch.tensor([0, -1, 1]))
    with pytest.raises(ValueError, match="sigma\\(t\\) = 0 at t = 0"):
        model(x, torch.tensor([0.0, 0.5, 0.5]))
    with pytest.raises(ValueError, match="sigma\\(t\\) = 0 at t = 0"):
        model.predict(x, 0.0, "x0")
    assert torch.isfinite(model.predict(x, 0.0, "eps")).all()  # no conversion: t = 0 is fine
    assert torch.isfinite(_model("mlp-discrete")[0](x, 0.0)).all()  # the table's sigma at step 0 is > 0
    assert torch.isfinite(_model("unet-ve")[0](torch.randn(3, 1, 8, 8), 0.0)).all()  # VE: sigma(0) = sigma_min


def test_a_dsm_training_step_reads_the_host_three_times():
    """x0 finite (with dequantize: finite and in (-1, 1)), the ScoreModel call, the score's NaN check:
    9 reads before, 10 with dequantize (each check read apart, and sde.marginal_prob checked x0 and t
    again); the commit that made it 3 said 14 by mistake."""
    model = ScoreModel(MLP(dim=2, hidden=16), VPSDE())
    x0, sde, g = torch.rand(6, 2) * 1.8 - 0.9, VPSDE(), torch.Generator().manual_seed(0)
    centres = (2 * torch.randint(0, 17, (6, 2), generator=g) + 1) / 17 - 1  # dequantize needs bin centres
    for x, kwargs in ((x0, {}), (centres, {"dequantize": 17})):
        with count_reads() as log:
            loss = dsm_loss(model, sde, x, generator=g, **kwargs)
        assert len(log) == 3 and torch.isfinite(loss)
    with pytest.raises(ValueError, match="x0 contains NaN or infinite values"):
        dsm_loss(model, sde, torch.tensor([[0.1, float("nan")]]), dequantize=17)
    with pytest.raises(ValueError, match=r"bin centres .* in \(-1, 1\)"):
        dsm_loss(model, sde, torch.tensor([[0.1, 1.0]]), dequantize=17)
    with pytest.raises(ValueError, match="t must be > 0"):
        dsm_loss(model, sde, x0, t=0.0)


def test_label_dropout_draws_on_the_generators_device(monkeypatch):
    """A CUDA generator raised 'Expected a 'cpu' device type for generator': the uniforms are now
    drawn on the generator's device (here a stand-in for a CUDA one), then moved to y's."""
    from scoresde.labels import drop_labels

    seen, rand = [], torch.rand

    def fake_rand(*shape, generator=None, device=None, dtype=None):
        seen.append((generator, torch.device(device), dtype))
        return rand(*shape, dtype=dtype)

    cuda_generator = type("Gen", (), {"device": torch.device("cuda")})()
    monkeypatch.setattr(torch, "rand", fake_rand)
    out = drop_labels(torch.tensor([0, 1, 2, 1]), 1.0, 3, generator=cuda_generator)
    assert torch.equal(out, torch.full((4,), 3)) and seen == [(cuda_generator, torch.device("cuda"), torch.float64)]
    drop_labels(torch.tensor([0, 1]), 0.5, 3)
    assert seen[-1][1] == torch.device("cpu")  # no generator: y's device's default generator


def test_the_networks_trace_in_one_graph_under_torch_compile():
    """The value checks of time and labels are skipped inside a trace: one graph, no break (5 graphs
    and 4 breaks before, at the host reads of check_labels / check_time)."""
    dynamo = pytest.importorskip("torch._dynamo")
    net = MLP(dim=2, hidden=16, num_classes=3)
    explained = dynamo.explain(net)(torch.randn(4, 2), torch.rand(4) * 999, torch.tensor([0, 1, 2, 3]))
    assert (explained.graph_count, explained.graph_break_count) == (1, 0)
