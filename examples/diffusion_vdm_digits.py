"""VDM on scikit-learn's digits: bits per dimension of held-out images from the continuous-time ELBO.

The 1,797 8x8 images have 17 grey levels (0..16). Train on images [:1000], test
on [1350:] (447 images), as the independent per-pixel categorical baseline in
``benchmarks/diffusion_digits.py`` (2.400 bits/dim on that split). The decoder
is VDM's discrete decoder over the 17 levels, so the bound is on the discrete
log-likelihood and directly comparable with the baseline.

The configuration (``BEST``, from ``benchmarks/digits_result.md``) is what beats the baseline:

* ``denoiser="levels"``: the network gives, per pixel, logits of a prior over the 17 levels, and
  the noise prediction is that of the posterior mean under this prior and the exact likelihood
  of each level. An MLP that predicts the noise must learn to round ``z_t`` to the level grid at
  low noise, which it cannot (2.63 bits/dim); with the grid built in, 2.07.
* distribution augmentation (``augment``): three training images in four are shifted by a
  pixel, mirrored or transposed, and the network is told which (``VDM(augmentations=8)``); the
  bound is evaluated at the identity, so it is a bound on the digits' own likelihood. Unconditional flips would not be
  (the model would spend probability on mirrored digits); conditioned, they only share
  statistics. It slows the overfitting of 1,000 images: 2.02.
* a ``TimeMLP`` 256x2, AdamW lr 1e-3 (weight decay 0.1), EMA 0.999 of the weights, and the
  parameters with the best validation bound (images [1000:1350]).

A ``gendsl fit`` program (a ``gendsl.models`` Trainable: the ELBO as objective, ancestral
sampling, bits/dim as metric) with the same configuration: ``data()`` returns the training images
under every augmentation (``all_augmentations``, a fixed dataset that ``gendsl fit`` minibatches)
and the validation images, ``data("test")`` the test images instead, each as ``(images,
augmentation indices)``; the ``defaults`` keep an EMA of the weights and stop early on the
validation split. A minute on two CPU cores (early-stopped at step 5,600, best 3,600) for
2.023 +- 0.015 test bits/dim (``gendsl eval --data test --samples 100``):

    gendsl fit examples/diffusion_vdm_digits.py                  # -> runs/diffusion_vdm_digits/
    gendsl eval examples/diffusion_vdm_digits.py --run runs/diffusion_vdm_digits --data test   # test bits/dim
    gendsl sample examples/diffusion_vdm_digits.py --run runs/diffusion_vdm_digits -n 64      # samples.png

The script form (the benchmark's ``train``) keeps the EMA parameters with the best validation
bound and prints the test bits/dim, each image's bound averaged over 20 ELBO draws, with its
standard error over the 447 images:

    python examples/diffusion_vdm_digits.py --patience 6         # the best configuration, 1-2 minutes: 2.02
    python examples/diffusion_vdm_digits.py --denoiser eps --hidden 512 --depth 3 --gamma-min -7 --no-augment
"""

from __future__ import annotations

import argparse
import math
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from gendsl.models.vdm import VDM

LEVELS = 17


def splits():
    """``(train, validation, test)`` integer images (n, 64) in 0..16: images [:1000], [1000:1350], [1350:]."""
    from sklearn.datasets import load_digits

    x = np.asarray(load_digits().data, np.int32)
    return jnp.asarray(x[:1000]), jnp.asarray(x[1000:1350]), jnp.asarray(x[1350:])


def _pixel_maps() -> np.ndarray:
    """For each augmentation, the source pixel of every pixel of an 8x8 image (-1: blank, level 0)."""
    r, c = np.divmod(np.arange(64), 8)
    sources = [
        (r, c),  # 0: the identity (the data itself)
        (r, c - 1), (r, c + 1), (r - 1, c), (r + 1, c),  # 1-4: shifted one pixel right, left, down, up
        (r, 7 - c), (7 - r, c),  # 5, 6: mirrored left-right, upside down
        (c, r),  # 7: transposed
    ]
    return np.stack([np.where((rr >= 0) & (rr < 8) & (cc >= 0) & (cc < 8), 8 * rr + cc, -1) for rr, cc in sources])


