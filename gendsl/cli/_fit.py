"""``gendsl fit``: train, checkpoint, resume, and write the run's outputs.

Training is ``gendsl.inference.SVI.run``: ``--chunk-size`` steps per compiled ``lax.scan``,
chunks ending at every ``--checkpoint-every`` step, the minibatch of step ``t`` drawn with
``fold_in(batch_key, t)`` and every other random number from the state's own key. The
parameters after step ``t`` therefore depend only on the seed and ``t``, not on how the steps
were split into chunks or sessions: a run interrupted and resumed with ``--resume`` ends
bit-for-bit where an uninterrupted run ends. This module only supplies the callback that runs
after each chunk: metrics rows, the held-out ELBO, checkpoints, the progress bar, signals.

A checkpoint (``checkpoint.npz``: the whole SVI state, and ``params.npz``: the constrained
parameters) is written atomically every ``--checkpoint-every`` steps, at the end, and when
SIGINT or SIGTERM arrives (training stops at the end of the current chunk). A non-finite
objective or gradient, or an estimate past the library's divergence guard
(``gendsl.inference.DivergenceError``), stops training, reports the step and the cause and leaves
the last checkpoint (all finite) in place.

The run folder is locked (``RunFolder.lock``) from just before the first write to the end, so
two fits never interleave their records; everything that can be checked without writing (the
program, the options, one traced step, ``--resume --steps`` against the steps done) is
checked before the lock is taken. ``--steps`` is the total to reach: a resume with fewer steps
than the checkpoint holds is refused, never a rewrite of the record.

Slow divergence, which the library's guard does not see (an objective that worsens steadily by
orders of magnitude), is checked at each checkpoint against the run's start (``_worsened``): a
warning in the output and ``summary.txt``, or, with ``--stop-on-divergence``, the end of
training with the previous checkpoint kept (exit code 1).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import signal
import sys
import time
import uuid

import jax
import numpy as np

import gendsl
from gendsl.cli import _nuts, _options, _outputs, _report
from gendsl.cli._checkpoint import read_meta
from gendsl.cli._errors import CLIError, TrainingStopped
from gendsl.cli._program import load_program
from gendsl.cli._runfolder import RunFolder
from gendsl.cli._setup import Setup, device_context, prepare, shapes
from gendsl.inference import DivergenceError, NonFiniteError, elbo, held_out_estimate

__all__ = ["fit", "versions", "RESUMABLE"]

# Options a resumed run may change; any other must equal the run's (the result would differ otherwise).
RESUMABLE = ("steps", "checkpoint_every", "device", "devices", "out", "posterior_draws", "posterior_points", "data",
             "stop_on_divergence")
# An objective (to maximize) that falls below its start by more than this many times its starting magnitude
# (at least 1) has diverged: two orders of magnitude, far beyond the noise of a healthy run.
WORSENING = 100.0


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
    """The options, and the saved config when resuming (its options re-checked like any other source)."""
    given = {o.name: getattr(args, o.name, None) for o in _options.FIT_OPTIONS}
    if not args.resume:
        return _options.merge(given, program.defaults, program.path), None
    # Resume: the run's own options, except those a resume may change.
    out = _options.merge({"out": given["out"]}, program.defaults, program.path)["out"]
    folder = RunFolder(out)
    if not folder.has(RunFolder.CONFIG):
        raise CLIError(f"--resume: {out} holds no run (no config.json); run without --resume to start one")
    config = folder.read_config("start a new run")
    saved = _options.from_config(config["options"], folder.file(RunFolder.CONFIG), "fix it, or start a new run")
    config["options"] = saved
    options = dict(saved)
    for name, value in given.items():
        if value is None or name == "out":
            continue
        checked = _options.check(name, value, f"argument --{name.replace('_', '-')}")
        if name in RESUMABLE:
            options[name] = checked
        elif checked != saved.get(name) and not (name == "objective" and saved.get(name) in (None, "program")):
            raise CLIError(
                f"--resume: --{name.replace('_', '-')} {_options.show(checked)} differs from the run's "
                f"{_options.show(saved.get(name))}; a resumed run keeps its configuration (start a new --out to "
                "change it)"
            )
    options["out"] = out
    if options.get("schedule") != "constant" and options["steps"] != saved["steps"]:
        raise CLIError(f"--resume: the {options['schedule']} schedule depends on --steps ({saved['steps']}); "
                       "keep it, or start a new run")
    if folder.has(RunFolder.CHECKPOINT):
        done = int(read_meta(folder.file(RunFolder.CHECKPOINT), "checkpoint").get("step", 0))
        if options["steps"] < done:
            raise CLIError(
                f"--resume --steps {options['steps']}: the run in {out} has already done {done} steps and --steps "
                f"is the total to reach, not steps to add; pass --steps {done} or more"
            )
    return options, config


def _check_out(folder: RunFolder, resume: bool, overwrite: bool) -> None:
    ours = folder.run_files()
    if os.path.exists(folder.path) and not os.path.isdir(folder.path):
        raise CLIError(f"--out {folder.path}: exists and is not a directory")
    if resume:
        if not folder.has(RunFolder.CHECKPOINT):
            raise CLIError(f"--resume: no checkpoint in {folder.path}; run without --resume to start again")
        return
    if ours and not overwrite:
        raise CLIError(
            f"--out {folder.path} already holds a run ({', '.join(ours[:3])}...); pass --resume to continue it, "
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


def _held_out(setup: Setup, key):
    """``f(params) -> held-out figure`` (``gendsl.inference.held_out_estimate``), or None without test data.

    VI runs: the ELBO (per data point with --batch-size); other kinds: their training objective
    (already a mean per point). Up to 1,000 held-out points.
    """
    if setup.data.test is None:
        return None
    if setup.kind.kind != "vi":
        return held_out_estimate(setup.built.objective, key, setup.data.test, samples=4,
                                 pointwise=setup.built.svi_per_point)
    samples = 10 if setup.batched else 100
    return held_out_estimate(elbo(setup.model, setup.guide), key, setup.data.test, samples=samples,
                             limit=1000 if setup.batched else None, per_point=setup.batched)


def fit(args) -> int:
    """Run ``gendsl fit`` with parsed arguments; returns the exit code."""
    quiet = args.quiet
    program = load_program(args.program)
    if args.resume and getattr(args, "seeds", None) is not None:
        raise CLIError("--resume with --seeds: each seed's run is a folder of its own; resume one with gendsl fit "
                       f"{args.program} --out OUT/seed<k> --resume")
    options, saved = _resolve(args, program)
    _nuts.check_method_options(args, options["method"])
    if options["method"] == "nuts":
        return _nuts.fit_nuts(args, program, options)
    if options.get("seeds") is not None:
        from gendsl.cli._seeds import fit_seeds

        return fit_seeds(args, program, options)
    folder = RunFolder(options["out"])
    folder.check_unlocked()  # a busy folder fails now, not after tracing the program
    with device_context(options["device"]):
        k_train, k_eval, k_post = jax.random.split(jax.random.key(options["seed"]), 3)
        # SVI.run(k_train, ...) draws minibatches from split(k_train)[1]; the state starts from split(k_train)[0].
        choice = (saved or {}).get("resolved", {}).get("strategy_choice")
        setup = prepare(program, options, init_key=jax.random.split(k_train)[0], strategy_choice=choice)
        _check_out(folder, args.resume, args.overwrite)
        folder.create()
        with folder.lock():
            if saved is not None:
                _same_run(folder, saved)
            _check_out(folder, args.resume, args.overwrite)  # again, now that no other fit can write here
            folder.clean_leftovers()
            return _train(args, setup, folder, saved, (k_train, k_eval, k_post), quiet)


def _same_run(folder: RunFolder, saved: dict) -> None:
    """The run to resume is still the one whose configuration was read before the lock was taken."""
    now = folder.read_config("start a new run")
    if now.get("run_id") != saved.get("run_id") or now.get("started") != saved.get("started"):
        raise CLIError(f"--resume: the run in {folder.path} was replaced while this one started; run the command "
                       "again")


def _worsened(start: float | None, value: float | None) -> bool:
    """Whether ``value`` of an objective to maximize is worse than ``start`` by orders of magnitude."""
    if start is None or value is None or not np.isfinite(start) or not np.isfinite(value):
        return False
    return start - value > WORSENING * max(1.0, abs(start))


class _Progress:
    """The callback of ``SVI.run``: after each chunk, metrics rows, held-out ELBO, checkpoints, bar, signals."""

    def __init__(self, setup: Setup, folder: RunFolder, config: dict, metrics, rows, held_out, bar, signals,
                 start: int, wall: float, meta: dict, quiet: bool) -> None:
        self.setup, self.folder, self.config, self.metrics, self.rows = setup, folder, config, metrics, rows
        self.held_out, self.bar, self.signals, self.meta, self.quiet = held_out, bar, signals, meta, quiet
        self.step, self.saved_at, self.wall = start, start, wall
        self.t0 = time.perf_counter()
        self.column = setup.held_out_column
        self.last = {"objective": None, "held_out": next((r[self.column] for r in reversed(rows)
                                                          if r.get(self.column) is not None), None)}
        self.warning: str | None = None  # the first divergence warning
        self.diverged_at: int | None = None  # the step where --stop-on-divergence stopped training

    def checkpoint(self, state, step: int) -> None:
        self.folder.save_tree(RunFolder.CHECKPOINT, state, {**self.meta, "step": step, "wall_s": self.wall})
        self.folder.save_tree(RunFolder.PARAMS, self.setup.svi.get_params(state),
                              {**self.meta, "kind": "params", "step": step})
        if state.ema is not None:
            self.folder.save_tree(RunFolder.EMA_PARAMS, self.setup.svi.get_ema_params(state),
                                  {**self.meta, "kind": "ema_params", "step": step})
        self.saved_at = step

    def _start(self, column: str) -> tuple[int, float] | None:
        """The run's first value of a metrics column: the held-out ELBO at step 0, the objective at step 1."""
        return next(((r["step"], r[column]) for r in self.rows if r.get(column) is not None), None)

    def _divergence(self, step: int, objective: float) -> str | None:
        """A warning line when the held-out ELBO or the training objective has worsened by orders of magnitude."""
        per = " per data point" if self.setup.options["batch_size"] and _sums_points(self.setup) else ""
        column = "objective_per_point" if per else "objective"
        held = "held-out ELBO" if self.column == "held_out_elbo" else "held-out objective"
        for what, start, now in ((held, self._start(self.column), self.last["held_out"]),
                                 (f"training objective{per}", self._start(column), objective)):
            if start is not None and _worsened(start[1], now):
                return (f"warning: training diverges: the {what} fell from {start[1]:.4g} at step {start[0]} to "
                        f"{now:.4g} at step {step}, more than {WORSENING:g} times its starting magnitude; lower --lr "
                        f"(now {self.setup.options['lr']:g}) or pass --clip, in a new --out")
        return None

    def __call__(self, info) -> bool:
        now = time.perf_counter()
        self.wall += now - self.t0
        self.t0 = now
        o = self.setup.options
        # A Trainable's objective is usually a mean over the batch already; a VI bound, or a per_point
        # Trainable's objective (summed over the batch by SVI), is a sum.
        batch, steps = (o["batch_size"] if _sums_points(self.setup) else None), o["steps"]
        start = info.step - len(info.objective)
        new_rows = [
            {"step": start + i + 1, "objective": float(v),
             "objective_per_point": float(v) / batch if batch else None, "wall_s": self.wall}
            for i, v in enumerate(info.objective)
        ]
        self.step = info.step
        self.last["objective"] = float(np.mean(info.objective)) / (batch or 1)
        at_checkpoint = info.step % o["checkpoint_every"] == 0 or info.step == steps
        if info.validation is not None and new_rows:  # the held-out figure, evaluated by the runner
            new_rows[-1][self.column] = self.last["held_out"] = float(info.validation)
        self.metrics.append(new_rows)  # before the checkpoint: a resume drops rows past it
        self.rows.extend(new_rows)
        if at_checkpoint:
            warning = self._divergence(info.step, self.last["objective"])
            if warning is not None and self.warning is None:
                self.warning = warning
                if not self.quiet:
                    self.bar.write(warning, file=sys.stderr)
            if warning is not None and o["stop_on_divergence"]:
                self.diverged_at = info.step
                return True  # no checkpoint here: the last one, before the divergence, is kept
        if at_checkpoint or self.signals.received is not None:
            self.checkpoint(info.state, info.step)
        self.bar.set_postfix(_postfix(self.last, batch), refresh=False)
        self.bar.update(len(info.objective))
        self.t0 = time.perf_counter()  # checkpoints and evaluation are not training time
        return self.signals.received is not None


