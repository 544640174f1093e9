"""``gendsl fit --method nuts``: sample the program's model with NUTS and write the run folder.

The sampling is the library's ``gendsl.inference.nuts`` (NumPyro's NUTS on the gendsl model,
returned as ArviZ ``InferenceData``); this module checks the program and the options, then
writes ``posterior.nc`` (posterior, sample_stats with ``diverging``, log_likelihood,
observed_data), ``summary.txt`` (mean, sd, quantiles, MCSE, bulk and tail ESS, R-hat per
component, and the number of divergences), ``trace.png`` (log density by chain),
``marginals.png``, ``report.html`` and ``config.json``.

No guide is needed, and none of the VI options apply: an option given on the command line that
the chosen method does not use is an error (a VI option in the program's ``defaults`` is simply
not used). A NUTS run is one call, so it has no checkpoints and cannot be resumed; ``eval`` and
``sample`` read its draws (``_posterior_run``). ``metrics.csv`` holds the per-draw sampler
statistics (log density, step size, tree depth, acceptance, divergence) by chain.
Chains run vectorized by default (``--chain-method``; see
``gendsl.inference.nuts`` for the choice).
"""

from __future__ import annotations

import datetime
import os
import sys
import time
import uuid

import jax
import numpy as np

import gendsl
from gendsl import handlers
from gendsl.cli import _options, _report
from gendsl.cli._errors import CLIError
from gendsl.cli._program import Program, find_models, load_data
from gendsl.cli._runfolder import RunFolder
from gendsl.cli._setup import device_context, shapes

__all__ = ["fit_nuts", "check_method_options", "NUTS_OPTIONS", "SHARED_OPTIONS", "RHAT_LIMIT"]

#: Options only ``--method nuts`` uses.
NUTS_OPTIONS = ("chains", "draws", "target_accept", "chain_method")
#: Options both methods use; every other option is a VI option.
SHARED_OPTIONS = ("method", "seed", "data", "model", "device", "out", "warmup")  # warmup: per method
#: R-hat above this is reported as a warning (Vehtari et al. 2021 recommend 1.01).
RHAT_LIMIT = 1.01


def check_method_options(args, method: str) -> None:
    """An option given on the command line that ``method`` does not use is a one-line error.

    Raises:
        CLIError: naming the option and the method it belongs to.
    """
    for option in _options.FIT_OPTIONS:
        name = option.name
        if name in SHARED_OPTIONS or getattr(args, name, None) is None:
            continue
        flag = "--" + name.replace("_", "-")
        if method == "nuts" and name not in NUTS_OPTIONS:
            raise CLIError(f"{flag} applies to --method vi; --method nuts samples the model without a guide, "
                           "optimizer or steps: drop it")
        if method == "vi" and name in NUTS_OPTIONS:
            raise CLIError(f"{flag} applies to --method nuts; add --method nuts, or drop it")
    if method == "nuts" and getattr(args, "resume", False):
        raise CLIError("--resume: a --method nuts run is one call, with no checkpoint to resume; run it again "
                       "(with --overwrite)")


def _model(program: Program, name: str | None, example):
    """The program's model (``--model NAME``, else ``model``, else the one model that observes data)."""
    obj = program.get(name or "model")
    if obj is None and name is not None:
        raise CLIError(f"{program.path}: --model {name}: the program defines no `{name}`")
    if obj is None:
        found = find_models(program, None, None, example)
        return found[0], found[2]
    if isinstance(obj, gendsl.Model):
        return obj, name or "model"
    if callable(obj) and not isinstance(obj, type):
        return gendsl.model(obj), name or "model"
    raise CLIError(f"{program.path}: `{name or 'model'}` is a {type(obj).__name__}, not a @gendsl.model")


def _check_sites(program: Program, model, data) -> list[str]:
    """The model's latent sites, checked to be continuous (what NUTS can sample)."""
    trace = program.call("in the model", lambda: handlers.trace(handlers.seed(model, key=jax.random.key(0)))
                         .get_trace(data))
    latent = [n for n, s in trace.items() if s["type"] == "sample" and not s.get("is_observed")]
    if not latent:
        raise CLIError(f"{program.path}: the model has no latent sites (every sample site is observed): there is "
                       "nothing for NUTS to sample")
    for name in latent:
        support = getattr(trace[name]["fn"], "support", None)
        if support is not None and support.is_discrete:
            raise CLIError(f"{program.path}: site '{name}' is discrete; NUTS samples continuous latents only: use "
                           "--method vi (with --strategy enum or reinforce)")
    if not any(s.get("is_observed") for s in trace.values() if s["type"] == "sample"):
        raise CLIError(f"{program.path}: the model observes no data (no sample site with obs=): NUTS would sample "
                       "the prior; give the data to the model")
    return latent


