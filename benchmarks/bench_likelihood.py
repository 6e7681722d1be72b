"""Benchmark: the cost of scoresde.bits_per_dim against the reference code's way, at equal error vs the truth.

The question: how much CPU time does a bits/dim of a given accuracy cost, with ours and with the
score-SDE reference code's way? Accuracy is measured against the truth, not against each other.

* **The reference way** (yang-song/score_sde_pytorch ``likelihood.py``, transcribed in
  :func:`reference_bits_per_dim`): scipy ``solve_ivp`` RK45 on a flattened float64 numpy state
  (x, delta_logp) in t from eps to T, the network called twice per evaluation (once for the
  drift, once more inside the VJP of the Hutchinson divergence), the Rademacher probe drawn once
  per solve, bpd = -(prior_logp + delta_logp) / (D ln 2) + offset.
* **Ours**: ``scoresde.bits_per_dim`` (torchdiffeq, one network call per evaluation), in each
  integration variable (``time_variable`` "t" and "lambda") and solver given by ``--ours``; a
  fixed-grid solver is swept over ``--steps`` instead of the tolerances: ``lambda:rk4`` (RK4 on a
  uniform grid in lambda, 4 evaluations a step) and ``lambda:dpmpp_2m`` / ``lambda:dpmpp_3m``
  (the multistep exponential integrator of ``scoresde.likelihood_multistep``: one evaluation a
  step, the linear part exact, the log-density change by quadrature over the nodes).
* **The truth**: the same likelihood (the same dequantization noise, the same probe) solved in
  float64 (a float64 copy of the network, float64 state) by dopri5 (``--truth-method``) at
  rtol = atol = 1e-9 (``--truth-tol``), in t; its agreement with the same solve in lambda is printed as a check.

All three see the same model, the same digits test images (scikit-learn's 8x8 digits, 17 levels,
data range [-1, 1]) and the same dequantization noise and probe (drawn from one generator in the
same order), eps = 1e-5. The model is a small UNet eps-model trained for ``--train-steps``
denoising steps here (its field is not trivial; it is not a good model), with the reference
code's time input for VP models: the label 999 t into DDPM's sinusoidal band [1e-4, 1]
(``--max-freq 1``). The UNet's own default band reaches 1e4 (it also serves raw t and sigma,
case C09), i.e. phases up to 1e7 t on labels: features with a period of 6e-7 in t, which a
briefly trained net has not learned to ignore. Its probability-flow field then varies in t like
noise (the total variation of eps(x, t) over [0.3, 0.32] is 40x its net change, against 6x with
DDPM's band), every solver needs about 1200 evaluations at 1e-5 and the result moves by 0.5 nats
under a 1e-12 perturbation of x (the adaptive step sequence changes): no tolerance below about
0.01 bits/dim is reachable there, and the float64 truth itself is off by that much
(``--max-freq 0`` measures that model).

For every method and every tolerance (rtol = atol, ``--tols``, default 1e-3 ... 1e-7): NFE,
network calls, CPU time (``time.process_time`` of this process, median of ``--repeats``
interleaved runs), |bpd - truth| (max over the images and mean). **At equal error**: for each
method the cheapest tolerance whose max error is below ``--target`` (0.005 bits/dim), and the
reference way's CPU time there divided by ours there (the speed-up; target >= 5x at batch 16
and 64).

Usage: python benchmarks/bench_likelihood.py [--batches 16,64] [--tols 1e-3,3e-4,1e-4,1e-5]
       [--ours t:dopri5,lambda:dopri5] [--train-steps 1000] [--ch 16] [--weights PATH] [--repeats 1]
       [--quick]
"""
from __future__ import annotations

import copy
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import integrate

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]
from _common import interleaved, md_table, median, parser, set_threads, write_results  # noqa: E402

from scoresde import ScoreModel, VPSDE, bits_per_dim  # noqa: E402
from scoresde.data import digits  # noqa: E402
from scoresde.likelihood import log_likelihood, uniform_dequantize  # noqa: E402
from scoresde.models import UNet  # noqa: E402
from scoresde.models.embeddings import SinusoidalEmbedding  # noqa: E402
from scoresde.likelihood_multistep import MULTISTEP_METHODS  # noqa: E402
from scoresde.solvers.ode import FIXED_METHODS  # noqa: E402

