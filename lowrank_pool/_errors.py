"""The package's error types: one base class, each also a standard ValueError or TypeError.

``except lowrank_pool.LowRankPoolError`` catches every bad-input error the package
raises; code written for the standard types (``except ValueError``) keeps working.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ArgumentError",
    "ArgumentTypeError",
    "BackendError",
    "DTypeError",
    "LowRankPoolError",
    "ShapeError",
    "shape_of",
]


class LowRankPoolError(Exception):
    """Base class of every error raised by lowrank_pool on bad input."""


class ShapeError(LowRankPoolError, ValueError):
    """An array has the wrong number of dimensions or a wrong/zero size."""


class DTypeError(LowRankPoolError, TypeError):
    """An array has a dtype the operation cannot use (integer, bool, complex)."""


class BackendError(LowRankPoolError, TypeError):
    """Arrays of different libraries or devices were mixed, or a non-array was passed."""


class ArgumentError(LowRankPoolError, ValueError):
    """An option has a value outside its domain (an unknown choice, a rank too large, NaN input)."""


class ArgumentTypeError(LowRankPoolError, TypeError):
    """An option or object has the wrong type (a float rank, a foreign factor form, a non-tensor)."""


def shape_of(x: Any) -> tuple[int, ...]:
    """The shape of ``x`` as a tuple of Python ints."""
    return tuple(int(s) for s in x.shape)
