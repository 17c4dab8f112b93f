"""Low-rank attentional pooling (Girdhar & Ramanan, NIPS 2017).

The identity everything here rests on, for X (n, f) and a, b (f,):

    Tr(XᵀX a bᵀ) = (X a)ᵀ (X b)

X b (n,) is the class-agnostic *bottom-up* saliency map, X a_k (n,) the class-specific
*top-down* attention map; the score is their inner product over positions.

Scores are computed in the re-associated order (X a)ᵀ(X b) = a ᵀ (Xᵀ (X b)) whenever the
bottom-up map is shared by the classes: one matrix-vector pass builds the bottom-up map
u = X b, a second pools the features with it, v = Xᵀ u (attention-weighted pooling),
and one (B, f) @ (f, K) product gives all K scores. That is 2·n·f + f·K work per sample
instead of n·f·(K+1) for projecting on [A | b]; measured here (float32, B=32, 2
threads) it is 2-24x faster than the one-GEMM form at the reference shapes of
DESIGN.md (e.g. 62.7 -> 2.6 ms with numpy at n=196, f=2048, K=600). The top-down maps
themselves are produced, by one GEMM on [A | b], only by :func:`attention_maps`.
"""

from __future__ import annotations

import math
from typing import Literal

from ._checks import check_choice, check_shape, shape_of
from ._xp import Array, Features, Namespace, is_torch, prepare, project, weighted_sum

__all__ = ["attention_maps", "rank1_pool", "rankp_pool"]

Attention = Literal["linear", "softmax", "relu"]
ATTENTIONS = ("linear", "softmax", "relu")


def activate(xp: Namespace, u: Array, attention: str) -> Array:
    """Apply the bottom-up transform to maps u (B, n, m) over the positions (axis 1).

    ``"softmax"`` is the paper code's spatial softmax (each map sums to 1 over the
    positions, computed stably); ``"relu"`` clips negative saliency to 0.
    """
    if attention == "linear":
        return u
    if attention == "relu":
        return xp.where(u > 0, u, xp.zeros_like(u))
    e = xp.exp(u - xp.max(u, axis=1, keepdims=True))
    return e / xp.sum(e, axis=1, keepdims=True)


def rank1_maps(xp: Namespace, feats: Features, a: Array, b: Array, attention: str) -> tuple[Array, Array]:
    """Top-down maps X A (B, n, K) and bottom-up map X b (B, n) by one GEMM on [A | b]."""
    f, k = a.shape
    z = project(xp, feats, xp.concat([a, xp.reshape(b, (f, 1))], axis=1))
    return z[:, :, :k], activate(xp, z[:, :, k:], attention)[:, :, 0]


def rankp_maps(xp: Namespace, feats: Features, a: Array, b: Array, attention: str) -> tuple[Array, Array]:
    """Top-down maps (B, n, K, P) and bottom-up maps (B, n, P) or (B, n, K, P), one GEMM."""
    f, k, p = shape_of(a)
    width = math.prod(shape_of(b)[1:])
    z = project(xp, feats, xp.concat([xp.reshape(a, (f, k * p)), xp.reshape(b, (f, width))], axis=1))
    top = xp.reshape(z[:, :, : k * p], (feats.batch, feats.positions, k, p))
    bottom = activate(xp, z[:, :, k * p :], attention)
    return top, xp.reshape(bottom, (feats.batch, feats.positions, *shape_of(b)[1:]))


def scores_from_maps(xp: Namespace, top_down: Array, bottom_up: Array) -> Array:
    """s_bk = Σ_i top_down[b, i, k] · bottom_up[b, i]: (B, K) from (B, n, K) and (B, n)."""
    return xp.matmul(bottom_up[:, None, :], top_down)[:, 0, :]


def _shared_scores(xp: Namespace, feats: Features, bm: Array, a_pf: Array, attention: str) -> Array:
    """Σ_p (X a_kp)ᵀ σ(X b_p) as vec(Xᵀ σ(X B)) @ A_pf, with B (f, P) and A_pf (P·f, K).

    With torch tensors that need gradients this runs as one autograd Function whose
    backward writes ∂X once, in X's layout (:mod:`lowrank_pool._torch_kernels`).
    """
    if is_torch(xp) and _needs_grad(feats.data, bm, a_pf):
        from ._torch_kernels import shared_bottom_up_scores

        return shared_bottom_up_scores(feats.data, bm, a_pf, channels_first=feats.layout == "bfn", attention=attention)
    u = activate(xp, project(xp, feats, bm), attention)  # (B, n, P)
    v = weighted_sum(xp, feats, u)  # (B, P, f): Xᵀ σ(X B)
    return xp.matmul(xp.reshape(v, (feats.batch, shape_of(a_pf)[0])), a_pf)