EPS = 1e-5
LEVELS, RANGE = 17, (-1.0, 1.0)
SEED = 123


def build_model(sde, train_steps: int, device, ch: int, weights: str | None = None, seed: int = 0,
                time_input: str = "label", max_freq: float | None = None) -> ScoreModel:
    """A small UNet eps-model, trained briefly with the denoising loss of Ho et al. 2020, Eq. (14).

    ``time_input`` is the ScoreModel's ("label": 999 t, the reference code's for VP; "t": t itself);
    with ``max_freq`` the UNet's sinusoidal time embedding spans [1e-4, max_freq] (1: DDPM's band,
    the reference code's) instead of the UNet's default [1e-4, 1e4] (see the module docstring).

    ``train_steps=0`` (``--quick``): no training, a random output layer instead (the code paths only).
    With ``weights`` naming an existing file, its state dict is loaded instead of training; a
    new file of that name is written after training.
    """
    torch.manual_seed(seed)
    net = UNet(in_channels=1, image_size=8, ch=ch, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=())
    if max_freq is not None:  # max_freq = 1: the reference code's band for 999 t, [1e-4, 1]
        net.embed = SinusoidalEmbedding(ch, max_freq=max_freq)
    model = ScoreModel(net, sde, prediction="eps", time_input=time_input).to(device)
    if train_steps == 0:  # --quick: untrained, with a random output layer (the UNet's is zero): a non-stiff field
        torch.nn.init.normal_(net.conv_out.weight, std=0.02)
        return model.eval()
    if weights is not None and os.path.exists(weights):
        model.load_state_dict(torch.load(weights, map_location=device, weights_only=True))
        return model.eval()
    data = digits("train").data.to(device)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    g = torch.Generator(device="cpu").manual_seed(seed)
    for _ in range(train_steps):
        idx = torch.randint(0, len(data), (64,), generator=g)
        x0 = data[idx]
        t = (torch.rand(64, generator=g) * (sde.T - 1e-3) + 1e-3).to(device)
        noise = torch.randn(x0.shape, generator=g).to(device)
        mean, std = sde.marginal_prob(x0, t)
        loss = (model.predict(mean + std[:, None, None, None] * noise, t, "eps") - noise).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    if weights is not None:
        torch.save(model.state_dict(), weights)
    return model.eval()


def _offset() -> float:
    return math.log2(LEVELS / (RANGE[1] - RANGE[0]))


