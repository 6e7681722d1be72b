"""Per-sample step control (issue 13, item 3): a sample's solution does not depend on its batch-mates.

The integrator (scoresde.solvers.ode_per_sample, through solve_ode(step_control="per_sample")) is
checked against torchdiffeq's dopri5 on single samples (same steps, same result to round-off),
for batch independence on fields whose samples differ in difficulty, and for its guarantees
(never outside [t0, t1], finished samples left out, NFE per sample, errors). The likelihood
functions are checked on the Gaussian oracle (closed form, VP and VE) and on a small network,
alone against inside a batch of 64 others of other scales.
"""
from __future__ import annotations

import inspect
import math

import pytest
import torch

from scoresde import VESDE, VPSDE, bits_per_dim, decode, encode, log_likelihood
from scoresde.oracle import GaussianData
from scoresde.solvers.ode import ODESolverError, rms_norm, solve_ode
from scoresde.solvers.ode_per_sample import dopri5_per_sample, evaluation_part

EPS = 1e-5


def _field(t, y):
    """A linear field that stiffens with t and an integral of its divergence-like sum (state (x, c))."""
    x, _ = y
    tt = t if t.dim() else t.expand(x.shape[0])
    dx = -(1.0 + 20 * tt[:, None]) * x + torch.sin(5 * tt)[:, None]
    return dx, 0.1 * dx.sum(1)


def _state(B=65, F=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    scales = torch.logspace(-2, 1, B, dtype=torch.float64)  # easy (small) to hard (large) samples
    return torch.randn(B, F, generator=g, dtype=torch.float64) * scales[:, None], torch.zeros(B, dtype=torch.float64)


@pytest.mark.parametrize("t0,t1", [(EPS, 1.0), (1.0, EPS)])
@pytest.mark.parametrize("norm", [rms_norm, None])
def test_single_sample_matches_torchdiffeq_dopri5(t0, t1, norm):
    x, c = _state()
    for i in (0, 40, 64):
        yi = (x[i:i + 1], c[i:i + 1])
        ref = solve_ode(_field, yi, t0, t1, rtol=1e-6, atol=1e-6, norm=norm)
        # step_grid=None: torchdiffeq's step sizes exactly
        ps = dopri5_per_sample(_field, yi, t0, t1, rtol=1e-6, atol=1e-6, norm="rms" if norm else "mixed",
                               step_grid=None)
        assert ps.nfe == ref.nfe and ps.nfe_per_sample.tolist() == [ref.nfe]  # the same steps
        scale = float(ref.y[0].abs().max())
        # forward: identical arithmetic up to summation order; backward: torchdiffeq negates time inside
        tol = 1e-13 if t1 > t0 else 1e-8
        assert float((ps.y[0] - ref.y[0]).abs().max()) <= tol * max(scale, 1.0)
        assert float((ps.y[1] - ref.y[1]).abs().max()) <= tol * max(scale, 1.0)
        # the default grid of step sizes (16 per octave): other steps, the same solution to the tolerance
        grid = solve_ode(_field, yi, t0, t1, rtol=1e-6, atol=1e-6, norm=norm, step_control="per_sample")
        assert abs(grid.nfe - ref.nfe) <= 0.1 * ref.nfe
        assert float((grid.y[0] - ref.y[0]).abs().max()) <= 1e-5 * max(scale, 1.0)
    assert ref.step_control == "batch" and ref.nfe_per_sample is None and grid.step_control == "per_sample"


def test_step_sizes_lie_on_the_grid_and_bad_grids_are_refused():
    x, c = _state(B=5)
    times = []

    def f(t, y):
        times.append(t.clone())
        return _field(t, y)

    dopri5_per_sample(f, (x, c), 0.0, 1.0, rtol=1e-6, atol=1e-6, step_grid=4)
    # the stage times of a step are t + alpha h: alpha = 1/5 gives h exactly (t = 0 at the first step)
    h = times[2] * 5  # the first step's first stage, all samples at t0 = 0
    k = torch.log2(h.double()) * 4
    assert torch.allclose(k, k.round(), atol=1e-9)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="step_grid must be None or an integer"):
            dopri5_per_sample(_field, (x, c), 0.0, 1.0, step_grid=bad)


