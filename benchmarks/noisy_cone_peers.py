"""Table 4 peers: the noisy-cone ELBO and IWELBO(5) in gendsl, NumPyro and Pyro under one protocol.

The experiment is ``examples/noisy_cone.py`` (Becker et al., PLDI 2024, Table 4): ``x, y ~ N(0, 10)``,
``z ~ N(r, 0.1 + r / 100)`` with ``r = x² + y²``, ``z = 5`` observed; the mean-field guide
``x ~ N(μ₁, exp(ℓ₁))``, ``y ~ N(μ₂, exp(ℓ₂))`` with all four raw parameters learned.

One protocol for the three systems (the artifact's, as in ``examples/noisy_cone.py``):

* the same initial parameters: ELBO ``(μ₁, μ₂, ℓ₁, ℓ₂) = (0, 0, 1, 1)``, IWELBO(5) ``(3, 0, 1, 1)``;
* the same optimizer: plain SGD, learning rate 1e-3 (``optax.sgd`` for gendsl and NumPyro,
  ``pyro.optim.SGD`` for Pyro) on the raw parameters, ``--steps`` steps (default 5,000);
* the same gradient per step: ELBO, the mean of 64 independent single-sample estimates (gendsl
  ``SVI(..., samples=64)``, NumPyro ``Trace_ELBO(num_particles=64)``, Pyro ``Trace_ELBO(num_particles=64,
  vectorize_particles=True)``); IWELBO(5), one estimate with 5 particles (gendsl ``iwelbo(model, guide, 5)``,
  NumPyro ``RenyiELBO(alpha=0, num_particles=5)``, Pyro ``RenyiELBO(alpha=0, num_particles=5,
  vectorize_particles=True)``; alpha = 0 is the IWAE bound);
* the same evaluation: the mean of ``--eval-samples`` (default 5,000) fresh, independent estimates at the
  trained parameters, each computed by the system itself, with the standard error.

Before training, at fixed parameters (the ones the noisy-cone test uses), each system's estimate
averaged over ``--check-samples`` keys agrees with a brute-force plain-JAX Monte Carlo value of the same
bound within 4 standard errors (the check raises otherwise).

Each system draws its own random numbers (JAX keys vs torch's generator), so single runs differ by
seed noise; ``--seeds`` runs several seeds and the table gives each seed and their mean and standard
deviation. Nothing here asserts anything about time; the seconds per run are reported for information.

    python benchmarks/noisy_cone_peers.py --seeds 5
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import logging
import math
import os
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as ndist
import optax
from _common import cpu_name
from jax.scipy.special import logsumexp
from jax.scipy.stats import norm
from numpyro.infer import SVI, RenyiELBO, Trace_ELBO

import gendsl

ROOT = Path(__file__).resolve().parents[1]
Z_OBS = 5.0
INIT = {
    "ELBO": {"mu1": 0.0, "mu2": 0.0, "log_sigma1": 1.0, "log_sigma2": 1.0},
    "IWELBO(5)": {"mu1": 3.0, "mu2": 0.0, "log_sigma1": 1.0, "log_sigma2": 1.0},
}
# replicates (gradient estimates averaged) per step and importance particles per estimate
PROTOCOL = {"ELBO": (64, 1), "IWELBO(5)": (1, 5)}
# fixed, untrained parameters near the ring for the agreement check (tests/inference/test_noisy_cone.py's)
CHECK_PARAMS = {"mu1": 0.4, "mu2": 2.0, "log_sigma1": -1.6, "log_sigma2": -3.0}
PAPER = {"ELBO": -8.08, "IWELBO(5)": -7.79}


def load_gendsl_cone():
    spec = importlib.util.spec_from_file_location("noisy_cone", ROOT / "examples" / "noisy_cone.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- brute force, plain JAX -------------------------------------------------------------------------


def brute_force(key, p, particles):
    """One estimate of IWELBO(particles) (ELBO for 1) for the mean-field guide at raw parameters ``p``."""
    e = jax.random.normal(key, (particles, 2))
    s1, s2 = jnp.exp(p["log_sigma1"]), jnp.exp(p["log_sigma2"])
    x, y = p["mu1"] + s1 * e[:, 0], p["mu2"] + s2 * e[:, 1]
    r = x**2 + y**2
    log_p = norm.logpdf(x, 0.0, 10.0) + norm.logpdf(y, 0.0, 10.0) + norm.logpdf(Z_OBS, r, 0.1 + r / 100.0)
    log_w = log_p - norm.logpdf(x, p["mu1"], s1) - norm.logpdf(y, p["mu2"], s2)
    return logsumexp(log_w) - jnp.log(particles)


# --- gendsl -----------------------------------------------------------------------------------------


class Gendsl:
    name = "gendsl"

    def __init__(self):
        from gendsl.inference import elbo, iwelbo

        self.cone = load_gendsl_cone()
        self.objectives = {
            "ELBO": elbo(self.cone.model, self.cone.mean_field),
            "IWELBO(5)": iwelbo(self.cone.model, self.cone.mean_field, 5),
        }

    def estimates(self, name, params, n, seed):
        return self.cone_values(self.objectives[name], params, n, jax.random.key(seed))

    @staticmethod
    def cone_values(objective, params, n, key):
        params = {k: jnp.asarray(v, jnp.float32) for k, v in params.items()}
        one = jax.jit(jax.vmap(lambda k: objective.estimate(k, params, jnp.asarray(Z_OBS))))
        return np.asarray(one(jax.random.split(key, n)), np.float64)

    def train(self, name, steps, seed):
        samples, _ = PROTOCOL[name]
        params = self.cone.train(
            self.objectives[name], jax.random.key(seed), steps, params=INIT[name], samples=samples, lr=1e-3
        )
        return {k: float(v) for k, v in params.items()}


# --- NumPyro ----------------------------------------------------------------------------------------


def numpyro_model(z):
    x = numpyro.sample("x", ndist.Normal(0.0, 10.0))
    y = numpyro.sample("y", ndist.Normal(0.0, 10.0))
    r = x**2 + y**2
    numpyro.sample("z", ndist.Normal(r, 0.1 + r / 100.0), obs=z)


def numpyro_guide(z, init):
    mu1, mu2 = numpyro.param("mu1", init["mu1"]), numpyro.param("mu2", init["mu2"])
    ls1, ls2 = numpyro.param("log_sigma1", init["log_sigma1"]), numpyro.param("log_sigma2", init["log_sigma2"])
    numpyro.sample("x", ndist.Normal(mu1, jnp.exp(ls1)))
    numpyro.sample("y", ndist.Normal(mu2, jnp.exp(ls2)))


class NumPyro:
    name = "NumPyro"

    @staticmethod
    def loss(name, replicates=None):
        reps, particles = PROTOCOL[name]
        if name == "ELBO":
            return Trace_ELBO(num_particles=reps if replicates is None else replicates)
        return RenyiELBO(alpha=0.0, num_particles=particles)

    def estimates(self, name, params, n, seed):
        loss = self.loss(name, replicates=1)
        p = {k: jnp.asarray(v, jnp.float32) for k, v in params.items()}
        init = {k: float(v) for k, v in params.items()}

        def one(k):
            return -loss.loss(k, p, numpyro_model, lambda z: numpyro_guide(z, init), Z_OBS)

        return np.asarray(jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(seed), n)), np.float64)

    def train(self, name, steps, seed):
        init = INIT[name]
        svi = SVI(numpyro_model, lambda z: numpyro_guide(z, init), optax.sgd(1e-3), self.loss(name))
        result = svi.run(jax.random.key(seed), steps, jnp.asarray(Z_OBS), progress_bar=False)
        return {k: float(v) for k, v in result.params.items()}


# --- Pyro -------------------------------------------------------------------------------------------


class Pyro:
    name = "Pyro"

    def __init__(self):
        import pyro
        import pyro.distributions as pdist
        import torch

        logging.getLogger("pyro").setLevel(logging.WARNING)  # not "Guessed max_plate_nesting" per SVI
        self.pyro, self.torch = pyro, torch

        def model(z):
            x = pyro.sample("x", pdist.Normal(0.0, 10.0))
            y = pyro.sample("y", pdist.Normal(0.0, 10.0))
            r = x**2 + y**2
            pyro.sample("z", pdist.Normal(r, 0.1 + r / 100.0), obs=z)

        def guide(z):
            mu1, mu2 = pyro.param("mu1"), pyro.param("mu2")
            ls1, ls2 = pyro.param("log_sigma1"), pyro.param("log_sigma2")
            pyro.sample("x", pdist.Normal(mu1, torch.exp(ls1)))
            pyro.sample("y", pdist.Normal(mu2, torch.exp(ls2)))

        self.model, self.guide = model, guide

    def loss(self, name, replicates=None):
        from pyro.infer import RenyiELBO as PyroRenyi
        from pyro.infer import Trace_ELBO as PyroTrace

        reps, particles = PROTOCOL[name]
        if name == "ELBO":
            n = reps if replicates is None else replicates
            return PyroTrace(num_particles=n, vectorize_particles=n > 1)
        return PyroRenyi(alpha=0.0, num_particles=particles, vectorize_particles=True)

    def set_params(self, params):
        self.pyro.clear_param_store()
        for k, v in params.items():
            self.pyro.param(k, self.torch.tensor(float(v)))

    def estimates(self, name, params, n, seed):
        self.pyro.set_rng_seed(seed)
        self.set_params(params)
        loss = self.loss(name, replicates=1)
        z = self.torch.tensor(Z_OBS)
        with self.torch.no_grad():
            return np.array([-loss.loss(self.model, self.guide, z) for _ in range(n)], np.float64)

    def train(self, name, steps, seed):
        from pyro.infer import SVI as PyroSVI
        from pyro.optim import SGD

        self.pyro.set_rng_seed(seed)
        self.set_params(INIT[name])
        svi = PyroSVI(self.model, self.guide, SGD({"lr": 1e-3}), self.loss(name))
        z = self.torch.tensor(Z_OBS)
        for _ in range(steps):
            svi.step(z)
        return {k: float(self.pyro.param(k).item()) for k in INIT[name]}


# --- the benchmark ----------------------------------------------------------------------------------


def mean_se(values):
    return float(values.mean()), float(values.std(ddof=1) / math.sqrt(len(values)))


def agreement(systems, n, seed):
    """Each system's estimates at CHECK_PARAMS against the brute-force value: one note per objective."""
    notes = []
    for name, (_, particles) in PROTOCOL.items():
        keys = jax.random.split(jax.random.key(10_000 + seed), n)
        ref = np.asarray(jax.jit(jax.vmap(lambda k, q=particles: brute_force(k, CHECK_PARAMS, q)))(keys), np.float64)
        m_ref, se_ref = mean_se(ref)
        parts = []
        for s in systems:
            m, se = mean_se(s.estimates(name, CHECK_PARAMS, n, 20_000 + seed))
            z = abs(m - m_ref) / math.hypot(se, se_ref)
            if z >= 4:
                raise SystemExit(
                    f"{s.name} {name} at the check parameters: {m:.4f} ± {se:.4f}, brute force {m_ref:.4f} ± "
                    f"{se_ref:.4f} ({z:.1f} standard errors apart): the systems do not compute the same objective"
                )
            parts.append(f"{s.name} {m:.3f} ± {se:.3f}")
        notes.append(
            f"{name} at (μ₁, μ₂, ℓ₁, ℓ₂) = ({', '.join(str(v) for v in CHECK_PARAMS.values())}), mean ± s.e. over "
            f"{n} estimates: "
            + ", ".join(parts)
            + f"; brute-force plain JAX {m_ref:.3f} ± {se_ref:.3f} (all within 4 s.e.)"
        )
    return notes


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=5000)
    p.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 for every system")
    p.add_argument("--eval-samples", type=int, default=5000)
    p.add_argument("--check-samples", type=int, default=8000)
    p.add_argument("--no-pyro", action="store_true", help="leave Pyro out (it is an optional benchmark extra)")
    args = p.parse_args(argv)
    started = datetime.datetime.now()
    systems = [Gendsl(), NumPyro()]
    pyro_note = ""
    if not args.no_pyro:
        try:
            systems.append(Pyro())
        except ImportError as e:
            pyro_note = f"Pyro left out: {e} (install the `bench` extra: pip install -e '.[bench]')"

    notes = agreement(systems, args.check_samples, 0)
    results = {}  # (objective, system) -> list of (mean, se, params, seconds)
    for name in PROTOCOL:
        for seed in range(args.seeds):
            for s in systems:  # interleaved: every system at each seed before the next seed
                t0 = time.perf_counter()
                params = s.train(name, args.steps, seed)
                mean, se = mean_se(s.estimates(name, params, args.eval_samples, 1_000 + seed))
                results.setdefault((name, s.name), []).append((mean, se, params, time.perf_counter() - t0))

    versions = f"jax {jax.__version__}, numpyro {numpyro.__version__}, gendsl {gendsl.__version__}"
    if any(s.name == "Pyro" for s in systems):
        import pyro
        import torch

        versions += f", pyro {pyro.__version__}, torch {torch.__version__}"
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(
        f"noisy cone, z = {Z_OBS}: {args.steps} SGD steps (lr 1e-3), seeds 0-{args.seeds - 1}, "
        f"{args.eval_samples} fresh evaluation estimates per trained guide\n"
        f"{started:%Y-%m-%d %H:%M}; {cpu_name()}, {cpus} CPU cores, CPU only; {versions}, "
        f"Python {platform.python_version()}\n"
    )
    for line in [*notes, pyro_note]:
        if line:
            print(f"- {line}")
    print(
        "\n| objective | system | value per seed (mean ± s.e.) | mean over seeds ± sd | genjax.vi (paper) "
        "| seconds per run (train + eval) | trained (μ₁, μ₂, ℓ₁, ℓ₂), seed 0 |"
    )
    print("|---|---|---|---|---|---|---|")
    summary = {}
    for (name, system), runs in results.items():
        means = np.array([r[0] for r in runs])
        sd = float(means.std(ddof=1)) if len(means) > 1 else float("nan")
        per_seed = ", ".join(f"{m:.2f} ± {se:.2f}" for m, se, _, _ in runs)
        p0 = runs[0][2]
        shown = ", ".join(f"{p0[k]:.3f}" for k in ("mu1", "mu2", "log_sigma1", "log_sigma2"))
        secs = np.median([r[3] for r in runs])
        print(
            f"| {name} | {system} | {per_seed} | {means.mean():.2f} ± {sd:.2f} | {PAPER[name]:.2f} | "
            f"{secs:.1f} | {shown} |"
        )
        summary[f"{name}/{system}"] = {"mean": float(means.mean()), "sd": sd, "per_seed": means.tolist()}
    print("JSON: " + json.dumps(summary))


if __name__ == "__main__":
    main()
