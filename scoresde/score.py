"""Score parameterizations: a network's output turned into grad_x log p_t(x), and back.

A network predicts one of four targets at time t, for x_t = alpha x_0 + sigma eps:
    "eps"   the noise eps                          score = -eps / sigma
    "x0"    the clean data x_0                     score = (alpha x_0 - x_t) / sigma^2
    "v"     v = alpha eps - sigma x_0               (Salimans & Ho 2022, Eq. (8) generalised)
    "score" grad_x log p_t(x_t) itself
The conversions below hold for every SDE of this package (alpha = 1 for VE).

The time a network receives is chosen by ``time_input`` and computed in one place,
:func:`network_time`, which training, every sampler and the likelihood code go through
(they all call the model through :class:`ScoreModel`):
    "label"  (N - 1) t, the reference code's 999 t for VP / sub-VP nets (default there);
    "sigma"  sigma(t), the reference code's input of VE nets (default for VE);
    "index"  the integer step i of the discrete chain (DDPM-trained nets), see ``SDE.t_to_index``;
    "t"      raw t.

Reference: Song et al. 2021, App. C and the reference code's ``get_score_fn``; Ho et al. 2020,
Eq. (11) (eps); Salimans & Ho 2022 (v).
"""
from __future__ import annotations

import torch
from torch import nn

from ._checks import (_VALIDATED, bcast, check_batch, check_choice, check_label_range, check_labels, check_time_range,
                      prepare_time, read_values)
from .score_fn import call_score  # noqa: F401  (scoresde.score.call_score, as before)
from .sde import SDE, VESDE, _VPFamily

PREDICTIONS = ("eps", "score", "x0", "v")
TIME_INPUTS = ("label", "sigma", "index", "t")


def eps_to_score(eps, sigma):
    """score = -eps / sigma. eps (B, *S), sigma (B,)."""
    return -eps / bcast(sigma, eps).to(eps.dtype)


def score_to_eps(score, sigma):
    """eps = -sigma score. score (B, *S), sigma (B,)."""
    return -score * bcast(sigma, score).to(score.dtype)


def x0_to_eps(x0, x, alpha, sigma):
    """eps = (x - alpha x0) / sigma, from x = alpha x0 + sigma eps. x0, x (B, *S); alpha, sigma (B,)."""
    return (x - bcast(alpha, x).to(x.dtype) * x0) / bcast(sigma, x).to(x.dtype)


def eps_to_x0(eps, x, alpha, sigma):
    """x0 = (x - sigma eps) / alpha (Ho et al. 2020, Eq. (15))."""
    return (x - bcast(sigma, x).to(x.dtype) * eps) / bcast(alpha, x).to(x.dtype)


def v_to_eps(v, x, alpha, sigma):
    """eps = (sigma x + alpha v) / (alpha^2 + sigma^2)."""
    a, s = bcast(alpha, x).to(x.dtype), bcast(sigma, x).to(x.dtype)
    return (s * x + a * v) / (a * a + s * s)


def eps_to_v(eps, x, alpha, sigma):
    """v = alpha eps - sigma x0, with x0 from eps."""
    a, s = bcast(alpha, x).to(x.dtype), bcast(sigma, x).to(x.dtype)
    return a * eps - s * (x - s * eps) / a


def to_eps(out, prediction, x, alpha, sigma):
    """Convert a network output of kind ``prediction`` into the eps it implies."""
    if prediction == "eps":
        return out
    if prediction == "score":
        return score_to_eps(out, sigma)
    if prediction == "x0":
        return x0_to_eps(out, x, alpha, sigma)
    return v_to_eps(out, x, alpha, sigma)


def from_eps(eps, target, x, alpha, sigma):
    """Express an eps prediction as ``target`` in {"eps", "score", "x0", "v"}."""
    check_choice("target", target, PREDICTIONS)
    if target == "eps":
        return eps
    if target == "score":
        return eps_to_score(eps, sigma)
    if target == "x0":
        return eps_to_x0(eps, x, alpha, sigma)
    return eps_to_v(eps, x, alpha, sigma)