def test_rows_per_call_gives_calls_of_one_shape_and_the_same_result():
    x, c = _state(B=21)
    shapes = []

    parts = []

    def f(t, y, rows):
        shapes.append((t.shape[0], y[0].shape[0], rows.shape[0]))
        parts.append(evaluation_part())
        return _field(t, y)

    a = solve_ode(f, (x, c), EPS, 1.0, rtol=1e-6, atol=1e-6, step_control="per_sample", with_rows=True,
                  rows_per_call=8)
    assert set(shapes) == {(8, 8, 8)}
    # the chunks of one evaluation are numbered 0, 1, ... (a call counter counts part 0 only)
    assert parts.count(0) == solve_ode(_field, (x, c), EPS, 1.0, rtol=1e-6, atol=1e-6, step_control="per_sample").nfe
    assert parts[:3] == [0, 1, 2] and max(parts) == 2 and evaluation_part() == 0  # 21 rows: 3 chunks at first
    b = solve_ode(_field, (x, c), EPS, 1.0, rtol=1e-6, atol=1e-6, step_control="per_sample")
    assert a.nfe == b.nfe and torch.equal(a.nfe_per_sample, b.nfe_per_sample)  # NFE counts evaluations
    assert torch.allclose(a.y[0], b.y[0], rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="rows_per_call applies to step_control='per_sample'"):
        solve_ode(_field, (x, c), EPS, 1.0, rows_per_call=8)
    with pytest.raises(ValueError, match="rows_per_call"):
        solve_ode(_field, (x, c), EPS, 1.0, step_control="per_sample", rows_per_call=0)


def test_nested_chunked_solve_keeps_the_outer_part():
    """A chunked per-sample solve inside a chunk of another restores the outer chunk's index after it."""
    x, c = _state(B=21)
    seen = []

    def f(t, y, rows):
        if evaluation_part() == 1 and not seen:
            solve_ode(lambda t_, y_, r_: _field(t_, y_), (x, c), EPS, 1.0, rtol=1e-3, atol=1e-3,
                      step_control="per_sample", with_rows=True, rows_per_call=8)
            seen.append(evaluation_part())
        return _field(t, y)

    solve_ode(f, (x, c), EPS, 1.0, rtol=1e-3, atol=1e-3, step_control="per_sample", with_rows=True, rows_per_call=8)
    assert seen == [1] and evaluation_part() == 0


def test_batch_independence_and_nfe_per_sample():
    x, c = _state()
    full = solve_ode(_field, (x, c), EPS, 1.0, rtol=1e-6, atol=1e-6, norm=rms_norm, step_control="per_sample")
    shared = solve_ode(_field, (x, c), EPS, 1.0, rtol=1e-6, atol=1e-6, norm=rms_norm)
    nps = full.nfe_per_sample
    assert nps.shape == (65,) and nps.dtype == torch.int64
    assert int(nps.max()) == full.nfe and int(nps.min()) < int(nps.max())  # easy samples stop earlier
    for i in (0, 17, 64):
        alone = solve_ode(_field, (x[i:i + 1], c[i:i + 1]), EPS, 1.0, rtol=1e-6, atol=1e-6, norm=rms_norm,
                          step_control="per_sample")
        # the same steps; the values to round-off (vectorized kernels may round a batch differently)
        assert alone.nfe == int(nps[i])
        assert torch.allclose(alone.y[0][0], full.y[0][i], rtol=1e-12, atol=1e-15)
        assert torch.allclose(alone.y[1][0], full.y[1][i], rtol=1e-12, atol=1e-15)
    # the shared step differs from each sample's own solve (the effect the per-sample control removes)
    alone0 = solve_ode(_field, (x[:1], c[:1]), EPS, 1.0, rtol=1e-6, atol=1e-6, norm=rms_norm)
    assert not torch.equal(alone0.y[1][0], shared.y[1][0])


