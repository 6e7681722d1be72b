"""Integer, empty and "meta" inputs, and unreachable ODE tolerances, are named errors (issue 10, item 6).

Before: ``ScoreModel(...)(torch.ones(2, 4, dtype=torch.long), 0.5)`` returned a result computed on
integers (NaN for some networks); batch size 0 in log_likelihood, encode, decode, bits_per_dim,
ddpm_vlb, ScoreModel, marginal_prob and prior_logp raised torch's "min(): Expected reduction dim"
or "cannot reshape tensor of 0 elements" RuntimeError; "meta" tensors raised "Tensor.item() cannot
be called on meta tensors"; ``rtol = atol = 1e-300`` ended in "t contains NaN or infinite values".
Every one now goes through ``scoresde._checks.check_batch`` / ``check_device`` (or solve_ode's
tolerance check) and names the argument.
"""
import pytest
import torch

import scoresde as S
from scoresde.models import MLP
from scoresde.oracle import GaussianData
from scoresde.solvers.ode import ODESolverError, solve_ode

SDE = S.VPSDE()
D = 4


def _model():
    torch.manual_seed(0)
    return S.ScoreModel(MLP(D, hidden=16, num_layers=1, embed_dim=8), SDE).eval()


def _levels(x):
    return x.round().clamp(0, 16)


# (name, call on the input, the argument's name in the message); float inputs unless noted
ENTRIES = [
    ("ScoreModel", lambda x: _model()(x, 0.5), "x"),
    ("marginal_prob", lambda x: SDE.marginal_prob(x, 0.5), "x"),
    ("sde", lambda x: SDE.sde(x, 0.5), "x"),
    ("discretize", lambda x: SDE.discretize(x, 0.5), "x"),
    ("prior_logp", lambda x: SDE.prior_logp(x), "z"),
    ("log_likelihood", lambda x: S.log_likelihood(_model(), SDE, x), "x"),
    ("encode", lambda x: S.encode(_model(), SDE, x), "x"),
    ("decode", lambda x: S.decode(_model(), SDE, x), "z"),
    ("dsm_loss", lambda x: S.dsm_loss(_model(), SDE, x), "x0"),
]
LEVEL_ENTRIES = [  # integer levels are valid input here; empty / meta are not
    ("bits_per_dim", lambda x: S.bits_per_dim(_model(), SDE, x, num_levels=17)),
    ("ddpm_vlb", lambda x: S.ddpm_vlb(_model(), SDE, x, num_levels=17, timesteps=4)),
]


@pytest.mark.parametrize("name, call, arg", ENTRIES[:-1], ids=[e[0] for e in ENTRIES[:-1]])  # dsm_loss had its own
def test_empty_batch_is_a_named_value_error(name, call, arg):
    with pytest.raises(ValueError, match=rf"^{arg} is empty \(batch size 0"):
        call(torch.zeros(0, D))


@pytest.mark.parametrize("name, call", LEVEL_ENTRIES, ids=[e[0] for e in LEVEL_ENTRIES])
def test_empty_levels_are_a_named_value_error(name, call):
    for x in (torch.zeros(0, D, dtype=torch.long), torch.zeros(0, D)):
        with pytest.raises(ValueError, match=r"^x is empty \(batch size 0"):
            call(x)


@pytest.mark.parametrize("name, call, arg", ENTRIES, ids=[e[0] for e in ENTRIES])
def test_integer_input_is_a_named_type_error(name, call, arg):
    with pytest.raises(TypeError, match=rf"{arg} must be a floating-point tensor; got dtype torch.int64"):
        call(torch.ones(2, D, dtype=torch.long))


@pytest.mark.parametrize("name, call, arg", ENTRIES + [(n, c, "x") for n, c in LEVEL_ENTRIES],
                         ids=[e[0] for e in ENTRIES + LEVEL_ENTRIES])
