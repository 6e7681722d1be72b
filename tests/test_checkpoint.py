"""Checkpoint files: atomic writes, weights-only loading, one-line errors (issue 6, bad input).

Numbers checked: a write killed (SIGKILL) mid-write or just before the rename leaves the previous
checkpoint loadable and byte-identical under the checkpoint name (issue 6).
"""
import os
import re
import signal
import struct
import subprocess
import sys
import warnings
import zipfile

import pytest
import torch

from scoresde.checkpoint import (FORMAT, CheckpointError, CheckpointWarning, check_config, check_writable,
                                 config_diff, load_checkpoint, save_checkpoint)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _state(v=1.0):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.ones(2))], lr=0.1)
    return {"step": 3, "model": {"w": torch.full((3,), v)}, "optimizer": opt.state_dict(),
            "config": {"sde": {"sde": "VPSDE", "N": 1000}, "betas": [0.9, 0.999], "none": None},
            "rng": {"torch": torch.get_rng_state()}}


def test_round_trip_weights_only(tmp_path):
    p = save_checkpoint(tmp_path / "c.pt", _state(2.0))
    s = load_checkpoint(p)
    assert s["format"] == FORMAT and s["version"] == 1 and isinstance(s["torch_version"], str)
    assert torch.equal(s["model"]["w"], torch.full((3,), 2.0)) and s["config"]["none"] is None
    torch.load(p, weights_only=True)  # the file is loadable by the safe unpickler itself
    assert os.listdir(tmp_path) == ["c.pt"]  # no temporary file left
    mask = os.umask(0)
    os.umask(mask)
    assert os.stat(p).st_mode & 0o777 == 0o666 & ~mask  # ordinary permissions, not mkstemp's 0600


def test_non_plain_state_is_refused_and_old_file_kept(tmp_path):
    p = tmp_path / "c.pt"
    save_checkpoint(p, _state(1.0))
    raw = p.read_bytes()
    with pytest.raises(TypeError, match=r"state\['model'\]\['f'\] is a Fraction"):
        from fractions import Fraction
        save_checkpoint(p, {"model": {"f": Fraction(1, 2)}})
    assert p.read_bytes() == raw and os.listdir(tmp_path) == ["c.pt"]


@pytest.mark.parametrize("kind", ["random", "truncated", "empty", "text", "foreign", "unsafe", "newer"])
def test_corrupt_or_foreign_files_give_one_line_errors(tmp_path, kind):
    good = tmp_path / "good.pt"
    save_checkpoint(good, _state())
    p = tmp_path / "bad.pt"
    if kind == "random":
        p.write_bytes(bytes(range(256)) * 8)
    elif kind == "truncated":
        p.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif kind == "empty":
        p.write_bytes(b"")
    elif kind == "text":
        p.write_text("hello")
    elif kind == "foreign":
        torch.save({"state_dict": {"w": torch.ones(2)}}, p)
    elif kind == "unsafe":
        from fractions import Fraction
        torch.save({"format": FORMAT, "x": Fraction(1, 3)}, p)
    else:
        torch.save({"format": FORMAT, "version": 99}, p)
    expected = {"random": "not a readable checkpoint", "truncated": "not a readable checkpoint",
                "empty": "not a readable checkpoint", "text": "not a readable checkpoint",
                "foreign": "not a scoresde checkpoint", "unsafe": "unsafe to load", "newer": "version 99"}[kind]
    with pytest.raises(ValueError, match=expected) as e:
        load_checkpoint(p)
    assert "\n" not in str(e.value) and str(p) in str(e.value)


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("true",))


def test_pickled_code_is_reported_unsafe(tmp_path):
    # break-test: torch 2.13 words the refusal "Trying to load unsupported GLOBAL posix.system ...";
    # it was reported as a corrupt file instead of "unsafe to load"
    p = tmp_path / "evil.pt"
    torch.save({"x": _RunsCode()}, p)
    with pytest.raises(ValueError, match=r"unsafe to load \((posix|nt)\.system") as e:
        load_checkpoint(p)
    assert "\n" not in str(e.value)


def test_save_to_a_folder_is_a_clear_error(tmp_path):
    # break-test: IsADirectoryError from os.replace; the folder is left as it was
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match="is a folder; give a file name"):
        save_checkpoint(tmp_path, _state())
    assert os.listdir(tmp_path) == ["keep.txt"]


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        load_checkpoint("/nonexistent/c.pt")


