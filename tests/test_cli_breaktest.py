"""CLI defects found by a break-test, each pinned by a test that failed before its fix.

1. ``likelihood`` reaches the library's ``steps`` / ``time_variable`` / ``step_control``
   (a fixed-grid ``--ode-method`` such as rk4 needed ``steps`` and could not get it);
2. ``--device meta`` is refused at parse time by every command (sample and likelihood printed
   torch's "Cannot copy out of meta tensor");
3. ``sample --out dir/`` (or an existing folder) writes inside the folder, not ``dir.npz`` beside it;
4. array input: ``--key`` on a .npy, a truncated .npy, a corrupt .npz and ``--layout nhwc`` on
   an (n, H, W) array are named errors; ``--help`` has no "(default: ...) (default: None)";
5. docs/training.md's ``load_score_model`` results do not rebind the example's ``sde`` / ``config``.

One 5-step two_moons run (module fixture, a second or two) serves the commands.
"""
import ast
import json
import re
import textwrap
from pathlib import Path

import numpy as np
import pytest

import scoresde
from scoresde.cli import main
from scoresde.cli.common import load_data

ROOT = Path(__file__).resolve().parents[1]


def _last_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and " error: " in err[0], err
    return err[0]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("breaktest") / "run"
    assert main(["train", "--data", "two_moons", "--out", str(out), "--hidden", "16", "--layers", "1",
                 "--batch-size", "32", "--steps", "5", "--quiet"]) == 0
    return out


# ------------------------------------------------------------------ 1. likelihood options
def test_likelihood_passes_steps_time_variable_and_step_control(run, tmp_path, monkeypatch):
    seen = []
    real = scoresde.log_likelihood

    def spy(*a, **kw):
        seen.append({k: kw.get(k) for k in ("method", "steps", "time_variable", "step_control")})
        return real(*a, **kw)

    monkeypatch.setattr(scoresde, "log_likelihood", spy)
    out = tmp_path / "rk4.json"
    assert main(["likelihood", str(run), "-n", "8", "--ode-method", "rk4", "--steps", "3", "--time-variable",
                 "lambda", "--out", str(out), "--quiet"]) == 0
    assert seen == [{"method": "rk4", "steps": 3, "time_variable": "lambda", "step_control": "batch"}]
    res = json.loads(out.read_text())
    assert res["steps"] == 3 and res["time_variable"] == "lambda" and res["ode_method"] == "rk4"
    assert res["nfe_per_solve"][0] >= 3 * 4  # rk4: four evaluations per step
    seen.clear()
    out = tmp_path / "ps.json"
    assert main(["likelihood", str(run), "-n", "8", "--step-control", "per_sample", "--rtol", "1e-2", "--atol",
                 "1e-2", "--out", str(out), "--quiet"]) == 0
    assert seen == [{"method": "dopri5", "steps": None, "time_variable": "t", "step_control": "per_sample"}]
    assert json.loads(out.read_text())["step_control"] == "per_sample"


def test_likelihood_takes_the_multistep_methods(run, tmp_path, capsys):
    out = tmp_path / "ms.json"
    assert main(["likelihood", str(run), "-n", "8", "--ode-method", "dpmpp_2m", "--steps", "6", "--time-variable",
                 "lambda", "--out", str(out), "--quiet"]) == 0
    res = json.loads(out.read_text())
    assert res["ode_method"] == "dpmpp_2m" and res["nfe_per_solve"][0] == 7  # steps + 1 evaluations
    assert main(["likelihood", str(run), "-n", "8", "--ode-method", "dpmpp_3m", "--out", str(out), "--quiet"]) == 1
    assert "needs --steps" in _last_error(capsys)
    # a typo is an unknown method (it used to read as an adaptive one: "chooses its steps from --rtol")
    assert main(["likelihood", str(run), "-n", "8", "--ode-method", "dpmpp_4m", "--steps", "40", "--out", str(out),
                 "--quiet"]) == 1
    assert "dpmpp_4m" in (e := _last_error(capsys)) and "dpmpp_2m" in e and "rtol" not in e
    # the t grid's first step is too long for the VP SDE: refused with the fix in the message
    assert main(["likelihood", str(run), "-n", "8", "--ode-method", "dpmpp_2m", "--steps", "40", "--out", str(out),
                 "--quiet"]) == 1
    assert "time_variable='lambda'" in _last_error(capsys)


def test_likelihood_steps_errors_before_any_work(run, tmp_path, capsys):
    out = tmp_path / "l.json"
    base = ["likelihood", str(run), "-n", "8", "--out", str(out), "--quiet"]
    assert main([*base, "--ode-method", "rk4"]) == 1
    assert "fixed-grid" in (e := _last_error(capsys)) and "--steps" in e
    assert main([*base, "--steps", "4"]) == 1
    assert "--steps applies to the fixed-grid" in _last_error(capsys)
    assert main([*base, "--time-variable", "x"]) == 2
    assert "--time-variable" in _last_error(capsys)
    assert main([*base, "--step-control", "x"]) == 2
    assert "--step-control" in _last_error(capsys)
    assert not out.exists()


