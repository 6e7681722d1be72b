"""GPU check (issue 13, item 6): throughput and peak memory of sampling, bits/dim and training on one GPU.

Prints, for the 35.7M-parameter ``scoresde.models.UNet(in_channels=3)`` (DDPM's CIFAR-10
network: ch 128, ch_mult (1, 2, 2, 2), two residual blocks, attention at 16x16) at 32x32:

1. **training** steps/s at batch 128 (``scoresde.train``, "dsm", VP SDE): float32, bf16 autocast,
   fp16 autocast + GradScaler, and (last, since compiling takes a minute or two) bf16 +
   ``torch.compile``; the float32 run trains the network a little longer, so that the sections
   after it see a non-trivial field;
2. **sampling** throughput (images/s) at batch 256: ``ddim`` 50 steps, and ``dpmpp_2m``,
   ``unipc``, ``heun`` at about 10 / 20 network evaluations (heun: 2 steps - 1 NFE);
3. **bits/dim** throughput (images/s) on 32x32x3 data at rtol = atol = 1e-5 (dopri5, one
   Rademacher probe; and of the fixed grid ``method="dpmpp_2m", steps=40, time_variable="lambda"``
   as ``grid_images_per_s``), batch 64 and 256, with the network in float32 and under bf16 autocast
   (:func:`scoresde.device.autocast_score`: the ODE state stays float32). The NFE a solve needs
   depends on the network's field: without ``--weights`` (a trained UNet's state dict) it is the
   briefly trained network's, not a good CIFAR-10 model's. Each solve's NFE is capped from the
   measured cost of one evaluation (``s_per_nfe``, the hardware figure) and an even share of
   the time left; a capped solve reports ">cap" NFE and an upper bound on its images/s;

4. **synchronisations**: host-device syncs per network evaluation (``set_sync_debug_mode``) of a
   bare ScoreModel call, the checked ``call_score``, a sampler, the likelihood and a training
   update (the cost of the NaN / shape checks, issue 13, item 5);

and the peak GPU memory of each (``torch.cuda.max_memory_allocated`` after
``reset_peak_memory_stats``). The data: scikit-learn's 8x8 digits upscaled to 32x32 (nearest) in
three channels, 17 levels, in [-1, 1] (the network's cost does not depend on the pictures).

Robustness: every measurement runs in its own try/except (an error is printed and recorded, and
the script goes on), and a global time guard (``--budget``, default 330 s) skips what would not
fit, so the whole script stays under 6 minutes on one GPU; the compile measurement runs in a
child process with a timeout (compiling has no time bound of its own). With ``--quick``, or on a machine
without CUDA, it runs the same code at toy size on the CPU (what the test runs). Results:
``benchmarks/results/gpu/gpu.md`` and ``gpu.json`` (``_common.write_results``).

Usage: python benchmarks/gpu_check.py [--quick] [--budget 330] [--device cuda] [--weights unet_state.pt]
       [--sections train sample bpd compile] [--out DIR]
"""
from __future__ import annotations

import json
import logging
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # _common, and scoresde from this checkout

import torch  # noqa: E402

from _common import md_table, parser, set_threads, write_results  # noqa: E402

FULL = dict(image=32, net=dict(in_channels=3), sample_batch=256, ddim_steps=50, nfe=(10, 20), bpd_batches=(64, 256),
            rtol=1e-5, train_batch=128, train_steps=40, warm_steps=5, field_steps=150, budget=330.0)
QUICK = dict(image=8, net=dict(in_channels=3, image_size=8, ch=8, ch_mult=(1, 2), num_res_blocks=1,
                               attn_resolutions=()),
             sample_batch=4, ddim_steps=5, nfe=(4,), bpd_batches=(2,), rtol=1e-2, train_batch=8, train_steps=3,
             warm_steps=1, field_steps=5, budget=600.0)


class Guard:
    """The global time guard: :meth:`left` seconds remain of ``budget``; :meth:`allows` a step of ``need`` s."""

    def __init__(self, budget: float):
        self.t0, self.budget = time.perf_counter(), float(budget)

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.t0)

    def allows(self, need: float) -> bool:
        return self.left() > need


