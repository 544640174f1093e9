"""Attend-Infer-Repeat (Eslami et al., 2016) as a gendsl program, small enough for a CPU.

A canvas of ``canvas x canvas`` pixels holds up to ``steps`` objects. At step ``t``
the model draws

* ``z_pres_t ~ Bernoulli(pres_prior)``: whether step ``t`` adds an object. An object
  is drawn only while every earlier step drew one (``present_t = prod_{s<=t} z_pres_s``),
  so the number of objects is the number of leading ones. Once a step has drawn 0,
  the later ``z_pres`` are still drawn (from the prior in the model; the guide sees
  that it is past the end) but change nothing. This keeps every ``z_pres`` site a
  plain Bernoulli with full support, which enumeration and measure-valued derivatives
  need (Pyro's AIR instead sets the later probabilities to 0, and a zero-probability
  branch makes an enumerated objective ``0 * inf``).
* ``z_where_t = (s, x, y) ~ Normal``: the object's scale and centre. The object
  occupies the canvas square ``[x - 1/s, x + 1/s] x [y - 1/s, y + 1/s]`` (coordinates
  in ``[-1, 1]``).
* ``z_what_t ~ Normal(0, I)``: its appearance, decoded to a ``window x window`` image
  that a spatial transformer (bilinear sampling) writes onto the canvas.

``z_where_t`` and ``z_what_t`` are masked (``gendsl.handlers.mask``) where the object is
absent, in the model and in the guide, so they contribute nothing there. The image
is ``Normal(sum of objects, pixel_noise)`` per pixel, its density written through inner
products of the objects (:class:`ObjectsNormal`), so that summing over the presence
patterns (``ENUM``) costs a few scalars per pattern rather than a canvas.

The guide is recurrent, as in the paper: a GRU (``equinox.nn.GRUCell``) reads an
embedding of the image and the previous step's choices and proposes ``z_pres_t``
and ``z_where_t``; an encoder reads the window that ``z_where_t`` cuts out of the
image (the inverse transformer) and proposes ``z_what_t``. The image embedding is
computed once per image rather than at every step (it does not depend on the step).

The ``z_pres_t`` sites carry no strategy; pick one from outside, for example
``gendsl.handlers.strategy(air.guide, rules={"z_pres_*": ENUM})``, or use
:func:`with_strategy`. ``air.baseline`` is a learned, data-dependent REINFORCE
baseline (an MLP on the image, parameters ``"baseline"`` declared by the guide when
``make_air`` keeps its default strategy) for ``Reinforce(baseline=air.baseline)``.

Everything is written for **one image**; train on a minibatch with
``SVI(air.objective, optimizer, per_point=True)`` or :func:`batch_value_and_grad`, which
apply an objective's estimator to each image. One image per estimator keeps each
``z_pres_t`` an unbatched site, so ``ENUM`` sums it exactly and REINFORCE pairs its score
with that image's own ELBO only (per-datapoint credit assignment, as Pyro's
``TraceGraph_ELBO`` gets from its plate).

``AIR`` implements ``gendsl.models.Trainable``: ``air.objective`` is the ELBO of one image
with the z_pres strategy chosen in ``make_air`` (``per_point = True``: ``SVI`` sums it over
the minibatch), ``sample`` draws canvases from the prior and ``evaluate`` reports the ELBO
per image and, given true object counts, the accuracy of the inferred counts.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from numpyro import distributions as nd

import gendsl
import gendsl.distributions as dist
from gendsl import handlers
from gendsl.inference import Expectation, Reinforce, elbo, expectation
from gendsl.models._protocol import mean_and_error

__all__ = [
    "AIR",
    "AIRConfig",
    "ObjectsNormal",
    "batch_value_and_grad",
    "count_objects",
    "image_to_window",
    "make_air",
    "window_to_image",
    "with_strategy",
]


@dataclasses.dataclass(frozen=True)
class AIRConfig:
    """Sizes and priors of an AIR model.

    Attributes:
        canvas: side of the square image, in pixels.
        window: side of an object's decoded window, in pixels.
        steps: the largest number of objects.
        what: dimension of ``z_what``.
        hidden: GRU state size (and image embedding size) of the guide.
        mlp: hidden width of the object decoder, the object encoder and the baseline.
        pres_prior: prior probability of ``z_pres_t = 1``.
        scale_prior: ``(mean, sd)`` of the prior on the object scale ``s``.
        shift_prior: sd of the prior on the object centre ``(x, y)``.
        pixel_noise: sd of the Normal likelihood of each pixel.

    Example:
        >>> from gendsl.models.air import AIRConfig
        >>> AIRConfig(canvas=12, window=4, steps=2).steps
        2
    """

    canvas: int = 50
    window: int = 20
    steps: int = 3
    what: int = 10
    hidden: int = 128
    mlp: int = 100
    pres_prior: float = 0.5
    scale_prior: tuple[float, float] = (1.8, 0.25)
    shift_prior: float = 1.0
    pixel_noise: float = 0.3


# ----------------------------------------------------------------------------- spatial transformer


def _hat_matrix(centres: jax.Array, size: int) -> jax.Array:
    """Bilinear weights: row ``i`` interpolates pixel position ``centres[i]`` on a grid of ``size`` pixels.

    Bilinear sampling with zero padding is the hat kernel ``max(0, 1 - |p - j|)``;
    an axis-aligned transformer factorizes into one such matrix per axis, so sampling
    is two small matmuls (and differentiable in the positions).
    """
    return jnp.maximum(0.0, 1.0 - jnp.abs(centres[:, None] - jnp.arange(size)[None, :]))


def _pixel(u: jax.Array, size: int) -> jax.Array:
    """Normalized coordinate in ``[-1, 1]`` (edges of the image) to pixel position (pixel centres at 0..size-1)."""
    return ((u + 1.0) * size - 1.0) / 2.0


def _centres(size: int) -> jax.Array:
    return (2.0 * jnp.arange(size) + 1.0) / size - 1.0


def window_to_image(window: jax.Array, z_where: jax.Array, canvas: int) -> jax.Array:
    """Write a ``(w, w)`` window onto a ``(canvas, canvas)`` image at ``z_where = (s, x, y)``.

    Canvas point ``u`` (normalized to ``[-1, 1]``) reads the window at ``s (u - t)``,
    ``t = (x, y)`` (``x`` horizontal, ``y`` vertical); outside the window it reads 0.

    Example:
        >>> import jax.numpy as jnp
        >>> from gendsl.models.air import window_to_image
        >>> w = jnp.arange(16.0).reshape(4, 4)
        >>> bool(jnp.allclose(window_to_image(w, jnp.array([1.0, 0.0, 0.0]), 4), w))  # identity
        True
    """
    s, x, y = z_where[0], z_where[1], z_where[2]
    size = window.shape[0]
    u = _centres(canvas)
    rows = _hat_matrix(_pixel(s * (u - y), size), size)  # (canvas, size)
    cols = _hat_matrix(_pixel(s * (u - x), size), size)
    return rows @ window @ cols.T


def image_to_window(image: jax.Array, z_where: jax.Array, window: int) -> jax.Array:
    """Cut the ``(window, window)`` view of ``image`` at ``z_where`` (the inverse of ``window_to_image``).

    Window point ``w`` reads the image at ``t + w / s``.

    Example:
        >>> import jax.numpy as jnp
        >>> from gendsl.models.air import image_to_window
        >>> img = jnp.arange(16.0).reshape(4, 4)
        >>> image_to_window(img, jnp.array([2.0, -0.5, -0.5]), 2)  # the top-left quarter
        Array([[0., 1.],
               [4., 5.]], dtype=float32)
    """
    s, x, y = z_where[0], z_where[1], z_where[2]
    size = image.shape[0]
    w = _centres(window)
    rows = _hat_matrix(_pixel(y + w / s, size), size)  # (window, size)
    cols = _hat_matrix(_pixel(x + w / s, size), size)
    return rows @ image @ cols.T


# ----------------------------------------------------------------------------- networks


class _Guide(eqx.Module):
    embed: eqx.nn.Linear
    rnn: eqx.nn.GRUCell
    predict: eqx.nn.Linear
    encoder: eqx.nn.MLP

    def __init__(self, c: AIRConfig, *, key):
        k = jax.random.split(key, 4)
        self.embed = eqx.nn.Linear(c.canvas**2, c.hidden, key=k[0])
        self.rnn = eqx.nn.GRUCell(c.hidden + 1 + 3 + c.what, c.hidden, key=k[1])
        self.predict = eqx.nn.Linear(c.hidden, 1 + 3 + 3, key=k[2])
        self.encoder = eqx.nn.MLP(c.window**2, 2 * c.what, c.mlp, 1, activation=jax.nn.relu, key=k[3])


def _decoder(c: AIRConfig, key) -> eqx.nn.MLP:
    return eqx.nn.MLP(c.what, c.window**2, c.mlp, 1, activation=jax.nn.relu, key=key)


def _baseline_net(c: AIRConfig, key) -> eqx.nn.MLP:
    return eqx.nn.MLP(c.canvas**2, "scalar", c.mlp, 1, activation=jax.nn.relu, key=key)


# ----------------------------------------------------------------------------- the likelihood


class ObjectsNormal(nd.Distribution):
    """``Normal(sum_t present_t * object_t, noise)`` per pixel, its density from inner products of the objects.

    The density is the same as ``Normal(canvas, noise).to_event(2)``'s, with
    ``canvas = sum_t present_t * object_t``, written through
    ``|x - canvas|^2 = |x|^2 - 2 sum_t p_t <x, o_t> + sum_{s,t} p_s p_t <o_s, o_t>``.
    Why: an exact sum over the presence patterns (``ENUM``) evaluates the likelihood once
    per pattern, and in this form a pattern costs a few scalars instead of a canvas of
    pixels (forward and backward); each inner product is computed once per distinct
    prefix of the patterns, where its objects are. In float32 the expansion loses about
    ``1e-7 |x|^2 / noise^2`` nats to cancellation (``1e-3`` on a 50x50 canvas of values
    in ``[0, 1]``), far below the noise of any estimate.

    Args:
        objects: ``(present_t, object_t)`` pairs, ``present_t`` a scalar, ``object_t`` the
            object written onto the canvas ``(canvas, canvas)``.
        noise: the pixel standard deviation.

    Example:
        >>> import jax.numpy as jnp
        >>> import gendsl.distributions as dist
        >>> from gendsl.models.air import ObjectsNormal
        >>> o = jnp.arange(4.0).reshape(2, 2) / 4
        >>> x = jnp.ones((2, 2))
        >>> d = ObjectsNormal([(jnp.array(1.0), o), (jnp.array(0.0), 2 * o)], 0.5)
        >>> bool(jnp.allclose(d.log_prob(x), dist.Normal(o, 0.5).to_event(2).log_prob(x)))
        True
    """

    arg_constraints: ClassVar[dict] = {}
    support = nd.constraints.independent(nd.constraints.real, 2)

    def __init__(self, objects, noise):
        self.objects = [(jnp.asarray(p), jnp.asarray(o)) for p, o in objects]
        self.noise = noise
        super().__init__(batch_shape=(), event_shape=jnp.shape(self.objects[0][1]))

    @property
    def mean(self) -> jax.Array:
        return sum(p * o for p, o in self.objects)

    def sample(self, key, sample_shape=()):
        return self.mean + self.noise * jax.random.normal(key, sample_shape + self.event_shape)

    def log_prob(self, value):
        # Inner products as dots, not sums of products: their gradients are then outer
        # products too, where XLA:CPU otherwise materializes broadcasts of the image per pattern.
        x = value.reshape(-1)
        square = x @ x
        for t, (p, o) in enumerate(self.objects):
            o = o.reshape(-1)
            square = square - 2.0 * p * (x @ o) + p * p * (o @ o)
            for q, earlier in self.objects[:t]:
                square = square + 2.0 * p * q * (o @ earlier.reshape(-1))
        n = math.prod(self.event_shape)
        return -0.5 * square / self.noise**2 - n * math.log(self.noise * math.sqrt(2.0 * math.pi))

    def tree_flatten(self):
        raise NotImplementedError("ObjectsNormal is built inside the model; it is not passed through jax transforms")


# ----------------------------------------------------------------------------- the programs


@dataclasses.dataclass(frozen=True)
class AIR:
    """An AIR model, its guide and a learned REINFORCE baseline; create with :func:`make_air`.

    A ``gendsl.models.Trainable`` whose data are images ``(n, canvas, canvas)``, or
    ``(images, counts)`` with the true number of objects per image (used by ``evaluate``
    only).

    Attributes:
        config: the sizes and priors.
        model: ``model(image)``, a ``gendsl.Model`` of one ``(canvas, canvas)`` image
            (``model(None)`` draws one).
        guide: ``guide(image)``, the recurrent inference network; it declares the
            parameters ``"guide"``, and ``"baseline"`` when ``make_air`` got the default strategy.
        baseline: ``baseline(params, data) -> scalar``, for ``Reinforce(baseline=...)``
            (``data``: one image, a batch of one, or a tuple whose first element is either);
            it needs the ``"baseline"`` parameters, which only the default strategy creates.
        strategy: the gradient strategy at the ``z_pres`` sites of ``objective``.
        objective: the ELBO of **one** image, an ``Expectation`` of ``F(params, data)``
            (``data``: an image, a batch of one, or ``(image, count)`` whose count is
            ignored), the guide with ``strategy`` at its ``z_pres`` sites.
        per_point: True: ``objective`` is of one data point; train it with
            ``SVI(air.objective, optimizer, per_point=True)``, which sums it over the minibatch.
        sample_options: ``()``: ``sample`` takes no options.

    Example:
        >>> from gendsl.models import AIRConfig, make_air
        >>> air = make_air(AIRConfig(canvas=8, window=4, steps=2, what=2, hidden=8, mlp=8))
        >>> air.config.steps, type(air.model).__name__, air.per_point
        (2, 'Model', True)
    """

    per_point: ClassVar[bool] = True
    sample_options: ClassVar[tuple[str, ...]] = ()

    config: AIRConfig
    model: gendsl.Model
    guide: gendsl.Model
    baseline: Callable[..., jax.Array]
    strategy: Any = None
    objective: Expectation | None = None

    def init_params(self, key, data) -> dict:
        """Initial parameters of the model and the guide (``data``: images, ``(images, counts)`` or one image)."""
        return _init_params(self.model, self.guide, self.config, key, data)

    def sample(self, params, key, n: int) -> jax.Array:
        """``n`` canvases ``(n, canvas, canvas)`` drawn from the model's prior.

        Each is the sum of the decoded objects, the mean of the image's Normal likelihood:
        the likelihood's pixel noise (``pixel_noise``) is left out, as in the paper's figures.
        """
        return _sample(self, params, jax.random.split(key, n))

    def evaluate(self, params, data, key, *, samples: int = 1) -> dict:
        """The ELBO per image of held-out ``data`` and, with true counts, the accuracy of the inferred counts.

        With ``k_elbo, k_count = jax.random.split(key)`` and ``n`` images: image ``i``'s
        ELBO is ``objective.estimate(jax.random.split(k_elbo, n)[i], params, image_i,
        samples=samples)``; its inferred count is ``count_objects`` of one guide draw,
        ``guide.simulate(jax.random.split(k_count, n)[i], image_i)`` (a posterior sample,
        as in the paper's count accuracy), compared with the given count.

        Returns:
            ``{"elbo": (nats per image, se)}``, plus ``"count_accuracy": (fraction, se)``
            (binomial standard error ``sqrt(p (1 - p) / n)``) when ``data`` is
            ``(images, counts)``.
        """
        images, counts = data if isinstance(data, tuple) else (data, None)
        images = jnp.asarray(images)
        k_elbo, k_count = jax.random.split(key)
        n = images.shape[0]
        out = {"elbo": mean_and_error(np.asarray(_elbos(self, params, jax.random.split(k_elbo, n), images, samples)))}
        if counts is not None:
            inferred = np.asarray(_counts(self, params, jax.random.split(k_count, n), images))
            p = float(np.mean(inferred == np.asarray(counts).reshape(-1)))
            out["count_accuracy"] = (p, math.sqrt(p * (1.0 - p) / n))
        return out


@eqx.filter_jit
def _sample(air: AIR, params, keys):
    return jax.vmap(lambda k: air.model.bind(params).simulate(k, None).retval)(keys)


@eqx.filter_jit
def _elbos(air: AIR, params, keys, images, samples):
    return jax.vmap(lambda k, x: air.objective.estimate(k, params, x, samples=samples))(keys, images)


@eqx.filter_jit
def _counts(air: AIR, params, keys, images):
    def one(k, x):
        return count_objects(air.guide.bind(params).simulate(k, x).choices, air.config.steps)

    return jax.vmap(one)(keys, images)


def make_air(config: AIRConfig | None = None, *, strategy: Any = None) -> AIR:
    """Build the AIR model and guide for ``config``, and the ELBO of one image with ``strategy`` at ``z_pres``.

    Args:
        config: the sizes and priors (default ``AIRConfig()``).
        strategy: the gradient strategy of the ``z_pres`` sites in ``air.objective``:
            default ``Reinforce(baseline=air.baseline)`` (REINFORCE with the learned,
            image-dependent baseline, as in the paper); ``ENUM`` sums the ``2^steps``
            presence patterns exactly; ``MVD``, ``AUTO`` or another ``Reinforce`` are unbiased too
            (``Relaxed``, biased, is refused unless built with ``allow_bias=True``). The
            baseline network (parameters ``"baseline"``) exists only with the default.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from gendsl.models.air import AIRConfig, make_air
        >>> air = make_air(AIRConfig(canvas=8, window=4, steps=1, what=2, hidden=8, mlp=8))
        >>> image = jnp.zeros((8, 8))
        >>> params = {**air.model.init(jax.random.key(0), image), **air.guide.init(jax.random.key(1), image)}
        >>> sorted(params)
        ['baseline', 'decoder', 'guide']
        >>> tr = jax.jit(air.guide.bind(params).simulate)(jax.random.key(2), image)
        >>> sorted(tr.choices)
        ['z_pres_0', 'z_what_0', 'z_where_0']
    """
    c = config or AIRConfig()
    if c.steps < 1 or c.window < 2 or c.canvas < 2:
        raise ValueError(f"AIRConfig: need steps >= 1, window >= 2, canvas >= 2, got {c}")
    s_mean, s_sd = c.scale_prior
    # Only the default strategy reads the baseline network: under another one its parameters
    # would never reach the objective, which SVI refuses (their gradient would be zero).
    learned = strategy is None

    @gendsl.model
    def model(image):
        if image is not None:  # None: the image is drawn (sampling)
            _check_image(image, c)
        decoder = gendsl.module("decoder", lambda k: _decoder(c, k))
        objects = []
        present = jnp.array(1.0)
        for t in range(c.steps):
            z_pres = gendsl.sample(f"z_pres_{t}", dist.Bernoulli(probs=c.pres_prior))
            present = present * z_pres
            with handlers.mask(mask=present > 0.5):
                where_loc = jnp.array([s_mean, 0.0, 0.0])
                where_sd = jnp.array([s_sd, c.shift_prior, c.shift_prior])
                z_where = gendsl.sample(f"z_where_{t}", dist.Normal(where_loc, where_sd).to_event(1))
                z_what = gendsl.sample(f"z_what_{t}", dist.Normal(jnp.zeros(c.what), 1.0).to_event(1))
            window = jax.nn.sigmoid(decoder(z_what)).reshape(c.window, c.window)
            objects.append((present, window_to_image(window, z_where, c.canvas)))
        likelihood = ObjectsNormal(objects, c.pixel_noise)
        gendsl.sample("image", likelihood, obs=image)
        return likelihood.mean

    @gendsl.model
    def guide(image):
        _check_image(image, c)
        net = gendsl.module("guide", lambda k: _Guide(c, key=k))
        if learned:
            gendsl.module("baseline", lambda k: _baseline_net(c, k))  # used only by `baseline`
        features = jnp.tanh(net.embed(image.reshape(-1)))
        h = jnp.zeros(c.hidden)
        z_pres, z_where, z_what = jnp.array(1.0), jnp.zeros(3), jnp.zeros(c.what)
        present = jnp.array(1.0)
        for t in range(c.steps):
            # The previous presence tells the network whether it is past the last object.
            h = net.rnn(jnp.concatenate([features, present[None], z_where, z_what]), h)
            out = net.predict(h)
            z_pres = gendsl.sample(f"z_pres_{t}", dist.Bernoulli(logits=out[0]))
            present = present * z_pres
            with handlers.mask(mask=present > 0.5):
                loc = out[1:4] + jnp.array([s_mean, 0.0, 0.0])
                scale = jax.nn.softplus(out[4:7]) * jnp.array([0.1, 0.2, 0.2]) + 1e-3
                z_where = gendsl.sample(f"z_where_{t}", dist.Normal(loc, scale).to_event(1))
                enc = net.encoder(image_to_window(image, z_where, c.window).reshape(-1))
                z_what = gendsl.sample(
                    f"z_what_{t}", dist.Normal(enc[: c.what], jax.nn.softplus(enc[c.what :]) + 1e-3).to_event(1)
                )

    baseline = _learned_baseline(c)
    strategy = Reinforce(baseline=baseline) if strategy is None else strategy
    return AIR(c, model, guide, baseline, strategy, _objective(c, model, guide, strategy))


def _objective(c: AIRConfig, model, guide, strategy) -> Expectation:
    bound = elbo(model, with_strategy(guide, strategy))

    def air_elbo(params, data):
        return bound.fn(params, _one_image(data, c))

    def init(key, data, **kwargs):
        return _init_params(model, guide, c, key, data), {}  # no constrained parameters

    return expectation(air_elbo, models=(model, guide), init=init)


def _one_image(data, c: AIRConfig) -> jax.Array:
    """The image of one data point: an image, a batch of one (``SVI(per_point=True)``), or the first of a tuple."""
    image = data[0] if isinstance(data, (tuple, list)) else data
    if jnp.shape(image) == (1, c.canvas, c.canvas):
        image = image[0]
    if jnp.shape(image) != (c.canvas, c.canvas):
        raise ValueError(
            f"AIR.objective: expected one image of shape ({c.canvas}, {c.canvas}) (or a batch of one), got "
            f"{jnp.shape(image)}; it is the ELBO of one image: train with SVI(air.objective, optimizer, "
            "per_point=True), which applies it to each image of a minibatch and sums"
        )
    return image


def _init_params(model, guide, c: AIRConfig, key, data) -> dict:
    """The model's and the guide's parameters, initialized on the first image of ``data``."""
    images = jnp.asarray(data[0] if isinstance(data, (tuple, list)) else data)
    image = images if images.ndim == 2 else images.reshape(-1, c.canvas, c.canvas)[0]
    return {**model.init(jax.random.fold_in(key, 0), image), **guide.init(jax.random.fold_in(key, 1), image)}


def _learned_baseline(c: AIRConfig):
    # The network's static part (activations, shapes) is built once; parameters come from `params`.
    shapes = eqx.filter_eval_shape(_baseline_net, c, jax.random.key(0))
    static = eqx.partition(shapes, lambda x: isinstance(x, jax.ShapeDtypeStruct))[1]

    def baseline(params: dict[str, Any], data) -> jax.Array:
        if "baseline" not in params:
            raise KeyError(
                "AIR.baseline: the parameters hold no 'baseline' network; make_air builds it only for its "
                "default strategy (REINFORCE with this learned baseline): build the AIR with make_air(config) "
                "to use air.baseline"
            )
        return eqx.combine(params["baseline"], static)(_one_image(data, c).reshape(-1))

    baseline.__doc__ = "Learned baseline ``b(params, image)``: an MLP on the image (parameters ``params['baseline']``)."
    return baseline


def _check_image(image, c: AIRConfig) -> None:
    if jnp.shape(image) != (c.canvas, c.canvas):
        raise ValueError(
            f"AIR: expected one image of shape ({c.canvas}, {c.canvas}), got {jnp.shape(image)}; "
            "the programs take one image (vmap over a batch with batch_value_and_grad)"
        )


def with_strategy(guide: gendsl.Model, strategy: Any) -> gendsl.Model:
    """The guide with ``strategy`` at every ``z_pres_t`` site.

    Example:
        >>> from gendsl.inference import ENUM
        >>> from gendsl.models.air import AIRConfig, make_air, with_strategy
        >>> enum_guide = with_strategy(make_air(AIRConfig(canvas=8, window=4)).guide, ENUM)
    """
    return gendsl.model(handlers.strategy(guide, rules={"z_pres_*": strategy}))


def count_objects(choices: dict[str, jax.Array], steps: int) -> jax.Array:
    """The number of objects in a set of choices: the number of leading ``z_pres_t = 1``.

    Example:
        >>> import jax.numpy as jnp
        >>> from gendsl.models.air import count_objects
        >>> int(count_objects({"z_pres_0": jnp.array(1.0), "z_pres_1": jnp.array(0.0), "z_pres_2": jnp.array(1.0)}, 3))
        1
    """
    present = jnp.ones_like(choices["z_pres_0"])
    count = jnp.zeros_like(present)
    for t in range(steps):
        present = present * choices[f"z_pres_{t}"]
        count = count + present
    return count


def batch_value_and_grad(objective, key: jax.Array, params: Any, images: jax.Array, **kwargs):
    """Mean over ``images`` of ``objective.value_and_grad``, one independent estimate per image.

    The per-image surrogates (``objective.surrogate``) are averaged and then
    differentiated once, so the gradient is summed inside the backward pass.

    Args:
        objective: a ``gendsl.inference`` objective of one image (``elbo(air.model, guide)``, ...).
        key: PRNG key, split into one key per image.
        params: the parameters (shared by all images).
        images: ``(batch, canvas, canvas)``.
        **kwargs: passed to ``value_and_grad`` (e.g. ``samples=``).

    Returns:
        ``(mean value, mean gradient)``: unbiased for the per-image mean objective.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from gendsl.inference import elbo
        >>> from gendsl.models.air import AIRConfig, batch_value_and_grad, make_air
        >>> air = make_air(AIRConfig(canvas=8, window=4, steps=1, what=2, hidden=8, mlp=8))
        >>> images = jnp.zeros((3, 8, 8))
        >>> def init(key):
        ...     return {**air.model.init(key, images[0]), **air.guide.init(jax.random.fold_in(key, 1), images[0])}
        >>> def step(key, params, images):
        ...     return batch_value_and_grad(elbo(air.model, air.guide), key, params, images)
        >>> # The shapes, traced without compiling; jax.jit(step)(key, init(key), images) computes the values.
        >>> params = jax.eval_shape(init, jax.random.key(0))
        >>> value, grads = jax.eval_shape(step, jax.random.key(2), params, images)
        >>> value.shape, grads["decoder"].layers[0].weight.shape
        ((), (8, 2))
    """
    keys = jax.random.split(key, images.shape[0])

    def mean_surrogate(p):
        s, values = jax.vmap(lambda k, x: objective.surrogate(k, p, x, **kwargs))(keys, images)
        return jnp.mean(s), jnp.mean(values)

    # Differentiate the mean, not each image: vmap of value_and_grad would materialize one
    # gradient per image (a batched outer product per weight matrix), 10x slower on XLA:CPU.
    (_, value), grads = jax.value_and_grad(mean_surrogate, has_aux=True)(params)
    return value, grads