def reference_bits_per_dim(model, sde, levels: torch.Tensor, seed: int, rtol: float, atol: float):
    """The reference code's likelihood.py way (see the module docstring). Returns (bpd (B,), nfe)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    data = uniform_dequantize(levels, num_levels=LEVELS, data_range=RANGE, generator=g, dtype=torch.float32)
    device = next(model.parameters()).device
    data = data.to(device)
    shape, B = data.shape, data.shape[0]
    epsilon = (torch.randint(0, 2, (1, *shape), generator=g).to(torch.float32) * 2 - 1)[0].to(device)
    rsde = sde.reverse(model, probability_flow=True)

    def drift_fn(x, t):
        return rsde.sde(x, t)[0]

    def div_fn(x, t, noise):
        with torch.enable_grad():
            x.requires_grad_(True)
            fn_eps = torch.sum(drift_fn(x, t) * noise)
            grad_fn_eps = torch.autograd.grad(fn_eps, x)[0]
        x.requires_grad_(False)
        return torch.sum(grad_fn_eps * noise, dim=tuple(range(1, len(x.shape))))

    def to_flat(x):
        return x.detach().cpu().numpy().reshape((-1,))

    def from_flat(x, shp):
        return torch.from_numpy(x.reshape(shp))

    with torch.no_grad():
        def ode_func(t, x):
            sample = from_flat(x[:-B], shape).to(device).type(torch.float32)
            vec_t = torch.ones(B, device=device) * t
            drift = to_flat(drift_fn(sample, vec_t))
            logp_grad = to_flat(div_fn(sample, vec_t, epsilon))
            return np.concatenate([drift, logp_grad], axis=0)

        init = np.concatenate([to_flat(data), np.zeros((B,))], axis=0)
        solution = integrate.solve_ivp(ode_func, (EPS, sde.T), init, rtol=rtol, atol=atol, method="RK45")
        zp = solution.y[:, -1]
        z = from_flat(zp[:-B], shape).to(device).type(torch.float32)
        delta_logp = from_flat(zp[-B:], (B,)).to(device).type(torch.float32)
        prior_logp = sde.prior_logp(z)
        D = int(np.prod(shape[1:]))
        bpd = -(prior_logp + delta_logp) / (D * math.log(2)) + _offset()
    return bpd.double().cpu(), int(solution.nfev)


def ours(model, sde, levels, seed: int, rtol: float, atol: float, time_variable: str, method: str,
         steps: int | None = None):
    """scoresde.bits_per_dim with the given tolerances (or ``steps`` of a fixed-grid method), variable and
    solver. Returns (bpd (B,), nfe)."""
    kw = dict(steps=steps) if steps is not None else dict(rtol=rtol, atol=atol)
    r = bits_per_dim(model, sde, levels.to(next(model.parameters()).device), data_range=RANGE, num_levels=LEVELS,
                     eps=EPS, method=method, time_variable=time_variable,
                     generator=torch.Generator(device="cpu").manual_seed(seed), **kw)
    return r.bpd.double().cpu(), r.nfe


def truth(model64, sde, levels, seed: int, tol: float, time_variable: str = "t", method: str = "dopri5"):
    """The same bits/dim in float64 at rtol = atol = tol: the same noise and probe. Returns (bpd, nfe)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    # float32 noise exactly as bits_per_dim draws it, then float64; the probe comes next from g, as there
    y = uniform_dequantize(levels, num_levels=LEVELS, data_range=RANGE, generator=g, dtype=torch.float32).double()
    r = log_likelihood(model64, sde, y, eps=EPS, rtol=tol, atol=tol, method=method, generator=g,
                       time_variable=time_variable)
    return -r.logp / (y[0].numel() * math.log(2.0)) + _offset(), r.nfe


def _methods(args):
    """name -> (kind, time_variable, method): "ref", "ours" (adaptive, swept over --tols) or "fixed" (--steps)."""
    out = {"reference (scipy RK45, 2 calls)": ("ref", None, None)}
    for spec in args.ours.split(","):
        tv, method = spec.split(":")
        fixed = method in FIXED_METHODS or method in MULTISTEP_METHODS
        out[f"ours ({tv}, {method})"] = ("fixed" if fixed else "ours", tv, method)
    return out


def _run_batch(model, model64, sde, B: int, args) -> tuple[list, dict]:
    levels = digits("test").levels[:B]
    (tr, tr_nfe), t_truth = _timed(lambda: truth(model64, sde, levels, SEED, args.truth_tol, "t", args.truth_method))
    check = (truth(model64, sde, levels, SEED, args.truth_tol, "lambda", args.truth_method)[0]
             if args.truth_check else None)
    info = {"batch": B, "truth_nfe": tr_nfe, "truth_cpu_s": round(t_truth, 2),
            "truth_t_vs_lambda": None if check is None else float((check - tr).abs().max())}
    print(f"batch {B}: truth (float64 {args.truth_method}, tol {args.truth_tol:g}) NFE {tr_nfe}, {t_truth:.1f} s CPU"
          + ("" if check is None else f"; |truth in t - truth in lambda| max {info['truth_t_vs_lambda']:.2e} bits/dim"),
          flush=True)
    rows, done = [], set()
    methods = _methods(args)
    # the adaptive ways swept over the tolerances, then the fixed-grid ones over the step counts
    settings = [("tol", v) for v in args.tol_list] + [("steps", v) for v in args.steps_list]
    for axis, value in settings:
        results = {}

        def call(name, kind, tv, method):
            def fn():
                if kind == "ref":
                    out = reference_bits_per_dim(model, sde, levels, SEED, value, value)
                elif kind == "fixed":
                    out = ours(model, sde, levels, SEED, 0.0, 0.0, tv, method, steps=value)
                else:
                    out = ours(model, sde, levels, SEED, value, value, tv, method)
                results.setdefault(name, out)
            return fn

        todo = {n: call(n, *spec) for n, spec in methods.items()
                if n not in done and (spec[0] == "fixed") == (axis == "steps")}
        if not todo:
            continue
        times = interleaved(todo, args.repeats, warmup=0)
        for name in todo:
            bpd, nfe = results[name]
            err = (bpd - tr).abs()
            calls = 2 * nfe if name.startswith("reference") else nfe
            row = {"batch": B, "method": name, "tol": value if axis == "tol" else None,
                   "steps": value if axis == "steps" else None, "nfe": nfe, "network_calls": calls,
                   "cpu_s": round(median(times[name]), 3), "max_err_bpd": float(err.max()),
                   "mean_err_bpd": float(err.mean()), "bpd_mean": float(bpd.mean())}
            rows.append(row)
            print(f"  {name:34s} {_setting(row):>10s}  NFE {nfe:5d}  calls {calls:5d}  CPU {row['cpu_s']:8.2f} s  "
                  f"|err| max {row['max_err_bpd']:.5f} mean {row['mean_err_bpd']:.5f}", flush=True)
            if args.until_target and row["max_err_bpd"] < args.target:
                done.add(name)  # tighter tolerances / more steps only cost more
    return rows, info