def test_meta_tensors_are_a_named_value_error(name, call, arg):
    with pytest.raises(ValueError, match=rf"^{arg} is on the 'meta' device"):
        call(torch.ones(2, D, device="meta"))


def test_score_model_on_integer_input_is_not_nan():
    """The issue's example, and the integer x of a learned-variance / discrete model too."""
    with pytest.raises(TypeError, match="x must be a floating-point tensor"):
        _model()(torch.ones(2, 4, dtype=torch.long), 0.5)
    model = S.ScoreModel(MLP(D, hidden=16, num_layers=1, embed_dim=8), SDE, discrete=True)
    with pytest.raises(TypeError, match="x must be a floating-point tensor"):
        model.predict(torch.ones(2, 4, dtype=torch.int32), 0.5, "eps")
    assert torch.isfinite(_model()(torch.ones(2, 4), 0.5)).all()  # float input still works


def test_meta_devices_and_networks_are_named():
    with pytest.raises(ValueError, match="device 'meta'"):
        SDE.prior_sampling((2, D), device="meta")
    score = GaussianData(shape=(D,)).score_fn(SDE)
    for method in ("euler_maruyama", "ddim", "ode"):
        with pytest.raises(ValueError, match="device 'meta'"):
            S.sample(score, SDE, (2, D), method=method, steps=3 if method != "ode" else None, device="meta")
    with pytest.raises(ValueError, match="device 'meta'"):
        S.train(_model(), SDE, "dsm", torch.randn(16, D), S.TrainConfig(steps=1, batch_size=4, device="meta",
                                                                         quiet=True))
    with pytest.raises(ValueError, match="device 'nonsense' is not a torch device"):
        SDE.prior_sampling((2, D), device="nonsense")
    with pytest.raises(ValueError, match="parameters are on the 'meta' device"):
        _model().to("meta")(torch.ones(2, D), 0.5)
    with pytest.raises(ValueError, match="^x is on the 'meta' device"):  # a plain score through as_time
        score(torch.ones(2, D, device="meta"), 0.5)


def test_unreachable_tolerances_are_named():
    """rtol = atol = 1e-300 was "t contains NaN or infinite values" after the step size collapsed;
    below the dtype's epsilon (2.2e-16 float64, 1.2e-7 float32) the tolerances cannot be met."""
    data = GaussianData(0.5, 0.3, (2,))
    score = data.score_fn(SDE)
    x = data.sample(3, torch.Generator().manual_seed(0))
    for tol, dtype in ((1e-300, torch.float64), (1e-16, torch.float64), (1e-8, torch.float32)):
        with pytest.raises(ValueError, match=r"rtol = .* and atol = .* are both below the resolution"):
            S.log_likelihood(score, SDE, x.to(dtype), rtol=tol, atol=tol)
    with pytest.raises(ValueError, match="rtol"):
        S.encode(score, SDE, x, rtol=1e-300, atol=1e-300)
    with pytest.raises(ValueError, match="rtol"):
        S.sample(score, SDE, (3, 2), method="ode", rtol=1e-300, atol=1e-300)
    # one tolerance within reach is enough, and fixed-grid methods take none
    r = S.log_likelihood(score, SDE, x, rtol=1e-300, atol=1e-6)
    assert torch.isfinite(r.logp).all()
    assert torch.isfinite(solve_ode(lambda t, y: -y, torch.ones(2), 0.0, 1.0, method="rk4", steps=4,
                                    rtol=1e-300, atol=1e-300).y).all()


def test_a_non_finite_time_inside_the_solver_is_a_solver_error():
    calls = []

    def field(t, y):
        calls.append(float(t))
        return -y

    from scoresde.solvers.ode import _CountedField

    f = _CountedField(field, 0.0, 1.0, None)
    with pytest.raises(ODESolverError, match="non-finite time"):
        f(torch.tensor(float("nan"), dtype=torch.float64), torch.ones(1))
    assert calls == []