class Bench:
    """What the sections share: device, sizes, the rows measured, the time guard, peak-memory helpers."""

    def __init__(self, args):
        self.cuda = (not args.quick) and torch.cuda.is_available() and args.device.startswith("cuda")
        self.device = torch.device(args.device if self.cuda else "cpu")
        if self.cuda and self.device.index is None:  # one explicit device for the model, data and generators
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.size = dict(QUICK if not self.cuda else FULL)
        self.guard = Guard(args.budget if args.budget is not None else self.size["budget"])
        self.rows: list[dict] = []
        self.model = None
        self.reserve = 0.0  # seconds kept for later sections (the compile child)
        from scoresde import VPSDE

        self.sde = VPSDE()

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def reset_peak(self):
        if self.cuda:
            self.sync()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_mib(self):
        if not self.cuda:
            return None
        self.sync()
        return round(torch.cuda.max_memory_allocated(self.device) / 2 ** 20, 1)

    def run(self, section: str, what: str, need: float, fn) -> dict:
        """Measure ``fn() -> dict`` unless the guard says no; any error is printed and recorded."""
        row = {"section": section, "what": what}
        if not self.guard.allows(need):
            row["skipped"] = f"time guard: {self.guard.left():.0f} s left, about {need:.0f} s needed"
        else:
            try:
                self.reset_peak()
                row.update(fn())
                row["peak_mib"] = self.peak_mib()
            except Exception as e:  # noqa: BLE001 - report and go on: one broken path must not hide the rest
                row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
                traceback.print_exc(limit=3, file=sys.stderr)
        self.rows.append(row)
        print(json.dumps(row), flush=True)
        return row

    def new_model(self, seed: int = 0):
        from scoresde import ScoreModel
        from scoresde.models import UNet

        torch.manual_seed(seed)
        net = UNet(**self.size["net"])
        return ScoreModel(net, self.sde, prediction="eps").to(self.device)


def digits32(image: int, channels: int = 3):
    """(levels (n, 3, image, image) int64 in [0, 16], data in [-1, 1]): the 8x8 digits upscaled (nearest)."""
    from scoresde.data import digits

    lev = torch.cat([digits("train").levels, digits("test").levels]).long()
    if lev.dim() == 3:
        lev = lev[:, None]
    lev = torch.nn.functional.interpolate(lev.float(), size=(image, image), mode="nearest").round().long()
    lev = lev.expand(-1, channels, -1, -1).contiguous()
    return lev, (lev.float() + 0.5) / 17 * 2 - 1


# ------------------------------------------------------------------------------------------ sections
def section_train(b: Bench, compiled: bool = False) -> None:
    """Training steps/s: float32, bf16, fp16 (``compiled`` False), or bf16 + torch.compile (True; run last,
    since compiling the UNet takes a minute or two)."""
    from scoresde import TrainConfig, train

    s = b.size
    _, data = digits32(s["image"])
    variants = ([("bf16 + torch.compile", "bf16", "inductor" if b.cuda else "eager")] if compiled else
                [("float32", None, False), ("bf16 autocast", "bf16", False), ("fp16 autocast + GradScaler", "fp16", False)])
    for name, amp, comp in variants:
        n = s["train_steps"] + (s["field_steps"] if amp is None else 0)

        def one(amp=amp, comp=comp, n=n):
            model = b.new_model()
            stamps = []
            cfg = TrainConfig(steps=n, batch_size=s["train_batch"], lr=2e-4, warmup=0, eval_every=0, log_every=0,
                              checkpoint_every=0, quiet=True, device=str(b.device), amp=amp, compile=comp)

            def cb(step, info):
                b.sync()
                stamps.append(time.perf_counter())

            t0 = time.perf_counter()
            r = train(model, b.sde, "dsm", data, cfg, callback=cb)
            w = s["warm_steps"]
            rate = (len(stamps) - 1 - w) / (stamps[-1] - stamps[w]) if len(stamps) > w + 1 else float("nan")
            if amp is None and b.model is None:
                b.model = r.model.eval()  # the sections after this one use the trained network
            return {"batch": s["train_batch"], "steps": n, "steps_per_s": round(rate, 3),
                    "first_step_s": round(stamps[0] - t0, 2), "loss": r.loss,
                    "n_params": sum(p.numel() for p in model.parameters())}

        need = 100.0 if comp and b.cuda else 15.0  # the compile child is started with >= 120 s
        b.run("train", name, need, one)


