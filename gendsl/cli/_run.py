"""Opening a finished (or checkpointed) run for ``gendsl sample`` and ``gendsl eval``."""

from __future__ import annotations

import dataclasses
import json
import os
import sys

import jax

import gendsl
from gendsl.cli._checkpoint import load_tree
from gendsl.cli._errors import CLIError
from gendsl.cli._program import load_program
from gendsl.cli._setup import Setup, prepare

__all__ = ["Run", "open_run", "read_config"]


@dataclasses.dataclass
class Run:
    """A run folder with its program rebuilt: setup, constrained parameters, config and the params header."""

    folder: str
    setup: Setup
    params: dict
    config: dict
    meta: dict


def read_config(config_path: str, remedy: str) -> dict:
    """A run's ``config.json``, checked to be readable and written by this gendsl version.

    Args:
        config_path: the file.
        remedy: what the user should do instead, appended to the error messages.
    """
    try:
        with open(config_path) as f:
            config = json.load(f)
        config["options"] = dict(config["options"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CLIError(f"{config_path}: damaged ({exc}); {remedy}", cause=exc) from exc
    if config.get("gendsl_version") != gendsl.__version__:
        raise CLIError(
            f"{config_path}: the run was made with gendsl {config.get('gendsl_version')}, this is gendsl "
            f"{gendsl.__version__}; {remedy}"
        )
    return config


def open_run(program_path: str, folder: str, data_path: str | None) -> Run:
    """Load ``folder``'s config and parameters into the program at ``program_path``.

    Raises:
        CLIError: not a run folder, another gendsl version, a damaged or
            mismatched ``params.npz``, or any problem with the program.
    """
    config_path = os.path.join(folder, "config.json")
    if not os.path.isdir(folder):
        raise CLIError(f"--run {folder}: no such directory")
    if not os.path.exists(config_path):
        raise CLIError(f"--run {folder}: no config.json; give a folder written by `gendsl fit`")
    config = read_config(config_path, "train it again with this version")
    options = config["options"]
    program = load_program(program_path)
    if config.get("program_sha256") != program.sha256:
        print(f"warning: {program_path} differs from the program this run was trained with", file=sys.stderr)
    if data_path is not None:
        options["data"] = data_path
    setup = prepare(program, options)
    template = setup.param_template(jax.random.key(0))
    params, meta = load_tree(os.path.join(folder, "params.npz"), template, "parameters")
    return Run(folder, setup, params, config, meta)
