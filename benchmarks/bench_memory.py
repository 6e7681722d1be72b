"""Benchmark: peak memory of ``scoresde.bits_per_dim`` at batch 16 / 64 / 256 (issue 13, item 7).

The model is ``bench_likelihood.build_model``'s small UNet on scikit-learn's 8x8 digits
(ch 16, ch_mult (1, 2), one residual block per level, no attention; 17 levels), trained for
``--train-steps`` denoising steps so that its field is not trivial, saved to a weight file and
loaded by every measurement.

Each batch size is measured in a **fresh subprocess** (so one measurement's allocator state and
peak cannot leak into the next):

* CPU: the process's peak resident set around one ``bits_per_dim`` call on the first B test
  images. On Linux the peak mark is reset first (``echo 5 > /proc/self/clear_refs``) and read
  back as ``VmHWM``, minus ``VmRSS`` before the call; elsewhere
  ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` before and after (a high-water mark since start,
  which the imports' transient peak can hide). "before" is taken after the imports, the model
  load and a warm-up call at batch 1 (thread pools, lazy initialisation), so the increase is
  what batch B adds. The peak RSS includes the allocator's slack; it is what the operating
  system has to provide.
* CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus the memory
  allocated before the call (the model), i.e. the tensors the solve itself needs at its peak.

The memory of an adaptive solve does not grow with the number of steps (each evaluation's
autograd graph for the divergence is freed before the next one; dopri5 keeps 7 stages of the
state), so a loose tolerance (default rtol = atol = 1e-3) measures the same peak as 1e-5 in a
fraction of the time; the script records the tolerance and NFE of each row. Checked on this
project's 2-core CPU (2026-12-02): batch 16 at rtol = atol = 1e-5 took NFE 3128 (321 s) and
raised the peak RSS by 17.5 MiB, against 17.3 MiB at 1e-3 (NFE 116, 6.5 s).

Usage: python benchmarks/bench_memory.py [--quick] [--device cpu|cuda|auto] [--batches 16 64 256]
       [--rtol 1e-3] [--train-steps 200] [--out benchmarks/results/memory]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # _common / bench_likelihood, and scoresde from this checkout

from _common import md_table, parser, set_threads, write_results  # noqa: E402

LEVELS, RANGE = 17, (-1.0, 1.0)


def _status_mib(field: str) -> float | None:
    """A memory field of /proc/self/status ("VmRSS", "VmHWM"), MiB; None off Linux."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    """Reset this process's peak-RSS mark (Linux >= 4.0: ``echo 5 > /proc/self/clear_refs``); True if done."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_mib("VmHWM") is not None
    except OSError:
        return False


def _rss_mib() -> float:
    """Peak resident set size of this process so far, MiB (Linux reports KiB, macOS bytes)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1024.0 * 1024.0) if sys.platform == "darwin" else r / 1024.0


def child(args) -> dict:
    """One measurement (run in its own process): the peak memory of bits_per_dim at batch ``args.batch``."""
    import torch

    from bench_likelihood import build_model
    from scoresde import VPSDE, bits_per_dim
    from scoresde.data import digits

    set_threads(args.threads)
    device = torch.device(args.device)
    sde = VPSDE()
    model = build_model(sde, 0, device, args.ch, args.weights)
    levels = digits("test").levels
    if args.batch > len(levels):
        raise ValueError(f"--batches: {args.batch} is more than the {len(levels)} digits test images")

    def run(b):
        g = torch.Generator(device="cpu").manual_seed(123)
        return bits_per_dim(model, sde, levels[:b].to(device), data_range=RANGE, num_levels=LEVELS,
                            rtol=args.rtol, atol=args.rtol, generator=g)

    run(1)  # warm-up: thread pools, allocator, lazy initialisation
    row = {"batch": args.batch, "device": str(device), "rtol": args.rtol}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    # the peak mark is reset where Linux allows it (the imports' transient peak would hide small batches);
    # elsewhere ru_maxrss, a high-water mark since the process started
    hwm = _reset_peak()
    rss0 = _status_mib("VmRSS") if hwm else _rss_mib()
    t0 = time.perf_counter()
    r = run(args.batch)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        row["cuda_peak_mib"] = (torch.cuda.max_memory_allocated(device) - base) / 2 ** 20
        row["cuda_model_mib"] = base / 2 ** 20
    rss1 = _status_mib("VmHWM") if hwm else _rss_mib()
    row["rss_method"] = "VmHWM after clear_refs" if hwm else "ru_maxrss"
    row.update(nfe=r.nfe, bpd=float(r.bpd.mean()), wall_s=round(time.perf_counter() - t0, 2),
               rss_before_mib=round(rss0, 1), rss_peak_mib=round(rss1, 1), rss_increase_mib=round(rss1 - rss0, 1),
               n_params=sum(p.numel() for p in model.parameters()))
    return row


def measure(args, batch: int, weights: str) -> dict:
    """Run :func:`child` for one batch size in a fresh interpreter; its row (or an error row)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--batch", str(batch), "--weights", weights,
           "--device", args.device, "--rtol", str(args.rtol), "--ch", str(args.ch), "--threads", str(args.threads)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"batch": batch, "error": (proc.stderr.strip().splitlines() or ["no output"])[-1]}
    return json.loads(lines[-1])


