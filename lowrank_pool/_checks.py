"""Errors and up-front validation shared by every public function.

Every message names the argument, what was expected and what was received, so a
user sees ``A: expected shape (f, K) with f = 512 (the channels of X), got (256, 10)``
instead of a BLAS error three frames deep.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "BackendError",
    "DTypeError",
    "LowRankPoolError",
    "ShapeError",
    "check_choice",
    "check_finite",
    "check_positive_int",
    "check_shape",
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


def shape_of(x: Any) -> tuple[int, ...]:
    """The shape of ``x`` as a tuple of Python ints."""
    return tuple(int(s) for s in x.shape)


def check_positive_int(value: Any, name: str) -> int:
    """Return ``value`` as an int, or raise if it is not a positive integer."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name}: expected a positive int, got {type(value).__name__} {value!r}")
    if value <= 0:
        raise ValueError(f"{name}: expected a positive int, got {value}")
    return int(value)


def check_choice(value: Any, name: str, choices: Sequence[Any]) -> Any:
    """Raise unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name}: expected one of {list(choices)!r}, got {value!r}")
    return value


def check_finite(xp: Any, x: Any, name: str) -> None:
    """Raise if ``x`` contains NaN or infinity (forces a device sync on GPUs)."""
    if not bool(xp.all(xp.isfinite(x))):
        bad = int(xp.sum(xp.astype(~xp.isfinite(x), xp.int64)))
        raise ValueError(f"{name}: expected finite values, got {bad} NaN/inf entries of {math.prod(shape_of(x))}")


def check_shape(name: str, x: Any, dims: Sequence[str], **known: int) -> dict[str, int]:
    """Match the shape of ``x`` against named dimensions and return their sizes.

    ``check_shape("A", A, ("f", "K"), f=512)`` checks that A is 2-D with 512 rows and
    at least one column, and returns ``{"f": 512, "K": A.shape[1]}``. A size that is
    already known must match; every size must be positive.
    """
    shape = shape_of(x)
    pattern = "(" + ", ".join(dims) + (",)" if len(dims) == 1 else ")")
    fixed = ", ".join(f"{d} = {known[d]}" for d in dict.fromkeys(dims) if d in known)
    expected = pattern + (f" with {fixed}" if fixed else "")
    if len(shape) != len(dims):
        plural = "s" if len(dims) != 1 else ""
        raise ShapeError(f"{name}: expected {len(dims)} dimension{plural} {expected}, got shape {shape}")
    sizes = dict(known)
    for d, s in zip(dims, shape, strict=True):
        if d in sizes and sizes[d] != s:
            raise ShapeError(f"{name}: expected shape {expected}, got {shape} ({d} = {s} does not match {sizes[d]})")
        if s <= 0:
            raise ShapeError(f"{name}: expected shape {expected} with every size positive, got {shape}")
        sizes[d] = s
    return sizes
