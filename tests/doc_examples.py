"""Extract and run the Python examples of README.md and docs/*.md (used by tests/test_doc_examples.py).

The rules a page follows (stated for readers in docs/index.md, "The examples on these pages"):

* Every fenced ```` ```python ```` block runs, in page order, in **one namespace per page** (a
  later block may use the names an earlier one defined), in a fresh temporary folder as the
  working directory (files such as ``runs/digits`` land there), with one torch thread
  (``OMP_NUM_THREADS=1``).
* A block that must not run is preceded by ``<!-- no-run: REASON -->`` on the line before its
  fence (it is still compiled); the reason must be given.
* Every block that runs states its expected run time on a 2-core CPU in a comment, e.g.
  ``# ~2 s on a 2-core CPU``; a ``no-run`` block that shows a costly call states its cost too.
* A block may be followed by its printed output: ``<!-- output -->`` and then a ```` ```text ````
  block. The block's stdout must then match it: the same words, and every number within a
  relative 2e-3 (absolute 1e-6) of the shown one.
* Sizes: the default suite runs each block with the substitutions of ``REDUCE`` below applied
  (e.g. ``TrainConfig.small(3000`` -> ``TrainConfig.small(20``); every entry must
  match its page, so a stale entry fails. A block's shown output is checked only where no
  substitution changed that block; ``pytest -m slow`` runs every page as written (full size)
  and checks every output.
* ``SETUP`` runs before a page's first block (outside the page's namespace): it creates the
  files a page names but that nobody has (a tiny diffusers folder at ``path/to/ddpm-cifar10``).

Usage as a script (what the test calls): ``python tests/doc_examples.py SPEC.json OUT.jsonl``;
SPEC lists pages and their blocks; OUT gets one JSON line per block as it finishes, so a run
killed by its timeout still says how far it got.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
import pathlib
import re
import sys
import textwrap
import time
import traceback

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
NO_RUN = re.compile(r"^<!--\s*no-run:\s*(?P<reason>\S.*?)\s*-->$")
OUTPUT = re.compile(r"^<!--\s*output\s*-->$")
TIME = re.compile(r"#.*?~?\s*\d+(\.\d+)?\s*(ms|s|min|h)\b.*2-core CPU", re.IGNORECASE)

# page name -> [(regular expression, replacement)]: what the default suite changes. Only sizes
# change (training updates, how many images are scored); calls, options and shapes stay as written.
REDUCE: dict[str, list[tuple[str, str]]] = {
    "training.md": [
        (r"(TrainConfig\.small\(|\bsteps=)3000\b", r"\g<1>20"),        # 3000 updates -> 20
        (r"\bds\.levels, batch_size=256", "ds.levels[:2], batch_size=256"),  # 297 test digits -> 2
    ],
    "pretrained.md": [
        # the reference code's checkpoint (not shipped) -> the reduced-width fixture of tests/data/reference
        (r'"checkpoint_8\.pth", "vp/cifar10_ddpmpp_deep_continuous"\)',
         '"%s", "vp/cifar10_ddpmpp_continuous", nf=8, ch_mult=(1, 2), num_res_blocks=1, '
         'attn_resolutions=(8,), image_size=16)' % (ROOT / "tests" / "data" / "reference" / "vp_ddpmpp.pth")),
        (r"\(2, 3, 32, 32\)", "(1, 3, 16, 16)"),             # 1 image, of that fixture's size
    ],
}


def _setup_pretrained(cwd: pathlib.Path) -> None:
    """A diffusers DDPM pipeline folder with a tiny UNet2DModel (random weights) at the path the
    page names, so that its calls run as written."""
    import torch
    from diffusers import DDPMScheduler, UNet2DModel
    torch.manual_seed(0)
    root = cwd / "path" / "to" / "ddpm-cifar10"
    UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(16, 32), layers_per_block=1,
                down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                norm_num_groups=8).save_pretrained(root / "unet")
    DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                  clip_sample=False).save_pretrained(root / "scheduler")


SETUP = {"pretrained.md": _setup_pretrained}


def code_blocks(page: pathlib.Path) -> list[dict]:
    """The ```python blocks of a page, in order: {"line" (first line of code, 1-based), "source",
    "no_run" (the reason, or None), "expected" (the shown output, or None), "states_time"}."""
    lines, out, i = page.read_text().splitlines(), [], 0
    while i < len(lines):
        if lines[i].strip() == "```python":
            m = NO_RUN.match(lines[i - 1].strip()) if i > 0 else None
            j = i + 1
            while j < len(lines) and lines[j].strip() != "```":
                j += 1
            if j == len(lines):
                raise ValueError(f"{page.name}:{i + 1}: unclosed ```python block")
            src = textwrap.dedent("\n".join(lines[i + 1:j])) + "\n"
            expected, k = None, j + 1
            while k < len(lines) and not lines[k].strip():
                k += 1
            if k < len(lines) and OUTPUT.match(lines[k].strip()):
                if k + 1 >= len(lines) or lines[k + 1].strip() != "```text":
                    raise ValueError(f"{page.name}:{k + 1}: <!-- output --> must be followed by a ```text block")
                e = k + 2
                while e < len(lines) and lines[e].strip() != "```":
                    e += 1
                expected = textwrap.dedent("\n".join(lines[k + 2:e])) + "\n"
            out.append({"line": i + 2, "source": src, "no_run": m.group("reason") if m else None,
                        "expected": expected, "states_time": bool(TIME.search(src))})
            i = j
        i += 1
    return out