def test_only_running_samples_are_evaluated_at_their_own_times_inside_the_interval():
    x, c = _state(B=8)
    seen = []

    def f(t, y, rows):
        assert t.shape == (y[0].shape[0],) == rows.shape and t.dtype == torch.float64
        assert float(t.min()) >= EPS and float(t.max()) <= 1.0
        seen.append((len(rows), len(torch.unique(t))))
        return _field(t, y)

    sol = solve_ode(f, (x, c), EPS, 1.0, rtol=1e-6, atol=1e-6, step_control="per_sample", with_rows=True)
    sizes = [n for n, _ in seen]
    assert sizes[0] == 8 and min(sizes) < 8 and sum(sizes) == int(sol.nfe_per_sample.sum())
    assert max(u for _, u in seen) > 1  # samples at different times in one call
    # a plain tensor state, backwards, also lands exactly on t1
    z = solve_ode(lambda t, y: -y * t[:, None], x, 1.0, 0.25, step_control="per_sample", rtol=1e-8, atol=1e-8)
    assert torch.allclose(z.y, x * math.exp((1.0 - 0.25**2) / 2), rtol=1e-6)


def test_half_state_is_solved_in_float32():
    x = torch.ones(3, 4, dtype=torch.bfloat16)
    sol = solve_ode(lambda t, y: -y, x, 0.0, 1.0, step_control="per_sample")
    assert sol.y.dtype == torch.bfloat16
    assert torch.allclose(sol.y.float(), torch.full((3, 4), math.exp(-1.0)), atol=1e-2)


def test_bad_arguments_and_failures():
    x, c = _state(B=4)
    with pytest.raises(ValueError, match=r"step_control.*\['batch', 'per_sample'\]"):
        solve_ode(_field, (x, c), EPS, 1.0, step_control="sample")
    with pytest.raises(ValueError, match="dopri5. only"):
        solve_ode(_field, (x, c), EPS, 1.0, method="bosh3", step_control="per_sample")
    with pytest.raises(ValueError, match="dopri5. only"):
        solve_ode(_field, (x, c), EPS, 1.0, method="euler", steps=10, step_control="per_sample")
    with pytest.raises(ValueError, match="steps applies"):
        solve_ode(_field, (x, c), EPS, 1.0, steps=10, step_control="per_sample")
    with pytest.raises(ValueError, match="norm must be None"):
        solve_ode(_field, (x, c), EPS, 1.0, norm=lambda y: y[0].abs().max(), step_control="per_sample")
    with pytest.raises(ValueError, match="with_rows"):
        solve_ode(_field, (x, c), EPS, 1.0, with_rows=True)
    with pytest.raises(ValueError, match="batch"):
        solve_ode(_field, (x, c[:2]), EPS, 1.0, step_control="per_sample")
    with pytest.raises(ODESolverError, match="max_nfe=10"):
        solve_ode(_field, (x, c), EPS, 1.0, max_nfe=10, step_control="per_sample")
    with pytest.raises(ODESolverError, match="non-finite"):
        solve_ode(lambda t, y: torch.where(t[:, None] > 0.5, math.nan, -y), x, 0.0, 1.0, step_control="per_sample")


# ---------------------------------------------------------------------------- likelihood functions

def _mates(data, n, seed):
    """n batch-mates of other scales than the sample (0.05x to 20x): easier and harder solves."""
    z = data.sample(n, torch.Generator().manual_seed(seed))
    scale = torch.logspace(math.log10(0.05), math.log10(20.0), n, dtype=torch.float64)
    return data.mu + (z - data.mu) * scale.reshape(-1, *[1] * len(data.shape))


def _time_variables():
    """The integration variables log_likelihood offers (issue 13, item 1): the field gets each sample's own."""
    return ["t", "lambda"] if "time_variable" in inspect.signature(log_likelihood).parameters else ["t"]