def _out(folder: RunFolder, overwrite: bool) -> None:
    if os.path.exists(folder.path) and not os.path.isdir(folder.path):
        raise CLIError(f"--out {folder.path}: exists and is not a directory")
    ours = folder.run_files()
    if ours and not overwrite:
        raise CLIError(f"--out {folder.path} already holds a run ({', '.join(ours[:3])}...); pass --overwrite to "
                       "replace it, or choose another --out")


def diagnostics_table(idata) -> tuple[str, dict]:
    """The ArviZ summary of a NUTS posterior with MCSE, ESS and R-hat, and the figures for warnings."""
    import arviz as az
    import xarray as xr

    post = idata.posterior
    parts = _report.components(post, limit=10**9)
    shown = dict(list(parts.items())[:40])
    dataset = xr.Dataset({k: (("chain", "draw"), v) for k, v in shown.items()})
    stats = {"5%": lambda x: np.quantile(x, 0.05), "50%": lambda x: np.quantile(x, 0.5),
             "95%": lambda x: np.quantile(x, 0.95)}
    table = az.summary(dataset, stat_funcs=stats, extend=True, round_to=4)
    columns = ["mean", "sd", "5%", "50%", "95%", "mcse_mean", "ess_bulk", "ess_tail", "r_hat"]
    table = table[[c for c in columns if c in table.columns]]
    all_rhat = az.rhat(xr.Dataset({k: (("chain", "draw"), v) for k, v in parts.items()}))
    rhat = max((float(all_rhat[k]) for k in parts), default=float("nan"))
    figures = {
        "divergences": int(np.asarray(idata.sample_stats["diverging"].values).sum()),
        "max_r_hat": rhat,
        "min_ess_bulk": float(table["ess_bulk"].min()) if "ess_bulk" in table else float("nan"),
        "components": len(parts),
        "shown": len(shown),
    }
    return table.to_string(), figures


