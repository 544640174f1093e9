"""Small networks shared by the diffusion and flow models: an MLP and a CNN on (state, time, optional condition).

Kept small on purpose: the paper models in ``gendsl.models`` train on a CPU.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["TimeConv", "TimeMLP", "fourier_time", "static_part"]


def fourier_time(t, features: int = 16, max_frequency: float = 1000.0) -> jax.Array:
    """Sinusoidal features of a time ``t`` in [0, 1] (frequencies 1 to ``max_frequency``, geometric).

    Example:
        >>> fourier_time(0.5).shape
        (16,)
    """
    freqs = jnp.exp(jnp.linspace(0.0, jnp.log(max_frequency), features // 2))
    angles = jnp.asarray(t, jnp.float32) * freqs
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)])


class TimeMLP(eqx.Module):
    """An MLP ``(z, t, cond) -> output`` with Fourier time features and an optional condition.

    ``depth`` hidden layers of width ``hidden`` with SiLU activations. The time (a
    time in [0, 1], or a log noise level) enters as ``time_features`` sinusoidal
    features with frequencies from 1 to ``max_frequency`` (1000 for the diffusion
    models' times, 100 for the flows' times and log noise levels). The condition is a
    class label (``num_classes``: ints in ``0..num_classes``, ``num_classes`` itself
    being the "no condition" token of classifier-free guidance) or a vector of
    ``cond_dim`` features (DiffuseVAE's reconstruction).

    Args:
        shape: the event shape of the state ``z`` (an int for vectors).
        hidden, depth: the width and number of hidden layers.
        num_classes: for a class-conditional network.
        cond_dim: for a network conditioned on a vector.
        out_shape: the output's shape (default: ``shape``).
        time_features, max_frequency: the time features.
        class_features: the size of a class label's embedding.
        key: PRNG key.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from gendsl.models import TimeMLP
        >>> net = TimeMLP(2, hidden=32, depth=2, num_classes=3, key=jax.random.key(0))
        >>> net(jnp.ones(2), 0.3, 1).shape
        (2,)
        >>> TimeMLP(2, hidden=32, depth=2, max_frequency=100.0, key=jax.random.key(0))(jnp.ones(2), -0.5).shape
        (2,)
    """

    layers: list
    embedding: eqx.nn.Embedding | None
    shape: tuple = eqx.field(static=True)
    out_shape: tuple = eqx.field(static=True)
    time_features: int = eqx.field(static=True)
    max_frequency: float = eqx.field(static=True)
    cond_dim: int = eqx.field(static=True)

    def __init__(self, shape, *, hidden: int = 128, depth: int = 3, num_classes: int | None = None,
                 cond_dim: int = 0, out_shape=None, time_features: int = 16, max_frequency: float = 1000.0,
                 class_features: int = 16, key):
        self.shape = (shape,) if isinstance(shape, int) else tuple(shape)
        self.out_shape = self.shape if out_shape is None else tuple(out_shape)
        self.time_features = time_features
        self.max_frequency = float(max_frequency)
        size = int(np.prod(self.shape))
        out = int(np.prod(self.out_shape))
        keys = jax.random.split(key, depth + 2)
        self.embedding = (
            None if num_classes is None else eqx.nn.Embedding(num_classes + 1, class_features, key=keys[-1])
        )
        self.cond_dim = cond_dim
        width = size + time_features + cond_dim + (0 if num_classes is None else class_features)
        dims = [width] + [hidden] * depth + [out]
        self.layers = [eqx.nn.Linear(i, o, key=k) for i, o, k in zip(dims[:-1], dims[1:], keys, strict=False)]

    def __call__(self, z, t, label=None):
        h = [jnp.reshape(z, (-1,)), fourier_time(t, self.time_features, self.max_frequency)]
        if self.embedding is not None or self.cond_dim:
            if label is None:
                raise ValueError("TimeMLP: this network is conditional; pass a label or a condition vector")
            if self.embedding is not None:
                h.append(self.embedding(jnp.asarray(label, jnp.int32)))
            else:
                h.append(jnp.reshape(label, (self.cond_dim,)))
        h = jnp.concatenate(h)
        for layer in self.layers[:-1]:
            h = jax.nn.silu(layer(h))
        return jnp.reshape(self.layers[-1](h), self.out_shape)


def static_part(net) -> eqx.Module:
    """The non-parameter part of a network (``net``: a module or ``key -> module``), to recombine with params.

    ``gendsl.module`` stores only a network's floating-point arrays as the
    parameter; ``eqx.combine(params["net"], static_part(net))`` rebuilds the module
    outside a program.

    Example:
        >>> import jax
        >>> init = lambda k: TimeMLP(2, hidden=8, depth=1, key=k)
        >>> params = eqx.filter(init(jax.random.key(0)), eqx.is_inexact_array)
        >>> eqx.combine(params, static_part(init))(jax.numpy.ones(2), 0.1).shape
        (2,)
    """
    shapes = eqx.filter_eval_shape(net, jax.random.key(0)) if not isinstance(net, eqx.Module) else net
    return eqx.partition(shapes, _is_param_leaf)[1]


def _is_param_leaf(x) -> bool:
    if isinstance(x, jax.ShapeDtypeStruct):
        return jnp.issubdtype(x.dtype, jnp.inexact)
    return eqx.is_inexact_array(x)


class TimeConv(eqx.Module):
    """A small residual CNN ``(z, t) -> output`` for square images given as flat vectors (``side * side``).

    Time enters as Fourier features, projected and added to every layer's channels.
    Translation-equivariant layers share statistics across pixels, which an MLP
    on 64 pixels cannot (it overfits 1,000 digits).

    With ``out_channels > 1`` the output is ``(side * side, out_channels)``: several
    numbers per pixel (VDM's ``denoiser="levels"`` reads one logit per grey level).

    Example:
        >>> import jax, jax.numpy as jnp
        >>> net = TimeConv(8, channels=8, depth=2, key=jax.random.key(0))
        >>> net(jnp.ones(64), 0.3).shape
        (64,)
        >>> TimeConv(8, channels=8, depth=1, out_channels=17, key=jax.random.key(0))(jnp.ones(64), 0.3).shape
        (64, 17)
    """

    first: eqx.nn.Conv2d
    blocks: list
    time_proj: list
    last: eqx.nn.Conv2d
    side: int = eqx.field(static=True)
    time_features: int = eqx.field(static=True)
    out_channels: int = eqx.field(static=True)

    def __init__(self, side: int, *, channels: int = 64, depth: int = 3, time_features: int = 16,
                 out_channels: int = 1, key):
        keys = jax.random.split(key, 2 * depth + 2)
        self.side, self.time_features, self.out_channels = side, time_features, out_channels
        self.first = eqx.nn.Conv2d(1, channels, 3, padding=1, key=keys[0])
        self.blocks = [eqx.nn.Conv2d(channels, channels, 3, padding=1, key=k) for k in keys[1 : depth + 1]]
        self.time_proj = [eqx.nn.Linear(time_features, channels, key=k) for k in keys[depth + 1 : 2 * depth + 1]]
        self.last = eqx.nn.Conv2d(channels, out_channels, 3, padding=1, key=keys[-1])

    def __call__(self, z, t, label=None):
        temb = fourier_time(t, self.time_features)
        h = self.first(jnp.reshape(z, (1, self.side, self.side)))
        for conv, proj in zip(self.blocks, self.time_proj, strict=True):
            h = h + conv(jax.nn.silu(h + proj(temb)[:, None, None]))
        out = self.last(jax.nn.silu(h))
        if self.out_channels == 1:
            return jnp.reshape(out, (-1,))
        return jnp.reshape(jnp.moveaxis(out, 0, -1), (self.side * self.side, self.out_channels))
