"""Atomic, safe-to-load checkpoint files.

A checkpoint is one ``torch.save`` file holding only tensors, dicts, lists, tuples, numbers,
strings, booleans and None, so that it loads with ``torch.load(weights_only=True)``: loading a
file never runs code from it. Writing goes to a temporary file in the same folder, which is
flushed and fsync'ed and then renamed over the target with ``os.replace`` (atomic on POSIX and
Windows), so the checkpoint name always holds either the previous complete file or the new
complete file, never a partial one, even if the process is killed mid-write.

Layout written by :func:`save_checkpoint` (the training loop fills it, see ``scoresde.train``):
    {"format": "scoresde-checkpoint", "version": 1, "torch_version": str, ...the caller's keys,
     "digests": {"algorithm": "sha256", "tensors": {entry: hex}, "structure": hex}}

Integrity: "digests" holds the sha256 of every tensor (its dtype, shape and raw bytes, keyed by
its location such as ``state['ema']['module.net.mlp.0.weight']``) and of everything else (the
nesting, keys, numbers and strings). :func:`load_checkpoint` recomputes them and raises
:class:`CheckpointError` naming the file and the first entry that differs, so a bit flipped on
disk (torch's zip records carry no checksum that ``torch.load`` verifies) is an error instead of
weights of size 1e37. It also refuses NaN / inf in the weights ("model", "ema"). Files without
"digests" (written by scoresde before digests were added) still load, with a
:class:`CheckpointWarning` that their integrity cannot be checked.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import re
import tempfile
import warnings
import zipfile

import torch

FORMAT = "scoresde-checkpoint"
VERSION = 1
DIGEST_KEY = "digests"
#: the header keys save_checkpoint writes itself; a state holding one of them is refused
RESERVED_KEYS = ("format", "version", "torch_version", DIGEST_KEY)
#: the entries whose floating tensors must be finite on load (the online and EMA weights)
WEIGHT_KEYS = ("model", "ema")
_PLAIN = (int, float, bool, str, type(None))


class CheckpointError(ValueError):
    """A checkpoint file that cannot be trusted: corrupt, truncated, foreign, unsafe, a newer
    format, a tensor that does not match its stored digest, or non-finite weights. The message
    is one line naming the file (and, for a digest mismatch, the first bad entry)."""


class CheckpointWarning(UserWarning):
    """A checkpoint loaded without an integrity check (it was written without digests)."""


def _tensor_digest(t: torch.Tensor) -> str:
    """sha256 of a tensor's dtype, shape and raw (C-contiguous, CPU) bytes."""
    h = hashlib.sha256(f"{t.dtype}|{tuple(t.shape)}|".encode())
    if t.numel():
        flat = t.detach().resolve_conj().resolve_neg().cpu().contiguous().reshape(-1)
        h.update(memoryview(flat.view(torch.uint8).numpy()))
    return h.hexdigest()


def _walk(obj, where: str, tensors: list, parts: list) -> None:
    """Collect (location, tensor) pairs and a canonical text of everything that is not a tensor."""
    if isinstance(obj, torch.Tensor):
        tensors.append((where, obj))
        parts.append("T")
    elif isinstance(obj, dict):
        parts.append("{")
        for k, v in obj.items():
            parts.append(f"{type(k).__name__}:{k!r}=")
            _walk(v, f"{where}[{k!r}]", tensors, parts)
            parts.append(",")
        parts.append("}")
    elif isinstance(obj, (list, tuple)):
        parts.append("[" if isinstance(obj, list) else "(")
        for i, v in enumerate(obj):
            _walk(v, f"{where}[{i}]", tensors, parts)
            parts.append(",")
        parts.append("]" if isinstance(obj, list) else ")")
    else:
        parts.append(f"{type(obj).__name__}:{obj!r}")


def state_digests(state: dict) -> dict:
    """The "digests" entry of a checkpoint: sha256 of every tensor and of the non-tensor content.

    Returns: {"algorithm": "sha256", "tensors": {location: hex}, "structure": hex}; locations
    read like ``state['model']['net.mlp.0.weight']``.
    """
    tensors, parts = [], []
    _walk(state, "state", tensors, parts)
    return {"algorithm": "sha256", "tensors": {w: _tensor_digest(t) for w, t in tensors},
            "structure": hashlib.sha256("".join(parts).encode()).hexdigest()}