def network_time(sde: SDE, t: torch.Tensor, time_input: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The time input of a network at continuous times t (B,): see the module docstring.

    This is the one map from continuous t to what a network sees.

    Arguments:
        sde: the forward SDE the network belongs to.
        t: (B,) continuous times in [0, T] (not validated here).
        time_input: "label" ((N - 1) t), "sigma" (sigma(t)), "index" (the discrete step
            ``sde.t_to_index(t)``) or "t" (t itself).
        dtype: of the result; float32 by default (ScoreModel passes float64 for a float64 state).
    Returns:
        A (B,) tensor of ``dtype``; "index" gives integer-valued floats.
    Raises:
        ValueError: an unknown ``time_input`` (the message lists the valid ones).
        TypeError: ``time_input`` not a string.
    Reference:
        Song et al. 2021, the reference code's ``get_score_fn`` (label (N - 1) t for VP / sub-VP,
        sigma(t) for VE); Ho et al. 2020 (the integer step of DDPM-trained networks).
    """
    check_choice("time_input", time_input, TIME_INPUTS)
    if time_input == "label":
        out = sde.t_to_label(t)
    elif time_input == "sigma":
        out = sde.marginal_std(t)
    elif time_input == "index":
        out = sde.t_to_index(t)
    else:
        out = t
    return out.to(dtype)


class ScoreModel(nn.Module):
    """Wrap a network as a score function ``forward(x, t) -> grad_x log p_t(x)``.

    Arguments:
        net: ``nn.Module`` called as ``net(x, time, **kwargs)`` with x (B, C, ...) and time (B,).
            With ``learn_variance`` it returns 2C channels: the prediction, then the
            Improved DDPM variance interpolation v (Nichol & Dhariwal 2021, Eq. (15)).
        sde: the forward SDE the network was (or will be) trained for.
        prediction: what the network outputs: "eps" (default), "score", "x0" or "v".
        time_input: "label", "sigma", "index" or "t" (see :func:`network_time`); default
            "index" for discrete models, "sigma" for VE, "label" otherwise.
        discrete: use the discrete DDPM table (alpha-bar_i at i = ``sde.t_to_index(t)``) instead
            of the continuous alpha(t), sigma(t) to convert predictions (VP / sub-VP only):
            the score of a network trained with DDPM's discrete loss.
        learn_variance: the network also outputs the variance channels (see above).
    Class labels: ``model(x, t, y=None)`` (and ``predict`` / ``raw``) pass ``y`` to the network
        of a class-conditional model (one whose net has ``num_classes`` = K, as
        :class:`~scoresde.models.UNet` / :class:`~scoresde.models.MLP`): y (B,) integer labels in
        [0, K], K being the null class; y=None asks for the null class (the unconditional
        score of a model trained with label dropout, Ho & Salimans 2022). On an unconditional
        model (net.num_classes None) y must be None. A network without a ``num_classes``
        attribute gets y only when it is given (it decides what y means).
    Shapes:
        x (B, *S); t (B,) or a scalar in [0, T]; y (B,) or None; output (B, *S), in x's dtype.
    Host reads (GPU synchronisations): one per call, in which t's range, sigma(t)'s minimum
        (when converting) and y's range are read together; none for a Python-number t without
        conversion or labels. The network's own checks of the time and labels values are skipped
        inside the call (their shape checks stay).
    Raises:
        TypeError: x not a floating-point tensor (integer x gave NaN).
        ValueError: unknown prediction / time_input, ``discrete`` with a VE SDE, t outside [0, T]
            or of the wrong batch size, an empty x (batch size 0) or one on the "meta" device (or
            a network whose parameters are), sigma(t) = 0 where the conversion divides by it (t = 0 on
            VP / sub-VP: use t >= eps), a network output of the wrong shape, y given to an
            unconditional model (or of the wrong shape / outside [0, K]).
    Reference: Song et al. 2021, App. C / reference ``get_score_fn``; Ho et al. 2020, Eq. (11).
    """

    def __init__(self, net: nn.Module, sde: SDE, prediction: str = "eps", time_input: str | None = None,
                 discrete: bool = False, learn_variance: bool = False):
        super().__init__()
        check_choice("prediction", prediction, PREDICTIONS)
        if not callable(net):
            raise TypeError(f"net must be a callable nn.Module net(x, time); got {type(net).__name__}")
        if discrete and not isinstance(sde, _VPFamily):
            raise ValueError("discrete=True needs a VP or sub-VP SDE (a DDPM table); got " + type(sde).__name__)
        if time_input is None:
            time_input = "index" if discrete else ("sigma" if isinstance(sde, VESDE) else "label")
        check_choice("time_input", time_input, TIME_INPUTS)
        self.net, self.sde = net, sde
        self.prediction, self.time_input = prediction, time_input
        self.discrete, self.learn_variance = bool(discrete), bool(learn_variance)
        # sigma_i = sqrt(1 - alpha-bar_i) of the table is > 0 at every step unless alpha-bar_0 = 1 (read once, host)
        self._table_sigma_positive = not discrete or float(sde.alphas_cumprod.max()) < 1.0

    @property
    def num_classes(self) -> int | None:
        """K of a class-conditional network (its ``num_classes``; the null class is index K), else None."""
        net = self.net
        if isinstance(net, nn.parallel.DistributedDataParallel):
            net = net.module
        return getattr(net, "num_classes", None)

    @property
    def null_class(self) -> int | None:
        """The label index of the null class (= ``num_classes``), or None for an unconditional model."""
        return self.num_classes

    def coefficients(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(alpha, sigma) at t (B,) used by the conversions, continuous or from the table."""
        if self.discrete:
            ab = self.sde._table("alphas_cumprod", t.device)[self.sde.t_to_index(t)]
            return ab.sqrt(), (1.0 - ab).sqrt()
        return self.sde.mean_coeff(t), self.sde.marginal_std(t)

    def raw(self, x: torch.Tensor, t, y: torch.Tensor | None = None,
            **kwargs) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Network output split as (prediction (B, *S), variance channels or None, t (B,)); y as
        in the class docstring."""
        pred, var, t, _ = self._evaluate(x, t, y, kwargs, False)
        return pred, var, t

    def predict(self, x: torch.Tensor, t, target: str = "eps", **kwargs) -> torch.Tensor:
        """The model's prediction of ``target`` ("eps", "score", "x0", "v") at (x, t)."""
        convert = target != self.prediction
        pred, _, t, coeffs = self._evaluate(x, t, kwargs.pop("y", None), kwargs, convert)
        if not convert:
            return pred
        alpha, sigma = coeffs
        return from_eps(to_eps(pred, self.prediction, x, alpha, sigma), target, x, alpha, sigma)

    def _evaluate(self, x, t, y, kwargs: dict, convert: bool):
        """(prediction, variance or None, t (B,), (alpha, sigma) if ``convert`` else None).

        Every check that reads a value (t in [0, T] and finite, y in [0, K], sigma(t) > 0 where a
        conversion divides by it) is done in ONE host read; the network then skips its own value
        checks (:func:`scoresde._checks.inputs_validated`). A Python-number t without y or
        conversion needs no read at all.
        """
        check_batch("x", x, finite=False)  # integer, empty or meta x: a named error, not NaN
        p = next(self.net.parameters(), None) if isinstance(self.net, nn.Module) else None
        if p is not None and p.device.type == "meta":
            raise ValueError("the network's parameters are on the 'meta' device (shapes without values): "
                             "materialise it first, e.g. net.to_empty(device='cpu') then load_state_dict")
        number = None if isinstance(t, torch.Tensor) else t
        t = prepare_time(t, x)
        net = self.net.module if isinstance(self.net, nn.parallel.DistributedDataParallel) else self.net
        labels = None
        if hasattr(net, "num_classes"):
            if self.num_classes is None and y is not None:
                raise ValueError(f"y (class labels) given to an unconditional model (its {type(net).__name__} has "
                                 "num_classes=None); call it without y, or build the network with num_classes=K")
            if self.num_classes is not None:
                kwargs["y"] = y  # None: the network's null class
                if y is not None:
                    labels = check_labels(y, x, self.num_classes, values=False)
        elif y is not None:
            kwargs["y"] = y
        # sigma on the device before the read (continuous); a discrete table is indexed only at checked t
        coeffs = self.coefficients(t) if convert and not self.discrete else None
        reads = [*torch.aminmax(t)] if number is None else []
        if coeffs is not None:
            reads.append(coeffs[1].min())
        if labels is not None and labels.numel():
            reads += [*torch.aminmax(labels)]
        vals = read_values(reads) if reads else []  # the one host read of this call
        lo, hi = (float(number),) * 2 if number is not None else (vals.pop(0), vals.pop(0))
        check_time_range(lo, hi, self.sde.T)
        sigma_min = vals.pop(0) if coeffs is not None else None
        if vals:
            check_label_range(vals[0], vals[1], self.num_classes, labels)
        if convert and self.discrete:
            coeffs = self.coefficients(t)
            if not getattr(self, "_table_sigma_positive", True):  # alpha-bar_0 = 1: sigma = 0 at the first step(s)
                sigma_min = float(self.coefficients(torch.tensor([lo], dtype=torch.float64))[1])  # host, no sync
        if sigma_min is not None and sigma_min <= 0:
            raise ValueError("sigma(t) = 0 at t = 0: the score is infinite there; evaluate at t >= eps > 0")
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        _VALIDATED.depth += 1
        try:
            out = self.net(x, network_time(self.sde, t, self.time_input, dtype), **kwargs)
        finally:
            _VALIDATED.depth -= 1
        want = (x.shape[0], 2 * x.shape[1], *x.shape[2:]) if self.learn_variance else tuple(x.shape)
        if tuple(out.shape) != want:
            raise ValueError(f"net returned shape {tuple(out.shape)} for x of shape {tuple(x.shape)}; expected {want}")
        if self.learn_variance:
            pred, var = out.chunk(2, dim=1)
            return pred, var, t, coeffs
        return out, None, t, coeffs

    def forward(self, x: torch.Tensor, t, **kwargs) -> torch.Tensor:
        """grad_x log p_t(x), shape (B, *S)."""
        return self.predict(x, t, "score", **kwargs)
