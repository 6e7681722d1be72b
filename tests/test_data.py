"""Data sets (issue 6): digits with integer levels and a fixed split, 2-D toys, arrays, image folders.

Numbers checked and their sources:
- digits: 1 797 images (scikit-learn), levels 0..16 (17 levels), split 1 500 / 297 disjoint and
  complete; levels equal ``load_digits().images`` exactly.
- level map: x = (2k + 1)/L - 1, the centre of cell k of the cells bits/dim dequantizes into
  (y = -1 + 2 (k + u) / L); float_to_levels inverts it.
- toys: checkerboard lies in [-4, 4]^2 on the 8 dark squares only; 8 Gaussians have per-axis
  spread 0.5/sqrt(2) = 0.354 around centres at radius 4/sqrt(2) = 2.83 (FFJORD's definition);
  >= 99.9% of every toy lies in the stated data_range.
"""
import math

import numpy as np
import pytest
import torch

from scoresde.data import (DIGITS_LEVELS, TOYS, Dataset, digits, digits_split, float_to_levels, from_array,
                           image_folder, levels_to_float, load_dataset, toy)


# ---------------------------------------------------------------------------------------- digits
def test_digits_levels_and_split():
    from sklearn.datasets import load_digits

    images = load_digits().images
    tr, te, al = digits("train"), digits("test"), digits("all")
    assert (len(tr), len(te), len(al)) == (1500, 297, 1797)
    assert tr.shape == (1, 8, 8) and tr.dim == 64 and tr.num_levels == DIGITS_LEVELS == 17
    assert tr.levels.dtype == torch.int64 and int(al.levels.min()) == 0 and int(al.levels.max()) == 16
    assert torch.equal(al.levels[:, 0].double(), torch.from_numpy(images))
    i_tr, i_te = digits_split("train"), digits_split("test")
    assert len(set(i_tr) & set(i_te)) == 0 and sorted(set(i_tr) | set(i_te)) == list(range(1797))
    assert i_te[:8].tolist() == [11, 23, 24, 25, 28, 32, 33, 36]  # the split is pinned
    assert torch.equal(te.levels[:, 0].double(), torch.from_numpy(images[i_te]))
    assert tr.data_range == (-1.0, 1.0) and torch.equal(tr.data, levels_to_float(tr.levels, 17))
    assert tr.config() == {"loader": "digits", "split": "train", "shape": [1, 8, 8], "num_levels": 17,
                           "data_range": [-1.0, 1.0], "n": 1500}
    with pytest.raises(ValueError, match="unknown split"):
        digits("val")


def test_level_map_is_dequantization_cell_centres():
    L = 17
    k = torch.arange(L)
    x = levels_to_float(k, L)
    cells_lo, cells_hi = -1 + 2 * k / L, -1 + 2 * (k + 1) / L  # bits/dim's dequantization cells
    torch.testing.assert_close(x.double(), (cells_lo + cells_hi).double() / 2, atol=1e-7, rtol=0)
    assert torch.equal(float_to_levels(x, L), k)
    u = torch.rand(1000, L, generator=torch.Generator().manual_seed(0))
    assert torch.equal(float_to_levels(-1 + 2 * (k + u) / L, L), k.expand(1000, L))  # every point of a cell
    assert float(levels_to_float(torch.tensor([0, 255]), 256)[1]) == pytest.approx(255 / 256)
    with pytest.raises(ValueError, match=r"\[0, 16\]"):
        levels_to_float(torch.tensor([17]), 17)
    with pytest.raises(TypeError, match="integer"):
        levels_to_float(torch.tensor([1.0]), 17)


# ------------------------------------------------------------------------------------------ toys
@pytest.mark.parametrize("name", TOYS)
def test_toys_seeded_and_in_range(name):
    a, b, c = toy(name, 5000, seed=0), toy(name, 5000, seed=0), toy(name, 5000, seed=1)
    assert a.shape == (2,) and a.levels is None and a.data_range == (-4.0, 4.0)
    assert torch.equal(a.data, b.data) and not torch.equal(a.data, c.data)
    inside = ((a.data >= -4) & (a.data <= 4)).all(1).double().mean()
    assert float(inside) >= 0.999
    assert a.bounded == (name == "checkerboard")


def test_checkerboard_dark_squares_only():
    x = toy("checkerboard", 20000).data.double()
    assert float(x.abs().max()) <= 4.0
    cell = torch.floor(x / 2)  # 4 x 4 board of 2 x 2 squares
    parity = torch.remainder(cell[:, 0] + cell[:, 1], 2)
    assert bool((parity == 0).all())  # FFJORD's board: only squares with i + j even are occupied
    counts = torch.bincount(((cell[:, 0] + 2) * 4 + cell[:, 1] + 2).long(), minlength=16)
    occupied = counts[counts > 0].double()
    assert len(occupied) == 8 and float(occupied.std() / occupied.mean()) < 0.05  # uniform over 8 squares