PIXEL_MAPS = _pixel_maps()


def augment(key, images, p_identity=0.5):
    """Distribution augmentation (Jun et al. 2020): each image transformed, with the transformation's index.

    The model is conditioned on the index and evaluated at index 0, the identity, so any
    transformation is allowed, flips included (unconditionally, a flipped 2 or 7 would put
    probability where test digits never are). Transformations keep images on the 17 levels.
    """
    k_use, k_which = jax.random.split(key)
    n = images.shape[0]
    which = jax.random.randint(k_which, (n,), 1, PIXEL_MAPS.shape[0])
    which = jnp.where(jax.random.uniform(k_use, (n,)) < p_identity, 0, which)
    src = jnp.asarray(PIXEL_MAPS)[which]
    out = jnp.take_along_axis(images, jnp.maximum(src, 0), axis=1)
    return jnp.where(src >= 0, out, 0), which


# -- the `gendsl fit` program: a Trainable, the data, and option defaults

# The best configuration of benchmarks/digits_result.md (the script's and the benchmark's defaults).
BEST = {"denoiser": "levels", "conv": False, "hidden": 256, "depth": 2, "learned": False, "variance_gradient": False,
        "gamma_min": -10.0, "lr": 1e-3, "weight_decay": 0.1, "ema": 0.999, "steps": 20000, "every": 500,
        "p_identity": 0.25}

trainable = VDM(64, levels=LEVELS, hidden=BEST["hidden"], depth=BEST["depth"], gamma_min=BEST["gamma_min"],
                denoiser=BEST["denoiser"], conv=BEST["conv"], learned_schedule=BEST["learned"],
                variance_gradient=BEST["variance_gradient"], augmentations=PIXEL_MAPS.shape[0], key=jax.random.key(0))
image_shape = (8, 8)


def all_augmentations(images, identity_copies=2):
    """Every image under every augmentation, as ``(images, indices)``, plus ``identity_copies`` more of each as it is.

    The script draws an augmentation per image and step; ``gendsl fit`` minibatches a fixed dataset,
    so the program lists the pairs once: 7 transformations and 1 + ``identity_copies`` identities per
    image (with 2, 3 in 10 minibatch images are the data themselves; the script's 1 in 4).
    """
    maps = np.concatenate([PIXEL_MAPS[1:], np.repeat(PIXEL_MAPS[:1], 1 + identity_copies, axis=0)])
    which = np.concatenate([np.arange(1, PIXEL_MAPS.shape[0]), np.zeros(1 + identity_copies, int)])
    images = np.asarray(images)
    out = np.take_along_axis(images[None], np.maximum(maps, 0)[:, None, :].repeat(len(images), 1), axis=2)
    out = np.where(maps[:, None, :] >= 0, out, 0)
    return jnp.asarray(out.reshape(-1, images.shape[1])), jnp.asarray(np.repeat(which, len(images)), jnp.int32)


def data(split="validation"):
    """The augmented training images [:1000] and the held-out split: ``"validation"`` [1000:1350] or ``"test"`` [1350:].

    Both as ``(images, augmentation indices)`` (``gendsl fit`` wants held-out data shaped as the
    training data); the held-out images at index 0, the identity, so that their bound is on the
    digits' own likelihood.
    """
    if split not in ("validation", "test"):
        raise ValueError(f"data: the held-out split is 'validation' or 'test' (--data test), got {split!r}")
    train, validation, test = splits()
    held = validation if split == "validation" else test
    return all_augmentations(train), (held, jnp.zeros(held.shape[0], jnp.int32))


