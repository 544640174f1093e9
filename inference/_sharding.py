"""Data parallelism on JAX's own sharding: a 1-D data mesh, the batch split over it, the rest replicated.

Nothing here is a parallel runtime of its own. ``SVI.run(..., mesh=mesh)`` compiles the same
chunk of steps as without a mesh, with three placements added, and lets XLA's SPMD partitioner
(GSPMD) split the program and insert the collectives:

* the state (parameters, optimizer state, EMA baselines, key, step) is replicated on every
  device of the mesh (``NamedSharding(mesh, P())``, also the chunk's ``out_shardings``);
* the data is replicated too (or kept as it is when it already lives on the mesh's devices, e.g.
  a global array made by ``shard_data`` from each process's part), and inside the chunk each
  step's minibatch (drawn exactly as without a mesh, from ``fold_in(batch_key, step)``) is
  constrained to be split along its leading axis over all the mesh's axes
  (``with_sharding_constraint(batch, NamedSharding(mesh, P(axes)))``);
* everything downstream follows by sharding propagation: each device computes the estimator on
  its slice of the batch; the sums over the batch become all-reduces, so every device gets the
  same gradient and takes the same optimizer step.

Why the result does not depend on the number of devices: the program is the one-device program
with sharding annotations, and annotations do not change what it computes. Every random number
is defined by the global program: keys come from the state's key and each site's address (and,
for per-point objectives, ``split(key, batch)`` over the global batch), and ``jax.random`` draws
are partitionable (``jax_threefry_partitionable``, the default), so the bits a device draws for
its slice are the bits the one-device program draws for those rows. What changes is the order
of floating-point sums (a tree of per-device partial sums), so results agree to float32
rounding, not bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

__all__ = ["data_mesh", "data_parallel_step", "shard_data"]


def data_mesh(devices: int | str | Sequence[jax.Device] | None = None, *, axis: str = "data") -> Mesh:
    """A 1-D mesh of devices for data parallelism (``SVI.run(..., mesh=)``, ``fit_many(..., mesh=)``).

    Args:
        devices: None or ``"all"``: every device of every process (``jax.devices()``); an int
            ``n``: the first ``n`` of them; or a sequence of devices.
        axis: the mesh axis name.

    Raises:
        ValueError: more devices asked for than exist (on CPU, forced host devices need
            ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` set before JAX starts).

    Example:
        >>> from gendsl.inference import data_mesh
        >>> mesh = data_mesh(1)
        >>> mesh.axis_names, mesh.size
        (('data',), 1)
    """
    available = jax.devices()
    if devices is None or devices == "all":
        chosen = list(available)
    elif isinstance(devices, int) and not isinstance(devices, bool):
        if not 1 <= devices <= len(available):
            hint = ""
            if available[0].platform == "cpu":
                hint = (f"; on CPU, set XLA_FLAGS=--xla_force_host_platform_device_count={devices} before JAX "
                        "starts to split the host into that many devices")
            raise ValueError(f"data_mesh: asked for {devices} devices, but JAX sees {len(available)}{hint}")
        chosen = list(available[:devices])
    elif isinstance(devices, str):
        raise ValueError(f"data_mesh: devices must be None, 'all', an int or a sequence of devices, got {devices!r}")
    else:
        chosen = list(devices)
        if not chosen:
            raise ValueError("data_mesh: got an empty sequence of devices")
    return Mesh(np.array(chosen), (axis,))


def shard_data(data: Any, mesh: Mesh) -> Any:
    """A global array (pytree) split along its leading axis over ``mesh``, from each process's own part.

    In one process this is ``jax.device_put(data, NamedSharding(mesh, P(axes)))``. With several
    processes (``initialize_distributed``), each passes the rows it holds, in process order:
    the global array's leading axis is the concatenation of the processes' parts
    (``jax.make_array_from_process_local_data``). Pass the result to ``SVI.run(..., mesh=mesh)``:
    no process ever holds the whole data set.

    Args:
        data: an array or a pytree of arrays with the same leading (data-point) axis; its length
            must be a multiple of the mesh's devices local to this process.
        mesh: the mesh (``data_mesh()``).

    Example:
        >>> import numpy as np
        >>> from gendsl.inference import data_mesh, shard_data
        >>> x = shard_data(np.zeros((8, 3), np.float32), data_mesh(1))
        >>> x.shape, x.sharding.spec
        ((8, 3), P('data',))
    """
    sharding = _batched(mesh)
    local = len(mesh.local_devices)
    for leaf in jax.tree_util.tree_leaves(data):
        n = np.shape(leaf)[0] if np.ndim(leaf) else None
        if n is None or n % local:
            raise ValueError(
                f"shard_data: each array's leading axis must be a multiple of this process's {local} devices of "
                f"the mesh, got shape {np.shape(leaf)}"
            )
    return jax.tree_util.tree_map(lambda a: jax.make_array_from_process_local_data(sharding, np.asarray(a)), data)


def data_parallel_step(svi, mesh: Mesh) -> Callable:
    """``svi.step`` compiled for ``mesh``: ``step(state, batch, *rest) -> (state, info)``, for your own loop.

    The batch (the data-point axis of the first argument) is split over the mesh and the state
    and the other arguments are replicated: the arguments are placed so before every call
    (arrays already placed are not moved), and the state comes back replicated. One call is
    one step of the same update as ``svi.step`` on one device. ``SVI.run(..., mesh=mesh)``
    is the same step in a compiled loop; this is for a loop you write yourself.
    ``step.lower(state, batch, *rest)`` is ``jax.jit``'s lowering at the placed arguments:
    ``.compile().input_shardings`` shows the batch split and the state replicated.

    Args:
        svi: the ``SVI`` whose step to compile.
        mesh: the mesh (``data_mesh(n)``); the batch size must be a multiple of its size.

    Example:
        >>> import jax, jax.numpy as jnp, optax, gendsl, gendsl.distributions as dist
        >>> from gendsl.inference import SVI, data_mesh, data_parallel_step, elbo
        >>> @gendsl.model
        ... def p(x):
        ...     mu = gendsl.sample("mu", dist.Normal(0.0, 1.0))
        ...     with gendsl.plate("n", x.shape[0]):
        ...         gendsl.sample("x", dist.Normal(mu, 1.0), obs=x)
        >>> @gendsl.model
        ... def q(x):
        ...     gendsl.sample("mu", dist.Normal(gendsl.param("m", 0.0), 0.3))
        >>> svi, x = SVI(elbo(p, q), optax.adam(0.1)), jnp.full(8, 2.0)
        >>> step = data_parallel_step(svi, data_mesh(1))
        >>> state, info = step(svi.init(jax.random.key(0), x), x)
        >>> bool(info.finite), int(state.step)
        (True, 1)
    """
    return _DataParallelStep(svi, DataParallel(mesh))


class _DataParallelStep:
    """``data_parallel_step``'s step: call it like ``svi.step``; ``lower`` shows the compiled program."""

    def __init__(self, svi, placement: DataParallel):
        self.placement = placement
        self._last = None  # the state this step returned last: placed already, not checked again

        def step(state, batch, rest):
            new, info = svi.step(state, placement.constrain(batch), *rest)
            return placement.replicate_inside((new, info))

        self.compiled = jax.jit(step)

    def place(self, state, batch, *rest) -> tuple:
        """The arguments as the compiled step takes them: ``(state, batch, rest)``, placed on the mesh."""
        self.placement.check_divides(leading(batch), "the batch")
        p = self.placement
        return p.replicate(state), p.split(batch), p.replicate(rest)

    def __call__(self, state, batch, *rest):
        p = self.placement
        if state is not self._last:  # checking every leaf of a state costs ~0.1 ms per call
            state = p.replicate(state)
        p.check_divides(leading(batch), "the batch")
        new, info = self.compiled(state, p.split(batch), p.replicate(rest))
        self._last = new
        return new, info

    def lower(self, state, batch, *rest):
        """``jax.jit(...).lower`` at these arguments: ``.compile().input_shardings``, ``.as_text()``."""
        return self.compiled.lower(*self.place(state, batch, *rest))


class DataParallel:
    """Where a data-parallel run puts things on a mesh (see the module docstring)."""

    def __init__(self, mesh: Mesh):
        if not isinstance(mesh, Mesh):
            raise TypeError(f"mesh: expected a jax.sharding.Mesh (gendsl.inference.data_mesh(n)), got "
                            f"{type(mesh).__name__}")
        self.mesh = mesh
        self.size = mesh.size
        self.replicated = NamedSharding(mesh, P())
        self.batched = _batched(mesh)
        self.devices = set(mesh.devices.flat)

    def check_divides(self, n: int | None, what: str) -> None:
        if n is not None and n % self.size:
            lower, upper = n // self.size * self.size, (n // self.size + 1) * self.size
            raise ValueError(
                f"data parallel: {what} ({n} data points) must be a multiple of the mesh's {self.size} devices "
                f"(each device takes an equal slice); use {lower or upper} or {upper}, or a mesh of a divisor of {n}"
            )

    def constrain(self, batch):
        """Inside a compiled function: split the batch's leading axis over the mesh."""
        return jax.tree_util.tree_map(lambda a: jax.lax.with_sharding_constraint(a, self.batched), batch)

    def replicate_inside(self, tree):
        """Inside a compiled function: the same values, replicated."""
        return jax.tree_util.tree_map(lambda a: jax.lax.with_sharding_constraint(a, self.replicated), tree)

    def replicate(self, tree):
        """Outside: every array leaf replicated on the mesh (leaves already so are not moved)."""
        return _place(tree, self.replicated)

    def split(self, tree):
        """Outside: every array leaf split along its leading axis (leaves already so are not moved)."""
        return _place(tree, self.batched)

    def place_data(self, tree):
        """Outside: the data replicated, except arrays that already live on exactly the mesh's devices."""

        def place(a):
            if isinstance(a, jax.Array) and set(a.sharding.device_set) == self.devices:
                return a
            return _put(a, self.replicated)

        return jax.tree_util.tree_map(place, tree)


def addressable(tree) -> bool:
    """Whether this process holds every array of ``tree`` entirely (False for a multi-process global array)."""
    return all(a.is_fully_addressable for a in jax.tree_util.tree_leaves(tree) if isinstance(a, jax.Array))


def _batched(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(tuple(mesh.axis_names)))


def leading(tree) -> int | None:
    """The length of the leading (data-point) axis of a pytree's first leaf (None for no leaves or a scalar)."""
    leaves = jax.tree_util.tree_leaves(tree)
    return np.shape(leaves[0])[0] if leaves and np.ndim(leaves[0]) else None


def _place(tree, sharding: NamedSharding):
    # The common case, a state that came out of the compiled step, costs one flatten (no
    # rebuilding of the tree): data_parallel_step's wrapper runs this on every call.
    if all(isinstance(a, jax.Array) and a.sharding == sharding for a in jax.tree_util.tree_leaves(tree)):
        return tree
    return jax.tree_util.tree_map(lambda a: _put(a, sharding), tree)


def _put(a, sharding: NamedSharding):
    if not isinstance(a, (jax.Array, np.ndarray, np.generic, int, float, bool, complex)):
        return a
    if isinstance(a, jax.Array) and a.sharding == sharding:
        # Only an equal sharding: an equivalent one of another type (a single device's) is
        # moved, so that every call of a compiled chunk sees the same input shardings and
        # jit does not compile a second program for the second chunk.
        return a
    if isinstance(a, jax.Array) and jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
        # device_put cannot place a key array on devices of other processes; its raw data it can.
        return jax.random.wrap_key_data(_put(jax.random.key_data(a), sharding), impl=jax.random.key_impl(a))
    return jax.device_put(a, sharding)