def section_sample(b: Bench) -> None:
    from scoresde import sample

    s = b.size
    model = b.model if b.model is not None else b.new_model().eval()
    shape = (s["sample_batch"], s["net"]["in_channels"], s["image"], s["image"])
    plans = [("ddim", s["ddim_steps"])]
    for nfe in s["nfe"]:
        plans += [("dpmpp_2m", nfe), ("unipc", nfe), ("heun", (nfe + 1) // 2)]
    warmed = False
    for method, steps in plans:
        def one(method=method, steps=steps):
            nonlocal warmed
            g = torch.Generator(device=b.device).manual_seed(0)
            with torch.no_grad():
                if not warmed:  # cuDNN autotuning and lazy initialisation, untimed
                    sample(model, b.sde, shape, method="dpmpp_2m", steps=2, generator=g, device=b.device)
                    warmed = True
                    b.reset_peak()
                b.sync()
                t0 = time.perf_counter()
                x, info = sample(model, b.sde, shape, method=method, steps=steps, generator=g, device=b.device,
                                 return_info=True, denoise=False)  # NFE = steps (heun: 2 steps - 1)
                b.sync()
                dt = time.perf_counter() - t0
            return {"batch": shape[0], "steps": steps, "nfe": info.nfe, "seconds": round(dt, 3),
                    "images_per_s": round(shape[0] / dt, 2), "finite": bool(torch.isfinite(x).all())}

        b.run("sample", f"{method} {steps} steps", 20.0, one)


def section_bpd(b: Bench) -> None:
    """Bits/dim at rtol = atol = 1e-5, float32 and bf16 network, per batch size. Each solve gets an even
    share of the time left (minus what the compile section needs) as an NFE cap, from the measured cost
    of one evaluation; a capped solve reports the cap and the images/s it would at most reach."""
    from scoresde import bits_per_dim
    from scoresde.device import autocast_score
    from scoresde.solvers.ode_types import ODESolverError

    s = b.size
    model = b.model if b.model is not None else b.new_model().eval()
    levels, _ = digits32(s["image"])
    plans = [(batch, name, fn) for batch in s["bpd_batches"]
             for name, fn in (("float32", model), ("bf16 autocast network", autocast_score(model, torch.bfloat16)))]
    for j, (batch, name, fn) in enumerate(plans):
        def one(batch=batch, fn=fn, left_items=len(plans) - j):
            g = torch.Generator(device="cpu").manual_seed(1)
            x = levels[:batch].to(b.device)
            bits_per_dim(fn, b.sde, x, num_levels=17, method="euler", steps=1, generator=g)  # warm-up
            b.sync()  # the cost of one evaluation (2 fixed Euler steps, untimed in the result)
            t0 = time.perf_counter()
            bits_per_dim(fn, b.sde, x, num_levels=17, method="euler", steps=2, generator=g)
            b.sync()
            per_nfe = (time.perf_counter() - t0) / 2
            share = (b.guard.left() - b.reserve) / left_items
            cap = int(max(20, min(5000, share / max(per_nfe, 1e-6))))
            row = {"batch": batch, "rtol": s["rtol"], "nfe_cap": cap, "s_per_nfe": round(per_nfe, 4)}
            b.sync()
            t0 = time.perf_counter()
            try:
                r = bits_per_dim(fn, b.sde, x, num_levels=17, rtol=s["rtol"], atol=s["rtol"], generator=g,
                                 max_nfe=cap)
            except ODESolverError as e:  # the cap: what the time allows, not a failure of the path
                row.update(nfe=f">{cap}", images_per_s=f"<{batch / (cap * per_nfe):.3g}",
                           note=f"NFE cap of the time share reached ({str(e).splitlines()[0][:120]})")
                return row
            b.sync()
            dt = time.perf_counter() - t0
            row.update(nfe=r.nfe, seconds=round(dt, 3), images_per_s=round(batch / dt, 3),
                       bpd=round(float(r.bpd.mean()), 4))
            t0 = time.perf_counter()  # the fixed-grid way (scoresde.likelihood_multistep): 41 evaluations
            r = bits_per_dim(fn, b.sde, x, num_levels=17, method="dpmpp_2m", steps=40, time_variable="lambda",
                             generator=g)
            b.sync()
            dt = time.perf_counter() - t0
            row.update(grid_images_per_s=round(batch / dt, 3), grid_bpd=round(float(r.bpd.mean()), 4))
            return row

        b.run("bpd", f"bits/dim {name}, batch {batch}", 10.0, one)


def section_syncs(b: Bench) -> None:
    """Host-device synchronisations per network evaluation (CUDA only: ``torch.cuda.set_sync_debug_mode``),
    for the NaN / shape checks of issue 13, item 5: a bare ScoreModel call, the checked ``call_score``, a
    sampler, the likelihood and one training update."""
    import warnings

    from scoresde import TrainConfig, bits_per_dim, sample, train
    from scoresde.score_fn import call_score

    s = b.size
    model = b.model if b.model is not None else b.new_model().eval()
    n = 8
    shape = (n, s["net"]["in_channels"], s["image"], s["image"])
    levels, data = digits32(s["image"])

    def count(fn) -> int:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                fn()
            finally:
                torch.cuda.set_sync_debug_mode("default")
        return sum("synchroniz" in str(w.message) for w in seen)

    cases = {
        "ScoreModel call": (lambda: model(torch.randn(shape, device=b.device),
                                          torch.full((n,), 0.5, device=b.device, dtype=torch.float64)), 1),
        "call_score (checked)": (lambda: call_score(model, torch.randn(shape, device=b.device),
                                                    torch.full((n,), 0.5, device=b.device, dtype=torch.float64)), 1),
        "sample dpmpp_2m, 4 steps": (lambda: sample(model, b.sde, shape, method="dpmpp_2m", steps=4, denoise=False,
                                                    device=b.device), 4),
        "bits_per_dim euler, 2 steps": (lambda: bits_per_dim(model, b.sde, levels[:n].to(b.device), num_levels=17,
                                                             method="euler", steps=2), 2),
        "train, 1 update (batch 8)": (lambda: train(b.new_model(), b.sde, "dsm", data[:64], TrainConfig(
            steps=1, batch_size=n, warmup=0, eval_every=0, log_every=0, checkpoint_every=0, quiet=True,
            device=str(b.device))), 1),
    }
    for what, (fn, nfe) in cases.items():
        def one(fn=fn, nfe=nfe, what=what):
            if not b.cuda:
                return {"note": "counts CUDA synchronisations: needs CUDA (nothing measured on the CPU)"}
            with torch.no_grad() if "train" not in what and "bits" not in what else torch.enable_grad():
                fn()  # warm-up (lazy initialisation synchronises once)
                syncs = count(fn)
            return {"syncs": syncs, "nfe": nfe, "syncs_per_nfe": round(syncs / nfe, 2)}

        b.run("syncs", what, 5.0, one)


def section_compile(b: Bench, args) -> None:
    """bf16 + torch.compile training, in a child process with a timeout (compiling the UNet has no time
    bound of its own); its rows are merged here."""
    import subprocess
    import tempfile

    left = b.guard.left() - 5
    if left < (120 if b.cuda else 20):
        b.rows.append({"section": "train", "what": "bf16 + torch.compile",
                       "skipped": f"time guard: {b.guard.left():.0f} s left"})
        return
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--sections", "compile-inline", "--out", tmp,
               "--budget", str(int(left)), "--device", args.device, "--threads", str(args.threads)]
        cmd += ["--quick"] if args.quick else []
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=left)
            rows = json.loads((Path(tmp) / "gpu.json").read_text())["rows"]
            if proc.returncode and not rows:
                raise RuntimeError((proc.stderr.strip().splitlines() or ["no output"])[-1])
        except subprocess.TimeoutExpired:
            rows = [{"section": "train", "what": "bf16 + torch.compile",
                     "error": f"did not finish within {left:.0f} s (compile time); killed"}]
        except Exception as e:  # noqa: BLE001
            rows = [{"section": "train", "what": "bf16 + torch.compile", "error": f"{type(e).__name__}: {e}"[:300]}]
    for r in rows:
        b.rows.append(r)
        print(json.dumps(r), flush=True)