def _verify(path: str, state: dict) -> None:
    """Raise CheckpointError unless ``state`` matches its digests and its weights are finite."""
    stored = state.pop(DIGEST_KEY, None)
    if stored is None:
        warnings.warn(f"{path} has no tensor digests (written by an older scoresde): its integrity cannot be "
                      "checked; save it again (e.g. resume training) to add them", CheckpointWarning, stacklevel=3)
    else:
        if not (isinstance(stored, dict) and stored.get("algorithm") == "sha256"
                and isinstance(stored.get("tensors"), dict) and isinstance(stored.get("structure"), str)):
            raise CheckpointError(f"{path} is corrupt: its '{DIGEST_KEY}' entry is damaged")
        tensors, parts = [], []
        _walk(state, "state", tensors, parts)
        want = stored["tensors"]
        for where, t in tensors:
            if where not in want:
                raise CheckpointError(f"{path} is corrupt: tensor {where} has no stored digest (first bad entry)")
            if _tensor_digest(t) != want[where]:
                raise CheckpointError(f"{path} is corrupt: tensor {where} does not match the sha256 digest stored "
                                      "when the file was written (first bad entry)")
        found = {w for w, _ in tensors}
        missing = [w for w in want if w not in found]
        if missing:
            raise CheckpointError(f"{path} is corrupt: tensor {missing[0]} is missing (first bad entry)")
        if hashlib.sha256("".join(parts).encode()).hexdigest() != stored["structure"]:
            raise CheckpointError(f"{path} is corrupt: its non-tensor content (step, config, keys) does not match "
                                  "the sha256 digest stored when the file was written")
    tensors = []
    for key in WEIGHT_KEYS:
        if key in state:
            _walk(state[key], f"state[{key!r}]", tensors, [])
    for where, t in tensors:
        if t.is_floating_point() or t.is_complex():
            bad = int((~torch.isfinite(t)).sum())
            if bad:
                raise CheckpointError(f"{path} holds non-finite weights: {where} has {bad} NaN / inf value(s) of "
                                      f"{t.numel()}")


def _check_plain(obj, where: str = "state") -> None:
    """Raise TypeError unless obj is made of dense tensors, dicts, lists, tuples and plain scalars."""
    if isinstance(obj, torch.Tensor):
        if obj.layout != torch.strided:
            raise TypeError(f"{where} is a tensor with layout {obj.layout}; a checkpoint may hold only dense "
                            "(strided) tensors: convert it with .to_dense()")
        if obj.device.type == "meta":
            raise TypeError(f"{where} is a tensor on the meta device (it has no data); a checkpoint needs real "
                            "tensors")
        return
    if type(obj) in _PLAIN:
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


