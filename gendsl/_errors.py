"""Exceptions raised by gendsl.

Every error names the site (address) it concerns and says how to fix it. They
subclass the closest built-in exception so that generic ``except ValueError``
code keeps working.
"""

from __future__ import annotations

__all__ = [
    "GendslError",
    "AddressError",
    "MissingChoiceError",
    "NoKeyError",
    "ObservationError",
]


class GendslError(Exception):
    """Base class of all gendsl errors."""


class AddressError(GendslError, KeyError):
    """A site address is duplicated, unknown or malformed."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain.
        return str(self.args[0]) if self.args else ""


class MissingChoiceError(GendslError, KeyError):
    """A latent site has no value where one is required (e.g. in ``assess``)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class NoKeyError(GendslError, RuntimeError):
    """A sample site needs randomness but no PRNG key is in scope."""


class ObservationError(GendslError, ValueError):
    """An observed value has the wrong shape or is not finite."""
