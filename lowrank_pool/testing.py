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

from ._backend import host_copy
from ._checks import shape_of

__all__ = ["assert_close", "eps_of", "random_features", "to_numpy"]


def to_numpy(x: Any) -> np.ndarray:
    """Copy any array (numpy, torch on any device, array_api_strict, ...) to numpy float64.

    Parameters
    ----------
    x : array of any library
        Copied (torch: detached, moved to the host).

    Examples
    --------
    >>> import torch
    >>> from lowrank_pool.testing import to_numpy
    >>> to_numpy(torch.ones(2, dtype=torch.bfloat16))
    array([1., 1.])
    """
    return np.asarray(host_copy(x), dtype=np.float64)


def eps_of(dtype: Any) -> float:
    """Machine epsilon (2u) of a numpy, torch or array-API floating dtype.

    Parameters
    ----------
    dtype : dtype of any library
        float16, bfloat16, float32 or float64.

    Examples
    --------
    >>> import numpy as np
    >>> from lowrank_pool.testing import eps_of
    >>> eps_of(np.float32) == eps_of("torch.float32") == 2.0**-23
    True
    """
    if isinstance(dtype, type) and issubclass(dtype, np.generic):  # np.float32 the type, not np.dtype
        dtype = np.dtype(dtype)
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

    Examples
    --------
    >>> import numpy as np
    >>> from lowrank_pool.testing import assert_close
    >>> x = np.float32(1) + np.float32(1e-7)
    >>> assert_close(x, 1.0, terms=1)             # within one float32 rounding of 1
    >>> assert_close(np.float32(1.001), 1.0, terms=4)
    Traceback (most recent call last):
    ...
    AssertionError: 1 of 1 entries differ beyond 4·eps·scale; ...
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
    a_shape, d_shape = _shape(actual), _shape(desired)
    assert a_shape == d_shape, f"shape: expected {d_shape}, got {a_shape}"
    a, d = to_numpy(actual), to_numpy(desired)
    s = np.abs(d) if scale is None else np.broadcast_to(to_numpy(scale) if not np.isscalar(scale) else scale, d.shape)
    if dtype is None:
        dtype = actual.dtype if hasattr(actual, "dtype") else np.float64
    tol = terms * eps_of(dtype) * s + np.finfo(np.float64).tiny
    err = np.abs(a - d)
    bad = ~(err <= tol)
    if bad.any():
        i = np.unravel_index(np.argmax(np.where(bad, err / tol, 0)), d.shape) if d.ndim else ()
        raise AssertionError(
            f"{int(bad.sum())} of {d.size} entries differ beyond {terms}·eps·scale; worst at {i}: "
            f"actual {a[i]!r}, desired {d[i]!r}, tolerance {tol[i]!r}"
        )


def _shape(x: Any) -> tuple[int, ...]:
    return shape_of(x) if hasattr(x, "shape") else np.shape(x)  # Python scalars and lists too


def random_features(
    shape: tuple[int, ...], *, seed: int = 0, dtype: Any = np.float32, positive: bool = False
) -> np.ndarray:
    """A reproducible random feature map (standard normal, or its absolute value with ``positive=True``).

    Parameters
    ----------
    shape : tuple of int
        E.g. (B, n, f) or (B, f, H, W).
    seed : int, default 0
        numpy generator seed.
    dtype : numpy dtype, default float32
        Of the result.
    positive : bool, default False
        Return ``abs`` of the draws (non-negative, like post-ReLU features).

    Examples
    --------
    >>> from lowrank_pool.testing import random_features
    >>> X = random_features((2, 7, 3), positive=True)
    >>> X.shape, X.dtype, bool((X >= 0).all())
    ((2, 7, 3), dtype('float32'), True)
    """
    x = np.random.default_rng(seed).standard_normal(shape)
    return (np.abs(x) if positive else x).astype(dtype)