def validation(setup: Setup, held_out) -> dict:
    """``SVI.run``'s (and ``fit_many``'s) validation options: the held-out figure at every checkpoint, or every
    ``--validate-every`` steps with ``--patience``'s early stopping; none without a held-out split.

    ``held_out``: the held-out estimate, one per fit for ``fit_many``, or None.
    """
    if held_out is None:
        return {}
    o = setup.options
    out = {"validate": held_out, "validate_every": o.get("validate_every") or o["checkpoint_every"]}
    if o.get("patience") is not None:
        out["patience"] = o["patience"]
    return out


def begin_run(args, setup: Setup, folder: RunFolder, saved: dict | None, state, start_step: int, wall_before: float,
              k_eval, bar, signals, quiet: bool) -> _Progress:
    """Write the run's config.json, open its metrics, and at step 0 record the held-out figure and checkpoint.

    Returns the ``_Progress`` callback that carries the run from there (``.config``, ``.held_out``).
    """
    config = run_config(args, setup, saved, start_step)
    folder.write_json(RunFolder.CONFIG, config)
    metrics = _outputs.Metrics(folder)
    rows = metrics.start(start_step if saved is not None else None)
    held_out = _held_out(setup, k_eval)
    meta = {"kind": "checkpoint", "program_sha256": setup.program.sha256, "run_id": config["run_id"]}
    progress = _Progress(setup, folder, config, metrics, rows, held_out, bar, signals, start_step, wall_before,
                         meta, quiet)
    if start_step == 0:
        if held_out is not None:
            row = {"step": 0, "wall_s": 0.0}
            row[progress.column] = progress.last["held_out"] = held_out(setup.params_of(state))
            rows.append(row)
            metrics.append([row])
        progress.checkpoint(state, 0)
    return progress


