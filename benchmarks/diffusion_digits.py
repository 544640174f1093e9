"""Bits per dimension on scikit-learn's digits: VDM's ELBO vs the independent per-pixel categorical baseline.

Split: train on images [:1000], validation [1000:1350] (early stopping), test [1350:].
The baseline is a categorical distribution per pixel over the 17 grey levels
fitted to the training images with add-one smoothing (2.400 bits/dim on the
test images). The VDM (``gendsl.models.VDM``: continuous-time ELBO, discrete
decoder, ``TimeMLP`` eps network) is trained by ``examples/diffusion_vdm_digits.py``;
its test bits/dim is the negative ELBO averaged over 20 independent
Monte-Carlo draws of the whole test set (mean and standard error).

    python benchmarks/diffusion_digits.py --steps 16000 [--learned-schedule]
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))

from diffusion_vdm_digits import train


def categorical_baseline(alpha: float = 1.0) -> float:
    from sklearn.datasets import load_digits

    x = np.asarray(load_digits().data, int)
    train_x, test_x = x[:1000], x[1350:]
    counts = np.stack([(train_x == k).sum(0) for k in range(17)], axis=1) + alpha
    probs = counts / counts.sum(1, keepdims=True)
    return float(-np.log2(probs[np.arange(64)[None, :], test_x]).mean())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=16000)
    parser.add_argument("--learned-schedule", action="store_true")
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=0.1)
    args = parser.parse_args(argv)
    baseline = categorical_baseline()
    log = []
    _, before, after, seconds, done = train(args.steps, hidden=args.hidden, learned=args.learned_schedule,
                                            lr=args.lr, weight_decay=args.weight_decay, log=log.append)
    print(f"# Digits bits/dim: VDM vs per-pixel categorical ({datetime.date.today()}, {os.cpu_count()} CPU cores)\n")
    print("| model | test bits/dim | training |")
    print("|---|---|---|")
    print(f"| per-pixel categorical (add-one) | {baseline:.3f} | counts |")
    schedule = "learned" if args.learned_schedule else "linear"
    print(f"| VDM, {schedule} schedule, TimeMLP {args.hidden}x3, AdamW lr {args.lr} wd {args.weight_decay} | "
          f"{after[0]:.3f} ± {after[1]:.3f} | {done} steps of batch 128, {seconds / 60:.1f} minutes wall on a shared "
          f"2-core machine ({log[-1]}) |")
    print(f"\nbefore training: {before[0]:.3f} bits/dim; "
          f"{'beats' if after[0] + 2 * after[1] < baseline else 'does not beat'} the baseline")



if __name__ == "__main__":
    main()
