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

import equinox as eqx
import jax
import jax.numpy as jnp

import gendsl
from gendsl import GendslError, handlers
from gendsl.cli import _build
from gendsl.cli._errors import CLIError
from gendsl.cli._program import Data, Kind, Program, find_kind, find_models, leading_size, load_data, take
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
        kind: the program kind.
        mesh: the 1-D data mesh of ``--devices`` (``gendsl.inference.data_mesh``), or None.
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
    kind: Kind = dataclasses.field(default_factory=lambda: Kind("vi"))
    mesh: Any = None

    @property
    def held_out_column(self) -> str:
        """The metrics column of the held-out figure: the ELBO (VI) or the training objective (other kinds)."""
        return "held_out_elbo" if self.kind.kind == "vi" else "held_out_objective"

    def _initial(self, key):
        if self.kind.init is None:
            return None
        return self.program.call(f"in {self.kind.name}.init_params(key, data)" if self.kind.kind == "trainable"
                                 else "in init_params(key, data)", self.kind.init, key, self.first)

    def init_state(self, key):
        """``svi.init`` on the first minibatch, with program errors reported as one line.

        With ``--ema`` the state carries the EMA (started at the initial parameters, as
        ``SVI.run`` starts it), so a checkpoint template has the same leaves as a saved state.
        """
        params = self._initial(key)
        return self.program.call("while initializing the parameters", self.svi.init, key, self.first,
                                 ema=self.options.get("ema") is not None,
                                 **({"params": params} if params is not None else {}))

    def params_of(self, state):
        """The parameters evaluation uses: the EMA weights with ``--ema``, else the trained ones."""
        if self.options.get("ema") is not None:
            return self.svi.get_ema_params(state)
        return self.svi.get_params(state)

    def param_template(self, key) -> dict:
        """The constrained parameters' structure (arrays), to load a ``params.npz`` into."""
        params = self._initial(key)
        if params is None:
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


def prepare(program: Program, options: dict, *, init_key=None, strategy_choice: dict | None = None) -> Setup:
    """Build and check the setup for ``options`` (see the module docstring).

    ``strategy_choice`` (``{site address: strategy name}``, as a run's ``config.json`` records
    it) applies the strategies that ``auto`` rules chose when the run started, instead of
    measuring again: a resumed run, ``eval`` and ``sample`` use the run's own choice.

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

    _check_training_options(program, options, data)
    mesh = _data_mesh(program, options, data, batched, n_train)
    kind = find_kind(program)
    if kind.kind != "vi":
        setup = _prepare_direct(program, options, data, batched, n_train, first, kind, init_key)
        setup.mesh = mesh
        return setup
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
    if strategy_choice:
        from gendsl.inference import assign

        chosen = {a: _build.parse_strategy(name.lower()) for a, name in strategy_choice.items()}
        built = dataclasses.replace(built, objective=assign(built.objective, chosen))
    optimizer = _build.build_optimizer(options["optimizer"], options["lr"], options["schedule"], options["steps"],
                                       options["clip"], options.get("warmup"))
    svi = SVI(built.objective, optimizer, samples=built.samples, per_point=built.svi_per_point)
    resolved = dict(options, objective=built.name, particles=built.particles)
    setup = Setup(program, resolved, data, batched, n_train, first, model, guide, trained_guide,
                  (model_name, guide_name), built, per_point, svi, _build.describe_rules(rules), mesh=mesh)
    if init_key is not None:
        setup.state = setup.init_state(init_key)
        program.call("while tracing a training step", jax.eval_shape, svi.step, setup.state, first)
    return setup


def _data_mesh(program: Program, options: dict, data: Data, batched: bool, n_train: int | None):
    """The mesh of ``--devices N|all`` (None without it), checked against the batch.

    Raises:
        CLIError: more devices than JAX sees (with the CPU hint), or a batch that is not a
            multiple of the device count.
    """
    devices = options.get("devices")
    if devices is None:
        return None
    from gendsl.inference import data_mesh

    try:
        mesh = data_mesh(devices)
    except ValueError as exc:
        raise CLIError(f"--devices {devices}: {str(exc).removeprefix('data_mesh: ')}") from None
    if batched:
        batch = options["batch_size"]
        if batch % mesh.size:
            raise CLIError(f"--devices {devices}: --batch-size {batch} must be a multiple of the {mesh.size} devices "
                           "(each gets an equal share of every minibatch)")
    else:
        leaves = jax.tree_util.tree_leaves(data.train)
        n = leaves[0].shape[0] if leaves and jnp.ndim(leaves[0]) else None
        if n is None or n % mesh.size:
            have = f"{n} data points" if n is not None else "no data-point axis"
            raise CLIError(f"--devices {devices}: full-batch training splits the data over the devices; the data "
                           f"has {have}, not a multiple of {mesh.size}: give --batch-size B (a multiple of "
                           f"{mesh.size})")
    return mesh


def _check_training_options(program: Program, options: dict, data: Data) -> None:
    """``--validate-every`` needs a held-out split; ``--patience`` needs ``--validate-every``."""
    if options.get("patience") is not None and options.get("validate_every") is None:
        raise CLIError(f"--patience {options['patience']}: early stopping needs --validate-every K (how often to "
                       "evaluate the held-out split); add it, or drop --patience")
    if options.get("validate_every") is not None and data.test is None:
        raise CLIError(f"--validate-every {options['validate_every']}: {program.path}'s data() returns no held-out "
                       "split; return (train, test), or drop --validate-every")


def _prepare_direct(program: Program, options: dict, data: Data, batched: bool, n_train, first, kind: Kind,
                    init_key) -> Setup:
    """The setup of a Trainable or an objective alone: SVI on the objective, no model or guide."""
    for name in ("model", "guide", "objective", "particles"):
        if options.get(name) is not None:
            flag = "--" + name
            raise CLIError(f"{flag}: {program.path} is a{'n' if kind.kind == 'objective' else ''} {kind.kind} "
                           f"program (`{kind.name}`), which has no model/guide choices; drop {flag}")
    if options["strategy"]:
        raise CLIError(f"--strategy: {program.path} is a {kind.kind} program (`{kind.name}`); strategies apply to "
                       "a guide's sites: drop --strategy")
    optimizer = _build.build_optimizer(options["optimizer"], options["lr"], options["schedule"], options["steps"],
                                       options["clip"], options.get("warmup"))
    # A Trainable whose objective is of one data point (per_point = True, e.g. AIR) trains on the sum over the
    # minibatch, as SVI(per_point=True) computes it.
    pointwise = bool(getattr(kind.trainable, "per_point", False))
    if pointwise and not batched:
        raise CLIError(f"{program.path}: `{kind.name}`'s objective is of one data point (per_point); give "
                       "--batch-size B (or `batch_size` in defaults) to train on minibatches of points")
    built = _build.Built(kind.objective, kind.kind if kind.kind == "objective" else f"{kind.name}.objective",
                         None, 1, pointwise, pointwise)
    svi = SVI(kind.objective, optimizer, per_point=pointwise)
    resolved = dict(options, objective=None, particles=None)
    setup = Setup(program, resolved, data, batched, n_train, first, None, None, None, (kind.name, None), built,
                  False, svi, [], kind=kind)
    if init_key is not None:
        setup.state = setup.init_state(init_key)
        program.call("while tracing a training step", eqx.filter_eval_shape, svi.step, setup.state, first)
    return setup