def test_8gaussians_moments():
    x = toy("8gaussians", 40000).data.double()
    ang = torch.round(torch.atan2(x[:, 1], x[:, 0]) / (math.pi / 4)) * (math.pi / 4)
    centres = 4 / math.sqrt(2) * torch.stack([torch.cos(ang), torch.sin(ang)], 1)
    resid = x - centres
    assert float(resid.std()) == pytest.approx(0.5 / math.sqrt(2), rel=0.03)
    assert float(x.norm(dim=1).mean()) == pytest.approx(4 / math.sqrt(2), rel=0.02)


def test_toy_bad_input():
    with pytest.raises(ValueError, match="valid values are"):
        toy("moons")
    with pytest.raises(ValueError, match="n must be"):
        toy("two_moons", 0)


# ---------------------------------------------------------------------------------------- arrays
def test_npy_uint8_images(tmp_path):
    arr = np.random.RandomState(0).randint(0, 256, size=(5, 6, 6)).astype(np.uint8)
    np.save(tmp_path / "a.npy", arr)
    ds = from_array(tmp_path / "a.npy")
    assert ds.shape == (1, 6, 6) and ds.num_levels == 256
    assert torch.equal(ds.levels[:, 0], torch.from_numpy(arr).long())
    assert torch.equal(load_dataset(ds.config()).levels, ds.levels)


def test_npz_keys_channels_and_levels(tmp_path):
    lv = np.random.RandomState(1).randint(0, 17, size=(4, 8, 8, 3)).astype(np.int16)
    np.savez(tmp_path / "b.npz", x=lv, y=np.zeros(4))
    with pytest.raises(ValueError, match="choose one with key="):
        from_array(tmp_path / "b.npz")
    with pytest.raises(ValueError, match="key 'z' not in"):
        from_array(tmp_path / "b.npz", key="z")
    with pytest.raises(TypeError, match="needs num_levels"):
        from_array(tmp_path / "b.npz", key="x")
    ds = from_array(tmp_path / "b.npz", key="x", num_levels=17, channels_last=True)
    assert ds.shape == (3, 8, 8) and ds.num_levels == 17
    assert torch.equal(ds.levels.permute(0, 2, 3, 1), torch.from_numpy(lv).long())
    with pytest.raises(ValueError, match=r"must lie in \[0, 9\]"):
        from_array(tmp_path / "b.npz", key="x", num_levels=10, channels_last=True)


def test_array_layout_is_inferred_given_or_refused(tmp_path):
    # the channel axis is the one of axes 1 / 3 of size <= 4; NHWC arrays become (n, C, H, W) images (they used to
    # be read as per-sample shape (8, 8, 3)), and a layout that could be either is an error naming layout=
    rng = np.random.RandomState(3)
    nhwc = rng.randint(0, 256, size=(6, 8, 8, 3)).astype(np.uint8)
    np.save(tmp_path / "rgb.npy", nhwc)
    for ds in (from_array(tmp_path / "rgb.npy"), from_array(tmp_path / "rgb.npy", layout="nhwc")):
        assert ds.shape == (3, 8, 8) and torch.equal(ds.levels.permute(0, 2, 3, 1), torch.from_numpy(nhwc).long())
        again = load_dataset(ds.config())
        assert ds.config()["channels_last"] is True and torch.equal(again.levels, ds.levels)
    nchw = np.ascontiguousarray(nhwc.transpose(0, 3, 1, 2))
    assert torch.equal(from_array(nchw).levels, torch.from_numpy(nchw).long())
    assert from_array(nchw, layout="nchw").shape == (3, 8, 8)
    assert from_array(nhwc, layout="nchw").shape == (8, 8, 3)  # as asked, however odd
    for shape, what in (((4, 3, 8, 3), "both could be"), ((4, 16, 8, 8), "neither looks like")):
        with pytest.raises(ValueError, match=f"ambiguous: axes 1 and 3 \\({what}.*layout='nchw' or layout='nhwc'"):
            from_array(np.zeros(shape, dtype=np.float32))
        assert from_array(np.zeros(shape, dtype=np.float32), layout="nchw").shape == shape[1:]
    # a 3-D (H, W, 3) array is one RGB image, not 16 gray images of 16x3 (an MLP's vectors): refused unless said
    one = rng.rand(16, 16, 3).astype(np.float32)
    with pytest.raises(ValueError, match=r"looks like one \(H, W, C\) image with 3 channels"):
        from_array(one)
    img = from_array(one, layout="nhwc")
    assert len(img) == 1 and img.shape == (3, 16, 16) and torch.equal(img.data[0], torch.from_numpy(one).permute(2, 0, 1))
    assert from_array(one, layout="nchw").shape == (1, 16, 3)
    assert from_array(rng.rand(5, 8, 8).astype(np.float32)).shape == (1, 8, 8)  # (n, H, W) gray: unchanged
    with pytest.raises(ValueError, match="applies to image arrays"):
        from_array(rng.rand(5, 2).astype(np.float32), layout="nchw")
    with pytest.raises(ValueError, match="layout"):
        from_array(nhwc, layout="hwc")
    with pytest.raises(ValueError, match="contradicts channels_last"):
        from_array(nhwc, layout="nchw", channels_last=True)