defaults = {"steps": 10000, "batch_size": 128, "lr": 1e-3, "optimizer": "adamw", "schedule": "cosine",
            "warmup": 400, "clip": 1.0, "ema": 0.999, "validate_every": 400, "patience": 5, "chunk_size": 100,
            "checkpoint_every": 400}


def make_step(optimizer, batch_size, chunk, ema=0.0, p_identity=None):
    """``chunk`` optimizer steps in one compiled call (``lax.scan``), minibatches drawn inside, with an EMA.

    With ``p_identity``, minibatches are augmented (``augment``): the data is ``(images, indices)``.
    """

    @eqx.filter_jit
    def run(vdm, avg, opt_state, key, train):
        params, static = eqx.partition(vdm, eqx.is_inexact_array)

        def body(carry, k):
            params, avg, opt_state = carry
            k_batch, k_loss, k_aug = jax.random.split(k, 3)
            idx = jax.random.choice(k_batch, train.shape[0], (batch_size,), replace=False)
            batch = train[idx] if p_identity is None else augment(k_aug, train[idx], p_identity)

            def loss(p):  # minus the ELBO objective (nats per image), differentiated through the module's arrays
                model = eqx.combine(p, static)
                return -model.objective.surrogate(k_loss, model, batch)[0]

            value, grads = jax.value_and_grad(loss)(params)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            avg = jax.tree_util.tree_map(lambda a, p: ema * a + (1.0 - ema) * p, avg, params)
            return (params, avg, opt_state), value

        (params, avg, opt_state), values = jax.lax.scan(body, (params, eqx.filter(avg, eqx.is_inexact_array),
                                                               opt_state), jax.random.split(key, chunk))
        return eqx.combine(params, static), eqx.combine(avg, static), opt_state, values

    return run


def evaluate(vdm, key, images, samples=20):
    """Bits/dim and its standard error over images: each image's bound averaged over ``samples`` ELBO draws.

    The standard error is the spread of the per-image estimates over ``sqrt(n)``: it counts both the
    images' spread and the Monte-Carlo noise left in each image's estimate.
    """
    return vdm.evaluate(vdm, images, key, samples=samples)["bits_per_dim"]


