"""Output paths checked before any work (``scoresde sample``, ``likelihood``, ``compare``).

A bad ``--out`` used to surface only when the results were written, after the sampling or the
likelihood solves (15 s of likelihood, then an OSError). These checks run first and raise a
one-line error naming the option, the path and what is wrong:

* a path under a file (``--out afile/samples``): ValueError "... is a file, not a folder";
* an existing folder given as a file name: ValueError "... is an existing folder";
* a folder that does not exist: FileNotFoundError (nothing is created: a failed run leaves
  nothing behind; ``compare`` creates its output folder after the work, under an existing one),
  except with ``make_folder=True`` (``sample`` and ``inpaint``, as ``train --out``): then the
  folder is created under the nearest existing one, which must be a writable folder;
* ``sample`` / ``inpaint --out``, a stem: ``--out run/s`` writes run/s.npz and run/s.png; a stem
  that ends with "/" or names an existing folder is that folder (created if missing, as
  ``train --out``), and the files are named by the command's default stem inside it
  (``--out run/`` writes run/samples.npz and run/samples.png): :func:`output_pair`;
* a folder that cannot be written: ValueError with the operating system's reason, found by
  creating and removing a probe file. (Root ignores permission bits, so a read-only folder
  stops only non-root users; the tests, run as root, cover the first two cases.)
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["check_output_file", "check_output_folder", "output_pair"]


def _nearest_existing(p: Path) -> Path:
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _probe(folder: Path, what: str) -> None:
    try:
        fd, name = tempfile.mkstemp(prefix=".scoresde-write-test-", dir=folder)
        os.close(fd)
        os.remove(name)
    except OSError as e:
        raise ValueError(f"{what}: folder {folder} is not writable ({e.strerror or e})") from None


def check_output_file(path, option: str = "--out", value=None, *, make_folder: bool = False) -> Path:
    """Check that the file ``path`` can be written (atomically, beside itself) before any work.

    Arguments:
        path: the file to be written.
        option, value: how the error names it, e.g. ``--out samples`` (value defaults to path).
        make_folder: create the file's folder (and the ones above it) if missing, instead of
            raising FileNotFoundError.
    Returns: the absolute path.
    Raises: ValueError / FileNotFoundError (one line), see the module docstring.
    """
    what = f"{option} {value if value is not None else path}"
    p = Path(os.path.abspath(os.fspath(path)))
    if p.is_dir():
        raise ValueError(f"{what}: {p} is an existing folder; give a file name")
    base = _nearest_existing(p.parent)
    if not base.is_dir():
        raise ValueError(f"{what}: {base} is a file, not a folder")
    if base != p.parent:
        if not make_folder:
            raise FileNotFoundError(f"{what}: output folder {p.parent} does not exist")
        _probe(base, what)
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ValueError(f"{what}: cannot create the folder {p.parent} ({e.strerror or e})") from None
    _probe(p.parent, what)
    return p


def check_output_folder(path, option: str = "--out") -> Path:
    """Check that the folder ``path`` exists as a writable folder or can be created (it is not created).

    Raises: ValueError (one line): ``path`` or a folder above it is a file; the folder (or, if it
    does not exist yet, the nearest existing one above it) is not writable.
    """
    what = f"{option} {path}"
    p = Path(os.path.abspath(os.fspath(path)))
    base = _nearest_existing(p)
    if not base.is_dir():
        raise ValueError(f"{what}: {base} is a file, not a folder")
    _probe(base, what)
    return p


def output_pair(value: str, name: str, option: str = "--out") -> tuple[Path, Path]:
    """(``<stem>.npz``, ``<stem>.png``) of a ``--out`` stem, both checked (and their folder created).

    ``value`` ending with "/" (or the platform's separator), or naming an existing folder, is a
    folder: the stem is ``value/name`` (``name`` is the command's default stem, e.g. "samples").
    Otherwise the stem is ``value`` itself. Raises as :func:`check_output_file`.
    """
    text = os.fspath(value)
    stem = Path(text)
    if text.endswith(("/", os.sep)) or stem.is_dir():
        stem = stem / name
    npz, png = stem.with_name(stem.name + ".npz"), stem.with_name(stem.name + ".png")
    for f in (npz, png):
        check_output_file(f, option, value, make_folder=True)
    return npz, png
