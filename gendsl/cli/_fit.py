"""``gendsl fit``: train, checkpoint, resume, and write the run's outputs.

Training runs in chunks of ``--chunk-size`` steps, each one compiled
``lax.scan`` over the pure step (one compilation for the whole run: a chunk
always has the same length, and steps past the end of a shorter chunk are
masked out). The minibatch of step ``t`` is drawn with
``fold_in(batch_key, t)`` and every other random number comes from the state's
own key, so the parameters after step ``t`` depend only on the seed and ``t``,
not on how the steps were split into chunks or sessions: a run interrupted and
resumed with ``--resume`` ends bit-for-bit where an uninterrupted run ends.

A checkpoint (``checkpoint.npz``: the whole SVI state, and ``params.npz``: the
constrained parameters) is written atomically every ``--checkpoint-every``
steps, at the end, and when SIGINT or SIGTERM arrives (training stops at the
end of the current chunk). A non-finite objective or gradient stops training,
reports the step and leaves the last checkpoint (all finite) in place.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import signal
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import gendsl
from gendsl.cli import _options, _outputs
from gendsl.cli._checkpoint import load_tree, save_tree
from gendsl.cli._errors import CLIError, TrainingStopped
from gendsl.cli._program import load_program, take
from gendsl.cli._run import read_config
from gendsl.cli._setup import Setup, device_context, prepare, shapes

__all__ = ["fit", "versions", "RESUMABLE"]

# Options a resumed run may change; any other must equal the run's (the result would differ otherwise).
RESUMABLE = ("steps", "checkpoint_every", "device", "out", "posterior_draws", "posterior_points", "data")

FILES = ("params.npz", "metrics.csv", "loss.png", "posterior.nc", "summary.txt", "config.json")


def versions() -> dict:
    """Versions of gendsl and the libraries that determine the numbers."""
    import equinox
    import jaxlib
    import numpyro
    import optax

    return {
        "gendsl": gendsl.__version__,
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "numpyro": numpyro.__version__,
        "optax": optax.__version__,
        "equinox": equinox.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def _say(quiet: bool, text: str) -> None:
    if not quiet:
        print(text, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- options


def _resolve(args, program) -> tuple[dict, dict | None]:
    """The options, and the saved config when resuming."""
    given = {o.name: getattr(args, o.name, None) for o in _options.FIT_OPTIONS}
    if not args.resume:
        return _options.merge(given, program.defaults, program.path), None
    # Resume: the run's own options, except those a resume may change.
    out = _options.merge({"out": given["out"]}, program.defaults, program.path)["out"]
    config_path = os.path.join(out, "config.json")
    if not os.path.exists(config_path):
        raise CLIError(f"--resume: {out} holds no run (no config.json); run without --resume to start one")
    config = read_config(config_path, "start a new run")
    saved = config["options"]
    options = dict(saved)
    for name, value in given.items():
        if value is None or name == "out":
            continue
        checked = _options.check(name, value, f"argument --{name.replace('_', '-')}")
        if name in RESUMABLE:
            options[name] = checked
        elif checked != saved.get(name) and not (name == "objective" and saved.get(name) in (None, "program")):
            raise CLIError(
                f"--resume: --{name.replace('_', '-')} {value} differs from the run's "
                f"{saved.get(name)!r}; a resumed run keeps its configuration (start a new --out to change it)"
            )
    options["out"] = out
    if options.get("schedule") != "constant" and options["steps"] != saved["steps"]:
        raise CLIError(f"--resume: the {options['schedule']} schedule depends on --steps ({saved['steps']}); "
                       "keep it, or start a new run")
    return options, config


def _check_out(out: str, resume: bool, overwrite: bool) -> None:
    ours = [f for f in ("config.json", "checkpoint.npz", *FILES) if os.path.exists(os.path.join(out, f))]
    if os.path.exists(out) and not os.path.isdir(out):
        raise CLIError(f"--out {out}: exists and is not a directory")
    if resume:
        if not os.path.exists(os.path.join(out, "checkpoint.npz")):
            raise CLIError(f"--resume: no checkpoint in {out}; run without --resume to start again")
        return
    if ours and not overwrite:
        raise CLIError(
            f"--out {out} already holds a run ({', '.join(ours[:3])}...); pass --resume to continue it, "
            "--overwrite to replace it, or choose another --out"
        )


# ----------------------------------------------------------------------------- training


class _Signals:
    """Turns the first SIGINT/SIGTERM into a flag checked between chunks; a second SIGINT stops at once."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._old: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signum

    def __enter__(self):
        with contextlib.suppress(ValueError):  # not in the main thread: leave signals alone
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)


