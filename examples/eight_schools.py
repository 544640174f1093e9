"""Eight schools (Rubin 1981; Gelman et al., BDA 5.5), non-centered, fitted by variational inference.

The SAT-coaching effects ``y`` of eight schools, with known standard errors
``sigma``, and a hierarchical normal model written as posteriordb's
``eight_schools_noncentered`` Stan program::

    mu ~ normal(0, 5);  tau ~ cauchy(0, 5) (tau > 0);  theta_tilde[j] ~ normal(0, 1)
    theta[j] = mu + tau * theta_tilde[j];  y[j] ~ normal(theta[j], sigma[j])

The guide is mean-field: a normal for ``mu`` and for each ``theta_tilde[j]``,
a log-normal for ``tau`` (``guide = "auto"`` builds the same family). ``theta``
is a ``gendsl.deterministic`` site, so ``posterior.nc`` and ``summary.txt`` hold
it too, for comparison with Stan's reference posterior (``docs/fit.md``).

    gendsl fit examples/eight_schools.py
    gendsl sample examples/eight_schools.py --run runs/eight_schools --from posterior -n 1000
"""

import jax.numpy as jnp

import gendsl
import gendsl.distributions as dist
from gendsl.distributions import constraints

# The data (posteriordb's eight_schools, from BDA table 5.2): estimated effects and their standard errors.
Y = [28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0]
SIGMA = [15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0]
J = len(Y)


@gendsl.model
def model(data):
    mu = gendsl.sample("mu", dist.Normal(0.0, 5.0))
    tau = gendsl.sample("tau", dist.HalfCauchy(5.0))
    with gendsl.plate("schools", J):
        theta_tilde = gendsl.sample("theta_tilde", dist.Normal(0.0, 1.0))
        theta = gendsl.deterministic("theta", mu + tau * theta_tilde)
        gendsl.sample("y", dist.Normal(theta, data["sigma"]), obs=data["y"])


@gendsl.model
def guide(data):
    mu_loc = gendsl.param("mu_loc", 0.0)
    mu_scale = gendsl.param("mu_scale", 1.0, constraint=constraints.positive)
    tau_loc = gendsl.param("log_tau_loc", 0.0)
    tau_scale = gendsl.param("log_tau_scale", 0.5, constraint=constraints.positive)
    tt_loc = gendsl.param("theta_tilde_loc", jnp.zeros(J))
    tt_scale = gendsl.param("theta_tilde_scale", jnp.ones(J), constraint=constraints.positive)
    gendsl.sample("mu", dist.Normal(mu_loc, mu_scale))
    gendsl.sample("tau", dist.LogNormal(tau_loc, tau_scale))
    with gendsl.plate("schools", J):
        gendsl.sample("theta_tilde", dist.Normal(tt_loc, tt_scale))


def data():
    """The eight schools as one data set (a dict: the model indexes it by name)."""
    return {"y": jnp.array(Y), "sigma": jnp.array(SIGMA)}


# 8 particles per step (independent replicates of the ELBO gradient) and a cosine decay of the
# learning rate make the final parameters, and so the posterior summary, stable to a few hundredths.
defaults = {"steps": 20000, "lr": 0.01, "particles": 8, "schedule": "cosine", "checkpoint_every": 5000,
            "posterior_draws": 4000}


if __name__ == "__main__":
    import sys

    from gendsl.cli import main

    sys.exit(main(["fit", __file__, *sys.argv[1:]]))
