"""The array operations the pooling math is written in, each in the fastest form of its library.

GEMM forms (which operand on the left, which view), scatter-add, the FFT and eigensolver choices, and
σ over positions. Plain array-API code with a library-specific branch where one was measured faster
(docs/performance.md, "The Python core"); nothing here validates or reaches a compiled kernel.
"""

from __future__ import annotations

import sys
from typing import Any

import array_api_compat as aac
import numpy as np

from ._backend import Array, Namespace, device_of, is_numpy, is_numpy_array, is_torch
from ._errors import shape_of
from ._layout import Features

__all__ = [
    "activate",
    "channels_first_product",
    "fft_of",
    "gram_generic",
    "project",
    "scatter_sum",
    "top_eigh",
    "weighted_sum",
]


def channels_first_product(xp: Namespace, mt: Array, x: Array) -> Array:
    """Mᵀ X_b (B, k, n) of every channels-first sample X_b (f, n), from Mᵀ (k, f), X read in place.

    Rule: with torch and k <= 2n, Mᵀ is broadcast to (B, k, f) so that the batched product reads X in place
    and writes ∂X in X's layout (torch.matmul would fold the product into one GEMM on a (B·n, f) copy of X
    whenever M requires grad); beyond 2n the fold wins. Figures: docs/performance.md, "The Python core". ``xp`` may be
    ``torch`` itself (the autograd Functions' hot path).
    """
    b, f, n = shape_of(x)
    k = shape_of(mt)[0]
    if is_torch(xp) and k <= 2 * n:
        mt = xp.broadcast_to(mt, (b, k, f))
    return xp.matmul(mt, x)


def project(xp: Namespace, feats: Features, m: Array) -> Array:
    """Z = X M for every sample: (B, n, k) from M (f, k), by one GEMM.

    With NCHW input the result is a transposed view of a (B, k, n) buffer, which is what
    the fastest GEMM form writes there.
    """
    x = feats.data
    if feats.layout == "bfn":
        return xp.matrix_transpose(channels_first_product(xp, xp.matrix_transpose(m), x))
    if is_torch(xp):  # one GEMM on the (B·n, f) view (the faster form for torch: docs/performance.md)
        return xp.matmul(x, m)
    b, n, f = shape_of(x)
    return xp.reshape(xp.matmul(xp.reshape(x, (b * n, f)), m), (b, n, shape_of(m)[1]))


def scatter_sum(xp: Namespace, y: Array, index: Any, size: int, axis: int) -> Array:
    """Z (``size`` long on ``axis``) with Z[..., j, ...] = Σ over c with index[c] = j of y[..., c, ...].

    ``index`` is an integer array (len = y's length on ``axis``), numpy or of y's library on its
    device; repeated bins add up (a count sketch). Each library's own scatter-add: O(y.size) work, where
    the generic form (a product with the dense one-hot (len, size) matrix, kept for the other libraries)
    costs O(y.size · size).
    """
    shape = list(shape_of(y))
    shape[axis] = size
    where = (slice(None),) * axis + (index,)
    if is_torch(xp):
        torch = sys.modules["torch"]
        bins = torch.as_tensor(index, device=y.device)
        return y.new_zeros(shape).index_add_(axis, bins, y)  # in place: the out-of-place form copies the zeros
    if is_numpy(xp):
        z = xp.zeros(shape, dtype=y.dtype)
        np.add.at(z, where, y)
        return z
    if aac.is_jax_namespace(xp):
        return xp.zeros(shape, dtype=y.dtype).at[where].add(y)
    if is_numpy_array(index):
        index = xp.asarray(index, device=device_of(y))
    onehot = xp.astype(index[:, None] == xp.arange(size, dtype=index.dtype, device=device_of(y))[None, :], y.dtype)
    moved = xp.moveaxis(y, axis, -1)
    return xp.moveaxis(xp.matmul(moved, onehot), -1, axis)


def fft_of(xp: Namespace) -> Any:
    """The FFT functions for ``xp``'s arrays: ``scipy.fft`` for numpy (faster than numpy's own in float32:
    docs/performance.md, "The Python core"), else ``xp.fft``."""
    if is_numpy(xp):
        import scipy.fft

        return scipy.fft
    return xp.fft


def weighted_sum(xp: Namespace, feats: Features, u: Array) -> Array:
    """V = Uᵀ X for every sample: (B, k, f) from position weights U (B, n, k).

    This is attention-weighted pooling: row k of V is Σ_i U_ik x_i.
    """
    x = feats.data
    if feats.layout == "bfn":
        return xp.matrix_transpose(xp.matmul(x, u))
    return xp.matmul(xp.matrix_transpose(u), x)


def gram_generic(xp: Namespace, feats: Features) -> Array:
    """XᵀX (B, f, f) for every sample, by the faster batched GEMM form of the library.

    Rule: one transposed operand and no copy, except with numpy when n < f, where Xᵀ is copied to
    C-contiguous memory first (OpenBLAS's batched product is slower on a strided operand; the copy costs
    B·n·f, small next to the B·f² output). No symmetric rank-k update: slower than the batched GEMM with
    numpy, absent from torch. Figures: docs/performance.md, "The Python core".
    """
    x = feats.data
    xt = xp.matrix_transpose(x)
    if is_numpy(xp) and feats.positions < feats.channels:
        xt = xp.asarray(xt, copy=True)
    return xp.matmul(xt, x) if feats.layout == "bnf" else xp.matmul(x, xt)


def cross_generic(xp: Namespace, fx: Features, fy: Features) -> Array:
    """XᵀY (B, f, g) for every sample of two feature batches with the same positions, in either layout."""
    xt = fx.data if fx.layout == "bfn" else xp.matrix_transpose(fx.data)  # (B, f, n)
    y = fy.data if fy.layout == "bnf" else xp.matrix_transpose(fy.data)  # (B, n, g)
    return xp.matmul(xt, y)


def top_eigh(xp: Namespace, s: Array, p: int) -> tuple[Array, Array]:
    """The p eigenpairs of the symmetric matrix s (f, f) of largest |μ|, sorted by |μ| descending.

    Rule: numpy with 32·p <= f takes scipy's partial ``eigh`` (MRRR driver) of the p largest and the p
    smallest eigenvalues, which hold the p of largest |μ|; otherwise (and every other library) the full
    ``eigh``. Figures: docs/performance.md, "The Python core".
    """
    f = shape_of(s)[0]
    if is_numpy(xp) and 32 * p <= f:
        import scipy.linalg

        low = scipy.linalg.eigh(s, subset_by_index=[0, p - 1], driver="evr")
        high = scipy.linalg.eigh(s, subset_by_index=[f - p, f - 1], driver="evr")
        mu, v = np.concatenate([low[0], high[0]]), np.concatenate([low[1], high[1]], axis=1)
    else:
        mu, v = xp.linalg.eigh(s)
    order = xp.argsort(-xp.abs(mu), stable=True)[:p]
    return xp.take(mu, order), xp.take(v, order, axis=1)


def activate(xp: Namespace, u: Array, attention: str, axis: int = 1) -> Array:
    """σ of bottom-up maps u over the positions (``axis``); see :func:`attention_weights`."""
    if attention == "linear":
        return u
    if attention == "relu":
        return xp.maximum(u, xp.zeros_like(u))  # NaN stays NaN (where(u > 0, ...) would make it 0)
    n = shape_of(u)[axis]
    e = xp.exp(u - xp.max(u, axis=axis, keepdims=True))
    return e * (n / xp.sum(e, axis=axis, keepdims=True))
