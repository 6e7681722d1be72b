"""Benchmark: scoresde.bits_per_dim against the reference code's way of computing the same number.

The baseline below is the score-SDE reference ``likelihood.py`` (yang-song/score_sde_pytorch),
transcribed: scipy ``solve_ivp`` RK45 on a flattened float64 numpy state (x, delta_logp), the
network called twice per evaluation (once for the drift, once more inside the VJP of the
Hutchinson divergence), the Rademacher probe drawn once per solve, and
bpd = -(prior_logp + delta_logp) / (D ln 2) + offset.

Both run in one process on the same model, the same digits images (scikit-learn's 8x8 digits,
17 levels, data range [-1, 1]), the same dequantization noise and the same probe (drawn from the
same generator in the same order), at eps = 1e-5 and rtol = atol = 1e-5. The model is a small
UNet trained for a few hundred denoising steps here (so that its field is not trivial); it is
not a good model, and the bits/dim are only compared with each other.

Prints: wall time of each (median of --repeats alternating runs), their ratio, the NFE of each,
the mean bits/dim of each and the largest per-image difference (target: ratio >= 2 at a
difference < 0.01).

Usage: python benchmarks/bench_likelihood.py [--batch 16] [--train-steps 1000] [--ch 16] [--threads 1]
       [--device cpu] [--weights /tmp/bench_unet.pt]
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import time

import numpy as np
import torch
from scipy import integrate

from scoresde import ScoreModel, VPSDE, bits_per_dim
from scoresde.data import digits
from scoresde.likelihood import uniform_dequantize
from scoresde.models import UNet

EPS, RTOL, ATOL = 1e-5, 1e-5, 1e-5
LEVELS, RANGE = 17, (-1.0, 1.0)


def build_model(sde, train_steps: int, device, ch: int, weights: str | None = None, seed: int = 0) -> ScoreModel:
    """A small UNet eps-model, trained briefly with the denoising loss of Ho et al. 2020, Eq. (14).

    With ``weights`` naming an existing file, its state dict is loaded instead of training; a
    new file of that name is written after training.
    """
    torch.manual_seed(seed)
    net = UNet(in_channels=1, image_size=8, ch=ch, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=())
    model = ScoreModel(net, sde, prediction="eps").to(device)
    if weights is not None and os.path.exists(weights):
        model.load_state_dict(torch.load(weights, map_location=device, weights_only=True))
        return model.eval()
    data = digits("train").data.to(device)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    g = torch.Generator(device="cpu").manual_seed(seed)
    for _ in range(train_steps):
        idx = torch.randint(0, len(data), (64,), generator=g)
        x0 = data[idx]
        t = (torch.rand(64, generator=g) * (sde.T - 1e-3) + 1e-3).to(device)
        noise = torch.randn(x0.shape, generator=g).to(device)
        mean, std = sde.marginal_prob(x0, t)
        loss = (model.predict(mean + std[:, None, None, None] * noise, t, "eps") - noise).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    if weights is not None:
        torch.save(model.state_dict(), weights)
    return model.eval()


def reference_bits_per_dim(model, sde, levels: torch.Tensor, seed: int):
    """The reference code's likelihood.py way (see the module docstring). Returns (bpd (B,), nfe)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    data = uniform_dequantize(levels, num_levels=LEVELS, data_range=RANGE, generator=g, dtype=torch.float32)
    device = next(model.parameters()).device
    data = data.to(device)
    shape, B = data.shape, data.shape[0]
    epsilon = (torch.randint(0, 2, (1, *shape), generator=g).to(torch.float32) * 2 - 1)[0].to(device)
    rsde = sde.reverse(model, probability_flow=True)

    def drift_fn(x, t):
        return rsde.sde(x, t)[0]

    def div_fn(x, t, noise):
        with torch.enable_grad():
            x.requires_grad_(True)
            fn_eps = torch.sum(drift_fn(x, t) * noise)
            grad_fn_eps = torch.autograd.grad(fn_eps, x)[0]
        x.requires_grad_(False)
        return torch.sum(grad_fn_eps * noise, dim=tuple(range(1, len(x.shape))))

    def to_flat(x):
        return x.detach().cpu().numpy().reshape((-1,))

    def from_flat(x, shp):
        return torch.from_numpy(x.reshape(shp))

    with torch.no_grad():
        def ode_func(t, x):
            sample = from_flat(x[:-B], shape).to(device).type(torch.float32)
            vec_t = torch.ones(B, device=device) * t
            drift = to_flat(drift_fn(sample, vec_t))
            logp_grad = to_flat(div_fn(sample, vec_t, epsilon))
            return np.concatenate([drift, logp_grad], axis=0)

        init = np.concatenate([to_flat(data), np.zeros((B,))], axis=0)
        solution = integrate.solve_ivp(ode_func, (EPS, sde.T), init, rtol=RTOL, atol=ATOL, method="RK45")
        zp = solution.y[:, -1]
        z = from_flat(zp[:-B], shape).to(device).type(torch.float32)
        delta_logp = from_flat(zp[-B:], (B,)).to(device).type(torch.float32)
        prior_logp = sde.prior_logp(z)
        D = int(np.prod(shape[1:]))
        bpd = -(prior_logp + delta_logp) / (D * math.log(2)) + math.log2(LEVELS / (RANGE[1] - RANGE[0]))
    return bpd.double().cpu(), int(solution.nfev)


