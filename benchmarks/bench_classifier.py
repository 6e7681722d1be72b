"""Benchmark: accuracy of the noise-conditional digit classifier against the diffusion time t.

A :class:`scoresde.models.Classifier` (the UNet's encoder half, default size) is trained by
:func:`scoresde.train_classifier` on the 1 500 training digits of ``scoresde.data.digits`` under
the linear ``VPSDE()``, ``TrainConfig.small(steps)`` (lr 1e-3, batch 128, EMA 0.999 with the
reference warm-up), t ~ U[1e-5, 1]. Its EMA weights are then scored by
:func:`scoresde.classifier_accuracy` on the 297 test digits, each perturbed once per t by the
VP kernel x_t = alpha(t) x_0 + sigma(t) z (the same z at every t). Chance is 0.1 (the largest
test class holds 38 / 297 = 0.128); the binomial standard error of an accuracy a is
sqrt(a (1 - a) / 297) (0.017 at a = 0.9).

    OMP_NUM_THREADS=1 python benchmarks/bench_classifier.py [--steps 400] [--quick] [--out benchmarks/results/classifier]

Writes classifier.json and classifier.md in --out (``_common.write_results``); ``--quick`` trains
5 steps and scores 3 times (what the test runs). Reference: Dhariwal & Nichol 2021, Sec. 4.
"""
from __future__ import annotations

import math
import os
import sys
import time

import torch

import scoresde
from scoresde.data import digits
from scoresde.models import Classifier
from scoresde.train import TrainConfig

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import md_table, parser, write_results  # noqa: E402

TIMES = (0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0)


def main(argv=None) -> dict:
    ap = parser("classifier", __doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.time()
    steps, times = (5, (0.01, 0.5, 1.0)) if args.quick else (args.steps, TIMES)
    sde = scoresde.VPSDE()
    torch.manual_seed(args.seed)
    clf = Classifier(sde, 10)
    cfg = TrainConfig.small(steps, seed=args.seed, quiet=True, checkpoint_every=0)
    t0 = time.perf_counter()
    res = scoresde.train_classifier(clf, sde, digits("train"), cfg, eval_dataset=digits("test"))
    wall = time.perf_counter() - t0
    test = digits("test")
    acc = scoresde.classifier_accuracy(res.ema_model, sde, test, times)
    n = len(test)
    rows = [{"t": t, "alpha": float(sde.mean_coeff(torch.tensor(t))), "sigma": float(sde.marginal_std(torch.tensor(t))),
             "accuracy": a, "se": math.sqrt(a * (1 - a) / n)} for t, a in acc.items()]
    result = {"steps": steps, "batch_size": cfg.batch_size, "train_s": round(wall, 1),
              "params": sum(p.numel() for p in clf.parameters()), "train_loss": res.loss,
              "test_cross_entropy": res.eval_loss, "n_test": n}
    md = (f"Noise-conditional classifier on the digits: {steps} updates of batch {cfg.batch_size} "
          f"({result['params']:,} parameters, {wall:.0f} s on one CPU thread); EMA weights on the 297 test "
          f"digits; test cross-entropy over t ~ U[1e-5, 1]: {res.eval_loss:.3f} nats.\n\n")
    md += md_table(["t", "alpha(t)", "sigma(t)", "accuracy", "s.e."],
                   [[f"{r['t']:g}", f"{r['alpha']:.3f}", f"{r['sigma']:.3f}", f"{r['accuracy']:.3f}", f"{r['se']:.3f}"]
                    for r in rows])
    write_results("classifier", args.out, md, rows, started=started, extra=result)
    print(md)
    return result


if __name__ == "__main__":
    main()
