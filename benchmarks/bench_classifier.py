"""Benchmark: accuracy of the noise-conditional digit classifier against the diffusion time t.

A :class:`scoresde.models.Classifier` (the UNet's encoder half, default size) is trained by
:func:`scoresde.train_classifier` on the 1 500 training digits of ``scoresde.data.digits`` under
the linear ``VPSDE()``, ``TrainConfig.small(steps)`` (lr 1e-3, batch 128, EMA 0.999 with the
reference warm-up), t ~ U[1e-5, 1]. Its EMA weights are then scored by
:func:`scoresde.classifier_accuracy` on the 297 test digits, each perturbed once per t by the
VP kernel x_t = alpha(t) x_0 + sigma(t) z (the same z at every t). Chance is 0.1 (the largest
test class holds 38 / 297 = 0.128); the binomial standard error of an accuracy a is
sqrt(a (1 - a) / 297) (0.017 at a = 0.9).

    OMP_NUM_THREADS=1 python benchmarks/bench_classifier.py [--steps 400] [--out benchmarks/results/classifier]

Writes accuracy.json and accuracy.md in --out. Reference: Dhariwal & Nichol 2021, Sec. 4.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time

import torch

import scoresde
from scoresde.data import digits
from scoresde.models import Classifier
from scoresde.train import TrainConfig

TIMES = (0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "classifier"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    sde = scoresde.VPSDE()
    torch.manual_seed(args.seed)
    clf = Classifier(sde, 10)
    cfg = TrainConfig.small(args.steps, seed=args.seed, quiet=True, checkpoint_every=0)
    t0 = time.perf_counter()
    res = scoresde.train_classifier(clf, sde, digits("train"), cfg, eval_dataset=digits("test"))
    wall = time.perf_counter() - t0
    test = digits("test")
    acc = scoresde.classifier_accuracy(res.ema_model, sde, test, TIMES)
    n = len(test)
    rows = [{"t": t, "alpha": float(sde.mean_coeff(torch.tensor(t))), "sigma": float(sde.marginal_std(torch.tensor(t))),
             "accuracy": a, "se": math.sqrt(a * (1 - a) / n)} for t, a in acc.items()]
    result = {"steps": args.steps, "batch_size": cfg.batch_size, "train_s": round(wall, 1),
              "params": sum(p.numel() for p in clf.parameters()), "train_loss": res.loss,
              "test_cross_entropy": res.eval_loss, "n_test": n, "rows": rows,
              "command": "OMP_NUM_THREADS=1 python benchmarks/bench_classifier.py --steps %d" % args.steps}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "accuracy.json"), "w") as f:
        json.dump(result, f, indent=2)
    lines = [f"Noise-conditional classifier on the digits: {args.steps} updates of batch {cfg.batch_size} "
             f"({result['params']:,} parameters, {wall:.0f} s on one CPU thread); EMA weights on the 297 test "
             f"digits; test cross-entropy over t ~ U[1e-5, 1]: {res.eval_loss:.3f} nats.", "",
             "| t | alpha(t) | sigma(t) | accuracy | s.e. |", "|---|---|---|---|---|"]
    lines += [f"| {r['t']:g} | {r['alpha']:.3f} | {r['sigma']:.3f} | {r['accuracy']:.3f} | {r['se']:.3f} |"
              for r in rows]
    lines += ["", f"`{result['command']}`"]
    with open(os.path.join(args.out, "accuracy.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return result


if __name__ == "__main__":
    main()