def test_float_arrays_and_bad_input(tmp_path):
    x = np.random.RandomState(2).randn(50, 3).astype(np.float32)
    ds = from_array(x)
    assert ds.shape == (3,) and ds.levels is None and ds.data_range == (float(x.min()), float(x.max()))
    assert from_array(x, data_range=(-10, 10)).data_range == (-10.0, 10.0)
    with pytest.raises(ValueError, match="outside data_range"):
        from_array(x, data_range=(-1, 1))
    bad = x.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        from_array(bad)
    with pytest.raises(ValueError, match="shape"):
        from_array(np.zeros(10, dtype=np.float32))
    with pytest.raises(ValueError, match="shape"):
        from_array(np.zeros((2, 1, 2, 2, 2), dtype=np.float32))
    with pytest.raises(TypeError, match="dtype bool"):
        from_array(np.zeros((4, 2), dtype=bool))
    with pytest.raises(TypeError, match="dtype complex"):
        from_array(np.zeros((4, 2), dtype=np.complex64))
    with pytest.raises(ValueError, match="num_levels given for float data"):
        from_array(x, num_levels=17)
    with pytest.raises(ValueError, match="empty"):
        from_array(np.zeros((0, 2), dtype=np.float32))
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="object arrays"):
        from_array(tmp_path / "obj.npy")
    (tmp_path / "a.csv").write_text("1,2")
    with pytest.raises(ValueError, match="extension"):
        from_array(tmp_path / "a.csv")
    with pytest.raises(FileNotFoundError):
        from_array(tmp_path / "none.npy")
    with pytest.raises(ValueError, match="cannot be rebuilt"):
        load_dataset(ds.config())


def test_dataset_checks():
    with pytest.raises(TypeError, match="floating-point"):
        Dataset(torch.zeros(3, 2, dtype=torch.long), (0, 1))
    with pytest.raises(ValueError, match="lo < hi"):
        Dataset(torch.zeros(3, 2), (1, 1))
    with pytest.raises(ValueError, match="levels shape"):
        Dataset(torch.zeros(3, 2), (-1, 1), levels=torch.zeros(3, 3, dtype=torch.long), num_levels=4)


# --------------------------------------------------------------------------------- image folders
def _png(path, arr, mode="L"):
    from PIL import Image

    Image.fromarray(arr, mode=mode).save(path)


def test_image_folder(tmp_path):
    rs = np.random.RandomState(3)
    imgs = [rs.randint(0, 256, size=(5, 7)).astype(np.uint8) for _ in range(3)]
    for i, a in enumerate(imgs):
        _png(tmp_path / f"im{i}.png", a)
    (tmp_path / "notes.txt").write_text("ignored")
    ds = image_folder(tmp_path)
    assert ds.shape == (1, 5, 7) and len(ds) == 3 and ds.num_levels == 256
    assert torch.equal(ds.levels[:, 0], torch.from_numpy(np.stack(imgs)).long())  # PNG is lossless
    rgb = image_folder(tmp_path, mode="RGB")
    assert rgb.shape == (3, 5, 7) and torch.equal(rgb.levels[:, 0], ds.levels[:, 0])
    assert image_folder(tmp_path, image_size=4).shape == (1, 4, 4)
    assert torch.equal(load_dataset(ds.config()).levels, ds.levels)
    _png(tmp_path / "odd.png", np.zeros((6, 6), dtype=np.uint8))
    with pytest.raises(ValueError, match="odd.png has size"):
        image_folder(tmp_path)
    (tmp_path / "odd.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot read image .*odd.png"):
        image_folder(tmp_path)


def test_image_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="no image files"):
        image_folder(tmp_path)
    with pytest.raises(FileNotFoundError):
        image_folder(tmp_path / "missing")
    with pytest.raises(ValueError, match="valid values"):
        image_folder(tmp_path, mode="CMYK")
