"""Variance of REINFORCE gradient estimates with and without baselines.

Two models from the programmable-VI issue:

* one site: z ~ Bernoulli(0.3), x ~ Normal(2z, 1), x = 3; guide Bernoulli(logits θ) at θ = -1;
* ten sites: z_i ~ Bernoulli(0.3), x_i ~ Normal(2 z_i, 1) with x = linspace(-1, 3, 10); guide
  Bernoulli(logits θ_i) at θ_i = -1 (variance averaged over the ten parameters).

For each baseline, the per-parameter variance of the ELBO gradient estimate at fixed parameters,
with the same budget of K objective evaluations per estimate (K replicates averaged), and the
reduction factor against plain REINFORCE with the same K. The learned baseline is a scalar
parameter fitted by the estimator's own least-squares term (1,500 Adam steps, θ frozen); the oracle
constant baseline is E[f] computed beforehand. Dependency tracking is off here
(``track_dependencies=False``), so the baselines are measured alone, each paired with the whole
objective; ``dependency_tracking.py`` measures tracking.

    python benchmarks/baselines.py
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax

import gendsl
import gendsl.distributions as dist
from gendsl.inference import SVI, Reinforce, elbo


def learned(params, *args):
    return params["b"]


def models(ten: bool):
    size = 10 if ten else 1
    obs = jnp.linspace(-1.0, 3.0, 10) if ten else jnp.array([3.0])

    @gendsl.model
    def p():
        with gendsl.plate("i", size):
            z = gendsl.sample("z", dist.Bernoulli(0.3))
            gendsl.sample("x", dist.Normal(2.0 * z, 1.0), obs=obs)

    def q_with(baseline):
        @gendsl.model
        def q():
            if baseline is learned:
                gendsl.param("b", 0.0)
            theta = gendsl.param("theta", -jnp.ones(size))
            with gendsl.plate("i", size):
                strategy = Reinforce(baseline=baseline, track_dependencies=False)
                gendsl.sample("z", dist.Bernoulli(logits=theta), strategy=strategy)

        return q

    return p, q_with, {"theta": -jnp.ones(size)}


def variance(objective, params, samples, n, seed=0):
    keys = jax.random.split(jax.random.key(seed), n)
    g = jax.jit(jax.vmap(lambda k: objective.grad(k, params, samples=samples)))(keys)["theta"]
    return float(np.mean(np.var(np.asarray(g), axis=0)))


def fit_learned(p, q_with, params):
    objective = elbo(p, q_with(learned))
    opt = optax.multi_transform({"b": optax.adam(0.1), "theta": optax.set_to_zero()}, {"b": "b", "theta": "theta"})
    return SVI(objective, opt).run(jax.random.key(0), 1500, progress=False).params


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=20000, help="gradient estimates per variance")
    args = parser.parse_args()
    print("| model | K | baseline | variance | reduction vs plain |")
    print("|---|---|---|---|---|")
    for ten in (False, True):
        p, q_with, params = models(ten)
        name = "ten sites" if ten else "one site"
        e_f = float(elbo(p, q_with(None)).estimate(jax.random.key(9), params, samples=100_000))
        fitted = fit_learned(p, q_with, params)
        for k in (1, 2, 8):
            plain = variance(elbo(p, q_with(None)), params, k, args.n)
            rows = [("none", plain), ("oracle constant E[f]", variance(elbo(p, q_with(e_f)), params, k, args.n))]
            label = f"learned (b = {float(fitted['b']):.2f})"
            rows.append((label, variance(elbo(p, q_with(learned)), fitted, k, args.n)))
            if k > 1:
                rows.append(("leave-one-out", variance(elbo(p, q_with("loo")), params, k, args.n)))
            for label, v in rows:
                print(f"| {name} | {k} | {label} | {v:.4g} | {plain / v:.1f}x |")


if __name__ == "__main__":
    main()
