"""``gendsl fit --seeds A:B``: independent fits of one program, one per seed, as one compiled program.

The fits run together with ``gendsl.inference.fit_many`` (the SVI chunk vmapped over a "fit" axis;
with ``--devices N``, the fits are split over the devices). Fit ``k`` is exactly the run
``gendsl fit PROGRAM --seed k --out OUT/seed<k>`` would make (the same keys, initial state and
minibatches; equal to float32 rounding, since vmap may reorder some sums), and its folder is that
run's folder: config (with ``seed`` k), checkpoints every ``--checkpoint-every`` steps, metrics,
plots, posterior, report. So each can be evaluated, sampled, or resumed on its own
(``gendsl fit PROGRAM --out OUT/seed<k> --resume``). ``OUT/seeds.png`` and ``OUT/seeds.txt``
compare the fits.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import sys
import time

import jax
import numpy as np

from gendsl.cli import _fit, _outputs
from gendsl.cli._errors import CLIError, TrainingStopped
from gendsl.cli._report import png
from gendsl.cli._runfolder import RunFolder
from gendsl.cli._setup import device_context, prepare

__all__ = ["fit_seeds"]


def _refuse(args, options: dict) -> None:
    """Options that a run of several seeds cannot honour, as one-line errors."""
    if getattr(args, "seed", None) is not None:
        raise CLIError("--seed and --seeds: give one seed (--seed S) or several (--seeds A:B), not both")
    for name in ("validate_every", "patience", "stop_on_divergence"):
        if options.get(name):
            flag = "--" + name.replace("_", "-")
            raise CLIError(f"{flag} with --seeds: early stopping and stop-on-divergence are per run; train the seed "
                           f"you want to stop early on its own (--seed S), or drop {flag}")


def fit_seeds(args, program, options: dict) -> int:
    """Run ``gendsl fit --seeds``; returns the exit code."""
    from gendsl.inference import data_mesh, fit_many

    _refuse(args, options)
    seeds, parent = options["seeds"], options["out"]
    quiet = args.quiet
    runs = [dict(options, seed=s, seeds=None, devices=None, out=os.path.join(parent, f"seed{s}")) for s in seeds]
    keys = [jax.random.split(jax.random.key(s), 3) for s in seeds]  # (train, eval, posterior), as one run's
    with device_context(options["device"]):
        mesh = None
        if options.get("devices") is not None:
            try:
                mesh = data_mesh(options["devices"])
            except ValueError as exc:
                raise CLIError(f"--devices {options['devices']}: {str(exc).removeprefix('data_mesh: ')}") from None
            if len(seeds) % mesh.size:
                raise CLIError(f"--devices {options['devices']} with --seeds: the {len(seeds)} fits are split over "
                               f"the {mesh.size} devices; give a multiple of {mesh.size} seeds")
        first = prepare(program, runs[0], init_key=jax.random.split(keys[0][0])[0])
        setups = [first] + [dataclasses.replace(first, options=o, state=first.init_state(jax.random.split(k[0])[0]))
                            for o, k in zip(runs[1:], keys[1:], strict=True)]
        folders = [RunFolder(o["out"]) for o in runs]
        for folder in folders:
            folder.check_unlocked()
            _fit._check_out(folder, False, args.overwrite)
        with contextlib.ExitStack() as stack:
            for folder in folders:
                folder.create()
                stack.enter_context(folder.lock())
                _fit._check_out(folder, False, args.overwrite)
                folder.clean_leftovers()
            return _train_all(args, setups, folders, keys, mesh, quiet, fit_many)


def _train_all(args, setups, folders, keys, mesh, quiet: bool, fit_many) -> int:
    o = setups[0].options
    seeds = [s.options["seed"] for s in setups]
    signals = _fit._Signals()
    trackers = []
    for setup, folder, (_, k_eval, _) in zip(setups, folders, keys, strict=True):
        tracker = _fit.begin_run(args, setup, folder, None, setup.state, 0, 0.0, k_eval, _Silent(), signals, True)
        tracker.config["resolved"]["seeds_run"] = {"seeds": seeds, "parent": os.path.abspath(os.path.dirname(o["out"]))}
        folder.write_json(RunFolder.CONFIG, tracker.config)
        trackers.append(tracker)
    configs = [t.config for t in trackers]
    banner = (_fit._banner(setups[0], 0).replace(f"seed {seeds[0]}", f"seeds {_span(seeds)}")
              .replace(f"-> {setups[0].options['out']}", f"-> {os.path.dirname(setups[0].options['out'])}/seed*"))
    where = f", split over {mesh.size} devices" if mesh else ""
    _fit._say(quiet, f"{banner}\n  {len(seeds)} fits in one compiled program{where}")
    bar = _fit._bar(o["steps"], 0, quiet)
    t0 = time.perf_counter()

    def callback(infos) -> bool:
        for tracker, info in zip(trackers, infos, strict=True):
            tracker(info)
        bar.set_postfix({"mean objective": f"{np.mean([t.last['objective'] for t in trackers]):.4g}"}, refresh=False)
        bar.update(max(len(i.objective) for i in infos))
        return signals.received is not None

    # Each fit's held-out figure with its own key, as its single-seed run computes it.
    held_outs = [t.held_out for t in trackers] if trackers[0].held_out is not None else None
    for tracker in trackers:
        tracker.t0 = time.perf_counter()
    with signals:
        results = fit_many(setups[0].svi, [k[0] for k in keys], o["steps"], setups[0].data.train,
                           batch_size=o["batch_size"], chunk_size=o["chunk_size"], progress=False,
                           align=o["checkpoint_every"],
                           states=[s.state for s in setups], mesh=mesh, ema=o.get("ema"), callback=callback,
                           **_fit.validation(setups[0], held_outs))
    bar.close()
    wall = time.perf_counter() - t0
    failed = []
    for setup, folder, config, tracker, result, (_, _, k_post) in zip(setups, folders, configs, trackers, results,
                                                                      keys, strict=True):
        print(f"seed {setup.options['seed']} -> {folder.path}")
        if result.error is not None:
            failed.append(setup.options["seed"])
            _fit._finish_partial(setup, folder, tracker.rows, config, f"stopped: {result.error}")
            print(f"  stopped: {result.error}")
            continue
        if signals.received is not None and tracker.step < o["steps"]:
            _fit._finish_partial(setup, folder, tracker.rows, config, f"interrupted at step {tracker.step}")
            continue
        session = (tracker.step, tracker.wall)
        if setup.kind.kind != "vi":
            _fit._write_direct_outputs(setup, folder, tracker.rows, config, tracker.wall, session, True,
                                       tracker.warning)
        else:
            _fit._write_outputs(setup, folder, setup.params_of(result.state), tracker.rows, config, k_post,
                                tracker.wall, session, True, tracker.warning)
    parent = RunFolder(os.path.dirname(setups[0].options["out"]))
    _compare(setups, trackers, parent)
    print(f"{len(seeds)} fits in {wall:.1f} s (one compiled program); comparison -> {parent.path}/seeds.png, "
          f"{parent.path}/seeds.txt")
    if signals.received is not None:
        name = signal.Signals(signals.received).name
        raise TrainingStopped(f"{name}: stopped; each seed's checkpoint is in its folder; continue one with gendsl fit "
                              f"{args.program} --out {setups[0].options['out']} --resume", code=128 + signals.received)
    if failed:
        print(f"warning: seeds {', '.join(map(str, failed))} stopped early (non-finite or diverging objective); "
              "their folders keep the last finite checkpoint", file=sys.stderr)
        return 1
    return 0


def _span(seeds: list[int]) -> str:
    return f"{seeds[0]}:{seeds[-1] + 1}" if seeds == list(range(seeds[0], seeds[-1] + 1)) else ",".join(map(str, seeds))


class _Silent:
    """A progress bar that shows nothing (the seeds share one bar)."""

    def update(self, n: int) -> None: ...

    def set_postfix(self, postfix, refresh: bool = False) -> None: ...

    def write(self, text: str, file=None) -> None:
        print(text, file=file or sys.stderr)

    def close(self) -> None: ...


def _compare(setups, trackers, parent: RunFolder) -> None:
    """``seeds.png`` (every fit's training curve and held-out figure) and ``seeds.txt`` (a table of them)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    column = trackers[0].column
    per = setups[0].options["batch_size"] is not None and _fit._sums_points(setups[0])
    key = "objective_per_point" if per else "objective"
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    lines = [f"{'seed':>6} {'final objective':>16} {'held-out (last)':>16} {'held-out (best)':>16}"]
    for setup, tracker in zip(setups, trackers, strict=True):
        seed = setup.options["seed"]
        train = [r for r in tracker.rows if r["step"] >= 1 and r.get(key) is not None]
        steps, y = np.array([r["step"] for r in train]), np.array([r[key] for r in train])
        if len(y):
            axes[0].plot(steps, _outputs._moving_average(y, max(1, len(y) // 50)), linewidth=1.2, label=f"seed {seed}")
        held = [(r["step"], r[column]) for r in tracker.rows if r.get(column) is not None]
        if held:
            axes[1].plot(*zip(*held, strict=True), "o-", markersize=3, label=f"seed {seed}")
        final, _ = _fit._final_objective(tracker.rows, key)
        last = f"{held[-1][1]:.4f}" if held else "-"
        best = f"{max(v for _, v in held):.4f}" if held else "-"
        lines.append(f"{seed:>6} {final:>16.4f} {last:>16} {best:>16}")
    finals = [float(line.split()[1]) for line in lines[1:]]
    if len(finals) > 1:
        lines.append(f"{'mean':>6} {np.mean(finals):>16.4f}   (sd over seeds {np.std(finals, ddof=1):.4f})")
    axes[0].set_title("training objective (moving average; higher is better)", fontsize=10)
    axes[1].set_title(f"held-out {'ELBO' if column == 'held_out_elbo' else 'objective'}", fontsize=10)
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    fig.suptitle(f"{os.path.basename(setups[0].program.path)}: {len(setups)} seeds", fontsize=10)
    fig.tight_layout()
    parent.write_bytes("seeds.png", png(fig, dpi=110))
    parent.write_text("seeds.txt", "\n".join(lines) + "\n")
