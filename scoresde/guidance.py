"""Guided scores for class-conditional sampling: functions that return a new ``score_fn``.

The result is an ordinary ``score_fn(x, t)``, so every sampler of :func:`scoresde.sample`, the
constrained samplers and the likelihood code use it unchanged.

* :func:`classifier_guidance`: s(x, t) + scale grad_x log p_t(y | x), the gradient by autograd
  through a noise-conditional classifier's logits (Song et al. 2021, Sec. 5 and App. I.1, Eq.
  (48); Dhariwal & Nichol 2021, Sec. 4, whose ``scale`` is the same factor).
* :func:`classifier_free_guidance`: (1 + w) s(x, t, y) - w s(x, t, null) (Ho & Salimans 2022,
  Eq. (6)). Convention: ``scale`` = w, so 0 is the plain conditional model and the tilted target
  is p(x | y)^(1 + w) / p(x)^w. diffusers' ``guidance_scale`` g is 1 + w (g = 1: conditional,
  g = 7.5: w = 6.5).

Shapes: x (B, *S), t (B,), y an int or a (B,) LongTensor; outputs (B, *S).
"""
from __future__ import annotations

import math
import numbers
from typing import Callable

import torch

__all__ = ["classifier_guidance", "classifier_free_guidance", "null_label"]


def _labels(y, x: torch.Tensor) -> torch.Tensor:
    """y (an int or a 0-d / (B,) / (1,) integer tensor) as a (B,) long tensor on x's device."""
    if isinstance(y, bool):
        raise TypeError(f"y must be an int class label or a (B,) integer tensor; got {y!r}")
    if isinstance(y, torch.Tensor) and y.device.type == "meta":
        raise ValueError("y is on the 'meta' device, which holds shapes but no values; create it on 'cpu' or 'cuda'")
    y = torch.as_tensor(int(y) if isinstance(y, numbers.Integral) else y, device=x.device)
    if y.is_floating_point() or y.is_complex():
        raise TypeError(f"y must hold integer class labels; got dtype {y.dtype}")
    if y.dim() > 1:
        raise ValueError(f"y must be an int or a (B,) tensor of labels; got shape {tuple(y.shape)}")
    y = y.long().reshape(-1)
    if y.numel() == 1:
        return y.expand(x.shape[0])
    if y.numel() != x.shape[0]:
        raise ValueError(f"y has {y.numel()} labels but the batch has {x.shape[0]} samples; give one label or B")
    return y


def _check_scale(scale) -> float:
    """``scale`` as a float: a real number (Python, NumPy or a one-element tensor), finite."""
    if isinstance(scale, torch.Tensor) and scale.numel() == 1 and not scale.is_complex() and scale.dtype != torch.bool:
        scale = float(scale)
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale must be a real number (e.g. 1.0); got {type(scale).__name__} {scale!r}")
    if not math.isfinite(float(scale)):
        raise ValueError(f"scale must be a finite number; got {scale!r}")
    return float(scale)


def _check_y(y) -> None:
    """y must be an int or an integer tensor (checked when the guided score is made)."""
    ok = (isinstance(y, numbers.Integral) and not isinstance(y, bool)) or (
        isinstance(y, torch.Tensor) and not y.is_floating_point() and not y.is_complex() and y.dtype != torch.bool)
    if not ok:
        raise TypeError(f"y must be an int class label or a (B,) integer tensor; got {y!r}")


