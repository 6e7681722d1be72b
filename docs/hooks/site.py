"""MkDocs hooks that generate the parts of the scoresde site that come from the code.

* **Tutorials**: every ``docs/tutorials/*.py`` (jupytext percent format) is executed, cell by
  cell, by ``run_tutorial.py`` in a subprocess, at its ``--quick`` size unless
  ``SCORESDE_DOCS_FULL=1``; its page ``tutorials/<name>.md`` shows the Markdown cells, the code,
  what each cell printed and the figures it wrote. A tutorial that raises (or runs past
  ``SCORESDE_DOCS_TIMEOUT`` seconds, default 900) fails the build.
* **API reference** (``api/*.md``): one ``::: name`` block per name of ``scoresde.__all__``
  (grouped by topic; a name no group claims lands in "Other", so none is left out), and one
  per module of ``scoresde.solvers`` and for ``scoresde.models``, ``scoresde.data``,
  ``scoresde.oracle`` and ``scoresde.plotting``; ``api/index.md`` counts the names documented against the public names.
* **CLI reference** (``cli.md``): the ``--help`` of the ``scoresde`` command and of each
  subcommand, formatted by the argparse parser itself (``scoresde.cli.build_parser``).
* **Tables from the code**: ``<!-- solver-nfe-table -->`` becomes the registry's NFE per step.
* **Includes**: ``<!-- include: PATH -->`` in a page is replaced by the file PATH (relative to the
  repository root, headings shifted one level down), and ``<!-- tutorial-output: NAME/FILE -->``
  by a file that tutorial NAME wrote in this build (so a page quotes the numbers of this run).
"""
from __future__ import annotations

import concurrent.futures
import importlib
import inspect
import json
import os
import pathlib
import pkgutil
import re
import subprocess
import sys
import tempfile
import time

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File

ROOT = pathlib.Path(__file__).resolve().parents[2]
TUTORIALS = ROOT / "docs" / "tutorials"
RUNNER = pathlib.Path(__file__).with_name("run_tutorial.py")
_STATE: dict = {}
IMAGES = (".png", ".svg", ".jpg")

# topic -> names of scoresde.__all__, in the order the page shows them
GROUPS = {
    "SDEs and schedules": ["SDE", "VPSDE", "SubVPSDE", "VESDE", "ReverseSDE", "sde_from_config", "LinearSchedule",
                           "CosineSchedule", "suggest_sigma_max"],
    "Score models and time grids": ["ScoreModel", "network_time", "time_grid", "select_timesteps", "space_timesteps",
                                    "respaced_betas"],
    "Sampling": ["sample", "SampleInfo"],
    "Controllable generation": ["inpaint", "colorize", "classifier_guidance", "classifier_free_guidance"],
    "Likelihood": ["log_likelihood", "bits_per_dim", "encode", "decode", "LikelihoodResult", "BitsPerDimResult",
                   "ddpm_vlb", "VLBResult"],
    "Losses": ["dsm_loss", "ddpm_loss", "hybrid_loss", "LossSecondMomentSampler"],
    "Training": ["train", "TrainConfig", "load_score_model", "shard_evaluate", "train_classifier", "load_classifier",
                 "classifier_accuracy"],
    "Pretrained models": ["from_diffusers", "load_reference_checkpoint"],
    "Metrics": ["sliced_wasserstein", "frechet_distance", "digit_frechet_distance"],
}
PACKAGES = {"models": "scoresde.models", "data": "scoresde.data", "oracle": "scoresde.oracle",
            "plotting": "scoresde.plotting"}


# ---------------------------------------------------------------------------------------------
# API reference
def _block(path: str, level: int) -> str:
    return f"::: {path}\n    options:\n      heading_level: {level}\n"


def _public_names(module) -> list[str]:
    """The module's public names: its ``__all__``, else what it defines without a leading underscore."""
    if hasattr(module, "__all__"):
        return list(module.__all__)
    return [n for n, o in vars(module).items() if not n.startswith("_") and getattr(o, "__module__", None)
            == module.__name__ and (inspect.isclass(o) or inspect.isfunction(o))]