def main(argv=None) -> int:
    p = parser("memory", __doc__.split("\n")[0])
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    p.add_argument("--batches", type=int, nargs="+", default=None, help="batch sizes (default 16 64 256)")
    p.add_argument("--rtol", type=float, default=None, help="rtol = atol of the solve (default 1e-3; --quick 1e-2)")
    p.add_argument("--train-steps", type=int, default=None, help="denoising steps for the model (default 200)")
    p.add_argument("--ch", type=int, default=16, help="UNet base width (default 16)")
    p.add_argument("--weights", default=None, help="weight file to load (else trained here into a temp file)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per measurement")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, default=16, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.device == "auto":
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.rtol is None:
        args.rtol = 1e-2 if args.quick else 1e-3
    if args.child:
        print(json.dumps(child(args)))
        return 0
    started = time.time()
    batches = args.batches or ([2, 8] if args.quick else [16, 64, 256])
    steps = args.train_steps if args.train_steps is not None else (5 if args.quick else 200)
    if args.quick:
        args.ch = min(args.ch, 8)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        weights = args.weights
        if weights is None or not os.path.exists(weights):
            import torch

            from bench_likelihood import build_model
            from scoresde import VPSDE

            set_threads(args.threads)
            weights = weights or os.path.join(tmp, "unet.pt")
            build_model(VPSDE(), steps, torch.device(args.device), args.ch, weights)
        for b in batches:
            rows.append(measure(args, b, weights))
            print(json.dumps(rows[-1]), flush=True)
    md = _table(rows, args, steps)
    print(md)
    ok = [r for r in rows if "error" not in r]
    key = "cuda_peak_mib" if args.device.startswith("cuda") else "rss_increase_mib"
    value = " / ".join(f"{r[key]:.0f}" for r in ok) + " MiB"
    readme = [{"what": f"peak memory of bits_per_dim at batch {' / '.join(str(r['batch']) for r in ok)} "
                       f"(digits small UNet, {args.device})",
               "value": value,
               "how": "benchmarks/bench_memory.py: " + ("CUDA max_memory_allocated" if key == "cuda_peak_mib" else
                                                        f"peak RSS increase ({ok[0].get('rss_method', 'ru_maxrss')})")
                      + f" of one call in a fresh process, rtol = atol = {args.rtol:g}"}] if ok else []
    write_results("memory", args.out, md, rows, readme=readme, started=started,
                  extra={"train_steps": steps, "ch": args.ch, "rtol": args.rtol})
    return 0 if ok and len(ok) == len(rows) else 1


def _table(rows, args, steps) -> str:
    cuda = args.device.startswith("cuda")
    head = ["batch", "NFE", "s", "RSS before (MiB)", "peak RSS during (MiB)", "increase (MiB)",
            "per added image (KiB)"] + (["CUDA peak (MiB)", "CUDA per added image (KiB)"] if cuda else [])
    body = []
    first = next((r for r in rows if "error" not in r), None)

    def per_added(r, key):  # the slope from the smallest batch: the fixed overhead cancels
        db = r["batch"] - first["batch"]
        return f"{1024 * (r[key] - first[key]) / db:.0f}" if db > 0 else "-"

    for r in rows:
        if "error" in r:
            body.append([r["batch"], "error: " + r["error"]] + [""] * (len(head) - 2))
            continue
        cells = [r["batch"], r["nfe"], r["wall_s"], r["rss_before_mib"], r["rss_peak_mib"], r["rss_increase_mib"],
                 per_added(r, "rss_increase_mib")]
        if cuda:
            cells += [f"{r['cuda_peak_mib']:.1f}", per_added(r, "cuda_peak_mib")]
        body.append(cells)
    n = next((r["n_params"] for r in rows if "n_params" in r), "?")
    return (f"Peak memory of `scoresde.bits_per_dim` (digits 8x8, 17 levels; UNet ch {args.ch}, {n} parameters, "
            f"{steps} training steps; dopri5 at rtol = atol = {args.rtol:g}; Hutchinson, 1 probe; "
            f"{args.device}; one fresh process per batch size)\n\n" + md_table(head, body))


if __name__ == "__main__":
    sys.exit(main())
