"""Bits per dimension on scikit-learn's digits: VDM's ELBO vs the independent per-pixel categorical baseline.

Split: train on images [:1000], validation [1000:1350] (early stopping), test [1350:].
The baseline is a categorical distribution per pixel over the 17 grey levels
fitted to the training images with add-one smoothing (2.400 bits/dim on the
test images). The VDM (``gendsl.models.VDM``: continuous-time ELBO, discrete
decoder) is trained by ``examples/diffusion_vdm_digits.py``, keeping the EMA
parameters with the best validation bound; its test bits/dim is minus the ELBO
with each image's bound averaged over ``--eval-samples`` Monte-Carlo draws, and
the standard error is over the 447 images (it counts the images' spread and the
Monte-Carlo noise left in each image's estimate). The paired column is the mean
per-image difference from the baseline and its standard error.

The best row of ``benchmarks/digits_result.md`` (the defaults here):

    python benchmarks/diffusion_digits.py
    python benchmarks/diffusion_digits.py --denoiser eps --hidden 512 --depth 3 --gamma-min -7 --no-augment  # before
    python benchmarks/diffusion_digits.py --json run.json   # also the learning curve, for --plot
    python benchmarks/diffusion_digits.py --plot curves.png a.json b.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))

from diffusion_vdm_digits import BEST, splits, train


def categorical_probs(alpha: float = 1.0) -> np.ndarray:
    """Per-pixel level probabilities (64, 17) from the training images with add-``alpha`` smoothing."""
    train_x = np.asarray(splits()[0])
    counts = np.stack([(train_x == k).sum(0) for k in range(17)], axis=1) + alpha
    return counts / counts.sum(1, keepdims=True)


def categorical_per_image(alpha: float = 1.0) -> np.ndarray:
    """The baseline's bits/dim of each test image."""
    test_x = np.asarray(splits()[2])
    return -np.log2(categorical_probs(alpha)[np.arange(64)[None, :], test_x]).mean(1)


def categorical_baseline(alpha: float = 1.0) -> float:
    return float(categorical_per_image(alpha).mean())


