"""scoresde.plotting leaves matplotlib's global state alone (issue 11, item 8): after each writer
the backend is the one the caller had, pyplot was not imported by it, and no figure was left open;
the files are PNGs of the expected size."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from scoresde import plotting

PNG = b"\x89PNG\r\n\x1a\n"


def _png_shape(path):
    import matplotlib.image
    return matplotlib.image.imread(str(path)).shape


def test_writers_keep_the_backend_and_do_not_import_pyplot(tmp_path):
    """In a fresh interpreter whose backend is set to 'svg' (not Agg), every writer runs, the
    backend is still 'svg' after it, and pyplot was never imported."""
    code = textwrap.dedent(f"""
        import sys, matplotlib
        matplotlib.use("svg")
        import numpy as np
        from scoresde import plotting
        out = {str(tmp_path)!r}
        plotting.save_image_grid(np.zeros((4, 1, 8, 8)), out + "/g.png", nrow=2)
        plotting.save_image_grid(np.zeros((4, 3, 8, 8)), out + "/c.png")
        plotting.save_scatter(np.random.randn(50, 2), out + "/s.png", reference=np.random.randn(50, 2), title="t")
        plotting.save_quality_vs_nfe([{{"method": "a", "nfe": 10, "quality": 5.0}},
                                      {{"method": "a", "nfe": 20, "quality": 4.0}}], out + "/q.png", "FD", floor=3.0)
        print(matplotlib.get_backend(), "matplotlib.pyplot" in sys.modules)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["svg", "False"], proc.stdout
    for name in ("g", "c", "s", "q"):
        assert (tmp_path / f"{name}.png").read_bytes()[:8] == PNG, name


def test_pyplot_session_keeps_its_backend_and_figures(tmp_path):
    """With pyplot in use (a figure open), a call changes neither the backend nor the open figures."""
    plt = pytest.importorskip("matplotlib.pyplot")
    import matplotlib
    before = matplotlib.get_backend()
    fig = plt.figure()
    try:
        nums = plt.get_fignums()
        plotting.save_scatter(np.random.randn(20, 2), tmp_path / "s.png")
        plotting.save_image_grid(np.zeros((2, 1, 8, 8)), tmp_path / "g.png")
        assert matplotlib.get_backend() == before
        assert plt.get_fignums() == nums
    finally:
        plt.close(fig)


def test_image_grid_png_size(tmp_path):
    """A 2 x 3 grid of 8x8 images with 1-pixel padding at scale 6: (2*9+1)*6 by (3*9+1)*6 pixels."""
    plotting.save_image_grid(np.zeros((6, 1, 8, 8)), tmp_path / "g.png", nrow=3, scale=6)
    assert _png_shape(tmp_path / "g.png")[:2] == ((2 * 9 + 1) * 6, (3 * 9 + 1) * 6)
    with pytest.raises(ValueError, match="shape"):
        plotting.save_image_grid(np.zeros((2, 2, 8, 8)), tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()