def doc_stats(module, names) -> dict:
    """Counts for the API overview: public names, classes and functions among them, those with a
    docstring, and those whose docstring has the Arguments / Returns layout."""
    st = {"names": len(names), "callables": 0, "documented": 0, "layout": 0, "no_layout": []}
    for n in names:
        obj = getattr(module, n)
        if not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        st["callables"] += 1
        own = obj.__doc__ or ""
        if inspect.isclass(obj):
            own += "\n" + (obj.__init__.__doc__ or "" if "__init__" in vars(obj) else "")
        if own.strip():
            st["documented"] += 1
        args = re.search(r"^\s*(Arguments|Args|Parameters):", own, re.M) or not _takes_arguments(obj)
        returns = inspect.isclass(obj) or re.search(r"^\s*(Returns|Yields):", own, re.M)
        if args and returns:
            st["layout"] += 1
        else:
            st["no_layout"].append(n)
    return st


def _takes_arguments(obj) -> bool:
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return True
    return any(p.name not in ("self", "cls") for p in sig.parameters.values())


def api_pages() -> dict[str, str]:
    import scoresde
    import scoresde.solvers

    pages, counts = {}, []
    names = list(scoresde.__all__)
    claimed = [n for g in GROUPS.values() for n in g]
    groups = {g: [n for n in ns if n in names] for g, ns in GROUPS.items()}
    other = [n for n in names if n not in claimed]
    if other:
        groups["Other"] = other
    text = ["# `scoresde`\n", "Every name of `scoresde.__all__`, documented from its docstring (the object's "
            "home module in parentheses in its heading's path).\n"]
    for g, ns in groups.items():
        text.append(f"## {g}\n")
        text += [_block(f"scoresde.{n}", 3) for n in ns]
    pages["api/scoresde.md"] = "\n".join(text)
    counts.append(("scoresde", scoresde, names))

    mods = [m.name for m in pkgutil.iter_modules(scoresde.solvers.__path__) if not m.name.startswith("_")]
    order = ["base", "registry"] + [m for m in mods if m not in ("base", "registry")]
    text = ["# `scoresde.solvers`\n", "The solver interface (`base`), the registry behind `scoresde.sample`'s "
            "`method` names (`registry`), and one section per solver module.\n"]
    for m in order:
        mod = importlib.import_module(f"scoresde.solvers.{m}")
        text.append(_block(f"scoresde.solvers.{m}", 2))
        pub = _public_names(mod)
        counts.append((f"scoresde.solvers.{m}", mod, pub))
    pages["api/solvers.md"] = "\n".join(text)

    for page, modname in PACKAGES.items():
        mod = importlib.import_module(modname)
        pages[f"api/{page}.md"] = f"# `{modname}`\n\n" + _block(modname, 2)
        pub = _public_names(mod)
        counts.append((modname, mod, pub))

    stats = [(m, doc_stats(mod, pub)) for m, mod, pub in counts]
    total = sum(st["callables"] for _, st in stats)
    documented = sum(st["documented"] for _, st in stats)
    layout = sum(st["layout"] for _, st in stats)
    rows = "\n".join(f"| `{m}` | {st['names']} | {st['callables']} | {st['documented']} | {st['layout']} | "
                     f"{', '.join(f'`{n}`' for n in st['no_layout']) or '-'} |" for m, st in stats)
    pages["api/index.md"] = (
        "# API reference\n\nGenerated from the docstrings by mkdocstrings at every build: "
        "[`scoresde`](scoresde.md) (the names of `scoresde.__all__`), [`scoresde.solvers`](solvers.md), "
        "[`scoresde.models`](models.md), [`scoresde.data`](data.md), [`scoresde.oracle`](oracle.md) and "
        "[`scoresde.plotting`](plotting.md) (image grids and figures, no global matplotlib backend switch).\n\n"
        f"**{documented} of {total} public classes and functions have a docstring; {layout} of them have both an "
        "`Arguments:` and a `Returns:` section** (classes: `Arguments:` in the class or `__init__` docstring). A "
        "module's public names are its `__all__`, else the classes and functions it defines without a leading "
        "underscore; constants and other data are documented on their module's page and not counted.\n\n"
        "| module | public names | classes and functions | with a docstring | with Arguments and Returns | "
        "without that layout |\n|---|---|---|---|---|---|\n" + rows + "\n")
    _STATE["api_counts"] = (documented, layout, total)
    return pages


