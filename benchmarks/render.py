"""Regenerate the benchmark rows of README.md's "Measured" table from the benchmarks' JSON results.

Every benchmark script writes ``benchmarks/results/<name>/<name>.json`` (see ``_common.py``) with
a ``readme`` list of rows (what / value / how). This script collects them (and, for the solver
benchmark, whose JSON predates that field, derives its row from the JSON's ``summary``), and
writes them between the markers

    <!-- measured:benchmarks:start -->  ...  <!-- measured:benchmarks:end -->

in README.md, so that no figure in that table is typed by hand. ``--check`` only compares and
exits 1 when README.md is out of date (the test suite runs it).

Usage: python benchmarks/render.py [--check]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"
START, END = "<!-- measured:benchmarks:start -->", "<!-- measured:benchmarks:end -->"
ORDER = ("likelihood", "step_control", "trace", "overhead", "memory", "solvers", "gpu")


def _solver_rows(d: dict) -> list[dict]:
    """The solver benchmark's row: best ours vs best peer at NFE 10 and 20, per problem."""
    s = {(r["problem"], r["budget"]): r for r in d.get("summary", [])}
    parts = []
    for nfe in (10, 20):
        cells = [f"{p}: {s[(p, nfe)]['ours_error']:.1e} vs {s[(p, nfe)]['peer_error']:.1e} "
                 f"({s[(p, nfe)]['ratio']:.2f}x)" for p in ("2-D", "64-D") if (p, nfe) in s]
        if cells:
            parts.append(f"NFE {nfe}: " + ", ".join(cells))
    if not parts:
        return []
    return [{"what": "fast solvers vs the best of diffusers and k-diffusion (exact 8-mode 2-D / 4-mode 64-D "
                     "mixture scores; RMS error against a float64 DOP853 solve; ours vs best peer)",
             "value": "; ".join(parts),
             "how": "`python benchmarks/bench_solvers.py` -> "
                    "[benchmarks/results/solvers/solvers.md](benchmarks/results/solvers/solvers.md)"}]


def collect(results: Path = RESULTS) -> list[dict]:
    """README rows of every results/<name>/<name>.json, in ORDER then alphabetically."""
    names = sorted((p.name for p in results.iterdir() if (p / f"{p.name}.json").is_file()),
                   key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n)) if results.is_dir() else []
    rows = []
    for name in names:
        d = json.loads((results / name / f"{name}.json").read_text())
        got = d.get("readme")
        if got is None and name == "solvers":
            got = _solver_rows(d)
        for r in got or []:
            how = r["how"]
            if f"results/{name}/{name}.md" not in how:
                how += f" -> [benchmarks/results/{name}/{name}.md](benchmarks/results/{name}/{name}.md)"
            rows.append({"what": r["what"], "value": r["value"], "how": how})
    return rows


def table(rows: list[dict]) -> str:
    """The generated block: a Markdown table of rows, between the markers."""
    lines = [START, "", "| what | value | how |", "|---|---|---|"]
    lines += [f"| {r['what']} | {r['value']} | {r['how']} |" for r in rows]
    return "\n".join(lines + ["", END])


def render(text: str, rows: list[dict]) -> str:
    """README text with the block between the markers replaced (ValueError when a marker is missing)."""
    i, j = text.find(START), text.find(END)
    if i < 0 or j < i:
        raise ValueError(f"README.md must hold the markers {START} ... {END}")
    return text[:i] + table(rows) + text[j + len(END):]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="exit 1 if README.md is not up to date")
    args = p.parse_args(argv)
    old = README.read_text()
    new = render(old, collect())
    if args.check:
        if new != old:
            print("README.md's benchmark rows are out of date: run python benchmarks/render.py", file=sys.stderr)
            return 1
        return 0
    README.write_text(new)
    print(f"README.md: {len(collect())} benchmark rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
