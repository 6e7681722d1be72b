"""The solver comparison of ``scoresde compare`` and ``scoresde demo``.

One row per (method, step budget): the exact NFE (score evaluations per sample, from
``scoresde.sample(..., return_info=True)``), the wall time, a sample-quality number and,
where a sampler defines a density, bits/dim:

* quality: for the 8x8 digits, the Frechet distance between the samples and the test split in
  the features of :func:`scoresde.metrics.digit_classifier` (with the floor: the same distance
  between an equally large subset of the train split and the test split); for 2-D toys the sliced
  Wasserstein distance to fresh points of the toy (floor: two fresh draws); for other data the
  sliced Wasserstein distance to the data (floor: one half of the data against the other).
* bits/dim: "ode" rows by the probability-flow ODE at that row's tolerance
  (:func:`scoresde.bits_per_dim`, dequantized test points); "ddpm" rows by the DDPM variational
  bound of the chain with that many steps (:func:`scoresde.ddpm_vlb`); other samplers have no
  tractable density, so the column is empty.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..plotting import atomic_file

#: how each ``--methods`` name is shown in the table (every name of the solver registry is accepted)
LABELS = {
    "euler_maruyama": "Euler-Maruyama (reverse SDE)",
    "reverse_diffusion": "reverse diffusion",
    "ancestral": "ancestral",
    "pc": "PC",
    "sde": "torchsde reverse SDE",
    "ode": "PF-ODE",
    "ddpm": "DDPM ancestral",
    "ddim": "DDIM",
    "dpm_solver": "DPM-Solver-3 (singlestep)",
    "dpm_adaptive": "DPM-Solver-23 (adaptive)",
    "dpmpp_2m": "DPM-Solver++(2M)",
    "dpmpp_3m": "DPM-Solver++(3M)",
    "dpmpp_2m_sde": "SDE-DPM-Solver++(2M)",
    "unipc": "UniPC-2 (bh2)",
    "heun": "EDM Heun",
}
VP_ONLY = ("ddpm", "ddim")


def _methods() -> tuple:
    """The names ``--methods`` accepts: the solver registry's."""
    from ..solvers.registry import METHODS
    return METHODS


def _label(name: str) -> str:
    """The table label of a method (its name when it has no label here)."""
    return LABELS.get(name, name)
#: methods whose budgets are NFE (denoise step included): steps are chosen to spend exactly that many
NFE_BUDGETED = ("dpm_solver", "dpmpp_2m", "dpmpp_3m", "dpmpp_2m_sde", "unipc", "heun")
#: methods whose budgets are tolerances
TOLERANCE_BUDGETED = ("ode", "dpm_adaptive")


def steps_for_nfe(method: str, budget: int, model) -> int:
    """The most steps of ``method`` whose NFE, with ``denoise``'s Tweedie step on continuous nodes, is <= budget."""
    from ..solvers.discrete import resolve_alphas
    from ..solvers.registry import SOLVERS
    solver = SOLVERS[method]()
    extra = 0 if resolve_alphas(None, model) == "table" else 1
    for steps in range(int(budget), 0, -1):
        if solver.nfe(steps) + extra <= budget:
            return steps
    return 1


@dataclass
class Run:
    """One row to compute: a ``scoresde.sample`` method with its options and budget."""

    name: str
    label: str
    kwargs: dict
    steps: int | None = None
    tol: float | None = None
    result: dict = field(default_factory=dict)
    nfe_budget: int | None = None


def check_method_names(methods) -> None:
    """Raise ValueError for a ``--methods`` entry whose name is unknown (before any work)."""
    for entry in methods:
        name = entry.partition(":")[0]
        if name not in _methods():
            raise ValueError(f"unknown method {name!r}; valid values are {list(_methods())}")


