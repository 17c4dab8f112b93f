"""Test helpers shipped with the package: namespace-aware comparison and data builders.

Tolerances come from the dtype: a sum of m products computed in floating point is
off by at most about m·u·Σ|terms| (u the unit round-off), so :func:`assert_close`
takes the number of chained terms and the magnitude of the absolute sum instead of a
hand-tuned rtol.
"""

from __future__ import annotations

from typing import Any

import array_api_compat as aac
import numpy as np

from ._checks import shape_of
from ._xp import host_copy

__all__ = ["assert_close", "eps_of", "random_features", "to_numpy"]


def to_numpy(x: Any) -> np.ndarray:
    """Copy any array (numpy, torch on any device, array_api_strict, ...) to numpy float64."""
    return np.asarray(host_copy(x), dtype=np.float64)


def eps_of(dtype: Any) -> float:
    """Machine epsilon (2u) of a numpy, torch or array-API floating dtype."""
    name = str(dtype).rsplit(".", 1)[-1]
    return {"float16": 2.0**-10, "bfloat16": 2.0**-7, "float32": 2.0**-23, "float64": 2.0**-52}[name]


def assert_close(
    actual: Any,
    desired: Any,
    *,
    terms: int = 1,
    scale: Any = None,
    dtype: Any = None,
    like: Any = None,
    label: str = "",
) -> None:
    """Assert ``|actual - desired| <= terms · eps(dtype) · scale`` element-wise.

    Parameters
    ----------
    actual : array of any library
    desired : array (any library; compared as float64 numpy)
    terms : int
        How many rounding steps can accumulate (length of the longest chain of sums).
    scale : array or float, optional
        Σ|terms| of each entry (e.g. the same computation on absolute values); the
        magnitude of ``desired`` when omitted.
    dtype : dtype, optional
        Precision of the computation; ``actual.dtype`` when omitted.
    like : array, optional
        When given, ``actual`` must be of the same library, device and dtype as ``like``
        and have ``desired``'s shape: that is checked before the values.
    label : str
        Prefix of the failure message (e.g. which case of a loop failed).
    """
    try:
        _assert_close(actual, desired, terms=terms, scale=scale, dtype=dtype, like=like)
    except AssertionError as err:
        if not label:
            raise
        raise AssertionError(f"{label}: {err}") from None


def _assert_close(actual: Any, desired: Any, *, terms: int, scale: Any, dtype: Any, like: Any) -> None:
    if like is not None:
        assert type(actual) is type(like), f"library: expected {type(like)}, got {type(actual)}"
        assert aac.device(actual) == aac.device(like), f"device: {aac.device(actual)} != {aac.device(like)}"
        assert actual.dtype == like.dtype, f"dtype: expected {like.dtype}, got {actual.dtype}"
    assert shape_of(actual) == shape_of(desired), f"shape: expected {shape_of(desired)}, got {shape_of(actual)}"
    a, d = to_numpy(actual), to_numpy(desired)
    s = np.abs(d) if scale is None else np.broadcast_to(to_numpy(scale) if not np.isscalar(scale) else scale, d.shape)
    tol = terms * eps_of(dtype if dtype is not None else actual.dtype) * s + np.finfo(np.float64).tiny
    err = np.abs(a - d)
    bad = ~(err <= tol)
    if bad.any():
        i = np.unravel_index(np.argmax(np.where(bad, err / tol, 0)), d.shape) if d.ndim else ()
        raise AssertionError(
            f"{int(bad.sum())} of {d.size} entries differ beyond {terms}·eps·scale; worst at {i}: "
            f"actual {a[i]!r}, desired {d[i]!r}, tolerance {tol[i]!r}"
        )


def random_features(
    shape: tuple[int, ...], *, seed: int = 0, dtype: Any = np.float32, positive: bool = False
) -> np.ndarray:
    """A reproducible random feature map (standard normal, or |normal| after a ReLU)."""
    x = np.random.default_rng(seed).standard_normal(shape)
    return (np.abs(x) if positive else x).astype(dtype)
