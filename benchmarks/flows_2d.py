"""2-D sample quality: flow matching and PFGM++ against a Gaussian mixture with 8 components.

Data: scikit-learn's ``make_moons`` (noise 0.05) and ``make_swiss_roll`` (noise 0.5,
projected on its (x, z) plane, divided by 10). 10,000 training points (seed 0); 5,000
i.i.d. held-out points (seed 1). Each model is trained on the standardized training
data; 5,000 model samples are compared with the held-out points by the energy distance
``2 E||X - Y|| - E||X - X'|| - E||Y - Y'||`` and by MMD^2 with a Gaussian kernel of
bandwidth 0.1 (both unbiased U-statistics, float64, in the data's original units). The
``floor`` row is a second i.i.d. sample of the true distribution (seed 2): what a perfect
model scores, i.e. the noise level of each column. The baseline is
``sklearn.mixture.GaussianMixture(8)`` (full covariances) fitted to the same training
data. Flow matching (rectified flow, ``linear_path``) also reports the exact held-out
log-likelihood (instantaneous change of variables, 1,000 held-out points) next to the
mixture's. The first table times one training step of the derived flow-matching
objective against the same loss written by hand.

    python benchmarks/flows_2d.py                 # 6,000 training steps per model
    python benchmarks/flows_2d.py --steps 1000    # quicker

Fit times are wall-clock seconds on this machine (compilation included), one model at a time.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from gendsl.metrics import energy_distance, mmd
from gendsl.models import PFGMPP, FlowMatching

BANDWIDTH = 0.1  # of the MMD's Gaussian kernel, in data units: the scale of the moons' and the roll's noise


def datasets(n: int, seed: int):
    from sklearn.datasets import make_moons, make_swiss_roll

    moons = make_moons(n, noise=0.05, random_state=seed)[0]
    roll = make_swiss_roll(n, noise=0.5, random_state=seed)[0][:, [0, 2]] / 10.0
    return {"moons": moons, "swiss roll": roll}


def gmm(train, n, seed=0):
    from sklearn.mixture import GaussianMixture

    t0 = time.perf_counter()
    g = GaussianMixture(8, covariance_type="full", random_state=seed).fit(train)
    fit_s = time.perf_counter() - t0
    return g, g.sample(n)[0], fit_s


def metrics(x, test):
    return energy_distance(x, test), mmd(x, test, bandwidth=BANDWIDTH)


def iid(name: str, n: int, seed: int):
    """``n`` i.i.d. draws: make_moons places its points on an evenly spaced grid along the curves,
    so a sample of exactly ``n`` is not i.i.d.; subsample a 40x larger draw instead."""
    big = datasets(40 * n, seed)[name]
    return big[np.random.default_rng(seed).choice(len(big), n, replace=False)]


def run(steps: int, n_eval: int = 5000, n_lik: int = 1000, batch: int = 512, lr: float = 3e-3, seed: int = 0,
        only=None):
    train_sets = datasets(10000, 0)
    rows, liks = [], []
    for name in train_sets:
        if only and name not in only:
            continue
        train, test = train_sets[name], iid(name, n_eval, 1)
        mean, std = train.mean(0), train.std(0)
        z_train = jnp.asarray((train - mean) / std, jnp.float32)
        rows.append((name, "floor: fresh i.i.d. data", "-", *metrics(iid(name, n_eval, 2), test), 0.0))
        g, g_samples, g_fit = gmm(train, n_eval)
        rows.append((name, "GMM-8 (sklearn, full cov.)", "EM", *metrics(g_samples, test), g_fit))

        fm = FlowMatching(2, hidden=128, depth=3)
        t0 = time.perf_counter()
        params = fm.fit(jax.random.key(seed), z_train, steps, batch_size=batch, lr=lr)
        jax.block_until_ready(params)
        fit_s = time.perf_counter() - t0
        x = np.asarray(fm.sample(params, jax.random.key(seed + 1), n_eval, steps=100)) * std + mean
        rows.append((name, "flow matching (rectified flow)", f"{steps} x {batch}", *metrics(x, test), fit_s))
        z_test = jnp.asarray((test[:n_lik] - mean) / std, jnp.float32)
        lp = np.asarray(jax.jit(fm.log_prob)(params, z_test)) - np.log(std).sum()
        liks.append((name, float(lp.mean()), float(lp.std() / np.sqrt(n_lik)), float(g.score(test[:n_lik]))))

        for D in (128.0, None):
            model = PFGMPP(2, D=D, hidden=128, depth=3)
            t0 = time.perf_counter()
            params = model.fit(jax.random.key(seed), 0.5 * z_train, steps, batch_size=batch, lr=lr)
            jax.block_until_ready(params)
            fit_s = time.perf_counter() - t0
            x = np.asarray(model.sample(params, jax.random.key(seed + 1), n_eval, steps=64)) / 0.5 * std + mean
            label = f"PFGM++ D={int(D)}" if D is not None else "PFGM++ D=inf (EDM)"
            rows.append((name, label, f"{steps} x {batch}", *metrics(x, test), fit_s))
    return rows, liks


def noise_level(n_eval: int = 5000, seeds=range(2, 8)):
    """Mean and sd of both metrics over i.i.d. true samples against the held-out set: the metrics' noise."""
    out = {}
    for name in ("moons", "swiss roll"):
        test = iid(name, n_eval, 1)
        values = np.array([metrics(iid(name, n_eval, seed), test) for seed in seeds])
        out[name] = (values.mean(0), values.std(0, ddof=1))
    return out