# ---------------------------------------------------------------------------------------------
# CLI reference
def cli_page() -> str:
    import argparse

    os.environ.setdefault("COLUMNS", "100")
    from scoresde.cli import build_parser

    parser = build_parser()
    parser.prog = "scoresde"
    text = ["# The `scoresde` command\n",
            "Generated from the command's argparse parser (`scoresde.cli.build_parser`) at every build, so it "
            "matches the installed version; `scoresde <command> --help` prints the same. A walk through the "
            "commands is in [The command and its demo](demo.md).\n",
            "```text\n" + parser.format_help().rstrip() + "\n```\n"]
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for action in subs:
        for name, sub in action.choices.items():
            text.append(f"## `scoresde {name}`\n")
            text.append("```text\n" + sub.format_help().rstrip() + "\n```\n")
    return "\n".join(text)


# ---------------------------------------------------------------------------------------------
# tutorials
def tutorial_scripts() -> list[pathlib.Path]:
    """docs/tutorials/*.py; ``SCORESDE_DOCS_ONLY=a,b`` keeps only those (for editing one page: the
    other tutorials' pages are then missing and the strict build fails, as it should)."""
    scripts = sorted(p for p in TUTORIALS.glob("*.py") if not p.name.startswith("_"))
    only = os.environ.get("SCORESDE_DOCS_ONLY")
    if only is not None:
        scripts = [p for p in scripts if p.stem in only.split(",")]
    return scripts


def _run_one(script: pathlib.Path, out: pathlib.Path, quick: bool, timeout: float) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), MPLBACKEND="Agg",
               PYTHONPATH=os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    cmd = [sys.executable, str(RUNNER), str(script), str(out)] + (["--quick"] if quick else [])
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise PluginError(f"tutorial {script.name} ran past {timeout:.0f} s") from None
    if proc.returncode != 0:
        raise PluginError(f"tutorial {script.name} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    data = json.loads((out / "cells.json").read_text())
    data["wall"] = time.perf_counter() - t0
    return data


def _fence(text: str, lang: str) -> str:
    ticks = "````" if "```" in text else "```"
    return f"{ticks}{lang}\n{text.rstrip()}\n{ticks}\n"


def tutorial_page(script: pathlib.Path, data: dict, full: bool) -> str:
    size = "full size (`SCORESDE_DOCS_FULL=1`)" if full else "its `--quick` size"
    cmd = f"python docs/tutorials/{script.name}" + ("" if full else " --quick")
    parts, first = [], True
    for cell in data["cells"]:
        if cell["kind"] == "markdown":
            src = cell["source"].strip("\n")
            if first and src.startswith("# "):  # the note goes right under the title
                title, _, rest = src.partition("\n")
                parts.append(title + "\n")
                parts.append(f'!!! note "Executed when this site was built"\n    At {size}, in {data["seconds"]:.0f} s '
                             f"(one thread): every number and figure below comes from that run. Run it yourself "
                             f"with `{cmd}` (figures go next to the script; `--out DIR` elsewhere); "
                             f"[download the script]({script.name}).\n")
                src = rest
            parts.append(src + "\n")
            first = False
            continue
        if cell["options"].get("hide") != "input":
            parts.append(_fence(cell["source"], "python"))
        out = cell.get("stdout", "")
        if out.strip():
            parts.append(out.rstrip() + "\n" if cell["options"].get("output") == "markdown" else _fence(out, "text"))
        for f in cell.get("files", []):
            if f.endswith(IMAGES):
                parts.append(f"![{f}]({f})\n")
    return "\n".join(parts)


def run_tutorials(config) -> tuple[dict, list]:
    full = os.environ.get("SCORESDE_DOCS_FULL", "") not in ("", "0")
    timeout = float(os.environ.get("SCORESDE_DOCS_TIMEOUT", "900"))
    jobs = int(os.environ.get("SCORESDE_DOCS_JOBS", str(min(4, os.cpu_count() or 1))))
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="scoresde-docs-"))
    scripts = tutorial_scripts()
    pages, files = {}, []
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futs = {s: pool.submit(_run_one, s, tmp / s.stem, not full, timeout) for s in scripts}
        results = {s: f.result() for s, f in futs.items()}
    for s, data in results.items():
        pages[f"tutorials/{s.stem}.md"] = tutorial_page(s, data, full)
        for cell in data["cells"]:
            for f in cell.get("files", []):
                if f.endswith(IMAGES):  # other outputs are read by <!-- tutorial-output: ... --> only
                    files.append((f"tutorials/{f}", tmp / s.stem / f))
        print(f"scoresde docs: tutorial {s.name} ({'full' if full else 'quick'}) ran in {data['seconds']:.1f} s",
              file=sys.stderr)
    _STATE["tutorial_dirs"] = {s.stem: tmp / s.stem for s in scripts}
    return pages, files


