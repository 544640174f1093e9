"""Opening a trained (or checkpointed) run folder for ``gendsl sample`` and ``gendsl eval``.

They take no lock, so they may read a folder that a ``gendsl fit`` is writing. Both files
they read are replaced atomically; ``params.npz`` carries the ``run_id`` of the ``config.json``
it belongs to, so a ``config.json`` and a ``params.npz`` of two different runs (a
``--overwrite`` between the two reads) are noticed and read again. What they see is a
consistent snapshot: the run's configuration and its parameters at its latest checkpoint
(reported as the step), with a note when a fit is still running there.
"""

from __future__ import annotations

import dataclasses
import os
import sys

import jax

from gendsl.cli import _options
from gendsl.cli._errors import CLIError
from gendsl.cli._program import load_program
from gendsl.cli._runfolder import RunFolder, RunLocked
from gendsl.cli._setup import Setup, prepare

__all__ = ["TrainedRun", "open_trained"]


@dataclasses.dataclass
class TrainedRun:
    """A run folder with its program rebuilt: setup, constrained parameters, config and the params header."""

    folder: RunFolder
    setup: Setup
    params: dict
    config: dict
    meta: dict


def open_trained(program_path: str, path: str, data_path: str | None, raw: bool = False) -> TrainedRun:
    """Load the run folder ``path``'s config and parameters into the program at ``program_path``.

    For a run fitted with ``--ema``, the parameters are the EMA weights (``ema_params.npz``)
    unless ``raw``; ``meta["weights"]`` says which (``"ema"`` or ``"params"``).

    Raises:
        CLIError: not a run folder, another gendsl version, a damaged or
            mismatched ``params.npz``, or any problem with the program.
    """
    folder = RunFolder(path)
    if not os.path.isdir(path):
        raise CLIError(f"--run {path}: no such directory")
    if not folder.has(RunFolder.CONFIG):
        raise CLIError(f"--run {path}: no config.json; give a folder written by `gendsl fit`")
    program = load_program(program_path)
    for attempt in range(3):
        config = folder.read_config("train it again with this version")
        options = _options.from_config(config["options"], folder.file(RunFolder.CONFIG), "fix it, or train again")
        if attempt == 0 and config.get("program_sha256") != program.sha256:
            print(f"warning: {program_path} differs from the program this run was trained with", file=sys.stderr)
        if data_path is not None:
            options["data"] = data_path
        setup = prepare(program, options, strategy_choice=config.get("resolved", {}).get("strategy_choice"))
        template = setup.param_template(jax.random.key(0))
        params, meta = folder.load_tree(RunFolder.PARAMS, template, "parameters")
        meta = dict(meta, weights="params")
        if options.get("ema") is not None and not raw and folder.has(RunFolder.EMA_PARAMS):
            ema, ema_meta = folder.load_tree(RunFolder.EMA_PARAMS, template, "EMA parameters")
            if ema_meta.get("run_id") == meta.get("run_id") and ema_meta.get("step") == meta.get("step"):
                params, meta = ema, dict(ema_meta, weights="ema")
            else:
                continue  # written between the two reads: read both again
        if meta.get("run_id") == config.get("run_id"):
            break
    else:
        raise CLIError(f"--run {path}: config.json and params.npz belong to different runs (a `gendsl fit` is "
                       "replacing the run); wait for it to finish")
    try:
        folder.check_unlocked()
    except RunLocked:
        print(f"note: a `gendsl fit` is still running in {path}; using its parameters at step {meta.get('step')}",
              file=sys.stderr)
    return TrainedRun(folder, setup, params, config, meta)