def atomic_write(path: str, write) -> None:
    """Write a file atomically: ``write(f)`` into a temporary file (binary) beside ``path``, fsync'ed,
    renamed over ``path``, the folder fsync'ed. On any error (or a kill) the temporary file is
    removed (its name starts with ``.<name>.tmp-``) and ``path`` is left as it was.

    Arguments:
        path: the destination (its folder must exist). write: callable taking the open binary file.
    Raises:
        whatever ``write`` or the file system raises (OSError for a full disk), after the clean-up.
    """
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), dir=folder)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file ordinary permissions
        with os.fdopen(fd, "wb") as f:
            write(f)
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
            "version" and "torch_version" are added, and "digests" (:func:`state_digests`, the
            sha256 of every tensor and of the rest), which :func:`load_checkpoint` verifies.
    Returns: the absolute path written.
    Raises:
        TypeError: state is not a dict or holds another kind of object, a sparse (non-strided)
            or meta tensor (named with its location).
        ValueError: ``path`` is an existing folder (give a file name in it, e.g.
            ``<folder>/checkpoint.pt``); the folder is not writable; state holds one of the
            reserved keys "format", "version", "torch_version", "digests" (save_checkpoint
            writes them; pop them from a state returned by :func:`load_checkpoint`).
        OSError: the write itself failed (e.g. disk full); ``path`` is left as it was.
    """
    path = os.path.abspath(os.fspath(path))
    if os.path.isdir(path):
        raise ValueError(f"checkpoint path {path} is a folder; give a file name, e.g. "
                         f"{os.path.join(path, 'checkpoint.pt')}")
    if not isinstance(state, dict):
        raise TypeError(f"state must be a dict; got {type(state).__name__}")
    for key in RESERVED_KEYS:
        if key in state:
            raise ValueError(f"state key {key!r} is reserved (save_checkpoint adds it); the reserved keys are "
                             f"{list(RESERVED_KEYS)}: pop them from a state returned by load_checkpoint")
    full = {"format": FORMAT, "version": VERSION, "torch_version": str(torch.__version__), **state}
    _check_plain(full)
    full[DIGEST_KEY] = state_digests(full)
    folder = os.path.dirname(path)
    check_writable(folder)
    atomic_write(path, lambda f: torch.save(full, f))
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
    if not text.strip():
        return type(e).__name__
    m = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    line = m.group(1) if m else next((ln for ln in text.splitlines() if ln.strip()), type(e).__name__)
    line = line.strip().split(". ")[0][:120]
    return line if len(line) >= 20 else f"{type(e).__name__}: {line}".rstrip(": ")


_MAP_LOCATION_HELP = ("give a torch.device or a device string torch accepts ('cpu', 'cuda', 'cuda:0', ...), a dict "
                      "mapping saved locations to such strings, a callable (see torch.load), or None")


def _check_map_location(map_location):
    """``map_location`` checked before anything is read, and normalised: 'cpu:N' becomes 'cpu'.

    Raises TypeError / ValueError (one line naming map_location and what is allowed).
    """
    if map_location is None or callable(map_location):
        return map_location
    if isinstance(map_location, dict):
        for k, v in map_location.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise TypeError(f"map_location dict entry {k!r}: {v!r} must map a str to a device string; "
                                + _MAP_LOCATION_HELP)
        return map_location
    if not isinstance(map_location, (str, torch.device)):
        raise TypeError(f"map_location is a {type(map_location).__name__}; " + _MAP_LOCATION_HELP)
    try:
        dev = torch.device(map_location)
    except (RuntimeError, ValueError):
        raise ValueError(f"map_location {map_location!r} is not a device torch knows; " + _MAP_LOCATION_HELP) from None
    if dev.type == "meta":
        raise ValueError("map_location 'meta' is not supported: a checkpoint's tensors are verified against their "
                         "digests, which needs their data; " + _MAP_LOCATION_HELP)
    if dev.type == "cpu":
        return "cpu"
    backend = torch.backends.mps if dev.type == "mps" else getattr(torch, dev.type, None)
    if callable(getattr(backend, "is_available", None)) and not backend.is_available():
        raise ValueError(f"map_location {map_location!r}: no {dev.type} device is available on this machine; "
                         "use 'cpu'")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"map_location {map_location!r}: this machine has {torch.cuda.device_count()} CUDA "
                         f"device(s) (indices 0..{torch.cuda.device_count() - 1})")
    return dev


def _blame_map_location(path: str, map_location, e: BaseException) -> None:
    """After a failed load to ``map_location``: raise ValueError naming map_location if the file
    itself loads on the CPU (the device was the problem, not the file)."""
    if map_location is None or map_location == "cpu":
        return
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - the file is at fault too: reported as a corrupt file
        return
    raise ValueError(f"{path} loads on the CPU but not with map_location {map_location!r} ({_reason(e)}); "
                     + _MAP_LOCATION_HELP) from None


def load_checkpoint(path, map_location="cpu") -> dict:
    """Load a checkpoint written by :func:`save_checkpoint`, with ``weights_only=True``.

    Arguments:
        path: the file.
        map_location: passed to ``torch.load`` (default "cpu"): a torch.device or a device
            string torch accepts ("cpu", "cuda", "cuda:0", ...; not "meta"), a dict mapping
            saved locations to device strings, a callable, or None.
    Returns: the state dict as saved (including "format", "version", "torch_version"; the
        verified "digests" entry is removed).
    Raises:
        FileNotFoundError: no such file.
        ValueError: ``path`` is a folder; ``map_location`` names a device torch does not know,
            "meta", or one this machine does not have, or the file loads on the CPU but not
            with ``map_location`` (one line naming map_location and the allowed values).
        TypeError: ``map_location`` is of another type.
        CheckpointError (a ValueError; one line naming the file): the file is corrupt or
            truncated, is not a torch file, holds objects other than tensors and plain containers
            (unsafe to load), is a torch file that is not a scoresde checkpoint (foreign), has a
            newer format version, has a tensor (named: the first bad entry) or other content
            that does not match the sha256 digests stored when it was written, or holds NaN /
            inf in its weights ("model", "ema").
    Warns:
        CheckpointWarning: the file has no digests (written before they were added); it is
        loaded without the integrity check.
    """
    path = os.fspath(path)
    map_location = _check_map_location(map_location)
    if os.path.isdir(path):
        raise ValueError(f"checkpoint path {path} is a folder, not a checkpoint file; give the file, e.g. "
                         f"{os.path.join(path, 'checkpoint.pt')}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such checkpoint file: {path}")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"{path} is not a readable checkpoint (the file is empty: 0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pickle-protocol notices from the weights-only unpickler
            state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        # torch < 2.13: "Unsupported global: GLOBAL mod.name ..."; torch 2.13: "Trying to load
        # unsupported GLOBAL posix.system whose module posix is blocked"
        unsafe = re.search(r"unsupported global:?\s*(?:GLOBAL\s+)?([\w.]+)", str(e), re.IGNORECASE)
        if unsafe:
            raise CheckpointError(f"{path} is not a scoresde checkpoint: it holds Python objects that are unsafe to "
                             f"load ({unsafe.group(1)}; refused by weights_only=True)") from None
        raise CheckpointError(f"{path} is not a readable checkpoint (corrupt, or not a torch file: {_reason(e)})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError, IndexError) as e:
        _blame_map_location(path, map_location, e)
        raise CheckpointError(f"{path} is not a readable checkpoint (corrupt or truncated file: {_reason(e)})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is a torch file but not a scoresde checkpoint (no 'format': {FORMAT!r} entry)")
    if not isinstance(state.get("version"), int) or state["version"] > VERSION:
        raise CheckpointError(f"{path} has checkpoint format version {state.get('version')!r}; this scoresde "
                              f"reads versions <= {VERSION}")
    _verify(path, state)
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