def parse_methods(methods, steps, ode_rtols, opts: dict, sde) -> tuple[list[Run], list[str]]:
    """Turn ``--methods`` entries ('pc' or 'pc:10,20') into runs; returns (runs, notes).

    ``opts`` holds the sampler options of the command line (predictor, corrector, snr, ...).
    Methods that do not apply to ``sde`` (DDPM / DDIM need a VP SDE, ancestral not sub-VP) are
    skipped with a note. Raises ValueError for an unknown method or a bad step list.
    """
    from ..sde import VPSDE, SubVPSDE
    runs, notes = [], []
    for entry in methods:
        name, _, budget = entry.partition(":")
        if name not in _methods():
            raise ValueError(f"unknown method {name!r}; valid values are {list(_methods())}")
        if budget:
            try:
                budgets = [float(b) if name in TOLERANCE_BUDGETED else int(b) for b in budget.split(",")]
            except ValueError:
                raise ValueError(f"bad budget list in {entry!r}: expected e.g. '{name}:10,20'") from None
            if any(not b > 0 for b in budgets):
                raise ValueError(f"budgets in {entry!r} must be positive")
        else:
            budgets = list(ode_rtols) if name in TOLERANCE_BUDGETED else list(steps)
        if name in VP_ONLY and not isinstance(sde, VPSDE):
            notes.append(f"{name} skipped: the discrete DDPM chain needs a VP SDE (this model's is "
                         f"{type(sde).__name__})")
            continue
        if name == "ancestral" and isinstance(sde, SubVPSDE):
            notes.append("ancestral skipped: no ancestral step for the sub-VP SDE")
            continue
        for b in budgets:
            if name == "ode":
                kw = {"method": "ode", "ode_method": opts["ode_method"], "rtol": b, "atol": b}
                runs.append(Run(name, f"{_label(name)} {opts['ode_method']} (tol {b:g})", kw, None, b))
                continue
            if name == "dpm_adaptive":
                runs.append(Run(name, f"{_label(name)} (tol {b:g})", {"method": name, "rtol": b, "atol": b}, None, b))
                continue
            if name in NFE_BUDGETED:
                # one label per method (the figure draws one curve per label); the NFE column gives the budget
                runs.append(Run(name, _label(name), {"method": name}, None, None, nfe_budget=b))
                continue
            kw = {"method": name, "steps": b}
            label = _label(name)
            if name == "pc":
                kw.update(predictor=opts["predictor"], corrector=opts["corrector"], snr=opts["snr"],
                          corrector_steps=opts["corrector_steps"])
                label = f"PC ({opts['predictor'].replace('_', ' ')} + {opts['corrector']})"
            elif name == "sde":
                kw.update(sde_method=opts["sde_method"])
                label = f"{_label(name)} ({opts['sde_method']})"
            elif name == "ddim":
                kw.update(eta=opts["eta"])
                label = f"DDIM (eta={opts['eta']:g})"
            elif name == "ddpm" and opts.get("variance"):
                kw.update(variance=opts["variance"])
            runs.append(Run(name, label, kw, b, None))
    if not runs:
        raise ValueError("no method applies to this model: " + "; ".join(notes))
    return runs, notes


class Quality:
    """The sample-quality metric of a data set, with its real-data floor.

    Arguments:
        train: the training :class:`scoresde.data.Dataset`; ``heldout``: data to compare with
            (test split, fresh toy points) or None (then the training data itself).
        n: the number of samples that will be scored (the floor uses sets of that size).
        seed: seed of the subsets and projections.
    Attributes:
        name: "Frechet distance (digit-classifier features)" or "sliced Wasserstein (SW-2)".
        floor: the metric between two real sets of size ~n.
    """

    def __init__(self, train, heldout, n: int, seed: int = 0):
        from .. import metrics
        self.seed = seed
        self.is_digits = tuple(train.shape) == (1, 8, 8) and (train.config().get("loader") == "digits")
        ref = heldout if heldout is not None else train
        g = torch.Generator().manual_seed(seed + 7)
        if self.is_digits:
            self.name = "Frechet distance (digit-classifier features)"
            self.short = "FD"
            self.ref = ref.data
            sub = train.data[torch.randperm(len(train), generator=g)[: min(n, len(train))]]
            self.floor = metrics.digit_frechet_distance(sub, self.ref)
            self.floor_text = (f"train split ({len(sub)} images) vs test split ({len(self.ref)} images)")
        else:
            self.name = "sliced Wasserstein distance (SW-2, 512 projections)"
            self.short = "SW2"
            data = ref.data.reshape(len(ref), -1)
            if heldout is None:
                perm = torch.randperm(len(data), generator=g)
                half = len(data) // 2
                a, b = data[perm[:half]], data[perm[half:]]
                self.ref = data
                self.floor = metrics.sliced_wasserstein(a[:n], b[:n], 512, torch.Generator().manual_seed(seed))
                self.floor_text = f"two halves of the data ({min(n, half)} points each)"
            else:
                self.ref = data
                other = train.data.reshape(len(train), -1)[: min(n, len(train))]
                self.floor = metrics.sliced_wasserstein(other, self.ref, 512, torch.Generator().manual_seed(seed))
                self.floor_text = f"two independent draws of the data ({len(other)} and {len(self.ref)} points)"

    def __call__(self, samples: torch.Tensor) -> float:
        from .. import metrics
        if self.is_digits:
            return metrics.digit_frechet_distance(samples, self.ref)
        return metrics.sliced_wasserstein(samples.reshape(len(samples), -1), self.ref, 512,
                                          torch.Generator().manual_seed(self.seed))


