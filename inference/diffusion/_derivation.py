"""Discrete-time diffusion objectives derived from a (reverse-chain model, forward-chain guide) pair.

The user writes two ordinary programs over a time grid ``ts`` (increasing times
``t_1 < ... < t_n``; ints for DDPM, floats in [0, 1] for VDM):

* the **model** (reverse chain), called ``model(x, ts, *args)``: the state at
  ``t_n`` from a prior, then each state at ``t_{k-1}`` from a Normal whose mean
  and scale may depend (through a network) on the state at ``t_k``, and finally
  the data ``x`` observed through a decoder of the state at ``t_1``;
* the **guide** (forward noising chain), called ``guide(x, ts)``: the state at
  ``t_1`` from a Normal whose mean is affine in ``x``, then each state at ``t_k``
  from a Normal whose mean is affine in the state at ``t_{k-1}`` and whose
  scale does not depend on it.

A state is a latent site (unrolled: ``"z1"``, ..., ``"zn"``) or one step of a site
drawn in a ``gendsl.scan`` body (the *scan form*, below). The states have the same
addresses in both programs (so ``elbo(model, guide)`` is the naive bound of the pair).
``diffusion_elbo`` traces the pair, recognizes the Gaussian-linear structure and derives from it:

* the per-step coefficients ``q(z_k | z_{k-1}) = N(a_k z_{k-1} + b_k, s_k^2)``,
  read off the guide's traced distributions with ``jax.jvp`` (and checked to be
  affine, diagonal and Markov; any other form is an error naming the site);
* the collapsed marginals ``q(z_k | x) = N(A_k x + B_k, S_k^2)`` (reparameterized
  sampling of any step directly from the data) and the Gaussian posteriors
  ``q(z_{k-1} | z_k, x)``;
* the ELBO ``E[log p(x|z_1)] - KL(q(z_n|x) || p(z_n)) - sum_k E KL(q(z_{k-1}|z_k,x) || p(z_{k-1}|z_k))``
  with closed-form Gaussian KLs and one uniformly sampled step
  (``sum_k L_k = (n - 1) E_k[L_k]``);
* the model's implied predictions of ``x`` (x0), of the noise (eps) and of
  ``v = A eps - S x``, obtained by inverting the posterior-mean map, hence the
  per-step weights of the KL in each parameterization and the reweighted
  ("simple") objectives.

Both objectives (``DiffusionELBO.objective`` and ``.simple_objective``) are
``Expectation``s of the quantity to maximize, trained by ``gendsl.inference.SVI``
like the variational objectives; their random choices (the step, the noise) come
from the objective's own key.

Design decisions:

* **The grid as an argument.** Because the time grid is an argument, the
  derivation evaluates the model on a *sub-grid* ``(t_{k-1}, t_k)`` with the
  state at ``t_k`` substituted: that runs exactly one reverse step (one network
  call), so a training step costs what a hand-written loss costs and compiles in
  time independent of ``n``. This is the only convention the derivation needs:
  a program run on a sub-grid is the same chain restricted to that grid
  (Gen's ``Unfold`` semantics). The model receives its sub-grids as traced arrays.
* **Unrolled or scanned chains; states by position.** A Python loop of sites
  (``"z1"``, ..., ``"zn"``) is traced once per step: recognizing a 1,000-step guide
  took about 20 s. The *scan form* draws the states at ``t_1 .. t_{n-1}`` in one
  ``gendsl.scan`` (its body traced once, per-step schedule values as its scanned
  inputs) and the state at ``t_n`` as its own site. The model draws that state from
  its prior, then runs its loop of reverse steps with ``reverse=True``, which stacks
  the states in time order like the guide's loop, so the two pair by address; its
  prior is a site of its own so that the one-step sub-grid runs one network call.
  ``_states.StateReader`` reads both forms (and mixtures): states are numbered by
  position, a loop's by its stacked position; a loop's per-step Normals are handed
  out of the loop by a ``POST`` hook. Recognition is then one jitted ``jax.jvp``
  whose cost does not grow with ``n`` beyond the arrays it fills.
* **One example per execution.** Both programs take one data point; the objectives
  ``vmap`` over a batch. The guide's coefficients therefore have the data's
  event shape, not the batch's.
* **Fixed schedules cost nothing.** When the guide has no parameters its
  coefficients are computed once, eagerly (``jax.ensure_compile_time_eval``),
  and enter compiled objectives as constants. The recognition is one jitted
  ``jax.jvp`` of the guide with its points as (numpy) arguments and the grid a
  constant: the schedule folds into constants, so an unrolled chain's program
  holds only the states' dependence. Under compile-time evaluation every JAX op
  on constants is compiled on its own, so a scan-form program computes its
  per-step schedule values in one jitted call. A guide with parameters (a learned
  discrete schedule) is re-traced inside every objective call.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

import gendsl
from gendsl import handlers
from gendsl.inference import expectation
from gendsl.inference._expectation import Expectation
from gendsl.inference.diffusion._objective_key import objective_key
from gendsl.inference.diffusion._states import DiffusionStructureError, StateReader, stacked_provider

__all__ = ["DiffusionELBO", "DiffusionStructureError", "GaussianChain", "diffusion_elbo", "gaussian_kl"]

PARAMETERIZATIONS = ("eps", "x0", "v")


@dataclasses.dataclass(frozen=True)
class GaussianChain:
    """The forward chain recognized in a guide, per latent step ``k = 1..n`` (arrays stacked on axis 0).

    Coefficients are scalars per step when the schedule is the same for every
    element (the usual case), otherwise arrays of the data's event shape.

    Attributes:
        names: the states' labels in the guide's order (``z_1`` first): a latent site's address, or
            ``"address[i]"`` for step ``i`` of a site drawn in a ``gendsl.scan`` loop.
        a, b, s: ``q(z_k | z_{k-1}) = N(a_k z_{k-1} + b_k, s_k^2)`` with ``z_0 = x``.
        A, B, S: the collapsed marginals ``q(z_k | x) = N(A_k x + B_k, S_k^2)``.
        table: per step, ``(A, B, S, c_x, c_z, c_0, var)`` stacked on axis 1, where
            ``q(z_{k-1} | z_k, x) = N(c_x x + c_z z_k + c_0, var)``: an objective reads one
            row per sampled step (one gather instead of nine).

    Example:
        >>> import gendsl, gendsl.distributions as dist
        >>> from gendsl.inference.diffusion import diffusion_elbo
        >>> @gendsl.model
        ... def guide(x, ts):                 # q(z_k | z_{k-1}) = N(0.6 z_{k-1}, 0.8^2)
        ...     for k in range(len(ts)):
        ...         x = gendsl.sample(f"z{k + 1}", dist.Normal(0.6 * x, 0.8))
        >>> chain = diffusion_elbo(guide, guide, ts=[1, 2]).chain({}, 0.0)
        >>> [round(float(a), 4) for a in chain.A], [round(float(s), 4) for s in chain.S]  # 0.6^k, sqrt(1 - 0.36^k)
        ([0.6, 0.36], [0.8, 0.933])
    """

    names: tuple[str, ...]
    a: jax.Array
    b: jax.Array
    s: jax.Array
    A: jax.Array
    B: jax.Array
    S: jax.Array
    table: jax.Array = dataclasses.field(init=False, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "table", _posterior_table(self.a, self.b, self.A, self.B, self.S, self.s))

    def at(self, k) -> tuple:
        """``(A_k, B_k, S_k, c_x, c_z, c_0, var)`` of 0-based step ``k`` (may be traced)."""
        return tuple(self.table[k][i] for i in range(7))

    def snr(self) -> jax.Array:
        """Signal-to-noise ratio ``A_k^2 / S_k^2`` of each collapsed marginal."""
        return self.A**2 / self.S**2

    def posterior(self, k, x, z_k):
        """Mean and variance of ``q(z_{k-1} | z_k, x)`` for a 0-based step ``k >= 1`` (may be traced)."""
        c_x, c_z, c_0, var = self.posterior_coefficients(k)
        return c_x * x + c_z * z_k + c_0, var

    def posterior_coefficients(self, k):
        """``(c_x, c_z, c_0, var)`` with posterior mean ``c_x x + c_z z_k + c_0`` (0-based ``k >= 1``)."""
        return self.at(k)[3:]


def gaussian_kl(m_q, v_q, m_p, v_p) -> jax.Array:
    """``KL(N(m_q, v_q) || N(m_p, v_p))`` summed over all elements (variances, not scales).

    Example:
        >>> import jax.numpy as jnp
        >>> float(gaussian_kl(jnp.zeros(3), jnp.ones(3), jnp.ones(3), jnp.ones(3)))
        1.5
    """
    ratio = v_q / v_p
    return 0.5 * jnp.sum(ratio - 1.0 - jnp.log(ratio) + (m_q - m_p) ** 2 / v_p)


def _read(program, params, key, x, ts, args, who: str, provide=None) -> StateReader:
    """Run ``program(x, ts, *args)`` once under a ``StateReader``: its states, observed sites and parameters."""
    fn = program.bind(params).fn if params else program.fn
    reader = StateReader(fn, who=who, provide=provide)
    # The reader inside the seed: a substituted site has its value before the seed would derive its key.
    handlers.seed(reader, key=key)(x, ts, *args)
    if not reader.latents:
        raise DiffusionStructureError(f"the {who} has no latent sites: expected a chain of Normal sites")
    return reader


@jax.jit
def _posterior_table(a, b, A, B, S, s):
    """``GaussianChain.table``: one jitted function (ops on concrete arrays would each be compiled on their own)."""
    prec_prev = 1.0 / S[:-1] ** 2
    a, s2 = a[1:], s[1:] ** 2
    var = 1.0 / (prec_prev + a**2 / s2)
    post = [var * A[:-1] * prec_prev, var * a / s2, var * (B[:-1] * prec_prev - a * b[1:] / s2), var]
    # Step 0 has no posterior (its parent is the data): harmless placeholders, never read by the objectives.
    post = [jnp.concatenate([jnp.ones_like(c[:1]), c]) for c in post]
    return jnp.stack([A, B, S, *post], axis=1)


@jax.jit
def _collapse(a, b, s):
    """``(A, B, S)`` of the collapsed marginals, composing ``z_k = a_k z_{k-1} + b_k + s_k eps_k`` from ``z_0 = x``."""

    def step(carry, abs_k):
        A, B, S2 = carry
        a_k, b_k, s_k = abs_k
        carry = (a_k * A, a_k * B + b_k, a_k**2 * S2 + s_k**2)
        return carry, carry

    one, zero = jnp.ones_like(a[0]), jnp.zeros_like(a[0])
    _, (A, B, S2) = jax.lax.scan(step, (one, zero, zero), (a, b, s))
    return A, B, jnp.sqrt(S2)


def _uniform(c) -> bool:
    flat = np.asarray(c).reshape(c.shape[0], -1)
    return bool(np.all(flat == flat[:, :1]))


def _concrete(*trees) -> bool:
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(trees))


def _stack_states(reader: StateReader, field: str) -> jax.Array:
    """The ``loc`` or ``scale`` of every state, by position, stacked on axis 0."""
    parts = [getattr(site, field) if site.steps is not None else getattr(site, field)[None] for site in reader.latents]
    return parts[0] if len(parts) == 1 else jnp.concatenate(parts)


def _executed(reader: StateReader, j: int) -> tuple[jax.Array, jax.Array]:
    """``(loc, scale)`` of the ``j``-th state the program drew (execution order)."""
    for site in reader.latents:
        if j < site.count:
            return site.executed(j)
        j -= site.count
    raise IndexError(j)


def _executed_labels(site) -> list[str]:
    labels = site.labels()
    return labels[::-1] if site.reverse else labels


def _summary(reader: StateReader) -> list[str]:
    return [site.summary() for site in reader.latents]


def _summary_of(labels: list[str]) -> list[str]:
    """Per-state labels folded back into sites: ``["zT", "chain/z (3 steps)"]``."""
    steps: dict[str, int | None] = {}
    for label in labels:
        if label.endswith("]"):
            site = label[: label.rindex("[")]
            steps[site] = (steps.get(site) or 0) + 1
        else:
            steps[label] = None
    return [site if n is None else f"{site} ({n} steps)" for site, n in steps.items()]


class DiffusionELBO:
    """The diffusion objectives derived from a program pair; create it with ``diffusion_elbo``.

    Objectives (``Expectation``s to maximize, of ``F(params, xs, *args)`` on a batch):
    ``objective()`` (the ELBO) and ``simple_objective(parameterization=...)``. Per data
    point, with an explicit key: ``elbo``, ``terms``, ``predictions``. And the derivation
    itself: ``chain`` (the recognized forward chain), ``weights``, ``check``.

    Example:
        >>> import jax.numpy as jnp, gendsl, gendsl.distributions as dist
        >>> from gendsl.inference.diffusion import diffusion_elbo
        >>> @gendsl.model
        ... def guide(x, ts):
        ...     for k in range(len(ts)):
        ...         x = gendsl.sample(f"z{k + 1}", dist.Normal(0.9 * x, 0.3))
        >>> @gendsl.model
        ... def model(x, ts):
        ...     z = gendsl.sample(f"z{len(ts)}", dist.Normal(0.0, 1.0))
        ...     for k in range(len(ts) - 1, 0, -1):
        ...         z = gendsl.sample(f"z{k}", dist.Normal(0.5 * z, 0.5))
        ...     gendsl.sample("x", dist.Normal(z, 0.3), obs=x)
        >>> d = diffusion_elbo(model, guide, ts=jnp.arange(1, 4))
        >>> d.n, d.chain({}, 0.0).names
        (3, ('z1', 'z2', 'z3'))
    """

    def __init__(self, model, guide, ts) -> None:
        self.model = gendsl.model(model)
        self.guide = gendsl.model(guide)
        self.ts = np.asarray(ts)
        if self.ts.ndim != 1 or self.ts.shape[0] < 2:
            raise ValueError(f"diffusion_elbo: ts must be a 1-D grid of at least 2 times, got shape {self.ts.shape}")
        if not np.all(np.diff(self.ts) > 0):
            raise ValueError("diffusion_elbo: ts must be strictly increasing (t_1 < ... < t_n)")
        self.n = int(self.ts.shape[0])
        self._cache: dict = {}
        self._objectives: dict = {}

    # ------------------------------------------------------------------ the guide
    def chain(self, params: dict, x_like) -> GaussianChain:
        """Recognize the guide's Gaussian-linear chain and collapse it (see ``GaussianChain``).

        Args:
            params: the parameters (the guide's are used; none for a fixed schedule).
            x_like: one data point, or anything of its shape and dtype.

        Raises:
            DiffusionStructureError: a guide site is not Normal, observed, or its
                mean is not affine / diagonal / Markov in the previous site, or its
                scale depends on it. The message names the site.
        """
        fixed = self._fixed_chain(x_like)
        if fixed is not None:
            return fixed
        return self._extract(params, jnp.shape(x_like), jnp.result_type(x_like))[0]

    def _fixed_chain(self, x_like) -> GaussianChain | None:
        """The chain of a guide without parameters, computed once per shape; None if the guide has parameters."""
        shape, dtype = jnp.shape(x_like), jnp.result_type(x_like)
        cache_key = (shape, str(dtype))
        if cache_key not in self._cache:
            # First try without parameters, at compile time: a fixed schedule (the usual case) is then computed
            # once, and enters every compiled objective as constants. A guide that declares parameters (a learned
            # schedule) is marked and re-traced with the given parameters on every call.
            with jax.ensure_compile_time_eval():
                fixed, uses_params = self._extract({}, shape, dtype)
            self._cache[cache_key] = None if uses_params else fixed
        return self._cache[cache_key]

    def _extract(self, params, shape, dtype) -> tuple[GaussianChain, bool]:
        """The chain and whether the guide declares parameters."""
        check = _concrete(params)
        found: list[str] = []
        declared: list[str] = []

        def locs_scales(x, values):
            # Substitute the chain's states by position; check the structure on the way (at trace time).
            reader = _read(self.guide, params, jax.random.key(0), x, self.ts, (), "guide", stacked_provider(values))
            declared[:] = reader.params
            if reader.observed:
                raise DiffusionStructureError(
                    f"guide site '{reader.observed[0][0]}' is observed; the guide is the forward noising chain "
                    "q(z_1..z_n | x) and observes nothing"
                )
            backward = next((site.name for site in reader.latents if site.reverse), None)
            if backward is not None:
                raise DiffusionStructureError(
                    f"guide site '{backward}' is drawn by a gendsl.scan with reverse=True; the guide is the forward "
                    "chain: its loop runs forward (z_1 first)"
                )
            if reader.count != self.n:
                raise DiffusionStructureError(
                    f"the guide has {reader.count} latent states {_summary(reader)} on a grid of {self.n} times; "
                    "expected one per time"
                )
            found[:] = reader.labels()
            return _stack_states(reader, "loc"), _stack_states(reader, "scale")

        def at(prim, tan):
            return jax.jvp(locs_scales, (prim[0], prim[1:]), (tan[0], tan[1:]))

        # The points are arguments, and numpy arrays: under jax.ensure_compile_time_eval (a fixed schedule), ops on
        # constants are evaluated while tracing, one compiled op at a time. The grid stays a constant: a fixed
        # schedule is then folded into constants (numpy or compile-time JAX) and only the chain's dependence on
        # its states is compiled (an unrolled chain's program grows with n, and XLA's compile time faster).
        zeros, ones = np.zeros((self.n + 1, *shape), dtype), np.ones((self.n + 1, *shape), dtype)
        if check:
            # At 0 with unit tangents: b = loc(0), a = d loc / d parent, s = scale, ds = d scale; and, in the same
            # vectorized pass, at a random point with random tangents: an affine, elementwise, Markov step
            # reproduces loc = a * parent + b and d loc = a * d parent there; anything else does not (w.p. 1).
            rng = np.random.default_rng(1)
            prim = np.stack([zeros, rng.standard_normal(zeros.shape).astype(dtype)])
            tan = np.stack([ones, rng.standard_normal(zeros.shape).astype(dtype)])
            (loc, scale), (dloc, ds) = jax.jit(jax.vmap(at))(prim, tan)
            loc, scale, dloc, ds = (np.asarray(c) for c in (loc, scale, dloc, ds))
            out = {"a": dloc[0], "b": loc[0], "s": scale[0], "ds": ds[0], "loc": loc[1], "scale": scale[1],
                   "dloc": dloc[1], "prev": prim[1, :-1], "tprev": tan[1, :-1]}
        else:
            (b, s), (a, ds) = jax.jit(at)(zeros, ones)
            out = {"a": a, "b": b, "s": s, "ds": ds}
        names = list(found)
        if check:
            self._check_affine(names, out)
        a, b, s = out["a"], out["b"], out["s"]
        if _concrete(a, b, s):
            a, b, s = (np.asarray(c) for c in (a, b, s))  # numpy: no op below is compiled on its own
            if all(_uniform(c) for c in (a, b, s)):
                # One schedule for every element: scalars per step, so an objective gathers scalars, not event-sized
                # rows.
                a, b, s = (c.reshape(self.n, -1)[:, 0] for c in (a, b, s))
        A, B, S = _collapse(a, b, s)
        return GaussianChain(tuple(names), *(jnp.asarray(c) for c in (a, b, s)), A, B, S), bool(declared)

    def _check_affine(self, names, out) -> None:
        a, b, s = (np.asarray(out[k]) for k in ("a", "b", "s"))
        ds, loc, scale, dloc = (np.asarray(out[k]) for k in ("ds", "loc", "scale", "dloc"))
        prev, tprev = np.asarray(out["prev"]), np.asarray(out["tprev"])
        tol = dict(rtol=1e-4, atol=1e-5)

        def per_step(ok):  # np.allclose of each step's elements, for all steps at once
            return np.reshape(ok, (self.n, -1)).all(axis=1)

        scale_ok = per_step(np.isclose(ds, 0.0, atol=1e-6)) & per_step(np.isclose(scale, s, **tol))
        mean_ok = per_step(np.isclose(dloc, a * tprev, **tol)) & per_step(np.isclose(loc, a * prev + b, **tol))
        bad = np.flatnonzero(~(scale_ok & mean_ok))
        if bad.size == 0:
            return
        k = int(bad[0])
        name, parent = names[k], "the data x" if k == 0 else f"'{names[k - 1]}'"
        if not scale_ok[k]:
            raise DiffusionStructureError(
                f"guide site '{name}': its scale depends on the previous state; a Gaussian-linear step needs a "
                "scale that is a function of time only"
            )
        raise DiffusionStructureError(
            f"guide site '{name}': its mean is not of the form a * {parent} + b (affine, elementwise, and "
            "depending on the previous state only); a diffusion ELBO is derived only for Gaussian-linear "
            "forward chains"
        )

    # ------------------------------------------------------------------ the model
    def _model_sites(self, params, key, x, ts, args, start_value) -> StateReader:
        """Run the model on a sub-grid with its first (prior) state set to ``start_value``."""

        def first_state(index, step):
            if start_value is None or index != 0:
                return None
            if step is not None:
                raise DiffusionStructureError(
                    "the model draws its first state inside a gendsl.scan; draw the prior (the state at the last "
                    "time) as its own site before the loop of reverse steps"
                )
            return start_value

        reader = _read(self.model, params, key, x, ts, args, "model", first_state)
        if reader.count != len(ts):
            raise DiffusionStructureError(
                f"the model has {reader.count} latent states {_summary(reader)} on a grid of {len(ts)} times; "
                "expected one per time (the prior at the last time, then one reverse step per earlier time)"
            )
        if len(reader.observed) != 1 or reader.observed[0][2]:
            raise DiffusionStructureError(
                f"the model observes {[o[0] for o in reader.observed] or 'no sites'}; expected exactly one "
                "observed site outside loops, the data x through a decoder of the state at the first time"
            )
        return reader

    def _step(self, params, key, x, k, z_k, args):
        """The model's reverse step from ``t_k`` to ``t_{k-1}`` (0-based ``k``): its Normal's loc and scale."""
        ts = jnp.stack([jnp.asarray(self.ts)[k - 1], jnp.asarray(self.ts)[k]])
        return _executed(self._model_sites(params, key, x, ts, args, z_k), 1)

    def predictions(self, params, key, x, k, z_k, *args, chain: GaussianChain | None = None) -> dict:
        """The model's implied predictions at step ``k`` (0-based, ``1 <= k < n``) given ``z_k``.

        The model's reverse-step mean is inverted through the recognized posterior
        mean ``c_x x + c_z z_k + c_0``: ``x0 = (loc - c_z z_k - c_0) / c_x``,
        ``eps = (z_k - A_k x0 - B_k) / S_k`` and ``v = A_k eps - S_k x0``.

        Returns:
            ``{"x0", "eps", "v", "loc", "scale"}``.
        """
        chain = self.chain(params, x) if chain is None else chain
        loc, scale = self._step(params, key, x, k, z_k, args)
        A, B, S, c_x, c_z, c_0, _ = chain.at(k)
        x0 = (loc - c_z * z_k - c_0) / c_x
        eps = (z_k - A * x0 - B) / S
        return {"x0": x0, "eps": eps, "v": A * eps - S * x0, "loc": loc, "scale": scale}

    # ------------------------------------------------------------------ objectives
    def terms(self, params, key, x, *args, step=None) -> dict:
        """One reparameterized draw of each term of the ELBO of one data point ``x``.

        Args:
            params: model and guide parameters in one dict.
            key: PRNG key.
            x: one data point.
            *args: further model arguments (a condition).
            step: the 0-based reverse step ``k`` in ``1..n-1`` whose KL is drawn;
                by default uniform (traced).

        Returns:
            ``{"reconstruction": log p(x | z_1), "prior_kl": KL(q(z_n|x) || p(z_n)),
            "step_kl": KL(q(z_{k-1}|z_k,x) || p(z_{k-1}|z_k)), "step": k}``; the
            ELBO is ``reconstruction - prior_kl - (n - 1) * E_k[step_kl]``.
        """
        chain = self.chain(params, x)
        k_step, k_z, k_rec, k_model = jax.random.split(key, 4)
        k = jax.random.randint(k_step, (), 1, self.n) if step is None else jnp.asarray(step)
        eps = jax.random.normal(k_z, jnp.shape(x), jnp.result_type(x))
        A, B, S, c_x, c_z, c_0, v_q = chain.at(k)
        z_k = A * x + B + S * eps
        m_q = c_x * x + c_z * z_k + c_0
        loc, scale = self._step(params, k_model, x, k, z_k, args)
        step_kl = gaussian_kl(m_q, v_q, loc, scale**2)

        z_1 = chain.A[0] * x + chain.B[0] + chain.S[0] * jax.random.normal(k_rec, jnp.shape(x), jnp.result_type(x))
        decoder = self._model_sites(params, k_model, x, jnp.asarray(self.ts)[:1], args, z_1).observed[0][1]
        reconstruction = jnp.sum(decoder.log_prob(x))

        prior = self._model_sites(params, k_model, x, jnp.asarray(self.ts)[-1:], args, None)
        p_loc, p_scale = _executed(prior, 0)
        prior_kl = gaussian_kl(chain.A[-1] * x + chain.B[-1], chain.S[-1] ** 2, p_loc, p_scale**2)
        return {"reconstruction": reconstruction, "prior_kl": prior_kl, "step_kl": step_kl, "step": k}

    def elbo(self, params, key, x, *args) -> jax.Array:
        """An unbiased estimate of the ELBO of one data point (one sampled reverse step)."""
        t = self.terms(params, key, x, *args)
        return t["reconstruction"] - t["prior_kl"] - (self.n - 1) * t["step_kl"]

    def _simple_error(self, params, key, x, *args, parameterization: str) -> jax.Array:
        """Mean squared error of one data point's implied prediction at a uniformly drawn reverse step."""
        chain = self.chain(params, x)
        k_step, k_z, k_model = jax.random.split(key, 3)
        k = jax.random.randint(k_step, (), 1, self.n)
        eps = jax.random.normal(k_z, jnp.shape(x), jnp.result_type(x))
        A, B, S, *_ = chain.at(k)
        z_k = A * x + B + S * eps
        pred = self.predictions(params, k_model, x, k, z_k, *args, chain=chain)[parameterization]
        target = {"eps": eps, "x0": x, "v": A * eps - S * x}[parameterization]
        return jnp.mean((pred - target) ** 2)

    def objective(self, *, name: str = "diffusion_elbo") -> Expectation:
        """The ELBO as an objective: an ``Expectation`` of the mean per-point ELBO of a batch.

        ``F(params, xs, *args)``: ``xs`` is a batch of data points (leading axis) and
        ``args`` are batched too (per-point conditions). Each point's ELBO is estimated
        by ``elbo`` with a key drawn from the objective's own key (``objective_key(name)``).
        Its parameters start from ``DiffusionELBO.init_params`` (its ``init=``).

        Example:
            >>> import jax, jax.numpy as jnp, gendsl, gendsl.distributions as dist
            >>> from gendsl.inference import init_params
            >>> from gendsl.inference.diffusion import diffusion_elbo
            >>> @gendsl.model
            ... def guide(x, ts):
            ...     z = x
            ...     for k in range(len(ts)):
            ...         z = gendsl.sample(f"z{k + 1}", dist.Normal(0.9 * z, 0.3))
            >>> @gendsl.model
            ... def model(x, ts):
            ...     z = gendsl.sample(f"z{len(ts)}", dist.Normal(0.0, 1.0))
            ...     for k in range(len(ts) - 1, 0, -1):
            ...         z = gendsl.sample(f"z{k}", dist.Normal(gendsl.param("a", 0.5) * z, 0.5))
            ...     gendsl.sample("x", dist.Normal(z, 0.3), obs=x)
            >>> objective = diffusion_elbo(model, guide, ts=jnp.arange(1, 6)).objective()
            >>> xs = jnp.linspace(-1.0, 1.0, 64)
            >>> params, _ = init_params(objective, jax.random.key(0), xs)
            >>> value, grads = jax.jit(objective.value_and_grad)(jax.random.key(1), params, xs)
            >>> value.shape, sorted(grads)
            ((), ['a'])
        """
        cache_key = ("elbo", name)
        if cache_key not in self._objectives:

            def fn(params, xs, *args):
                keys = jax.random.split(objective_key(name), jnp.shape(xs)[0])
                return jnp.mean(jax.vmap(lambda kk, x, *a: self.elbo(params, kk, x, *a))(keys, xs, *args))

            self._objectives[cache_key] = self._expectation(fn, name)
        return self._objectives[cache_key]

    def simple_objective(self, *, parameterization: str = "eps", name: str = "diffusion_simple") -> Expectation:
        """The reweighted ("simple") objective: minus the mean squared error of the implied prediction.

        ``F(params, xs, *args) = -mean_i mean ||pred_i - target_i||^2`` at a uniformly
        drawn reverse step per data point. Ho et al.'s ``L_simple`` is
        ``parameterization="eps"``; ``"x0"`` and ``"v"`` (Salimans & Ho 2022) are the
        same objective with the other targets. The steps are the reverse steps
        ``k = 2..n`` of the chain (the decoder step is the model's own and is not part
        of it). The draws come from ``objective_key(name)``; the parameters start from
        ``DiffusionELBO.init_params`` (its ``init=``).

        Example:
            >>> import jax, jax.numpy as jnp, gendsl, gendsl.distributions as dist
            >>> from gendsl.inference.diffusion import diffusion_elbo
            >>> @gendsl.model
            ... def guide(x, ts):
            ...     z = x
            ...     for k in range(len(ts)):
            ...         z = gendsl.sample(f"z{k + 1}", dist.Normal(0.9 * z, 0.3))
            >>> @gendsl.model
            ... def model(x, ts):
            ...     z = gendsl.sample(f"z{len(ts)}", dist.Normal(0.0, 1.0))
            ...     for k in range(len(ts) - 1, 0, -1):
            ...         z = gendsl.sample(f"z{k}", dist.Normal(gendsl.param("a", 0.5) * z, 0.5))
            ...     gendsl.sample("x", dist.Normal(z, 0.3), obs=x)
            >>> objective = diffusion_elbo(model, guide, ts=jnp.arange(1, 6)).simple_objective(parameterization="x0")
            >>> float(objective.estimate(jax.random.key(0), {"a": 0.5}, jnp.zeros((8,)))) <= 0.0
            True
        """
        _check_parameterization(parameterization)
        cache_key = ("simple", parameterization, name)
        if cache_key not in self._objectives:

            def fn(params, xs, *args):
                keys = jax.random.split(objective_key(name), jnp.shape(xs)[0])

                def one(kk, x, *a):
                    return self._simple_error(params, kk, x, *a, parameterization=parameterization)

                return -jnp.mean(jax.vmap(one)(keys, xs, *args))

            self._objectives[cache_key] = self._expectation(fn, name)
        return self._objectives[cache_key]

    def _expectation(self, fn, name: str) -> Expectation:
        fn.__name__ = name
        return expectation(fn, models=(self.model, self.guide), init=self.init_params)

    def init_params(self, key, xs, *args, **kwargs) -> tuple[dict, dict]:
        """Initial parameters of the model (and of the guide, if it declares any) and their constraints.

        The programs are run on the first data point of the batch ``xs`` (and of each
        batched argument), the model on the two-time grid ``ts[:2]`` (its prior, one
        reverse step and its decoder), the guide on the whole grid.

        Raises:
            ValueError: the model and the guide declare a parameter of the same name.

        Example:
            >>> import jax, jax.numpy as jnp, gendsl, gendsl.distributions as dist
            >>> from gendsl.inference.diffusion import diffusion_elbo
            >>> @gendsl.model
            ... def guide(x, ts):
            ...     for k in range(len(ts)):
            ...         x = gendsl.sample(f"z{k + 1}", dist.Normal(0.9 * x, 0.3))
            >>> @gendsl.model
            ... def model(x, ts):
            ...     z = gendsl.sample(f"z{len(ts)}", dist.Normal(0.0, 1.0))
            ...     for k in range(len(ts) - 1, 0, -1):
            ...         z = gendsl.sample(f"z{k}", dist.Normal(0.5 * z, 0.5))
            ...     s = gendsl.param("s", 0.3, constraint=dist.constraints.positive)
            ...     gendsl.sample("x", dist.Normal(z, s), obs=x)
            >>> params, constraints = diffusion_elbo(model, guide, ts=jnp.arange(1, 4)).init_params(
            ...     jax.random.key(0), jnp.zeros(16))
            >>> round(float(params["s"]), 4), constraints["s"] is dist.constraints.positive
            (0.3, True)
        """
        x = jax.tree_util.tree_map(lambda a: a[0], xs)
        first = [jax.tree_util.tree_map(lambda a: a[0], a) for a in args]
        params, constraints = self.model.init_with_constraints(jax.random.fold_in(key, 0), x, self.ts[:2], *first)
        if self._fixed_chain(x) is None:  # the guide declares parameters (a learned schedule)
            guide_params, guide_constraints = self.guide.init_with_constraints(jax.random.fold_in(key, 1), x, self.ts)
            clash = sorted(set(params) & set(guide_params))
            if clash:
                raise ValueError(
                    f"diffusion_elbo: parameters {clash} are declared by both the model and the guide; give the "
                    "guide's parameters (its schedule) other names"
                )
            params, constraints = {**params, **guide_params}, {**constraints, **guide_constraints}
        return dict(params), dict(constraints)

    def weights(self, params, x_like, *, parameterization: str = "x0", model_scale=None) -> jax.Array:
        """Derived per-step weights ``w_k`` with ``KL_k = w_k ||target - prediction||^2 + const``, ``k = 2..n``.

        The mean part of each step's KL is ``(m_q - loc)^2 / (2 sigma_k^2)``; with
        the model's mean written through a prediction, ``m_q - loc = c_x (x - x0_hat)``,
        so the x0 weight is ``c_x^2 / (2 sigma_k^2)``, and the eps and v weights follow
        from ``x - x0_hat = -(S_k / A_k)(eps - eps_hat) = -S_k / (A_k^2 + S_k^2) (v - v_hat)``
        (with ``B_k = 0``).

        Args:
            params: the parameters.
            x_like: one data point (its shape and dtype).
            parameterization: ``"x0"``, ``"eps"`` or ``"v"``.
            model_scale: the model's reverse-step scales ``sigma_k`` (array over
                ``k = 2..n``); by default read from the model's steps (evaluated at
                ``z_k = 0``: the scale must not depend on the state).

        Returns:
            An array over steps ``k = 2..n`` (with the data's event shape when the
            schedule is elementwise).
        """
        _check_parameterization(parameterization)
        chain = self.chain(params, x_like)
        ks = jnp.arange(1, self.n)
        if model_scale is None:
            zero = jnp.zeros(jnp.shape(x_like), jnp.result_type(x_like))
            model_scale = jax.vmap(lambda k: self._step(params, jax.random.key(0), zero, k, zero, ())[1])(ks)
        model_scale = jnp.asarray(model_scale)

        def per_step(c):  # scalar-per-step coefficients broadcast against event-shaped scales
            return jnp.reshape(c, c.shape + (1,) * (model_scale.ndim - c.ndim))

        c_x = per_step(jax.vmap(lambda k: chain.posterior_coefficients(k)[0])(ks))
        w = c_x**2 / (2.0 * model_scale**2)
        A, S = per_step(chain.A[1:]), per_step(chain.S[1:])
        if parameterization == "eps":
            w = w * (S / A) ** 2
        elif parameterization == "v":
            w = w * (S / (A**2 + S**2)) ** 2
        return w

    def check(self, params, x) -> None:
        """Check the whole pair on one data point: the guide's form and the model's sites match the guide's.

        Raises:
            DiffusionStructureError: naming the offending site.
        """
        chain = self.chain(params, x)
        readers = []

        def run(x, ts):  # traced, not run: only the sites' addresses, order and shapes are read
            readers.append(_read(self.model, params, jax.random.key(0), x, ts, (), "model"))

        jax.eval_shape(run, x, self.ts)
        reader = readers[0]
        guide_states = list(chain.names)
        states = [label for site in reader.latents for label in _executed_labels(site)]
        if sorted(states) != sorted(guide_states):
            raise DiffusionStructureError(
                f"the model's latent sites {_summary(reader)} are not the guide's {_summary_of(guide_states)}; both "
                "programs must use the same addresses for the states (and loops of the same length)"
            )
        if states != guide_states[::-1]:
            raise DiffusionStructureError(
                f"the model visits its states in the order {_summary(reader)}; a reverse chain visits the guide's "
                "states in reverse order (z_n first: a loop of reverse steps is a gendsl.scan with reverse=True)"
            )
        if len(reader.observed) != 1:
            raise DiffusionStructureError(
                f"the model observes {[o[0] for o in reader.observed] or 'no sites'}; expected exactly one"
            )


def _check_parameterization(p: str) -> None:
    if p not in PARAMETERIZATIONS:
        raise ValueError(f"parameterization must be one of {PARAMETERIZATIONS}, got {p!r}")


def diffusion_elbo(model, guide, ts) -> DiffusionELBO:
    """Derive the diffusion ELBO and its reweighted objectives from a reverse-chain model and a forward-chain guide.

    See the module docstring for the program convention. The result has the
    objectives ``objective()`` (the ELBO, mean per data point) and
    ``simple_objective(parameterization=...)`` (eps / x0 / v), both ``Expectation``s
    to maximize; per data point ``elbo`` (unbiased, one sampled step), ``terms`` and
    ``predictions``; ``weights`` (the derived per-step weights) and ``chain`` (the
    recognized forward chain).

    Args:
        model: ``model(x, ts, *args)``, the reverse chain ending in an observed decoder site.
        guide: ``guide(x, ts)``, the forward noising chain.
        ts: the increasing time grid (one latent state per time).

    Example:
        >>> import jax, jax.numpy as jnp, gendsl, gendsl.distributions as dist
        >>> from gendsl.inference.diffusion import diffusion_elbo
        >>> @gendsl.model
        ... def guide(x, ts):
        ...     z = x
        ...     for k in range(len(ts)):
        ...         z = gendsl.sample(f"z{k + 1}", dist.Normal(0.9 * z, 0.3))
        >>> @gendsl.model
        ... def model(x, ts):
        ...     z = gendsl.sample(f"z{len(ts)}", dist.Normal(0.0, 1.0))
        ...     for k in range(len(ts) - 1, 0, -1):
        ...         z = gendsl.sample(f"z{k}", dist.Normal(0.5 * z, 0.5))
        ...     gendsl.sample("x", dist.Normal(z, 0.3), obs=x)
        >>> d = diffusion_elbo(model, guide, ts=jnp.arange(1, 6))
        >>> d.chain({}, 0.0).A.round(4)  # collapsed q(z_k | x) = N(0.9^k x, S_k^2)
        Array([0.9   , 0.81  , 0.729 , 0.6561, 0.5905], dtype=float32)
        >>> d.elbo({}, jax.random.key(0), 1.0).shape
        ()

        The same pair in scan form: the guide's states at ``t_1 .. t_{n-1}`` in one
        ``gendsl.scan`` (per-step schedule values as its inputs) and the last one as
        a site of its own; the model's prior, then its reverse steps in a
        ``gendsl.scan(..., reverse=True)``. Recognition traces the loop body once:

        >>> @gendsl.model
        ... def scan_guide(x, ts):
        ...     a = jnp.full(jnp.shape(ts), 0.9)             # per-step coefficients: any function of ts
        ...     step = lambda z, a_k: (gendsl.sample("z", dist.Normal(a_k * z, 0.3)), None)
        ...     z, _ = gendsl.scan("chain", step, x, a[:-1])
        ...     gendsl.sample("zT", dist.Normal(a[-1] * z, 0.3))
        >>> @gendsl.model
        ... def scan_model(x, ts):
        ...     z = gendsl.sample("zT", dist.Normal(0.0, 1.0))
        ...     step = lambda z, t: (gendsl.sample("z", dist.Normal(0.5 * z, 0.5)), None)
        ...     z, _ = gendsl.scan("chain", step, z, ts[1:], reverse=True)
        ...     gendsl.sample("x", dist.Normal(z, 0.3), obs=x)
        >>> chain = diffusion_elbo(scan_model, scan_guide, ts=jnp.arange(1, 1001)).chain({}, 0.0)
        >>> chain.names[:2], chain.names[-1], chain.A.shape
        (('chain/z[0]', 'chain/z[1]'), 'zT', (1000,))
    """
    return DiffusionELBO(model, guide, ts)
