"""Everything a command builds from a program and its options, validated before anything is written.

``prepare`` loads the data, finds the model and guide, builds the objective,
optimizer and step, and traces them once on the first minibatch (``svi.init``
and ``jax.eval_shape`` of a step), so that a wrong data shape, a strategy that
does not fit a site, or a bug in the model is reported before the output
folder is touched.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

import gendsl
from gendsl import GendslError, handlers
from gendsl.cli import _build
from gendsl.cli._errors import CLIError
from gendsl.cli._program import Data, Program, find_models, leading_size, load_data, take
from gendsl.inference import SVI, AutoNormal, init_params

__all__ = ["Setup", "prepare", "device_context", "shapes"]


@dataclasses.dataclass
class Setup:
    """A validated training setup.

    Attributes:
        program: the loaded program.
        options: the resolved options (``objective`` and ``particles`` resolved too).
        data: training and optional test data.
        batched: whether the data has a data-point axis that minibatches index (``--batch-size``).
        n_train: number of training points (leading axis), or None when not batched.
        first: the first minibatch (or all the data).
        model, guide: the programs (``guide`` without the command line's strategies).
        trained_guide: the guide with the strategy rules applied (what the objective samples).
        names: ``(model name, guide name)``.
        built: the objective and how it runs.
        per_point: whether the step evaluates the objective per data point.
        svi: the SVI object (its configuration; states come from ``init_state``).
        rules: the strategy rules, as strings.
        state: the initial SVI state (when ``prepare`` got an ``init_key``).
    """

    program: Program
    options: dict
    data: Data
    batched: bool
    n_train: int | None
    first: Any
    model: gendsl.Model
    guide: gendsl.Model
    trained_guide: gendsl.Model
    names: tuple[str, str]
    built: _build.Built
    per_point: bool
    svi: SVI
    rules: list[str]
    state: Any = None

    def init_state(self, key):
        """``svi.init`` on the first minibatch, with program errors reported as one line."""
        return self.program.call("while initializing the parameters", self.svi.init, key, self.first)

    def param_template(self, key) -> dict:
        """The constrained parameters' structure (arrays), to load a ``params.npz`` into."""
        params = self.program.call(
            "while initializing the parameters", lambda: init_params(self.built.objective, key, self.first)[0]
        )
        return jax.tree_util.tree_map(lambda x: jnp.asarray(x) if isinstance(x, (int, float)) else x, params)


def device_context(name: str):
    """A context that places computations on ``name`` (``auto``: JAX's default).

    Raises:
        CLIError: no device of that kind.
    """
    if name == "auto":
        return contextlib.nullcontext()
    try:
        device = jax.devices(name)[0]
    except RuntimeError as exc:
        available = ", ".join(sorted({d.platform for d in jax.devices()}))
        raise CLIError(f"--device {name}: JAX finds no {name} device (available: {available})", cause=exc) from exc
    return jax.default_device(device)


def shapes(tree) -> Any:
    """Shapes of a data pytree, for config.json and messages."""
    return jax.tree_util.tree_map(lambda a: list(jnp.shape(a)), tree)


def prepare(program: Program, options: dict, *, init_key=None) -> Setup:
    """Build and check the setup for ``options`` (see the module docstring).

    With ``init_key``, also initialize the SVI state with it (``setup.state``)
    and trace one step on the first minibatch.

    Raises:
        CLIError: any problem with the data, the models, the objective or the options.
    """
    data = load_data(program, options["data"])
    batch = options["batch_size"]
    batched = batch is not None
    n_train = None
    if batched:
        n_train = leading_size(data.train, program.path)
        if batch > n_train:
            raise CLIError(f"--batch-size {batch} is larger than the training data ({n_train} points)")
        if data.test is not None:
            leading_size(data.test, program.path, "test data")
    first = take(data.train, jnp.arange(batch)) if batched else data.train

    model, guide, model_name, guide_name = find_models(
        program, options["model"], options["guide"], first
    )
    if guide == "auto":
        if batched:
            raise CLIError(f"{program.path}: guide = \"auto\" needs full-batch training; drop --batch-size "
                           "(or write a guide)")
        guide = AutoNormal(model)
        try:
            guide.init(jax.random.key(0), first)  # finds the model's latent sites; refuses what it cannot cover
        except GendslError as exc:
            raise CLIError(f"{program.path}: guide = \"auto\": {exc}") from exc
        guide_name = "auto"

    program_rules, command_rules = _build.program_rules(program), _build.parse_rules(options["strategy"])
    rules = [*program_rules, *command_rules]
    table = _build.strategy_rules(program_rules, command_rules)
    trained_guide = gendsl.model(handlers.strategy(guide.fn, rules=table)) if table else guide

    name = (options["objective"] or ("program" if program.get("objective") is not None else "elbo")).lower()
    if name == "program" and isinstance(program.get("objective"), str):
        name = program.get("objective").lower()
    per_point = options["per_point"] == "on" or (
        options["per_point"] == "auto" and batched and name in _build.MULTI_PARTICLE
    )
    if per_point:
        leading_size(data.train, program.path)
    built = _build.build_objective(name, model, trained_guide, options["particles"], options["alpha"], program,
                                   per_point, first)
    per_point = built.per_point
    optimizer = _build.build_optimizer(options["optimizer"], options["lr"], options["schedule"], options["steps"],
                                       options["clip"])
    svi = SVI(built.objective, optimizer, samples=built.samples, per_point=built.svi_per_point)
    resolved = dict(options, objective=built.name, particles=built.particles)
    setup = Setup(program, resolved, data, batched, n_train, first, model, guide, trained_guide,
                  (model_name, guide_name), built, per_point, svi, _build.describe_rules(rules))
    if init_key is not None:
        setup.state = setup.init_state(init_key)
        program.call("while tracing a training step", jax.eval_shape, svi.step, setup.state, first)
    return setup
