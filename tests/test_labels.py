"""Labels through training (issue 12, item 1): labelled data sets, the null class, label dropout,
class-conditional ScoreModel calls, conditional training and its checkpoint, the CLI flags.

Numbers checked and their sources:
- digits: the 10 classes of ``sklearn.datasets.load_digits().target``, 178 182 177 183 181 182
  181 179 174 180 images of digits 0..9 (1 797 in all); the train / test split keeps the labels
  of the images it picks.
- label dropout: the number of labels mapped to the null class is Binomial(n, p); with n = 20 000
  and p = 0.1 the fraction must lie within 4 standard errors sqrt(p (1 - p) / n) = 0.0021 of p.
- null class: index num_classes, i.e. the last of num_classes + 1 embedding rows (the convention
  of scoresde.labels, after Ho & Salimans 2022).
"""
import numpy as np
import pytest
import torch

import scoresde
from scoresde.data import digits, digits_split, from_array, image_folder, load_dataset
from scoresde.labels import drop_labels
from scoresde.models import MLP, UNet

SMALL = dict(in_channels=1, image_size=8, ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=())


# ------------------------------------------------------------------------------------------ data
def test_digits_labels_are_the_ten_classes_with_their_counts():
    from sklearn.datasets import load_digits

    target = load_digits().target
    al, tr, te = digits("all"), digits("train"), digits("test")
    assert al.num_classes == tr.num_classes == te.num_classes == 10
    assert al.classes == [str(k) for k in range(10)]
    assert al.labels.dtype == torch.int64 and al.labels.shape == (1797,)
    assert torch.bincount(al.labels).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    assert torch.equal(tr.labels, torch.from_numpy(target[digits_split("train")]).long())
    assert torch.equal(te.labels, torch.from_numpy(target[digits_split("test")]).long())
    assert torch.bincount(tr.labels, minlength=10).sum() == 1500 and int(te.labels.max()) == 9
    assert "labels" not in tr.config()  # the stored data config of older runs is unchanged


def test_npz_labels_round_trip(tmp_path):
    rng = np.random.RandomState(0)
    x = rng.randint(0, 256, size=(12, 8, 8)).astype(np.uint8)
    y = rng.randint(0, 3, size=12)
    np.savez(tmp_path / "d.npz", images=x, labels=y)
    ds = from_array(tmp_path / "d.npz")  # the array named "labels" is the labels; the other one the data
    assert ds.shape == (1, 8, 8) and ds.num_classes == 3 and torch.equal(ds.labels, torch.from_numpy(y).long())
    again = load_dataset(ds.config())
    assert torch.equal(again.labels, ds.labels) and torch.equal(again.levels, ds.levels)
    np.savez(tmp_path / "e.npz", x=x, cls=y)
    ds2 = from_array(tmp_path / "e.npz", key="x", labels="cls", num_classes=5)
    assert ds2.num_classes == 5 and torch.equal(load_dataset(ds2.config()).labels, ds2.labels)
    assert load_dataset(ds2.config()).num_classes == 5
    assert from_array(tmp_path / "d.npz", key="images", labels=False).labels is None
    mem = from_array(x, labels=torch.from_numpy(y))
    assert torch.equal(mem.labels, torch.from_numpy(y).long()) and mem.config()["loader"] == "memory"
    with pytest.raises(ValueError, match="labels key"):
        from_array(tmp_path / "e.npz", key="x", labels="nope")
    with pytest.raises(ValueError, match=r"shape \(n,\)"):
        from_array(x, labels=np.zeros(5, dtype=np.int64))
    with pytest.raises(TypeError, match="integers"):
        from_array(x, labels=np.zeros(12))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        from_array(x, labels=y, num_classes=2)
    plain = from_array(x)
    assert plain.labels is None and plain.num_classes is None


