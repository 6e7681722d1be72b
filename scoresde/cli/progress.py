"""Progress of the command line's long stages: a bar that counts network evaluations.

An adaptive PF-ODE solve (``scoresde likelihood``, ``compare``'s bits/dim) runs for a minute or
more inside one library call, so a bar over batches sits at 0 all that time. :class:`NetBar`
counts the calls of the score network instead (a forward hook: the library's numbers are not
touched), one tick per evaluation (a per-sample solve that calls the network on several chunks
of rows for one evaluation counts once, see
:func:`scoresde.solvers.ode_per_sample.evaluation_part`), with the evaluations of the current batch in the postfix.
Its total is the true number of evaluations when it is known in advance (the DDPM bound: steps
x batches) and none when it is not (an adaptive solve chooses its steps as it goes), so the bar
never claims a total it does not count. Bars go to stderr; ``enabled=False`` (``--quiet``, or a
process other than rank 0 under torchrun) shows nothing.
"""
from __future__ import annotations

import sys

from torch import nn

__all__ = ["NetBar", "network_of"]


def network_of(model) -> nn.Module | None:
    """The module whose forward calls are the score evaluations of ``model``.

    Arguments:
        model: a :class:`scoresde.ScoreModel` (its ``net``), another ``nn.Module`` (itself) or a
            plain callable (None: nothing to hook).
    Returns:
        The ``nn.Module`` to hook, or None.
    """
    net = getattr(model, "net", None)
    if isinstance(net, nn.Module):
        return net
    return model if isinstance(model, nn.Module) else None


class NetBar:
    """A tqdm bar on stderr advanced by one per evaluation of ``model``'s network (NFE).

    A forward call counts unless it is a later chunk of one per-sample evaluation
    (``rows_per_call``, :func:`scoresde.solvers.ode_per_sample.evaluation_part` > 0).

    Use as a context manager; call :meth:`batch` when a new batch starts (it resets the
    per-batch count shown in the postfix as "NFE this batch").

    Arguments:
        model: the score model the library calls (see :func:`network_of`); with no module to
            hook the bar advances only by :meth:`advance`.
        desc: the bar's label. total: the number of evaluations if known in advance, else None.
        batches: the number of batches this process evaluates (shown as "batch j/B").
        enabled: False shows nothing and hooks nothing.
    Raises:
        ValueError: a negative total or batches.
    Reference:
        issue 11, item 5: a bar counts what its total counts; tqdm's ``total=None`` for an
        unknown total.
    """

    def __init__(self, model, desc: str, *, total: int | None = None, batches: int = 1, enabled: bool = True):
        if total is not None and total < 0:
            raise ValueError(f"total must be >= 0 or None; got {total}")
        if batches < 0:
            raise ValueError(f"batches must be >= 0; got {batches}")
        self.model, self.desc, self.total, self.batches, self.enabled = model, desc, total, batches, enabled
        self.count = 0  # evaluations so far, all batches
        self.in_batch = 0  # evaluations of the current batch
        self.index = 0  # the current batch, 1-based (0 before the first)
        self.bar = None
        self._handle = None

    def __enter__(self) -> NetBar:
        if not self.enabled:
            return self
        import tqdm.auto
        self.bar = tqdm.auto.tqdm(total=self.total, desc=self.desc, unit="nfe", file=sys.stderr, dynamic_ncols=True)
        net = network_of(self.model)
        if net is not None:
            self._handle = net.register_forward_hook(self._on_forward)
        return self

    def _on_forward(self, module, inputs, output) -> None:
        # one evaluation of a per-sample solve may call the network on several chunks of rows
        # (rows_per_call): count its first chunk only, so that the bar shows evaluations (NFE)
        from ..solvers.ode_per_sample import evaluation_part
        if evaluation_part() == 0:
            self.advance()

    def batch(self, points: int | None = None) -> None:
        """Start the next batch (of ``points`` points, shown in the postfix).

        Arguments:
            points: the batch's size, or None.
        Returns:
            None.
        """
        self.index += 1
        self.in_batch = 0
        self._points = points
        self._postfix(refresh=True)

    def advance(self, k: int = 1) -> None:
        """Count ``k`` evaluations (the hook calls it with 1 per network call).

        Arguments:
            k: evaluations to add.
        Returns:
            None.
        """
        self.count += k
        self.in_batch += k
        if self.bar is not None:
            self._postfix(refresh=False)  # before update(), which may redraw the line
            self.bar.update(k)

    def _postfix(self, refresh: bool) -> None:
        if self.bar is None:
            return
        text = f"batch {self.index}/{self.batches}"
        if getattr(self, "_points", None):
            text += f" ({self._points} pts)"
        self.bar.set_postfix_str(f"{text}, NFE this batch {self.in_batch}", refresh=refresh)

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        if self.bar is not None:
            self.bar.close()
            self.bar = None