def _strategy_choice(setup: Setup, saved: dict | None) -> dict | None:
    """What ``auto`` strategy rules chose at the run's start (``{site: strategy}``), kept across resumes."""
    choice = getattr(setup.svi, "strategy_choice", None)
    if choice is not None:
        return choice.labels()
    return (saved or {}).get("resolved", {}).get("strategy_choice")


def _sums_points(setup: Setup) -> bool:
    """Whether a step's objective is a sum over the minibatch's points (shown divided by the batch size)."""
    return setup.kind.kind == "vi" or setup.built.svi_per_point


def run_config(args, setup: Setup, saved: dict | None, start_step: int) -> dict:
    """The ``config.json`` of a run starting (or resuming at ``start_step``) with ``setup``."""
    options, program = setup.options, setup.program
    config = {
        "gendsl_version": gendsl.__version__,
        "versions": versions(),
        "command": ["gendsl", *getattr(args, "argv", [])],
        "program": os.path.abspath(program.path),
        "program_sha256": program.sha256,
        "options": {k: options[k] for k in (o.name for o in _options.FIT_OPTIONS)},
        "resolved": _resolved_direct(setup) if setup.kind.kind != "vi" else {
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
            "devices": setup.mesh.size if setup.mesh is not None else 1,
            "strategy_choice": _strategy_choice(setup, saved),
        },
        # Ties params.npz and checkpoint.npz to this config (eval/sample check it); kept across resumes.
        "run_id": saved.get("run_id") if saved is not None and saved.get("run_id") else uuid.uuid4().hex,
        "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "resumed_from_step": start_step if saved is not None else None,
        "status": "running",
    }
    return config


