"""``scoresde demo``: train -> compare -> likelihood on scikit-learn's 8x8 digits, one folder, one report.

Steps (each reuses the subcommand's code, with the subcommand's parser defaults):

1. ``train``: a class-conditional score network (a small UNet; an MLP on the flattened pixels
   with ``--quick``) on the 8x8 digits (train split, 1 500 images, 17 gray levels) with label
   dropout 0.1 (the null class learns the unconditional score), continuous-time denoising score
   matching on uniformly dequantized data, VP SDE by default (``--sde`` to switch), into
   ``<out>/model``. A finished run is reused, an interrupted one resumed.
2. ``compare``: Euler-Maruyama, PC (reverse diffusion + Langevin), the torchsde reverse SDE,
   DDPM ancestral and DDIM at 10, 20, 50 and 100 steps, the probability-flow ODE (dopri5) at
   three tolerances and the fast solvers at 10 / 20 NFE, all unconditional (the null class) from
   the same prior draw; Frechet distance to the test split in digit-classifier features beside
   the train-vs-test floor.
3. ``likelihood``: bits/dim of the test split (297 images) by the probability-flow ODE and by
   the DDPM variational bound (VP / sub-VP).
4. class-conditional samples by classifier-free guidance (digit-classifier accuracy against the
   scale w, one grid row per digit) and inpainting of held-out digits (a grid, replacement
   against RePaint): :mod:`scoresde.cli.demo_guided`.
5. ``report.md`` with the sample grids, the tables and the figure.

``--quick`` shrinks everything (tiny network, a few hundred updates, two step budgets, few
samples) to check the pipeline in well under two minutes; its pictures are not digits yet.
"""
from __future__ import annotations

import json
import math
import platform
import shlex
import time
from pathlib import Path

import torch

from ..plotting import atomic_file, save_image_grid
from .compare import markdown_table
from .demo_presets import FULL, LABEL_DROPOUT, QUICK


def _args(argv):
    from .parser import build_parser
    return build_parser().parse_args(argv)


def default_out(quick: bool) -> str:
    """The demo's output folder when --out is not given: "scoresde-demo", or "scoresde-demo-quick" with --quick.

    Separate folders: the full run would find a --quick run's model in its folder and refuse to
    resume it with other settings (network, batch size).
    """
    return "scoresde-demo-quick" if quick else "scoresde-demo"


