"""Can genjax 0.10.3 express Attend-Infer-Repeat with REINFORCE, ENUM and MVD? The checks behind the answer.

Runs in ``/work/venvs/genjax``. AIR's guide makes up to three sequential steps, each with a discrete
``z_pres`` (REINFORCE / ENUM / MVD) and continuous ``z_where``, ``z_what`` (reparameterized), all inside
one ADEV expectation; IWAE(2) variants need two particles of that guide. Three facts about genjax
0.10.3 decide it, each checked here on a two-site program:

0. ``flip_mvd`` does not run at all: its ``jvp_estimate`` calls the dual continuation with three
   arguments, the interpreter's continuation takes two (TypeError), so MVD is out;
1. the reparameterized (tail-call) primitives ``normal_reparam`` / ``mv_normal_diag_reparam`` of one
   expectation all receive the interpreter's key: two ``normal_reparam`` sites draw the same standard
   normal, so AIR's per-step ``z_where`` / ``z_what`` draws would be copies of each other (the discrete
   ``flip_reinforce`` / ``flip_enum`` sites are independent, checked too). The workaround used for the
   noisy cone, genjax's TFP ``normal`` differentiated through its sampler, avoids it;
2. ADEV's sample primitive has no batching rule (``batch_primitive`` raises ``NotImplementedError``), so
   ``vi.IWELBO`` / ``ImportanceK``, which ``vmap`` the guide over particles, fail with an ADEV guide;
3. the stock ``marginal()`` guide reports log density 0 (see ``vae_step.py``).

    /work/venvs/genjax/bin/python benchmarks/genjax_peer/air_feasibility.py
"""

from __future__ import annotations

import genjax
import jax
import jax.numpy as jnp
import numpy as np
from genjax import adev

N = 2000


def two_flips(prim):
    """The fraction of ``N`` keys where two ``p = 0.5`` draws of ``prim`` in one expectation agree."""

    def value(key):
        @adev.expectation
        def both(p):
            a = prim(p)
            b = prim(p)
            return jnp.where(a == b, 1.0, 0.0)

        duals = adev.Dual.dual_tree((jnp.asarray(0.5),), (jnp.asarray(0.0),))
        return adev.Dual.tree_primal(both.jvp_estimate(key, duals))

    vals = jax.jit(lambda ks: jax.lax.map(value, ks))(jax.random.split(jax.random.key(0), N))
    return float(np.mean(np.asarray(vals)))


def two_normals():
    """Largest ``|ε₁ - ε₂|`` over ``N`` keys of two ``normal_reparam(0, 1)`` draws in one expectation."""

    def value(key):
        @adev.expectation
        def diff(m):
            return jnp.abs(adev.normal_reparam(m, 1.0) - adev.normal_reparam(m, 1.0))

        duals = adev.Dual.dual_tree((jnp.asarray(0.0),), (jnp.asarray(0.0),))
        return adev.Dual.tree_primal(diff.jvp_estimate(key, duals))

    vals = jax.jit(lambda ks: jax.lax.map(value, ks))(jax.random.split(jax.random.key(1), N))
    return float(np.max(np.asarray(vals)))


def vmapped_particles():
    """``jax.vmap`` of an ADEV primitive inside an expectation (what ImportanceK does): the error, if any."""

    @adev.expectation
    def particles(p):
        # per-particle keys, as ImportanceK passes them to the guide's ADEV distributions
        keys = jax.random.split(jax.random.key(3), 2)
        draw = jax.vmap(lambda k: adev.sample_primitive(adev.flip_reinforce, p, key=k))(keys)
        return jnp.mean(draw.astype(jnp.float32))

    try:
        duals = adev.Dual.dual_tree((jnp.asarray(0.5),), (jnp.asarray(0.0),))
        particles.jvp_estimate(jax.random.key(0), duals)
    except NotImplementedError as e:
        return f"NotImplementedError {e}".strip()
    return "ran"


def main():
    print(f"genjax {genjax.__version__}, jax {jax.__version__}; {N} keys per check\n")
    for name in ("flip_reinforce", "flip_enum", "flip_mvd"):
        try:
            frac = two_flips(getattr(adev, name))
        except TypeError as e:  # flip_mvd: calls its continuation with one argument too many
            print(f"- `{name}` in an expectation fails: TypeError: {e}")
            continue
        what = "enumerated: weighted mean" if name == "flip_enum" else "independent: 0.5"
        print(f"- two `{name}(0.5)` sites in one expectation agree in {frac:.3f} of the draws ({what})")
    print(f"- two `normal_reparam(0, 1)` sites: largest |ε₁ - ε₂| = {two_normals():.2e} (independent: ~4)")
    print(f"- `jax.vmap` of `flip_reinforce` over 2 particles inside an expectation: {vmapped_particles()}")


if __name__ == "__main__":
    main()
