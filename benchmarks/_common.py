"""What the benchmark scripts share: CPU-time measurement with interleaved repeats, and results
written as a Markdown table plus JSON (atomically), with the machine they were measured on.

Every script in ``benchmarks/`` answers one question, takes ``--quick`` (a tiny size that a test
runs, so the script stays working) and ``--out`` (default ``benchmarks/results/<name>``), prints
its Markdown table, and writes ``<name>.md`` and ``<name>.json`` there. The JSON holds
``meta`` (machine, torch version, threads, date, command, seconds), ``rows`` (the measurements)
and ``readme`` (the rows of the README's "Measured" table this script owns: dicts with
``what``, ``value``, ``how``), which ``benchmarks/render.py`` copies into README.md and which
``docs/benchmarks.md`` includes.

Timing: this machine is shared and noisy, so ratios are measured in one run, with CPU time of
this process (``time.process_time``, all its threads) rather than wall time, by calling the
competitors in alternation (``interleaved``) and taking medians.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def parser(name: str, description: str) -> argparse.ArgumentParser:
    """An argument parser with the options every benchmark takes: --quick, --out, --threads, --repeats."""
    p = argparse.ArgumentParser(prog=f"benchmarks/bench_{name}.py", description=description)
    p.add_argument("--quick", action="store_true", help="tiny sizes (seconds); what the tests run")
    p.add_argument("--out", default=str(RESULTS / name), help=f"output folder (default benchmarks/results/{name})")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--repeats", type=int, default=5, help="interleaved repeats per timing (median taken)")
    return p


def set_threads(n: int) -> None:
    """torch.set_num_threads(n) (n >= 1) and the same for interop where still allowed."""
    import torch

    torch.set_num_threads(int(n))
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)


def cpu_time(fn: Callable, *args, **kwargs):
    """(result, seconds of CPU time of this process) of one call ``fn(*args, **kwargs)``."""
    t0 = time.process_time()
    out = fn(*args, **kwargs)
    return out, time.process_time() - t0


def interleaved(fns: dict, repeats: int, *, warmup: int = 1) -> dict:
    """CPU seconds of each of ``fns`` (name -> zero-argument callable), called round-robin.

    Each callable runs ``warmup`` times untimed, then ``repeats`` rounds run every callable once
    in turn, so that drifts of a shared machine hit all of them alike.
    Returns: name -> list of ``repeats`` CPU-second timings (use :func:`median`).
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            times[k].append(cpu_time(fn)[1])
    return times


def median(xs) -> float:
    """Median of a non-empty sequence of numbers."""
    return float(statistics.median(xs))


def machine() -> dict:
    """Where and when: platform, CPU count, torch version and threads, UTC date."""
    import torch

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def md_table(header, rows) -> str:
    """A Markdown table: ``header`` a list of column titles, ``rows`` lists of cells (str() each)."""
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_results(name: str, out: str, markdown: str, rows, *, readme=(), started: float | None = None,
                  extra: dict | None = None) -> dict:
    """Write ``<out>/<name>.md`` (a header line with the machine, then ``markdown``) and ``<name>.json``.

    Arguments:
        name: the benchmark's name (file stem). out: output folder (created).
        markdown: the tables, as printed. rows: JSON-serializable measurements.
        readme: the README "Measured" rows this benchmark owns, dicts with what / value / how.
        started: time.time() at the start, for the "seconds" field. extra: more meta fields.
    Returns: the JSON payload written.
    """
    meta = machine()
    meta["command"] = "python " + " ".join([os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:]) if sys.argv else ""
    if started is not None:
        meta["seconds"] = round(time.time() - started, 1)
    meta.update(extra or {})
    payload = {"meta": meta, "rows": rows, "readme": list(readme)}
    head = (f"Measured {meta['date']} on {meta['processor']} ({meta['cpu_count']} cores), torch {meta['torch']}, "
            f"{meta['threads']} thread(s): `{meta['command']}`\n\n")
    out_dir = Path(out)
    _atomic_write(out_dir / f"{name}.md", head + markdown)
    _atomic_write(out_dir / f"{name}.json", json.dumps(payload, indent=1, default=str) + "\n")
    return payload