def _needs_grad(*tensors: Array) -> bool:
    import torch

    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _check_rank1(feats: Features, a: Array, b: Array) -> None:
    check_shape("A", a, ("f", "K"), f=feats.channels)
    check_shape("b", b, ("f",), f=feats.channels)


def rank1_pool(
    X: Array,
    A: Array,
    b: Array,
    /,
    *,
    attention: Attention = "linear",
    channel_axis: int = -1,
    check_finite: bool = False,
) -> Array:
    r"""Rank-1 attentional pooling: :math:`s_{bk} = (X_b a_k)^\top \sigma(X_b b)`.

    .. math:: s_{bk} = \operatorname{Tr}(X_b^\top X_b\, b\, a_k^\top)
              = (X_b a_k)^\top (X_b b) = a_k^\top \big(X_b^\top (X_b b)\big)

    with σ the identity (``attention="linear"``, the paper's formula), a spatial
    softmax or a ReLU applied to the bottom-up map. The score of class k is the
    bilinear score of the rank-1 weight W_k = a_k bᵀ (or b a_kᵀ: only the symmetric
    part matters). Computed as attention-weighted pooling v = Xᵀσ(Xb) followed by
    v @ A; see the module docstring for why.

    Parameters
    ----------
    X : array, (B, n, f) or, with ``channel_axis=1``, (B, f, H, W) / (B, f, T, H, W)
        Feature maps; NCHW input is read as a (B, f, n) view, without a copy.
    A : array, (f, K)
        Top-down (class-specific) vectors a_k, one column per class.
    b : array, (f,)
        The bottom-up (class-agnostic) vector.
    attention : {"linear", "softmax", "relu"}
        Transform of the bottom-up map over the positions.
    channel_axis : int
        Axis of X that holds the f channels.
    check_finite : bool
        Raise ValueError if an input holds NaN/inf.

    Returns
    -------
    array, (B, K)
        Same library, device and dtype as the inputs (float32 for float16/bfloat16).

    Examples
    --------
    >>> import numpy as np, lowrank_pool as lp
    >>> X = np.array([[[1.0, 0.0], [0.0, 2.0]]])   # B=1, n=2 positions, f=2
    >>> A = np.eye(2)                               # class k reads channel k
    >>> b = np.array([1.0, 1.0])                    # bottom-up map X b = [1, 2]
    >>> lp.rank1_pool(X, A, b)                      # [1*1 + 0*2, 0*1 + 2*2]
    array([[1., 4.]])
    """
    check_choice(attention, "attention", ATTENTIONS)
    xp, feats, fac = prepare(X, channel_axis, check_finite, A=A, b=b)
    a, bvec = fac["A"], fac["b"]
    _check_rank1(feats, a, bvec)
    return _shared_scores(xp, feats, xp.reshape(bvec, (feats.channels, 1)), a, attention)


