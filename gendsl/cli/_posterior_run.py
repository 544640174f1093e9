"""``gendsl eval`` and ``gendsl sample`` on a ``--method nuts`` run: its posterior draws, not parameters.

A NUTS run folder holds ``posterior.nc`` (the draws of every latent site, by chain) instead of
``params.npz``. ``eval`` reports the expected log predictive density: on held-out data the log
pointwise predictive density ``lpd`` (``gendsl.inference.log_predictive_density``), on the training
data PSIS-LOO (``arviz.loo``), each with its standard error. ``sample`` draws posterior
predictive data (latents from the draws, observations from the model), or prior predictive data
with ``--from prior``.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np

from gendsl import handlers
from gendsl.cli._errors import CLIError
from gendsl.cli._program import Program, load_data, load_program, take
from gendsl.cli._runfolder import RunFolder

__all__ = ["PosteriorRun", "is_nuts_run", "open_posterior", "evaluate_posterior", "sample_posterior"]


def is_nuts_run(path: str) -> bool:
    """Whether ``path`` is a run folder written by ``gendsl fit --method nuts``."""
    folder = RunFolder(path)
    if not os.path.isdir(path) or not folder.has(RunFolder.CONFIG):
        return False
    config = folder.read_config("train it again with this version")
    return (config.get("resolved") or {}).get("method") == "nuts"


@dataclasses.dataclass
class PosteriorRun:
    """A NUTS run folder with its program: the model, the data, and the draws by latent address."""

    folder: RunFolder
    program: Program
    model: object
    data: object
    idata: object
    draws: dict
    config: dict


def open_posterior(program_path: str, path: str, data_path: str | None) -> PosteriorRun:
    """Load a NUTS run's ``posterior.nc`` for the model of ``program_path``.

    Raises:
        CLIError: no or a damaged ``posterior.nc``, or draws that do not match the model's latents.
    """
    import arviz as az

    from gendsl.cli._nuts import _model

    folder = RunFolder(path)
    config = folder.read_config("train it again with this version")
    program = load_program(program_path)
    if config.get("program_sha256") != program.sha256:
        print(f"warning: {program_path} differs from the program this run was trained with")
    if not folder.has(RunFolder.POSTERIOR):
        raise CLIError(f"--run {path}: no {RunFolder.POSTERIOR}: the NUTS run did not finish; run it again")
    try:
        idata = az.from_netcdf(folder.file(RunFolder.POSTERIOR))
        posterior = idata.posterior
    except Exception as exc:  # netCDF/HDF5 raise many kinds
        raise CLIError(f"{folder.file(RunFolder.POSTERIOR)}: damaged ({type(exc).__name__}); run the fit again",
                       cause=exc) from exc
    data = load_data(program, data_path if data_path is not None else config["options"].get("data"))
    model, _ = _model(program, config["options"].get("model"), data.train)
    latent = program.call("in the model", lambda: sorted(jax.eval_shape(
        lambda: model.simulate(jax.random.key(0), data.train)).latents))
    draws = {}
    for address in latent:
        name = address.replace("/", ".")
        if name not in posterior:
            raise CLIError(f"{folder.file(RunFolder.POSTERIOR)}: no draws of the model's latent site '{address}' "
                           "(the program changed since the run?); fit it again")
        values = np.asarray(posterior[name].values)
        draws[address] = values.reshape(-1, *values.shape[2:])  # chains pooled: (chains * draws, ...)
    return PosteriorRun(folder, program, model, data, idata, draws, config)


def evaluate_posterior(args) -> int:
    """``gendsl eval`` of a NUTS run: held-out lpd, or PSIS-LOO on the training data."""
    from gendsl.inference import log_predictive_density, pointwise_log_likelihood

    run = open_posterior(args.program, args.run, args.data)
    test = run.data.test
    use_test = test is not None and args.split == "test"
    if args.split == "test" and test is None:
        print("note: the program's data() has no test split; PSIS-LOO on the training data")
    total = next(iter(run.draws.values())).shape[0]
    if use_test:
        leaves = jax.tree_util.tree_leaves(test)
        if args.limit and leaves[0].ndim:
            test = take(test, jnp.arange(min(leaves[0].shape[0], args.limit)))
        ll = run.program.call("in the model", pointwise_log_likelihood, run.model, run.draws, test)
        value, se, n = log_predictive_density(ll)
        metrics = {"lpd": (value, se)}
        what = f"log pointwise predictive density, nats per observed element ({n} test elements, {total} draws)"
        extra = {"points": n}
    else:
        import arviz as az

        loo = az.loo(run.idata, pointwise=True)
        n = int(np.size(loo.loo_i))
        bad = int(np.sum(np.asarray(loo.pareto_k) > 0.7))
        metrics = {"elpd_loo": (float(loo.elpd_loo), float(loo.se)), "p_loo": (float(loo.p_loo), float("nan"))}
        what = f"PSIS-LOO expected log predictive density, nats in total over {n} training elements"
        extra = {"points": n, "pareto_k_above_0.7": bad}
        if bad:
            print(f"warning: {bad} of {n} Pareto k values above 0.7: PSIS-LOO is unreliable for those points "
                  "(Vehtari et al. 2017); hold out data and evaluate --split test instead")
    table = {name: {"value": v, "se": e} for name, (v, e) in metrics.items()}
    result = {"kind": "nuts", "split": "test" if use_test else "train", **extra, "draws": total,
              "metrics": table}
    path = run.folder.write_json(RunFolder.EVAL, result)
    print(f"{os.path.basename(args.program)} (NUTS, {total} draws), {what}:")
    for name, m in table.items():
        se = f" +- {m['se']:.3g}" if np.isfinite(m["se"]) else ""
        print(f"  {name:<10} {m['value']:12.5g}{se}")
    print(f"  (+- is the standard error over the elements) -> {path}")
    return 0


def sample_posterior(args) -> int:
    """``gendsl sample`` of a NUTS run: posterior predictive (default) or prior predictive draws."""
    from gendsl.cli._sample import _site_values

    for flag, value in (("--sampling-steps", args.sampling_steps), ("--sampler", args.sampler),
                        ("--class", args.label), ("--guidance-scale", args.guidance_scale)):
        if value is not None:
            raise CLIError(f"{flag}: applies to a Trainable run; this is a NUTS run of a model: drop it")
    run = open_posterior(args.program, args.run, args.data)
    source = args.source or "posterior"
    total = next(iter(run.draws.values())).shape[0]
    key = jax.random.key(args.seed)
    k_pick, k_draw = jax.random.split(key)
    # n of the pooled posterior draws, without replacement while there are enough.
    pick = np.asarray(jax.random.choice(k_pick, total, (args.n,), replace=args.n > total))
    latents = {a: jnp.asarray(v[pick]) for a, v in run.draws.items()}
    observed = run.program.call("in the model", lambda: jax.eval_shape(
        lambda: run.model.simulate(jax.random.key(0), run.data.train)).observed)
    free = handlers.uncondition(run.model)

    def draw(k, chosen):
        fn = handlers.substitute(free, data=chosen) if source == "posterior" else free
        return _site_values(handlers.trace(handlers.seed(fn, key=k)).get_trace(run.data.train), observed)

    keys = jax.random.split(k_draw, args.n)
    values, means = run.program.call("in the model", jax.jit(jax.vmap(draw)), keys, latents)
    out = RunFolder(args.out) if args.out else run.folder
    out.create()
    arrays = {name.replace("/", "."): np.asarray(v) for name, v in values.items()}
    arrays.update({f"{name.replace('/', '.')}.mean": np.asarray(v) for name, v in means.items()})
    npz = out.write_with(RunFolder.SAMPLES, lambda f: np.savez(f, **arrays))
    what = (f"posterior predictive draws ({args.n} of the {total} NUTS draws)" if source == "posterior"
            else "prior predictive draws")
    print(f"{args.n} {what} -> {npz}")
    for name, v in values.items():
        v = np.asarray(v)
        kind = "observed" if name in observed else "latent"
        print(f"  {name:<16} {kind:<9} shape {v.shape!s:<16} mean {v.mean():.4g}  sd {v.std():.4g}")
    return 0