def train(steps=BEST["steps"], batch_size=128, lr=BEST["lr"], hidden=BEST["hidden"], depth=BEST["depth"],
          learned=BEST["learned"], seed=0, gamma_min=BEST["gamma_min"], weight_decay=BEST["weight_decay"], fourier=(),
          conv=BEST["conv"], every=BEST["every"], log=print, *, denoiser=BEST["denoiser"],
          variance_gradient=BEST["variance_gradient"], ema=BEST["ema"], gamma_max=5.0, max_seconds=None,
          eval_samples=20, curve=None, p_identity=BEST["p_identity"], patience=None):
    """Train; keep the (EMA) parameters with the best validation bits/dim (checked every ``every`` steps).

    Stops after ``steps`` steps, once ``max_seconds`` of training have passed, or after ``patience``
    checks without a better validation bound. With ``p_identity``
    (a probability), minibatches are augmented by ``augment`` and the VDM conditioned on the
    augmentation; evaluation is on the data itself (index 0). ``curve``, a list,
    receives ``(step, seconds, train bits/dim, validation bits/dim)`` at each check.

    Returns:
        ``(vdm, before, after, seconds, done)``: the kept module, the test ``(bits/dim, se)``
        before and after training, the training time and the number of steps taken.
    """
    train_x, val_x, test_x = splits()
    key = jax.random.key(seed)
    vdm = VDM(64, levels=LEVELS, learned_schedule=learned, hidden=hidden, depth=depth, gamma_min=gamma_min,
              gamma_max=gamma_max, fourier=fourier, conv=conv, denoiser=denoiser,
              variance_gradient=variance_gradient, augmentations=0 if p_identity is None else len(PIXEL_MAPS),
              key=key)
    schedule = optax.warmup_cosine_decay_schedule(0.0, lr, min(500, steps // 10 + 1), max(steps, 1))
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=weight_decay))
    opt_state = optimizer.init(eqx.filter(vdm, eqx.is_inexact_array))
    before = evaluate(vdm, jax.random.key(1), test_x, samples=4)
    log(f"test bits/dim before training: {before[0]:.3f} +- {before[1]:.3f}")
    chunk = min(every, steps) or 1
    run = make_step(optimizer, batch_size, chunk, ema, p_identity)
    start, done, avg = time.perf_counter(), 0, vdm
    best = (float("inf"), vdm, 0)
    while done < steps and (max_seconds is None or time.perf_counter() - start < max_seconds):
        if patience is not None and done - best[2] >= patience * chunk:
            break
        vdm, avg, opt_state, values = run(vdm, avg, opt_state, jax.random.fold_in(key, done), train_x)
        done += chunk
        val = evaluate(avg, jax.random.key(3), val_x, samples=4)[0]
        if val < best[0]:
            best = (val, avg, done)
        seconds = time.perf_counter() - start
        train_bpd = float(values.mean()) / (64 * math.log(2))
        if curve is not None:
            curve.append((done, seconds, train_bpd, val))
        log(f"step {done}: train loss {train_bpd:.3f} bits/dim, validation {val:.3f} bits/dim ({seconds:.0f} s)")
    seconds = time.perf_counter() - start
    vdm = best[1]
    after = evaluate(vdm, jax.random.key(2), test_x, samples=eval_samples)
    log(f"kept step {best[2]} (best validation {best[0]:.3f})")
    return vdm, before, after, seconds, done


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=BEST["steps"])
    parser.add_argument("--minutes", type=float, default=15.0, help="stop training after this long")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=BEST["lr"])
    parser.add_argument("--hidden", type=int, default=BEST["hidden"])
    parser.add_argument("--depth", type=int, default=BEST["depth"])
    parser.add_argument("--denoiser", default=BEST["denoiser"], choices=("eps", "levels"))
    parser.add_argument("--learned-schedule", action="store_true", default=BEST["learned"])
    parser.add_argument("--variance-gradient", action="store_true", default=BEST["variance_gradient"],
                        help="VDM's variance-minimizing update of the learned schedule's shape")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--weight-decay", type=float, default=BEST["weight_decay"])
    parser.add_argument("--ema", type=float, default=BEST["ema"])
    parser.add_argument("--conv", action="store_true", default=BEST["conv"],
                        help="a small residual CNN (--hidden channels), not an MLP")
    parser.add_argument("--fourier", type=int, nargs="*", default=[], help="exponents k of sin/cos(2^k pi z) inputs")
    parser.add_argument("--gamma-min", type=float, default=BEST["gamma_min"],
                        help="initial gamma(0) (learned with the ELBO)")
    parser.add_argument("--p-identity", type=float, default=BEST["p_identity"],
                        help="distribution augmentation: the share of minibatch images left as they are")
    parser.add_argument("--no-augment", action="store_true", help="train on the images alone")
    parser.add_argument("--patience", type=int, default=None, help="validation checks without improvement to stop")
    args = parser.parse_args()
    _, before, after, seconds, done = train(args.steps, args.batch_size, args.lr, args.hidden, args.depth,
                                            args.learned_schedule, args.seed, args.gamma_min,
                                            args.weight_decay, tuple(args.fourier), args.conv,
                                            denoiser=args.denoiser, variance_gradient=args.variance_gradient,
                                            ema=args.ema, max_seconds=60 * args.minutes,
                                            p_identity=None if args.no_augment else args.p_identity,
                                            patience=args.patience)
    print(f"trained {done} steps in {seconds:.0f} s ({done / seconds:.1f} steps/s, including compilation)")
    print(f"test bits/dim (images [1350:], 20 ELBO draws per image, se over images): {after[0]:.3f} +- "
          f"{after[1]:.3f} (before training {before[0]:.3f}); per-pixel categorical baseline 2.400")


if __name__ == "__main__":
    main()