# ---------------------------------------------------------------------------------------------
# mkdocs events
def _put(files, file: File) -> None:
    old = files.get_file_from_path(file.src_uri)
    if old is not None:
        files.remove(old)
    files.append(file)


def on_files(files, config):
    # a tutorial run by hand writes its outputs next to the script (decision_table.md, figures):
    # the pages under tutorials/ are the generated ones only
    for f in list(files):
        if f.src_uri.startswith("tutorials/") and f.src_uri.endswith(".md"):
            files.remove(f)
    generated = {}
    generated.update(api_pages())
    generated["cli.md"] = cli_page()
    pages, figures = run_tutorials(config)
    generated.update(pages)
    for uri, content in generated.items():
        _put(files, File.generated(config, uri, content=content))
    for uri, path in figures:
        _put(files, File.generated(config, uri, abs_src_path=str(path)))
    for path in re.findall(r"<!-- include-file: (\S+) -->", "".join(
            p.read_text() for p in (ROOT / "docs").glob("*.md"))):
        src = ROOT / path
        _put(files, File.generated(config, path.split("/")[-1], abs_src_path=str(src)))
    return files


def solver_nfe_table() -> str:
    from scoresde.solvers.registry import solver_table

    rows = ["| `method` | NFE for `steps` | order | stochastic |", "|---|---|---|---|"]
    for r in solver_table():
        rows.append(f"| `{r['name']}` | {r['nfe']} | {'-' if r['order'] is None else r['order']} | "
                    f"{'yes' if r['stochastic'] else 'no'} |")
    return "\n".join(rows) + "\n"


def _shift(text: str) -> str:
    return re.sub(r"^(#+) ", r"#\1 ", text, flags=re.M)


def on_page_markdown(markdown, page, config, files):
    def include(m):
        path = ROOT / m.group(1)
        if not path.is_file():
            raise PluginError(f"{page.file.src_uri}: include of a missing file {m.group(1)}")
        return _shift(path.read_text())

    def tutorial_output(m):
        name, fname = m.group(1).split("/", 1)
        path = _STATE.get("tutorial_dirs", {}).get(name, pathlib.Path("/nonexistent")) / fname
        if not path.is_file():
            raise PluginError(f"{page.file.src_uri}: tutorial {name} wrote no {fname}")
        return path.read_text()

    if "<!-- solver-nfe-table -->" in markdown:
        markdown = markdown.replace("<!-- solver-nfe-table -->", solver_nfe_table())
    markdown = re.sub(r"<!-- include: (\S+) -->", include, markdown)
    markdown = re.sub(r"<!-- tutorial-output: (\S+) -->", tutorial_output, markdown)
    markdown = re.sub(r"<!-- include-file: (\S+) -->", "", markdown)
    return markdown