# ------------------------------------------------------------------ 2. --device meta
@pytest.mark.parametrize("command", ["train", "sample", "likelihood", "compare", "inpaint"])
def test_meta_device_is_refused_by_every_command(command, tmp_path, capsys):
    argv = ["train", "--out", str(tmp_path / "o")] if command == "train" else [command, str(tmp_path)]
    assert main([*argv, "--device", "meta"]) == 2
    err = _last_error(capsys)
    assert "--device" in err and "'meta' holds no values" in err and "Cannot copy" not in err
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ 3. sample --out a folder
def test_sample_out_folder_writes_inside_it(run, tmp_path, capsys):
    base = ["sample", str(run), "--method", "euler_maruyama", "--steps", "2", "-n", "4", "--quiet"]
    assert main([*base, "--out", str(tmp_path / "new") + "/"]) == 0  # a trailing slash: a folder, created
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["samples.npz", "samples.png"]
    assert not (tmp_path / "new.npz").exists() and not (tmp_path / "new.png").exists()
    (tmp_path / "old").mkdir()
    assert main([*base, "--out", str(tmp_path / "old")]) == 0  # an existing folder, without the slash
    assert sorted(p.name for p in (tmp_path / "old").iterdir()) == ["samples.npz", "samples.png"]
    assert main([*base, "--out", str(tmp_path / "stem")]) == 0  # a stem: as before
    assert (tmp_path / "stem.npz").is_file() and (tmp_path / "stem.png").is_file()
    assert main(["sample", "--help"]) == 0
    assert "<out>/samples.npz" in " ".join(capsys.readouterr().out.split())


def test_inpaint_out_folder_is_its_default_stem_inside(tmp_path, capsys):
    from scoresde.cli.outputs import output_pair
    assert main(["inpaint", "--help"]) == 0
    assert "<out>/inpaint.npz" in " ".join(capsys.readouterr().out.split())
    assert output_pair(str(tmp_path), "inpaint") == (tmp_path / "inpaint.npz", tmp_path / "inpaint.png")
    assert output_pair(str(tmp_path / "a") + "/", "inpaint")[1] == tmp_path / "a" / "inpaint.png"
    assert output_pair(str(tmp_path / "b"), "inpaint")[0] == tmp_path / "b.npz"


# ------------------------------------------------------------------ 4. array input
def test_key_on_a_npy_is_an_error(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((4, 2), np.float32))
    with pytest.raises(ValueError, match=r"--key applies to \.npz files; .*x\.npy is a \.npy"):
        load_data(str(tmp_path / "x.npy"), key="x")


def test_truncated_npy_and_corrupt_npz_are_named(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((10, 8, 8), np.uint8))
    cut = tmp_path / "cut.npy"
    cut.write_bytes((tmp_path / "a.npy").read_bytes()[:200])
    with pytest.raises(ValueError) as e:
        load_data(str(cut))
    assert str(cut) in str(e.value) and "truncated" in str(e.value) and "object arrays" not in str(e.value)
    np.savez(tmp_path / "a.npz", x=np.zeros((10, 8, 8), np.uint8))
    blob = (tmp_path / "a.npz").read_bytes()
    for name, data in (("half.npz", blob[:len(blob) // 2]), ("junk.npz", b"garbage" * 10)):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError) as e:
            load_data(str(tmp_path / name))
        assert str(tmp_path / name) in str(e.value), e.value


def test_layout_nhwc_on_gray_images_is_an_error(tmp_path):
    np.save(tmp_path / "g.npy", np.zeros((5, 8, 8), np.uint8))
    with pytest.raises(ValueError, match=r"--layout nhwc on the 3-D shape \(5, 8, 8\)"):
        load_data(str(tmp_path / "g.npy"), layout="nhwc")
    assert load_data(str(tmp_path / "g.npy")).shape == (1, 8, 8)  # n gray images, as without --layout
    assert load_data(str(tmp_path / "g.npy"), layout="nchw").shape == (1, 8, 8)
    np.save(tmp_path / "rgb.npy", np.zeros((8, 8, 3), np.uint8))  # one (H, W, 3) image: nhwc still reads it
    assert load_data(str(tmp_path / "rgb.npy"), layout="nhwc").shape == (3, 8, 8)


def test_help_has_no_double_default(capsys):
    for cmd in ("train", "train-classifier", "sample", "inpaint", "likelihood", "compare", "demo"):
        assert main([cmd, "--help"]) == 0
        text = " ".join(capsys.readouterr().out.split())
        assert not re.search(r"\(default:[^()]*(\([^()]*\))?[^()]*\) \(default: None\)", text), cmd
        assert "(default:" in text, cmd


# ------------------------------------------------------------------ 5. docs/training.md
def test_training_doc_does_not_rebind_the_example_names():
    """The names that load_score_model's results are bound to were not bound earlier on the page
    (a rebound ``config`` made the example's own ``train(..., config)`` fail on its keys)."""
    text = (ROOT / "docs" / "training.md").read_text()
    bound = set()
    for block in re.findall(r"```python\n(.*?)```", text, re.S):
        tree = ast.parse(textwrap.dedent(block))
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign):
                names = {t.id for tgt in node.targets for t in ast.walk(tgt) if isinstance(t, ast.Name)}
                call = node.value
                if isinstance(call, ast.Call) and getattr(call.func, "id", None) == "load_score_model":
                    assert not names & bound, (names & bound, ast.unparse(node))
                bound |= names