def fit_nuts(args, program: Program, options: dict) -> int:
    """Run ``gendsl fit --method nuts`` with resolved ``options``; returns the exit code."""
    if options.get("warmup") is None:  # --warmup is shared with VI (learning-rate warm-up there)
        options = dict(options, warmup=1000)
    from gendsl.inference import nuts

    quiet = args.quiet
    folder = RunFolder(options["out"])
    folder.check_unlocked()
    with device_context(options["device"]):
        data = load_data(program, options["data"])
        model, model_name = _model(program, options["model"], data.train)
        latent = _check_sites(program, model, data.train)
        if options["chain_method"] == "parallel" and options["chains"] > jax.local_device_count():
            raise CLIError(f"--chain-method parallel needs one device per chain ({options['chains']}); JAX has "
                           f"{jax.local_device_count()}: use --chain-method vectorized or sequential")
        _out(folder, args.overwrite)
        folder.create()
        with folder.lock():
            _out(folder, args.overwrite)
            folder.clean_leftovers()
            for stale in (RunFolder.CHECKPOINT, RunFolder.PARAMS, RunFolder.METRICS, RunFolder.LOSS,
                          RunFolder.EVAL, RunFolder.SAMPLES, RunFolder.SAMPLES_PNG, _report.MARGINALS):
                if folder.has(stale):  # --overwrite of another run: its files would describe the wrong run
                    os.remove(folder.file(stale))
            config = _config(args, program, options, model_name, data)
            folder.write_json(RunFolder.CONFIG, config)
            o = options
            if not quiet:
                print(f"gendsl fit {program.path} --method nuts -> {o['out']}\n  model `{model_name}`; {o['chains']} "
                      f"chains ({o['chain_method']}), {o['warmup']} warm-up + {o['draws']} draws each; latents "
                      f"{', '.join(latent)}; seed {o['seed']}", file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            try:
                idata = program.call(
                    "while sampling with NUTS", nuts, model, jax.random.key(o["seed"]), data.train,
                    num_chains=o["chains"], num_warmup=o["warmup"], num_samples=o["draws"],
                    chain_method=o["chain_method"], target_accept_prob=o["target_accept"])
            except BaseException:
                folder.write_json(RunFolder.CONFIG, dict(config, status="stopped: sampling failed"))
                raise
            wall = time.perf_counter() - t0
            _write(folder, program, options, model_name, idata, config, wall)
    return 0


def _config(args, program: Program, options: dict, model_name: str, data) -> dict:
    from gendsl.cli._fit import versions

    return {
        "gendsl_version": gendsl.__version__,
        "versions": versions(),
        "command": ["gendsl", *getattr(args, "argv", [])],
        "program": os.path.abspath(program.path),
        "program_sha256": program.sha256,
        "options": {k: options[k] for k in (o.name for o in _options.FIT_OPTIONS)},
        "resolved": {
            "method": "nuts",
            "model": model_name,
            "train_shapes": shapes(data.train),
            "device": str(jax.devices()[0]) if options["device"] == "auto" else options["device"],
        },
        "run_id": uuid.uuid4().hex,
        "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "status": "running",
    }


def _sample_stats_csv(idata) -> str:
    """NUTS's per-draw statistics as CSV: one row per chain and draw, one column per statistic."""
    stats = idata.sample_stats
    names = [n for n in stats.data_vars if stats[n].dims == ("chain", "draw")]
    columns = {n: np.asarray(stats[n].values) for n in names}
    chains, draws = next(iter(columns.values())).shape
    lines = [",".join(["chain", "draw", *names])]
    for c in range(chains):
        for d in range(draws):
            lines.append(",".join([str(c), str(d), *(_cell(columns[n][c, d]) for n in names)]))
    return "\n".join(lines) + "\n"


def _cell(value) -> str:
    if isinstance(value, (bool, np.bool_)):
        return str(int(value))
    return f"{value:.9g}" if isinstance(value, (float, np.floating)) else str(value)


def _write(folder: RunFolder, program: Program, options: dict, model_name: str, idata, config, wall: float) -> None:
    from gendsl.cli._outputs import write_posterior

    o = options
    write_posterior(idata, folder)
    folder.write_with(RunFolder.METRICS, lambda f: f.write(_sample_stats_csv(idata).encode()))
    table, figures = diagnostics_table(idata)
    title = os.path.basename(program.path)
    folder.write_bytes(_report.TRACE, _report.plot_trace(idata, title))
    folder.write_bytes(_report.MARGINALS, _report.plot_marginals(idata.posterior, f"{title}: NUTS posterior"))
    total = o["chains"] * o["draws"]
    warnings = []
    if figures["divergences"]:
        warnings.append(f"warning: {figures['divergences']} divergent transitions of {total} draws: the posterior "
                        f"may be biased; raise --target-accept (now {o['target_accept']:g}) or reparameterize")
    if o["chains"] > 1 and figures["max_r_hat"] > RHAT_LIMIT:
        warnings.append(f"warning: largest R-hat {figures['max_r_hat']:.3f} > {RHAT_LIMIT}: the chains disagree; "
                        "raise --warmup and --draws")
    header = [
        f"gendsl fit {program.path} --method nuts  (gendsl {gendsl.__version__})",
        f"model `{model_name}`; NUTS, {o['chains']} chains x ({o['warmup']} warm-up + {o['draws']} draws), "
        f"{o['chain_method']}, target acceptance {o['target_accept']:g}; {wall:.1f} s",
        f"divergences: {figures['divergences']} of {total}; largest R-hat: {figures['max_r_hat']:.4f}; "
        f"smallest bulk ESS: {figures['min_ess_bulk']:.0f}",
        *warnings,
        "",
        f"Posterior summary ({total} draws; R-hat and ESS as in Vehtari et al. 2021):",
    ]
    notes = []
    if figures["shown"] < figures["components"]:
        notes.append(f"the table shows {figures['shown']} of {figures['components']} numbers (all are in "
                     "posterior.nc)")
    from gendsl.cli._outputs import write_summary

    write_summary(folder, header, table, notes)
    diagnostics = {"divergences": figures["divergences"], "max_r_hat": figures["max_r_hat"],
                   "min_ess_bulk": figures["min_ess_bulk"]}
    folder.write_json(RunFolder.CONFIG, dict(config, status="completed", wall_s=round(wall, 3),
                                             diagnostics=diagnostics))
    _report.build(folder)
    print(f"sampled {o['chains']} chains x {o['draws']} draws in {wall:.1f} s (compilation included)")
    print(header[2])
    for line in warnings:
        print(line)
    print(f"wrote {o['out']}/: {RunFolder.POSTERIOR}, {RunFolder.METRICS}, {RunFolder.SUMMARY}, {_report.TRACE}, "
          f"{_report.MARGINALS}, {_report.REPORT}, {RunFolder.CONFIG}")