def to_data(x: torch.Tensor, ds) -> torch.Tensor:
    """Samples as data: clamped to the data range if the data are bounded, and for integer-level
    data rounded to the nearest level (as the reference code turns samples into uint8 images),
    so that they are compared with, and look like, the real data. CPU tensor."""
    from .. import data as D
    x = x.detach().cpu()
    if ds.bounded:
        x = x.clamp(*ds.data_range)
    if ds.levels is not None:
        x = D.levels_to_float(D.float_to_levels(x, ds.num_levels), ds.num_levels)
    return x


def heldout_data(train):
    """The data that samples are compared with: the digits test split, fresh toy points, or None."""
    from .. import data as D
    cfg = train.config()
    if cfg.get("loader") == "digits":
        return D.digits("test")
    if cfg.get("loader") == "toy":
        return D.toy(cfg["toy"], n=max(2000, min(len(train), 10000)), seed=int(cfg.get("seed", 0)) + 1_000_003)
    return None


def _bpd_ode(model, sde, ds, n_points, tol, ode_method, seed, progress=False):
    from .. import bits_per_dim
    from .progress import NetBar
    x = ds.levels[:n_points]
    with NetBar(model, f"bits/dim (PF-ODE, tol {tol:g})", enabled=progress) as bar:  # adaptive: no total
        bar.batch(len(x))
        r = bits_per_dim(model, sde, x, data_range=ds.data_range, num_levels=ds.num_levels, method=ode_method,
                         rtol=tol, atol=tol, generator=torch.Generator().manual_seed(seed))
    b = r.bpd.to(torch.float64)
    return float(b.mean()), float(b.std() / math.sqrt(len(b))) if len(b) > 1 else float("nan"), int(r.nfe)


def _bpd_vlb(model, sde, ds, n_points, steps, seed, progress=False):
    from .. import ddpm_vlb
    from .measure import _chain_length
    from .progress import NetBar
    x = ds.levels[:n_points]
    with NetBar(model, f"variational bound ({steps} steps)", total=_chain_length(model, sde, steps),
                enabled=progress) as bar:
        bar.batch(len(x))
        r = ddpm_vlb(model, sde, x, **vlb_kwargs(ds, steps, seed))
    b = vlb_bpd(r)
    return float(b.mean()), float(b.std() / math.sqrt(len(b))) if len(b) > 1 else float("nan")


def vlb_kwargs(ds, steps, seed) -> dict:
    """Keyword arguments of ``scoresde.ddpm_vlb`` for a data set (and a chain of ``steps`` steps)."""
    return {"num_levels": ds.num_levels, "timesteps": steps, "generator": torch.Generator().manual_seed(seed + 17)}


def vlb_bpd(result) -> torch.Tensor:
    """Per-sample bits/dim (B,) of a ``ddpm_vlb`` result."""
    b = getattr(result, "bpd", result)
    return torch.as_tensor(b, dtype=torch.float64).reshape(-1)


def run_compare(model, sde, train, runs: list[Run], *, n: int, seed: int, bpd_points: int, progress: bool,
                device="cpu", samples_hook=None, log=print, status=None) -> dict:
    """Sample with every run and measure it; returns the JSON-ready result.

    Every run starts from the same prior draw x_T (seeded), so rows differ only by the solver.
    ``samples_hook(run, samples)`` is called with each run's samples (e.g. to save pictures).
    ``status(message)``, if given, is told of the set-up before the first row (training the digit
    classifier of the Frechet distance takes seconds); ``log`` gets one line per row.
    """
    from .. import sample
    heldout = heldout_data(train)
    if status is not None:
        status("scoresde: preparing the quality metric and its real-data floor"
               + (" (training the digit classifier)" if train.config().get("loader") == "digits" else ""))
    quality = Quality(train, heldout, n, seed)
    test = heldout if heldout is not None and heldout.levels is not None else None
    shape = (n, *train.shape)
    x_T = sde.prior_sampling(shape, torch.Generator().manual_seed(seed), device=device)
    rows = []
    for k, r in enumerate(runs):
        kw = dict(r.kwargs)
        method = kw.pop("method")
        if r.nfe_budget is not None:
            r.steps = kw["steps"] = steps_for_nfe(method, r.nfe_budget, model)
        t0 = time.perf_counter()
        try:
            x, info = sample(model, sde, shape, method=method,
                             generator=torch.Generator(device).manual_seed(seed + 1), x_T=x_T.clone(),
                             progress=progress, return_info=True, **kw)
        except (ValueError, RuntimeError) as e:  # a sampler that diverges (NaN) or an ODE solve that gives up
            msg = " ".join(str(e).split())
            rows.append({"method": r.name, "label": r.label, "steps": r.steps, "tol": r.tol, "nfe": None,
                         "wall_s": round(time.perf_counter() - t0, 3), "quality": None, "bpd": None,
                         "bpd_se": None, "bpd_kind": None, "error": msg})
            log(f"[{k + 1}/{len(runs)}] {r.label:<44} steps {str(r.steps or '-'):>4}  failed: {msg}")
            continue
        wall = time.perf_counter() - t0
        x = to_data(x, train)
        q = quality(x)
        row = {"method": r.name, "label": r.label, "steps": r.steps, "tol": r.tol, "nfe": int(info.nfe),
               "wall_s": round(wall, 3), "quality": q, "bpd": None, "bpd_se": None, "bpd_kind": None}
        if bpd_points > 0 and test is not None:
            if r.name == "ode":
                row["bpd"], row["bpd_se"], row["bpd_nfe"] = _bpd_ode(model, sde, test, bpd_points, r.tol,
                                                                     kw["ode_method"], seed, progress)
                row["bpd_kind"] = "PF-ODE (dequantized)"
            elif r.name == "ddpm":
                try:
                    row["bpd"], row["bpd_se"] = _bpd_vlb(model, sde, test, bpd_points, r.steps, seed, progress)
                    row["bpd_kind"] = "DDPM variational bound"
                except ValueError as e:  # e.g. a respacing the chain cannot take
                    row["bpd_kind"] = f"unavailable: {e}"
        rows.append(row)
        if samples_hook is not None:
            samples_hook(r, x)
        log(f"[{k + 1}/{len(runs)}] {r.label:<44} steps {str(r.steps or '-'):>4}  NFE {row['nfe']:>5}  "
            f"{wall:7.2f} s  {quality.short} {q:9.3f}" + (f"  {row['bpd']:.3f} bits/dim" if row["bpd"] else ""))
    return {"n_samples": n, "seed": seed, "data": train.config(), "sde": sde.config(),
            "quality_metric": quality.name, "quality_floor": quality.floor, "n_reference": len(quality.ref), "quality_floor_text": quality.floor_text,
            "bpd_points": bpd_points if test is not None else 0, "rows": rows}