def rankp_pool(
    X: Array,
    A: Array,
    B: Array,
    /,
    *,
    attention: Attention = "linear",
    channel_axis: int = -1,
    check_finite: bool = False,
) -> Array:
    r"""Rank-P attentional pooling: :math:`s_{bk} = \sum_p (X_b a_{kp})^\top \sigma(X_b b_{kp})`.

    .. math:: s_{bk} = \sum_{p=1}^P \operatorname{Tr}(X_b^\top X_b\, b_{kp} a_{kp}^\top)
              = \langle X_b^\top X_b,\ \textstyle\sum_p a_{kp} b_{kp}^\top \rangle

    i.e. bilinear pooling with the rank-P weight W_k = Σ_p a_kp b_kpᵀ (exactly, when σ
    is the identity). The P projections are independent (the paper's official code
    chains them by mistake).

    With a shared bottom-up B (f, P) the scores are computed as P attention-weighted
    poolings V = Xᵀσ(X B) (2·n·f·P work) and one (B, P·f) @ (P·f, K) product; with
    per-class B (f, K, P) by one GEMM of X on [A | B] (width 2·K·P), a product and a
    sum over positions. A (B, K, n, f) broadcast is never formed.

    Parameters
    ----------
    X : array, (B, n, f) or, with ``channel_axis=1``, (B, f, H, W) / (B, f, T, H, W)
    A : array, (f, K, P)
        Top-down vectors a_kp.
    B : array, (f, K, P) per class or (f, P) shared by all classes
        Bottom-up vectors b_kp (or b_p).
    attention : {"linear", "softmax", "relu"}
        Transform of each bottom-up map over the positions.
    channel_axis : int
    check_finite : bool

    Returns
    -------
    array, (B, K)

    Examples
    --------
    >>> import numpy as np, lowrank_pool as lp
    >>> X = np.array([[[1.0, 0.0], [0.0, 2.0]]])
    >>> A = np.ones((2, 1, 2)); Bshared = np.eye(2)       # K=1 class, P=2
    >>> lp.rankp_pool(X, A, Bshared)   # (X1)ᵀ(Xe0) + (X1)ᵀ(Xe1) = 1 + 4
    array([[5.]])
    """
    check_choice(attention, "attention", ATTENTIONS)
    xp, feats, fac = prepare(X, channel_axis, check_finite, A=A, B=B)
    a, bm = fac["A"], fac["B"]
    f = feats.channels
    sizes = check_shape("A", a, ("f", "K", "P"), f=f)
    k, p = sizes["K"], sizes["P"]
    batch = feats.batch
    if bm.ndim == 2:
        check_shape("B", bm, ("f", "P"), f=f, P=p)
        a_pf = xp.reshape(xp.permute_dims(a, (2, 0, 1)), (p * f, k))
        return _shared_scores(xp, feats, bm, a_pf, attention)
    check_shape("B", bm, ("f", "K", "P"), f=f, K=k, P=p)
    kp = k * p
    z = project(xp, feats, xp.concat([xp.reshape(a, (f, kp)), xp.reshape(bm, (f, kp))], axis=1))
    s = xp.sum(z[:, :, :kp] * activate(xp, z[:, :, kp:], attention), axis=1)  # (B, K·P)
    return xp.sum(xp.reshape(s, (batch, k, p)), axis=2)


def attention_maps(
    X: Array,
    A: Array,
    b: Array,
    /,
    *,
    attention: Attention = "linear",
    channel_axis: int = -1,
    keep_spatial: bool = False,
    check_finite: bool = False,
) -> tuple[Array, Array]:
    r"""The top-down maps :math:`X a_k` and the bottom-up map :math:`\sigma(X b)`.

    Their inner product over the positions is :func:`rank1_pool`:
    ``(top_down * bottom_up[..., None]).sum(1) == rank1_pool(X, A, b)``.
    Both come from one GEMM of X on the concatenation [A | b].

    Parameters
    ----------
    X : array, (B, n, f) or, with ``channel_axis=1``, (B, f, H, W) / (B, f, T, H, W)
    A : array, (f, K)
    b : array, (f,)
    attention : {"linear", "softmax", "relu"}
        Transform of the bottom-up map (the top-down maps are returned as they are).
    channel_axis : int
    keep_spatial : bool
        Return the maps on the input's spatial grid, (B, K, *spatial) and
        (B, *spatial) (e.g. (B, K, H, W) for NCHW input), ready to draw as heat maps.
    check_finite : bool

    Returns
    -------
    top_down : array, (B, n, K)  (or (B, K, *spatial))
    bottom_up : array, (B, n)  (or (B, *spatial))

    Examples
    --------
    >>> import numpy as np, lowrank_pool as lp
    >>> X = np.array([[[1.0, 0.0], [0.0, 2.0]]])
    >>> top, bottom = lp.attention_maps(X, np.eye(2), np.array([1.0, 1.0]))
    >>> top.shape, bottom
    ((1, 2, 2), array([[1., 2.]]))
    >>> (top * bottom[..., None]).sum(1)
    array([[1., 4.]])
    """
    check_choice(attention, "attention", ATTENTIONS)
    xp, feats, fac = prepare(X, channel_axis, check_finite, A=A, b=b)
    _check_rank1(feats, fac["A"], fac["b"])
    top, bottom = rank1_maps(xp, feats, fac["A"], fac["b"], attention)
    if keep_spatial:
        k = top.shape[2]
        top = xp.reshape(xp.permute_dims(top, (0, 2, 1)), (feats.batch, k, *feats.spatial))
        bottom = xp.reshape(bottom, (feats.batch, *feats.spatial))
    return top, bottom