def _make_chunk(setup: Setup, k_batches, length: int):
    """``chunk(state, data, n_valid) -> (state, objectives, finite)``: ``length`` steps, the first ``n_valid`` real.

    Step ``t``'s minibatch comes from ``fold_in(k_batches, t)``; a non-finite step and every step after it
    leave the state unchanged.
    """
    batch = setup.options["batch_size"]
    n = setup.n_train

    def chunk(state, data, n_valid):
        def body(carry, i):
            s, alive = carry
            active = alive & (i < n_valid)
            if batch:
                idx = jax.random.choice(jax.random.fold_in(k_batches, s.step), n, (batch,), replace=False)
                x = take(data, idx)
            else:
                x = data
            new, info = setup.step(s, x)
            ok = info["finite"]
            keep = active & ok
            s = jax.tree_util.tree_map(lambda a, b: jnp.where(keep, a, b), new, s)
            return (s, alive & (ok | ~active)), (info["objective"], ok)

        (state, _), (objective, finite) = jax.lax.scan(body, (state, jnp.array(True)), jnp.arange(length))
        return state, objective, finite

    return jax.jit(chunk)


def _held_out(setup: Setup, key):
    """``f(params) -> held-out ELBO`` (per data point with --batch-size), or None without test data."""
    from gendsl.inference import elbo

    test = setup.data.test
    if test is None:
        return None
    if setup.batched:
        n = min(jax.tree_util.tree_leaves(test)[0].shape[0], 1000)
        test = take(test, jnp.arange(n))
        samples, scale = 10, 1.0 / n
    else:
        samples, scale = 100, 1.0
    objective = elbo(setup.model, setup.guide)
    # The same key at every evaluation: common random numbers make the curve smooth.
    estimate = jax.jit(lambda p, x: objective.estimate(key, p, x, samples=samples) * scale)
    return lambda params: float(estimate(params, test))


def fit(args) -> int:
    """Run ``gendsl fit`` with parsed arguments; returns the exit code."""
    quiet = args.quiet
    program = load_program(args.program)
    options, saved = _resolve(args, program)
    with device_context(options["device"]):
        k_init, k_batches, k_eval, k_post = jax.random.split(jax.random.key(options["seed"]), 4)
        setup = prepare(program, options, init_key=k_init)
        out = options["out"]
        _check_out(out, args.resume, args.overwrite)
        return _train(args, setup, saved, (k_batches, k_eval, k_post), quiet)


