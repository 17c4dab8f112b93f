"""First-order pooling: global sum / mean / max of the features, then a linear map."""

from __future__ import annotations

from typing import Literal

from ._checks import ShapeError, check_choice, check_shape, shape_of
from ._xp import Array, prepare, weighted_sum

__all__ = ["first_order_pool"]


def first_order_pool(
    X: Array,
    W: Array,
    /,
    *,
    reduce: Literal["sum", "mean", "max"] = "sum",
    weights: Array | None = None,
    channel_axis: int = -1,
    check_finite: bool = False,
) -> Array:
    r"""Class scores of first-order (global) pooling.

    .. math:: s_{bk} = \mathbf{1}^\top X_b w_k \quad(\text{sum}),\qquad
              \tfrac1n \mathbf{1}^\top X_b w_k \quad(\text{mean}),\qquad
              (\max_i X_{b,i})\, w_k \quad(\text{max})

    The positions are reduced first (n·f work), then one (B, f) @ (f, K) product:
    the (B, n, K) map ``X W`` is never formed. ``"sum"`` is the paper's 1ᵀXw, i.e.
    rank-1 attentional pooling with a uniform bottom-up map; ``"max"`` is global max
    pooling of each channel followed by the linear classifier.

    Parameters
    ----------
    X : array, (B, n, f) or, with ``channel_axis=1``, (B, f, H, W) / (B, f, T, H, W)
        Feature maps.
    W : array, (f, K)
        One weight vector per class, column-per-class.
    reduce : {"sum", "mean", "max"}
        How the positions are pooled.
    weights : array, (B, n) or (B, *spatial), optional
        A spatial weighting u of the positions (``reduce`` "sum" or "mean"):
        s_bk = Σ_i u_bi x_bi · w_k. With u = X b this is rank-1 attentional pooling;
        any other bottom-up map (e.g. predicted by a pose head) works the same way.
    channel_axis : int
        Axis of X that holds the f channels.
    check_finite : bool
        Raise ValueError if X or W holds NaN/inf.

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
    array([[3., 3.],
           [3., 3.]])
    >>> lp.first_order_pool(X, W, reduce="mean")
    array([[1., 1.],
           [1., 1.]])
    """
    check_choice(reduce, "reduce", ("sum", "mean", "max"))
    if weights is None:
        xp, feats, fac = prepare(X, channel_axis, check_finite, W=W)
    else:
        if reduce == "max":
            raise ValueError("weights: a spatial weighting needs reduce='sum' or 'mean', got reduce='max'")
        xp, feats, fac = prepare(X, channel_axis, check_finite, W=W, weights=weights)
    check_shape("W", fac["W"], ("f", "K"), f=feats.channels)
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
