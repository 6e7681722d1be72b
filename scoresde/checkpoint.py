"""Atomic, safe-to-load checkpoint files.

A checkpoint is one ``torch.save`` file holding only tensors, dicts, lists, tuples, numbers,
strings, booleans and None, so that it loads with ``torch.load(weights_only=True)``: loading a
file never runs code from it. Writing goes to a temporary file in the same folder, which is
flushed and fsync'ed and then renamed over the target with ``os.replace`` (atomic on POSIX and
Windows), so the checkpoint name always holds either the previous complete file or the new
complete file, never a partial one, even if the process is killed mid-write.

Layout written by :func:`save_checkpoint` (the training loop fills it, see ``scoresde.train``):
    {"format": "scoresde-checkpoint", "version": 1, "torch_version": str, ...the caller's keys}
"""
from __future__ import annotations

import os
import pickle
import re
import tempfile
import warnings
import zipfile

import torch

FORMAT = "scoresde-checkpoint"
VERSION = 1
_PLAIN = (int, float, bool, str, type(None))


def _check_plain(obj, where: str = "state") -> None:
    """Raise TypeError unless obj is made of tensors, dicts, lists, tuples and plain scalars."""
    if isinstance(obj, torch.Tensor) or type(obj) in _PLAIN:
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"{where}: dict key {k!r} must be a str or int")
            _check_plain(v, f"{where}[{k!r}]")
        return
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_plain(v, f"{where}[{i}]")
        return
    raise TypeError(f"{where} is a {type(obj).__name__}; a checkpoint may hold only tensors, dicts, lists, "
                    "numbers, strings and None (so that it loads with weights_only=True)")


def check_writable(folder) -> str:
    """Create ``folder`` if needed and check that files can be created in it.

    Called before training starts so that a bad output folder fails at once, not at the first
    checkpoint hours later.
    Returns: the absolute folder path.
    Raises:
        ValueError: the folder cannot be created or written (one line naming the folder and the
        operating system's reason).
    """
    folder = os.path.abspath(os.fspath(folder))
    try:
        os.makedirs(folder, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".scoresde-write-test-", dir=folder)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise ValueError(f"output folder {folder} is not writable: {e.strerror or e}") from None
    return folder


def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # not supported on this platform (Windows): the rename is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _temp_prefix(path: str) -> str:
    return "." + os.path.basename(path) + ".tmp-"


