"""A time-conditioned MLP: the score network for low-dimensional data (2-D toys, tabular data)."""
from __future__ import annotations

import torch
from torch import nn

from .._checks import check_choice, check_positive
from .embeddings import EMBEDDINGS, check_labels, check_time, make_embedding


class MLP(nn.Module):
    """Score network for vectors: x (B, dim), time (B,) -> (B, dim), or (B, 2 dim) with learned variance.

    Architecture: the time embedding (see :mod:`scoresde.models.embeddings`) goes through
    Linear(embed_dim, hidden) - SiLU - Linear(hidden, hidden); then ``num_layers`` hidden layers
    h <- SiLU(Linear(h) + Dense_l(SiLU(temb))), the first taking x; then a zero-initialised
    Linear(hidden, out), so that the network outputs exactly 0 at initialisation (with
    prediction "eps" the initial score is 0). Hidden weights use the DDPM init
    (Xavier-uniform, i.e. variance scaling fan_avg, zero biases).

    Parameter count of the default MLP(dim=2): 429,058 (hidden 256, 3 layers, embed_dim 128).

    Arguments:
        dim: data dimension D (> 0).
        hidden: width of the hidden layers.
        num_layers: number of hidden layers (>= 1).
        embedding: "sinusoidal" or "fourier" time embedding.
        embed_dim: size of the time embedding (even).
        learn_variance: also output D channels of Improved DDPM's variance interpolation v.
        num_classes: None (unconditional) or the number of classes K: a learned label embedding
            of K + 1 rows (``nn.Embedding(K + 1, hidden)``, added to the time features), row K
            the null class (y=None, dropped labels), as in :class:`~scoresde.models.UNet`.
    Forward:
        x (B, dim) float; time (B,) float (or a scalar), the output of
        :func:`scoresde.score.network_time`; y (B,) labels in [0, num_classes] or None (the null
        class) for a conditional MLP, no y otherwise. Returns (B, dim) or (B, 2 dim).
    Raises:
        ValueError: bad constructor values (named); x not of shape (B, dim); time of another
            shape than (B,); NaN / inf time; y given to an unconditional MLP, of the wrong shape
            or outside [0, num_classes]. TypeError: y not an integer tensor.
    Reference: Song et al. 2021 (2-D toy score networks); Ho et al. 2020 (time conditioning).
    """

    def __init__(self, dim: int, hidden: int = 256, num_layers: int = 3, embedding: str = "sinusoidal",
                 embed_dim: int = 128, learn_variance: bool = False, num_classes: int | None = None):
        super().__init__()
        for name, val in (("dim", dim), ("hidden", hidden), ("num_layers", num_layers), ("embed_dim", embed_dim)):
            check_positive(name, val, integer=True)
        check_choice("embedding", embedding, EMBEDDINGS)
        self.dim, self.hidden, self.num_layers = int(dim), int(hidden), int(num_layers)
        self.embedding, self.embed_dim, self.learn_variance = embedding, int(embed_dim), bool(learn_variance)
        self.embed = make_embedding(embedding, embed_dim)
        self.temb = nn.Sequential(nn.Linear(embed_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.layers = nn.ModuleList([nn.Linear(dim if i == 0 else hidden, hidden) for i in range(num_layers)])
        self.tproj = nn.ModuleList([nn.Linear(hidden, hidden) for _ in range(num_layers)])
        self.out = nn.Linear(hidden, 2 * dim if learn_variance else dim)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.zeros_(self.out.weight)
        if num_classes is not None:
            check_positive("num_classes", num_classes, integer=True)
        self.num_classes = None if num_classes is None else int(num_classes)
        # created last, so that an unconditional MLP's initial weights are unchanged
        self.label_emb = nn.Embedding(self.num_classes + 1, hidden) if self.num_classes is not None else None

    def config(self) -> dict:
        """Constructor arguments (JSON-serialisable) with the class name under "model"."""
        cfg = {"model": "MLP", "dim": self.dim, "hidden": self.hidden, "num_layers": self.num_layers,
               "embedding": self.embedding, "embed_dim": self.embed_dim, "learn_variance": self.learn_variance}
        if self.num_classes is not None:  # only then: unconditional configs are as before
            cfg["num_classes"] = self.num_classes
        return cfg

    @property
    def null_class(self) -> int | None:
        """The label index of the null class, ``num_classes`` (None for an unconditional MLP)."""
        return self.num_classes

    def forward(self, x: torch.Tensor, time, y: torch.Tensor | None = None) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor of shape (B, {self.dim}); got {type(x).__name__}")
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (B, dim) with dim = {self.dim}; got shape {tuple(x.shape)}")
        y = check_labels(y, x, self.num_classes)
        time = check_time(time, x)
        dtype = self.out.weight.dtype
        temb = self.temb(self.embed(time).to(dtype))
        if self.label_emb is not None:
            temb = temb + self.label_emb(y)
        temb = nn.functional.silu(temb)
        h = x.to(dtype)
        for lin, tp in zip(self.layers, self.tproj):
            h = nn.functional.silu(lin(h) + tp(temb))
        return self.out(h).to(x.dtype)
