"""EDM's sampler: Heun's method on the probability-flow ODE in sigma-tilde ("heun").

In the variables x-tilde = x / alpha and sigma-tilde = sigma / alpha = exp(-lambda) the
probability-flow ODE of every SDE here is dx~/dsigma~ = (x~ - D(x~, sigma~)) / sigma~, D the data
prediction (Karras et al. 2022, Eq. (4) with s(t) = alpha, sigma(t) = sigma-tilde). Each step
from sigma~_i to sigma~_{i+1} is an Euler step followed by the trapezoidal (Heun) correction,
except the last, which is Euler only (EDM's step onto sigma = 0, where the correction would
divide by 0): NFE = 2 steps - 1 (Alg. 1). The default grid is "karras" (rho = 7).

Stochastic churn (Alg. 2): at nodes with s_tmin <= sigma~_i <= s_tmax the noise level is first
raised to sigma^ = sigma~_i (1 + gamma), gamma = min(s_churn / steps, sqrt(2) - 1), by adding
N(0, (sigma^2 - sigma~_i^2) s_noise^2) noise; sigma^ is capped at sigma~(T) so that the score is
never asked beyond T. ``s_churn = 0`` (the default) is deterministic.

Reference: Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative
Models" (NeurIPS), Alg. 1-2, Eq. (4)-(5); NVlabs/edm ``edm_sampler``.
"""
from __future__ import annotations

import math

from .._checks import check_positive
from .base import register
from .common import randn
from .node_solver import NodeSolver


@register
class EDMHeun(NodeSolver):
    """``method="heun"``: EDM's Heun sampler; NFE = 2 steps - 1.

    Options: ``spacing`` ("karras"), ``rho`` (7), ``alphas``, ``s_churn`` (0), ``s_tmin`` (0),
    ``s_tmax`` (inf), ``s_noise`` (1); the s_t* bounds are in sigma-tilde = sigma / alpha.
    Churn is not available on table nodes (its raised noise level falls between table steps).
    """

    name = "heun"
    summary = "EDM's Heun sampler in sigma/alpha, Euler last step, optional churn (Karras et al. 2022, Alg. 1-2)"
    options = {**NodeSolver.options, "spacing": "karras", "s_churn": 0.0, "s_tmin": 0.0, "s_tmax": math.inf,
               "s_noise": 1.0}
    order = 2
    stochastic = False  # with the default s_churn = 0; s_churn > 0 draws noise
    default_steps = 18

    def nfe(self, steps):
        return 2 * steps - 1

    def validate(self):
        o = self.opts
        check_positive("s_churn", o["s_churn"], allow_zero=True)
        check_positive("s_tmin", o["s_tmin"], allow_zero=True)
        check_positive("s_noise", o["s_noise"])
        if isinstance(o["s_tmax"], bool) or not isinstance(o["s_tmax"], (int, float)) or not o["s_tmax"] >= o["s_tmin"]:
            raise ValueError(f"s_tmax must be a number >= s_tmin = {o['s_tmin']}; got {o['s_tmax']!r}")

    def plan(self, score_fn, sde, steps, eps):
        plan = super().plan(score_fn, sde, steps, eps)
        if self.opts["s_churn"] > 0 and plan.data["nodes"].source == "table":
            raise ValueError("s_churn > 0 needs continuous nodes (alphas='continuous'): the raised noise level "
                             "falls between the steps of a discrete table")
        return plan

    def integrate(self, pred, x, nodes, generator):
        o = self.opts
        M = len(nodes)
        st = [s / a for s, a in zip(nodes.sigma, nodes.alpha)]  # sigma-tilde
        xt = x / nodes.alpha[0]
        gamma_max = min(o["s_churn"] / M, math.sqrt(2.0) - 1.0)

        def denoise(y, sig_t, i=None):
            if i is not None:
                return pred.x0(nodes.alpha[i] * y, i)
            t, a, s = pred.at_lambda(-math.log(sig_t))
            return pred.x0_at(a * y, t, a, s)

        for i in range(M):
            s_hat, i_hat = st[i], i
            if gamma_max > 0 and o["s_tmin"] <= st[i] <= o["s_tmax"]:
                s_hat = min(st[i] * (1.0 + gamma_max), st[0])
                if s_hat > st[i]:
                    z = randn(xt.shape, generator, xt.device, xt.dtype)
                    xt = xt + (math.sqrt(s_hat**2 - st[i] ** 2) * o["s_noise"]) * z
                    i_hat = None
            d = (xt - denoise(xt, s_hat, i_hat)) / s_hat
            x_next = xt + (st[i + 1] - s_hat) * d
            if i < M - 1 and st[i + 1] > 0:
                d2 = (x_next - denoise(x_next, st[i + 1], i + 1)) / st[i + 1]
                x_next = xt + (st[i + 1] - s_hat) * (0.5 * d + 0.5 * d2)
            if getattr(self, "_hook", None) is not None:  # the hook sees x = alpha x~
                x_next = self.after_step(nodes.alpha[i + 1] * x_next, nodes, i + 1) / nodes.alpha[i + 1]
            xt = x_next
        return nodes.alpha[-1] * xt