def _setting(row) -> str:
    """The tolerance (adaptive ways) or the step count (fixed-grid ways) of a row, as text."""
    return f"{row['tol']:.0e}" if row.get("tol") is not None else f"{row['steps']} steps"


def _timed(fn):
    t0 = time.process_time()
    out = fn()
    return out, time.process_time() - t0


def _equal_error(rows, target: float) -> dict:
    """For each method, the cheapest row (CPU time) with max error below target, or None."""
    best = {}
    for r in rows:
        if r["max_err_bpd"] < target and (r["method"] not in best or r["cpu_s"] < best[r["method"]]["cpu_s"]):
            best[r["method"]] = r
    return best


def _summary(B: int, rows, target: float):
    best = _equal_error(rows, target)
    ref = next((r for n, r in best.items() if n.startswith("reference")), None)
    lines, out = [], {"batch": B}
    for name, r in best.items():
        speed = None if ref is None else ref["cpu_s"] / r["cpu_s"]
        lines.append([B, name, _setting(r), r["nfe"], r["network_calls"], f"{r['cpu_s']:.2f}",
                      f"{r['max_err_bpd']:.4f}", f"{r['mean_err_bpd']:.4f}", "-" if speed is None else f"{speed:.2f}x"])
        out[name] = {"tol": r["tol"], "steps": r.get("steps"), "cpu_s": r["cpu_s"], "nfe": r["nfe"], "max_err_bpd": r["max_err_bpd"],
                     "speedup_vs_reference": speed}
    return lines, out


