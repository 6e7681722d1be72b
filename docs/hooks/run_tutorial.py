"""Execute a jupytext percent-format tutorial cell by cell and record what each cell printed and drew.

Usage: python docs/hooks/run_tutorial.py SCRIPT OUT_DIR [--quick]

The script runs as ``__main__`` with ``sys.argv = [SCRIPT, "--out", OUT_DIR] (+ ["--quick"])``, in
one namespace, so it behaves exactly as ``python SCRIPT --out OUT_DIR`` would; the only difference
is that stdout is captured per cell. OUT_DIR/cells.json gets one entry per cell: its kind
("markdown" or "code"), its source, its header options (``# %% output="markdown"``), what it
printed and the files it wrote into OUT_DIR. A cell that raises ends the run with the traceback on
stderr and exit status 1, which fails the docs build.
"""
from __future__ import annotations

import contextlib
import io
import json
import pathlib
import re
import sys
import time
import traceback

CELL = re.compile(r"^# %%(?P<rest>.*)$")


def parse_cells(text: str) -> list[dict]:
    """Split percent-format source into cells: [{"kind", "source", "options"}]; text before the
    first ``# %%`` marker is a code cell (imports, a module docstring)."""
    cells, cur = [], {"kind": "code", "options": {}, "lines": []}
    for line in text.splitlines():
        m = CELL.match(line)
        if m:
            cells.append(cur)
            rest = m.group("rest").strip()
            kind = "markdown" if rest.startswith("[markdown]") else "code"
            opts = dict(re.findall(r'(\w+)="([^"]*)"', rest))
            cur = {"kind": kind, "options": opts, "lines": []}
        else:
            cur["lines"].append(line)
    cells.append(cur)
    out = []
    for c in cells:
        src = "\n".join(c["lines"]).strip("\n")
        if not src.strip():
            continue
        if c["kind"] == "markdown":
            src = "\n".join(re.sub(r"^# ?", "", ln) for ln in src.splitlines())
        out.append({"kind": c["kind"], "source": src, "options": c["options"]})
    return out


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    script, out_dir = pathlib.Path(argv[0]).resolve(), pathlib.Path(argv[1]).resolve()
    quick = "--quick" in argv[2:]
    out_dir.mkdir(parents=True, exist_ok=True)
    cells = parse_cells(script.read_text())
    sys.argv = [str(script), "--out", str(out_dir)] + (["--quick"] if quick else [])
    sys.path.insert(0, str(script.parent))
    ns = {"__name__": "__main__", "__file__": str(script)}
    seen = {p: p.stat().st_mtime_ns for p in out_dir.iterdir()}
    t0 = time.perf_counter()
    for i, cell in enumerate(cells):
        if cell["kind"] != "code":
            continue
        buf = io.StringIO()
        try:
            code = compile(cell["source"], f"{script.name} (cell {i})", "exec")
            with contextlib.redirect_stdout(buf):
                exec(code, ns)
        except BaseException:  # noqa: BLE001  (SystemExit too: a tutorial that exits has failed)
            sys.stdout.write(buf.getvalue())
            print(f"{script.name}: cell {i} raised:\n{cell['source']}\n", file=sys.stderr)
            traceback.print_exc()
            return 1
        cell["stdout"] = buf.getvalue()
        sys.stdout.write(cell["stdout"])
        files = []
        for p in sorted(out_dir.iterdir()):
            if p.name != "cells.json" and p.is_file() and seen.get(p) != p.stat().st_mtime_ns:
                files.append(p.name)
                seen[p] = p.stat().st_mtime_ns
        cell["files"] = files
    seconds = time.perf_counter() - t0
    (out_dir / "cells.json").write_text(json.dumps({"script": script.name, "quick": quick, "seconds": seconds,
                                                    "cells": cells}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
