"""Normalizing-flow autoguides, on flowjax.

Why flowjax rather than flows of our own: its flows are ``equinox.Module``s, so a flow is a
``gendsl.module`` parameter like any network and optax updates it in the one parameter
pytree; its bijections are tested against ``jax.jacobian`` log-determinants; and beyond what
gendsl already depends on (jax, equinox, optax, lineax through diffrax) it adds only
``paramax``. It stays an optional dependency (``pip install flowjax`` or the ``flows``
extra), imported when a flow guide is built.

A flow guide draws the unconstrained latents of every site jointly,
``u = loc + s ⊙ f(ε)`` with ``ε ~ N(0, I)`` and ``f`` the flow in its fast (sampling)
direction, and gives each site its value ``T(u_site)`` as a point mass that carries the
density: the first site carries ``log q(u)``, and every site minus the log-determinant of its
bijection ``T``, so the guide's score is ``log q(z)`` exactly. That density is only defined
at the guide's own draws (computing it elsewhere would need the flow's inverse, slow or
iterative for these flows), so a flow guide serves objectives that simulate the guide
(``elbo``, ``iwelbo``, ``renyi``, ``vimco``), not ones that score given choices under it
(``elbo(..., estimator="stl")``, ``q_wake``); use ``AutoMultivariateNormal`` there.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from numpyro.distributions import constraints

import gendsl
import gendsl.distributions as dist
from gendsl.inference._autoguide import AutoGuide, _positive

__all__ = ["AutoBNAFNormal", "AutoFlow", "AutoIAFNormal"]


def _flowjax():
    try:
        import flowjax.distributions
        import flowjax.flows
    except ImportError as e:  # pragma: no cover - exercised only without flowjax
        raise ImportError(
            "the flow autoguides need flowjax: pip install flowjax (or gendsl[flows])"
        ) from e
    return flowjax


class AutoFlow(AutoGuide):
    """A normalizing-flow guide over all latents of ``model``.

    Args:
        model: the model.
        flow: ``flow(key, dim) -> flowjax.distributions.Transformed``, a flow on ``R^dim``
            whose ``sample_and_log_prob`` is cheap (build flowjax flows with
            ``invert=False``).
        init_scale: the initial ``s`` of ``u = loc + s ⊙ f(ε)``, in unconstrained space.
        structure_seed: the seed of the flow's non-trainable structure (its permutations),
            fixed for every execution of the guide (see ``_build``).
        prefix: the parameter names' prefix: ``<prefix>_loc``, ``<prefix>_scale`` and the
            flow module ``<prefix>_flow``.

    Example:
        >>> import jax, gendsl, gendsl.distributions as dist
        >>> from flowjax.flows import coupling_flow
        >>> from flowjax.distributions import Normal
        >>> from gendsl.inference import AutoFlow
        >>> @gendsl.model
        ... def model():
        ...     gendsl.sample("z", dist.Normal(1.0, 0.5).expand([2]).to_event(1))
        >>> guide = AutoFlow(model, flow=lambda key, dim: coupling_flow(
        ...     key, base_dist=Normal(jax.numpy.zeros(dim)), flow_layers=2, nn_width=8, invert=False))
        >>> params = guide.init(jax.random.key(0))
        >>> sorted(params)
        ['auto_flow', 'auto_loc', 'auto_scale']
        >>> jax.jit(guide.bind(params).simulate)(jax.random.key(1)).choices["z"].shape
        (2,)
    """

    def __init__(self, model, *, flow: Callable, init_scale: float = 0.1, structure_seed: int = 0,
                 prefix: str = "auto") -> None:
        if not callable(flow):
            raise TypeError(f"{type(self).__name__}: flow must be a callable (key, dim) -> flow, got {flow!r}")
        _flowjax()
        self.flow = flow
        self.init_scale = _positive(type(self).__name__, "init_scale", init_scale)
        self.structure_seed = int(structure_seed)
        super().__init__(model, prefix=prefix)

    def _guide(self, *args, **kwargs) -> None:
        sites = self._latents(args, kwargs)
        dim = sum(s.size for s in sites)
        loc = gendsl.param(f"{self.prefix}_loc", jnp.zeros(dim))
        scale = gendsl.param(f"{self.prefix}_scale", jnp.full(dim, self.init_scale),
                             constraint=constraints.softplus_positive)
        flow = gendsl.module(f"{self.prefix}_flow", self._build(dim))
        x, log_q = flow.sample_and_log_prob(gendsl.prng_key(f"{self.prefix}_flow"))
        u = loc + scale * x
        log_q = log_q - jnp.sum(jnp.log(scale))
        start = 0
        for i, site in enumerate(sites):
            u_site = jnp.reshape(u[start:start + site.size], site.ushape)
            value = site.transform(u_site)
            log_det = jnp.sum(site.transform.log_abs_det_jacobian(u_site, value))
            carried = (log_q if i == 0 else 0.0) - log_det
            gendsl.sample(site.name, dist.Delta(value, log_density=carried, event_dim=jnp.ndim(value)))
            start += site.size


    def _build(self, dim: int):
        """The flow: its structure from ``structure_seed``, its initial weights from the guide's key.

        A flowjax flow holds non-trainable integer arrays (the permutations between layers,
        the autoregressive masks) drawn from the key it is built with. Those are not
        parameters, so they must be the same at every execution of the guide: built from a key
        of the guide's seed handler (different at every ``simulate``), each draw and each SVI
        step would see the trained weights under a fresh random permutation, and the flow
        could learn no dependence between latents (it fitted no better than ``AutoNormal``).
        They come from ``jax.random.key(structure_seed)``; the floating-point leaves (the
        initial weights, used only where the parameter is not given, e.g. in ``init``) from the
        guide's key. ``gendsl.module`` takes a built flow rather than a ``key -> flow``
        initializer because it rebuilds a lazily initialized module from its float leaves only.
        """
        import equinox as eqx

        structure = self.flow(jax.random.key(self.structure_seed), dim)
        weights = self.flow(gendsl.prng_key(f"{self.prefix}_flow_init"), dim)
        return eqx.combine(eqx.filter(weights, eqx.is_inexact_array),
                           eqx.filter(structure, eqx.is_inexact_array, inverse=True))


class AutoIAFNormal(AutoFlow):
    """An inverse-autoregressive-flow guide (Kingma et al. 2016): flowjax's masked
    autoregressive flow in its sampling direction, with affine transformers.

    Args:
        model: the model.
        flow_layers: the number of autoregressive layers (with permutations between them).
        nn_width: the width of each layer's masked network.
        init_scale, structure_seed, prefix: see ``AutoFlow``.

    Example:
        >>> import jax, gendsl, gendsl.distributions as dist
        >>> from gendsl.inference import AutoIAFNormal
        >>> @gendsl.model
        ... def model():
        ...     gendsl.sample("s", dist.HalfCauchy(1.0).expand([3]).to_event(1))
        >>> guide = AutoIAFNormal(model, flow_layers=2, nn_width=8)
        >>> tr = jax.jit(guide.bind(guide.init(jax.random.key(0))).simulate)(jax.random.key(1))
        >>> tr.choices["s"].shape, bool((tr.choices["s"] > 0).all())
        ((3,), True)
    """

    def __init__(self, model, *, flow_layers: int = 3, nn_width: int = 32, init_scale: float = 0.1,
                 structure_seed: int = 0, prefix: str = "auto") -> None:
        flowjax = _flowjax()

        def flow(key, dim):
            return flowjax.flows.masked_autoregressive_flow(
                key, base_dist=flowjax.distributions.Normal(jnp.zeros(dim)), flow_layers=flow_layers,
                nn_width=nn_width, invert=False)

        super().__init__(model, flow=flow, init_scale=init_scale, structure_seed=structure_seed, prefix=prefix)


class AutoBNAFNormal(AutoFlow):
    """A block-neural-autoregressive-flow guide (De Cao et al. 2019), flowjax's BNAF in its
    sampling direction.

    Args:
        model: the model.
        flow_layers: the number of BNAF layers.
        nn_depth: the depth of each block network.
        nn_block_dim: the block size of each hidden layer (width ``dim · nn_block_dim``).
        init_scale, structure_seed, prefix: see ``AutoFlow``.

    Example:
        >>> import jax, gendsl, gendsl.distributions as dist
        >>> from gendsl.inference import AutoBNAFNormal
        >>> @gendsl.model
        ... def model():
        ...     gendsl.sample("z", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
        >>> guide = AutoBNAFNormal(model, nn_block_dim=4)
        >>> jax.jit(guide.bind(guide.init(jax.random.key(0))).simulate)(jax.random.key(1)).choices["z"].shape
        (2,)
    """

    def __init__(self, model, *, flow_layers: int = 1, nn_depth: int = 1, nn_block_dim: int = 8,
                 init_scale: float = 0.1, structure_seed: int = 0, prefix: str = "auto") -> None:
        flowjax = _flowjax()

        def flow(key, dim):
            return flowjax.flows.block_neural_autoregressive_flow(
                key, base_dist=flowjax.distributions.Normal(jnp.zeros(dim)), flow_layers=flow_layers,
                nn_depth=nn_depth, nn_block_dim=nn_block_dim, invert=False)

        super().__init__(model, flow=flow, init_scale=init_scale, structure_seed=structure_seed, prefix=prefix)

