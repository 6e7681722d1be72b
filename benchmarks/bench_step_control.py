"""Benchmark: per-sample against shared step control for bits_per_dim (issue 13, item 3).

Question: what does a step size per sample cost (NFE, CPU time) against the shared step of
torchdiffeq (one error norm over the whole batch), and how much does a sample's log-density move
when its batch-mates change, in each mode?

Setup (as ``bench_likelihood.py``, whose ``build_model`` it uses: DDPM's time-embedding band, see
there): a small UNet eps-model trained briefly on scikit-learn's 8x8 digits (17 levels, data range
[-1, 1]), VP SDE, eps = 1e-5, rtol = atol = 1e-5, dopri5, one
Rademacher probe; the test digits are dequantized once (fixed noise) and ``bits_per_dim`` is run
on that continuous data (``dequantize=False``), so that both modes see the same inputs and probes.

Measured, for batch 16 and 64:

* NFE: calls of the network (per-sample mode calls it only on the samples still running, so the
  work is the number of *sample evaluations*: the sum of the samples' own NFE, given with its
  mean and max per sample; in the shared mode every sample takes part in every call);
* CPU time of the whole ``bits_per_dim`` call (``time.process_time``, interleaved repeats,
  median);
* both per-sample variants: the default, whose calls of the network have 16 rows each (the running
  samples in chunks, padded: ``rows_per_call=16``), and one call on the running samples
  (``rows_per_call=None``, fewer network rows, but the network rounds a row differently for other
  batch sizes, which moves a sample's step sizes in float32);
* batch independence: the first ``--targets`` samples of the batch solved alone, with their own
  probe rows (the probe generator advanced to the sample's position), against inside the batch:
  max relative change of logp, and the max change in bits/dim.

Usage: python benchmarks/bench_step_control.py [--quick] [--batches 16 64] [--repeats 3]
       [--train-steps 1000] [--weights /tmp/bench_unet.pt] [--out benchmarks/results/step_control]
"""
from __future__ import annotations

import copy
import math
import os
import sys
import time

import torch

from scoresde import VPSDE, bits_per_dim
from scoresde.data import digits
from scoresde.likelihood import uniform_dequantize

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import interleaved, md_table, median, parser, set_threads, write_results  # noqa: E402
from bench_likelihood import build_model  # noqa: E402  (the same small digits UNet)

EPS, TOL, LEVELS, RANGE = 1e-5, 1e-5, 17, (-1.0, 1.0)
#: "per_sample_free": per-sample steps with one call on the running rows (rows_per_call=None)
MODES = ("batch", "per_sample", "per_sample_free")


class Counted(torch.nn.Module):
    """The score model, counting its calls and the samples (rows) it is given."""

    def __init__(self, model):
        super().__init__()
        self.model, self.calls, self.rows = model, 0, []

    def forward(self, x, t):
        self.calls += 1
        self.rows.append(x.shape[0])
        return self.model(x, t)


def probe_generator(seed: int, skip: int) -> torch.Generator:
    """The probe generator of a batch, advanced past ``skip`` Rademacher draws (CPU draws are serial):
    a sample solved alone then gets the probe row it has at that position of the batch."""
    g = torch.Generator().manual_seed(seed)
    if skip:
        torch.randint(0, 2, (skip,), generator=g)
    return g


#: the fixed-grid way measured beside the two step controls: no step decisions, so nothing for rounding to flip
GRID = dict(method="dpmpp_2m", time_variable="lambda")


def run(model, sde, y, mode: str, seed: int, skip: int = 0, rtol: float = TOL, grid_steps: int = 40):
    """bits_per_dim of the continuous data y (B, 1, 8, 8) in one mode ("batch", "per_sample" or "grid":
    :data:`GRID` with ``grid_steps``); the probes from probe_generator."""
    if mode == "grid":
        kw = dict(GRID, steps=grid_steps)
    elif mode == "per_sample_free":
        kw = dict(rtol=rtol, atol=rtol, step_control="per_sample", rows_per_call=None)
    else:
        kw = dict(rtol=rtol, atol=rtol, step_control=mode)
    return bits_per_dim(model, sde, y, data_range=RANGE, num_levels=LEVELS, dequantize=False, eps=EPS,
                        generator=probe_generator(seed, skip), **kw)


