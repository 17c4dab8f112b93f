"""Second-order (bilinear) pooling: the Gram descriptor XᵀX and its class scores."""

from __future__ import annotations

from typing import Literal

from ._checks import check_choice, check_shape
from ._xp import Array, Features, Namespace, is_numpy, prepare

__all__ = ["bilinear_pool", "gram"]


def _gram(xp: Namespace, feats: Features, normalize: str | None) -> Array:
    x = feats.data
    # Both forms hand BLAS one transposed operand and no copy. A symmetric rank-k
    # update (scipy's ?syrk, one call per sample, plus filling the lower triangle)
    # was measured 1.3-5x *slower* than this batched GEMM with numpy/OpenBLAS, and
    # torch exposes no syrk, so symmetry is exploited by the callers instead.
    xt = xp.matrix_transpose(x)
    if is_numpy(xp) and feats.positions < feats.channels:
        # OpenBLAS runs the batched product with a transposed (strided) operand 3-6x slower
        # than on C-contiguous data when n < f (497 vs 80 ms for (B, n, f) input at B=32,
        # n=49, f=2048, float32; 452 vs ~80 ms for NCHW); the copy costs B·n·f, small next
        # to the B·f² output. With n >= f the strided view is as fast or faster.
        xt = xp.asarray(xt, copy=True)
    g = xp.matmul(xt, x) if feats.layout == "bnf" else xp.matmul(x, xt)
    if normalize == "mean":
        g = g / feats.positions
    return g


def gram(
    X: Array,
    /,
    *,
    normalize: Literal["mean"] | None = None,
    channel_axis: int = -1,
    check_finite: bool = False,
) -> Array:
    r"""The second-order descriptor :math:`G_b = X_b^\top X_b` of every sample.

    .. math:: G_b = \sum_{i=1}^n x_{b,i} x_{b,i}^\top \in \mathbb{R}^{f\times f}

    Parameters
    ----------
    X : array, (B, n, f) or, with ``channel_axis=1``, (B, f, H, W) / (B, f, T, H, W)
        Feature maps; NCHW input is read as a (B, f, n) view, without a copy.
    normalize : {None, "mean"}
        ``"mean"`` divides by the number of positions n (second moment).
    channel_axis : int
        Axis of X that holds the f channels.
    check_finite : bool
        Raise ValueError if X holds NaN/inf.

    Returns
    -------
    array, (B, f, f)
        Symmetric positive semi-definite. float16/bfloat16 input is accumulated and
        returned in float32 (XᵀX overflows float16 quickly).

    Examples
    --------
    >>> import numpy as np, lowrank_pool as lp
    >>> X = np.array([[[1.0, 2.0], [3.0, 4.0]]])   # B=1, n=2, f=2
    >>> lp.gram(X)
    array([[[10., 14.],
            [14., 20.]]])
    >>> lp.gram(X, normalize="mean")
    array([[[ 5.,  7.],
            [ 7., 10.]]])
    """
    check_choice(normalize, "normalize", (None, "mean"))
    xp, feats, _ = prepare(X, channel_axis, check_finite)
    return _gram(xp, feats, normalize)


def bilinear_pool(
    X: Array,
    W: Array,
    /,
    *,
    channel_axis: int = -1,
    check_finite: bool = False,
) -> Array:
    r"""Class scores of full bilinear pooling, :math:`s_{bk} = \langle X_b^\top X_b, W_k\rangle`.

    .. math:: s_{bk} = \operatorname{Tr}(X_b^\top X_b W_k^\top)
              = \sum_{i} x_{b,i}^\top W_k\, x_{b,i}

    Only the symmetric part (W_k + W_kᵀ)/2 affects the score, because XᵀX is
    symmetric. Cost: n·f² for the Gram matrices plus K·f² for one (B, f²) @ (f², K)
    product; memory B·f² for the Gram batch (512 MiB at B=32, f=2048). When W is
    low-rank, :func:`rankp_pool`, :func:`cp_pool` or :func:`tucker_pool` never form it.

    Parameters
    ----------
    X : array, (B, n, f) or, with ``channel_axis=1``, (B, f, H, W) / (B, f, T, H, W)
    W : array, (K, f, f)
        One f×f weight matrix per class.
    channel_axis : int
    check_finite : bool
        Raise ValueError if X or W holds NaN/inf.

    Returns
    -------
    array, (B, K)

    Examples
    --------
    >>> import numpy as np, lowrank_pool as lp
    >>> X = np.array([[[1.0, 2.0], [3.0, 4.0]]])   # G = [[10, 14], [14, 20]]
    >>> W = np.stack([np.eye(2), np.array([[0.0, 1.0], [0.0, 0.0]])])
    >>> lp.bilinear_pool(X, W)                     # trace, and the off-diagonal
    array([[30., 14.]])
    """
    xp, feats, fac = prepare(X, channel_axis, check_finite, W=W)
    f = feats.channels
    check_shape("W", fac["W"], ("K", "f", "f"), f=f)
    return bilinear_scores(xp, feats, fac["W"])


def bilinear_scores(xp: Namespace, feats: Features, w: Array) -> Array:
    """⟨G_b, W_k⟩ for validated features and W (K, f, f): one (B, f²) @ (f², K) product."""
    f, k = feats.channels, w.shape[0]
    flat_g = xp.reshape(_gram(xp, feats, None), (feats.batch, f * f))
    return xp.matmul(flat_g, xp.matrix_transpose(xp.reshape(w, (k, f * f))))