def _train(args, setup: Setup, folder: RunFolder, saved, keys, quiet: bool) -> int:
    k_train, k_eval, k_post = keys
    options = setup.options
    out = options["out"]
    svi, program = setup.svi, setup.program
    state = setup.state
    start_step, wall_before = 0, 0.0
    early = None
    if saved is not None:
        if saved.get("program_sha256") != program.sha256:
            _say(quiet, f"warning: {program.path} changed since this run started; resuming with the new file")
        state, meta = folder.load_tree(RunFolder.CHECKPOINT, state, "checkpoint")
        start_step, wall_before = int(meta["step"]), float(meta.get("wall_s", 0.0))
        if int(state.step) != start_step:
            raise CLIError(f"{out}/checkpoint.npz: damaged (its state is at step {int(state.step)}, its header "
                           f"says {start_step}); delete it and train again")
    folder.create()
    if saved is None and options.get("ema") is None and folder.has(RunFolder.EMA_PARAMS):
        os.remove(folder.file(RunFolder.EMA_PARAMS))  # left by the run --overwrite replaced
    steps = options["steps"]
    bar = _bar(steps, start_step, quiet)
    with _Signals() as signals:
        progress = begin_run(args, setup, folder, saved, state, start_step, wall_before, k_eval, bar, signals, quiet)
        config, held_out, rows = progress.config, progress.held_out, progress.rows
        _say(quiet, _banner(setup, start_step))
        if getattr(setup.svi, "strategy_choice", None) is not None:
            _say(quiet, "  strategy auto: measured gradient variance x time of the admissible strategies:\n"
                 + "\n".join("    " + line for line in setup.svi.strategy_choice.table().splitlines()))
        try:
            if start_step < steps:
                progress.t0 = time.perf_counter()
                result = svi.run(k_train, steps - start_step, setup.data.train, batch_size=options["batch_size"],
                                 chunk_size=options["chunk_size"], progress=False, state=state, callback=progress,
                                 align=options["checkpoint_every"], ema=options.get("ema"), mesh=setup.mesh,
                                 **validation(setup, held_out))
                state = result.state
                if (options.get("patience") is not None and result.stopped and result.best_step is not None
                        and signals.received is None and progress.diverged_at is None):
                    # --patience ran out: SVI.run returned the best state; it becomes the last checkpoint.
                    early = {"stopped_at": progress.step, "best_step": result.best_step,
                             "best_validation": max(v for _, v in result.validation)}
                    progress.checkpoint(state, result.best_step)
                    _say(quiet, f"early stopping at step {progress.step}: no improvement in {options['patience']} "
                         f"validations; restored the best state, step {result.best_step}")
        except NonFiniteError as exc:
            bar.close()
            value = _options.show(float(exc.value))
            if isinstance(exc, DivergenceError):
                cause = (f"the objective diverged at step {exc.step} (estimate {value}, past the divergence guard: "
                         "more than 10^6 times its running scale)")
                status = f"stopped: diverged at step {exc.step}"
            else:
                cause = f"the objective or its gradient is not finite at step {exc.step} (objective {value})"
                status = f"stopped: non-finite objective or gradient at step {exc.step}"
            _finish_partial(setup, folder, rows, config, status)
            raise TrainingStopped(
                f"{cause}; stopped. The last checkpoint, at step {progress.saved_at}, is kept in {out}; try a lower "
                f"--lr (now {options['lr']:g}) or --clip, with a new --out",
                code=1,
            ) from None
        except KeyboardInterrupt:
            bar.close()
            _finish_partial(setup, folder, rows, config, f"interrupted at step {progress.step}")
            raise TrainingStopped(f"interrupted at step {progress.step}; the last checkpoint (step "
                                  f"{progress.saved_at}) is in {out}; continue with --resume", code=130) from None
        if progress.diverged_at is not None:
            bar.close()
            _finish_partial(setup, folder, rows, config, f"stopped: diverged at step {progress.diverged_at}",
                            warning=progress.warning)
            raise TrainingStopped(
                f"{progress.warning.removeprefix('warning: ')}; stopped (--stop-on-divergence). The last checkpoint, "
                f"at step {progress.saved_at}, is kept in {out}",
                code=1,
            )
        if signals.received is not None and progress.step < steps:
            bar.close()
            name = signal.Signals(signals.received).name
            _finish_partial(setup, folder, rows, config, f"interrupted by {name} at step {progress.step}")
            raise TrainingStopped(
                f"{name}: stopped at step {progress.step}; checkpoint saved in {out}; continue with "
                f"gendsl fit {program.path} --out {out} --resume",
                code=128 + signals.received,
            )
    bar.close()
    params = setup.params_of(state)  # the EMA weights with --ema: what eval and sample use too
    wall = progress.wall
    if early is not None:
        config["early_stopping"] = early
    if setup.kind.kind != "vi":
        _write_direct_outputs(setup, folder, rows, config, wall, (progress.step - start_step, wall - wall_before),
                              quiet, progress.warning)
        return 0
    _write_outputs(setup, folder, params, rows, config, k_post, wall, (progress.step - start_step, wall - wall_before),
                   quiet, progress.warning)
    return 0