# ------------------------------------------------------------------------------------------ output
def tables(rows) -> str:
    def cell(r, k, fmt="{}"):
        return fmt.format(r[k]) if r.get(k) is not None else ""

    def status(r):
        return r.get("error") or r.get("skipped") or r.get("note") or "ok"

    out = []
    for sec, title, cols in (("train", "Training (scoresde.train, dsm, batch {b})", ("steps_per_s", "first_step_s", "loss")),
                             ("sample", "Sampling", ("nfe", "seconds", "images_per_s")),
                             ("bpd", "Bits/dim (dopri5, 1 Rademacher probe)", ("nfe", "nfe_cap", "s_per_nfe", "seconds", "images_per_s", "bpd")),
                             ("syncs", "Host-device synchronisations (torch.cuda.set_sync_debug_mode)", ("nfe", "syncs", "syncs_per_nfe"))):
        rs = [r for r in rows if r["section"] == sec]
        if not rs:
            continue
        b = next((r.get("batch") for r in rs if r.get("batch")), "?")
        head = ["what", "batch", *cols, "peak GPU MiB", "status"]
        body = [[r["what"], cell(r, "batch"), *[cell(r, c) for c in cols], cell(r, "peak_mib"), status(r)] for r in rs]
        out.append(f"**{title.format(b=b)}**\n\n" + md_table(head, body))
    return "\n".join(out)