def plot(out, paths):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for path in paths:
        run = json.loads(Path(path).read_text())
        curve = np.asarray(run["curve"])
        label = run.get("label", Path(path).stem)
        (line,) = axes[0].plot(curve[:, 1] / 60, curve[:, 3], label=label)
        axes[1].plot(curve[:, 1] / 60, curve[:, 2], color=line.get_color(), label=label)
    for ax, title in zip(axes, ("validation (EMA weights)", "training minibatches (raw weights)"), strict=True):
        ax.axhline(2.400, color="k", ls="--", lw=1, label="per-pixel categorical (test)")
        ax.set_title(title)
        ax.set_xlabel("training minutes (2 shared CPU cores)")
        ax.set_ylim(0.0, 4.0)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("bits/dim (minus the ELBO)")
    axes[0].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plot", nargs="+", metavar=("PNG", "JSON"), help="plot the learning curves of --json runs")
    parser.add_argument("--steps", type=int, default=BEST["steps"])
    parser.add_argument("--minutes", type=float, default=15.0, help="stop training after this long")
    parser.add_argument("--denoiser", default=BEST["denoiser"], choices=("eps", "levels"))
    parser.add_argument("--conv", action="store_true", default=BEST["conv"])
    parser.add_argument("--hidden", type=int, default=BEST["hidden"])
    parser.add_argument("--depth", type=int, default=BEST["depth"])
    parser.add_argument("--learned-schedule", action="store_true", default=BEST["learned"])
    parser.add_argument("--variance-gradient", action="store_true", default=BEST["variance_gradient"])
    parser.add_argument("--gamma-min", type=float, default=BEST["gamma_min"])
    parser.add_argument("--lr", type=float, default=BEST["lr"])
    parser.add_argument("--weight-decay", type=float, default=BEST["weight_decay"])
    parser.add_argument("--ema", type=float, default=BEST["ema"])
    parser.add_argument("--p-identity", type=float, default=BEST["p_identity"], help="augmentation: share left alone")
    parser.add_argument("--no-augment", action="store_true", help="train on the images alone")
    parser.add_argument("--patience", type=int, default=6, help="validation checks without improvement to stop")
    parser.add_argument("--every", type=int, default=BEST["every"], help="steps between validation checks")
    parser.add_argument("--eval-samples", type=int, default=100, help="ELBO draws per test image")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the result and learning curve here")
    args = parser.parse_args(argv)
    if args.plot:
        plot(args.plot[0], args.plot[1:])
        return
    baseline = categorical_per_image()
    log, curve = [], []
    vdm, before, after, seconds, done = train(
        args.steps,
        lr=args.lr,
        hidden=args.hidden,
        depth=args.depth,
        learned=args.learned_schedule,
        seed=args.seed,
        gamma_min=args.gamma_min,
        weight_decay=args.weight_decay,
        conv=args.conv,
        every=args.every,
        log=log.append,
        denoiser=args.denoiser,
        variance_gradient=args.variance_gradient,
        ema=args.ema,
        max_seconds=60 * args.minutes,
        eval_samples=args.eval_samples,
        curve=curve,
        p_identity=None if args.no_augment else args.p_identity,
        patience=args.patience,
    )
    # The paired comparison: each test image's bound (same keys as `after`) minus the baseline's bits.
    test_x = splits()[2]
    per_image = _per_image(vdm, test_x, args.eval_samples, 2)
    diff = per_image - baseline
    paired = (float(diff.mean()), float(diff.std(ddof=1) / math.sqrt(diff.size)))
    # What the standard error is made of: a second, independent set of draws per image; half the variance
    # of the two estimates' difference is the Monte-Carlo variance left in one image's estimate.
    mc_var = float(np.var(per_image - _per_image(vdm, test_x, args.eval_samples, 7), ddof=1) / 2)
    spread = (float(np.sqrt(max(np.var(per_image, ddof=1) - mc_var, 0.0))), math.sqrt(mc_var))
    net = f"TimeConv {args.hidden}ch x{args.depth}" if args.conv else f"TimeMLP {args.hidden}x{args.depth}"
    augmented = "" if args.no_augment else f", DistAug (identity {args.p_identity:g})"
    schedule = (
        "learned" + (" (variance update)" if args.variance_gradient else "") if args.learned_schedule else ("linear")
    )
    row = (
        f"| VDM, {args.denoiser} denoiser, {net}, {schedule} schedule from gamma {args.gamma_min:g}, AdamW lr "
        f"{args.lr:g} wd {args.weight_decay:g}, EMA {args.ema:g}{augmented} | {after[0]:.3f} ± {after[1]:.3f} | "
        f"{paired[0]:+.3f} ± {paired[1]:.3f} | {done} steps, {seconds / 60:.1f} min ({log[-1]}) |"
    )
    print(f"# Digits bits/dim: VDM vs per-pixel categorical ({datetime.date.today()}, {os.cpu_count()} CPU cores)\n")
    print("| model | test bits/dim ± se (447 images) | minus baseline, paired | training |")
    print("|---|---|---|---|")
    print(f"| per-pixel categorical (add-one) | {baseline.mean():.3f} | 0 | counts |")
    print(row)
    gap = (2.400 - after[0]) / after[1]
    print(f"\nbefore training: {before[0]:.3f} bits/dim; {gap:.1f} standard errors below 2.400")
    print(
        f"per-image standard deviation: {spread[0]:.3f} between images, {spread[1]:.3f} Monte-Carlo "
        f"({args.eval_samples} draws per image)"
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "args": vars(args),
                    "test": after,
                    "paired": paired,
                    "spread": spread,
                    "seconds": seconds,
                    "steps": done,
                    "curve": curve,
                    "row": row,
                    "label": f"{args.denoiser}, {net}",
                }
            )
        )


def _per_image(vdm, images, samples, seed):
    """Each image's bound in bits/dim (``seed`` 2: the keys of ``train``'s final evaluation)."""
    import jax

    from gendsl.models.vdm import _per_point

    weights = np.full(images.shape[0], 1.0 / images.shape[0], np.float32)
    _, grad = _per_point(jax.random.key(seed), vdm, images, weights, samples, 0)
    return -np.asarray(grad) / (64 * math.log(2.0))


if __name__ == "__main__":
    main()
