"""Address-based seeding and site annotation handlers.

Both are NumPyro ``Messenger`` subclasses, so they sit on the same handler stack
as ``numpyro.handlers`` and compose with them in either order.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping
from typing import Any

from numpyro.primitives import Messenger

from gendsl._address import as_key, site_key
from gendsl._messages import ADDRESS, INFER_STRATEGY

__all__ = ["seed", "shared_subsamples", "strategy"]

_KEYED_TYPES = ("sample", "prng_key", "plate", "control_flow")


class seed(Messenger):
    """Give every site that needs randomness a key derived from its address.

    Unlike ``numpyro.handlers.seed``, which hands out keys by splitting in program
    order, the key of site ``a`` is ``fold_in(key, hash(a))``. Re-running the
    program with other sites changed or substituted therefore reproduces the
    draw at ``a`` exactly.

    Args:
        fn: the function to seed (optional; also usable as a context manager).
        key: a PRNG key (``jax.random.key(0)``) or an int seed.

    Example:
        >>> import jax, gendsl, gendsl.distributions as dist
        >>> def f():
        ...     return gendsl.sample("z", dist.Normal(0.0, 1.0))
        >>> a = gendsl.handlers.seed(f, key=jax.random.key(0))()
        >>> b = gendsl.handlers.seed(f, key=jax.random.key(0))()
        >>> bool(a == b)
        True
    """

    def __init__(self, fn: Callable | None = None, key: Any = None) -> None:
        if key is None:
            raise TypeError("seed() needs key=jax.random.key(...) or an int seed")
        self.key = as_key(key)
        self._unnamed = 0
        super().__init__(fn)

    def __enter__(self):
        self._unnamed = 0  # restart so each call of a seeded function is reproducible
        return super().__enter__()

    def process_message(self, msg) -> None:
        if msg["type"] not in _KEYED_TYPES:
            return
        if msg["kwargs"].get("rng_key") is not None or msg.get("value") is not None:
            return
        address = msg.get(ADDRESS)
        if address is None:
            if msg["type"] in ("prng_key", "control_flow"):
                # numpyro.prng_key() carries no name: fall back to program order.
                address = f"#{msg['type']}{self._unnamed}"
                self._unnamed += 1
            elif msg["type"] == "plate":
                address = f"#plate/{msg['name']}"
            else:
                address = msg["name"]
        msg["kwargs"]["rng_key"] = site_key(self.key, address)


class shared_subsamples(Messenger):
    """Every subsampled plate named ``n`` draws its indices with the key of address ``#plate/n``.

    The estimators enter it innermost around each program an objective runs (the guide's draw,
    the model's density), all with the objective's one key, so that a guide and a model (and
    every particle) that open ``plate("N", size, subsample_size=B)`` see the same ``B``
    indices, as NumPyro's model and guide do through the trace. Plates that are given their
    indices (``choices["N"]``) keep them.

    Args:
        key: the key of the objective's execution.
    """

    def __init__(self, key: Any) -> None:
        self.key = as_key(key)
        super().__init__()

    def process_message(self, msg) -> None:
        if msg["type"] == "plate" and msg.get("value") is None and msg["kwargs"].get("rng_key") is None:
            msg["kwargs"]["rng_key"] = site_key(self.key, f"#plate/{msg['name']}")


class strategy(Messenger):
    """Attach a gradient strategy (or any metadata) to sites, by address pattern.

    The core only stores the value in ``msg["infer"]["strategy"]``;
    ``gendsl.inference`` gives it meaning. A handler applied from outside a model
    overrides the ``strategy=`` written in the model's ``sample`` call, so a user
    can switch estimators without editing the model. Among nested handlers the
    outermost wins, as with NumPyro's ``substitute``.

    Args:
        fn: the model or function to annotate.
        rules: a mapping from address patterns (``fnmatch`` syntax: ``"z"``,
            ``"chain/*"``) to strategies, or a callable ``address -> strategy | None``.
            An exact address match takes precedence over patterns; otherwise the
            first matching pattern in insertion order applies. The key ``None``
            names every latent site whose distribution has no reparameterized
            sampler (the discrete ones), when no pattern matched.

    Example:
        >>> import jax, gendsl, gendsl.distributions as dist
        >>> @gendsl.model
        ... def m():
        ...     gendsl.sample("z", dist.Bernoulli(0.3))
        >>> import numpyro
        >>> annotated = gendsl.handlers.strategy(m, rules={"z": "enum"})
        >>> tr = numpyro.handlers.trace(gendsl.handlers.seed(annotated, key=0)).get_trace()
        >>> tr["z"]["infer"]["strategy"]
        'enum'
    """

    def __init__(
        self,
        fn: Callable | None = None,
        rules: Mapping[str, Any] | Callable[[str], Any] | None = None,
    ) -> None:
        if rules is None:
            raise TypeError("strategy() needs rules={pattern: strategy} or a callable")
        self.rules = rules
        super().__init__(fn)

    def lookup(self, address: str, fn: Any = None) -> Any:
        """The strategy this handler assigns to ``address`` (a site with distribution ``fn``), or None."""
        if callable(self.rules):
            return self.rules(address)
        if address in self.rules:
            return self.rules[address]
        for pattern, value in self.rules.items():
            if pattern is not None and fnmatch.fnmatchcase(address, pattern):
                return value
        if None in self.rules and fn is not None and not fn.has_rsample:
            return self.rules[None]
        return None

    def process_message(self, msg) -> None:
        if msg["type"] != "sample" or msg["is_observed"]:
            return
        value = self.lookup(msg["name"], msg["fn"])
        if value is not None:
            msg["infer"][INFER_STRATEGY] = value

    def loop_site(self, probe) -> None:
        """Annotate a site of a ``gendsl.scan`` body by its full address (``"loop/x"``)."""
        self.process_message(probe)
