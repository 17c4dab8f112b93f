"""Normalisations used with bilinear (second-order) features."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from ._backend import Array, Namespace, acc_dtype, check_floating, device_of, namespace
from ._checks import (
    MAX_ITERATIONS,
    ShapeError,
    check_choice,
    check_finite,
    check_number,
    check_positive_int,
    shape_of,
)

__all__ = ["l2_normalize", "matrix_sqrt", "signed_sqrt", "triu_vec"]


def _computed(xp: Namespace, x: Array) -> Array:
    """``x`` in its compute dtype (float16/bfloat16 as float32)."""
    dt = acc_dtype(xp, x.dtype)
    return x if x.dtype == dt else xp.astype(x, dt)


def _returned(xp: Namespace, y: Array, dtype: Any) -> Array:
    return y if y.dtype == dtype else xp.astype(y, dtype)


def signed_sqrt(G: Array, /, *, eps: float = 1e-6) -> Array:
    r"""Element-wise signed square root with a bounded gradient at 0.

    .. math:: \operatorname{ssqrt}_\varepsilon(x) = \frac{x}{\sqrt{|x| + \varepsilon} + \sqrt{\varepsilon}}
              = \operatorname{sign}(x)\big(\sqrt{|x|+\varepsilon} - \sqrt{\varepsilon}\big)

    The plain sign(x)·√abs(x) has derivative 1/(2√abs(x)), infinite at 0, which is where
    every bilinear-pooling port adds an epsilon. Here ε sits inside the root: the
    value at 0 is exactly 0, the derivative is 1/(2√(abs(x)+ε)) ≤ 1/(2√ε) (500 for the
    default ε = 1e-6), and the left-hand form avoids the cancellation of the
    right-hand one. ``eps=0`` gives the exact signed square root.

    Parameters
    ----------
    G : array, any shape (e.g. (B, f, f) Gram matrices)
    eps : float, >= 0

    Returns
    -------
    array, same shape, library and dtype as G

    Examples
    --------
    >>> import numpy as np, lowrank_pool as lp
    >>> lp.signed_sqrt(np.array([-4.0, 0.0, 9.0]), eps=0.0)
    array([-2.,  0.,  3.])
    """
    xp = namespace(G=G)
    check_floating(xp, G, "G")
    eps = check_number(eps, "eps")
    root_eps = float(eps) ** 0.5
    g = _computed(xp, G)  # float16's ε = 1e-6 and √ε underflow: compute in float32
    denom = xp.sqrt(xp.abs(g) + eps) + root_eps
    if eps == 0:  # x / √|x| is 0/0 at x = 0
        denom = xp.where(denom == 0, xp.ones_like(denom), denom)
    return _returned(xp, g / denom, G.dtype)


def l2_normalize(x: Array, /, *, axis: int | tuple[int, ...] = -1, eps: float = 1e-12) -> Array:
    r"""Divide by the Euclidean norm over ``axis``: :math:`x / \max(\lVert x\rVert_2, \varepsilon)`.

    Parameters
    ----------
    x : array
        E.g. (B, D) flattened bilinear features, or (B, f, f) with ``axis=(-2, -1)``
        for the Frobenius norm of each matrix.
    axis : int or tuple of int
    eps : float, > 0
        Floor of the norm: an all-zero slice stays zero instead of NaN.

    Returns
    -------
    array, same shape, library and dtype as x
        float16/bfloat16 are normalised in float32 (the norm of a long float16 vector
        overflows) and returned in their own dtype.

    Examples
    --------
    >>> import numpy as np, lowrank_pool as lp
    >>> lp.l2_normalize(np.array([[3.0, 4.0], [0.0, 0.0]]))
    array([[0.6, 0.8],
           [0. , 0. ]])
    """
    xp = namespace(x=x)
    check_floating(xp, x, "x")
    eps = check_number(eps, "eps", positive=True)
    axes = (axis,) if isinstance(axis, int) else tuple(axis) if isinstance(axis, tuple | list) else (None,)
    for ax in axes:
        if not isinstance(ax, int) or isinstance(ax, bool) or not -x.ndim <= ax < x.ndim:
            raise ShapeError(f"axis: expected axes of x with shape {shape_of(x)}, got {axis!r}")
    xa = _computed(xp, x)  # the norm of a long float16 vector overflows float16 (max 65504)
    norm = xp.linalg.vector_norm(xa, axis=axes, keepdims=True)
    return _returned(xp, xa / xp.clip(norm, min=eps), x.dtype)


def matrix_sqrt(
    G: Array,
    /,
    *,
    method: Literal["eigh", "newton_schulz"] = "eigh",
    num_iters: int = 5,
) -> Array:
    r"""Principal square root :math:`G^{1/2}` of symmetric PSD matrices (batched).

    ``"eigh"``: :math:`G = V \operatorname{diag}(\mu) V^\top \Rightarrow G^{1/2} = V
    \operatorname{diag}(\sqrt{\max(\mu, 0)}) V^\top`, exact up to rounding; its
    gradient is unstable when eigenvalues repeat.

    ``"newton_schulz"`` (iSQRT-COV, Li et al. 2018): with :math:`A = G/\operatorname{tr}G`,
    :math:`Y_0 = A,\ Z_0 = I,\ T_j = \tfrac12(3I - Z_j Y_j),\ Y_{j+1} = Y_j T_j,\
    Z_{j+1} = T_j Z_j`, and :math:`G^{1/2} \approx \sqrt{\operatorname{tr}G}\, Y_J`.
    Matrix products only (GPU friendly, stable gradients); an approximation whose
    error shrinks with ``num_iters`` and grows with the condition number (the
    iSQRT-COV default of 5 iterations is a deliberate partial normalisation).

    Parameters
    ----------
    G : array, (..., f, f)
        Symmetric positive semi-definite, e.g. :func:`gram` output.
    method : {"eigh", "newton_schulz"}
    num_iters : int
        Newton–Schulz iterations.

    Returns
    -------
    array, (..., f, f)
        float16/bfloat16 input is computed and returned in float32.

    Examples
    --------
    >>> import numpy as np, lowrank_pool as lp
    >>> lp.matrix_sqrt(np.array([[4.0, 0.0], [0.0, 9.0]]))
    array([[2., 0.],
           [0., 3.]])
    """
    check_choice(method, "method", ("eigh", "newton_schulz"))
    num_iters = check_positive_int(num_iters, "num_iters", MAX_ITERATIONS)
    xp = namespace(G=G)
    check_floating(xp, G, "G")
    shape = shape_of(G)
    if len(shape) < 2 or shape[-1] != shape[-2] or shape[-1] == 0:
        raise ShapeError(f"G: expected square matrices (..., f, f) with f >= 1, got shape {shape}")
    dt = acc_dtype(xp, G.dtype)
    g = G if G.dtype == dt else xp.astype(G, dt)
    if method == "eigh":
        # LAPACK's eigh fails on NaN/inf (numpy: "did not converge"): name the argument instead
        check_finite(xp, g, "G")
        mu, v = xp.linalg.eigh(g)
        root = xp.sqrt(xp.clip(mu, min=0.0))
        return xp.matmul(v * root[..., None, :], xp.matrix_transpose(v))
    f = shape[-1]
    eye = xp.eye(f, dtype=dt, device=device_of(g))
    trace = xp.linalg.trace(g)[..., None, None]
    trace = xp.where(trace > 0, trace, xp.ones_like(trace))  # G = 0 has root 0, not NaN
    y, z = g / trace, eye
    for _ in range(num_iters):
        t = 0.5 * (3.0 * eye - xp.matmul(z, y))
        y, z = xp.matmul(y, t), xp.matmul(t, z)
    return y * xp.sqrt(trace)


def triu_vec(G: Array, /) -> Array:
    r"""The upper triangle (diagonal included) of square matrices, row by row: (..., f, f) → (..., f(f+1)/2).

    .. math:: \operatorname{triu}(G) = (G_{11}, G_{12}, \dots, G_{1f}, G_{22}, \dots, G_{ff})

    A symmetric descriptor (a covariance, its square root) holds each off-diagonal entry twice; a linear
    classifier on its upper triangle has f(f+1)/2 weights instead of f² (iSQRT-COV's ``Triuvec``, the same
    order, no √2 on the off-diagonal entries). ⟨triu(G), w⟩ equals ⟨G, W⟩ for the upper-triangular W with
    w's entries in that order.

    Parameters
    ----------
    G : array, (..., f, f)
        Square matrices (any library; a view of G's memory is not kept).

    Returns
    -------
    array, (..., f(f+1)/2)
        In G's library, dtype and device.

    Examples
    --------
    >>> import numpy as np, lowrank_pool as lp
    >>> lp.triu_vec(np.array([[1.0, 2.0], [2.0, 3.0]]))
    array([1., 2., 3.])
    """
    xp = namespace(G=G)
    shape = shape_of(G)
    if len(shape) < 2 or shape[-1] != shape[-2]:
        raise ShapeError(f"G: expected square matrices (..., f, f), got shape {shape}")
    f = shape[-1]
    rows, cols = np.triu_indices(f)
    index = xp.asarray(rows * f + cols, device=device_of(G))
    flat = xp.reshape(G, (*shape[:-2], f * f))
    return xp.take(flat, index, axis=-1)
