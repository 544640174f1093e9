"""Shared by ``air_gendsl.py`` (gendsl's environment) and ``air_genjax.py`` (genjax's): data, parameters, Adam.

Imports only numpy and jax (both environments have them) and ``benchmarks/multi_mnist.py``.

* ``problem(data, n, seed)``: the training canvases of ``benchmarks/air.py`` (the first 80% of the
  folder's MNIST digits, ``n`` canvases, ``multi_mnist.make_canvases(..., seed=seed)``) and its
  minibatch sampler (``rng.choice(n, batch, replace=False)``, ``np.random.default_rng(seed)``).
* ``flatten`` / ``unflatten``: gendsl's parameter pytree (equinox modules) as a flat ``{name: array}``
  dict, the format that crosses between the environments (``.npz``).
* ``adam``: the optimizer update timed in both environments (optax is not in genjax's environment; the
  same few lines of JAX run in both, so the step = gradient estimate + this update everywhere).
"""

from __future__ import annotations

import math
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import multi_mnist


def problem(data: str, n: int, seed: int = 0):
    """``(train canvases (n, 50, 50) float32, minibatch(batch) -> array)``, as ``benchmarks/air.py`` builds them."""
    digits = multi_mnist.mnist_digits(data)
    split = int(len(digits) * 0.8)
    train, _ = multi_mnist.make_canvases(digits[:split], n, seed=seed)
    rng = np.random.default_rng(seed)

    def minibatch(batch: int) -> np.ndarray:
        return train[rng.choice(n, batch, replace=False)]

    return train, minibatch


def flatten_jax(params) -> dict:
    """gendsl's parameter pytree as ``{"guide.rnn.weight_ih": array, ...}`` (equinox's attribute paths)."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        name = jax.tree_util.keystr(path).replace("['", "").replace("']", "").replace("[", ".").replace("]", "")
        out[name] = leaf
    return out


def flatten(params) -> dict[str, np.ndarray]:
    """``flatten_jax`` with numpy arrays (for ``np.savez``)."""
    return {k: np.asarray(v) for k, v in flatten_jax(params).items()}


def adam_init(params):
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    return (jnp.zeros((), jnp.int32), zeros, zeros)


def adam_ascent(params, grads, state, lr, b1=0.9, b2=0.999, eps=1e-8):
    """One Adam step that *ascends* ``grads`` (optax.adam's update rule, bias-corrected)."""
    t, m, v = state
    t = t + 1
    m = jax.tree_util.tree_map(lambda m_, g: b1 * m_ + (1 - b1) * g, m, grads)
    v = jax.tree_util.tree_map(lambda v_, g: b2 * v_ + (1 - b2) * g * g, v, grads)
    c1, c2 = 1 - b1**t, 1 - b2**t
    params = jax.tree_util.tree_map(lambda p, m_, v_: p + lr * (m_ / c1) / (jnp.sqrt(v_ / c2) + eps), params, m, v)
    return params, (t, m, v)


def mean_se(values) -> tuple[float, float]:
    v = np.asarray(values, np.float64)
    return float(v.mean()), float(v.std(ddof=1) / math.sqrt(len(v)))


# Gradient coordinates compared between the systems (means over keys): (parameter, element or None = sum).
# predict.bias[0] is the z_pres logit (the discrete estimator's gradient), [1] the z_where scale (reparameterized).
PROBES = [
    ("decoder.layers.1.bias", None),
    ("decoder.layers.0.weight", None),
    ("guide.predict.bias", 0),
    ("guide.predict.bias", 1),
    ("guide.embed.weight", None),
]


def probe_values(flat_grads: dict) -> list:
    """The ``PROBES`` of a flat gradient dict (names as ``flatten``), as scalars."""
    return [jnp.sum(flat_grads[n]) if i is None else flat_grads[n][i] for n, i in PROBES]


def probe_label(n: str, i) -> str:
    return f"sum {n}" if i is None else f"{n}[{i}]"


def reference_step():
    """A plain-JAX step timed in both environments next to the AIR steps: ``(jitted fn, args)``.

    The two environments run different JAX versions (0.10.2 and 0.5.3), so raw milliseconds mix the
    systems with their JAX. This anchor is the hand-written reparameterized ELBO gradient of Table 1's
    784-200-10 VAE at batch 64 (random binary data, tanh hidden), identical code in both
    environments: the ratio AIR step / anchor compares the systems with the JAX version factored out.
    """

    def linear(k, n_in, n_out):
        lim = 1.0 / math.sqrt(n_in)
        kw, kb = jax.random.split(k)
        return (jax.random.uniform(kw, (n_out, n_in), minval=-lim, maxval=lim),
                jax.random.uniform(kb, (n_out,), minval=-lim, maxval=lim))

    ks = jax.random.split(jax.random.key(0), 6)
    params = {"enc": [linear(ks[0], 784, 200), linear(ks[1], 200, 20)],
              "dec": [linear(ks[2], 10, 200), linear(ks[3], 200, 784)]}
    x = jax.random.bernoulli(ks[4], 0.13, (64, 784)).astype(jnp.float32)

    def mlp(layers, h):
        (w0, b0), (w1, b1) = layers
        return jnp.tanh(h @ w0.T + b0) @ w1.T + b1

    def elbo(p, x, eps):
        out = mlp(p["enc"], x)
        loc, scale = out[:, :10], jax.nn.softplus(out[:, 10:])
        z = loc + scale * eps
        logits = mlp(p["dec"], z)
        log_lik = jnp.sum(x * logits - jnp.logaddexp(0.0, logits))
        return log_lik + jnp.sum(-0.5 * z**2) - jnp.sum(-0.5 * eps**2 - jnp.log(scale))

    def step(key, p, x):
        return jax.value_and_grad(elbo)(p, x, jax.random.normal(key, (x.shape[0], 10)))

    return jax.jit(step), (ks[5], params, x)