def reduced(page_name: str, blocks: list[dict]) -> tuple[list[dict], list[str]]:
    """Blocks with the page's REDUCE substitutions applied (each block gains "reduced": bool), and
    the entries that matched nowhere on the page (stale)."""
    subs, used, out = REDUCE.get(page_name, []), set(), []
    for b in blocks:
        src = b["source"]
        for k, (pattern, new) in enumerate(subs):
            if not b["no_run"]:
                src, n = re.subn(pattern, new, src)
                used.update([k] if n else [])
        out.append(dict(b, source=src, reduced=src != b["source"]))
    return out, [old for k, (old, _) in enumerate(subs) if k not in used]


_NUM = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?|nan|inf")


def output_mismatch(expected: str, got: str, rtol: float = 2e-3, atol: float = 1e-6) -> str | None:
    """None if ``got`` has the words of ``expected`` and its numbers within tolerance; else what differs."""
    e_text, g_text = " ".join(expected.split()), " ".join(got.split())
    if _NUM.sub("#", e_text) != _NUM.sub("#", g_text):
        return f"printed text differs:\n  shown:   {e_text[:400]}\n  printed: {g_text[:400]}"
    for a, b in zip(_NUM.findall(e_text), _NUM.findall(g_text)):
        fa, fb = float(a), float(b)
        if math.isnan(fa) and math.isnan(fb):
            continue
        if not abs(fa - fb) <= atol + rtol * abs(fa):
            return f"printed {b} where the page shows {a}:\n  shown:   {e_text[:400]}\n  printed: {g_text[:400]}"
    return None


def run(spec: dict, out_path: str) -> int:
    """Execute the pages of ``spec`` ({"pages": [{"name", "cwd", "blocks": [...]}]}), one JSON
    line per block to ``out_path``: page, line, status ("ok", "error", "skipped", "no-run"),
    seconds (wall), cpu_s (process CPU time), stdout, error (traceback)."""
    with open(out_path, "w") as log:
        for page in spec["pages"]:
            cwd = pathlib.Path(page["cwd"])
            cwd.mkdir(parents=True, exist_ok=True)
            os.chdir(cwd)
            ns: dict = {"__name__": "__main__"}
            failed = None
            if page["name"] in SETUP:
                try:
                    SETUP[page["name"]](cwd)
                except Exception:
                    failed = "setup: " + traceback.format_exc()
            for b in page["blocks"]:
                rec = {"page": page["name"], "line": b["line"], "status": "skipped", "seconds": 0.0, "stdout": "",
                       "error": None}
                if b["no_run"]:
                    rec["status"] = "no-run"
                elif failed:
                    rec["error"] = f"an earlier block of the page failed ({failed.splitlines()[0][:200]})"
                else:
                    buf = io.StringIO()
                    t0, c0 = time.perf_counter(), time.process_time()
                    try:
                        code = compile(b["source"], f"{page['name']}:{b['line']}", "exec")
                        with contextlib.redirect_stdout(buf):
                            exec(code, ns)
                        rec["status"] = "ok"
                    except BaseException:  # noqa: BLE001 - report everything, SystemExit included
                        rec["status"] = "error"
                        rec["error"] = traceback.format_exc()[-4000:]
                        failed = f"line {b['line']}"
                    rec["seconds"] = round(time.perf_counter() - t0, 3)
                    rec["cpu_s"] = round(time.process_time() - c0, 3)  # on a busy machine: the idle-machine time
                    rec["stdout"] = buf.getvalue()
                log.write(json.dumps(rec) + "\n")
                log.flush()
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(run(json.loads(pathlib.Path(sys.argv[1]).read_text()), sys.argv[2]))
