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
from ._checks import MAX_ITERATIONS, check_choice, check_factor, check_number, check_positive_int, prepare, shape_of
from ._delegation import gram_product
from ._layout import Features
from .normalize import l2_normalize, matrix_sqrt, signed_sqrt

__all__ = ["bilinear_pool", "gram"]

Normalize = Literal["signed_sqrt", "l2", "signed_sqrt+l2", "matrix_sqrt", "matrix_sqrt+l2"]
NORMALIZATIONS = (None, "signed_sqrt", "l2", "signed_sqrt+l2", "matrix_sqrt", "matrix_sqrt+l2")


def second_moment(xp: Namespace, feats: Features) -> Array:
    """M = XᵀX / n (B, f, f) of validated features."""
    return gram_product(xp, feats) / feats.positions


def gram(
    X: Array,
    /,
    *,
    normalize: Literal["mean"] | None = "mean",
    channel_axis: int | None = None,
    check_finite: bool = False,
) -> Array:
    r"""The second-order descriptor of every sample: :math:`M_b = \frac1n X_b^\top X_b`.

    .. math:: M_b = \frac1n \sum_{i=1}^n x_{b,i} x_{b,i}^\top \in \mathbb{R}^{f\times f}

    Parameters
    ----------
    X : array, (B, n, f), (B, f, H, W) or (B, f, T, H, W)
        Feature maps; NCHW input is read as a (B, f, n) view, without a copy.
    normalize : {"mean", None}
        ``"mean"`` (the default, the package's scale) divides by the number of positions
        n; ``None`` returns the plain Gram matrix XᵀX.
    channel_axis : int, optional
        Axis of X that holds the f channels; by default 3-D input is (B, n, f) and
        4-D/5-D input channels-first.
    check_finite : bool
        Raise :class:`ArgumentError` if X holds NaN/inf.

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
    array([[[ 5.,  7.],
            [ 7., 10.]]])
    >>> lp.gram(X, normalize=None)
    array([[[10., 14.],
            [14., 20.]]])
    """
    check_choice(normalize, "normalize", (None, "mean"))
    xp, feats, _ = prepare(X, channel_axis, check_finite)
    return second_moment(xp, feats) if normalize == "mean" else gram_product(xp, feats)


def normalized_descriptor(xp: Namespace, m: Array, normalize: str | None, eps: float, num_iters: int) -> Array:
    """N(M): the normalisation chain of :func:`bilinear_pool` on second moments (B, f, f)."""
    norm = normalize or ""
    if norm.startswith("matrix_sqrt"):
        m = matrix_sqrt(m, method="newton_schulz", num_iters=num_iters)
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
    normalize: Normalize | None = None,
    eps: float = 1e-6,
    num_iters: int = 5,
    channel_axis: int | None = None,
    check_finite: bool = False,
) -> Array:
    r"""Class scores of full bilinear pooling, :math:`s_{bk} = \langle N(M_b), W_k\rangle`, M_b = X_bᵀX_b / n.

    .. math:: s_{bk} = \operatorname{Tr}(M_b W_k^\top)
              = \frac1n \sum_{i} x_{b,i}^\top W_k\, x_{b,i} \quad(N = \text{identity})

    Only the symmetric part (W_k + W_kᵀ)/2 affects the score, because M is
    symmetric. Cost: n·f² for the second moments plus K·f² for one (B, f²) @ (f², K)
    product; memory B·f² (512 MiB at B=32, f=2048). When W is low-rank,
    :func:`rankp_pool`, :func:`cp_pool`, :func:`tucker_pool` or :func:`eig_pool` never
    form it.

    Parameters
    ----------
    X : array, (B, n, f), (B, f, H, W) or (B, f, T, H, W)
    W : array, (K, f, f)
        One f×f weight matrix per class.
    normalize : None or {"signed_sqrt", "l2", "signed_sqrt+l2", "matrix_sqrt", "matrix_sqrt+l2"}
        Normalisation N of M before the contraction, as in bilinear CNNs (element-wise
        signed square root, then l2 over the f×f matrix) and iSQRT-COV (matrix square
        root by ``num_iters`` Newton–Schulz iterations). A normalised score is no
        longer linear in M, so it has no factorised (CP/Tucker/eigen) equivalent.
    eps : float
        ε of :func:`signed_sqrt`.
    num_iters : int
        Newton–Schulz iterations of ``"matrix_sqrt"``.
    channel_axis : int, optional
    check_finite : bool
        Raise :class:`ArgumentError` if X or W holds NaN/inf.

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
    """
    check_choice(normalize, "normalize", NORMALIZATIONS)
    num_iters = check_positive_int(num_iters, "num_iters", MAX_ITERATIONS)
    eps = check_number(eps, "eps")
    xp, feats, fac = prepare(X, channel_axis, check_finite, W=W)
    w = fac["W"]
    check_factor(feats, "W", w, ("K", "f", "f"), channel_axis, f_axis=1)
    if normalize is None:
        return bilinear_scores(xp, feats, w)
    # the signed square root's derivative 1/(2√(|m|+ε)) magnifies the rounding of M: M not under autocast
    with full_precision(xp, feats.data) if "signed_sqrt" in normalize else nullcontext():
        m = second_moment(xp, feats)
    return descriptor_scores(xp, normalized_descriptor(xp, m, normalize, eps, num_iters), w)


def descriptor_scores(xp: Namespace, m: Array, w: Array) -> Array:
    """⟨M_b, W_k⟩ (B, K) of descriptors M (B, f, f) and W (K, f, f): one (B, f²) @ (f², K) product."""
    b, f = shape_of(m)[0], shape_of(m)[1]
    k = shape_of(w)[0]
    return xp.matmul(xp.reshape(m, (b, f * f)), xp.matrix_transpose(xp.reshape(w, (k, f * f))))


def bilinear_scores(xp: Namespace, feats: Features, w: Array) -> Array:
    """⟨M_b, W_k⟩ for validated features and W (K, f, f) (the dense path of the factorised forms).

    The 1/n of M = XᵀX / n is applied to the (B, K) scores, not to the (B, f, f) Gram matrices (a pass over
    B·f² numbers into a fresh buffer).
    """
    return descriptor_scores(xp, gram_product(xp, feats), w) / feats.positions