def measure(model, sde, y, repeats: int, targets: int, seed: int, rtol: float = TOL, model64=None,
            grid_steps: int = 40) -> dict:
    """NFE, CPU time and batch independence of both modes on the batch y (and, with ``model64``, the
    per-sample mode's independence in float64, where the network's batch-size rounding is 1e-16)."""
    B, D = y.shape[0], y[0].numel()
    results = {}

    def call(mode):
        def f():
            counted = Counted(model).eval()
            results[mode] = (run(counted, sde, y, mode, seed, rtol=rtol, grid_steps=grid_steps), counted)
        return f

    times = interleaved({m: call(m) for m in MODES + ("grid",)}, repeats, warmup=0)
    row = {"B": B}
    for m in MODES + ("grid",):
        r, counted = results[m]
        assert counted.calls == r.nfe or m == "per_sample"  # per_sample: calls in chunks of rows_per_call rows
        alone = [run(model, sde, y[j:j + 1], m, seed, skip=j * D, rtol=rtol, grid_steps=grid_steps)
                 for j in range(min(targets, B))]
        lp_alone = torch.cat([a.logp for a in alone])
        lp_batch = r.logp[: len(alone)]
        row[m] = {"nfe": r.nfe, "cpu_s": median(times[m]), "cpu_s_all": times[m],
                  "bpd_mean": float(r.bpd.mean()),
                  "max_rel_change_logp": float(((lp_alone - lp_batch).abs() / lp_batch.abs()).max()),
                  "max_change_bpd": float((lp_alone - lp_batch).abs().max() / (D * math.log(2))),
                  "alone_nfe": [a.nfe for a in alone]}
        # per sample: how many evaluations each sample took part in (the per-sample solve leaves finished
        # ones out); network rows: what the network computed (per_sample pads its calls to rows_per_call rows)
        own = r.nfe * B if r.nfe_per_sample is None else int(r.nfe_per_sample.sum())
        row[m]["sample_evals"] = own
        row[m]["nfe_mean_per_sample"] = own / B
        row[m]["network_rows"] = sum(counted.rows)
        row[m]["network_calls"] = counted.calls
        row[m]["smallest_call"] = min(counted.rows)
    for m in ("per_sample", "per_sample_free", "grid") if model64 is not None else ():
        y64 = y.double()
        full = run(model64, sde, y64, m, seed, rtol=rtol, grid_steps=grid_steps).logp
        alone = torch.cat([run(model64, sde, y64[j:j + 1], m, seed, skip=j * D, rtol=rtol, grid_steps=grid_steps).logp
                           for j in range(min(targets, B))])
        row[m]["float64_max_rel_change_logp"] = float(((alone - full[: len(alone)]).abs()
                                                       / full[: len(alone)].abs()).max())
    row["time_ratio"] = row["per_sample"]["cpu_s"] / row["batch"]["cpu_s"]
    row["time_ratio_free"] = row["per_sample_free"]["cpu_s"] / row["batch"]["cpu_s"]
    row["bpd_mean_diff"] = row["per_sample"]["bpd_mean"] - row["batch"]["bpd_mean"]
    return row


def _table(rows) -> str:
    out = []

    def f64(d):
        return "" if "float64_max_rel_change_logp" not in d else f" / {d['float64_max_rel_change_logp']:.1e}"

    for r in rows:
        b, p, q, g = r["batch"], r["per_sample"], r["per_sample_free"], r["grid"]
        out.append([r["B"], f"{b['nfe']} ({b['cpu_s']:.1f} s)",
                    f"{p['nfe']}, mean {p['nfe_mean_per_sample']:.0f} per sample; {p['network_rows']} rows "
                    f"({p['cpu_s']:.1f} s, {r['time_ratio']:.2f}x)",
                    f"{q['nfe_mean_per_sample']:.0f} per sample; {q['network_rows']} rows "
                    f"({q['cpu_s']:.1f} s, {r['time_ratio_free']:.2f}x)",
                    f"{b['max_rel_change_logp']:.1e}",
                    f"{p['max_rel_change_logp']:.1e}{f64(p)}", f"{q['max_rel_change_logp']:.1e}{f64(q)}",
                    f"{r['bpd_mean_diff']:+.4f}", f"{g['nfe']}, {g['cpu_s']:.1f} s",
                    f"{g['max_rel_change_logp']:.1e}{f64(g)}"])
    return md_table(["batch", "shared step: NFE (CPU s)", "per-sample, 16 rows per call: NFE, network rows (CPU s, vs shared)",
                     "per-sample, one call on the running rows: NFE, rows (CPU s, vs shared)",
                     "alone vs batch, shared step (rel. logp)",
                     "alone vs batch, per-sample, 16 rows per call (float32 / float64)",
                     "alone vs batch, per-sample, running rows (float32 / float64)",
                     "mean bpd per-sample - shared", "fixed grid: NFE, CPU s",
                     "alone vs batch, fixed grid (float32 / float64)"], out)


