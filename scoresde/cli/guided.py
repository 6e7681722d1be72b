"""``scoresde sample --class`` and ``scoresde train-classifier``: class-conditional sampling on the command line.

* A class-conditional run (``train --class-conditional``) samples class K by classifier-free
  guidance, (1 + w) s(x, t, K) - w s(x, t, null) (:func:`scoresde.classifier_free_guidance`;
  w = ``--scale``, 0 = the conditional model). Its default w is :data:`CFG_SCALE` when the run was
  trained with label dropout (the null class learned the unconditional score), else 0.
* ``--classifier RUN`` guides any run with a noise-conditional classifier of
  :func:`scoresde.train_classifier` (:func:`scoresde.classifier_guidance`, default scale 1): the
  run's unconditional score, or for a class-conditional run its conditional score s(x, t, K)
  (Dhariwal & Nichol 2021 guide their conditional models too).
* :func:`run_train_classifier` trains such a classifier (``scoresde train-classifier``).
"""
from __future__ import annotations

import time
import warnings
from pathlib import Path

import torch

from .common import _log, data_options, load_data
from .options import CFG_SCALE

__all__ = ["Guidance", "guidance", "run_train_classifier"]


class Guidance:
    """The labels of a class-conditional draw and the guided score of each batch.

    Attributes:
        labels: (n,) int64 class of each sample (``--class all``: -n of each class, sorted by class).
        kind: "classifier-free" or "classifier"; scale: w or the classifier scale.
        per_class: samples per class (the grid's row length), classes: the classes drawn.
    """

    def __init__(self, model, labels, kind, scale, classifier=None, per_class=None, classes=()):
        self.model, self.labels, self.kind, self.scale = model, labels, kind, float(scale)
        self.classifier, self.per_class, self.classes = classifier, per_class, list(classes)

    def score_for(self, start: int, m: int):
        """The guided score_fn of samples start..start+m-1 (for :func:`scoresde.cli.samples.draw`)."""
        from ..guidance import classifier_free_guidance, classifier_guidance
        y = self.labels[start:start + m]
        if self.kind == "classifier-free":
            return classifier_free_guidance(self.model, y, self.scale)
        # a conditional run: guide its conditional score s(x, t, y)
        base = self.model if self.model.num_classes is None else _conditional(self.model, y)
        return classifier_guidance(base, self.classifier, y, self.scale)

    def text(self) -> str:
        what = "classifier-free guidance w" if self.kind == "classifier-free" else "classifier guidance scale"
        cls = "every class" if len(self.classes) > 1 else f"class {self.classes[0]}"
        return f"{cls}, {what} {self.scale:g}"


def _conditional(model, y):
    """The score_fn (x, t) -> model(x, t, y=y) of a class-conditional model, keeping its ``discrete`` flag."""
    def score(x, t):
        return model(x, t, y=y.to(x.device))
    score.discrete = model.discrete
    return score


def _class_range(label, k: int, what: str) -> None:
    if label != "all" and not 0 <= label < k:
        raise ValueError(f"--class {label} is out of range: {what} has {k} classes (0..{k - 1})")


def guidance(args, model, sde, cfg, n: int) -> Guidance | None:
    """The :class:`Guidance` of ``sample``'s --class / --scale / --classifier, or None without --class.

    Raises ValueError (one line): --scale or --classifier without --class; --class on an
    unconditional run without --classifier; a class out of range; a classifier on another SDE,
    shape or number of classes.
    """
    label = getattr(args, "label", None)
    if label is None:
        if args.scale is not None or args.classifier is not None:
            raise ValueError(f"{'--scale' if args.scale is not None else '--classifier'} guides a class-conditional "
                             "draw: add --class K (or --class all)")
        return None
    run_k = model.num_classes
    clf = None
    if args.classifier is not None:
        clf = _load_guiding_classifier(args.classifier, sde, cfg, args.device)
        _class_range(label, clf.num_classes, f"the classifier {args.classifier}")
        if run_k is not None and run_k != clf.num_classes:
            raise ValueError(f"the classifier {args.classifier} has {clf.num_classes} classes but the run has {run_k}")
        kind, k, scale = "classifier", clf.num_classes, 1.0 if args.scale is None else args.scale
    else:
        if run_k is None:
            raise ValueError(f"--class {label}: {args.checkpoint} is an unconditional run; train one with "
                             "'scoresde train --class-conditional --label-dropout 0.1', or guide this one with "
                             "--classifier RUN (from 'scoresde train-classifier')")
        _class_range(label, run_k, f"the run {args.checkpoint}")
        dropout = float(cfg.get("train", {}).get("label_dropout", 0.0) or 0.0)
        if args.scale is None:
            scale = CFG_SCALE if dropout > 0 else 0.0
        else:
            scale = args.scale
            if scale != 0 and dropout == 0:
                warnings.warn(f"--scale {scale:g}: the run was trained with label dropout 0, so its null class "
                              "never learned the unconditional score; classifier-free guidance needs a run trained "
                              "with --label-dropout > 0 (use --scale 0 for the plain conditional model)")
        kind, k = "classifier-free", run_k
    classes = list(range(k)) if label == "all" else [label]
    labels = torch.arange(k).repeat_interleave(n) if label == "all" else torch.full((n,), int(label))
    return Guidance(model, labels, kind, scale, clf, per_class=n, classes=classes)