_KILLER = """
import importlib.util, io, os, signal, sys, torch
# the checkpoint module alone (it needs only torch), without importing the whole package
spec = importlib.util.spec_from_file_location("ck", os.path.join({root!r}, "scoresde", "checkpoint.py"))
ck = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ck)
path, mode = sys.argv[1], sys.argv[2]
if mode == "mid-write":
    real = torch.save
    def half(obj, f):
        buf = io.BytesIO(); real(obj, buf); data = buf.getvalue()
        f.write(data[: len(data) // 2]); f.flush(); os.fsync(f.fileno())
        os.kill(os.getpid(), signal.SIGKILL)
    torch.save = half
else:
    def die(a, b):
        os.kill(os.getpid(), signal.SIGKILL)
    os.replace = die
ck.save_checkpoint(path, {{"model": {{"w": torch.full((1000,), 7.0)}}, "step": 99}})
"""


@pytest.mark.parametrize("mode", ["mid-write", "before-rename"])
def test_killed_write_leaves_previous_checkpoint(tmp_path, mode):
    """Issue 6: SIGKILL during a save -> the previous file is intact under the name; next save cleans up."""
    p = tmp_path / "checkpoint.pt"
    save_checkpoint(p, _state(5.0))
    raw = p.read_bytes()
    script = tmp_path / "killer.py"
    script.write_text(_KILLER.format(root=ROOT))
    r = subprocess.run([sys.executable, str(script), str(p), mode], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert p.read_bytes() == raw
    assert torch.equal(load_checkpoint(p)["model"]["w"], torch.full((3,), 5.0))
    stale = [f for f in os.listdir(tmp_path) if f.startswith(".checkpoint.pt.tmp-")]
    assert len(stale) == 1  # the killed write's temporary file, never under the checkpoint name
    save_checkpoint(p, _state(6.0))
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.pt", "killer.py"]
    assert torch.equal(load_checkpoint(p)["model"]["w"], torch.full((3,), 6.0))


def test_unwritable_folder(tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    with pytest.raises(ValueError, match="is not writable") as e:
        check_writable(blocker / "sub")
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="is not writable"):
        save_checkpoint(blocker / "sub" / "c.pt", _state())
    if os.geteuid() != 0:  # root ignores permission bits
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            with pytest.raises(ValueError, match="is not writable"):
                check_writable(ro)
        finally:
            ro.chmod(0o700)
    assert check_writable(tmp_path / "new" / "deep") == str(tmp_path / "new" / "deep")


def test_config_diff_and_check():
    saved = {"sde": {"sde": "VPSDE", "beta_max": 20.0}, "net": {"hidden": 32, "layers": [1, 2]}, "a": 1}
    assert config_diff(saved, {"sde": {"sde": "VPSDE", "beta_max": 20}, "net": {"hidden": 32, "layers": (1, 2)},
                               "a": 1}) == []
    d = config_diff(saved, {"sde": {"sde": "VPSDE", "beta_max": 10.0}, "net": {"hidden": 64, "layers": [1, 2]},
                            "b": 2})
    assert d == ["a: saved 1, not in the requested config", "b: missing in checkpoint, requested 2",
                 "net.hidden: saved 32, requested 64", "sde.beta_max: saved 20.0, requested 10.0"]
    assert config_diff({"x": True}, {"x": 1}) == ["x: saved True, requested 1"]
    with pytest.raises(ValueError, match=r"c\.pt: config does not match .* \(and 1 more\)") as e:
        check_config(saved, {"sde": {"sde": "VPSDE", "beta_max": 10.0}, "net": {"hidden": 64, "layers": [1, 2]},
                             "b": 2}, "c.pt")
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------------ integrity (issue 10, item 2)
def _real_checkpoint(folder):
    """A checkpoint written by scoresde.train: model, EMA, Adam state, RNG state, config."""
    import scoresde
    from scoresde.data import toy
    from scoresde.models import MLP
    from scoresde.train import TrainConfig, train

    sde = scoresde.VPSDE()
    torch.manual_seed(0)
    model = scoresde.ScoreModel(MLP(2, hidden=8, num_layers=1, embed_dim=8), sde)
    res = train(model, sde, "dsm", toy("two_moons", 64),
                TrainConfig(steps=2, batch_size=8, quiet=True, log_every=1, out_dir=str(folder)))
    return res.checkpoint, res


def _tensor_records(path):
    """(name, byte offset, size) of every tensor data record in a torch.save zip file."""
    out = []
    with zipfile.ZipFile(path) as z, open(path, "rb") as f:
        for info in z.infolist():
            if re.fullmatch(r"[^/]+/data/\d+", info.filename) and info.file_size:
                assert info.compress_type == zipfile.ZIP_STORED  # torch stores records uncompressed
                f.seek(info.header_offset)
                head = f.read(30)  # the local file header; its name / extra lengths at bytes 26..29
                assert head[:4] == b"PK\x03\x04"
                name_len, extra_len = struct.unpack("<HH", head[26:30])
                out.append((info.filename, info.header_offset + 30 + name_len + extra_len, info.file_size))
    return out


def test_flipped_bit_in_every_tensor_record_is_a_checkpoint_error(tmp_path):
    """Before: one flipped exponent bit in any record loaded silently (72 of 72). After: each is named."""
    path, _ = _real_checkpoint(tmp_path / "run")
    raw = open(path, "rb").read()
    records = _tensor_records(path)
    assert len(records) >= 20  # model, EMA, Adam moments, step counters, RNG state
    bad = tmp_path / "flipped.pt"
    named = set()
    for name, offset, size in records:
        data = bytearray(raw)
        # byte 2, bit 7 of the first element: the lowest exponent bit of a little-endian float32
        # (the value doubles or halves, staying finite); another bit for shorter records
        pos, mask = (offset + 2, 0x80) if size >= 4 else (offset, 0x01)
        data[pos] ^= mask
        bad.write_bytes(bytes(data))
        # torch.load itself reads the damaged file without complaint (it checks no CRC)
        with pytest.raises(CheckpointError) as e:
            load_checkpoint(bad)
        msg = str(e.value)
        assert "\n" not in msg and str(bad) in msg, msg
        m = re.search(r"tensor (state\[.+?\]) does not match the sha256 digest", msg)
        assert m, (name, msg)
        named.add(m.group(1))
    assert any("['ema']" in n for n in named) and any("['model']" in n for n in named)
    assert any("['optimizer']" in n for n in named) and any("['rng']" in n for n in named)


def test_untouched_file_loads_bit_identically(tmp_path):
    path, res = _real_checkpoint(tmp_path / "run")
    raw = open(path, "rb").read()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning for a file with digests
        state = load_checkpoint(path)
    assert open(path, "rb").read() == raw and "digests" not in state
    for name, ref in [("model", res.model.state_dict())]:
        assert list(state[name]) == list(ref)
        for k, v in ref.items():
            assert state[name][k].dtype == v.dtype and torch.equal(state[name][k], v), k
    plain = torch.load(path, weights_only=True)
    assert set(plain) == set(state) | {"digests"}
    for k in ("ema", "optimizer", "rng"):
        assert repr(plain[k]) == repr(state[k])


def test_old_format_file_without_digests_loads_with_a_warning(tmp_path):
    p = tmp_path / "old.pt"
    old = {"format": FORMAT, "version": 1, "torch_version": str(torch.__version__), **_state(3.0)}
    torch.save(old, p)  # what save_checkpoint wrote before digests were added
    with pytest.warns(CheckpointWarning, match="no tensor digests") as rec:
        s = load_checkpoint(p)
    assert str(p) in str(rec[0].message)
    assert torch.equal(s["model"]["w"], torch.full((3,), 3.0)) and s["step"] == 3


def test_non_finite_weights_are_refused(tmp_path):
    for value, key in ((float("nan"), "model"), (float("inf"), "ema")):
        st = _state()
        st[key] = {"module.w": torch.tensor([1.0, value, 2.0])} if key == "ema" else {"w": torch.tensor([value])}
        p = save_checkpoint(tmp_path / f"{key}.pt", st)  # digests are valid: the weights were saved so
        with pytest.raises(CheckpointError, match=rf"non-finite weights: state\['{key}'\]\['(module\.)?w'\] "
                                                  r"has 1 NaN / inf"):
            load_checkpoint(p)
    old = tmp_path / "old.pt"  # also without digests
    torch.save({"format": FORMAT, "version": 1, "model": {"w": torch.tensor([float("inf")])}}, old)
    with pytest.warns(CheckpointWarning), pytest.raises(CheckpointError, match="non-finite"):
        load_checkpoint(old)


def test_changed_non_tensor_content_is_detected(tmp_path):
    p = save_checkpoint(tmp_path / "c.pt", _state())
    raw = torch.load(p, weights_only=True)
    raw["step"] = 4  # e.g. a flip inside the pickle that still unpickles
    torch.save(raw, p)
    with pytest.raises(CheckpointError, match="non-tensor content"):
        load_checkpoint(p)
    raw = torch.load(p, weights_only=True)
    raw["step"] = 3
    raw["model"]["extra"] = torch.zeros(1)
    torch.save(raw, p)
    with pytest.raises(CheckpointError, match=r"tensor state\['model'\]\['extra'\] has no stored digest"):
        load_checkpoint(p)
    with pytest.raises(ValueError, match="reserved"):
        save_checkpoint(tmp_path / "d.pt", {"digests": {}})
