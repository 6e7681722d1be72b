"""Training and measuring a noise-conditional classifier p_t(y | x_t) (issue 12, item 2).

* :func:`classifier_loss`: cross-entropy of ``classifier(x_t, t)`` on x_t drawn from the SDE's
  perturbation kernel p_0t(x_t | x_0) = N(alpha(t) x_0, sigma(t)^2 I) (``sde.marginal_prob``)
  at t ~ U[eps, T], the objective of Dhariwal & Nichol (2021, Sec. 4: "we train a classifier
  p_phi(y | x_t, t) on noisy images x_t") in the SDE's continuous time (Song et al. 2021,
  App. I.4).
* :func:`train_classifier`: the training loop of :func:`scoresde.train` (the same
  ``TrainConfig``, micro-batches, data order and noise seeded from (seed, step, part), Adam
  with warm-up and clipping, EMA, atomic checkpoints, exact resume, log.jsonl / config.json,
  torchrun) with that loss and the data set's labels.
* :func:`load_classifier`: the classifier of such a checkpoint (EMA weights by default).
* :func:`classifier_accuracy`: accuracy of argmax_y classifier(x_t, t) against t on held-out data.

Reference: Dhariwal & Nichol 2021, "Diffusion Models Beat GANs on Image Synthesis", Sec. 4 and
guided-diffusion's ``scripts/classifier_train.py`` (uniform t, cross-entropy on noisy images);
Song et al. 2021, Sec. 5 and App. I.4.
"""
from __future__ import annotations

import math
import os
import sys
from typing import Callable, Sequence

import torch
import torch.distributed as dist
from torch.nn import functional as F

from ._checks import as_time, bcast, check_positive
from .checkpoint import config_diff, load_checkpoint
from .data_stats import check_prior
from .distributed import setup_distributed
from .labels import training_labels
from .losses import _check_x0, _noise
from .models.classifier import Classifier
from .runs import CHECKPOINT_NAME, _load_weights, resolve_checkpoint
from .schedules import work_dtype
from .sde import SDE
from .train import TrainResult, _check_out_dir, _load_saved, _Loop
from .train_config import _as_config, _check_resume, _data_config, _data_tensor, _Objective
from .train_state import _Sharder

__all__ = ["classifier_loss", "train_classifier", "load_classifier", "classifier_accuracy", "CLASSIFIER_KIND"]

#: the "kind" entry of a classifier checkpoint's config (score-model checkpoints have none)
CLASSIFIER_KIND = "classifier"
DEFAULT_EPS = 1e-5  # as dsm_loss: the classifier covers the times the score model is trained on


