"""Test peers loaded without their heavy package imports.

k-diffusion's package ``__init__`` imports its training stack (torchvision, safetensors, ...),
which setup.sh does not install (``--no-deps``, so that the CPU torch stays); its
``sampling`` module needs only torch, scipy, torchdiffeq, torchsde, tqdm and ``utils.append_dims``.
:func:`k_diffusion_sampling` loads that one file under a stand-in package.
"""
from __future__ import annotations

import importlib.util
import os
import sys
import types



def k_diffusion_sampling():
    """k-diffusion's ``sampling`` module, or skip the test when k-diffusion is not installed."""
    import pytest

    try:
        return load_k_diffusion_sampling()
    except ImportError as e:
        pytest.skip(str(e))


def load_k_diffusion_sampling():
    """k-diffusion's ``sampling`` module; ImportError when k-diffusion is not installed (also used by
    benchmarks/bench_solvers.py)."""
    if "_kd_peer.sampling" in sys.modules:
        return sys.modules["_kd_peer.sampling"]
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("k-diffusion is not installed (bash setup.sh installs it with --no-deps)")
    path = os.path.join(list(spec.submodule_search_locations)[0], "sampling.py")
    pkg = types.ModuleType("_kd_peer")
    pkg.__path__ = []
    utils = types.ModuleType("_kd_peer.utils")

    def append_dims(x, target_dims):
        return x[(...,) + (None,) * (target_dims - x.ndim)]

    utils.append_dims = append_dims
    pkg.utils = utils
    sys.modules["_kd_peer"], sys.modules["_kd_peer.utils"] = pkg, utils
    mspec = importlib.util.spec_from_file_location("_kd_peer.sampling", path)
    mod = importlib.util.module_from_spec(mspec)
    sys.modules["_kd_peer.sampling"] = mod
    mspec.loader.exec_module(mod)
    return mod
