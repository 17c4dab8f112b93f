"""First-order pooling: global sum / mean / max of the features, then a linear map."""

from __future__ import annotations

from typing import Literal

from ._backend import Array
from ._checks import (
    ArgumentError,
    ShapeError,
    check_choice,
    check_factor,
    check_flag,
    check_shape,
    prepare,
    shape_of,
)
from ._ops import project, weighted_sum

__all__ = ["first_order_pool", "project_channels"]


def first_order_pool(
    X: Array,
    W: Array,
    /,
    *,
    reduce: Literal["sum", "mean", "max"] = "mean",
    weights: Array | None = None,
    channel_axis: int | None = None,
    check_finite: bool = False,
) -> Array:
    r"""Class scores of first-order (global) pooling.

    .. math:: s_{bk} = \tfrac1n \mathbf{1}^\top X_b w_k \quad(\text{mean}),\qquad
              \mathbf{1}^\top X_b w_k \quad(\text{sum}),\qquad
              (\max_i X_{b,i})\, w_k \quad(\text{max})

    The positions are reduced first (n·f work), then one (B, f) @ (f, K) product:
    the (B, n, K) map ``X W`` is never formed. ``"mean"`` (the default, like
    ``AdaptiveAvgPool2d(1) + Linear``) is rank-1 attentional pooling with a uniform
    bottom-up map X b = 1 on the package's mean scale; ``"sum"`` is the paper's 1ᵀXw;
    ``"max"`` is global max pooling of each channel followed by the linear classifier.

    Parameters
    ----------
    X : array, (B, n, f), (B, f, H, W) or (B, f, T, H, W)
        Feature maps. By default (``channel_axis=None``) 3-D input is channels-last and
        4-D/5-D input channels-first.
    W : array, (f, K)
        One weight vector per class, column-per-class.
    reduce : {"sum", "mean", "max"}
        How the positions are pooled.
    weights : array, (B, n) or ``(B, *spatial)``, optional
        A spatial weighting u of the positions (``reduce`` "sum" or "mean"):
        s_bk = (1/n) Σ_i u_bi x_bi · w_k (``"mean"``, without 1/n for ``"sum"``). With
        u = X b this is rank-1 attentional pooling; any other bottom-up map (e.g.
        predicted by a pose head) works the same way.
    channel_axis : int, optional
        Axis of X that holds the f channels, overriding the default rule.
    check_finite : bool
        Raise :class:`ArgumentError` if X or W holds NaN/inf.

    Returns
    -------
    array, (B, K)
        Same library, device and dtype as the inputs (float32 for float16/bfloat16).

    Examples
    --------
    >>> import numpy as np, lowrank_pool as lp
    >>> X = np.ones((2, 3, 4))            # B=2, n=3 positions, f=4 channels
    >>> W = np.eye(4)[:, :2]              # K=2 classes picking channels 0 and 1
    >>> lp.first_order_pool(X, W)
    array([[1., 1.],
           [1., 1.]])
    >>> lp.first_order_pool(X, W, reduce="sum")
    array([[3., 3.],
           [3., 3.]])
    """
    check_choice(reduce, "reduce", ("sum", "mean", "max"))
    if weights is None:
        xp, feats, fac = prepare(X, channel_axis, check_finite, W=W)
    else:
        if reduce == "max":
            raise ArgumentError("weights: a spatial weighting needs reduce='sum' or 'mean', got reduce='max'")
        xp, feats, fac = prepare(X, channel_axis, check_finite, W=W, weights=weights)
    check_factor(feats, "W", fac["W"], ("f", "K"), channel_axis)
    pos_axis = 1 if feats.layout == "bnf" else 2
    if weights is not None:
        u = fac["weights"]
        if shape_of(u) not in ((feats.batch, feats.positions), (feats.batch, *feats.spatial)):
            raise ShapeError(
                f"weights: expected shape (B, n) = {(feats.batch, feats.positions)} or (B, *spatial) = "
                f"{(feats.batch, *feats.spatial)}, got {shape_of(u)}"
            )
        u = xp.reshape(u, (feats.batch, feats.positions, 1))
        pooled = weighted_sum(xp, feats, u)[:, 0, :]
        if reduce == "mean":
            pooled = pooled / feats.positions
        return xp.matmul(pooled, fac["W"])
    if reduce == "max":
        pooled = xp.max(feats.data, axis=pos_axis)
    else:
        pooled = xp.sum(feats.data, axis=pos_axis)
        if reduce == "mean":
            pooled = pooled / feats.positions
    return xp.matmul(pooled, fac["W"])


def project_channels(
    X: Array,
    M: Array,
    /,
    *,
    bias: Array | None = None,
    channel_axis: int | None = None,
    keep_spatial: bool = False,
    check_finite: bool = False,
) -> Array:
    r"""A 1×1 convolution of the feature maps: :math:`Z_b = X_b M + \mathbf{1} c^\top`.

    One GEMM in the fastest form for the input's layout (an NCHW tensor is read as a
    (B, f, n) view, never copied to channels-last). Used for channel reductions before
    bilinear pooling and for the keypoint/saliency head of pose-regularised attention.

    Parameters
    ----------
    X : array, (B, n, f), (B, f, H, W) or (B, f, T, H, W)
    M : array, (f, d)
    bias : array, (d,), optional
    channel_axis : int, optional
    keep_spatial : bool
        Return ``(B, d, *spatial)`` (channels first, on the input's grid) instead of (B, n, d).
    check_finite : bool

    Returns
    -------
    array, (B, n, d) or ``(B, d, *spatial)``

    Examples
    --------
    >>> import numpy as np, lowrank_pool as lp
    >>> X = np.ones((1, 3, 2, 2))                      # NCHW, f = 3
    >>> lp.project_channels(X, np.ones((3, 1)), keep_spatial=True)
    array([[[[3., 3.],
             [3., 3.]]]])
    """
    keep_spatial = check_flag(keep_spatial, "keep_spatial")
    extra = {} if bias is None else {"bias": bias}
    xp, feats, fac = prepare(X, channel_axis, check_finite, M=M, **extra)
    m = fac["M"]
    check_factor(feats, "M", m, ("f", "d"), channel_axis)
    z = project(xp, feats, m)  # (B, n, d)
    if bias is not None:
        check_shape("bias", fac["bias"], ("d",), d=shape_of(m)[1])
        z = z + fac["bias"]
    if keep_spatial:
        z = xp.reshape(xp.permute_dims(z, (0, 2, 1)), (feats.batch, shape_of(m)[1], *feats.spatial))
    return z