def test_image_folder_classes(tmp_path):
    from PIL import Image

    rng = np.random.RandomState(1)
    counts = {"cat": 3, "ant": 2, "bee": 1}
    for name, n in counts.items():
        (tmp_path / "pics" / name).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.randint(0, 256, (8, 8)).astype(np.uint8)).save(tmp_path / "pics" / name / f"{i}.png")
    (tmp_path / "pics" / ".hidden").mkdir()
    ds = image_folder(tmp_path / "pics")
    assert ds.classes == ["ant", "bee", "cat"] and ds.num_classes == 3  # sorted names
    assert ds.labels.tolist() == [0, 0, 1, 2, 2, 2] and ds.shape == (1, 8, 8)
    first_cat = np.asarray(Image.open(tmp_path / "pics" / "cat" / "0.png"))
    assert np.array_equal(ds.levels[3, 0].numpy(), first_cat)
    assert torch.equal(load_dataset(ds.config()).labels, ds.labels)
    (tmp_path / "pics" / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no image files"):
        image_folder(tmp_path / "pics")
    flat = image_folder(tmp_path / "pics" / "cat")  # images directly inside: no labels
    assert flat.labels is None and len(flat) == 3


# ----------------------------------------------------------------------------------- label dropout
def test_label_dropout_fraction_and_null_class():
    n, p, K = 20000, 0.1, 10
    y = torch.arange(n) % K
    g = torch.Generator().manual_seed(0)
    out = drop_labels(y, p, K, generator=g)
    dropped = out == K
    se = (p * (1 - p) / n) ** 0.5
    assert abs(float(dropped.float().mean()) - p) < 4 * se
    assert torch.equal(out[~dropped], y[~dropped])  # kept labels are unchanged
    assert torch.equal(drop_labels(y, 0.0, K), y) and bool((drop_labels(y, 1.0, K) == K).all())
    g2 = torch.Generator().manual_seed(0)
    assert torch.equal(drop_labels(y, p, K, generator=g2), out)  # the draw is the generator's
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        drop_labels(y, 1.5, K)
    with pytest.raises(TypeError, match="integer"):
        drop_labels(y.float(), 0.1, K)


# ------------------------------------------------------------------------------- the null class
@pytest.mark.parametrize("make", [lambda: UNet(num_classes=3, **SMALL), lambda: MLP(64, hidden=32, num_layers=2,
                                                                                   embed_dim=16, num_classes=3)],
                         ids=["unet", "mlp"])
def test_conditional_model_y_and_null_class(make):
    torch.manual_seed(0)
    net = make()
    assert net.num_classes == 3 and net.null_class == 3 and net.label_emb.num_embeddings == 4
    with torch.no_grad():  # the zero-initialised output layer would hide the label: give it weights
        for p in net.parameters():
            if p.abs().sum() == 0 and p.dim() > 1:
                p.normal_(0, 0.1)
    sde = scoresde.VPSDE()
    flat = isinstance(net, MLP)

    class Flat(torch.nn.Module):  # the MLP on flattened 8x8 images
        def __init__(self, m):
            super().__init__()
            self.m, self.num_classes = m, m.num_classes

        def forward(self, x, time, y=None):
            return self.m(x.flatten(1), time, y=y).reshape(x.shape)

    model = scoresde.ScoreModel(Flat(net) if flat else net, sde)
    x, t = torch.randn(4, 1, 8, 8), torch.full((4,), 0.5)
    s0 = model(x, t, y=torch.zeros(4, dtype=torch.long))
    s1 = model(x, t, y=torch.ones(4, dtype=torch.long))
    assert not torch.allclose(s0, s1)  # the label changes the score
    null = torch.full((4,), 3, dtype=torch.long)
    assert torch.equal(model(x, t), model(x, t, y=null))  # y=None is the null class
    assert torch.equal(model(x, t, y=None), model(x, t, y=null))
    mixed = model(x, t, y=torch.tensor([0, 1, 3, 0]))
    assert torch.allclose(mixed[0], s0[0]) and torch.allclose(mixed[1], s1[1])
    with pytest.raises(ValueError, match="num_classes"):
        model(x, t, y=torch.tensor([0, 1, 4, 0]))
    with pytest.raises(ValueError, match=r"shape \(B,\)"):
        model(x, t, y=torch.zeros(3, dtype=torch.long))


def test_unconditional_model_with_y_raises():
    model = scoresde.ScoreModel(UNet(**SMALL), scoresde.VPSDE())
    x = torch.randn(2, 1, 8, 8)
    model(x, 0.5)
    model(x, 0.5, y=None)  # y=None is fine
    with pytest.raises(ValueError, match="unconditional"):
        model(x, 0.5, y=torch.tensor([0, 1]))
    vec = scoresde.ScoreModel(MLP(2, hidden=16, num_layers=1, embed_dim=8), scoresde.VPSDE())
    vec(torch.randn(3, 2), 0.5, y=None)
    with pytest.raises(ValueError, match="unconditional"):
        vec(torch.randn(3, 2), 0.5, y=torch.tensor([0, 1, 0]))
    assert "num_classes" not in MLP(2).config()  # unconditional configs as before


def test_conditional_losses_take_y():
    torch.manual_seed(0)
    model = scoresde.ScoreModel(UNet(num_classes=10, **SMALL), scoresde.VPSDE())
    x0, y = digits("test").data[:8], digits("test").labels[:8]
    g = torch.Generator().manual_seed(0)
    loss = scoresde.dsm_loss(model, model.sde, x0, generator=g, y=y)
    loss.backward()
    assert model.net.label_emb.weight.grad is not None


# -------------------------------------------------------------------------------------- training
def _cond_model(seed=0, K=10):
    torch.manual_seed(seed)
    return scoresde.ScoreModel(UNet(num_classes=K, **SMALL), scoresde.VPSDE())


def _cfg(out=None, steps=4, **kw):
    from scoresde.train import TrainConfig

    base = dict(steps=steps, batch_size=16, lr=1e-3, warmup=0, ema_decay=0.9, log_every=1, eval_every=0,
                checkpoint_every=0, quiet=True, out_dir=str(out) if out else None)
    return TrainConfig(**{**base, **kw})


def test_conditional_train_and_checkpoint_reload(tmp_path):
    from scoresde.train import load_score_model, train

    model = _cond_model()
    res = train(model, model.sde, "dsm", digits("train"), _cfg(tmp_path / "run", label_dropout=0.1),
                eval_dataset=digits("test"))
    assert res.step == 4 and res.eval_loss is not None
    assert res.config["model"]["net"]["num_classes"] == 10 and res.config["train"]["label_dropout"] == 0.1
    loaded, sde, cfg = load_score_model(tmp_path / "run", quiet=True)
    assert loaded.num_classes == 10 and loaded.null_class == 10
    x, t = torch.randn(3, 1, 8, 8), torch.full((3,), 0.4)
    y = torch.tensor([1, 5, 9])
    ema = res.ema_model.eval()
    assert torch.equal(loaded(x, t, y=y), ema(x, t, y=y)) and torch.equal(loaded(x, t), ema(x, t, y=None))
    with pytest.raises(ValueError, match="label_dropout"):  # resume compares it like any other setting
        train(_cond_model(), model.sde, "dsm", digits("train"), _cfg(tmp_path / "run", steps=6, label_dropout=0.2))
    more = train(_cond_model(seed=3), model.sde, "dsm", digits("train"), _cfg(tmp_path / "run", steps=6,
                                                                           label_dropout=0.1))
    assert more.step == 6


def test_training_loop_drops_the_expected_fraction_of_labels():
    from scoresde.losses import dsm_loss
    from scoresde.train import train

    seen = []

    def objective(model, sde, x0, generator=None, y=None):
        seen.append(y.clone())
        return dsm_loss(model, sde, x0, generator=generator, y=y)

    model = _cond_model()
    p, steps, b = 0.3, 30, 50
    train(model, model.sde, objective, digits("train"), _cfg(steps=steps, batch_size=b, label_dropout=p))
    y = torch.cat(seen)
    n = y.numel()
    assert n == steps * b
    frac = float((y == 10).float().mean())
    assert abs(frac - p) < 4 * (p * (1 - p) / n) ** 0.5  # Binomial(n, p) / n: 4 standard errors
    assert int(y.max()) == 10 and int(y.min()) == 0
    seen.clear()
    train(_cond_model(), model.sde, objective, digits("train"), _cfg(steps=3, batch_size=b))
    assert not bool((torch.cat(seen) == 10).any())  # label_dropout 0: conditional training only


def test_label_errors_in_training():
    from scoresde.data import Dataset
    from scoresde.train import TrainConfig, train

    model = _cond_model()
    unlabelled = Dataset(digits("test").data, (-1.0, 1.0))
    with pytest.raises(ValueError, match="no labels"):
        train(model, model.sde, "dsm", unlabelled, _cfg(steps=1))
    with pytest.raises(ValueError, match="num_classes"):
        train(_cond_model(K=5), model.sde, "dsm", digits("test"), _cfg(steps=1))
    plain = scoresde.ScoreModel(UNet(**SMALL), scoresde.VPSDE())
    with pytest.raises(ValueError, match="unconditional"):
        train(plain, plain.sde, "dsm", digits("test"), _cfg(steps=1, label_dropout=0.1))
    train(plain, plain.sde, "dsm", digits("test"), _cfg(steps=1))  # labels of the data are ignored
    with pytest.raises(ValueError, match=r"label_dropout must lie in \[0, 1\)"):
        train(model, model.sde, "dsm", digits("test"), TrainConfig(steps=1, batch_size=8, label_dropout=1.0))


# ------------------------------------------------------------------------------------------- CLI
def _cli_digits(out, *extra):
    return ["train", "--data", "digits", "--out", str(out), "--channels", "8", "--batch-size", "16", "--warmup", "0",
            "--quiet", *extra]


def test_cli_class_conditional_train_resume_and_flags(tmp_path, capsys):
    import json

    from scoresde.cli import main
    from scoresde.cli.common import load_run

    out = tmp_path / "cond"
    assert main(_cli_digits(out, "--steps", "2", "--class-conditional", "--label-dropout", "0.1")) == 0
    saved = json.loads((out / "train_args.json").read_text())
    assert saved["class_conditional"] is True and saved["label_dropout"] == 0.1 and saved["num_classes"] == 10
    model, sde, cfg, ds = load_run(str(out), quiet=True)
    assert model.num_classes == 10 and cfg["train"]["label_dropout"] == 0.1 and ds.num_classes == 10
    capsys.readouterr()
    assert main(["train", "--out", str(out), "--steps", "3", "--label-dropout", "0.2", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "--label-dropout 0.2 (saved 0.1)" in err and len(err.strip().splitlines()) == 1
    assert main(["train", "--out", str(out), "--steps", "3", "--class-conditional", "--quiet"]) == 0  # as saved
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 3

    plain = tmp_path / "plain"
    assert main(_cli_digits(plain, "--steps", "1")) == 0
    assert load_run(str(plain), quiet=True)[0].num_classes is None
    capsys.readouterr()
    assert main(["train", "--out", str(plain), "--steps", "2", "--class-conditional", "--quiet"]) == 1
    assert "--class-conditional True (saved False)" in capsys.readouterr().err
    args = json.loads((plain / "train_args.json").read_text())  # a run saved before the flags existed
    del args["class_conditional"], args["label_dropout"]
    (plain / "train_args.json").write_text(json.dumps(args))
    assert main(["train", "--out", str(plain), "--steps", "2", "--label-dropout", "0.1", "--quiet"]) == 1
    assert "--label-dropout 0.1 (saved 0.0)" in capsys.readouterr().err
    assert main(["train", "--out", str(plain), "--steps", "2", "--quiet"]) == 0


def test_cli_label_flag_errors(tmp_path, capsys):
    from scoresde.cli import main

    assert main(_cli_digits(tmp_path / "a", "--steps", "1", "--label-dropout", "0.1")) == 1
    assert "--class-conditional" in capsys.readouterr().err
    assert main(["train", "--data", "two_moons", "--out", str(tmp_path / "b"), "--steps", "1", "--class-conditional",
                 "--hidden", "8", "--layers", "1", "--batch-size", "8", "--quiet"]) == 1
    assert "needs labelled data" in capsys.readouterr().err
    assert main(_cli_digits(tmp_path / "c", "--class-conditional", "--label-dropout", "1")) == 2
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