@pytest.mark.parametrize("time_variable", _time_variables())
@pytest.mark.parametrize("name", ["vp", "ve"])
def test_gaussian_logp_alone_equals_in_a_batch_of_64_and_the_closed_form(name, time_variable):
    sde = VPSDE() if name == "vp" else VESDE()
    data = GaussianData(mu=0.3, std=0.5, shape=(8,))  # isotropic: Rademacher Hutchinson is exact
    score = data.score_fn(sde)
    x = data.sample(3, torch.Generator().manual_seed(5))
    batch = torch.cat([x, _mates(data, 64, 6)])
    kw = dict(eps=EPS, rtol=1e-5, atol=1e-5, step_control="per_sample")
    if time_variable != "t":
        kw["time_variable"] = time_variable
    full = log_likelihood(score, sde, batch, **kw)
    alone = torch.cat([log_likelihood(score, sde, x[i:i + 1], **kw).logp for i in range(3)])
    rel = ((alone - full.logp[:3]).abs() / full.logp[:3].abs()).max()
    assert float(rel) <= 1e-6, float(rel)
    ref = data.pf_logp(sde, batch, EPS)
    # the typical samples within the shared-step test's bound (2e-4 nats per dimension); the 0.05x-20x
    # batch-mates (|logp| up to ~1e3 nats) within 1e-4 relative in t (3.5e-4 measured in lambda for VP)
    assert float((full.logp[:3] - ref[:3]).abs().max()) / 8 < 2e-4
    assert float(((full.logp - ref).abs() / ref.abs()).max()) < (1e-4 if time_variable == "t" else 1e-3)
    # the shared step (today's default) moves a sample's logp with its batch-mates
    kw["step_control"] = "batch"
    shared = log_likelihood(score, sde, batch, **kw)
    shared1 = log_likelihood(score, sde, x[:1], **kw)
    assert float((shared.logp[0] - shared1.logp[0]).abs()) > 0


class _Net(torch.nn.Module):
    """A small time-dependent MLP score (rows independent)."""

    def __init__(self, D=4):
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Sequential(torch.nn.Linear(D + 1, 32), torch.nn.Tanh(), torch.nn.Linear(32, D))

    def forward(self, x, t):
        return self.body(torch.cat([x, t.to(x.dtype)[:, None]], 1)) - x


def test_small_net_logp_alone_equals_in_a_batch_of_64():
    sde = VPSDE()
    net = _Net().double().eval()
    data = GaussianData(0.0, 1.0, (4,))
    x = data.sample(2, torch.Generator().manual_seed(2))
    batch = torch.cat([x, _mates(data, 64, 3)])
    kw = dict(eps=EPS, rtol=1e-5, atol=1e-5, divergence="exact", step_control="per_sample")
    full = log_likelihood(net, sde, batch, **kw)
    for i in range(2):
        one = log_likelihood(net, sde, x[i:i + 1], **kw)
        assert float((one.logp[0] - full.logp[i]).abs() / full.logp[i].abs()) <= 1e-6
    assert full.nfe > 0


def test_bits_per_dim_encode_decode_take_step_control():
    sde = VPSDE()
    data = GaussianData(0.0, 0.5, (4,))
    score = data.score_fn(sde)
    levels = torch.randint(0, 17, (6, 4), generator=torch.Generator().manual_seed(0))
    kw = dict(num_levels=17, eps=EPS, generator=torch.Generator().manual_seed(1))
    a = bits_per_dim(score, sde, levels, step_control="per_sample", **kw)
    kw["generator"] = torch.Generator().manual_seed(1)
    b = bits_per_dim(score, sde, levels, step_control="batch", **kw)
    assert torch.allclose(a.bpd, b.bpd, atol=1e-3) and a.nfe > 0
    x = data.sample(5, torch.Generator().manual_seed(3))
    z = encode(score, sde, x, eps=EPS, rtol=1e-7, atol=1e-7, step_control="per_sample")
    assert torch.allclose(z, data.flow(sde, x, EPS, sde.T), rtol=1e-4, atol=1e-5)
    back = decode(score, sde, z, eps=EPS, rtol=1e-7, atol=1e-7, step_control="per_sample")
    assert torch.allclose(back, x, atol=1e-4)
    for fn, arg in ((log_likelihood, x), (encode, x), (decode, z)):
        with pytest.raises(ValueError, match=r"\['batch', 'per_sample'\]"):
            fn(score, sde, arg, step_control="per-sample")
    with pytest.raises(ValueError, match=r"\['batch', 'per_sample'\]"):
        bits_per_dim(score, sde, levels, num_levels=17, step_control="none")
