"""Class labels in training: which labels a run uses, and label dropout to the null class.

Conventions (shared by :class:`~scoresde.models.UNet`, :class:`~scoresde.models.MLP`,
:class:`~scoresde.ScoreModel`, :func:`scoresde.train`):

* A class-conditional network has ``num_classes`` = K and embeds K + 1 labels: 0..K-1 are the
  classes, **K is the null class** ("no label"). ``model(x, t)`` / ``model(x, t, y=None)`` is
  the null class for the whole batch.
* Label dropout (``TrainConfig.label_dropout`` = p): during training each label is replaced by
  the null class independently with probability p, so that one network learns both the
  conditional score s(x, t, y) and the unconditional one s(x, t, null), as classifier-free
  guidance needs (Ho & Salimans 2022, Alg. 1, p_uncond; k-diffusion's ``cond_dropout_rate``
  default 0.1). p = 0 (the default) is plain conditional training; the null row is then never
  trained.
* Unconditional models ignore the labels of a labelled data set.

Reference: Ho & Salimans 2022, "Classifier-Free Diffusion Guidance", Alg. 1.
"""
from __future__ import annotations

import torch

from .schedules import work_dtype

__all__ = ["drop_labels", "dataset_labels", "training_labels", "batch_labels"]


def drop_labels(y: torch.Tensor, p: float, null_class: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Replace each label by ``null_class`` independently with probability p.

    Arguments:
        y: integer labels (B,).
        p: dropout probability in [0, 1].
        null_class: the index of the null class (K for a network with num_classes = K).
        generator: a ``torch.Generator`` for the B uniform draws, on any device: they are drawn on
            its device, then moved to y's (the training loop seeds a CPU one from (seed, step,
            micro-batch), so resumed runs drop the same labels); None: y's device's default.
    Returns:
        int64 labels (B,) on y's device: y where u >= p, null_class where u < p, u ~ U[0, 1).
    Raises:
        TypeError: y not an integer tensor. ValueError: p outside [0, 1], y not 1-D.
    Reference: Ho & Salimans 2022, Alg. 1 (p_uncond).
    """
    if not isinstance(y, torch.Tensor) or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise TypeError("y must be an integer tensor of class labels (B,)")
    if y.dim() != 1:
        raise ValueError(f"y must have shape (B,); got {tuple(y.shape)}")
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
        raise ValueError(f"label dropout p must lie in [0, 1]; got {p!r}")
    y = y.long()
    if p == 0:
        return y
    dev = generator.device if generator is not None else y.device
    u = torch.rand(y.shape[0], generator=generator, device=dev, dtype=work_dtype(dev))
    return torch.where(u.to(y.device) < p, torch.full_like(y, int(null_class)), y)


def dataset_labels(dataset, name: str = "dataset") -> torch.Tensor | None:
    """The labels (n,) int64 of a :class:`scoresde.data.Dataset` (its ``labels``), or None.

    A plain tensor has no labels. Raises ValueError for labels not of shape (n,).
    """
    labels = getattr(dataset, "labels", None)
    if labels is None:
        return None
    n = len(dataset)
    if not isinstance(labels, torch.Tensor) or labels.is_floating_point() or labels.shape != (n,):
        raise ValueError(f"{name}.labels must be an integer tensor (n,) = ({n},)")
    return labels.long()


def training_labels(num_classes: int | None, label_dropout: float, dataset, eval_dataset=None):
    """The labels a training run uses: (train labels or None, eval labels or None).

    Arguments:
        num_classes: K of the model (``ScoreModel.num_classes``), None for an unconditional model.
        label_dropout: ``TrainConfig.label_dropout``.
        dataset, eval_dataset: the training and evaluation data.
    Returns:
        (None, None) for an unconditional model (labels of the data are ignored); else the
        labels (n,), (n_eval,) int64.
    Raises:
        ValueError: label_dropout > 0 for an unconditional model; a conditional model with data
            without labels, or labels outside [0, K - 1] (more classes in the data than the
            model embeds).
    """
    if num_classes is None:
        if label_dropout:
            raise ValueError(f"label_dropout={label_dropout} applies to class-conditional models; this model is "
                             "unconditional (its network has num_classes=None)")
        return None, None
    out = []
    for ds, name in ((dataset, "dataset"), (eval_dataset, "eval_dataset")):
        if ds is None:
            out.append(None)
            continue
        lab = dataset_labels(ds, name)
        if lab is None:
            raise ValueError(f"the model is class-conditional (num_classes={num_classes}) but {name} has no labels: "
                             "pass a scoresde.data.Dataset with labels (digits(), from_array(..., labels=...), an image "
                             "folder of class sub-folders)")
        if lab.numel() and (int(lab.min()) < 0 or int(lab.max()) >= num_classes):
            raise ValueError(f"{name} labels lie in [{int(lab.min())}, {int(lab.max())}] but the model embeds "
                             f"num_classes={num_classes} classes (labels 0..{num_classes - 1}; {num_classes} is the "
                             "null class)")
        out.append(lab)
    return out[0], out[1]


def batch_labels(labels: torch.Tensor | None, idx: torch.Tensor, label_dropout: float, null_class: int | None,
                 seed: int) -> torch.Tensor | None:
    """The labels of one micro-batch: ``labels[idx]`` with label dropout from a generator seeded by ``seed``.

    Returns None when the run has no labels (unconditional). The training loop passes
    ``seed = _seed(config.seed, "labels", step, part)``, so that the dropped labels are a
    function of (seed, step, part) and a resumed run drops the same ones.
    """
    if labels is None:
        return None
    y = labels[idx]
    if label_dropout:
        y = drop_labels(y, label_dropout, null_class, generator=torch.Generator().manual_seed(seed))
    return y