def step_time(repeats: int = 30, calls: int = 50, batch: int = 256):
    """Median time of one training step: the derived flow-matching objective (SVI.step) vs the loss by hand.

    Both use the same TimeMLP and Adam; the systems alternate (A B A B ...), each timing is ``calls``
    jitted steps with ``block_until_ready`` on every call.
    """
    import equinox as eqx
    import optax

    from gendsl.inference import SVI, init_params
    from gendsl.models import TimeMLP

    data = jax.random.normal(jax.random.key(0), (batch, 2))
    fm = FlowMatching(2, hidden=128, depth=3)
    svi = SVI(fm.objective, optax.adam(1e-3))
    state = svi.init(jax.random.key(1), data)
    derived = jax.jit(svi.step)

    net = TimeMLP(2, hidden=128, depth=3, max_frequency=100.0, key=jax.random.key(1))  # FlowMatching's network
    params, static = eqx.partition(net, eqx.is_inexact_array)
    opt = optax.adam(1e-3)

    def loss(p, key, x1):
        k_t, k_0 = jax.random.split(key)
        t = jax.random.uniform(k_t, (x1.shape[0],))
        x0 = jax.random.normal(k_0, x1.shape)
        x_t = (1 - t[:, None]) * x0 + t[:, None] * x1
        pred = jax.vmap(eqx.combine(p, static))(x_t, t)
        return jnp.mean(jnp.sum((pred - (x1 - x0)) ** 2, -1))

    @jax.jit
    def by_hand(carry, x1):
        p, o, key = carry
        key, sub = jax.random.split(key)
        value, g = jax.value_and_grad(loss)(p, sub, x1)
        updates, o = opt.update(g, o, p)
        return (optax.apply_updates(p, updates), o, key), value

    hand_state = (params, opt.init(params), jax.random.key(2))
    # The gradient alone (no optimizer, no SVI bookkeeping): the cost of the derivation itself.
    grad_derived = jax.jit(fm.objective.value_and_grad)
    grad_hand = jax.jit(jax.value_and_grad(loss))
    p_derived = init_params(fm.objective, jax.random.key(1), data)[0]
    calls_of = {
        "SVI step, derived objective": lambda i: derived(state, data)[1],
        "Adam step, loss by hand": lambda i: by_hand(hand_state, data)[1],
        "value and gradient, derived": lambda i: grad_derived(jax.random.key(i), p_derived, data),
        "value and gradient, by hand": lambda i: grad_hand(params, jax.random.key(i), data),
    }
    times = {name: [] for name in calls_of}
    for f in calls_of.values():
        jax.block_until_ready(f(0))
    for r in range(repeats):
        for name, f in calls_of.items():
            t0 = time.perf_counter()
            for i in range(calls):
                jax.block_until_ready(f(r * calls + i))
            times[name].append((time.perf_counter() - t0) / calls)
    return {k: np.asarray(v) for k, v in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--step-time-only", action="store_true", help="only the training-step timing")
    parser.add_argument("--noise-only", action="store_true", help="stop after the step timing and the noise level")
    parser.add_argument("--seed", type=int, default=0, help="training key seed (sampling uses seed + 1)")
    parser.add_argument("--data", nargs="+", default=None, choices=["moons", "swiss roll"], help="subset of data sets")
    args = parser.parse_args()
    times = step_time()
    print("## flow-matching training step: derived objective vs the same loss by hand (batch 256, MLP 3x128)\n")
    print("| what | median (ms) | min-max (ms) | ratio of medians to by hand | median per-round ratio |")
    print("|---|---|---|---|---|")
    pairs = [("SVI step, derived objective", "Adam step, loss by hand"),
             ("value and gradient, derived", "value and gradient, by hand")]
    for derived, hand in pairs:
        for name in (derived, hand):
            t, h = times[name], times[hand]
            print(f"| {name} | {1e3 * np.median(t):.3f} | {1e3 * t.min():.3f}-{1e3 * t.max():.3f} "
                  f"| {np.median(t) / np.median(h):.3f} | {np.median(t / h):.3f} |")
    print()
    if args.step_time_only:
        return
    print("## noise level: 6 i.i.d. samples of the true distribution vs the held-out set (mean ± sd)\n")
    print("| data | energy distance | MMD^2 |")
    print("|---|---|---|")
    for name, (m, s) in noise_level().items():
        print(f"| {name} | {m[0]:.5f} ± {s[0]:.5f} | {m[1]:.5f} ± {s[1]:.5f} |")
    print()
    if args.noise_only:
        return
    rows, liks = run(args.steps, seed=args.seed, only=args.data)
    print(f"## 2-D sample quality ({args.steps} training steps per model, 5,000 samples vs 5,000 held out)\n")
    print(f"energy distance and MMD^2 (Gaussian kernel, bandwidth {BANDWIDTH}) are unbiased U-statistics; "
          "lower is better; the floor row is a second i.i.d. sample of the true distribution\n")
    print("| data | model | training (steps x batch) | energy distance | MMD^2 | fit time (s) |")
    print("|---|---|---|---|---|---|")
    for name, model, training, ed, mm, fit_s in rows:
        print(f"| {name} | {model} | {training} | {ed:.5f} | {mm:.5f} | {fit_s:.1f} |")
    print("\n## held-out log-likelihood per point (1,000 points; flow matching exact by the ODE)\n")
    print("| data | flow matching | GMM-8 |")
    print("|---|---|---|")
    for name, lp, se, g in liks:
        print(f"| {name} | {lp:.3f} ± {se:.3f} | {g:.3f} |")


if __name__ == "__main__":
    main()