def _load_guiding_classifier(path, sde, cfg, device):
    from ..checkpoint import config_diff
    from ..classify import load_classifier
    clf, ccfg = load_classifier(path, map_location=device, quiet=True)
    diff = config_diff(ccfg.get("sde"), sde.config())
    if diff:
        raise ValueError(f"the classifier {path} was trained on another SDE than the run's ({'; '.join(diff[:2])}); "
                         "train it with the run's SDE options")
    want = list(cfg["data"].get("shape", []))
    have = [clf.in_channels, clf.image_size, clf.image_size]
    if want and want != have:
        raise ValueError(f"the classifier {path} takes images of shape {have} but the run's data have shape {want}")
    return clf.requires_grad_(False)


def _warmup(args, out: Path) -> int:
    """--warmup capped at --steps, fixed for the run: a resumed run keeps its saved warm-up unless typed."""
    from ..checkpoint import load_checkpoint
    from ..runs import CHECKPOINT_NAME
    from .parser import given_options
    typed = given_options(args)
    ckpt = out / CHECKPOINT_NAME
    if ckpt.exists() and (typed is None or "warmup" not in typed):
        saved = (load_checkpoint(ckpt).get("config") or {}).get("train", {}).get("warmup")
        if isinstance(saved, int):
            return saved
    return min(args.warmup, args.steps)


def run_train_classifier(args) -> dict:
    """Train (or resume) a noise-conditional classifier as ``scoresde train-classifier`` does; a summary dict."""
    from ..classify import classifier_accuracy, train_classifier
    from ..models import Classifier
    from ..train import TrainConfig
    from .common import _threads
    from .training import make_sde
    _threads(args)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder")
    ds = load_data(args.data, split="train", seed=0, **data_options(args))
    evald = load_data(args.data, split="test", seed=0) if args.data == "digits" else None
    if ds.num_classes is None or ds.labels is None:
        raise ValueError(f"train-classifier needs labelled data; {ds.name} has no labels (a .npz needs a 'labels' "
                         "array, an image folder one sub-folder per class)")
    shape = tuple(ds.shape)
    if len(shape) != 3 or shape[1] != shape[2]:
        raise ValueError(f"the classifier takes square images (C, H, W); the data have shape {shape}")
    if args.batch_size > len(ds):
        raise ValueError(f"--batch-size {args.batch_size} is larger than the data ({len(ds)} samples)")
    sde = make_sde(args.sde, beta_min=args.beta_min, beta_max=args.beta_max, sigma_min=args.sigma_min,
                   sigma_max=args.sigma_max, num_scales=args.num_scales, data=ds)
    torch.manual_seed(args.seed)
    clf = Classifier(sde, ds.num_classes, in_channels=shape[0], image_size=shape[1], ch=args.channels,
                     ch_mult=(1, 2, 2) if shape[1] >= 16 else (1, 2))
    cfg = TrainConfig.small(args.steps, batch_size=args.batch_size, lr=args.lr, warmup=_warmup(args, out),
                            ema_decay=args.ema, seed=args.seed, out_dir=str(out), quiet=args.quiet,
                            checkpoint_every=args.checkpoint_every, device=args.device)
    _log(args, f"scoresde train-classifier: {ds.name} {shape} x {len(ds)}, {ds.num_classes} classes, "
               f"{type(sde).__name__}, {sum(p.numel() for p in clf.parameters()):,} parameters, {args.steps} steps")
    t0 = time.perf_counter()
    res = train_classifier(clf, sde, ds, cfg, eval_dataset=evald)
    wall = time.perf_counter() - t0
    acc = None
    if evald is not None:
        acc = classifier_accuracy(res.ema_model, sde, evald, [0.01, 0.2, 0.5], seed=args.seed)
    return {"step": res.step, "loss": res.loss, "eval_loss": res.eval_loss, "checkpoint": res.checkpoint,
            "wall_s": wall, "accuracy": acc, "eval_name": evald.name if evald is not None else None}
