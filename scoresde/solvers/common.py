"""What every sampler shares: the checked, NFE-counting score call and the noise draws.

* :class:`ScoreEval` calls the user's ``score_fn`` through :func:`scoresde.score.call_score`
  (output shape and NaN / inf checked, the error names the time), passes the time as a (B,)
  float64 tensor (float32 on MPS) so that discrete models map it to the right table index,
  returns the score in the state's dtype and counts every call: one call on a batch is one
  NFE (number of function evaluations).
* :func:`randn` draws standard normal noise from a ``torch.Generator`` or from a list of B
  generators, one per sample (then sample b's noise comes from generator b only, so a sample
  does not depend on its batch-mates' seeds).
"""
from __future__ import annotations

from typing import Callable

import torch

from ..schedules import work_dtype
from ..score_fn import FiniteCheck, call_score, check_every_default

class ScoreEval:
    """``score_fn`` wrapped for a solver: t broadcast to (B,), output checked, calls counted.

    Arguments:
        score_fn: callable (x (B, *S), t (B,)) -> (B, *S), an estimate of grad_x log p_t(x).
        bar: optional tqdm bar, advanced by one per evaluation (its unit is one NFE).
        check_every: how often (in evaluations) the NaN / inf flag of the outputs is read back
            to the host (int >= 1), or None: every evaluation on the CPU (free there), every
            :data:`scoresde.score_fn.DEVICE_CHECK_EVERY` on other devices (no synchronisation
            per call; a NaN is then reported up to that many evaluations late, see
            :class:`scoresde.score_fn.FiniteCheck`). Call :meth:`finish` at the end of a solve.
    Attributes:
        nfe: number of calls made so far.
    Raises (on call):
        ValueError: output of the wrong shape, or NaN / inf (with the time of the call).
    """

    #: tells :func:`scoresde.score_fn.call_score` that this callable checks its own output
    checks_output = True

    def __init__(self, score_fn: Callable, bar=None, check_every: int | None = None):
        if not callable(score_fn):
            raise TypeError(f"score_fn must be callable (x, t) -> score; got {type(score_fn).__name__}")
        self.score_fn, self.bar, self.nfe = score_fn, bar, 0
        self.check_every = check_every
        self._check = None if check_every is None else FiniteCheck(check_every)

    def time(self, t, x: torch.Tensor) -> torch.Tensor:
        """t (a number, 0-d or (B,) tensor) as a (B,) tensor in the working dtype on x's device."""
        if isinstance(t, torch.Tensor) and t.dim() == 1 and t.dtype == torch.float64 and t.device == x.device:
            return t  # already (B,) in the working dtype (float64 wherever it is a tensor's dtype): the common case
        dt = work_dtype(x.device)
        if isinstance(t, (float, int)) and not isinstance(t, bool):
            return torch.full((x.shape[0],), float(t), dtype=dt, device=x.device)
        t = torch.as_tensor(t, dtype=dt, device=x.device)
        return t.to(dt).reshape(-1).expand(x.shape[0]) if t.dim() == 0 else t.to(dt)

    def checker(self, x: torch.Tensor) -> FiniteCheck:
        """The :class:`~scoresde.score_fn.FiniteCheck` of this solve (made at the first call, for x's device)."""
        if self._check is None:
            self._check = FiniteCheck(check_every_default(x.device))
        return self._check

    def __call__(self, x: torch.Tensor, t) -> torch.Tensor:
        t = self.time(t, x)
        self.nfe += 1
        if self.bar is not None:
            self.bar.update(1)
        s = call_score(self.score_fn, x, t, self._check or self.checker(x))
        return s if s.dtype == x.dtype else s.to(x.dtype)

    def raw(self, x: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(prediction, variance channels) of a ``ScoreModel`` (``score_fn.raw``), counted and checked."""
        t = self.time(t, x)
        self.nfe += 1
        if self.bar is not None:
            self.bar.update(1)
        pred, v, _ = self.score_fn.raw(x, t)
        check = self._check or self.checker(x)
        for name, val in (("prediction", pred), ("variance output", v)):
            if val is not None:
                check.add(val, t, what=f"score_fn's {name} is NaN or inf")
        return pred.to(x.dtype), v

    def finish(self) -> None:
        """Read the NaN / inf flags still pending (the end of a solve). Raises ValueError for a bad output."""
        if self._check is not None:
            self._check.flush()


def forward_jump(sde, x: torch.Tensor, t: float, t_next: float, generator=None) -> torch.Tensor:
    """A draw of the forward process from time t to a later t_next: x' = r x + sqrt(s'^2 - r^2 s^2) z, r = alpha' / alpha.

    The perturbation kernel's transition between two times (Song et al. 2021, Eq. (5)); RePaint's
    jump back to a noisier time (Lugmayr et al. 2022, Alg. 1). Shapes: x (B, *S) -> (B, *S).
    """
    tt = torch.tensor([float(t), float(t_next)], dtype=torch.float64)
    a, s = sde.mean_coeff(tt).tolist(), sde.marginal_std(tt).tolist()
    r = a[1] / a[0]
    std = max(s[1] ** 2 - (r * s[0]) ** 2, 0.0) ** 0.5
    return r * x + std * randn(x.shape, generator, x.device, x.dtype)


def randn(shape, generator=None, device=None, dtype=None, std: float | None = None) -> torch.Tensor:
    """Standard normal noise of ``shape`` (B, *S), or N(0, std^2 I) noise with ``std``.

    ``generator`` is None (torch's global generator), a ``torch.Generator``, or a list of B
    generators (sample b drawn from generator b with shape (1, *S)). With ``std`` (a float) the
    draw is one ``torch.normal`` kernel instead of ``randn`` and a multiply: for 16 elements or
    more (per generator) bitwise ``randn * std``; below, torch's CPU kernel multiplies in float64,
    and float32 draws differ by one rounding.
    Raises:
        ValueError: a list of generators whose length is not B.
    """
    shape = tuple(shape)

    def draw(size, g):
        if std is None:
            return torch.randn(size, generator=g, device=device, dtype=dtype)
        return torch.normal(0.0, std, size, generator=g, device=device, dtype=dtype)

    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"generator is a list of {len(generator)} generators but the batch size is {shape[0]}; "
                             "give one generator per sample")
        return torch.cat([draw((1, *shape[1:]), g) for g in generator])
    return draw(shape, generator)


def check_generator(generator) -> None:
    """Raise TypeError unless ``generator`` is None, a torch.Generator or a non-empty list of them."""
    gens = generator if isinstance(generator, (list, tuple)) else [generator]
    if generator is None:
        return
    if not gens or not all(isinstance(g, torch.Generator) for g in gens):
        raise TypeError("generator must be a torch.Generator, a list of torch.Generator (one per sample) or None; "
                        f"got {type(generator).__name__}")


def generator_device(generator) -> torch.device | None:
    """The device of ``generator`` (of its first element for a list), or None."""
    if generator is None:
        return None
    g = generator[0] if isinstance(generator, (list, tuple)) else generator
    return g.device


def seed_from(generator, device=None) -> list[int]:
    """Integer seeds in [0, 2^31 - 1) drawn from ``generator`` (one per generator of a list).

    Same generator state, same seeds; used as torchsde's ``entropy``. With ``generator=None``
    the seed comes from torch's global generator (so ``torch.manual_seed`` makes it
    reproducible, unlike torchsde's own default, which reads numpy's global state).
    """
    gens = generator if isinstance(generator, (list, tuple)) else [generator]
    out = []
    for g in gens:
        dev = g.device if g is not None else (device or "cpu")
        out.append(int(torch.randint(0, 2**31 - 1, (1,), generator=g, device=dev).item()))
    return out