def readme_rows(rows, rtol: float) -> list:
    """The README "Measured" rows of a run: time ratio, NFE, and the alone-vs-batch change in bits/dim."""
    out = []
    for r in rows:
        b, p, q, g = r["batch"], r["per_sample"], r["per_sample_free"], r["grid"]
        f64 = lambda d: "" if "float64_max_rel_change_logp" not in d else f", {d['float64_max_rel_change_logp']:.1e} in float64"  # noqa: E731
        out.append({"what": f"bits/dim with a step size per sample vs the shared step, batch {r['B']} "
                            f"(digits UNet, rtol = atol = {rtol:g})",
                    "value": f"CPU time {r['time_ratio']:.2f}x; {p['nfe_mean_per_sample']:.0f} evaluations per sample "
                             f"vs {b['nfe']}; a sample alone vs in the batch: {p['max_change_bpd']:.1e} bits/dim "
                             f"(shared step: {b['max_change_bpd']:.1e}), relative logp {p['max_rel_change_logp']:.1e}"
                             f"{f64(p)} (one call on the running rows instead of 16 rows per call: "
                             f"{q['max_rel_change_logp']:.1e}{f64(q)}); the fixed grid ({GRID['method']}, "
                             f"{g['nfe'] - 1} steps in lambda): "
                             f"{g['max_rel_change_logp']:.1e}{f64(g)}",
                    "how": " ".join(["python benchmarks/bench_step_control.py", *sys.argv[1:]])})
    return out


def main(argv=None):
    p = parser("step_control", __doc__.split("\n")[0])
    p.set_defaults(repeats=3)
    p.add_argument("--batches", type=int, nargs="+", default=[16, 64])
    p.add_argument("--targets", type=int, default=4, help="samples solved alone for the independence figure")
    p.add_argument("--train-steps", type=int, default=1000)
    p.add_argument("--ch", type=int, default=16)
    p.add_argument("--weights", default=None, help="load the UNet from / save it to this file")
    p.add_argument("--rtol", type=float, default=TOL, help="rtol = atol of both solves (default 1e-5)")
    p.add_argument("--max-freq", type=float, default=1.0,
                   help="the UNet's time-embedding band, as bench_likelihood.py --max-freq (1: DDPM's)")
    p.add_argument("--grid-steps", type=int, default=40,
                   help="steps of the fixed-grid way (dpmpp_2m in lambda) measured beside the two step controls")
    p.add_argument("--float64-check", action="store_true",
                   help="also solve the per-sample mode in float64 (alone vs batch, without float32 rounding)")
    args = p.parse_args(argv)
    set_threads(args.threads)
    started = time.time()
    if args.quick:
        args.batches, args.repeats, args.targets, args.train_steps, args.ch = [2, 3], 1, 1, 5, 4
        args.rtol, args.float64_check, args.grid_steps = 1e-2, True, 8
    sde = VPSDE()
    model = build_model(sde, args.train_steps, "cpu", args.ch, args.weights, max_freq=args.max_freq or None)
    model64 = copy.deepcopy(model).double() if args.float64_check else None
    test = digits("test").levels
    y_all = uniform_dequantize(test[: max(args.batches)], num_levels=LEVELS, data_range=RANGE,
                               generator=torch.Generator().manual_seed(7))
    run(model, sde, y_all[:2], "per_sample", 1, rtol=max(args.rtol, 1e-3))  # warm-up
    run(model, sde, y_all[:2], "batch", 1, rtol=max(args.rtol, 1e-3))
    rows = [measure(model, sde, y_all[:B], args.repeats, args.targets, seed=123, rtol=args.rtol, model64=model64,
                    grid_steps=args.grid_steps) for B in args.batches]
    params = sum(q.numel() for q in model.parameters())
    md = (f"`bits_per_dim` on the first B digits test images (fixed dequantization), small UNet (ch={args.ch}, "
          f"{params:,} parameters, {args.train_steps} training steps), VP, eps = {EPS:g}, rtol = atol = {args.rtol:g}, "
          f"dopri5, one Rademacher probe; CPU time median of {args.repeats} interleaved runs, "
          f"{args.threads} thread(s). NFE per sample: the evaluations a sample took part in (per-sample "
          "solves leave finished samples out); network rows: the rows the network computed (16 rows per call "
          "pads the running samples to a multiple of 16). "
          f"Alone vs batch: the first {args.targets} samples solved alone with their own probe rows. Fixed grid: "
          f"``method='{GRID['method']}', steps={args.grid_steps}, time_variable='lambda'`` (no step control).\n\n")
    md += _table(rows)
    readme = readme_rows(rows, args.rtol)
    write_results("step_control", args.out, md, rows, readme=readme if not args.quick else (), started=started,
                  extra={"params": params, "train_steps": args.train_steps, "repeats": args.repeats})
    print(md)
    return rows


if __name__ == "__main__":
    main()
