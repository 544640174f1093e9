"""Worker: ``fit_many`` against separate ``SVI.run`` calls, on one device and split over a 4-device mesh; JSON out.

Run as ``python tests/scale/_fits.py OUT.json`` (forces 4 host devices before JAX starts).
"""

from __future__ import annotations

import json
import os
import sys

STEPS, SEEDS, RATES = 40, (0, 1, 2, 3), (3e-3, 1e-2, 3e-2, 1e-1)


def main(out_path):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip()
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from _programs import _vae, binary_data

    from gendsl.inference import SVI, data_mesh, elbo, fit_many

    model, guide = _vae()
    data = binary_data()

    def flat(tree):
        return np.concatenate([np.asarray(a, np.float64).ravel() for a in jax.tree_util.tree_leaves(tree)]).tolist()

    def record(results):
        return [{"objective": r.objective.tolist(), "params": flat(r.params), "step": int(r.state.step)}
                for r in results]

    options = {"batch_size": 32, "chunk_size": 20, "progress": False}
    svi = SVI(elbo(model, guide), optax.adam(1e-2))
    out = {
        "separate": record([svi.run(jax.random.key(s), STEPS, data, **options) for s in SEEDS]),
        "many": record(fit_many(svi, [jax.random.key(s) for s in SEEDS], STEPS, data, **options)),
        "many_mesh": record(fit_many(svi, [jax.random.key(s) for s in SEEDS], STEPS, data, mesh=data_mesh(4),
                                     **options)),
    }
    # A learning-rate grid: optax.inject_hyperparams puts the rate in the optimizer state, one per fit.
    grid = SVI(elbo(model, guide), optax.inject_hyperparams(optax.adam)(learning_rate=1e-2))
    out["grid_separate"] = record([
        SVI(elbo(model, guide), optax.inject_hyperparams(optax.adam)(learning_rate=lr)).run(
            jax.random.key(5), STEPS, data, **options)
        for lr in RATES
    ])
    out["grid_many"] = record(fit_many(grid, [jax.random.key(5)] * len(RATES), STEPS, data, mesh=data_mesh(2),
                                       hyperparams={"learning_rate": jnp.array(RATES)}, **options))
    # Resuming: 20 steps, then 20 more from the states (a checkpoint per fit).
    first = fit_many(svi, [jax.random.key(s) for s in SEEDS], STEPS // 2, data, **options)
    rest = fit_many(svi, [jax.random.key(s) for s in SEEDS], STEPS - STEPS // 2, data,
                    states=[jax.device_get(r.state) for r in first], **options)
    out["resumed"] = [{"objective": a.objective.tolist() + b.objective.tolist(), "params": flat(b.params)}
                      for a, b in zip(first, rest, strict=True)]
    with open(out_path, "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main(sys.argv[1])
