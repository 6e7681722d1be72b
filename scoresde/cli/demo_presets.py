"""The settings of ``scoresde demo``: the full run and ``--quick`` (read by the demo and its parser)."""
from __future__ import annotations

__all__ = ["FULL", "QUICK", "LABEL_DROPOUT"]

#: label dropout of the demo's class-conditional model (k-diffusion's default; Ho & Salimans 2022 use 0.1-0.2)
LABEL_DROPOUT = 0.1

# Full demo: about 10 CPU-minutes on one thread (training about 4 of them); less with 2 cores.
# A small UNet beats a 14x larger MLP here: after 3 000 steps its Frechet distance is ~7 against
# ~16-29 for the MLP after 12 000 steps, and its PF-ODE bits/dim ~1.9 against ~2.8.
FULL = {"model": "unet", "channels": 16, "hidden": 512, "layers": 4, "steps": 3000, "batch_size": 128,
        "lr": 2e-3, "compare_steps": [10, 20, 50, 100], "fast_nfe": [10, 20], "ode_tols": [1e-2, 1e-3, 1e-5], "n_samples": 400,
        "bpd_points": 64, "lik_points": 0, "lik_tol": 1e-5,
        # class-conditional samples (demo_guided): 40 per digit by DPM-Solver++(2M) at 20 NFE, w in cfg_scales
        "cfg_method": "dpmpp_2m", "cfg_nfe": 20, "cfg_scales": [0, 0.25, 0.5, 1, 2, 4], "cfg_per_class": 40,
        # inpainting: the center mask, PC 100 steps, 6 samples per grid row, 150 test digits, RePaint (10, 5)
        "inpaint_mask": "center", "inpaint_steps": 100, "inpaint_samples": 6, "inpaint_eval": 150, "repaint": (10, 5)}
QUICK = {"model": "mlp", "channels": 16, "hidden": 128, "layers": 2, "steps": 300, "batch_size": 64, "lr": 2e-3,
         "compare_steps": [10, 20], "fast_nfe": [10], "ode_tols": [1e-3], "n_samples": 64,
         "bpd_points": 16, "lik_points": 32, "lik_tol": 1e-3,
         "cfg_method": "dpmpp_2m", "cfg_nfe": 10, "cfg_scales": [0, 0.5, 2], "cfg_per_class": 3,
         "inpaint_mask": "center", "inpaint_steps": 10, "inpaint_samples": 2, "inpaint_eval": 16, "repaint": (2, 2)}
