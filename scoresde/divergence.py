"""Divergence of a drift with respect to the state, per sample: Hutchinson's estimator or the exact trace.

The probability-flow likelihood (:mod:`scoresde.likelihood`) integrates div f~(x, t); this module
holds the estimators it uses:

* ``"hutchinson_rademacher"`` / ``"hutchinson_gaussian"``: eps^T (d drift / dx) eps, one
  vector-Jacobian product per probe (Hutchinson 1989; Grathwohl et al. 2019, FFJORD, Sec. 3.1);
* ``"exact"``: the full trace, D vector-Jacobian products per evaluation (small D and tests).
"""
from __future__ import annotations

import torch

DIVERGENCES = ("hutchinson_rademacher", "hutchinson_gaussian", "exact")

__all__ = ["DIVERGENCES", "draw_probes", "divergence"]


def draw_probes(kind: str, shape, x: torch.Tensor, generator) -> torch.Tensor:
    """Hutchinson probes of ``shape`` (P, B, *S): Rademacher (+-1) or standard normal, in x's dtype and device.

    Arguments:
        kind: "hutchinson_rademacher" or "hutchinson_gaussian". shape: (P, B, *S).
        x: a tensor whose dtype and device the probes take. generator: torch.Generator or None.
    Reference: Hutchinson 1989; Grathwohl et al. 2019 (FFJORD), Sec. 3.1.
    """
    device = generator.device if generator is not None else x.device
    if kind == "hutchinson_rademacher":
        e = torch.randint(0, 2, shape, generator=generator, device=device).to(x.dtype) * 2 - 1
    else:
        e = torch.randn(shape, generator=generator, device=device, dtype=x.dtype)
    return e.to(x.device)


def divergence(drift: torch.Tensor, x: torch.Tensor, probes: torch.Tensor | None) -> torch.Tensor:
    """div of drift wrt x per sample (B,): Hutchinson with ``probes`` (P, B, *S) or exact if None."""
    B = x.shape[0]
    if probes is not None:
        total = 0.0
        for p in range(probes.shape[0]):
            (vjp,) = torch.autograd.grad(drift, x, probes[p], retain_graph=p < probes.shape[0] - 1)
            total = total + (vjp * probes[p]).reshape(B, -1).sum(1)
        return total / probes.shape[0]
    # exact trace: row j of every sample's Jacobian from one VJP with the j-th basis vector
    D = x[0].numel()
    flat = torch.zeros(B, D, dtype=x.dtype, device=x.device)
    trace = torch.zeros(B, dtype=x.dtype, device=x.device)
    for j in range(D):
        flat.zero_()
        flat[:, j] = 1.0
        (vjp,) = torch.autograd.grad(drift, x, flat.view_as(x), retain_graph=j < D - 1)
        trace += vjp.reshape(B, D)[:, j]
    return trace