def _fmt(v, spec):
    return "" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def markdown_table(result: dict) -> str:
    """The comparison as a Markdown table (one row per method and budget)."""
    q = result["quality_metric"].split(" (")[0]
    lines = [f"| method | steps | NFE | wall (s) | {q} | bits/dim |", "|---|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        steps = r["steps"] if r["steps"] is not None else f"adaptive (tol {r['tol']:g})"
        bpd = ""
        if r["bpd"] is not None:
            bpd = f"{r['bpd']:.3f} ± {r['bpd_se']:.3f}" + (" (VLB)" if r["method"] == "ddpm" else " (ODE)")
        if r.get("error"):
            lines.append(f"| {r['label']} | {steps} | | {r['wall_s']:.2f} | failed: {r['error']} | |")
            continue
        lines.append(f"| {r['label']} | {steps} | {r['nfe']} | {r['wall_s']:.2f} | {_fmt(r['quality'], '.3f')} | {bpd} |")
    lines.append(f"| real data (floor: {result['quality_floor_text']}) | | | | {result['quality_floor']:.3f} | |")
    return "\n".join(lines)


def write_compare(result: dict, out_dir, title: str = "Solver comparison") -> dict:
    """Write compare.json, compare.md and quality_vs_nfe.png into ``out_dir``; returns their paths."""
    from pathlib import Path

    from ..plotting import save_quality_vs_nfe
    out = Path(out_dir)
    paths = {"json": out / "compare.json", "md": out / "compare.md", "figure": out / "quality_vs_nfe.png"}
    with atomic_file(paths["json"]) as f:
        json.dump(result, f, indent=2, default=_json_default)
        f.write("\n")
    plot_rows = [{"method": _series(r), "nfe": r["nfe"], "quality": r["quality"]} for r in result["rows"]
                 if r["nfe"] is not None]
    save_quality_vs_nfe(plot_rows, paths["figure"], result["quality_metric"], floor=result["quality_floor"])
    notes = "".join(f"\n- {n}" for n in result.get("notes", []))
    text = (f"# {title}\n\n{result['n_samples']} samples per row, all rows from the same prior draw (seed "
            f"{result['seed']}). NFE = score evaluations per sample. Quality: {result['quality_metric']}, lower is "
            f"better. Bits/dim on {result['bpd_points']} test points: PF-ODE rows by the probability-flow ODE "
            f"(uniform dequantization), DDPM rows by the variational bound of that (respaced) chain, a bound that is loose for short chains and can exceed the 4.087 bits/dim of a uniform model on 17 levels.{notes}\n\n"
            f"{markdown_table(result)}\n\n![quality against NFE]({paths['figure'].name})\n")
    with atomic_file(paths["md"]) as f:
        f.write(text)
    return paths


def _series(row: dict) -> str:
    """The figure's line for a row: the method and its fixed options, without the budget."""
    label = row["label"]
    return label.split(" (tol")[0] if row["method"] == "ode" else label


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