def _train(args, setup: Setup, saved, keys, quiet: bool) -> int:
    k_batches, k_eval, k_post = keys
    options = setup.options
    out = options["out"]
    svi, program = setup.svi, setup.program
    state = setup.state
    start_step, wall_before = 0, 0.0
    if saved is not None:
        if saved.get("program_sha256") != program.sha256:
            _say(quiet, f"warning: {program.path} changed since this run started; resuming with the new file")
        state, meta = load_tree(os.path.join(out, "checkpoint.npz"), state, "checkpoint")
        start_step, wall_before = int(meta["step"]), float(meta.get("wall_s", 0.0))
        if int(state.step) != start_step:
            raise CLIError(f"{out}/checkpoint.npz: damaged (its state is at step {int(state.step)}, its header "
                           f"says {start_step}); delete it and train again")
    os.makedirs(out, exist_ok=True)
    steps = options["steps"]
    config = {
        "gendsl_version": gendsl.__version__,
        "versions": versions(),
        "command": ["gendsl", *getattr(args, "argv", [])],
        "program": os.path.abspath(program.path),
        "program_sha256": program.sha256,
        "options": {k: options[k] for k in (o.name for o in _options.FIT_OPTIONS)},
        "resolved": {
            "model": setup.names[0],
            "guide": setup.names[1],
            "objective": setup.built.name,
            "particles": setup.built.particles,
            "replicates_per_step": setup.built.samples,
            "per_point": setup.per_point,
            "strategies": setup.rules,
            "train_shapes": shapes(setup.data.train),
            "test_shapes": shapes(setup.data.test) if setup.data.test is not None else None,
            "device": str(jax.devices()[0]) if options["device"] == "auto" else options["device"],
        },
        "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "resumed_from_step": start_step if saved is not None else None,
        "status": "running",
    }
    _outputs.write_json(os.path.join(out, "config.json"), config)
    metrics = _outputs.Metrics(os.path.join(out, "metrics.csv"))
    rows = metrics.start(start_step if saved is not None else None)
    held_out = _held_out(setup, k_eval)
    meta = {"kind": "checkpoint", "program_sha256": program.sha256}

    def checkpoint(state, step, wall):
        save_tree(os.path.join(out, "checkpoint.npz"), state, {**meta, "step": step, "wall_s": wall})
        save_tree(os.path.join(out, "params.npz"), svi.constrain(state.params),
                  {**meta, "kind": "params", "step": step})

    _say(quiet, _banner(setup, start_step))
    if start_step == 0:
        row = {"step": 0, "wall_s": 0.0}
        if held_out is not None:
            row["held_out_elbo"] = held_out(svi.constrain(state.params))
            rows.append(row)
            metrics.append([row])
        checkpoint(state, 0, 0.0)

    length, every, batch = options["chunk_size"], options["checkpoint_every"], options["batch_size"]
    chunk = _make_chunk(setup, k_batches, length)
    bar = _bar(steps, start_step, quiet)
    step, wall, saved_at = start_step, wall_before, start_step
    last = {"objective": None, "held_out": next((r["held_out_elbo"] for r in reversed(rows)
                                                 if r.get("held_out_elbo") is not None), None)}
    try:
        with _Signals() as signals:
            while step < steps:
                n_valid = min(length, steps - step, (step // every + 1) * every - step)
                t0 = time.perf_counter()
                new, objective, finite = chunk(state, setup.data.train, n_valid)
                objective = np.asarray(objective)[:n_valid]
                finite = np.asarray(finite)[:n_valid]
                wall += time.perf_counter() - t0
                good = int(np.argmin(finite)) if not finite.all() else n_valid
                new_rows = [
                    {"step": step + i + 1, "objective": float(objective[i]),
                     "objective_per_point": float(objective[i]) / batch if batch else None, "wall_s": wall}
                    for i in range(good)
                ]
                if good < n_valid:
                    metrics.append(new_rows)
                    rows.extend(new_rows)
                    bar.close()
                    stopped = step + good + 1
                    _finish_partial(setup, rows, config, f"stopped: non-finite objective or gradient at step {stopped}")
                    raise TrainingStopped(
                        f"objective or gradient is not finite at step {stopped} (objective {objective[good]!r}); "
                        f"stopped. The last checkpoint, at step {saved_at}, is kept in {out}; try a lower --lr "
                        f"(now {options['lr']:g}) or --clip, with a new --out",
                        code=1,
                    )
                state, step = new, step + n_valid
                last["objective"] = float(np.mean(objective)) / (batch or 1)
                at_checkpoint = step % every == 0 or step == steps
                if at_checkpoint and held_out is not None:
                    new_rows[-1]["held_out_elbo"] = last["held_out"] = held_out(svi.constrain(state.params))
                metrics.append(new_rows)  # before the checkpoint: a resume drops rows past it
                rows.extend(new_rows)
                if at_checkpoint or signals.received is not None:
                    checkpoint(state, step, wall)
                    saved_at = step
                bar.update(n_valid)
                bar.set_postfix(_postfix(last, batch), refresh=False)
                if signals.received is not None and step < steps:
                    bar.close()
                    name = signal.Signals(signals.received).name
                    _finish_partial(setup, rows, config, f"interrupted by {name} at step {step}")
                    raise TrainingStopped(
                        f"{name}: stopped at step {step}; checkpoint saved in {out}; continue with "
                        f"gendsl fit {program.path} --out {out} --resume",
                        code=128 + signals.received,
                    )
    except KeyboardInterrupt:
        bar.close()
        _finish_partial(setup, rows, config, f"interrupted at step {step}")
        raise TrainingStopped(f"interrupted at step {step}; the last checkpoint (step {saved_at}) is in {out}; "
                              "continue with --resume", code=130) from None
    bar.close()
    params = svi.constrain(state.params)
    _write_outputs(setup, params, rows, config, k_post, wall, (step - start_step, wall - wall_before), quiet)
    return 0


def _postfix(last, batch) -> dict:
    out = {}
    if last["objective"] is not None:
        out["objective" + ("/pt" if batch else "")] = f"{last['objective']:.4g}"
    if last["held_out"] is not None:
        out["held-out"] = f"{last['held_out']:.4g}"
    return out


def _bar(total: int, initial: int, quiet: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="step", desc="fit", dynamic_ncols=True, disable=quiet,
                file=sys.stderr, smoothing=0.3, mininterval=0.25)


def _banner(setup: Setup, start: int) -> str:
    o = setup.options
    data = f"{setup.n_train} training points" if setup.batched else "full data every step"
    if setup.batched:
        data = f"minibatches of {o['batch_size']} of {setup.n_train} training points"
    if setup.data.test is not None:
        n_test = jax.tree_util.tree_leaves(setup.data.test)[0].shape[0] if setup.batched else None
        data += f" ({n_test} held out)" if n_test else " (with test data)"
    k = f", K={setup.built.particles}" if setup.built.particles else ""
    point = ", per data point" if setup.per_point else ""
    resumed = f", resuming at step {start}" if start else ""
    strat = f"; strategies {', '.join(setup.rules)}" if setup.rules else ""
    return (
        f"gendsl fit {setup.program.path} -> {o['out']}\n"
        f"  model `{setup.names[0]}`, guide `{setup.names[1]}`; objective {setup.built.name}{k}{point}{strat}\n"
        f"  {o['optimizer']} lr {o['lr']:g} ({o['schedule']}); {o['steps']} steps{resumed}; {data}; "
        f"seed {o['seed']}"
    )


def _finish_partial(setup: Setup, rows, config, status: str) -> None:
    out = setup.options["out"]
    config = dict(config, status=status)
    _outputs.write_json(os.path.join(out, "config.json"), config)
    with contextlib.suppress(Exception):  # a plot must never hide the real error
        _outputs.plot_loss(rows, os.path.join(out, "loss.png"), os.path.basename(setup.program.path))


def _write_outputs(setup: Setup, params, rows, config, key, wall: float, session: tuple, quiet: bool) -> None:
    out, o = setup.options["out"], setup.options
    _outputs.plot_loss(rows, os.path.join(out, "loss.png"), os.path.basename(setup.program.path))
    _say(quiet, "writing posterior.nc and summary.txt ...")
    idata, covered, notes = _outputs.posterior(setup, params, key, o["posterior_draws"], o["posterior_points"])
    _outputs.write_posterior(idata, os.path.join(out, "posterior.nc"))
    table, more = _outputs.summary_table(idata, covered)
    trained = [r for r in rows if r.get("objective") is not None]
    tail = trained[-max(1, len(trained) // 20):]
    key_name = "objective_per_point" if o["batch_size"] else "objective"
    final = float(np.mean([r[key_name] for r in tail])) if tail else float("nan")
    held = [r for r in rows if r.get("held_out_elbo") is not None]
    header = [
        f"gendsl fit {setup.program.path}  (gendsl {gendsl.__version__})",
        f"model `{setup.names[0]}`, guide `{setup.names[1]}`; objective {setup.built.name}"
        + (f", K={setup.built.particles}" if setup.built.particles else "")
        + f"; {o['steps']} steps; {wall:.1f} s of training",
        f"final objective{' per data point' if o['batch_size'] else ''} (mean of the last {len(tail)} steps): "
        f"{final:.4f}",
    ]
    per = " per data point" if setup.batched else ""
    if held:
        header.append(f"held-out ELBO{per}: {held[0]['held_out_elbo']:.3f} at step {held[0]['step']}, "
                      f"{held[-1]['held_out_elbo']:.3f} at step {held[-1]['step']}")
    header += ["", f"Posterior summary of the guide's draws ({idata.posterior.sizes['draw']} draws; a variational "
               "approximation, so no r_hat / ESS):"]
    _outputs.write_summary(os.path.join(out, "summary.txt"), header, table, notes + more)
    speed = session[0] / max(session[1], 1e-9)
    config = dict(config, status="completed", wall_s=round(wall, 3))
    _outputs.write_json(os.path.join(out, "config.json"), config)
    print(f"trained {o['steps']} steps in {wall:.1f} s ({speed:.0f} steps/s, compilation included)")
    if held:
        print(f"held-out ELBO{per}: {held[0]['held_out_elbo']:.2f} nats at step {held[0]['step']} -> "
              f"{held[-1]['held_out_elbo']:.2f} nats at step {held[-1]['step']}")
    print(f"final training objective{per}: {final:.2f}")
    print(f"wrote {out}/: {', '.join(FILES)}, checkpoint.npz")
