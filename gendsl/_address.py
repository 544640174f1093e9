"""Addresses and per-address randomness.

A site's random key is ``fold_in(key, hash(address))``, not the next key of a
sequential split. Two consequences we rely on: re-running a program with one
site substituted reproduces every other site exactly (needed to re-execute a
program as a continuation), and adding a site does not change the draws of the
others.
"""

from __future__ import annotations

import zlib

import jax
import jax.numpy as jnp

SEP = "/"


def join(prefix: str, name: str) -> str:
    """The address of site ``name`` inside the scope ``prefix``."""
    return f"{prefix}{SEP}{name}" if prefix else name


def address_hash(address: str) -> int:
    """A stable 31-bit hash of an address (stable across processes, unlike hash())."""
    return zlib.crc32(address.encode("utf-8")) & 0x7FFFFFFF


def as_key(key) -> jax.Array:
    """Accept a typed key, a raw ``uint32[2]`` key, or an int seed."""
    if isinstance(key, int):
        return jax.random.key(key)
    if isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key
    key = jnp.asarray(key)
    if key.dtype == jnp.uint32 and key.shape[-1:] == (2,):
        return key
    raise TypeError(
        f"expected a PRNG key (jax.random.key(seed)) or an int seed, got {type(key).__name__} "
        f"with dtype {getattr(key, 'dtype', None)} and shape {getattr(key, 'shape', None)}"
    )


def site_key(key: jax.Array, address: str) -> jax.Array:
    """The key of the site at ``address`` under the base ``key``."""
    return jax.random.fold_in(key, address_hash(address))