def readme_rows(rows, gpu: str) -> list[dict]:
    """The README rows this script owns: only from a CUDA run (a CPU toy run measures nothing of a GPU)."""
    got = {r["what"]: r for r in rows if not {"error", "skipped", "note"} & set(r)}  # measured in full only
    out = []
    for key, label, field in (("dpmpp_2m 20 steps", "sampling, dpmpp_2m 20 NFE, batch 256", "images_per_s"),
                              ("bits/dim float32, batch 256", "bits/dim at 1e-5, batch 256, float32", "images_per_s"),
                              ("bits/dim bf16 autocast network, batch 256", "bits/dim at 1e-5, batch 256, bf16 network",
                               "images_per_s"),
                              ("float32", "training steps/s, batch 128, float32", "steps_per_s"),
                              ("bf16 autocast", "training steps/s, batch 128, bf16 autocast", "steps_per_s")):
        if key in got:
            out.append({"what": f"{label} ({gpu})", "value": f"{got[key][field]} {field.replace('_per_s', '/s')}",
                        "how": "benchmarks/gpu_check.py"})
    return out


SECTIONS = {"train": section_train, "sample": section_sample, "bpd": section_bpd, "syncs": section_syncs,
            "compile": section_compile, "compile-inline": lambda b: section_train(b, compiled=True)}


def main(argv=None) -> int:
    p = parser("gpu", __doc__.split("\n")[0])
    p.add_argument("--device", default="cuda", help="CUDA device (default cuda); without CUDA the CPU toy run")
    p.add_argument("--budget", type=float, default=None, help="seconds for the whole script (default 330)")
    p.add_argument("--sections", nargs="+", default=["train", "sample", "syncs", "bpd", "compile"],
                   choices=list(SECTIONS))
    p.add_argument("--weights", default=None, help="a state dict of the UNet to load (e.g. a trained CIFAR-10 "
                   "model); sampling and bits/dim then use it (their NFE depend on the field)")
    args = p.parse_args(argv)
    started = time.time()
    set_threads(args.threads if (args.quick or not torch.cuda.is_available()) else max(args.threads, 4))
    logging.getLogger("torch._dynamo").setLevel(logging.ERROR)  # graph-break notes (the models' input checks)
    b = Bench(args)
    b.reserve = (130.0 if b.cuda else 25.0) if "compile" in args.sections else 0.0  # kept for the compile section
    if args.weights:
        try:
            model = b.new_model()
            model.load_state_dict(torch.load(args.weights, map_location=b.device, weights_only=True))
            b.model = model.eval()
        except Exception as e:  # noqa: BLE001 - say so and go on with the network trained here
            b.rows.append({"section": "train", "what": f"--weights {args.weights}", "error": f"{type(e).__name__}: {e}"[:300]})
            print(f"--weights {args.weights} not loaded ({type(e).__name__}: {e}); using the network trained here",
                  file=sys.stderr)
    gpu = torch.cuda.get_device_name(b.device) if b.cuda else "no CUDA: CPU toy run"
    print(f"gpu_check on {gpu}; torch {torch.__version__}; sizes {json.dumps(b.size)}", flush=True)
    for name in args.sections:
        fn = SECTIONS[name]
        try:
            fn(b, args) if name == "compile" else fn(b)
        except Exception as e:  # noqa: BLE001 - a section's set-up failing must not stop the others
            b.rows.append({"section": name, "what": "(section)", "error": f"{type(e).__name__}: {e}"[:300]})
            traceback.print_exc(limit=3, file=sys.stderr)
    md = f"Device: {gpu}\n\n" + tables(b.rows)
    print(md)
    extra = {"gpu": gpu, "cuda": b.cuda, "sizes": b.size}
    if b.cuda:
        extra.update(tf32_matmul=torch.backends.cuda.matmul.allow_tf32, tf32_cudnn=torch.backends.cudnn.allow_tf32,
                     cuda_version=torch.version.cuda)
    write_results("gpu", args.out, md, b.rows, readme=readme_rows(b.rows, gpu) if b.cuda else [], started=started,
                  extra=extra)
    print(f"total {time.time() - started:.1f} s", flush=True)
    return 0 if all("error" not in r for r in b.rows) else 1


if __name__ == "__main__":
    sys.exit(main())
