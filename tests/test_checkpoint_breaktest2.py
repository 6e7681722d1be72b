"""Break-test (round 2) of checkpoints, run folders and resuming: each bad input is a one-line
exception naming the file or argument, nothing garbage is loaded, no temporary file is left.

The bad checkpoints are written with ``save_checkpoint`` so that their digests are valid: only the
content is wrong, as a bug or a foreign writer would make it.
"""
import json
import os

import pytest
import torch

import scoresde
from scoresde.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from scoresde.data import toy
from scoresde.models import MLP
from scoresde.runs import _read_log, _write_json, load_score_model
from scoresde.train import TrainConfig, train
from scoresde.train_state import _set_rng_state

HEADER = ("format", "version", "torch_version")
W = "net.layers.0.weight"


def _run(out, steps=2):
    sde = scoresde.VPSDE()
    torch.manual_seed(0)
    model = scoresde.ScoreModel(MLP(2, hidden=8, num_layers=2, embed_dim=8), sde)
    cfg = TrainConfig(steps=steps, batch_size=16, warmup=0, eval_every=0, log_every=0, checkpoint_every=2,
                      out_dir=str(out), quiet=True)
    return train(model, sde, "dsm", toy("two_moons", 64), cfg)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    _run(out)
    return out


def _state(run_dir):
    s = load_checkpoint(run_dir / "checkpoint.pt")
    for k in HEADER:
        s.pop(k)
    return s


def _rewrite(run_dir, tmp_path, change, name="checkpoint.pt"):
    """A copy of the run's checkpoint with ``change`` applied, saved with valid digests."""
    s = _state(run_dir)
    change(s)
    return save_checkpoint(tmp_path / name, s)


# ------------------------------------------------------------------------------ save_checkpoint
@pytest.mark.parametrize("key, value", [("format", "x"), ("version", 99), ("torch_version", "0.1")])
def test_reserved_header_keys_are_refused_at_save(tmp_path, key, value):
    with pytest.raises(ValueError, match=f"state key '{key}' is reserved"):
        save_checkpoint(tmp_path / "c.pt", {key: value, "step": 1})
    assert os.listdir(tmp_path) == []  # nothing written, no temporary file


def test_sparse_tensor_is_a_type_error_naming_it(tmp_path):
    with pytest.raises(TypeError, match=r"state\['a'\] is a tensor with layout torch.sparse_coo"):
        save_checkpoint(tmp_path / "c.pt", {"a": torch.eye(3).to_sparse()})
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------------------ load_checkpoint
def test_folder_and_empty_file_messages(tmp_path):
    with pytest.raises(ValueError, match="is a folder, not a checkpoint file") as e:
        load_checkpoint(tmp_path)
    assert str(tmp_path) in str(e.value)
    p = tmp_path / "empty.pt"
    p.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"the file is empty") as e:
        load_checkpoint(p)
    assert str(p) in str(e.value) and "EOFError" not in str(e.value)


@pytest.mark.parametrize("loc, err, fragment", [
    ("foo", ValueError, "map_location 'foo' is not a device torch knows"),
    ("meta", ValueError, "map_location 'meta' is not supported"),
    (3, TypeError, "map_location is a int"),
    ({"cpu": "foo"}, ValueError, "loads on the CPU but not with map_location"),
])
def test_bad_map_location_is_blamed_not_the_file(run_dir, loc, err, fragment):
    with pytest.raises(err, match=fragment) as e:
        load_checkpoint(run_dir / "checkpoint.pt", map_location=loc)
    assert not isinstance(e.value, CheckpointError) and "\n" not in str(e.value)
    assert "a torch.device or a device string" in str(e.value)  # what is allowed


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_unavailable_device_is_blamed_not_the_file(run_dir):
    with pytest.raises(ValueError, match="map_location 'cuda'.*no cuda device") as e:
        load_checkpoint(run_dir / "checkpoint.pt", map_location="cuda")
    assert not isinstance(e.value, CheckpointError)


@pytest.mark.parametrize("loc", [None, "cpu", "cpu:0", torch.device("cpu"), {"cpu": "cpu"},
                                 lambda storage, where: storage])
def test_accepted_map_locations_still_load(run_dir, loc):
    assert load_checkpoint(run_dir / "checkpoint.pt", map_location=loc)["step"] == 2
    m, _, _ = load_score_model(run_dir, map_location=loc, quiet=True)
    assert next(m.parameters()).device.type == "cpu"


# ------------------------------------------------------------------------------ load_score_model
def _no(*keys):
    def change(s):
        d = s["config"]
        for k in keys[:-1]:
            d = d[k]
        del d[keys[-1]]
    return change