def save_checkpoint(path, state: dict) -> str:
    """Write ``state`` to ``path`` atomically.

    Steps: check the content (plain types only), write to a temporary file
    ``.<name>.tmp-XXXX`` in the same folder, flush and fsync it, ``os.replace`` it onto
    ``path``, fsync the folder. On any error the temporary file is removed and an existing
    ``path`` is left untouched; a process killed mid-write leaves at most a stale temporary
    file (removed by the next successful save), never a partial file under ``path``.

    Arguments:
        path: target file name.
        state: dict of tensors, dicts, lists, numbers, strings, None. The keys "format",
            "version" and "torch_version" are added.
    Returns: the absolute path written.
    Raises:
        TypeError: state is not a dict or holds another kind of object (named with its location).
        ValueError: ``path`` is an existing folder (give a file name in it, e.g.
            ``<folder>/checkpoint.pt``); the folder is not writable.
        OSError: the write itself failed (e.g. disk full); ``path`` is left as it was.
    """
    path = os.path.abspath(os.fspath(path))
    if os.path.isdir(path):
        raise ValueError(f"checkpoint path {path} is a folder; give a file name, e.g. "
                         f"{os.path.join(path, 'checkpoint.pt')}")
    if not isinstance(state, dict):
        raise TypeError(f"state must be a dict; got {type(state).__name__}")
    full = {"format": FORMAT, "version": VERSION, "torch_version": str(torch.__version__), **state}
    _check_plain(full)
    folder = os.path.dirname(path)
    check_writable(folder)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), dir=folder)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file ordinary permissions
        with os.fdopen(fd, "wb") as f:
            torch.save(full, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(folder)
    for name in os.listdir(folder):  # leftovers of writes that were killed
        if name.startswith(_temp_prefix(path)):
            try:
                os.remove(os.path.join(folder, name))
            except OSError:
                pass
    return path


def _reason(e: BaseException) -> str:
    """A one-line reason out of torch.load's multi-paragraph messages."""
    text = str(e)
    m = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    line = m.group(1) if m else next((ln for ln in text.splitlines() if ln.strip()), type(e).__name__)
    line = line.strip().split(". ")[0][:120]
    return line if len(line) >= 20 else f"{type(e).__name__}: {line}".rstrip(": ")


def load_checkpoint(path, map_location="cpu") -> dict:
    """Load a checkpoint written by :func:`save_checkpoint`, with ``weights_only=True``.

    Arguments:
        path: the file.
        map_location: passed to ``torch.load`` (default "cpu").
    Returns: the state dict (including "format", "version", "torch_version").
    Raises:
        FileNotFoundError: no such file.
        ValueError (one line): the file is corrupt or truncated, is not a torch file, holds
            objects other than tensors and plain containers (unsafe to load), or is a torch
            file that is not a scoresde checkpoint (foreign), or has a newer format version.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such checkpoint file: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pickle-protocol notices from the weights-only unpickler
            state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        # torch < 2.13: "Unsupported global: GLOBAL mod.name ..."; torch 2.13: "Trying to load
        # unsupported GLOBAL posix.system whose module posix is blocked"
        unsafe = re.search(r"unsupported global:?\s*(?:GLOBAL\s+)?([\w.]+)", str(e), re.IGNORECASE)
        if unsafe:
            raise ValueError(f"{path} is not a scoresde checkpoint: it holds Python objects that are unsafe to "
                             f"load ({unsafe.group(1)}; refused by weights_only=True)") from None
        raise ValueError(f"{path} is not a readable checkpoint (corrupt, or not a torch file: {_reason(e)})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError, IndexError) as e:
        raise ValueError(f"{path} is not a readable checkpoint (corrupt or truncated file: {_reason(e)})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is a torch file but not a scoresde checkpoint (no 'format': {FORMAT!r} entry)")
    if not isinstance(state.get("version"), int) or state["version"] > VERSION:
        raise ValueError(f"{path} has checkpoint format version {state.get('version')!r}; this scoresde reads "
                         f"versions <= {VERSION}")
    return state


def config_diff(saved, requested, prefix: str = "") -> list[str]:
    """Paths at which two nested config dicts differ, as "key.sub: saved X, requested Y" lines.

    Lists and tuples compare equal element-wise (JSON turns tuples into lists).
    """
    if isinstance(saved, (list, tuple)) and isinstance(requested, (list, tuple)):
        if len(saved) == len(requested):
            out = []
            for i, (a, b) in enumerate(zip(saved, requested)):
                out += config_diff(a, b, f"{prefix}[{i}]")
            return out
    elif isinstance(saved, dict) and isinstance(requested, dict):
        out = []
        for k in sorted(set(saved) | set(requested), key=str):
            p = f"{prefix}.{k}" if prefix else str(k)
            if k not in saved:
                out.append(f"{p}: missing in checkpoint, requested {requested[k]!r}")
            elif k not in requested:
                out.append(f"{p}: saved {saved[k]!r}, not in the requested config")
            else:
                out += config_diff(saved[k], requested[k], p)
        return out
    elif saved == requested and type(saved) is type(requested):
        return []
    elif isinstance(saved, (int, float)) and isinstance(requested, (int, float)) and \
            not isinstance(saved, bool) and not isinstance(requested, bool) and saved == requested:
        return []
    return [f"{prefix or 'config'}: saved {saved!r}, requested {requested!r}"]


def check_config(saved: dict, requested: dict, path="checkpoint") -> None:
    """Raise ValueError (one line) if two configs differ, naming the first differences.

    Used on resume and when a checkpoint is loaded into a given network.
    """
    diff = config_diff(saved, requested)
    if diff:
        more = f" (and {len(diff) - 3} more)" if len(diff) > 3 else ""
        raise ValueError(f"{path}: config does not match the requested one: " + "; ".join(diff[:3]) + more)