def classifier_loss(classifier, sde: SDE, x0: torch.Tensor, *, y: torch.Tensor, eps: float = DEFAULT_EPS,
                    generator: torch.Generator | None = None, per_sample: bool = False, t=None,
                    noise: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy of a noise-conditional classifier on perturbed data, in nats.

    x_t = alpha(t) x_0 + sigma(t) z, z ~ N(0, I), t ~ U[eps, T] (one t per sample), then
    -log softmax(classifier(x_t, t))[y].

    Arguments:
        classifier: callable (x (B, *S), t (B,) continuous times) -> logits (B, K), e.g.
            :class:`scoresde.models.Classifier`.
        sde: the forward SDE (its ``marginal_prob``).
        x0: clean data (B, *S).
        y: integer labels (B,) in [0, K - 1].
        eps: smallest time, in (0, T).
        generator: draws t (on the generator's device, as the score losses) and z.
        per_sample: return the (B,) losses instead of their mean.
        t: optional fixed times (B,) or a scalar in (0, T] instead of the uniform draw.
        noise: optional fixed z (B, *S).
    Returns:
        the mean cross-entropy (0-d, differentiable), or (B,) with ``per_sample``.
    Raises:
        ValueError: eps outside (0, T), y not of shape (B,), logits not (B, K), labels outside
            [0, K - 1]. TypeError: y not an integer tensor.
    Reference: Dhariwal & Nichol 2021, Sec. 4.
    """
    check_positive("eps", eps)
    if eps >= sde.T:
        raise ValueError(f"eps must lie in (0, T={sde.T:g}); got {eps}")
    _check_x0(x0)
    if not isinstance(y, torch.Tensor) or y.is_floating_point() or y.dtype == torch.bool:
        raise TypeError("y must be an integer tensor of class labels (B,)")
    if y.shape != (x0.shape[0],):
        raise ValueError(f"y must have shape (B,) = ({x0.shape[0]},); got {tuple(y.shape)}")
    if t is None:
        dev = generator.device if generator is not None else x0.device
        u = torch.rand(x0.shape[0], generator=generator, device=dev, dtype=work_dtype(dev)).to(x0.device)
        t = u * (sde.T - eps) + eps
    else:
        t = as_time(t, x0, sde.T)
    noise = _noise(noise, x0, generator)
    mean, std = sde.marginal_prob(x0, t)
    xt = mean + bcast(std, x0).to(x0.dtype) * noise
    logits = classifier(xt, t.to(x0.dtype) if x0.dtype == torch.float64 else t.float())
    if logits.dim() != 2 or logits.shape[0] != x0.shape[0]:
        raise ValueError(f"the classifier returned shape {tuple(logits.shape)}; expected logits (B, K) = "
                         f"({x0.shape[0]}, K)")
    y = y.to(logits.device).long()
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= logits.shape[1]):
        raise ValueError(f"labels must lie in [0, {logits.shape[1] - 1}] for {logits.shape[1]} logits; got "
                         f"[{int(y.min())}, {int(y.max())}]")
    per = F.cross_entropy(logits, y, reduction="none")
    return per if per_sample else per.mean()


def train_classifier(classifier: Classifier, sde: SDE, dataset, config=None, *, eval_dataset=None,
                     eps: float = DEFAULT_EPS, callback: Callable | None = None) -> TrainResult:
    """Train a noise-conditional classifier; resume from ``config.out_dir`` when it holds a checkpoint.

    The loop is :func:`scoresde.train`'s (its ``_Loop``: micro-batches, data order, noise and
    dropout seeded from (seed, step, part), lr warm-up, clipping, Adam, EMA, evaluation of the
    EMA model, atomic checkpoints, bit-identical resume on CPU, torchrun) with the objective
    :func:`classifier_loss` on the data set's labels. Label dropout does not apply
    (``config.label_dropout`` must be 0): the classifier learns p_t(y | x) of the true labels.

    Arguments:
        classifier: a :class:`scoresde.models.Classifier` whose ``sde`` equals ``sde``.
        sde: the forward SDE.
        dataset: a :class:`scoresde.data.Dataset` with labels (n,) in [0, K - 1], K =
            ``classifier.num_classes``.
        config: a :class:`scoresde.train.TrainConfig` or a dict of its fields
            (``TrainConfig.small(steps)`` suits the digits).
        eval_dataset: optional labelled held-out data; the periodic ``eval_loss`` is the EMA
            classifier's mean cross-entropy (nats) on it, with fixed noise and times.
        eps: smallest training time, in (0, T) (default 1e-5, as ``dsm_loss``).
        callback: callback(step, info) after every update, info {"loss", "model", "ema"}.
    Returns:
        :class:`scoresde.train.TrainResult` (``model``: the online classifier, ``ema_model``: the
        EMA one, ``loss`` / ``eval_loss``: mean cross-entropy in nats).
    Files (rank 0, with out_dir): ``checkpoint.pt``, ``log.jsonl``, ``config.json`` as
        :func:`scoresde.train`; the config holds "kind": "classifier", "sde", "model" (the
        classifier's config), "objective" ({"loss": "cross_entropy", "eps"}), "data", "train".
    Raises:
        ValueError: data without labels or with labels outside [0, K - 1], label_dropout > 0,
            eps outside (0, T), ``classifier.sde`` differs from ``sde``, a checkpoint in out_dir
            from another run (or a score-model run), and :func:`scoresde.train`'s errors.
        TypeError: classifier not a Classifier, sde not an SDE, data not a Dataset / tensor.
    Reference: Dhariwal & Nichol 2021, Sec. 4; Song et al. 2021, App. I.4.
    """
    cfg = _as_config(config)
    if not isinstance(classifier, Classifier):
        raise TypeError(f"classifier must be a scoresde.models.Classifier; got {type(classifier).__name__}")
    if not isinstance(sde, SDE):
        raise TypeError(f"sde must be a scoresde SDE; got {type(sde).__name__}")
    diff = config_diff(classifier.sde.config(), sde.config())
    if diff:
        raise ValueError("classifier.sde differs from sde: " + "; ".join(diff[:3]))
    check_positive("eps", eps)
    if eps >= sde.T:
        raise ValueError(f"eps must lie in (0, T={sde.T:g}); got {eps}")
    if getattr(cfg, "label_dropout", 0.0):
        raise ValueError(f"label_dropout={cfg.label_dropout}: a classifier is trained on the true labels; set it to 0")
    data = _data_tensor(dataset, "dataset")
    eval_data = _data_tensor(eval_dataset, "eval_dataset") if eval_dataset is not None else None
    want = (classifier.in_channels, classifier.image_size, classifier.image_size)
    for d, name in ((data, "dataset"), (eval_data, "eval_dataset")):
        if d is not None and tuple(d.shape[1:]) != want:
            raise ValueError(f"{name} samples have shape {tuple(d.shape[1:])}; the classifier takes {want}")
    labels, eval_labels = training_labels(classifier.num_classes, 0.0, dataset, eval_dataset)
    eps = float(eps)
    objective = _Objective(classifier_loss, {"eps": eps}, {"loss": "cross_entropy", "eps": eps}, False)

    rank, world, device = setup_distributed(cfg.device or (None if int(os.environ.get("WORLD_SIZE", "1")) > 1
                                                            else str(next(classifier.parameters()).device)))
    ckpt_path = os.path.join(cfg.out_dir, CHECKPOINT_NAME) if cfg.out_dir else None
    _check_out_dir(cfg, rank, world, device)
    if rank == 0:
        check_prior(sde, data, stacklevel=2)
    saved = _load_saved(cfg, ckpt_path, world, device)
    sharder = _Sharder(data.shape[0], cfg.batch_size, cfg.micro_batches, cfg.seed)
    full_config = {"kind": CLASSIFIER_KIND, "sde": sde.config(), "model": _json(classifier.config()),
                   "objective": objective.config, "data": _data_config(dataset), "train": cfg.to_dict()}
    if saved is not None:
        _check_classifier_resume(saved["config"], full_config, ckpt_path)

    loop = _Loop(classifier, sde, cfg, objective, data, eval_data, sharder, saved, full_config, ckpt_path,
                 (rank, world, device), labels=labels, eval_labels=eval_labels)
    try:
        while loop.step < cfg.steps:
            lr, grad_norm = loop.update()
            loop.after_update(lr, grad_norm, callback)
    finally:
        loop.close()
    if world > 1:
        dist.barrier()
    return TrainResult(model=classifier, ema_model=loop.ema.module, step=loop.step, loss=loop.last_loss,
                       eval_loss=loop.eval_loss, checkpoint=loop.last_ckpt if ckpt_path else None,
                       config=full_config)


def _json(obj):
    import json

    return json.loads(json.dumps(obj))


def _check_classifier_resume(old: dict, new: dict, ckpt_path: str) -> None:
    if old.get("kind") != CLASSIFIER_KIND:
        raise ValueError(f"{ckpt_path} holds a score-model run, not a classifier: use another out_dir")
    _check_resume(old, new, ckpt_path)


def load_classifier(path, *, use_ema: bool = True, map_location="cpu", quiet: bool = False) -> tuple[Classifier, dict]:
    """The classifier of a :func:`train_classifier` checkpoint, in eval mode (EMA weights by default).

    Arguments:
        path: the checkpoint file or its run folder.
        use_ema: the EMA weights (default) or the online ones.
        map_location: device of the returned classifier.
        quiet: no line on stderr saying which weights were loaded.
    Returns:
        (classifier, config): the stored config plus "weights" ("ema" / "online") and "step".
    Raises:
        FileNotFoundError: no such file or folder. ValueError: not a classifier checkpoint (e.g. a
        score-model run: load it with ``scoresde.load_score_model``), corrupt file, weights
        that do not fit.
    """
    path = resolve_checkpoint(path)
    state = load_checkpoint(path, map_location=map_location)
    cfg = state.get("config")
    if not isinstance(cfg, dict) or cfg.get("kind") != CLASSIFIER_KIND:
        raise ValueError(f"{path} is not a classifier checkpoint (written by scoresde.train_classifier); a score "
                         "model loads with scoresde.load_score_model")
    clf = Classifier.from_config(cfg["model"])
    weights, sd = "online", state["model"]
    if use_ema and state.get("ema") is not None:
        sd = {k[len("module."):]: v for k, v in state["ema"].items() if k.startswith("module.")}
        weights = "ema"
    _load_weights(clf, sd, path)
    clf.to(map_location).eval()
    if not quiet:
        print(f"scoresde: using the {weights} weights (step {int(state.get('step', 0))}) of the classifier {path}",
              file=sys.stderr)
    out = dict(cfg)
    out.update({"weights": weights, "step": int(state.get("step", 0))})
    return clf, out


@torch.no_grad()
def classifier_accuracy(classifier, sde: SDE, dataset, times: Sequence[float], *, batch_size: int = 500,
                        seed: int = 0) -> dict:
    """Accuracy of argmax_y classifier(x_t, t) on perturbed held-out data, at each time in ``times``.

    For each t, every x_0 of the data set is perturbed once, x_t = alpha(t) x_0 + sigma(t) z with
    z from ``torch.Generator().manual_seed(seed)`` (the same z at every t, so the curve is smooth
    in t), and classified. Chance level is 1 / K (about 0.1 on the digits; the majority class of
    the digits test split holds 38 / 297 = 0.128).

    Arguments:
        classifier: callable (x (B, *S), t (B,)) -> logits (B, K).
        sde: the forward SDE.
        dataset: a labelled :class:`scoresde.data.Dataset` (e.g. ``digits("test")``).
        times: continuous times in [0, T].
        batch_size: samples per classifier call.
        seed: the noise seed.
    Returns:
        dict {t (float): accuracy in [0, 1]}, in the order of ``times``; the binomial standard
        error of each is sqrt(a (1 - a) / n), n = len(dataset).
    Raises:
        ValueError: data without labels, an empty ``times``, a time outside [0, T].
    """
    labels = getattr(dataset, "labels", None)
    if labels is None:
        raise ValueError("dataset must carry labels (a scoresde.data.Dataset with labels, e.g. digits('test'))")
    times = [float(t) for t in times]
    if not times:
        raise ValueError("times must hold at least one time")
    bad = [t for t in times if not (0.0 <= t <= sde.T) or math.isnan(t)]
    if bad:
        raise ValueError(f"times must lie in [0, T={sde.T:g}]; got {bad}")
    check_positive("batch_size", batch_size, integer=True)
    x0 = _data_tensor(dataset, "dataset")
    dev = next(classifier.parameters()).device if isinstance(classifier, torch.nn.Module) else x0.device
    was = getattr(classifier, "training", False)
    if isinstance(classifier, torch.nn.Module):
        classifier.eval()
    z = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed), dtype=x0.dtype)
    out = {}
    try:
        for t in times:
            correct = 0
            for i in range(0, x0.shape[0], batch_size):
                xb, zb = x0[i:i + batch_size].to(dev), z[i:i + batch_size].to(dev)
                tb = torch.full((xb.shape[0],), t, device=dev)
                mean, std = sde.marginal_prob(xb, tb)
                logits = classifier(mean + bcast(std, xb).to(xb.dtype) * zb, tb)
                correct += int((logits.argmax(-1).cpu() == labels[i:i + batch_size]).sum())
            out[t] = correct / x0.shape[0]
    finally:
        if isinstance(classifier, torch.nn.Module):
            classifier.train(was)
    return out
