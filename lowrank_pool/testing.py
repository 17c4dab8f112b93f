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
from ._errors import ArgumentError

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
    check_namespace: bool = True,
    check_device: bool = True,
    check_dtype: bool = True,
    check_shape: bool = True,
    label: str = "",
) -> None:
    """Assert that ``actual`` is of the expected library, device, dtype and shape, and within
    ``terms · eps(dtype) · scale`` of ``desired`` element-wise.

    The library, device and dtype ``actual`` must have are ``like``'s when it is given, else
    ``desired``'s: a float64 numpy oracle compared with a float32 torch result needs
    ``like=`` (e.g. the input the result should follow), which says what is expected instead of
    leaving it unchecked. ``terms=0`` asks for equality.

    Parameters
    ----------
    actual : array of any library
    desired : array (any library; compared as float64 numpy)
    terms : int
        How many rounding steps can accumulate (length of the longest chain of sums).
    scale : array, float or "max", optional
        Σ|terms| of each entry (e.g. the same computation on absolute values); the
        magnitude of ``desired`` when omitted; ``"max"``: the largest magnitude of
        ``desired`` for every entry (a normwise bound, for results such as derivatives
        whose terms are not at hand).
    dtype : dtype, optional
        Precision of the computation; ``actual.dtype`` when omitted.
    like : array, optional
        The array whose library, device and dtype ``actual`` must have; ``desired`` when
        omitted. A Python scalar or list has none of them: only shape and values are checked
        against it.
    check_namespace, check_device, check_dtype, check_shape : bool, default True
        Turn one check off (say why at the call, e.g. a result that is documented to be
        float64 for any input).
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
    >>> assert_close(np.ones(2, np.float32), np.ones(2))  # float64 expected, float32 given
    Traceback (most recent call last):
    ...
    AssertionError: dtype: expected float64, got float32
    >>> assert_close(np.ones(2, np.float32), np.ones(2), like=np.zeros(1, np.float32))
    """
    checks = (check_namespace, check_device, check_dtype, check_shape)
    try:
        _assert_close(actual, desired, terms=terms, scale=scale, dtype=dtype, like=like, checks=checks)
    except AssertionError as err:
        if not label:
            raise
        raise AssertionError(f"{label}: {err}") from None


def _assert_close(
    actual: Any, desired: Any, *, terms: int, scale: Any, dtype: Any, like: Any, checks: tuple[bool, ...]
) -> None:
    check_namespace, check_device, check_dtype, check_shape = checks
    ref = desired if like is None else like
    # raise, not assert: the checks must hold under python -O too
    if _is_array(ref):
        if check_namespace and _library(actual) != _library(ref):
            raise AssertionError(f"library: expected {_library(ref)}, got {_library(actual)}")
        if check_device and aac.device(actual) != aac.device(ref):
            raise AssertionError(f"device: expected {aac.device(ref)}, got {aac.device(actual)}")
        if check_dtype and _dtype_name(actual) != _dtype_name(ref):
            raise AssertionError(f"dtype: expected {_dtype_name(ref)}, got {_dtype_name(actual)}")
    a_shape, d_shape = _shape(actual), _shape(desired)
    if check_shape and a_shape != d_shape:
        raise AssertionError(f"shape: expected {d_shape}, got {a_shape}")
    a, d = to_numpy(actual), to_numpy(desired)
    if isinstance(scale, str):
        if scale != "max":
            raise ArgumentError(f'scale: expected an array, a float or "max", got {scale!r}')
        scale = float(np.abs(d).max(initial=0.0))
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


def _is_array(x: Any) -> bool:
    """An array of some library (numpy scalars such as ``np.float32(1)`` count: they carry a dtype)."""
    return hasattr(x, "dtype") and hasattr(x, "shape")


def _library(x: Any) -> str:
    """The array library's name: numpy scalars and arrays are one library, torch another, and so on."""
    if not _is_array(x):
        return type(x).__name__
    return type(x).__module__.split(".")[0]  # numpy (arrays and scalars), torch, array_api_strict, cupy, jaxlib


def _dtype_name(x: Any) -> str:
    return str(x.dtype).rsplit(".", 1)[-1]


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