def ours(model, sde, levels, seed: int):
    r = bits_per_dim(model, sde, levels.to(next(model.parameters()).device), data_range=RANGE, num_levels=LEVELS,
                     eps=EPS, rtol=RTOL, atol=ATOL, generator=torch.Generator(device="cpu").manual_seed(seed))
    return r.bpd.cpu(), r.nfe


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--train-steps", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--ch", type=int, default=16, help="UNet base width")
    ap.add_argument("--weights", default=None, help="load the model from / save it to this file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sde = VPSDE()
    t0 = time.perf_counter()
    model = build_model(sde, args.train_steps, device, args.ch, args.weights)
    print(f"model: UNet(ch={args.ch}, ch_mult=(1, 2)), {sum(p.numel() for p in model.parameters())} parameters, "
          f"{args.train_steps} training steps ({time.perf_counter() - t0:.1f} s); device {device}, "
          f"{args.threads} thread(s); batch {args.batch} digits test images, 17 levels")
    levels = digits("test").levels[: args.batch]
    seed = 123

    # warm-up (allocator, lazy init) on a small batch
    ours(model, sde, levels[:2], seed)
    reference_bits_per_dim(model, sde, levels[:2], seed)

    times_ours, times_ref = [], []
    for _ in range(args.repeats):
        t = time.perf_counter()
        bpd_o, nfe_o = ours(model, sde, levels, seed)
        times_ours.append(time.perf_counter() - t)
        t = time.perf_counter()
        bpd_r, nfe_r = reference_bits_per_dim(model, sde, levels, seed)
        times_ref.append(time.perf_counter() - t)
    to, tr = statistics.median(times_ours), statistics.median(times_ref)
    print(f"scoresde.bits_per_dim : {to:8.3f} s  NFE {nfe_o:4d}  (network calls {nfe_o})  bpd {float(bpd_o.mean()):.4f}")
    print(f"reference (scipy RK45): {tr:8.3f} s  NFE {nfe_r:4d}  (network calls {2 * nfe_r})  bpd {float(bpd_r.mean()):.4f}")
    print(f"speed-up {tr / to:.2f}x   max |bpd difference| per image {float((bpd_o - bpd_r).abs().max()):.5f} "
          f"(target: >= 2x at < 0.01)")
    print(f"  of which per evaluation {1e3 * to / nfe_o:.2f} ms vs {1e3 * tr / nfe_r:.2f} ms "
          f"({(tr / nfe_r) / (to / nfe_o):.2f}x) and NFE {nfe_r / nfe_o:.2f}x")


if __name__ == "__main__":
    main()
