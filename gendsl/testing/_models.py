"""Hypothesis strategies for random distributions and small random models.

A generated model is a DAG of 1-5 sample sites. Every site ``s`` reads an input

    u = sum of its parents' values (+ the model argument ``x`` if it uses it)

(a vector-valued parent enters through its mean; a site outside the plate sees
the mean of a parent inside it; sites inside the plate combine elementwise)

and turns it into its distribution's parameters with two *links* ``a*tanh(u)+b``
and ``c*tanh(u)+d``, followed by a family-specific map onto the valid
parameter range (``softplus(.) + 0.1`` for a scale, ``sigmoid`` for a
probability, ...). Because ``tanh`` is bounded, every parameter stays valid and
moderate however large the parents' values are, so properties that should hold
exactly never fail for numerical reasons.

Coefficients and observed values are drawn from coarse grids (multiples of
0.25, ...): they print exactly and shrink to simple numbers, so a failing
example reads like a small program.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import strategies as st
from numpyro.distributions import Distribution

import gendsl
import gendsl.distributions as dist
from gendsl import handlers

__all__ = ["FAMILIES", "ModelSpec", "SiteSpec", "distributions", "models"]

PLATE = "plate"
"""The name of the (single) plate of a generated model."""



def _grid(lo: int, hi: int, denominator: int) -> st.SearchStrategy:
    """Fractions ``k / denominator`` for ``lo <= k <= hi``: they print short and exact."""
    return st.integers(lo, hi).map(lambda k: k / denominator)


_COEF = _grid(-8, 8, 4)  # link coefficients in [-2, 2]


def _positive(raw: jax.Array, floor: float) -> jax.Array:
    # softplus never reaches 0, and the floor keeps scales/concentrations away
    # from the degenerate regime where float32 samples hit a support boundary.
    return jax.nn.softplus(raw) + floor


def _scale_tril(raw: jax.Array) -> jax.Array:
    return _positive(raw, 0.1)[..., None, None] * jnp.eye(2)


def _concentration(raw1: jax.Array, raw2: jax.Array) -> jax.Array:
    raw1, raw2 = jnp.broadcast_arrays(raw1, raw2)
    return jnp.stack([_positive(raw1, 1.0), _positive(raw2, 1.0), jnp.ones_like(raw1)], axis=-1)


@dataclasses.dataclass(frozen=True)
class _Family:
    """How to build one distribution family from two unconstrained inputs."""

    build: Callable[[jax.Array, jax.Array], Distribution]
    event_shape: tuple[int, ...]
    observation: st.SearchStrategy  # one valid observation of event_shape, as nested tuples


def _simplex(k: int) -> st.SearchStrategy:
    """Points of the k-simplex with coordinates in multiples of 1/8, none zero.

    Cutting 0..8 at k - 1 distinct points gives k positive parts summing to 8.
    """

    def parts(cuts: set[int]) -> tuple[float, ...]:
        edges = [0, *sorted(cuts), 8]
        return tuple((hi - lo) / 8 for lo, hi in itertools.pairwise(edges))

    return st.sets(st.integers(1, 7), min_size=k - 1, max_size=k - 1).map(parts)


# The parameters of each family as functions of the two links r1, r2 (in [-4, 4]).
# Observations are drawn away from the edges of the support.
_FAMILIES: dict[str, _Family] = {
    "Normal": _Family(
        lambda r1, r2: dist.Normal(r1, _positive(r2, 0.1)), (), _grid(-12, 12, 4)
    ),
    "LogNormal": _Family(
        lambda r1, r2: dist.LogNormal(r1, _positive(r2, 0.1)), (), _grid(1, 40, 4)
    ),
    "Gamma": _Family(
        lambda r1, r2: dist.Gamma(_positive(r1, 1.0), _positive(r2, 0.1)), (), _grid(1, 40, 4)
    ),
    "Beta": _Family(
        lambda r1, r2: dist.Beta(_positive(r1, 1.0), _positive(r2, 1.0)), (), _grid(1, 19, 20)
    ),
    "Bernoulli": _Family(
        lambda r1, r2: dist.Bernoulli(probs=jax.nn.sigmoid(r1)), (), st.sampled_from([0.0, 1.0])
    ),
    "Categorical": _Family(
        lambda r1, r2: dist.Categorical(logits=jnp.stack(jnp.broadcast_arrays(r1, r2, 0.0), axis=-1)),
        (),
        st.integers(0, 2),
    ),
    "Poisson": _Family(lambda r1, r2: dist.Poisson(_positive(r1, 0.1)), (), st.integers(0, 8)),
    "MultivariateNormal": _Family(
        lambda r1, r2: dist.MultivariateNormal(
            jnp.stack(jnp.broadcast_arrays(r1, -r1), axis=-1), scale_tril=_scale_tril(r2)
        ),
        (2,),
        st.tuples(_grid(-12, 12, 4), _grid(-12, 12, 4)),
    ),
    "Dirichlet": _Family(lambda r1, r2: dist.Dirichlet(_concentration(r1, r2)), (3,), _simplex(3)),
}

FAMILIES: tuple[str, ...] = tuple(_FAMILIES)
"""Names of the distribution families that ``distributions`` and ``models`` draw from."""


def _check_families(families: Sequence[str] | None) -> tuple[str, ...]:
    if families is None:
        return FAMILIES
    families = tuple(families)
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown or not families:
        raise ValueError(f"families must be a non-empty subset of {FAMILIES}; unknown: {unknown}")
    return families


def _links(coef: tuple[float, float, float, float], u: jax.Array) -> tuple[jax.Array, jax.Array]:
    a, b, c, d = coef
    h = jnp.tanh(u)
    return a * h + b, c * h + d


class _Drawn(NamedTuple):
    """A ``(name, distribution)`` pair that prints its parameters (NumPyro's repr does not)."""

    name: str
    distribution: Distribution

    def __repr__(self) -> str:
        # Only parameters stored on the instance: lazily derived ones (a
        # covariance from a scale_tril) would repeat the same information.
        stored = vars(self.distribution)
        names = [k for k in self.distribution.arg_constraints if k in stored]
        params = [f"{k}={np.asarray(stored[k]).round(4).tolist()}" for k in names]
        return f"{self.name}({', '.join(params)})"

    def _repr_pretty_(self, printer, cycle) -> None:
        printer.text(repr(self))


@st.composite
def distributions(draw, families: Sequence[str] | None = None) -> tuple[str, Distribution]:
    """A strategy for ``(family name, distribution)`` with random valid parameters.

    The parameters are the family's links applied to ``u = 0`` with random
    coefficients, so they cover the same range as the sites of ``models()``.
    The pair is a named tuple that prints as ``Family(param=value, ...)``.

    Args:
        families: names from ``FAMILIES`` to draw from (default: all).

    Example:
        >>> import jax.numpy as jnp
        >>> from hypothesis import given, settings
        >>> from gendsl.testing import distributions
        >>> @settings(max_examples=10, deadline=None, derandomize=True, database=None)
        ... @given(distributions(families=["Normal", "Gamma"]))
        ... def mean_is_finite(pair):
        ...     name, d = pair
        ...     assert name in ("Normal", "Gamma") and bool(jnp.isfinite(d.mean))
        >>> mean_is_finite()
    """
    name = draw(st.sampled_from(_check_families(families)))
    coef = (0.0, draw(_COEF), 0.0, draw(_COEF))
    return _Drawn(name, _FAMILIES[name].build(*_links(coef, jnp.zeros(()))))


@dataclasses.dataclass(frozen=True)
class SiteSpec:
    """One sample site of a generated model.

    Attributes:
        name: the site's address.
        family: a name from ``FAMILIES``.
        parents: addresses of earlier sites whose values feed this site's input.
        uses_arg: whether the model argument ``x`` is added to the input.
        coef: the link coefficients ``(a, b, c, d)``: the distribution's
            parameters are built from ``a*tanh(u)+b`` and ``c*tanh(u)+d``.
        in_plate: whether the site sits inside the model's plate.
        obs: the observed value as nested tuples (plate axis first), or None
            for a latent site.

    Example:
        >>> from gendsl.testing import SiteSpec
        >>> SiteSpec("z1", "Poisson", parents=("z0",), coef=(1.0, 0.5, 0.0, 0.0), obs=3)
        SiteSpec('z1', 'Poisson', parents=('z0',), coef=(1.0, 0.5, 0.0, 0.0), obs=3)
    """

    name: str
    family: str
    parents: tuple[str, ...] = ()
    uses_arg: bool = False
    coef: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    in_plate: bool = False
    obs: Any = None

    def __repr__(self) -> str:
        # A constructor call that omits defaults: short, and pastes back into a test.
        fields = [repr(self.name), repr(self.family)]
        for field in dataclasses.fields(self)[2:]:
            value = getattr(self, field.name)
            if value != field.default:
                fields.append(f"{field.name}={value!r}")
        return f"SiteSpec({', '.join(fields)})"

    @property
    def event_shape(self) -> tuple[int, ...]:
        """The event shape of the site's distribution."""
        return _FAMILIES[self.family].event_shape


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A generated model together with the description it was built from.

    Attributes:
        sites: the sites in program order (parents before children).
        plate_size: the size of the plate that ``in_plate`` sites sit in.
        args: the model's arguments, ``(x,)``.

    Example:
        >>> import jax, numpy as np
        >>> from gendsl.testing import ModelSpec, SiteSpec
        >>> spec = ModelSpec(
        ...     sites=(SiteSpec("z0", "Normal", uses_arg=True, coef=(1.0, 0.0, 0.0, 0.0)),
        ...            SiteSpec("z1", "Bernoulli", parents=("z0",), in_plate=True, obs=(1.0, 0.0))),
        ...     plate_size=2, args=(0.5,))
        >>> spec
        ModelSpec(sites=(
            SiteSpec('z0', 'Normal', uses_arg=True, coef=(1.0, 0.0, 0.0, 0.0)),
            SiteSpec('z1', 'Bernoulli', parents=('z0',), in_plate=True, obs=(1.0, 0.0)),
        ), plate_size=2, args=(0.5,))
        >>> spec.latent_sites, spec.observed_sites, spec.plate_sites
        (('z0',), ('z1',), ('z1',))
        >>> tr = spec.model.simulate(jax.random.key(0), *spec.args)
        >>> bool(np.isclose(tr.site_score("z1"), 2 * np.log(0.5)))  # a = b = 0: probs = 1/2
        True
    """

    sites: tuple[SiteSpec, ...]
    plate_size: int = 1
    args: tuple = (0.0,)

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for site in self.sites:
            if site.family not in _FAMILIES:
                raise ValueError(f"site {site.name}: unknown family {site.family!r}; use one of {FAMILIES}")
            if site.name in seen:
                raise ValueError(f"site {site.name}: two sites have this name")
            missing = set(site.parents) - seen
            if missing:
                raise ValueError(f"site {site.name}: parents {sorted(missing)} are not earlier sites")
            seen.add(site.name)

    def __repr__(self) -> str:
        sites = "".join(f"    {site!r},\n" for site in self.sites)
        return f"ModelSpec(sites=(\n{sites}), plate_size={self.plate_size}, args={self.args!r})"

    def _repr_pretty_(self, printer, cycle) -> None:
        # Hypothesis prints failing examples with its pretty-printer, which would
        # otherwise spell out every field of every site on its own line.
        printer.text(repr(self))

    @functools.cached_property
    def model(self) -> gendsl.Model:
        """The model as a ``gendsl.Model`` taking ``*args``; it returns a dict of site values."""
        return self.masked()

    @property
    def latent_sites(self) -> tuple[str, ...]:
        """Addresses of the unobserved sites."""
        return tuple(s.name for s in self.sites if s.obs is None)

    @property
    def observed_sites(self) -> tuple[str, ...]:
        """Addresses of the observed sites."""
        return tuple(s.name for s in self.sites if s.obs is not None)

    @property
    def plate_sites(self) -> tuple[str, ...]:
        """Addresses of the sites inside the plate."""
        return tuple(s.name for s in self.sites if s.in_plate)

    def descendants(self, name: str) -> frozenset[str]:
        """Addresses of the sites whose distribution depends, directly or not, on ``name``.

        Example:
            >>> from gendsl.testing import ModelSpec, SiteSpec
            >>> spec = ModelSpec((SiteSpec("a", "Normal"), SiteSpec("b", "Normal", parents=("a",)),
            ...                   SiteSpec("c", "Normal")))
            >>> sorted(spec.descendants("a"))
            ['b']
        """
        found: set[str] = set()
        for site in self.sites:
            if name in site.parents or found & set(site.parents):
                found.add(site.name)
        return frozenset(found)

    def masked(self, *names: str) -> gendsl.Model:
        """The model with the sites ``names`` inside ``handlers.mask(mask=False)``.

        Masked sites are still sampled (with the same values as in ``model``) but
        contribute zero log density.

        Example:
            >>> import jax
            >>> from gendsl.testing import ModelSpec, SiteSpec
            >>> spec = ModelSpec((SiteSpec("a", "Normal"), SiteSpec("b", "Normal", parents=("a",))))
            >>> tr = spec.masked("a").simulate(jax.random.key(0), *spec.args)
            >>> float(tr.log_probs["a"]), bool(tr.log_probs["b"] != 0)
            (0.0, True)
        """
        unknown = set(names) - {s.name for s in self.sites}
        if unknown:
            raise ValueError(f"masked: {sorted(unknown)} are not sites of this model")
        return _build(self, frozenset(names))


def _site_input(site: SiteSpec, spec: ModelSpec, values: dict[str, jax.Array], x: Any) -> jax.Array:
    """The input ``u`` of ``site``: its parents' values (reduced to its shape) plus ``x``."""
    by_name = {s.name: s for s in spec.sites}
    u = jnp.asarray(x, dtype=jnp.float32) if site.uses_arg else jnp.zeros(())
    for name in site.parents:
        parent = by_name[name]
        value = jnp.asarray(values[name], dtype=jnp.float32)
        if parent.event_shape:  # a vector-valued parent enters through its mean
            value = jnp.mean(value, axis=-1)
        if parent.in_plate and not site.in_plate:  # a site outside the plate sees its average
            value = jnp.mean(value, axis=-1)
        u = u + value
    return u


def _build(spec: ModelSpec, masked: frozenset[str]) -> gendsl.Model:
    def generated_model(x):
        values: dict[str, jax.Array] = {}
        for site in spec.sites:
            fn = _FAMILIES[site.family].build(*_links(site.coef, _site_input(site, spec, values, x)))
            # Python ints become int32 (Categorical/Poisson need integer values), floats float32.
            obs = None if site.obs is None else jnp.asarray(site.obs)
            with contextlib.ExitStack() as stack:
                if site.in_plate:
                    stack.enter_context(gendsl.plate(PLATE, spec.plate_size))
                if site.name in masked:
                    stack.enter_context(handlers.mask(mask=False))
                values[site.name] = gendsl.sample(site.name, fn, obs=obs)
        return values

    return gendsl.model(generated_model)


def _observation(draw, site_family: str, in_plate: bool, plate_size: int) -> Any:
    one = _FAMILIES[site_family].observation
    return draw(st.tuples(*[one] * plate_size)) if in_plate else draw(one)


@st.composite
def _site(draw, index: int, earlier: tuple[str, ...], families: tuple[str, ...], plate_size: int,
          allow_observed: bool, allow_plate: bool) -> SiteSpec:
    family = draw(st.sampled_from(families))
    in_plate = allow_plate and draw(st.booleans())
    observed = allow_observed and draw(st.booleans())
    return SiteSpec(
        name=f"z{index}",
        family=family,
        parents=tuple(sorted(draw(st.sets(st.sampled_from(earlier))) if earlier else ())),
        uses_arg=draw(st.booleans()),
        coef=draw(st.tuples(_COEF, _COEF, _COEF, _COEF)),
        in_plate=in_plate,
        obs=_observation(draw, family, in_plate, plate_size) if observed else None,
    )


@st.composite
def models(
    draw,
    max_sites: int = 5,
    families: Sequence[str] | None = None,
    allow_observed: bool = True,
    allow_plate: bool = True,
) -> ModelSpec:
    """A strategy for small random models, as ``ModelSpec``.

    Args:
        max_sites: the largest number of sample sites (at least one is drawn).
        families: names from ``FAMILIES`` the sites draw from (default: all).
        allow_observed: whether sites may be observed.
        allow_plate: whether sites may sit inside a plate (of size 1-4).

    Example:
        >>> import jax, numpy as np
        >>> from hypothesis import given, settings
        >>> from gendsl.testing import models
        >>> @settings(max_examples=5, deadline=None, derandomize=True, database=None)
        ... @given(models())
        ... def score_is_reproducible(spec):
        ...     tr = spec.model.simulate(jax.random.key(0), *spec.args)
        ...     np.testing.assert_allclose(spec.model.assess(tr.choices, *spec.args), tr.score)
        >>> score_is_reproducible()
    """
    if max_sites < 1:
        raise ValueError(f"max_sites must be at least 1, got {max_sites}")
    families = _check_families(families)
    plate_size = draw(st.integers(1, 4))
    sites: list[SiteSpec] = []
    for index in range(draw(st.integers(1, max_sites))):
        earlier = tuple(s.name for s in sites)
        sites.append(draw(_site(index, earlier, families, plate_size, allow_observed, allow_plate)))
    x = draw(_grid(-8, 8, 4))
    return ModelSpec(sites=tuple(sites), plate_size=plate_size, args=(x,))
