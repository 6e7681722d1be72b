"""Benchmark: the exact trace of the likelihood (``divergence="exact"``) against one Hutchinson probe.

One evaluation of the likelihood's right-hand side: the probability-flow drift with its graph
(one network call), then its divergence. Timed (CPU time, interleaved, medians):

* ``hutchinson``: one Rademacher probe, one vector-Jacobian product (the default estimator);
* ``loop`` ("before"): the exact trace by D products, one at a time (``chunk_size=1``, the
  code before issue 13, item 4);
* ``batched``: the exact trace with the default chunk
  (:func:`scoresde.divergence.default_chunk_size`), D products in batched backward passes;
* ``tuned`` ("after", the likelihood's default ``chunk_size="auto"``): a
  :class:`scoresde.divergence.ChunkTuner` that has timed its candidates (the default chunk, a
  quarter of it, the loop) over its first evaluations, here run before the timed rounds;
* with ``--chunks 4,16,...`` also each of those chunk sizes.

Nets, untrained (zero-initialised output layers perturbed, so the Jacobians are not trivial),
at D = 8, 64, 256 and batch ``--batch`` (16), float32:

* ``mlp``: :class:`scoresde.models.MLP` (hidden 128, 2 layers) on (B, D);
* ``conv``: three 3x3 convolutions (width 32, SiLU, time added after the first) on images
  (2, 2, 2), (1, 8, 8), (1, 16, 16).

Usage: python benchmarks/bench_trace.py [--quick] [--batch 16] [--repeats 5] [--chunks 4,16]
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]
from _common import interleaved, md_table, median, parser, set_threads, write_results  # noqa: E402

from scoresde import ScoreModel, VPSDE  # noqa: E402
from scoresde.divergence import ChunkTuner, default_chunk_size, divergence, draw_probes  # noqa: E402
from scoresde.likelihood import pf_drift  # noqa: E402
from scoresde.models import MLP  # noqa: E402

IMAGE = {8: (2, 2, 2), 64: (1, 8, 8), 256: (1, 16, 16)}


class SmallConv(nn.Module):
    """Three 3x3 convolutions, width ``w``, SiLU, the time added after the first: (B, C, H, W) -> same."""

    def __init__(self, channels: int, w: int = 32):
        super().__init__()
        self.a, self.b = nn.Conv2d(channels, w, 3, padding=1), nn.Conv2d(w, w, 3, padding=1)
        self.c, self.t = nn.Conv2d(w, channels, 3, padding=1), nn.Linear(1, w)

    def forward(self, x, t):
        h = nn.functional.silu(self.a(x) + self.t(t[:, None].to(x.dtype) / 1000.0)[:, :, None, None])
        return self.c(nn.functional.silu(self.b(h)))


def build(kind: str, D: int, sde):
    """(ScoreModel, per-sample shape) of net ``kind`` at dimension D."""
    torch.manual_seed(0)
    if kind == "mlp":
        net, shape = MLP(D, hidden=128, num_layers=2, embed_dim=32), (D,)
        with torch.no_grad():
            net.out.weight.normal_(0, 0.05)
    else:
        shape = IMAGE[D]
        net = SmallConv(shape[0])
    return ScoreModel(net, sde).eval(), shape


def evaluation(model, sde, x, t, probes=None, chunk_size=None):
    """One right-hand side of the likelihood ODE: drift with graph, then its divergence (B,)."""
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        drift = pf_drift(model, sde, xg, t)
        return divergence(drift, xg, probes, chunk_size=chunk_size)


def measure(kind: str, D: int, B: int, repeats: int, chunks) -> dict:
    sde = VPSDE()
    model, shape = build(kind, D, sde)
    g = torch.Generator().manual_seed(0)
    x = torch.randn((B, *shape), generator=g)
    t = torch.full((B,), 0.3, dtype=torch.float64)
    probes = draw_probes("hutchinson_rademacher", (1, B, *shape), x, g)
    default = default_chunk_size(D, B, x.element_size())
    fns = {"hutchinson": lambda: evaluation(model, sde, x, t, probes),
           "loop": lambda: evaluation(model, sde, x, t, None, 1),
           "batched": lambda: evaluation(model, sde, x, t, None, None)}
    tuner = ChunkTuner()
    while not tuner.chosen:  # its tuning evaluations, before the timed rounds
        evaluation(model, sde, x, t, None, tuner)
    fns["tuned"] = lambda: evaluation(model, sde, x, t, None, tuner)
    for c in chunks:
        if 1 < c < D and c != default:
            fns[f"chunk {c}"] = lambda c=c: evaluation(model, sde, x, t, None, c)
    err = float((evaluation(model, sde, x, t, None, 1) - evaluation(model, sde, x, t, None, None)).abs().max())
    times = {k: median(v) for k, v in interleaved(fns, repeats).items()}
    return {"net": kind, "D": D, "batch": B, "default_chunk": default, "tuned_chunk": next(iter(tuner.chosen.values())),
            "seconds": times, "tuned_over_hutchinson": times["tuned"] / times["hutchinson"],
            "batched_speedup": times["loop"] / times["batched"],
            "loop_over_hutchinson": times["loop"] / times["hutchinson"],
            "batched_over_hutchinson": times["batched"] / times["hutchinson"],
            "speedup": times["loop"] / times["tuned"], "max_abs_difference": err}


def main(argv=None):
    p = parser("trace", __doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--dims", default="8,64,256")
    p.add_argument("--nets", default="mlp,conv")
    p.add_argument("--chunks", default="", help="extra chunk sizes to time, comma-separated")
    args = p.parse_args(argv)
    started = time.time()
    set_threads(args.threads)
    dims = [8, 64] if args.quick else [int(d) for d in args.dims.split(",")]
    B = 4 if args.quick else args.batch
    repeats = 1 if args.quick else args.repeats
    chunks = [int(c) for c in args.chunks.split(",") if c]
    rows = [measure(k, D, B, repeats, chunks) for k in args.nets.split(",") for D in dims]
    header = ["net", "D", "hutchinson (ms)", "loop (before)", "default chunk", "loop / default", "tuned (after)",
              "chunk chosen", "speed-up (loop / tuned)", "max abs. difference"]
    table = [[r["net"], r["D"], f"{r['seconds']['hutchinson'] * 1e3:.2f}",
              f"{r['seconds']['loop'] * 1e3:.1f} ms = {r['loop_over_hutchinson']:.1f}x",
              f"{r['default_chunk']}: {r['seconds']['batched'] * 1e3:.1f} ms = {r['batched_over_hutchinson']:.1f}x",
              f"{r['batched_speedup']:.2f}x",
              f"{r['seconds']['tuned'] * 1e3:.1f} ms = {r['tuned_over_hutchinson']:.1f}x", r["tuned_chunk"],
              f"{r['speedup']:.2f}x", f"{r['max_abs_difference']:.1e}"] for r in rows]
    md = (f"## Exact trace vs one Hutchinson probe, batch {B}, float32 (times per evaluation; x = multiple of "
          "one Hutchinson evaluation)\n\n" + md_table(header, table))
    extra = [[r["net"], r["D"], k, f"{v * 1e3:.1f}"] for r in rows for k, v in r["seconds"].items()
             if k.startswith("chunk")]
    if extra:
        md += "\n### Other chunk sizes (ms)\n\n" + md_table(["net", "D", "chunk", "ms"], extra)
    print(md)
    write_results("trace", args.out, md, rows, readme=readme_rows(rows), started=started)


def readme_rows(rows) -> list[dict]:
    """The README row: loop time / tuned time of the exact trace per net and D (> 1: the default is faster)."""
    nets = list(dict.fromkeys(r["net"] for r in rows))
    parts = []
    for net in nets:
        ratios = " / ".join(f"{r['speedup']:.2f}x" for r in rows if r["net"] == net)
        parts.append(f"{net} {ratios}")
    ds = " / ".join(str(r["D"]) for r in rows if r["net"] == nets[0]) if nets else "?"
    batch = rows[0]["batch"] if rows else "?"
    return [{"what": f"exact trace (`divergence=\"exact\"`): loop time / time with the default `chunk_size=\"auto\"` at D = {ds} "
                     f"(batch {batch}, float32)",
             "value": "; ".join(parts), "how": "`python benchmarks/bench_trace.py`"}]


if __name__ == "__main__":
    main()
