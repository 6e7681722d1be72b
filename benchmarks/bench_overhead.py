"""Benchmark: what a sampler costs beyond its network calls.

overhead = CPU time of one ``scoresde.sample`` call / (NFE x CPU time of one score evaluation),

where the evaluations are timed inside that same call (the model is wrapped in a timer that adds
up the CPU time of every call it receives), so that the numerator and the denominator are
measured under the same conditions (this machine is shared; a separately timed evaluation
drifts by 10-20 % between rounds). The configurations run interleaved (one call of each in turn,
``--repeats`` rounds, median of the per-call ratios). The JSON also gives the ratio to a bare
evaluation timed on its own (``overhead_vs_bare``). 1.00 means the sampler costs exactly its network calls;
the rest is the solver's own work: the time grid, the update arithmetic, noise draws, the
checks of the score's output, and the drivers' (torchsde, torchdiffeq) per-step machinery.

Models (untrained weights: the timing does not depend on them):

* ``mlp``: :class:`scoresde.models.MLP` (dim 2, hidden 64, 2 layers, embed_dim 32: 19,074
  parameters) at batch 1000, the case where the network is cheap and the overhead shows;
* ``unet``: the digits UNet of ``benchmarks/bench_likelihood.py`` (8x8x1, ch 16) at batch 64.

Every fixed-step method of :data:`scoresde.solvers.registry.METHODS` runs (``sde`` with each
torchsde method, ``ode`` with fixed-grid euler and rk4); adaptive solves (``dpm_adaptive``,
``ode`` dopri5) are left out, their cost per NFE includes step control by design.

``--before PATH`` adds the figures of an earlier run (its JSON) as a "before" column; the
"before" JSON of issue 13 was measured with this script at the commit before the overhead work
(see its ``meta``).

Usage: python benchmarks/bench_overhead.py [--quick] [--steps 20] [--repeats 5] [--before PATH]
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]
from _common import interleaved, md_table, median, parser, set_threads, write_results  # noqa: E402

import scoresde  # noqa: E402
from scoresde import ScoreModel, VPSDE  # noqa: E402
from scoresde.models import MLP  # noqa: E402
from scoresde.solvers.registry import METHODS, get_solver  # noqa: E402

SDE_METHODS = ("euler", "milstein", "euler_heun", "reversible_heun", "srk", "heun", "midpoint")
ODE_METHODS = ("euler", "rk4")


def runs(steps: int) -> list[tuple[str, str, dict, int | None]]:
    """(label, method, options, steps) of every fixed-step configuration."""
    out = []
    for m in METHODS:
        cls = get_solver(m)
        if m == "sde":
            out += [(f"sde/{k}", m, {"sde_method": k}, steps) for k in SDE_METHODS]
        elif m == "ode":
            out += [(f"ode/{k}", m, {"ode_method": k}, steps) for k in ODE_METHODS]
        elif cls.steps_kind == "fixed":
            out.append((m, m, {}, steps))
    return out


def build(name: str, quick: bool):
    """(score model, sample shape) of the named benchmark model, in eval mode."""
    sde = VPSDE()
    torch.manual_seed(0)
    if name == "mlp":
        net = MLP(2, hidden=64, num_layers=2, embed_dim=32)
        with torch.no_grad():  # the output layer starts at 0: give it weights, so the score is not trivially 0
            net.out.weight.normal_(0, 0.1)
        return ScoreModel(net, sde).eval(), ((100 if quick else 1000), 2)
    from bench_likelihood import build_model

    return build_model(sde, 0, "cpu", 8 if quick else 16), ((8 if quick else 64), 1, 8, 8)


class Timed:
    """The model with a CPU-time counter: ``seconds`` adds up the time spent inside its calls."""

    def __init__(self, model):
        self.model, self.seconds = model, 0.0

    def __call__(self, x, t):
        t0 = time.process_time()
        out = self.model(x, t)
        self.seconds += time.process_time() - t0
        return out

    checks_output = False  # call_score checks the output (as it would the bare model's)

    def __getattr__(self, name):  # discrete, prediction, ... as the model's
        return getattr(self.model, name)


def measure(name: str, steps: int, repeats: int, quick: bool) -> list[dict]:
    """Overhead rows of every configuration on one model."""
    model, shape = build(name, quick)
    sde = model.sde
    x = torch.randn(shape)
    t = torch.full((shape[0],), 0.5, dtype=torch.float64)
    n_eval = 10

    def evals():
        with torch.no_grad():
            for _ in range(n_eval):
                model(x, t)

    fns, stats = {"eval": evals}, {}
    for label, method, opts, st in runs(steps):
        def call(method=method, opts=opts, st=st, label=label):
            g = torch.Generator().manual_seed(0)
            timed = Timed(model)
            t0 = time.process_time()
            _, info = scoresde.sample(timed, sde, shape, method=method, steps=st, generator=g, return_info=True,
                                      **opts)
            total = time.process_time() - t0
            stats.setdefault(label, []).append((total / timed.seconds, info.nfe, timed.seconds / info.nfe))
        fns[label] = call
    times = interleaved(fns, repeats)
    t_eval = median(times.pop("eval")) / n_eval
    rows = []
    for label, ts in times.items():
        runs_ = stats[label][-repeats:]  # the timed rounds (the warm-up call is left out)
        nfe = runs_[0][1]
        rows.append({"model": name, "method": label, "nfe": nfe, "seconds": median(ts),
                     "eval_seconds": median(r[2] for r in runs_), "bare_eval_seconds": t_eval,
                     "overhead": median(r[0] for r in runs_), "overhead_vs_bare": median(ts) / (nfe * t_eval)})
    return rows


def main(argv=None):
    p = parser("overhead", __doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=20, help="steps of every sampler (default 20)")
    p.add_argument("--models", default="mlp,unet", help="comma-separated: mlp, unet")
    p.add_argument("--before", default=None, help="JSON of an earlier run, shown as the 'before' column")
    args = p.parse_args(argv)
    started = time.time()
    set_threads(args.threads)
    steps = 3 if args.quick else args.steps
    repeats = 1 if args.quick else args.repeats
    rows = []
    for name in args.models.split(","):
        rows += measure(name, steps, repeats, args.quick)
    before = {}
    if args.before:
        prev = json.loads(Path(args.before).read_text())
        before = {(r["model"], r["method"]): r["overhead"] for r in prev["rows"]}
    models = list(dict.fromkeys(r["model"] for r in rows))
    header = ["method"] + [f"{m} {col}" for m in models for col in (("before", "after") if before else ("overhead",))]
    by = {(r["model"], r["method"]): r for r in rows}
    table = []
    for label in dict.fromkeys(r["method"] for r in rows):
        cells = [label]
        for m in models:
            if before:
                b = before.get((m, label))
                cells.append("-" if b is None else f"{b:.2f}")
            cells.append(f"{by[(m, label)]['overhead']:.2f}" if (m, label) in by else "-")
        table.append(cells)
    evals = ", ".join(f"{m}: {median(r['eval_seconds'] for r in rows if r['model'] == m) * 1e3:.2f} ms"
                      for m in models)
    md = (f"## Sampler overhead: CPU time / (NFE x one score evaluation), {steps} steps\n\n"
          f"One evaluation: {evals}. Models: mlp = 19k-parameter MLP at batch 1000, unet = digits UNet at batch 64"
          f"{' (quick sizes)' if args.quick else ''}.\n\n" + md_table(header, table))
    print(md)
    readme = readme_rows(rows, prev.get("rows", []) if args.before else [])
    extra = {"steps": steps}
    if args.before:
        extra["before"] = {"file": args.before, "meta": prev.get("meta", {})}
    write_results("overhead", args.out, md, rows, readme=readme, started=started, extra=extra)


def readme_rows(rows, before=()) -> list[dict]:
    """The README row: the worst overhead over the fixed-step methods per model, after (and before)."""
    def worst(rs, m):
        got = [r for r in rs if r["model"] == m]
        return max(got, key=lambda r: r["overhead"]) if got else None
    models = list(dict.fromkeys(r["model"] for r in rows))
    parts = []
    for m in models:
        w, b = worst(rows, m), worst(before, m)
        text = f"{m} {w['overhead']:.2f} ({w['method']})"
        if b is not None:
            text = f"{m} {b['overhead']:.2f} ({b['method']}) -> {w['overhead']:.2f} ({w['method']})"
        parts.append(text)
    return [{"what": "sampler overhead, CPU time / (NFE x one score evaluation), worst fixed-step method "
                     "(mlp = 19k-parameter MLP at batch 1000, unet = digits UNet at batch 64); target <= 1.10",
             "value": "; ".join(parts), "how": "`python benchmarks/bench_overhead.py`"}]


if __name__ == "__main__":
    main()
