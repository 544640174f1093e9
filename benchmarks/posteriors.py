"""The posteriordb posteriors in ``../shared/external/posteriordb``: NUTS and VI against Stan's reference.

Each posterior's Stan program (posteriordb ``posterior_database/models/stan/<model>.stan``) is
re-expressed below as a gendsl program on its data. Stan's implicit flat priors are
``ImproperUniform`` sites; ``target +=`` statements are ``gendsl.factor``; a bound that depends on
another parameter (garch's ``beta1 < 1 - alpha1``) is a unit-interval site scaled by the bound, with
the Jacobian of that scaling as a factor (so the density on ``beta1`` stays flat, as in Stan).

Methods:

* ``nuts``: NumPyro's ``MCMC(NUTS(model, dense_mass=True))`` on the gendsl model itself (gendsl
  models are NumPyro models), one chain, ``--warmup`` + ``--draws``.
* ``meanfield``, ``fullrank``, ``lowrank``, ``iaf``: ``SVI(elbo(model, guide), adam)`` with
  ``AutoNormal``, ``AutoMultivariateNormal``, ``AutoLowRankMultivariateNormal`` (default rank) and
  ``AutoIAFNormal``; ``--steps`` steps (eight schools: ``--steps-8s``), ``--particles`` ELBO
  samples per step, the learning rate cosine-decayed from ``--lr`` to 0; then ``--vi-draws`` draws
  of the guide.

Per posterior and method the table gives ``max_i |mean_i - ref_mean_i| / ref_sd_i`` and the range
of ``sd_i / ref_sd_i`` over every reported parameter (transformed parameters included: ``theta`` in
eight schools, ``f`` in gp_pois_regr), computed in float64.

    python benchmarks/posteriors.py                         # everything; writes benchmarks/posteriors_result.md
    python benchmarks/posteriors.py --only eight_schools --methods iaf fullrank
    python benchmarks/posteriors.py --only eight_schools --methods meanfield fullrank iaf --seed 1 --json /tmp/s1.json
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)  # gp_pois_regr's Cholesky of a nearly singular kernel

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from numpyro.infer import MCMC, NUTS, Predictive  # noqa: E402

import gendsl  # noqa: E402
import gendsl.distributions as dist  # noqa: E402
from gendsl.distributions import biject_to, constraints  # noqa: E402
from gendsl.inference import (  # noqa: E402
    SVI,
    AutoIAFNormal,
    AutoLowRankMultivariateNormal,
    AutoMultivariateNormal,
    AutoNormal,
    elbo,
)

ROOT = Path(__file__).resolve().parents[2] / "shared" / "external" / "posteriordb"


class Flat(dist.ImproperUniform):
    """``ImproperUniform`` whose "draw" is the image of 0 on its support.

    Only ``Model.init`` draws it (it runs the model to collect parameters, and would stop at
    ``ImproperUniform.sample``'s ``NotImplementedError``); no estimate depends on the value.
    """

    def sample(self, key, sample_shape=()):
        transform = biject_to(self.support)
        return transform(jnp.zeros(transform.inverse_shape(sample_shape + self.batch_shape + self.event_shape)))


def flat(support=constraints.real, shape=()):
    """Stan's implicit flat prior on ``support``."""
    return Flat(support, (), shape)


# --------------------------------------------------------------------------------------
# the posteriors as gendsl programs: name -> (model(data) -> gendsl.Model, derived sites)
# --------------------------------------------------------------------------------------


def ark(d):
    y, K = jnp.asarray(d["y"]), int(d["K"])
    lags = jnp.stack([y[K - k - 1:len(y) - k - 1] for k in range(K)], axis=1)  # y[t - k], t = K+1..T

    @gendsl.model
    def model():
        alpha = gendsl.sample("alpha", dist.Normal(0.0, 10.0))
        beta = gendsl.sample("beta", dist.Normal(0.0, 10.0).expand([K]).to_event(1))
        sigma = gendsl.sample("sigma", dist.HalfCauchy(2.5))
        gendsl.sample("y", dist.Normal(alpha + lags @ beta, sigma).to_event(1), obs=y[K:])

    return model


def arma11(d):
    y = jnp.asarray(d["y"])

    @gendsl.model
    def model():
        mu = gendsl.sample("mu", dist.Normal(0.0, 10.0))
        phi = gendsl.sample("phi", dist.Normal(0.0, 2.0))
        theta = gendsl.sample("theta", dist.Normal(0.0, 2.0))
        sigma = gendsl.sample("sigma", dist.HalfCauchy(2.5))
        err1 = y[0] - (mu + phi * mu)

        def step(err, t):
            e = y[t] - (mu + phi * y[t - 1] + theta * err)
            return e, e

        _, errs = jax.lax.scan(step, err1, jnp.arange(1, len(y)))
        err = jnp.concatenate([err1[None], errs])
        gendsl.factor("err", dist.Normal(0.0, sigma).log_prob(err).sum())

    return model


def earnings(d):
    log_earn = jnp.log(jnp.asarray(d["earn"], dtype=float))
    height, male = jnp.asarray(d["height"], dtype=float), jnp.asarray(d["male"], dtype=float)
    X = jnp.stack([jnp.ones_like(height), height, male, height * male], axis=1)

    @gendsl.model
    def model():
        beta = gendsl.sample("beta", flat(shape=(4,)))
        sigma = gendsl.sample("sigma", flat(constraints.positive))
        gendsl.sample("y", dist.Normal(X @ beta, sigma).to_event(1), obs=log_earn)

    return model


def eight_schools(d):
    y, sigma = jnp.asarray(d["y"], dtype=float), jnp.asarray(d["sigma"], dtype=float)
    J = len(y)

    @gendsl.model
    def model():
        theta_trans = gendsl.sample("theta_trans", dist.Normal(0.0, 1.0).expand([J]).to_event(1))
        mu = gendsl.sample("mu", dist.Normal(0.0, 5.0))
        tau = gendsl.sample("tau", dist.HalfCauchy(5.0))
        theta = gendsl.deterministic("theta", theta_trans * tau + mu)
        gendsl.sample("y", dist.Normal(theta, sigma).to_event(1), obs=y)

    return model


def garch11(d):
    y, sigma1 = jnp.asarray(d["y"]), float(d["sigma1"])

    @gendsl.model
    def model():
        mu = gendsl.sample("mu", flat())
        alpha0 = gendsl.sample("alpha0", flat(constraints.positive))
        alpha1 = gendsl.sample("alpha1", dist.Uniform(0.0, 1.0))
        b = gendsl.sample("beta1_unit", dist.Uniform(0.0, 1.0))
        beta1 = gendsl.deterministic("beta1", (1.0 - alpha1) * b)
        gendsl.factor("beta1_jacobian", jnp.log1p(-alpha1))  # flat on (0, 1 - alpha1), as Stan

        def step(s, t):
            s = jnp.sqrt(alpha0 + alpha1 * (y[t - 1] - mu) ** 2 + beta1 * s**2)
            return s, s

        _, rest = jax.lax.scan(step, jnp.asarray(sigma1, dtype=y.dtype), jnp.arange(1, len(y)))
        gendsl.sample("y", dist.Normal(mu, jnp.concatenate([jnp.array([sigma1]), rest])).to_event(1), obs=y)

    return model


def gp_pois_regr(d):
    x, k = jnp.asarray(d["x"], dtype=float), jnp.asarray(d["k"])
    N = len(x)

    @gendsl.model
    def model():
        rho = gendsl.sample("rho", dist.Gamma(25.0, 4.0))
        alpha = gendsl.sample("alpha", dist.HalfNormal(2.0))
        f_tilde = gendsl.sample("f_tilde", dist.Normal(0.0, 1.0).expand([N]).to_event(1))
        cov = alpha**2 * jnp.exp(-0.5 * (x[:, None] - x[None, :]) ** 2 / rho**2) + 1e-10 * jnp.eye(N)
        f = gendsl.deterministic("f", jnp.linalg.cholesky(cov) @ f_tilde)
        gendsl.sample("k", dist.Poisson(jnp.exp(f)).to_event(1), obs=k)

    return model


def hmm_example(d):
    y, K = jnp.asarray(d["y"]), int(d["K"])

    @gendsl.model
    def model():
        theta1 = gendsl.sample("theta1", dist.Dirichlet(jnp.ones(K)))  # Stan's flat simplex
        theta2 = gendsl.sample("theta2", dist.Dirichlet(jnp.ones(K)))
        mu = gendsl.sample("mu", flat(constraints.positive_ordered_vector, (K,)))
        gendsl.factor("mu_prior", dist.Normal(jnp.array([3.0, 10.0]), 1.0).log_prob(mu).sum())
        log_theta = jnp.log(jnp.stack([theta1, theta2]))  # [from, to]

        def forward(gamma, yt):
            gamma = jax.nn.logsumexp(gamma[:, None] + log_theta, axis=0) + dist.Normal(mu, 1.0).log_prob(yt)
            return gamma, None

        gamma, _ = jax.lax.scan(forward, dist.Normal(mu, 1.0).log_prob(y[0]), y[1:])
        gendsl.factor("y", jax.nn.logsumexp(gamma))

    return model


def kidiq(d):
    score, iq = jnp.asarray(d["kid_score"], dtype=float), jnp.asarray(d["mom_iq"], dtype=float)

    @gendsl.model
    def model():
        beta = gendsl.sample("beta", flat(shape=(2,)))
        sigma = gendsl.sample("sigma", dist.HalfCauchy(2.5))
        gendsl.sample("y", dist.Normal(beta[0] + beta[1] * iq, sigma).to_event(1), obs=score)

    return model


def kilpisjarvi(d):
    x, y = jnp.asarray(d["x"], dtype=float), jnp.asarray(d["y"], dtype=float)

    @gendsl.model
    def model():
        alpha = gendsl.sample("alpha", dist.Normal(d["pmualpha"], d["psalpha"]))
        beta = gendsl.sample("beta", dist.Normal(d["pmubeta"], d["psbeta"]))
        sigma = gendsl.sample("sigma", flat(constraints.positive))
        gendsl.sample("y", dist.Normal(alpha + beta * x, sigma).to_event(1), obs=y)

    return model


def low_dim_gauss_mix(d):
    y = jnp.asarray(d["y"])

    @gendsl.model
    def model():
        mu = gendsl.sample("mu", flat(constraints.ordered_vector, (2,)))
        gendsl.factor("mu_prior", dist.Normal(0.0, 2.0).log_prob(mu).sum())
        sigma = gendsl.sample("sigma", dist.HalfNormal(2.0).expand([2]).to_event(1))
        theta = gendsl.sample("theta", dist.Beta(5.0, 5.0))
        lp = jnp.logaddexp(jnp.log(theta) + dist.Normal(mu[0], sigma[0]).log_prob(y),
                           jnp.log1p(-theta) + dist.Normal(mu[1], sigma[1]).log_prob(y))
        gendsl.factor("y", lp.sum())

    return model


def blr(d):
    X, y = jnp.asarray(d["X"], dtype=float), jnp.asarray(d["y"], dtype=float)

    @gendsl.model
    def model():
        beta = gendsl.sample("beta", dist.Normal(0.0, 10.0).expand([X.shape[1]]).to_event(1))
        sigma = gendsl.sample("sigma", dist.HalfNormal(10.0))
        gendsl.sample("y", dist.Normal(X @ beta, sigma).to_event(1), obs=y)

    return model


POSTERIORS = {
    "eight_schools-eight_schools_noncentered": eight_schools,
    "kidiq-kidscore_momiq": kidiq,
    "earnings-logearn_interaction": earnings,
    "sblrc-blr": blr,
    "kilpisjarvi_mod-kilpisjarvi": kilpisjarvi,
    "low_dim_gauss_mix-low_dim_gauss_mix": low_dim_gauss_mix,
    "arK-arK": ark,
    "arma-arma11": arma11,
    "garch-garch11": garch11,
    "gp_pois_regr-gp_pois_regr": gp_pois_regr,
    "hmm_example-hmm_example": hmm_example,
}

GUIDES = {
    "meanfield": AutoNormal,
    "fullrank": AutoMultivariateNormal,
    "lowrank": AutoLowRankMultivariateNormal,
    "iaf": AutoIAFNormal,
}


# --------------------------------------------------------------------------------------
# fitting and scoring
# --------------------------------------------------------------------------------------


def stan_names(draws: dict, wanted: list[str]) -> dict[str, np.ndarray]:
    """Draws by Stan's names: ``beta[2]`` is ``draws["beta"][:, 1]``."""
    out = {}
    for name in wanted:
        base, _, index = name.partition("[")
        a = np.asarray(draws[base], dtype=np.float64)
        out[name] = a[:, int(index[:-1]) - 1] if index else a
    return out


def with_derived(model, latents: dict) -> dict:
    """Latent draws plus the model's deterministic sites on them."""
    predictive = Predictive(model, posterior_samples=latents, condition_deterministic=False)
    return {**latents, **predictive(jax.random.key(0))}


def score(draws: dict, moments: dict) -> dict:
    d = stan_names(draws, list(moments))
    z = {k: abs(d[k].mean() - m["mean"]) / m["sd"] for k, m in moments.items()}
    r = {k: d[k].std() / m["sd"] for k, m in moments.items()}
    return {"max_z": max(z.values()), "sd_lo": min(r.values()), "sd_hi": max(r.values()),
            "worst": max(z, key=z.get), "z": z, "sd_ratio": r}


def fit_nuts(model, args):
    mcmc = MCMC(NUTS(model, dense_mass=True), num_warmup=args.warmup, num_samples=args.draws, progress_bar=False)
    mcmc.run(jax.random.key(args.seed))
    return mcmc.get_samples()


def fit_vi(model, method, posterior, args):
    eight = posterior.startswith("eight_schools")
    steps = args.steps_8s if eight else args.steps
    guide = GUIDES[method](model)
    optimizer = optax.adam(optax.cosine_decay_schedule(args.lr, steps))
    svi = SVI(elbo(model, guide), optimizer, samples=args.particles)
    result = svi.run(jax.random.key(args.seed), steps, progress=False, chunk_size=500)
    draws = jax.jit(guide.bind(result.params).repeat(args.vi_draws).simulate)(jax.random.key(args.seed + 1))
    return with_derived(model, dict(draws.choices))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", default=None, help="substrings of posterior names")
    parser.add_argument("--methods", nargs="*", default=["nuts", *GUIDES])
    parser.add_argument("--warmup", type=int, default=1000)
    parser.add_argument("--draws", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--steps-8s", type=int, default=20000)
    parser.add_argument("--particles", type=int, default=4)
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--vi-draws", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default="benchmarks/posteriors_result.json", help="results, merged by key")
    args = parser.parse_args()

    path = Path(args.json)
    results = json.loads(path.read_text()) if path.exists() else {}
    for posterior, build in POSTERIORS.items():
        if args.only and not any(s in posterior for s in args.only):
            continue
        data = json.loads((ROOT / posterior / "data.json").read_text())
        moments = json.loads((ROOT / posterior / "reference_moments.json").read_text())["moments"]
        model = build(data)
        for method in args.methods:
            t = time.perf_counter()
            try:
                draws = fit_nuts(model, args) if method == "nuts" else fit_vi(model, method, posterior, args)
                row = score(draws, moments)
            except Exception as e:  # report the failure in the table, keep going
                row = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
            row["seconds"] = time.perf_counter() - t
            results[f"{posterior}|{method}"] = row
            print(posterior, method, table_cell(row), f"{row['seconds']:.0f}s", row.get("worst", ""), flush=True)
            path.write_text(json.dumps(results, indent=1, default=float))
    print(render(results))


def table_cell(row: dict) -> str:
    if "error" in row:
        return "error"
    if not math.isfinite(row["max_z"]):
        return "nan"
    return f"{row['max_z']:.2f} / {row['sd_lo']:.2f}-{row['sd_hi']:.2f}"


def render(results: dict) -> str:
    methods = ["nuts", *GUIDES]
    lines = ["| posterior | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for posterior in POSTERIORS:
        cells = [table_cell(results[f"{posterior}|{m}"]) if f"{posterior}|{m}" in results else "" for m in methods]
        lines.append(f"| {posterior} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
