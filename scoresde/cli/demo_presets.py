"""The settings of ``scoresde demo``: the full run and ``--quick`` (read by the demo and its parser)."""
from __future__ import annotations

__all__ = ["FULL", "QUICK"]

# Full demo: about 10 CPU-minutes on one thread (training about 4 of them); less with 2 cores.
# A small UNet beats a 14x larger MLP here: after 3 000 steps its Frechet distance is ~7 against
# ~16-29 for the MLP after 12 000 steps, and its PF-ODE bits/dim ~1.9 against ~2.8.
FULL = {"model": "unet", "channels": 16, "hidden": 512, "layers": 4, "steps": 3000, "batch_size": 128,
        "lr": 2e-3, "compare_steps": [10, 20, 50, 100], "fast_nfe": [10, 20], "ode_tols": [1e-2, 1e-3, 1e-5], "n_samples": 400,
        "bpd_points": 64, "lik_points": 0, "lik_tol": 1e-5}
QUICK = {"model": "mlp", "channels": 16, "hidden": 128, "layers": 2, "steps": 300, "batch_size": 64, "lr": 2e-3,
         "compare_steps": [10, 20], "fast_nfe": [10], "ode_tols": [1e-3], "n_samples": 64,
         "bpd_points": 16, "lik_points": 32, "lik_tol": 1e-3}
