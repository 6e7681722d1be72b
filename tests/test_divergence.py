"""The exact trace of scoresde.divergence (issue 13, item 4): the batched backward passes give the loop's
trace to 1e-10 in float64, for a rotated Gaussian's closed form, an MLP and a conv net, at every chunk size;
the likelihood with the batched trace equals the likelihood with the loop."""
import math

import pytest
import torch
from torch import nn

import scoresde.divergence as dv
from scoresde import ScoreModel, VPSDE, VESDE
from scoresde.divergence import default_chunk_size, divergence
from scoresde.likelihood import log_likelihood, pf_drift
from scoresde.models import MLP, UNet
from scoresde.oracle import GaussianData


def _trace(score_fn, sde, x, t, chunk_size):
    xg = x.detach().requires_grad_(True)
    with torch.enable_grad():
        drift = pf_drift(score_fn, sde, xg, t)
        return divergence(drift, xg, None, chunk_size=chunk_size)


def _rotated_gaussian(D, seed=0):
    """N(mu, diag s^2) rotated by R: score R s_data(R^T x); div of the PF drift is rotation invariant."""
    data = GaussianData(mu=torch.linspace(-0.5, 0.5, D), std=torch.linspace(0.2, 0.6, D), shape=(D,))
    R, _ = torch.linalg.qr(torch.randn(D, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    base = data.score_fn

    def make(sde):
        s = base(sde)
        return lambda x, t: s(x @ R, t) @ R.T
    return data, make


@pytest.mark.parametrize("D", [8, 64])
@pytest.mark.parametrize("sde", [VPSDE(), VESDE()], ids=["vp", "ve"])
def test_exact_trace_equals_the_closed_form(sde, D):
    """div f~ = D f(t) + 1/2 g(t)^2 sum_i 1 / (alpha^2 s_i^2 + sigma^2) (the Gaussian's Jacobian), to 1e-10."""
    data, make = _rotated_gaussian(D)
    score = make(sde)
    x = torch.randn(5, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    t = torch.full((5,), 0.3, dtype=torch.float64)
    a, s = float(sde.mean_coeff(t[:1])), float(sde.marginal_std(t[:1]))
    f, g = float(sde.drift_coeff(t[:1])), float(sde.diffusion_coeff(t[:1]))
    closed = D * f + 0.5 * g**2 * float((1.0 / (a**2 * data.std**2 + s**2)).sum())
    for chunk in (1, 3, None, D):
        tr = _trace(score, sde, x, t, chunk)
        assert tr.shape == (5,)
        torch.testing.assert_close(tr, torch.full_like(tr, closed), rtol=1e-10, atol=1e-10)


class _Conv(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.a, self.b, self.t = nn.Conv2d(c, 8, 3, padding=1), nn.Conv2d(8, c, 3, padding=1), nn.Linear(1, 8)

    def forward(self, x, t):
        return self.b(torch.tanh(self.a(x) + self.t(t[:, None].to(x.dtype) / 1000)[:, :, None, None]))


def _nets():
    sde = VPSDE()
    torch.manual_seed(0)
    mlp = MLP(6, hidden=32, num_layers=2, embed_dim=16)
    unet = UNet(in_channels=1, image_size=8, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=())
    nets = [(mlp, (6,)), (_Conv(2), (2, 2, 2)), (unet, (1, 8, 8))]
    out = []
    for net, shape in nets:
        with torch.no_grad():  # zero-initialised output layers: give them weights, so that J is not 0
            for p in net.parameters():
                p.add_(0.05 * torch.randn_like(p))
        out.append((ScoreModel(net, sde).double().eval(), shape))
    return sde, out


@pytest.mark.parametrize("k", [0, 1, 2], ids=["mlp", "conv", "unet"])
def test_batched_trace_equals_the_loop(k):
    """Every chunk size (1 = the loop, a non-divisor, the default, all of D) gives the same trace to 1e-10."""
    sde, nets = _nets()
    model, shape = nets[k]
    x = torch.randn((3, *shape), generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    t = torch.full((3,), 0.4, dtype=torch.float64)
    D = math.prod(shape)
    loop = _trace(model, sde, x, t, 1)
    assert float(loop.abs().min()) > 1e-3  # a non-trivial Jacobian
    for chunk in (5, None, D, 10 * D):
        torch.testing.assert_close(_trace(model, sde, x, t, chunk), loop, rtol=1e-10, atol=1e-10)
    # sample b's trace depends on sample b only: a batch of one gives the same number
    torch.testing.assert_close(_trace(model, sde, x[:1], t[:1], None), loop[:1], rtol=1e-10, atol=1e-10)


def test_log_likelihood_exact_batched_equals_the_loop(monkeypatch):
    """log_likelihood(divergence="exact") with the default chunk == with one product at a time (CHUNK_ROWS = 0)
    to 1e-10 in float64, and both match the Gaussian oracle's closed-form log-density (to the ODE tolerance)."""
    sde = VPSDE()
    D = 16
    data = GaussianData(mu=torch.linspace(-0.5, 0.5, D), std=torch.linspace(0.2, 0.6, D), shape=(D,))
    x = data.sample(4, torch.Generator().manual_seed(3))
    kw = dict(eps=1e-5, divergence="exact", rtol=1e-7, atol=1e-7)
    r = log_likelihood(data.score_fn(sde), sde, x, **kw)
    monkeypatch.setattr(dv, "CHUNK_ROWS", 0)
    assert default_chunk_size(D, 4, 8) == 1
    r1 = log_likelihood(data.score_fn(sde), sde, x, **kw)
    torch.testing.assert_close(r.logp, r1.logp, rtol=1e-10, atol=1e-10)
    assert r.nfe == r1.nfe
    assert float((r.logp - data.pf_logp(sde, x, 1e-5)).abs().max()) / D < 2e-5


def test_default_chunk_and_bad_chunk_sizes():
    """The default keeps chunk x B within CHUNK_ROWS and chunk x B x D x bytes within CHUNK_BYTES, in [1, D];
    bad chunk sizes are named errors."""
    assert (dv.CHUNK_ROWS, dv.CHUNK_BYTES) == (256, 1 << 17)
    assert default_chunk_size(64, 16, 4) == 16  # by rows: 256 // 16
    assert default_chunk_size(256, 16, 4) == 8  # by bytes: 128 KiB // (256 x 16 x 4)
    assert default_chunk_size(8, 16, 4) == 8  # all of D
    assert default_chunk_size(256, 16, 8) == 4
    assert default_chunk_size(3072, 64, 4) == 1
    assert default_chunk_size(8, 1, 8) == 8
    assert default_chunk_size(256, 1000, 4) == 1  # more rows than CHUNK_ROWS already: the loop
    x = torch.randn(2, 3, requires_grad=True)
    y = x * 2
    with pytest.raises(ValueError, match="chunk_size"):
        divergence(y, x, None, chunk_size=0)
    with pytest.raises(TypeError, match="chunk_size"):
        divergence(y, x, None, chunk_size=2.0)
    torch.testing.assert_close(divergence(x * 2, x, None, chunk_size=2), torch.full((2,), 6.0))


def test_divergence_checks_chunk_size_and_shapes_before_autograd():
    """chunk_size is checked with probes too; a drift (or probes) of the wrong shape names both shapes instead of
    failing deep in the vmapped backward pass."""
    from scoresde.divergence import divergence, draw_probes
    x = torch.randn(4, 3, requires_grad=True)
    probes = draw_probes("hutchinson_rademacher", (2, 4, 3), x, torch.Generator().manual_seed(0))
    for bad, err in ((-5, ValueError), (0, ValueError), (2.5, TypeError), (True, TypeError)):
        with pytest.raises(err, match="chunk_size"):
            divergence(2 * x, x, probes, chunk_size=bad)
    with pytest.raises(ValueError, match=r"drift must have the shape of x .*drift \(4, 6\), x \(4, 3\)"):
        divergence(torch.cat([x, x], 1), x, None)
    with pytest.raises(ValueError, match=r"drift \(4, 6\), x \(4, 3\)"):
        divergence(torch.cat([x, x], 1), x, probes)
    with pytest.raises(ValueError, match=r"probes must be \(P, \*x.shape\)"):
        divergence(2 * x, x, probes[:, :2])
    assert torch.allclose(divergence(2 * x, x, probes, chunk_size=None), torch.full((4,), 6.0))
    assert torch.allclose(divergence(2 * x, x, None, chunk_size=2), torch.full((4,), 6.0))


def test_batched_trace_folds_the_chunk_into_one_backward_kernel():
    """A chunk of c products runs each convolution's backward kernel once on c x B rows, not once per cotangent.

    autograd.grad(..., is_grads_batched=True) (torch's legacy vmap) has no batching rule for
    convolution_backward: it ran the kernel c times and stacked the slices, which made the batched
    trace slower than the loop on a conv net. Counted with the profiler: torch.func.vmap calls the op
    once for the batched call and once for the folded kernel (2 per chunk), the legacy path 1 + c."""
    from torch.profiler import profile

    conv = nn.Conv2d(1, 4, 3, padding=1).double()
    x = torch.randn(2, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    D, chunk = 16, 8
    with torch.enable_grad():
        drift = torch.tanh(conv(x)).sum(1, keepdim=True)
        with profile() as prof:
            tr = divergence(drift, x, None, chunk_size=chunk)
    calls = sum(e.count for e in prof.key_averages() if e.key == "aten::convolution_backward")
    assert calls <= 2 * (D // chunk), calls  # legacy vmap: (1 + chunk) x (D // chunk) = 18
    with torch.enable_grad():
        drift = torch.tanh(conv(x)).sum(1, keepdim=True)
        loop = divergence(drift, x, None, chunk_size=1)
    torch.testing.assert_close(tr, loop, rtol=1e-12, atol=1e-12)


def test_chunked_trace_builds_no_d_by_d_identity(monkeypatch):
    """Each chunk's cotangents are built as chunk x B x D, not sliced from a D x D identity (576 MiB at
    D = 12288 in float32, on every evaluation): with torch.eye unavailable the trace is still exact."""
    D = 3000
    a = torch.linspace(0.5, 1.5, D, dtype=torch.float64)
    x = torch.randn(2, D, dtype=torch.float64, requires_grad=True)

    def no_eye(*args, **kwargs):
        raise AssertionError("the exact trace must not build a D x D identity")
    monkeypatch.setattr(torch, "eye", no_eye)
    with torch.enable_grad():
        got = divergence(torch.tanh(a * x) + a * x, x, None, chunk_size=7)
    want = (a * (1 - torch.tanh(a * x) ** 2) + a).sum(1)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)


def test_exact_trace_rejects_a_batch_that_couples_the_samples():
    """x - x.mean(0) (batch norm in training mode) has per-sample trace D (1 - 1/B), but the exact trace,
    one basis vector on every sample at once, would count the cross terms too: log_likelihood raises,
    naming model.eval(); Hutchinson (unbiased for a coupled batch) and the eval-mode net run."""
    B, D = 4, 6
    x = torch.randn(B, D, dtype=torch.float64, requires_grad=True)
    with torch.enable_grad():
        with pytest.raises(ValueError, match="model.eval"):
            dv.check_sample_independent(x - x.mean(0, keepdim=True), x)
        dv.check_sample_independent(torch.tanh(x) * 2.0, x)  # independent: no error
        dv.check_sample_independent(x[:1] - x[:1].mean(0), x[:1])  # B = 1: nothing to check
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(D, 16), nn.BatchNorm1d(16), nn.Tanh(), nn.Linear(16, D)).double()
    score = lambda x, t: net(x) - x  # noqa: E731
    xs = torch.randn(B, D, dtype=torch.float64)
    with pytest.raises(ValueError, match="mixes the samples"):
        log_likelihood(score, VPSDE(), xs, divergence="exact", method="rk4", steps=4)
    log_likelihood(score, VPSDE(), xs, method="rk4", steps=4)  # Hutchinson: runs
    net.eval()
    log_likelihood(score, VPSDE(), xs, divergence="exact", method="rk4", steps=4)


class _NumpySquare(torch.autograd.Function):
    """x^2 with a backward outside torch (as an extension kernel's): torch.func.vmap cannot batch it."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return torch.from_numpy(2 * x.detach().numpy() * g.detach().numpy())


def test_exact_trace_falls_back_to_the_loop_when_vmap_cannot_batch():
    """A backward vmap cannot batch (here numpy; GroupNorm on channels-last strides is another) makes the
    batched products fail: the trace warns and takes them one at a time, with the loop's result."""
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    with torch.enable_grad():
        want = divergence(torch.sin(_NumpySquare.apply(x)), x, None, chunk_size=1)
        with pytest.warns(RuntimeWarning, match="one at a time"):
            got = divergence(torch.sin(_NumpySquare.apply(x)), x, None, chunk_size=3)
    torch.testing.assert_close(got, want, rtol=1e-14, atol=0)
    torch.testing.assert_close(want, (2 * x * torch.cos(x * x)).sum(1).detach(), rtol=1e-12, atol=0)


@pytest.mark.parametrize("shape", [(), (0, 4), (3, 0)])
def test_divergence_rejects_empty_or_0d_x(shape):
    x = torch.zeros(shape, dtype=torch.float64, requires_grad=True)
    for chunk in (None, 1, 2):
        with pytest.raises(ValueError, match="x must be"):
            divergence(x * 2.0, x, None, chunk_size=chunk)


def test_chunk_tuner_keeps_the_fastest_candidate_and_the_exact_trace(monkeypatch):
    """The tuner times the default chunk, a quarter of it and the loop, twice each in turn, then keeps the
    fastest; every evaluation (tuning ones included) gives the loop's trace. Timing is faked here: each
    candidate's cost is set, and the tuner must pick the cheapest whichever it is."""
    D, B = 64, 16  # default chunk 16: candidates 16, 4, 1
    a = torch.linspace(0.5, 1.5, D, dtype=torch.float64)
    x = torch.randn(B, D, dtype=torch.float64, requires_grad=True)
    want = (a * (1 - torch.tanh(a * x) ** 2)).sum(1).detach()
    real = dv._exact_trace
    for costs in ({16: 1.0, 4: 3.0, 1: 2.0}, {16: 5.0, 4: 1.0, 1: 2.0}, {16: 5.0, 4: 3.0, 1: 0.5}):
        clock, used = [0.0], []

        def timed(drift, x, chunk, costs=costs, clock=clock, used=used):
            clock[0] += costs[chunk]
            used.append(chunk)
            return real(drift, x, chunk)  # (trace, the chunk used)
        monkeypatch.setattr(dv, "_exact_trace", timed)
        monkeypatch.setattr(dv.time, "perf_counter", lambda clock=clock: clock[0])
        tuner = dv.ChunkTuner()
        for _ in range(8):
            with torch.enable_grad():
                got = divergence(torch.tanh(a * x), x, None, chunk_size=tuner)
            torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
        best = min(costs, key=costs.get)
        assert sorted(used[:6]) == [1, 1, 4, 4, 16, 16] and used[6:] == [best, best]
        assert list(tuner.chosen.values()) == [best]


def test_likelihood_chunk_size_option():
    """log_likelihood(chunk_size=...): "auto" (default), None and ints give the same exact-trace logp (float64,
    1e-10 relative); other values raise naming chunk_size; bits_per_dim passes it on."""
    sde, data = VPSDE(), GaussianData(0.0, 0.5, (8,))
    x = data.sample(4, torch.Generator().manual_seed(0))
    got = [log_likelihood(data.score_fn(sde), sde, x, divergence="exact", method="rk4", steps=8, chunk_size=c).logp
           for c in ("auto", None, 1, 3)]
    for g in got[1:]:
        torch.testing.assert_close(g, got[0], rtol=1e-10, atol=0)
    for bad, err in (("fast", TypeError), (0, ValueError), (2.0, TypeError), (True, TypeError)):
        with pytest.raises(err, match="chunk_size"):
            log_likelihood(data.score_fn(sde), sde, x, divergence="exact", method="rk4", steps=8, chunk_size=bad)
    from scoresde import bits_per_dim
    levels = torch.randint(0, 256, (2, 8))
    bits_per_dim(data.score_fn(sde), sde, levels, divergence="exact", method="rk4", steps=8, chunk_size=2)


def test_chunk_tuner_drops_a_chunk_that_falls_back_to_the_loop():
    """A backward vmap cannot batch makes every batched candidate run the loop: the tuner must keep the loop,
    not a chunk whose evaluations would each try vmap, fail and warn again."""
    x = torch.randn(16, 64, dtype=torch.float64, requires_grad=True)
    tuner = dv.ChunkTuner()
    with pytest.warns(RuntimeWarning, match="one at a time"):
        for _ in range(6):
            with torch.enable_grad():
                got = divergence(torch.sin(_NumpySquare.apply(x)), x, None, chunk_size=tuner)
    assert list(tuner.chosen.values()) == [1]
    torch.testing.assert_close(got, (2 * x * torch.cos(x * x)).sum(1).detach(), rtol=1e-12, atol=0)
    for bad, err in (("2", TypeError), (2.0, TypeError), (None, TypeError), (0, ValueError)):
        with pytest.raises(err, match="trials"):
            dv.ChunkTuner(trials=bad)


def test_a_bad_chunk_size_is_refused_before_the_generator_is_used():
    """Like n_probes and rows_per_call, chunk_size is checked before the probes (log_likelihood) and the
    dequantization noise (bits_per_dim) are drawn from the caller's generator."""
    from scoresde import bits_per_dim
    sde, data = VPSDE(), GaussianData(0.0, 0.5, (8,))
    x = data.sample(2, torch.Generator().manual_seed(0))
    for fn, arg in ((log_likelihood, x), (bits_per_dim, torch.randint(0, 256, (2, 8)))):
        g = torch.Generator().manual_seed(1)
        state = g.get_state()
        with pytest.raises(TypeError, match="chunk_size"):
            fn(data.score_fn(sde), sde, arg, generator=g, chunk_size="fast")
        assert torch.equal(g.get_state(), state)


def test_coupling_check_and_tuner_name_a_wrong_drift_shape():
    x = torch.randn(3, 4, requires_grad=True)
    with torch.enable_grad():
        for fn in (dv.check_sample_independent, dv.ChunkTuner().trace):
            with pytest.raises(ValueError, match="drift must have the shape of x"):
                fn((x * 2)[:, :2], x)
