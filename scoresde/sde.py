"""The forward SDEs of score-based generative modelling: VP, sub-VP and VE.

Every SDE here has a linear drift f(x, t) = f(t) x and a state-independent diffusion g(t), so
its perturbation kernel is Gaussian, p_0t(x_t | x_0) = N(alpha(t) x_0, sigma(t)^2 I), with
closed-form ``alpha`` (the mean coefficient) and ``sigma`` (the marginal standard deviation).
The classes keep the reference code's names: ``T``, ``N``, ``sde``, ``marginal_prob``,
``prior_sampling``, ``prior_logp``, ``discretize`` and ``reverse``.

Shapes: x is (B, *S) for any trailing shape S; t is a (B,) tensor or a scalar broadcast to the
batch. Per-sample coefficients are returned as (B,) tensors in float32 (float64 when x is
float64); schedule arithmetic runs in float64 whatever the dtype of x.

Reference: Song et al. 2021, "Score-Based Generative Modeling through Stochastic Differential
Equations" (ICLR), Sec. 3.4, Eq. (5)-(6), (9), (11), (13) and App. B, C, E.

Modules: :mod:`scoresde.sde_base` (:class:`SDE`, :class:`ReverseSDE`, :func:`reverse_drift`),
:mod:`scoresde.sde_vp` (:class:`VPSDE`, :class:`SubVPSDE`), :mod:`scoresde.sde_ve`
(:class:`VESDE`); this one gathers them and rebuilds an SDE from its config.
"""
from __future__ import annotations

from .sde_base import SDE, ReverseSDE, ScoreFn, _out_dtype, reverse_drift  # noqa: F401
from .sde_ve import VESDE
from .sde_vp import SubVPSDE, VPSDE, _VPFamily  # noqa: F401

SDES = {"VPSDE": VPSDE, "SubVPSDE": SubVPSDE, "VESDE": VESDE}


def sde_from_config(cfg: dict) -> SDE:
    """Rebuild an SDE from :meth:`SDE.config` output (used by checkpoints).

    Arguments:
        cfg: a dict with the class name under "sde" ("VPSDE", "SubVPSDE", "VESDE") and that
            class's constructor arguments; not modified.
    Returns:
        A new SDE of that class, equal in configuration to the one that wrote ``cfg``.
    Raises:
        ValueError: a missing or unknown "sde" name (the message lists the valid ones), or
            invalid constructor arguments (from the SDE's constructor).
        TypeError: a constructor argument the class does not take.
    """
    cfg = dict(cfg)
    name = cfg.pop("sde", None)
    if name not in SDES:
        raise ValueError(f"unknown sde {name!r} in config; valid values are {list(SDES)}")
    return SDES[name](**cfg)