def main(argv=None):
    ap = parser("likelihood", __doc__.split("\n")[0])
    ap.set_defaults(repeats=1)
    ap.add_argument("--batches", default="16,64", help="comma-separated batch sizes (digits test images)")
    ap.add_argument("--tols", default="1e-3,5e-4,3e-4,2e-4,1e-4,3e-5,1e-5,1e-6",
                    help="rtol = atol values, loose to tight (a fine grid: on a decade grid 'equal error' compares "
                         "whichever way happens to pass the target just above a decade)")
    ap.add_argument("--steps", dest="steps_arg", default="20,30,40,60,80,120", metavar="N,N,...",
                    help="step counts of the fixed-grid ways of --ours (e.g. lambda:rk4, lambda:dpmpp_2m), few to many")
    ap.add_argument("--truth-tol", type=float, default=1e-9)
    ap.add_argument("--truth-method", default="dopri5",
                    help="solver of the truth (dopri8 took > 20 min at 1e-7 on the trained UNet: stiff for it)")
    ap.add_argument("--truth-check", action="store_true", help="also solve the truth in lambda and compare")
    ap.add_argument("--ours", default="t:dopri5,lambda:dopri5,lambda:rk4,lambda:dpmpp_2m,lambda:dpmpp_3m",
                    help="time_variable:method pairs of ours (a fixed-grid method is swept over --steps)")
    ap.add_argument("--time-input", default="label", choices=("t", "label"),
                    help="the model's time input ('label' = 999 t, the reference code's for VP)")
    ap.add_argument("--max-freq", type=float, default=1.0,
                    help="highest frequency of the UNet's sinusoidal time embedding (1: DDPM's band [1e-4, 1], "
                         "the reference code's for 999 t; 0: the UNet's default band [1e-4, 1e4]; see the docstring)")
    ap.add_argument("--target", type=float, default=0.005, help="max |error| in bits/dim for 'equal error'")
    ap.add_argument("--until-target", action="store_true",
                    help="stop a method's sweep at the first tolerance that meets the target")
    ap.add_argument("--train-steps", type=int, default=1000)
    ap.add_argument("--ch", type=int, default=16, help="UNet base width")
    ap.add_argument("--weights", default=None, help="load the model from / save it to this file")
    args = ap.parse_args(argv)
    if args.quick:
        args.batches, args.tols, args.truth_tol, args.train_steps, args.ch = "2", "1e-3,1e-5", 1e-8, 0, 8
        args.steps_arg = "8,32"
        args.truth_check = True
    args.tol_list = [float(v) for v in args.tols.split(",")]
    args.steps_list = [int(v) for v in args.steps_arg.split(",")] if args.steps_arg else []
    started = time.time()
    set_threads(args.threads)
    sde = VPSDE()
    model = build_model(sde, args.train_steps, torch.device("cpu"), args.ch, args.weights, time_input=args.time_input,
                        max_freq=args.max_freq or None)
    model64 = copy.deepcopy(model).double()
    print(f"model: UNet(ch={args.ch}, ch_mult=(1, 2)), {sum(p.numel() for p in model.parameters())} parameters, "
          f"{args.train_steps} training steps; {args.threads} thread(s); digits test images, 17 levels", flush=True)
    rows, infos, summary_lines, summaries = [], [], [], []
    for B in (int(b) for b in args.batches.split(",")):
        r, info = _run_batch(model, model64, sde, B, args)
        rows += r
        infos.append(info)
        lines, s = _summary(B, r, args.target)
        summary_lines += lines
        summaries.append(s)
    header = ["batch", "method", "tol / steps", "NFE", "network calls", "CPU s", "max abs. error (bits/dim)", "mean abs. error (bits/dim)"]
    md = "### Every run\n\n" + md_table(header, [[r["batch"], r["method"], _setting(r), r["nfe"],
                                                   r["network_calls"], f"{r['cpu_s']:.2f}",
                                                   f"{r['max_err_bpd']:.5f}", f"{r['mean_err_bpd']:.5f}"]
                                                  for r in rows])
    md += (f"\n### At equal error: the cheapest tolerance with max |error| < {args.target} bits/dim\n\n"
           + md_table(header + ["speed-up vs reference"], summary_lines))
    md += "\nTruth: " + "; ".join(f"batch {i['batch']}: NFE {i['truth_nfe']}, {i['truth_cpu_s']} s CPU" for i in infos)
    md += "\n"
    print("\n" + md)
    readme = [_readme_row(summaries, args.target, args.truth_tol)]
    write_results("likelihood", args.out, md, {"runs": rows, "equal_error": summaries, "truth": infos},
                  readme=readme, started=started, extra={"args": {k: v for k, v in vars(args).items()}})


def _readme_row(summaries, target, truth_tol):
    parts = []
    for s in summaries:
        best = [(v["speedup_vs_reference"], n, v) for n, v in s.items()
                if n.startswith("ours") and isinstance(v, dict) and v["speedup_vs_reference"] is not None]
        if best:
            sp, n, v = max(best, key=lambda b: b[0])
            where = f"tol {v['tol']:.0e}" if v.get("tol") is not None else f"{v['steps']} steps"
            parts.append(f"{sp:.1f}x at batch {s['batch']} ({n.removeprefix('ours ')}, {where}, "
                         f"max err {v['max_err_bpd']:.4f})")
    return {"what": f"bits/dim CPU time at equal error (< {target} bits/dim vs a float64 {truth_tol:g} solve), "
                    "digits UNet, against the reference code's way",
            "value": "; ".join(parts) or "n/a",
            "how": " ".join(["python benchmarks/bench_likelihood.py", *sys.argv[1:]])}


if __name__ == "__main__":
    main()
