"""Second-order (bilinear) pooling: the second-moment descriptor M = XᵀX / n and its class scores.

The package's scale (every second-order function and layer): the descriptor is the
*mean* outer product over the n positions, M = XᵀX / n, so scores do not grow with the
feature map's size (a head trained on 7×7 maps scores 10×10 maps on the same scale) and
one initialisation rule gives O(1) initial scores; ``gram(X, normalize=None)`` is the
plain sum XᵀX of the paper's formula.

Why the mean and not the sum: docs/conventions.md, "Scale"; the math: docs/math.md.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Literal

from ._backend import Array, Namespace, full_precision
from ._checks import (
    MAX_ITERATIONS,
    center_features,
    check_choice,
    check_factor,
    check_flag,
    check_number,
    check_positive_int,
    pair_features,
    prepare,
    shape_of,
)
from ._delegation import gram_product
from ._errors import ArgumentError, ShapeError
from ._layout import Features
from ._ops import cross_generic
from .normalize import l2_normalize, matrix_sqrt, signed_sqrt

__all__ = ["bilinear_pool", "gram"]

Normalize = Literal["signed_sqrt", "l2", "signed_sqrt+l2", "matrix_sqrt", "matrix_sqrt+l2", "isqrt"]
NORMALIZATIONS = (None, "signed_sqrt", "l2", "signed_sqrt+l2", "matrix_sqrt", "matrix_sqrt+l2", "isqrt")
SQUARE_ONLY = ("matrix_sqrt", "matrix_sqrt+l2", "isqrt")  # normalisations of a symmetric M (one input)


def second_moment(xp: Namespace, feats: Features, fy: Features | None = None, center: bool = False) -> Array:
    """M = XᵀY / n (B, f, g) of validated features (Y = X when ``fy`` is None), of centred features with
    ``center``: (1/n) Xᵀ(I − 11ᵀ/n) Y."""
    return cross_moment(xp, feats, fy, center) / feats.positions


def cross_moment(xp: Namespace, feats: Features, fy: Features | None, center: bool) -> Array:
    """XᵀY (B, f, g), or Xᵀ(I − 11ᵀ/n)Y with ``center`` (the features centred first: no cancellation of a
    large mean against XᵀY)."""
    if center:
        feats = center_features(xp, feats)
        fy = None if fy is None else center_features(xp, fy)
    return gram_product(xp, feats) if fy is None else cross_generic(xp, feats, fy)


def check_pair(xp: Namespace, feats: Features, y: Array | None, channel_axis: int | None) -> Features | None:
    """Y's features beside X's, or None for one input."""
    return None if y is None else pair_features(xp, feats, y, channel_axis)


def gram(
    X: Array,
    Y: Array | None = None,
    /,
    *,
    center: bool = False,
    normalize: Literal["mean"] | None = "mean",
    channel_axis: int | None = None,
    check_finite: bool = False,
) -> Array:
    r"""The second-order descriptor of every sample: :math:`M_b = \frac1n X_b^\top X_b` (or :math:`X_b^\top Y_b / n`).

    .. math:: M_b = \frac1n \sum_{i=1}^n x_{b,i}\, y_{b,i}^\top \in \mathbb{R}^{f\times g}, \qquad
              M_b^{\text{centred}} = \frac1n X_b^\top \big(I - \tfrac1n \mathbf 1 \mathbf 1^\top\big) Y_b
              = \frac1n \sum_i (x_{b,i} - \bar x_b)(y_{b,i} - \bar y_b)^\top

    With one input Y = X: the second moment (f, f), or with ``center=True`` the covariance that MPN-COV /
    iSQRT-COV pool (fast-MPN-COV's ``CovpoolLayer``). With two inputs the cross moment of B-CNN [D, M] (two
    networks' maps at the same positions); n = 1 is the outer product x yᵀ of two vectors.

    Parameters
    ----------
    X : array, (B, n, f), (B, f, H, W) or (B, f, T, H, W)
        Feature maps; NCHW input is read as a (B, f, n) view, without a copy.
    Y : array, (B, n, g), (B, g, H, W) or (B, g, T, H, W), optional
        A second feature-map batch at the same positions (the same batch and n; its own channel count g),
        read by the same ``channel_axis`` rule.
    center : bool
        Subtract each sample's mean over the positions from X (and Y) first: the covariance.
    normalize : {"mean", None}
        ``"mean"`` (the default, the package's scale) divides by the number of positions
        n; ``None`` returns the plain product XᵀY (centred: Xᵀ(I − 11ᵀ/n)Y).
    channel_axis : int, optional
        Axis of X (and Y) that holds the channels; by default 3-D input is (B, n, f) and
        4-D/5-D input channels-first.
    check_finite : bool
        Raise :class:`ArgumentError` if X or Y holds NaN/inf.

    Returns
    -------
    array, (B, f, f) or (B, f, g)
        One input: symmetric positive semi-definite. float16/bfloat16 input is accumulated and
        returned in float32 (XᵀX overflows float16 quickly).

    Examples
    --------
    >>> import numpy as np, lowrank_pool as lp
    >>> X = np.array([[[1.0, 2.0], [3.0, 4.0]]])   # B=1, n=2, f=2
    >>> lp.gram(X)
    array([[[ 5.,  7.],
            [ 7., 10.]]])
    >>> lp.gram(X, normalize=None)
    array([[[10., 14.],
            [14., 20.]]])
    >>> lp.gram(X, center=True)                    # deviations ±[1, 1] from the mean [2, 3]
    array([[[1., 1.],
            [1., 1.]]])
    >>> lp.gram(X, np.array([[[1.0], [0.0]]]))     # X (1, 2, 2), Y (1, 2, 1): x_1 y_1ᵀ / 2
    array([[[0.5],
            [1. ]]])
    """
    check_choice(normalize, "normalize", (None, "mean"))
    center = check_flag(center, "center")
    xp, feats, fac = prepare(X, channel_axis, check_finite, **({} if Y is None else {"Y": Y}))
    fy = check_pair(xp, feats, fac.get("Y"), channel_axis)
    m = cross_moment(xp, feats, fy, center)
    return m / feats.positions if normalize == "mean" else m


def normalized_descriptor(xp: Namespace, m: Array, normalize: str | None, eps: float, num_iters: int) -> Array:
    """N(M): the normalisation chain of :func:`bilinear_pool` on second moments (B, f, f)."""
    norm = normalize or ""
    if norm.startswith(("matrix_sqrt", "isqrt")):  # (the same computation: trace pre-normalisation,
        m = matrix_sqrt(m, method="newton_schulz", num_iters=num_iters)  # Newton–Schulz, post-compensation)
    if norm.startswith("signed_sqrt"):
        m = signed_sqrt(m, eps=eps)
    if norm.endswith("l2"):
        m = l2_normalize(m, axis=(-2, -1))
    return m


def bilinear_pool(
    X: Array,
    W: Array,
    /,
    *,
    Y: Array | None = None,
    center: bool = False,
    normalize: Normalize | None = None,
    eps: float = 1e-6,
    num_iters: int = 5,
    channel_axis: int | None = None,
    check_finite: bool = False,
) -> Array:
    r"""Class scores of full bilinear pooling, :math:`s_{bk} = \langle N(M_b), W_k\rangle`, M_b = X_bᵀX_b / n.

    .. math:: s_{bk} = \operatorname{Tr}(M_b W_k^\top)
              = \frac1n \sum_{i} x_{b,i}^\top W_k\, y_{b,i} \quad(N = \text{identity};\ Y = X \text{ by default})

    Only the symmetric part (W_k + W_kᵀ)/2 affects a one-input score, because M is
    symmetric. Cost: n·f² for the second moments plus K·f² for one (B, f²) @ (f², K)
    product; memory B·f² (512 MiB at B=32, f=2048). When W is low-rank,
    :func:`rankp_pool`, :func:`cp_pool`, :func:`tucker_pool` or :func:`eig_pool` never
    form it.

    Parameters
    ----------
    X : array, (B, n, f), (B, f, H, W) or (B, f, T, H, W)
    W : array, (K, f, f), or (K, f, g) with ``Y``
        One weight matrix per class.
    Y : array, (B, n, g), (B, g, H, W) or (B, g, T, H, W), optional
        A second input at the same positions: M = XᵀY / n (B-CNN [D, M]; n = 1: the bilinear fusion
        z_k = xᵀ W_k y of two vectors). See :func:`gram`.
    center : bool
        Pool the covariance (1/n) Xᵀ(I − 11ᵀ/n)Y instead of the second moment (MPN-COV, iSQRT-COV).
    normalize : None or {"signed_sqrt", "l2", "signed_sqrt+l2", "matrix_sqrt", "matrix_sqrt+l2", "isqrt"}
        Normalisation N of M before the contraction: element-wise signed square root, then l2 over the
        matrix (bilinear CNNs); the matrix square root by ``num_iters`` Newton–Schulz iterations after a
        pre-normalisation by the trace and with the post-compensation √Tr M (``"isqrt"``, iSQRT-COV's
        meta-layer; ``"matrix_sqrt"`` is the same computation under its older name). iSQRT-COV itself is
        ``center=True, normalize="isqrt"``; neither normalisation centres by itself. The matrix roots need
        one input (a symmetric M). A normalised score is no longer linear in M, so it has no factorised
        (CP/Tucker/eigen) equivalent.
    eps : float
        ε of :func:`signed_sqrt`.
    num_iters : int
        Newton–Schulz iterations of ``"isqrt"`` / ``"matrix_sqrt"``.
    channel_axis : int, optional
    check_finite : bool
        Raise :class:`ArgumentError` if X, Y or W holds NaN/inf.

    Returns
    -------
    array, (B, K)

    Examples
    --------
    >>> import numpy as np, lowrank_pool as lp
    >>> X = np.array([[[1.0, 2.0], [3.0, 4.0]]])   # M = [[5, 7], [7, 10]]
    >>> W = np.stack([np.eye(2), np.array([[0.0, 1.0], [0.0, 0.0]])])
    >>> lp.bilinear_pool(X, W)                     # trace, and the off-diagonal
    array([[15.,  7.]])
    >>> lp.bilinear_pool(X, W, center=True)        # the covariance [[1, 1], [1, 1]]
    array([[2., 1.]])
    """
    check_choice(normalize, "normalize", NORMALIZATIONS)
    num_iters = check_positive_int(num_iters, "num_iters", MAX_ITERATIONS)
    eps = check_number(eps, "eps")
    center = check_flag(center, "center")
    xp, feats, fac = prepare(X, channel_axis, check_finite, W=W, **({} if Y is None else {"Y": Y}))
    fy = check_pair(xp, feats, fac.get("Y"), channel_axis)
    w = fac["W"]
    if fy is None:
        check_factor(feats, "W", w, ("K", "f", "f"), channel_axis, f_axis=1)
    else:
        check_factor(feats, "W", w, ("K", "f", "g"), channel_axis, f_axis=1)
        if shape_of(w)[2] != fy.channels:
            raise ShapeError(f"W: expected shape (K, f, g) with g = {fy.channels} (Y's channels), got {shape_of(w)}")
        if normalize in SQUARE_ONLY:
            raise ArgumentError(
                f"normalize: {normalize!r} is a root of a symmetric M = XᵀX / n and needs one input, got Y; "
                "with two inputs use None, 'signed_sqrt', 'l2' or 'signed_sqrt+l2'"
            )
    if normalize is None and fy is None and not center:
        return bilinear_scores(xp, feats, w)
    # the signed square root's derivative 1/(2√(|m|+ε)) magnifies the rounding of M: M not under autocast
    with full_precision(xp, feats.data) if "signed_sqrt" in (normalize or "") else nullcontext():
        m = second_moment(xp, feats, fy, center)
    return descriptor_scores(xp, normalized_descriptor(xp, m, normalize, eps, num_iters), w)


def descriptor_scores(xp: Namespace, m: Array, w: Array) -> Array:
    """⟨M_b, W_k⟩ (B, K) of descriptors M (B, f, g) and W (K, f, g): one (B, f·g) @ (f·g, K) product."""
    b, f, g = shape_of(m)
    k = shape_of(w)[0]
    return xp.matmul(xp.reshape(m, (b, f * g)), xp.matrix_transpose(xp.reshape(w, (k, f * g))))


def bilinear_scores(xp: Namespace, feats: Features, w: Array) -> Array:
    """⟨M_b, W_k⟩ for validated features and W (K, f, f) (the dense path of the factorised forms).

    The 1/n of M = XᵀX / n is applied to the (B, K) scores, not to the (B, f, f) Gram matrices (a pass over
    B·f² numbers into a fresh buffer).
    """
    return descriptor_scores(xp, gram_product(xp, feats), w) / feats.positions