def run_demo(args) -> int:
    from .common import load_run
    from .measure import likelihood, vlb_bits
    from .training import run_train
    from .compare import parse_methods, run_compare, write_compare
    from .. import data as D
    from .demo_guided import class_conditional, inpainting
    t_start = time.perf_counter()
    p = dict(QUICK if args.quick else FULL)
    if args.train_steps is not None:
        p["steps"] = args.train_steps
    if args.out is None:
        args.out = default_out(args.quick)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model_dir = out / "model"
    quiet = args.quiet
    say = (lambda m: None) if quiet else (lambda m: print(m, flush=True))
    common = ["--seed", str(args.seed), "--device", args.device, "--threads", str(args.threads)] + \
        (["--quiet"] if quiet else [])

    # 1. train ------------------------------------------------------------------------------
    say(f"[1/5] training a class-conditional score model on the 8x8 digits ({p['steps']} steps, {args.sde} SDE, "
        f"label dropout {LABEL_DROPOUT:g}) -> {model_dir}")
    targs = _args(["train", "--data", "digits", "--out", str(model_dir), "--sde", args.sde, "--model", p["model"],
                   "--channels", str(p["channels"]), "--hidden", str(p["hidden"]), "--layers", str(p["layers"]),
                   "--steps", str(p["steps"]),
                   "--batch-size", str(p["batch_size"]), "--lr", str(p["lr"]),
                   "--checkpoint-every", str(max(p["steps"] // 4, 1)), "--class-conditional",
                   "--label-dropout", str(LABEL_DROPOUT)] + common)
    tr = run_train(targs)
    tr["time_text"] = (f"{tr['wall_s']:.0f} s" if tr["resumed_from"] < tr["step"]
                       else "reused the finished checkpoint already in the folder")
    model, sde, cfg, ds = load_run(str(model_dir), device=args.device, quiet=True)
    test = D.digits("test")
    save_image_grid(test.data[:100], out / "real_test_digits.png", nrow=10)

    # 2. compare ----------------------------------------------------------------------------
    say(f"[2/5] comparing samplers ({p['n_samples']} samples each)")
    cargs = _args(["compare", str(model_dir)] + common)
    opts = {k: getattr(cargs, k) for k in ("predictor", "corrector", "snr", "corrector_steps", "sde_method",
                                            "ode_method", "eta", "variance")}
    fast = [f"{m}:{','.join(str(b) for b in p['fast_nfe'])}" for m in ("dpmpp_2m", "unipc", "heun")]
    runs, notes = parse_methods(["euler_maruyama", "pc", "sde", "ode", "ddpm", "ddim", *fast], p["compare_steps"],
                                p["ode_tols"], opts, sde)
    grids, spread = {}, []

    def keep(run, x):
        # the picture of each method at its largest budget (the last run of that method wins)
        grids[run.name] = (run, x[:100])
        if run.name in STOCHASTIC:
            spread.append((run.label, run.steps, x))

    result = run_compare(model, sde, ds, runs, n=p["n_samples"], seed=args.seed, bpd_points=p["bpd_points"],
                         progress=not quiet, device=args.device, samples_hook=keep,
                         log=(lambda m: None) if quiet else (lambda m: print("  " + m, flush=True)))
    result["notes"] = notes
    result["checkpoint"] = str(model_dir / "checkpoint.pt")
    result["fd_spread"] = fd_spread(spread, test.data, seed=args.seed) if spread else None
    paths = write_compare(result, out, title="Sampler comparison on the 8x8 digits")
    pictures = []
    for name, (run, x) in grids.items():
        f = out / f"samples_{name}.png"
        save_image_grid(x, f, nrow=10)
        nfe = next((r["nfe"] for r in reversed(result["rows"]) if r["method"] == name and r["nfe"]), "?")
        label = run.label if run.steps is None else f"{run.label}, {run.steps} steps"
        pictures.append((f.name, f"{label}, NFE {nfe}"))

    # 3. likelihood -------------------------------------------------------------------------
    say(f"[3/5] bits/dim of the test split ({p['lik_points'] or len(test)} images)")
    lik = likelihood(model, sde, test, n=p["lik_points"], rtol=p["lik_tol"], atol=p["lik_tol"], seed=args.seed,
                     progress=not quiet)
    from ..sde import VPSDE, SubVPSDE
    if isinstance(sde, (VPSDE, SubVPSDE)):
        levels = test.levels[: p["lik_points"]] if p["lik_points"] else test.levels
        lik.update(vlb_bits(model, sde, levels, test.num_levels, seed=args.seed))
    else:
        lik["vlb"] = None
        lik["vlb_note"] = f"the DDPM variational bound needs a VP or sub-VP SDE, not {type(sde).__name__}"
    with atomic_file(out / "likelihood.json") as f:
        json.dump(lik, f, indent=2)
        f.write("\n")

    # 4. class-conditional samples and inpainting ------------------------------------------
    say(f"[4/5] class-conditional samples (w = {', '.join(f'{w:g}' for w in p['cfg_scales'])}) and inpainting")
    pc_opts = {k: opts[k] for k in ("predictor", "corrector", "snr", "corrector_steps")}
    log = (lambda m: None) if quiet else (lambda m: print("  " + m, flush=True))
    guided = {"cc": class_conditional(model, sde, ds, out, p, seed=args.seed, device=args.device, pc_opts=pc_opts,
                                      log=log),
              "ip": inpainting(model, sde, ds, out, p, seed=args.seed, device=args.device, pc_opts=pc_opts, log=log)}
    with atomic_file(out / "guided.json") as f:
        json.dump(guided, f, indent=2)
        f.write("\n")

    # 5. report -----------------------------------------------------------------------------
    total = time.perf_counter() - t_start
    say("[5/5] writing the report")
    report = _report(args, p, tr, cfg, result, lik, pictures, total, guided, model_dir=model_dir)
    with atomic_file(out / "report.md") as f:
        f.write(report)
    summary = _summary(args, p, tr, result, lik, total, out, guided)
    print(summary)
    return 0


#: the samplers whose rows at different step counts use different noise (so their FD differ by sampling alone)
STOCHASTIC = ("euler_maruyama", "pc", "sde", "ddpm", "reverse_diffusion", "ancestral", "dpmpp_2m_sde")
FD_BOOTSTRAP = 100


def bootstrap_fd_se(features, ref_features, *, n_boot: int = FD_BOOTSTRAP, seed: int = 0) -> float:
    """Standard error of a Frechet distance due to the finite sample set, by the bootstrap.

    Arguments:
        features: (n, d) features of the n generated samples (tensor or array).
        ref_features: (m, d) features of the reference set, held fixed (its moments are computed once).
        n_boot: bootstrap resamples; seed: seed of the resampling.
    Returns:
        float, the standard deviation of FD(resample, reference) over ``n_boot`` resamples of n
        rows drawn with replacement: the spread of the FD of another n samples of the same
        sampler against the same reference set.
    Raises:
        ValueError: fewer than 2 rows or NaN features (from ``scoresde.metrics``).
    Reference:
        Efron & Tibshirani 1993, "An Introduction to the Bootstrap", Ch. 6 (the bootstrap
        standard error); the FD is Heusel et al. 2017, Eq. (6).
    """
    import numpy as np
    from ..metrics import frechet_from_moments, gaussian_moments
    f = np.asarray(features.detach().cpu() if hasattr(features, "detach") else features, dtype=np.float64)
    mr, cr = gaussian_moments(ref_features)
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(n_boot):
        mb, cb = gaussian_moments(f[rng.integers(0, len(f), len(f))])
        vals.append(frechet_from_moments(mb, cb, mr, cr))
    return float(np.std(vals, ddof=1))


def fd_spread(runs, reference, *, seed: int = 0, classifier=None) -> dict:
    """FD and its bootstrap standard error for each stochastic sampler's row of the comparison.

    Arguments:
        runs: [(label, steps, samples (n, 1, 8, 8) in [-1, 1])] of the stochastic rows.
        reference: (m, 1, 8, 8) test images.
        seed: seed of the bootstrap.
        classifier: the feature extractor; default ``scoresde.metrics.digit_classifier()``, the
            comparison's own.
    Returns:
        {"n": n, "n_boot": B, "rows": [{"label", "steps", "fd", "se"}], "se_median": median se}.
    Raises:
        ValueError: as :func:`bootstrap_fd_se`.
    Reference:
        :func:`bootstrap_fd_se`.
    """
    from ..metrics import digit_classifier, frechet_distance
    clf = classifier if classifier is not None else digit_classifier()
    with torch.no_grad():
        fr = clf.features(reference.reshape(len(reference), -1).float())
        rows = []
        for label, steps, x in runs:
            fx = clf.features(x.reshape(len(x), -1).float())
            rows.append({"label": label, "steps": steps, "fd": frechet_distance(fx, fr),
                         "se": bootstrap_fd_se(fx, fr, seed=seed + len(rows))})
    ses = sorted(r["se"] for r in rows)
    return {"n": len(runs[0][2]), "n_boot": FD_BOOTSTRAP, "rows": rows, "se_median": ses[len(ses) // 2]}


def fd_spread_text(result) -> str:
    """The report's paragraph on why a stochastic sampler's FD need not fall with more steps.

    Arguments:
        result: the comparison's result dict, with "fd_spread" from :func:`fd_spread` (or None).
    Returns:
        Markdown: the standard error, what differences it makes meaningless, and a table of
        FD ± s.e. per stochastic sampler and step count ("" without "fd_spread").
    Raises:
        nothing.
    Reference:
        :func:`bootstrap_fd_se`.
    """
    sp = result.get("fd_spread")
    if not sp:
        return ""
    se = sp["se_median"]
    by = {}
    for r in sp["rows"]:
        by.setdefault(r["label"], []).append(r)
    lines = "\n".join(f"| {lab} | " + ", ".join(f"{r['steps']}: {r['fd']:.2f} ± {r['se']:.2f}" for r in rs) + " |"
                       for lab, rs in by.items())
    return f"""**Why a stochastic sampler's FD need not fall with more steps.** With {sp['n']} samples an FD has a
standard error of about {se:.2f} here (median over the rows below; the standard deviation of the FD over
{sp['n_boot']} bootstrap resamples of the {sp['n']} samples' features, the test set held fixed; on real train
digits, sets of 400, it was 2.2 against 2.0 from repeated draws). Every row starts
from the same prior draw, but a stochastic sampler at another step count draws other noise, so its {sp['n']}
samples are a new random set: two of its rows differ by up to about sqrt(2) x {se:.2f} = {math.sqrt(2) * se:.2f}
from sampling alone, and a rise smaller than about {2 * math.sqrt(2) * se:.2f} (two of those) says nothing about
the steps. Past some step count the discretization error is below the learned score's own error, so the
remaining differences are noise; the deterministic solvers (ODE, DDIM and the fast solvers) map the same prior
draw to nearby samples at every budget, so their rows are much less noisy relative to each other.

| sampler | steps: FD ± bootstrap s.e. |
|---|---|
{lines}
"""


def model_commands_path(model_dir) -> tuple[str, str]:
    """How the report names the model in the commands it suggests, and where they work from.

    Arguments:
        model_dir: the demo's model folder as the demo was given it (``<--out>/model``, relative
            to the folder the demo ran in unless --out was absolute).
    Returns:
        (the path quoted for a POSIX shell, "from the folder you ran the demo in" or "from any folder").
    Raises:
        nothing.
    Reference:
        ``shlex.quote`` (POSIX shell quoting).
    """
    here = "from any folder" if Path(model_dir).is_absolute() else "from the folder you ran the demo in"
    return shlex.quote(str(model_dir)), here


def _best(result):
    rows = [r for r in result["rows"] if r["quality"] is not None]
    return min(rows, key=lambda r: r["quality"]) if rows else None


def _net_text(cfg) -> str:
    net = cfg["model"]["net"]
    if net.get("model") == "UNet":
        return (f"UNet (DDPM++-style, base channels {net['ch']}, multipliers {tuple(net['ch_mult'])}, "
                f"{net['num_res_blocks']} residual block(s) per level, no attention)")
    if net.get("model") == "FlatMLP":
        return f"MLP on the flattened pixels ({net['num_layers']} hidden layers of {net['hidden']})"
    return str(net.get("model"))


def _best_text(best, result) -> str:
    if best is None:
        return "Every sampler failed (see the table)."
    return (f"Best: {best['label']} ({best['steps'] or 'adaptive'} steps, NFE {best['nfe']}), Frechet distance "
            f"{best['quality']:.2f} against the floor {result['quality_floor']:.2f}.")


def _lik_line(lik):
    se = f" ± {lik['bpd_se']:.3f}" if lik.get("bpd_se") is not None else ""
    s = f"PF-ODE {lik['bpd']:.3f}{se}"
    if lik.get("vlb") is not None:
        se = f" ± {lik['vlb_se']:.3f}" if lik.get("vlb_se") is not None else ""
        s += f", DDPM variational bound {lik['vlb']:.3f}{se}"
    return s


def _summary(args, p, tr, result, lik, total, out, guided) -> str:
    best = _best(result)
    cc, ip = guided["cc"], guided["ip"]
    at = {r["scale"]: r["accuracy"] for r in cc["rows"]}
    others = ", ".join(f"{w:g}: {a:.3f}" for w, a in at.items() if w != cc["scale"])
    rep, rp = ip["rows"]
    lines = [
        f"scoresde demo{' --quick' if args.quick else ''}: {tr['sde']} on the 8x8 digits, {tr['net']} with "
        f"{tr['n_params']:,} parameters, {tr['step']} training steps ({tr['time_text']})",
        f"bits/dim on the test split ({lik['n_points']} images, 17 levels): {_lik_line(lik)}",
        f"Frechet distance to the test split (digit-classifier features, {result['n_samples']} samples): "
        + (f"best {best['quality']:.2f} by {best['label']} at NFE {best['nfe']}; " if best else "every sampler failed; ")
        + f"real-data floor {result['quality_floor']:.2f}",
        f"class-conditional samples (classifier-free guidance, {cc['label']} at NFE {cc['rows'][0]['nfe']}, "
        f"{cc['n']} samples): digit-classifier accuracy {at[cc['scale']]:.3f} at w = {cc['scale']:g} (w = {others})",
        f"inpainting ({ip['mask']} mask, {ip['n']} test digits): completions classified as the truth's digit "
        f"{rep['accuracy']:.3f} by replacement (NFE {rep['nfe']}), {rp['accuracy']:.3f} by RePaint (NFE {rp['nfe']})",
        f"report: {out / 'report.md'} ({total / 60:.1f} min in all)",
    ]
    return "\n".join(lines)


def _report(args, p, tr, cfg, result, lik, pictures, total, guided, model_dir="scoresde-demo/model") -> str:
    from .demo_guided import class_section, inpaint_section
    best = _best(result)
    run, here = model_commands_path(model_dir)
    sde_cfg = cfg["sde"]
    vlb = ""
    if lik.get("vlb") is not None:
        se = f" ± {lik['vlb_se']:.3f}" if lik.get("vlb_se") is not None else ""
        vlb = (f"| DDPM variational bound ({lik['vlb_steps']} steps, {lik['vlb_variance']}) | "
               f"{lik['vlb']:.3f}{se} | {lik['vlb_steps']} | {lik['vlb_wall_s']:.1f} |\n")
    else:
        vlb = f"| DDPM variational bound | n/a: {lik.get('vlb_note', '')} | | |\n"
    se = f" ± {lik['bpd_se']:.3f}" if lik.get("bpd_se") is not None else ""
    pics = "\n".join(f"| ![{cap}]({name}) | {cap} |" for name, cap in pictures)
    quick = ("\n> This is a `--quick` run: a tiny network trained for a few hundred steps, to check the "
             "pipeline. Its samples are not digits yet; run `scoresde demo` for the real thing.\n" if args.quick else "")
    return f"""# scoresde demo: score-based diffusion on scikit-learn's 8x8 digits
{quick}
Command: `scoresde demo{' --quick' if args.quick else ''}{'' if args.sde == 'vp' else ' --sde ' + args.sde}`
(seed {args.seed}); {total / 60:.1f} minutes in all on {torch.get_num_threads()} CPU thread(s),
torch {torch.__version__}, Python {platform.python_version()}.

## Model
- Data: the train split of `sklearn.datasets.load_digits` ({tr['n_data']} images of 8x8 pixels, 17 gray levels,
  mapped to the bin centres in [-1, 1]); nothing is downloaded.
- SDE: `{sde_cfg}`.
- Network: {_net_text(cfg)}, {tr['n_params']:,} parameters, predicting eps, time input 999 t; class-conditional
  (the 10 digits and a null class, label dropout {LABEL_DROPOUT:g}: the unconditional rows below call it without
  labels, i.e. with the null class).
- Objective: continuous-time denoising score matching (sigma^2 weighting, Song et al. 2021 Eq. (7)) on
  uniformly dequantized data; {tr['step']} Adam steps of batch {p['batch_size']}, EMA 0.999
  ({tr['time_text']}; final training loss {tr['loss'] if tr['loss'] is None else format(tr['loss'], '.4f')}).
- Checkpoint: `model/checkpoint.pt` (config inside). {here.capitalize()}:
  `scoresde sample {run} --method ode --out {shlex.quote(str(Path(model_dir).parent / 'ode'))}` samples it
  (writes `ode.png` and `ode.npz` beside this report), `scoresde likelihood {run} --split test` measures it.

## Samples
Unconditional samples (the null class), rounded to the 17 gray levels; every sampler starts from the same prior draw (so the same
cell shows "the same" sample under each solver). Real test digits for comparison:

![real test digits](real_test_digits.png)

| samples | sampler |
|---|---|
{pics}

## Sampler comparison
{result['n_samples']} samples per row. Quality: Frechet distance (lower is better) between the samples and the
{result['n_reference']} test images in the 64 hidden features of a small digit classifier trained
(seeded, in seconds) on the train split (`scoresde.metrics.digit_classifier`). Floor: the same distance between
{result['quality_floor_text']}: **{result['quality_floor']:.2f}**. Bits/dim columns: PF-ODE rows on
{result['bpd_points']} test images at that row's tolerance; DDPM rows by the variational bound of that (respaced)
chain: an upper bound that is loose for short chains (it can exceed log2(levels), the bits/dim of a uniform model).

{markdown_table(result)}

![Frechet distance against NFE](quality_vs_nfe.png)

{_best_text(best, result)} Full numbers: `compare.json`.

{fd_spread_text(result)}
## Likelihood of the test split
{lik['n_points']} test images, 17 levels, uniform dequantization; bits/dim of the discrete data (an upper
bound in expectation), mean ± standard error over the images. Uniform over the 17 levels would be
log2(17) = 4.087 bits/dim.

| estimator | bits/dim | NFE | seconds |
|---|---:|---:|---:|
| probability-flow ODE (dopri5, rtol = atol = {lik['rtol']:g}, {lik['divergence']}) | {lik['bpd']:.3f}{se} | {lik['nfe_mean']:.0f} | {lik['wall_s']:.1f} |
{vlb}
PF-ODE per image: median {lik['bpd_median']:.3f}, largest {lik['bpd_max']:.3f} bits/dim (a mean far above the median
means a few images whose flow leaves the region the network was trained on).

{class_section(guided['cc'], run=run, here=here)}
{inpaint_section(guided['ip'], run=run, here=here)}
Files: `compare.md`, `compare.json`, `likelihood.json`, `guided.json`, `quality_vs_nfe.png`, `samples_*.png`,
`class_conditional.png`, `inpainting.png`, `model/`.
"""