def _postfix(last, batch) -> dict:
    out = {}
    if last["objective"] is not None:
        out["objective" + ("/pt" if batch else "")] = f"{last['objective']:.4g}"
    if last["held_out"] is not None:
        out["held-out"] = f"{last['held_out']:.4g}"
    return out


def _bar(total: int, initial: int, quiet: bool, stream=None):
    """A progress bar on a terminal; on a file or pipe (CI logs), one plain line per 10% (``_Lines``)."""
    stream = sys.stderr if stream is None else stream
    if not quiet and not _is_terminal(stream):
        return _Lines(total, initial, stream)
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="step", desc="fit", dynamic_ncols=True, disable=quiet,
                file=stream, smoothing=0.3, mininterval=0.25)


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class _Lines:
    """Progress as whole lines (``fit: step 400/2000 (20%), 812 steps/s, ETA 2 s, objective -41.2``).

    A bar redrawn with carriage returns turns into one long unreadable line in a log file; this
    prints a line each time another tenth of the run is done, and at the end. It has the part
    of tqdm's interface that ``fit`` uses.
    """

    def __init__(self, total: int, initial: int, stream) -> None:
        self.total, self.n, self.stream = total, initial, stream
        self.start, self.t0 = initial, time.perf_counter()
        self.postfix: dict = {}
        self.next_report = self._next(initial)

    def _next(self, n: int) -> int:
        tenth = max(1, self.total // 10)
        return min(self.total, (n // tenth + 1) * tenth)

    def update(self, n: int) -> None:
        self.n += n
        if self.n >= self.next_report:
            self._line()
            self.next_report = self._next(self.n)

    def set_postfix(self, postfix: dict, refresh: bool = False) -> None:
        self.postfix = dict(postfix)

    def write(self, text: str, file=None) -> None:
        print(text, file=file or self.stream, flush=True)

    def close(self) -> None:
        pass

    def _line(self) -> None:
        # The rate since the previous line: the first one includes compilation, the others do not.
        now = time.perf_counter()
        elapsed, self.t0 = now - self.t0, now
        rate = (self.n - self.start) / elapsed if elapsed > 0 else float("nan")
        self.start = self.n
        eta = (self.total - self.n) / rate if rate > 0 else float("nan")
        extra = "".join(f", {k} {v}" for k, v in self.postfix.items())
        print(f"fit: step {self.n}/{self.total} ({100 * self.n // max(self.total, 1)}%), {rate:.0f} steps/s, "
              f"ETA {eta:.0f} s{extra}", file=self.stream, flush=True)


def _resolved_direct(setup: Setup) -> dict:
    """``config.json``'s ``resolved`` block of a Trainable or objective program."""
    kind = setup.kind
    return {
        "kind": kind.kind,
        "name": kind.name,
        "class": type(kind.trainable).__name__ if kind.trainable is not None else None,
        "objective": setup.built.name,
        "ema": setup.options.get("ema"),
        "train_shapes": shapes(setup.data.train),
        "test_shapes": shapes(setup.data.test) if setup.data.test is not None else None,
        "device": str(jax.devices()[0]) if setup.options["device"] == "auto" else setup.options["device"],
        "devices": setup.mesh.size if setup.mesh is not None else 1,
    }


def _training_line(o: dict) -> str:
    extras = [f"warm-up {o['warmup']}" if o.get("warmup") else None, f"EMA {o['ema']:g}" if o.get("ema") else None,
              f"validation every {o['validate_every']}" if o.get("validate_every") else None,
              f"patience {o['patience']}" if o.get("patience") else None]
    return "".join(f", {e}" for e in extras if e)


def _on_devices(setup: Setup) -> str:
    return f", split over {setup.mesh.size} devices" if setup.mesh is not None else ""


def _banner(setup: Setup, start: int) -> str:
    o = setup.options
    if setup.kind.kind != "vi":
        what = (f"Trainable `{setup.kind.name}` ({type(setup.kind.trainable).__name__})"
                if setup.kind.kind == "trainable" else "objective `objective`")
        data = (f"minibatches of {o['batch_size']} of {setup.n_train} training points" if setup.batched
                else "full data every step") + _on_devices(setup)
        return (f"gendsl fit {setup.program.path} -> {o['out']}\n  {what}\n"
                f"  {o['optimizer']} lr {o['lr']:g} ({o['schedule']}{_training_line(o)}); {o['steps']} steps"
                f"{f', resuming at step {start}' if start else ''}; {data}; seed {o['seed']}")
    data = f"{setup.n_train} training points" if setup.batched else "full data every step"
    if setup.batched:
        data = f"minibatches of {o['batch_size']} of {setup.n_train} training points"
    if setup.data.test is not None:
        n_test = jax.tree_util.tree_leaves(setup.data.test)[0].shape[0] if setup.batched else None
        data += f" ({n_test} held out)" if n_test else " (with test data)"
    data += _on_devices(setup)
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


def _finish_partial(setup: Setup, folder: RunFolder, rows, config, status: str, warning: str | None = None) -> None:
    folder.write_json(RunFolder.CONFIG, dict(config, status=status, **({"warning": warning} if warning else {})))
    with contextlib.suppress(Exception):  # a plot must never hide the real error
        _outputs.plot_loss(rows, folder, _title(setup), nats=setup.kind.kind == "vi")


def _title(setup: Setup) -> str:
    return os.path.basename(setup.program.path)


def _write_direct_outputs(setup: Setup, folder: RunFolder, rows, config, wall: float, session: tuple, quiet: bool,
                          warning: str | None) -> None:
    """Outputs of a Trainable or objective run: loss plot, summary.txt, config.json, report (no posterior)."""
    o = setup.options
    _outputs.plot_loss(rows, folder, _title(setup), nats=setup.kind.kind == "vi")
    per = o["batch_size"] is not None and _sums_points(setup)  # a per_point Trainable: per data point
    final, n_tail = _final_objective(rows, "objective_per_point" if per else "objective")
    held = [r for r in rows if r.get("held_out_objective") is not None]
    lines = [f"gendsl fit {setup.program.path}  (gendsl {gendsl.__version__})",
             _banner(setup, 0).splitlines()[1].strip() + f"; {o['steps']} steps; {wall:.1f} s of training",
             f"optimizer {o['optimizer']} lr {o['lr']:g} ({o['schedule']}{_training_line(o)})",
             f"final objective{' per data point' if per else ''} (mean of the last {n_tail} steps): {final:.4f}"]
    if held:
        lines.append(f"held-out objective: {held[0]['held_out_objective']:.4f} at step {held[0]['step']}, "
                     f"{held[-1]['held_out_objective']:.4f} at step {held[-1]['step']}")
    early = config.get("early_stopping")
    lines += _closing_lines(config, o, "held-out objective", ": eval and sample use it", warning)
    folder.write_text(RunFolder.SUMMARY, "\n".join(lines) + "\n")
    folder.write_json(RunFolder.CONFIG, dict(config, status="completed", wall_s=round(wall, 3),
                                             **({"warning": warning} if warning else {})))
    with contextlib.suppress(Exception):  # the report is a convenience; the run's files are written
        _report.build(folder)
    speed = session[0] / max(session[1], 1e-9)
    print(f"trained {o['steps']} steps in {wall:.1f} s ({speed:.0f} steps/s, compilation included)")
    if held:
        print(f"held-out objective: {held[0]['held_out_objective']:.4g} at step {held[0]['step']} -> "
              f"{held[-1]['held_out_objective']:.4g} at step {held[-1]['step']}")
    if early:
        print(f"early stopping: best held-out objective at step {early['best_step']} (restored)")
    print(f"final training objective{' per data point' if per else ''}: {final:.4g}")
    if warning:
        print(warning)
    files = [RunFolder.PARAMS, *([RunFolder.EMA_PARAMS] if o.get("ema") else []), RunFolder.METRICS,
             RunFolder.LOSS, RunFolder.SUMMARY, RunFolder.CONFIG, RunFolder.CHECKPOINT]
    print(f"wrote {o['out']}/: {', '.join(files)}")


def _final_objective(rows, column: str) -> tuple[float, int]:
    """The mean of ``column`` over the last twentieth of the training steps, and how many steps that is."""
    trained = [r for r in rows if r.get("objective") is not None]
    tail = trained[-max(1, len(trained) // 20):]
    return (float(np.mean([r[column] for r in tail])) if tail else float("nan")), len(tail)


def _closing_lines(config, o, figure: str, ema_use: str, warning: str | None) -> list[str]:
    """summary.txt's lines on early stopping, the EMA file and a divergence warning (every run kind)."""
    lines = []
    early = config.get("early_stopping")
    if early:
        lines.append(f"early stopping at step {early['stopped_at']} (patience {o['patience']}): restored the best "
                     f"state, step {early['best_step']} ({figure} {early['best_validation']:.4f})")
    if o.get("ema"):
        lines.append(f"EMA of the parameters (decay {o['ema']:g}) in {RunFolder.EMA_PARAMS}{ema_use}")
    if warning:
        lines.append(warning)
    return lines


def _write_outputs(setup: Setup, folder: RunFolder, params, rows, config, key, wall: float, session: tuple,
                   quiet: bool, warning: str | None) -> None:
    out, o = setup.options["out"], setup.options
    _outputs.plot_loss(rows, folder, _title(setup), nats=setup.kind.kind == "vi")
    _say(quiet, "writing posterior.nc and summary.txt ...")
    idata, covered, notes = _outputs.posterior(setup, params, key, o["posterior_draws"], o["posterior_points"])
    _outputs.write_posterior(idata, folder)
    table, more = _outputs.summary_table(idata, covered)
    final, n_tail = _final_objective(rows, "objective_per_point" if o["batch_size"] else "objective")
    held = [r for r in rows if r.get("held_out_elbo") is not None]
    header = [
        f"gendsl fit {setup.program.path}  (gendsl {gendsl.__version__})",
        f"model `{setup.names[0]}`, guide `{setup.names[1]}`; objective {setup.built.name}"
        + (f", K={setup.built.particles}" if setup.built.particles else "")
        + f"; {o['steps']} steps; {wall:.1f} s of training",
        f"final objective{' per data point' if o['batch_size'] else ''} (mean of the last {n_tail} steps): "
        f"{final:.4f}",
    ]
    per = " per data point" if setup.batched else ""
    if held:
        header.append(f"held-out ELBO{per}: {held[0]['held_out_elbo']:.3f} at step {held[0]['step']}, "
                      f"{held[-1]['held_out_elbo']:.3f} at step {held[-1]['step']}")
    chosen = config["resolved"].get("strategy_choice")
    if chosen:
        header.append("strategy auto chose: " + ", ".join(f"{a}={name}" for a, name in chosen.items()))
    header += _closing_lines(config, o, "held-out ELBO", "; the posterior below uses it", warning)
    header += ["", f"Posterior summary of the guide's draws ({idata.posterior.sizes['draw']} draws; a variational "
               "approximation, so no r_hat / ESS):"]
    _outputs.write_summary(folder, header, table, notes + more)
    folder.write_bytes(_report.MARGINALS, _report.plot_marginals(idata.posterior, f"{_title(setup)}: guide's draws"))
    speed = session[0] / max(session[1], 1e-9)
    extra = {"warning": warning} if warning else {}
    folder.write_json(RunFolder.CONFIG, dict(config, status="completed", wall_s=round(wall, 3), **extra))
    _report.build(folder)
    print(f"trained {o['steps']} steps in {wall:.1f} s ({speed:.0f} steps/s, compilation included)")
    if held:
        print(f"held-out ELBO{per}: {held[0]['held_out_elbo']:.2f} nats at step {held[0]['step']} -> "
              f"{held[-1]['held_out_elbo']:.2f} nats at step {held[-1]['step']}")
    print(f"final training objective{per}: {final:.2f}")
    if warning:
        print(warning)
    print(f"wrote {out}/: {', '.join(RunFolder.FIT_OUTPUTS)}, {RunFolder.CHECKPOINT}, {_report.MARGINALS}, "
          f"{_report.REPORT}")