def classifier_guidance(score_fn: Callable, classifier: Callable, y, scale: float = 1.0) -> Callable:
    """The score of p_t(x | y) ∝ p_t(x) p_t(y | x)^scale, from a noise-conditional classifier.

    Arguments:
        score_fn: callable (x (B, *S), t (B,)) -> (B, *S), the unconditional score.
        classifier: callable (x (B, *S), t (B,)) -> logits (B, K) of p_t(y | x) (e.g.
            :class:`scoresde.models.Classifier`); log-softmax is taken here.
        y: the class, an int or a (B,) integer tensor (one per sample).
        scale: the guidance weight (finite; 1 gives the exact conditional score when the
            classifier is exact; Dhariwal & Nichol use 1-10).
    Returns:
        ``guided(x, t) = score_fn(x, t) + scale * grad_x log softmax(classifier(x, t))[y]``, shape
        (B, *S) in x's dtype; the gradient is taken under ``torch.enable_grad()``, so it works
        inside the samplers' ``no_grad``. Each call costs one score and one classifier forward
        and backward pass. When x requires grad and grad mode is on (the likelihood code taking
        the divergence), the result keeps its graph to x (the gradient with ``create_graph``:
        the divergence then costs a second-order pass through the classifier); otherwise it is
        detached.
    Raises:
        TypeError: non-callable score_fn / classifier, non-integer y, a scale that is not a real
        number; ValueError: a non-finite scale; at call time, logits that are not (B, K)
        (TypeError: not floating-point), a label outside [0, K), a y of shape other than () / (1,)
        / (B,).
    Reference:
        Song et al. 2021, Sec. 5 and App. I.1, Eq. (48); Dhariwal & Nichol 2021, Alg. 1.
    """
    if not callable(score_fn) or not callable(classifier):
        raise TypeError("score_fn and classifier must be callable (x, t) -> tensor")
    scale = _check_scale(scale)
    _check_y(y)

    def guided(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        s = score_fn(x, t)
        if scale == 0.0:
            return s
        labels = _labels(y, x)
        # a caller that differentiates the guided score (the likelihood's divergence) keeps its graph to x
        keep = torch.is_grad_enabled() and x.requires_grad
        with torch.enable_grad():
            xg = x if keep else x.detach().requires_grad_(True)
            logits = classifier(xg, t)
            if not isinstance(logits, torch.Tensor):
                raise TypeError(f"classifier must return a logits tensor (B, K); got {type(logits).__name__}")
            if logits.dim() != 2 or logits.shape[0] != x.shape[0]:
                raise ValueError(f"classifier must return logits (B, K) = ({x.shape[0]}, K); got {tuple(logits.shape)}")
            if not logits.is_floating_point():
                raise TypeError(f"classifier must return floating-point logits; got dtype {logits.dtype}")
            if int(labels.max()) >= logits.shape[1] or int(labels.min()) < 0:
                raise ValueError(f"y must lie in [0, {logits.shape[1] - 1}] (the classifier has {logits.shape[1]} classes)")
            if not logits.requires_grad:
                raise ValueError("classifier's logits do not depend on x through autograd (detached, or computed "
                                 "under no_grad / inference_mode); guidance needs grad_x log p_t(y | x)")
            logp = torch.log_softmax(logits.to(torch.float64), dim=1).gather(1, labels[:, None]).sum()
            grad = torch.autograd.grad(logp, xg, create_graph=keep)[0]
        out = s + scale * grad.to(s.dtype)
        return out if keep else out.detach()

    guided.discrete = getattr(score_fn, "discrete", False)  # the samplers' table / continuous default
    return guided


def null_label(model) -> int | None:
    """The null-class index a conditional model embeds for "no label" (its ``null_class``), or None."""
    for obj in (model, getattr(model, "net", None)):
        v = getattr(obj, "null_class", None)
        if isinstance(v, int) and not isinstance(v, bool):
            return v
    return None


def classifier_free_guidance(model: Callable, y, scale: float) -> Callable:
    """Classifier-free guidance: (1 + w) s(x, t, y) - w s(x, t, null), w = ``scale``.

    Arguments:
        model: a conditional score, callable as ``model(x, t, y=labels)`` where ``y=None`` means
            unconditional (a :class:`scoresde.ScoreModel` trained with label dropout). If the
            model (or its ``net``) has an int ``null_class``, the conditional and unconditional
            scores come from one batched call on (2B, *S) with labels [y, null]; otherwise two calls.
        y: the class, an int or a (B,) integer tensor.
        scale: w (finite). 0 is the conditional model exactly; w > 0 sharpens towards class y.
            diffusers' ``guidance_scale`` is 1 + w.
    Returns:
        ``guided(x, t)`` -> (B, *S), one network evaluation on 2B samples per call.
    Raises:
        TypeError: non-callable model, a scale that is not a real number; ValueError: non-finite
        scale, (a model with ``null_class`` K) a label outside [0, K); at call time a label count
        that is neither 1 nor B, a y of shape other than () / (1,) / (B,).
    Reference:
        Ho & Salimans 2022, "Classifier-Free Diffusion Guidance", Eq. (6) and Alg. 2.
    """
    if not callable(model):
        raise TypeError(f"model must be callable (x, t, y=...) -> score; got {type(model).__name__}")
    w = _check_scale(scale)
    _check_y(y)
    null = null_label(model)

    if null is not None:  # y is fixed: its range is checked once, here, not at every call (a device read)
        lo, hi = (int(y), int(y)) if not isinstance(y, torch.Tensor) else (
            (int(y.min()), int(y.max())) if y.numel() and y.device.type != "meta" else (0, 0))
        if lo < 0 or hi >= null:
            raise ValueError(f"y must lie in [0, {null - 1}] (the model has {null} classes; {null} is its null label); "
                             f"got values in [{lo}, {hi}]")

    def guided(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        labels = _labels(y, x)
        if w == 0.0:
            return model(x, t, y=labels)
        if null is not None:
            both = model(torch.cat([x, x]), torch.cat([t, t]), y=torch.cat([labels, torch.full_like(labels, null)]))
            s_c, s_u = both[: x.shape[0]], both[x.shape[0]:]
        else:
            s_c, s_u = model(x, t, y=labels), model(x, t, y=None)
        return (1.0 + w) * s_c - w * s_u

    guided.discrete = getattr(model, "discrete", False)
    return guided