@pytest.mark.parametrize("change, fragment", [
    (_no("model", "net"), "stored config 'model' has no 'net' entry"),
    (_no("model", "prediction"), "stored config 'model' has no 'prediction' entry"),
    (lambda s: s["config"]["sde"].update(zzz=1), "stored config 'sde' cannot be used .*zzz"),
    (lambda s: s["config"]["model"]["net"].update(zzz=1), "stored config 'model.net' cannot be used .*zzz"),
    (lambda s: s["config"]["model"].update(prediction="zzz"), "stored config 'model' cannot be used .*zzz"),
    (lambda s: s.update(step="ten"), "'step' entry is 'ten'; expected an integer"),
])
def test_bad_stored_config_names_file_and_field(run_dir, tmp_path, change, fragment):
    p = _rewrite(run_dir, tmp_path, change)
    with pytest.raises(ValueError, match=fragment) as e:
        load_score_model(p, quiet=True)
    assert str(e.value).startswith(p) and "\n" not in str(e.value)


@pytest.mark.parametrize("dtype", [torch.int64, torch.complex64, torch.bool])
@pytest.mark.parametrize("use_ema", [True, False])
def test_non_floating_weights_are_refused(run_dir, tmp_path, dtype, use_ema):
    def change(s):
        for key in ("ema", "model"):
            k = ("module." if key == "ema" else "") + W
            s[key][k] = (s[key][k] * 100).to(dtype)
    p = _rewrite(run_dir, tmp_path, change)
    with pytest.raises(ValueError, match=rf"do not fit the network \(tensor '{W}' is {dtype}") as e:
        load_score_model(p, quiet=True, use_ema=use_ema)
    assert str(e.value).startswith(p)


# ------------------------------------------------------------------------------ resuming
def _resume_case(run_dir, tmp_path, change):
    out = tmp_path / "run"
    out.mkdir()
    for name in ("config.json", "log.jsonl"):
        if (run_dir / name).exists():
            (out / name).write_bytes((run_dir / name).read_bytes())
    p = _rewrite(run_dir, out, change)
    return out, p


@pytest.mark.parametrize("change, fragment", [
    (lambda s: s["optimizer"]["state"][0].update(exp_avg=torch.zeros(3)),
     "optimizer / EMA state does not fit the model: the optimizer state of parameter 0 mixes shapes"),
    (lambda s: s["optimizer"]["state"][0].update(exp_avg=torch.zeros(3), exp_avg_sq=torch.zeros(3)),
     "optimizer / EMA state does not fit the model: the optimizer state of parameter 0 has shape"),
    (lambda s: s["ema"].update({"module." + W: s["ema"]["module." + W].long()}),
     f"optimizer / EMA state does not fit the model: EMA tensor 'module.{W}' is torch.int64"),
    (lambda s: s.update(rng={"torch": torch.zeros(3, dtype=torch.uint8)}),
     r"the saved RNG state does not fit this torch: rng\['torch'\] is a torch.uint8 tensor of shape \(3,\)"),
])
def test_inconsistent_resume_state_is_refused_before_training(run_dir, tmp_path, change, fragment):
    out, p = _resume_case(run_dir, tmp_path, change)
    raw = open(p, "rb").read()
    with pytest.raises(ValueError, match=fragment) as e:
        _run(out, steps=4)
    assert str(e.value).startswith(p) and "\n" not in str(e.value)
    assert open(p, "rb").read() == raw  # the checkpoint is kept as it was


def test_set_rng_state_error_is_wrapped():
    with pytest.raises(ValueError, match="the saved RNG state does not fit this torch"):
        _set_rng_state({"torch": torch.zeros(3, dtype=torch.uint8)}, torch.device("cpu"))


# ------------------------------------------------------------------------------ run folder files
def test_write_json_failure_leaves_no_temp_file(tmp_path):
    p = tmp_path / "config.json"
    _write_json(str(p), {"a": 1})
    with pytest.raises(TypeError, match="config.json: cannot be written as JSON") as e:
        _write_json(str(p), {"a": object()})
    assert str(p) in str(e.value)
    assert json.loads(p.read_text()) == {"a": 1} and os.listdir(tmp_path) == ["config.json"]


@pytest.mark.parametrize("line, fragment", [("[1, 2]", "it is a JSON list"), ('"str"', "it is a JSON str"),
                                            ('{"step": "x"}', "its 'step' is 'x'")])
def test_log_line_that_is_not_a_record(tmp_path, line, fragment):
    p = tmp_path / "log.jsonl"
    text = '{"step": 1, "loss": 1.0}\n' + line + '\n{"step": 9, "loss": 1.0}\n'
    p.write_text(text)
    with pytest.raises(ValueError, match=f"log.jsonl: line 2 is not a log record \\({fragment}") as e:
        _read_log(str(p), 5)
    assert str(p) in str(e.value)
    assert p.read_text() == text and os.listdir(tmp_path) == ["log.jsonl"]


def test_log_cut_still_drops_late_and_torn_lines(tmp_path):
    p = tmp_path / "log.jsonl"
    p.write_text('{"step": 1}\n{"step": 2}\n{"step": 3}\n{"ste')
    _read_log(str(p), 2)
    assert p.read_text() == '{"step": 1}\n{"step": 2}\n' and os.listdir(tmp_path) == ["log.jsonl"]
