"""Opening a trained (or checkpointed) run folder for ``gendsl sample`` and ``gendsl eval``."""

from __future__ import annotations

import dataclasses
import os
import sys

import jax

from gendsl.cli._errors import CLIError
from gendsl.cli._program import load_program
from gendsl.cli._runfolder import RunFolder
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


def open_trained(program_path: str, path: str, data_path: str | None) -> TrainedRun:
    """Load the run folder ``path``'s config and parameters into the program at ``program_path``.

    Raises:
        CLIError: not a run folder, another gendsl version, a damaged or
            mismatched ``params.npz``, or any problem with the program.
    """
    folder = RunFolder(path)
    if not os.path.isdir(path):
        raise CLIError(f"--run {path}: no such directory")
    if not folder.has(RunFolder.CONFIG):
        raise CLIError(f"--run {path}: no config.json; give a folder written by `gendsl fit`")
    config = folder.read_config("train it again with this version")
    options = config["options"]
    program = load_program(program_path)
    if config.get("program_sha256") != program.sha256:
        print(f"warning: {program_path} differs from the program this run was trained with", file=sys.stderr)
    if data_path is not None:
        options["data"] = data_path
    setup = prepare(program, options)
    template = setup.param_template(jax.random.key(0))
    params, meta = folder.load_tree(RunFolder.PARAMS, template, "parameters")
    return TrainedRun(folder, setup, params, config, meta)
