"""Each ``scoresde`` subcommand (see :mod:`scoresde.cli.parser` for the parser).

Each ``cmd_<name>(args)`` takes the parsed arguments, prints its results, writes its files
atomically (compute first, then write) and returns the exit status. User errors are raised as
``ValueError`` / ``FileNotFoundError`` / :class:`scoresde.cli.CLIError` with one-line messages;
:func:`scoresde.cli.main` prints them. The work is in :mod:`~scoresde.cli.training`,
:mod:`~scoresde.cli.samples`, :mod:`~scoresde.cli.measure`, :mod:`~scoresde.cli.compare` and
:mod:`~scoresde.cli.demo`.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from ..plotting import atomic_file
from ..runs import resolve_checkpoint
# the helpers below were defined here before this module was split; they stay importable from it (and the
# commands look them up here, so that a test can replace them)
from .common import (_check_shape, _log, _threads, _weights_note, apply_sampler_flags, data_options,  # noqa: F401
                     load_data, load_run, small_problem_tolerances)
from .measure import eval_split, likelihood, vlb_bits  # noqa: F401
from .pretrained import check_source, in_model_range, load_model as load_pretrained, wants_pretrained
from .samples import as_data, draw, sampler_options, save_samples_figure
from .training import (_KEEP_UNLESS_GIVEN, _REQUIRED, _RESUME_FREE, TRAIN_ARGS, _read_train_args,  # noqa: F401
                       _sigma_max_note, make_model, make_sde, run_train)


def cmd_train(args) -> int:
    from .ranks import is_main
    r = run_train(args)
    if not is_main():  # under torchrun: rank 0 alone reports (the others have no checkpoint path)
        return 0
    if not r["trained"]:
        asked = (f"--steps {r['steps_requested']} asks for no more" if r["steps_given"] else
                 f"that is its --steps {r['steps_requested']}")
        msg = (f"nothing trained: the run in {args.out} is already at step {r['step']} and {asked} (pass --steps N "
               f"with N > {r['step']} to train further)")
        if r["loss"] is not None:
            msg += f"; loss {r['loss']:.4f}"
    elif r["loss"] is not None:
        msg = f"trained to step {r['step']} in {r['wall_s']:.1f} s; loss {r['loss']:.4f}"
    else:
        msg = f"step {r['step']}"
    if r["eval_loss"] is not None:
        msg += f", test loss (EMA) {r['eval_loss']:.4f}"
    print(f"{msg}; checkpoint {r['checkpoint']}")
    return 0


def cmd_sample(args) -> int:
    from .guided import guidance
    from .outputs import output_pair
    from .ranks import finish, start
    _threads(args)
    rank, world = start(args)  # under torchrun: the batches are dealt out to the processes (sets --device)
    opts = sampler_options(args.method, args)
    check_source(args)
    # before any work (a bad --out used to fail after the sampling); its folder created if missing, as train --out
    npz, png = output_pair(args.out, "samples")
    if wants_pretrained(args):
        model, sde, cfg, ds = load_pretrained(args)
    else:
        model, sde, cfg, ds = load_run(args.checkpoint, device=args.device, quiet=args.quiet, use_ema=not args.no_ema)
    guide = guidance(args, model, sde, cfg, args.num_samples)  # None without --class
    _log(args, _weights_note(cfg))
    shape = tuple(cfg["data"]["shape"])
    if args.method == "ode" and (note := small_problem_tolerances(args, shape, opts)):
        _log(args, note)
    n = len(guide.labels) if guide is not None else args.num_samples
    if world > 1:
        _log(args, _split_note(n, args.batch_size, world, "samples"))
    elif n > args.batch_size:  # the sampler's bar is per batch: say how many there are
        _log(args, f"scoresde: {-(-n // args.batch_size)} batches of up to {args.batch_size} samples, one bar each")
    t0 = time.perf_counter()
    x, nfes = draw(model, sde, shape, method=args.method, steps=args.steps, n=n, batch_size=args.batch_size,
                   seed=args.seed, progress=not args.quiet, eps=args.eps, denoise=not args.no_denoise,
                   device=args.device, score_for=guide.score_for if guide is not None else None, **opts)
    wall = time.perf_counter() - t0
    if rank != 0:  # every process has all the samples; rank 0 alone writes and prints
        finish()
        return 0
    x, arrays, picture = as_data(x, cfg, ds)
    ref = ds.data[:2000] if ds is not None and ds.shape == (2,) else None
    title = f"{args.method}, {args.steps if args.method != 'ode' else 'adaptive'} steps, NFE {nfes[0]}"
    nrow = None
    if guide is not None:
        arrays.update(labels=guide.labels.numpy(), scale=np.array(guide.scale), guidance=guide.kind)
        if len(guide.classes) > 1:  # one row per class (its first 16 samples)
            per = guide.per_class
            keep = min(per, 16)
            picture = picture.reshape(len(guide.classes), per, *shape)[:, :keep].reshape(-1, *shape)
            nrow = keep
    made_png = save_samples_figure(picture, shape, png, tuple(cfg["data"].get("data_range", (-1.0, 1.0))),
                                   reference=ref, title=title, nrow=nrow)
    with atomic_file(npz, "wb") as f:
        np.savez(f, **arrays, method=args.method, nfe=np.array(nfes))
    what = f" ({guide.text()})" if guide is not None else ""
    procs = f" on {world} processes" if world > 1 else ""
    print(f"{len(x)} samples{what} by {args.method} (NFE {nfes[0]} per batch) in {wall:.2f} s{procs} -> {npz}"
          + (f", {png}" if made_png else ""))
    finish()
    return 0


def _split_note(n: int, batch_size: int, world: int, what: str) -> str:
    """The status line of a command whose batches are dealt out to torchrun's processes."""
    c = -(-n // batch_size)
    note = (f"scoresde: {world} processes share {c} batch{'es' if c != 1 else ''} of up to {batch_size} {what} "
            f"(batch b to process b mod {world}; results as one process's)")
    if c < world:
        note += f"; {world - c} process{'es' if world - c != 1 else ''} idle: pass --batch-size {-(-n // world)} to use all"
    return note


def cmd_inpaint(args) -> int:
    from .inpainting import run_inpaint
    _threads(args)
    return run_inpaint(args)


def cmd_train_classifier(args) -> int:
    from .guided import run_train_classifier
    from .ranks import is_main
    r = run_train_classifier(args)
    if not is_main():
        return 0
    msg = f"classifier trained to step {r['step']} in {r['wall_s']:.1f} s"
    if r["loss"] is not None:
        msg += f"; cross-entropy {r['loss']:.4f} nats"
    if r["accuracy"]:
        msg += f"; accuracy on the {r['eval_name']} split at t = " + ", ".join(
            f"{t:g}: {a:.3f}" for t, a in r["accuracy"].items())
    print(f"{msg}; checkpoint {r['checkpoint']}")
    return 0


def cmd_likelihood(args) -> int:
    from ..data_stats import check_prior
    from .outputs import check_output_file
    from .ranks import finish, start
    _threads(args)
    rank, world = start(args)  # under torchrun: the batches are dealt out to the processes (sets --device)
    if args.num_points < 0:
        raise ValueError(f"--num-points must be >= 0; got {args.num_points}")
    _check_ode_steps(args.ode_method, args.steps, args.step_control)
    check_source(args)
    out = check_output_file(args.out, "--out", args.out)  # before any work (it used to fail after the solves)
    if wants_pretrained(args):
        if args.data is None:
            raise ValueError("--reference-ckpt needs --data: a CIFAR-shaped .npz or image folder of 256-level images")
        model, sde, cfg, ds = load_pretrained(args)
    else:
        model, sde, cfg, ds = load_run(args.checkpoint, device=args.device, quiet=args.quiet, use_ema=not args.no_ema)
    evd, desc = eval_split(args.data, args.split, cfg, ds, args.seed, **data_options(args))
    if wants_pretrained(args):  # 256-level images in the pretrained model's range ([0, 1] for VE)
        evd = in_model_range(evd, cfg)
    _check_shape(evd, cfg, f"--data {args.data}" if args.data else "the data")
    _log(args, _weights_note(cfg))
    if args.steps is None and (note := small_problem_tolerances(args, tuple(cfg["data"]["shape"]))):
        _log(args, note)
    prior_note = check_prior(sde, evd, distance=False)  # VE: prior far from p_T (one warning line on stderr)
    if world > 1:
        npts = len(evd) if args.num_points <= 0 else min(args.num_points, len(evd))
        _log(args, _split_note(npts, args.batch_size, world, "points"))
    res = likelihood(model, sde, evd, n=args.num_points, divergence=args.divergence, ode_method=args.ode_method,
                     rtol=args.rtol, atol=args.atol, eps=args.eps, batch_size=args.batch_size, seed=args.seed,
                     vlb=args.vlb, progress=not args.quiet, steps=args.steps, time_variable=args.time_variable,
                     step_control=args.step_control, rows_per_call=args.rows_per_call)
    if rank != 0:  # rank 0 alone writes and prints
        finish()
        return 0
    res.update({"checkpoint": cfg.get("source") or resolve_checkpoint(args.checkpoint), "data": desc,
                "sde": sde.config(),
                "prior_warning": prior_note})
    with atomic_file(out) as f:
        json.dump(res, f, indent=2)
        f.write("\n")
    se = f" ± {res['bpd_se']:.3f}" if res["bpd_se"] is not None else ""
    solve = f"{args.steps} steps" if args.steps is not None else f"rtol {args.rtol:g}"
    print(f"bits/dim (PF-ODE {args.ode_method}, {solve}, {args.divergence}) on {desc}, "
          f"{res['n_points']} points: {res['bpd']:.3f}{se} (standard error over the data); "
          f"NFE {res['nfe_mean']:.0f} per solve; {res['wall_s']:.1f} s" + (f" on {world} processes" if world > 1 else ""))
    if res["levels_warning"]:
        print(f"warning: {res['levels_warning']}")
    if args.vlb:
        if res.get("vlb") is not None:
            se = f" ± {res['vlb_se']:.3f}" if res["vlb_se"] is not None else ""
            print(f"bits/dim (DDPM variational bound, {res['vlb_steps']} steps, {res['vlb_variance']}): "
                  f"{res['vlb']:.3f}{se}")
        else:
            print(f"DDPM variational bound: not computed ({res['vlb_note']})")
    print(f"-> {out}")
    finish()
    return 0


def _check_ode_steps(method: str, steps, step_control: str) -> None:
    """likelihood: --steps goes with a fixed-grid --ode-method (and only with one), checked before any work."""
    from .._checks import check_choice
    from ..likelihood import LIKELIHOOD_METHODS
    from ..likelihood_multistep import MULTISTEP_METHODS
    from ..solvers.ode import FIXED_METHODS
    check_choice("--ode-method", method, LIKELIHOOD_METHODS)  # a typo is named as one, not as an adaptive method
    fixed = FIXED_METHODS + MULTISTEP_METHODS  # the likelihood's fixed-grid methods
    if method in fixed and steps is None:
        raise ValueError(f"--ode-method {method} is a fixed-grid method: it needs --steps N")
    if steps is not None and method not in fixed:
        raise ValueError(f"--steps applies to the fixed-grid --ode-method values {list(fixed)}; "
                         f"{method} chooses its steps from --rtol / --atol")
    if steps is not None and step_control == "per_sample":
        raise ValueError("--steps applies to fixed-grid methods; --step-control per_sample is adaptive (dopri5)")


def cmd_compare(args) -> int:
    from .compare import check_method_names, parse_methods, run_compare, write_compare
    from .outputs import check_output_folder
    _threads(args)
    check_method_names(args.methods)
    if args.bpd_points < 0:
        raise ValueError(f"--bpd-points must be >= 0; got {args.bpd_points}")
    check_output_folder(args.out)  # before any work; created only after it
    model, sde, cfg, ds = load_run(args.checkpoint, device=args.device, quiet=args.quiet, use_ema=not args.no_ema)
    if ds is None:
        raise ValueError("the checkpoint's data cannot be rebuilt (in-memory array); compare needs them")
    opts = {"predictor": args.predictor, "corrector": args.corrector, "snr": args.snr,
            "corrector_steps": args.corrector_steps, "sde_method": args.sde_method, "ode_method": args.ode_method,
            "eta": args.eta, "variance": args.variance}
    runs, notes = parse_methods(args.methods, args.steps, args.ode_rtols, opts, sde)
    notes += apply_sampler_flags(runs, args)  # --spacing / --order / --rho reach the methods that take them
    _log(args, _weights_note(cfg))
    out = Path(args.out)
    result = run_compare(model, sde, ds, runs, n=args.num_samples, seed=args.seed, bpd_points=args.bpd_points,
                         progress=not args.quiet, device=args.device, log=lambda m: _log(args, m),
                         status=lambda m: _log(args, m))
    result["notes"] = notes
    result["checkpoint"] = resolve_checkpoint(args.checkpoint)
    out.mkdir(parents=True, exist_ok=True)  # after the work: a failed run leaves no folder
    paths = write_compare(result, out)
    from .compare import markdown_table
    print(markdown_table(result))
    print(f"-> {paths['md']}, {paths['json']}, {paths['figure']}")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo
    _threads(args)
    return run_demo(args)
