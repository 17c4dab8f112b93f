"""Low-rank attentional pooling (Girdhar & Ramanan, NIPS 2017).

The identity everything here rests on, for X (n, f) and a, b (f,), with the package's
scale M = XᵀX / n (the second moment of the features; the rationale and the proof:
docs/math.md, "Low-rank (attentional) pooling"):

    ⟨M, a bᵀ⟩ = Tr(M b aᵀ) = (1/n) (X a)ᵀ (X b)

X b (n,) is the class-agnostic *bottom-up* saliency map, X a_k (n,) the class-specific
*top-down* attention map; the score is the mean over positions of their product.

Scores are computed in the re-associated order (X a)ᵀ(X b) = aᵀ(Xᵀ(X b)) whenever the
bottom-up map is shared by the classes: one matrix-vector pass builds the bottom-up map
u = X b, a second pools the features with it, v = Xᵀ u (attention-weighted pooling),
and one (B, f) @ (f, K) product gives all K scores. That is 2·n·f + f·K work per sample
instead of n·f·(K+1) for projecting on [A | b] (the figures: docs/performance.md).
The maps themselves come from one GEMM on [A | B], only in
:func:`attention_maps`.
"""

from __future__ import annotations

import math
from typing import Any, Literal, NamedTuple

from ._backend import Array, Namespace, check_floating, namespace
from ._checks import (
    ArgumentError,
    ShapeError,
    check_choice,
    check_factor,
    check_flag,
    check_shape,
    pair_features,
    parse_rankp,
    prepare,
    shape_of,
)
from ._delegation import shared_scores, torch_fast_scores
from ._layout import Features
from ._ops import activate, project, weighted_sum

__all__ = ["AttentionMaps", "attention_maps", "attention_weights", "rank1_pool", "rankp_pool"]

Attention = Literal["linear", "softmax", "relu"]
ATTENTIONS = ("linear", "softmax", "relu")


class AttentionMaps(NamedTuple):
    """The maps of an attentional head (what :func:`attention_maps` returns).

    ``scores == mean over positions of Σ_p top_down · bottom_up`` (see :func:`attention_maps`).

    Parameters
    ----------
    top_down : array
        X a_k (rank 1: (B, n, K); rank P: (B, n, K, P)), spatial axes kept with
        ``keep_spatial=True``.
    bottom_up : array
        σ(X b) (rank 1: (B, n); rank P: (B, n, P) shared or (B, n, K, P) per class).

    Examples
    --------
    >>> import numpy as np, lowrank_pool as lp
    >>> X = np.ones((2, 5, 3))
    >>> maps = lp.attention_maps(X, np.ones((3, 4)), np.ones(3))
    >>> maps.top_down.shape, maps.bottom_up.shape
    ((2, 5, 4), (2, 5))
    """

    top_down: Array
    bottom_up: Array


def attention_weights(U: Array, /, *, attention: Attention = "linear", axis: int = 1) -> Array:
    r"""The bottom-up transform σ, applied to maps U over the positions (``axis``).

    .. math:: \sigma_\text{linear}(u) = u,\qquad \sigma_\text{relu}(u) = \max(u, 0),\qquad
              \sigma_\text{softmax}(u)_i = n\,\frac{e^{u_i}}{\sum_j e^{u_j}}

    The softmax is scaled by the number of positions n so that its weights average 1:
    uniform logits then give exactly mean pooling, and the score, a *mean* over
    positions of top-down × σ(bottom-up), is the softmax-weighted sum of the top-down
    map. The paper's code uses a softmax that sums to 1 and then averages over the positions:
    its softmax maps and scores are these divided by n (docs: paper, "Comparing with the
    official code"). Computed stably (max subtracted).

    Parameters
    ----------
    U : array, e.g. (B, n) or (B, n, P)
        Raw bottom-up maps.
    attention : {"linear", "softmax", "relu"}
    axis : int
        The positions axis.

    Returns
    -------
    array, same shape, library and dtype as U

    Examples
    --------
    >>> import numpy as np, lowrank_pool as lp
    >>> lp.attention_weights(np.zeros((1, 4)), attention="softmax")
    array([[1., 1., 1., 1.]])
    """
    check_choice(attention, "attention", ATTENTIONS)
    xp = namespace(U=U)
    check_floating(xp, U, "U")
    if not isinstance(axis, int) or not -U.ndim <= axis < U.ndim:
        raise ArgumentError(f"axis: expected an axis of U with shape {shape_of(U)}, got {axis!r}")
    return activate(xp, U, attention, axis)


def _maps(xp: Namespace, feats: Features, a: Array, bm: Array, attention: str) -> tuple[Array, Array]:
    """Top-down (B, n, K, P) and bottom-up (B, n, P) or (B, n, K, P) maps by one GEMM on [A | B]."""
    f, k, p = shape_of(a)
    width = math.prod(shape_of(bm)[1:])
    z = project(xp, feats, xp.concat([xp.reshape(a, (f, k * p)), xp.reshape(bm, (f, width))], axis=1))
    top = xp.reshape(z[:, :, : k * p], (feats.batch, feats.positions, k, p))
    bottom = activate(xp, z[:, :, k * p :], attention)
    return top, xp.reshape(bottom, (feats.batch, feats.positions, *shape_of(bm)[1:]))


def _shared_scores(xp: Namespace, feats: Features, bm: Array, a3: Array, attention: str) -> Array:
    """(1/n) Σ_p (X a_kp)ᵀ σ(X b_p) as vec(Xᵀ σ(X B)) @ A / n, with B (f, P) and A seen as (P, f, K).

    Torch tensors go to ``_torch_kernels`` (an autograd Function whose backward writes ∂X once, in X's
    layout; the compiled CPU kernel for inference); the products below serve the other libraries.
    """
    s = shared_scores(
        xp, feats.data, bm, a3, channels_first=feats.layout == "bfn", attention=attention, positions=feats.positions
    )
    if s is not None:  # torch
        return s
    u = activate(xp, project(xp, feats, bm), attention)  # (B, n, P)
    v = weighted_sum(xp, feats, u)  # (B, P, f): Xᵀ σ(X B)
    p, f, k = shape_of(a3)
    s = xp.matmul(xp.reshape(v, (feats.batch, p * f)), xp.reshape(a3, (p * f, k)))
    return s / feats.positions


def _rank1_factors(feats: Features, a: Array, b: Array, channel_axis: int | None) -> None:
    check_factor(feats, "A", a, ("f", "K"), channel_axis)
    check_shape("b", b, ("f",), f=feats.channels)


def _rankp_factors(feats: Features, a: Array, bm: Array, channel_axis: int | None) -> tuple[int, int, bool]:
    check_factor(feats, "A", a, ("f", "K", "P"), channel_axis)
    if getattr(bm, "ndim", 0) not in (2, 3):
        raise ShapeError(
            f"B: expected 2 dimensions (f, P) (shared) or 3 dimensions (f, K, P) (per class), got shape {shape_of(bm)}"
        )
    _, sizes, shared = parse_rankp(a, bm)
    return sizes["K"], sizes["P"], shared


def rank1_pool(
    X: Array,
    A: Array,
    b: Array,
    /,
    *,
    Y: Array | None = None,
    attention: Attention = "linear",
    channel_axis: int | None = None,
    check_finite: bool = False,
) -> Array:
    r"""Rank-1 attentional pooling: :math:`s_{bk} = \frac1n (X_b a_k)^\top \sigma(X_b b)`.

    .. math:: s_{bk} = \operatorname{Tr}\!\big(M_b\, b\, a_k^\top\big)
              = \tfrac1n (X_b a_k)^\top (X_b b) = \tfrac1n a_k^\top \big(X_b^\top (X_b b)\big),
              \qquad M_b = \tfrac1n X_b^\top X_b

    with σ the identity (``attention="linear"``, the paper's formula), a spatial
    softmax (scaled to average 1, see :func:`attention_weights`) or a ReLU applied to
    the bottom-up map. The score of class k is the bilinear score of the rank-1 weight
    W_k = a_k bᵀ on the mean second moment M. Computed as attention-weighted pooling
    v = Xᵀσ(Xb) followed by v @ A / n; see the module docstring for why.

    Parameters
    ----------
    X : array, (B, n, f), (B, f, H, W) or (B, f, T, H, W)
        Feature maps. By default (``channel_axis=None``) 3-D input is channels-last and
        4-D/5-D input channels-first (NCHW is read as a (B, f, n) view, no copy).
    A : array, (f, K)
        Top-down (class-specific) vectors a_k, one column per class.
    b : array, (f,), or (g,) with ``Y``
        The bottom-up (class-agnostic) vector.
    Y : array, (B, n, g), (B, g, H, W) or (B, g, T, H, W), optional
        The features the bottom-up map comes from, at X's positions (another layer, as the paper's
        method 2 takes it from the pose network): :math:`s_{bk} = \frac1n (X_b a_k)^\top \sigma(Y_b b)`, the
        bilinear score of W_k = a_k bᵀ (K, f, g) on M = XᵀY / n for σ the identity.
    attention : {"linear", "softmax", "relu"}
        Transform of the bottom-up map over the positions.
    channel_axis : int, optional
        Axis of X that holds the f channels, overriding the default rule.
    check_finite : bool
        Raise :class:`ArgumentError` if an input holds NaN/inf.

    Returns
    -------
    array, (B, K)
        Same library and device as the inputs; float32/float64 mixed promote,
        float16/bfloat16 compute and return float32.

    Examples
    --------
    >>> import numpy as np, lowrank_pool as lp
    >>> X = np.array([[[1.0, 0.0], [0.0, 2.0]]])   # B=1, n=2 positions, f=2
    >>> A = np.eye(2)                               # class k reads channel k
    >>> b = np.array([1.0, 1.0])                    # bottom-up map X b = [1, 2]
    >>> lp.rank1_pool(X, A, b)                      # [(1*1 + 0*2) / 2, (0*1 + 2*2) / 2]
    array([[0.5, 2. ]])
    """
    if Y is not None:
        return _rank1_two_inputs(X, A, b, Y, attention, channel_axis, check_finite)
    fast = torch_fast_scores(X, A, b, attention, channel_axis, check_finite, rank1=True)
    if fast is not None:  # plain torch tensors: the general path below computes the same, validated
        return fast
    check_choice(attention, "attention", ATTENTIONS)
    xp, feats, fac = prepare(X, channel_axis, check_finite, A=A, b=b)
    a, bvec = fac["A"], fac["b"]
    _rank1_factors(feats, a, bvec, channel_axis)
    f = feats.channels
    return _shared_scores(xp, feats, xp.reshape(bvec, (f, 1)), xp.reshape(a, (1, f, shape_of(a)[1])), attention)


def _rank1_two_inputs(
    X: Array, A: Array, b: Array, Y: Array, attention: Any, channel_axis: int | None, check_finite: bool
) -> Array:
    """(1/n) (X a_k)ᵀ σ(Y b) as the attention-weighted pooling Xᵀσ(Y b), then @ A / n."""
    check_choice(attention, "attention", ATTENTIONS)
    xp, feats, fac = prepare(X, channel_axis, check_finite, A=A, b=b, Y=Y)
    a, bvec = fac["A"], fac["b"]
    fy = pair_features(xp, feats, fac["Y"], channel_axis)
    check_factor(feats, "A", a, ("f", "K"), channel_axis)
    check_shape("b", bvec, ("g",), g=fy.channels)
    u = activate(xp, project(xp, fy, xp.reshape(bvec, (fy.channels, 1))), attention)  # (B, n, 1): σ(Y b)
    v = weighted_sum(xp, feats, u)[:, 0, :]  # (B, f): Xᵀ σ(Y b)
    return xp.matmul(v, a) / feats.positions


def rankp_pool(
    X: Array,
    A: Array,
    B: Array,
    /,
    *,
    attention: Attention = "linear",
    channel_axis: int | None = None,
    check_finite: bool = False,
) -> Array:
    r"""Rank-P attentional pooling: :math:`s_{bk} = \frac1n \sum_p (X_b a_{kp})^\top \sigma(X_b b_{kp})`.

    .. math:: s_{bk} = \sum_{p=1}^P \operatorname{Tr}(M_b\, b_{kp} a_{kp}^\top)
              = \langle M_b,\ \textstyle\sum_p a_{kp} b_{kp}^\top \rangle,
              \qquad M_b = \tfrac1n X_b^\top X_b

    i.e. bilinear pooling with the rank-P weight W_k = Σ_p a_kp b_kpᵀ (exactly, when σ
    is the identity). The P bottom-up projections are independent, as in the paper's formula; the
    official code's loop applies each bottom-up convolution to the previous map instead, so its maps span
    only {X b, 1} (docs: paper, "Comparing with the official code", shows how to reproduce it here).

    With a shared bottom-up B (f, P) the scores are computed as P attention-weighted
    poolings V = Xᵀσ(X B) (2·n·f·P work) and one (B, P·f) @ (P·f, K) product; with
    per-class B (f, K, P) by one GEMM of X on [A | B] (width 2·K·P), a product and a
    mean over positions. A (B, K, n, f) broadcast is never formed.

    Parameters
    ----------
    X : array, (B, n, f), (B, f, H, W) or (B, f, T, H, W)
    A : array, (f, K, P)
        Top-down vectors a_kp. With a shared B the (P·f, K) product reads A as
        ``A.permute(2, 0, 1)``: a torch A whose memory has that layout (e.g.
        ``torch.empty(P, f, K).permute(1, 2, 0)``) is not copied. A contiguous (f, K, P)
        one, as :class:`~lowrank_pool.nn.AttentionalPool` keeps it (so that ``.view(-1)``
        works on every parameter: ``parameters_to_vector``, ``torch.optim.LBFGS``), is
        read in place too by the compiled CPU kernel when P divides its vector width
        (P = 1, 2, 4, 8 in float32; 1, 2, 4 in float64; up to 32 classes every layout is
        packed into a small transposed copy); otherwise, and on the torch path (GPUs),
        it is copied once per call and the copy kept for backward.
    B : array, (f, K, P) per class or (f, P) shared by all classes
        Bottom-up vectors b_kp (or b_p).
    attention : {"linear", "softmax", "relu"}
        Transform of each bottom-up map over the positions.
    channel_axis : int, optional
    check_finite : bool

    Returns
    -------
    array, (B, K)

    Examples
    --------
    >>> import numpy as np, lowrank_pool as lp
    >>> X = np.array([[[1.0, 0.0], [0.0, 2.0]]])
    >>> A = np.ones((2, 1, 2)); Bshared = np.eye(2)       # K=1 class, P=2
    >>> lp.rankp_pool(X, A, Bshared)   # ((X1)ᵀ(Xe0) + (X1)ᵀ(Xe1)) / n = (1 + 4) / 2
    array([[2.5]])
    """
    fast = torch_fast_scores(X, A, B, attention, channel_axis, check_finite, rank1=False)
    if fast is not None:  # plain torch tensors, shared B: the general path below computes the same
        return fast
    check_choice(attention, "attention", ATTENTIONS)
    xp, feats, fac = prepare(X, channel_axis, check_finite, A=A, B=B)
    a, bm = fac["A"], fac["B"]
    k, p, shared = _rankp_factors(feats, a, bm, channel_axis)
    if shared:
        return _shared_scores(xp, feats, bm, xp.permute_dims(a, (2, 0, 1)), attention)
    top, bottom = _maps(xp, feats, a, bm, attention)  # (B, n, K, P) twice
    s = xp.sum(xp.reshape(top * bottom, (feats.batch, feats.positions, k * p)), axis=1)
    return xp.sum(xp.reshape(s, (feats.batch, k, p)), axis=2) / feats.positions


def attention_maps(
    X: Array,
    A: Array,
    B: Array,
    /,
    *,
    attention: Attention = "linear",
    channel_axis: int | None = None,
    keep_spatial: bool = False,
    check_finite: bool = False,
) -> AttentionMaps:
    r"""The top-down maps :math:`X a_{kp}` and the bottom-up maps :math:`\sigma(X b_p)` of a head.

    Rank 1 (A (f, K), B = b (f,)): top-down (B, n, K), bottom-up (B, n), and
    ``rank1_pool(X, A, b) == (top_down * bottom_up[..., None]).mean(1)``.

    Rank P (A (f, K, P), B (f, P) shared or (f, K, P) per class): top-down
    (B, n, K, P), bottom-up (B, n, P) or (B, n, K, P), and
    ``rankp_pool(X, A, B) == (top_down * bottom_up[:, :, None]).sum(-1).mean(1)``
    (without the ``None`` for per-class B).

    All maps come from one GEMM of X on the concatenation [A | B]. σ is applied to the
    bottom-up maps (softmax maps average 1 over the positions); the top-down maps are
    returned as they are.

    Parameters
    ----------
    X : array, (B, n, f), (B, f, H, W) or (B, f, T, H, W)
    A : array, (f, K) or (f, K, P)
    B : array, (f,) with a 2-D A; (f, P) or (f, K, P) with a 3-D A
    attention : {"linear", "softmax", "relu"}
    channel_axis : int, optional
    keep_spatial : bool
        Return the maps on the input's spatial grid, the positions axis replaced by
        ``*spatial`` after the class/rank axes: rank 1 gives ``(B, K, *spatial)`` and
        ``(B, *spatial)``; rank P ``(B, K, P, *spatial)`` and ``(B, P, *spatial)`` /
        ``(B, K, P, *spatial)``. Ready to draw as heat maps.
    check_finite : bool

    Returns
    -------
    AttentionMaps
        A named tuple ``(top_down, bottom_up)`` in the dtype rule of :func:`rank1_pool`.

    Examples
    --------
    >>> import numpy as np, lowrank_pool as lp
    >>> X = np.array([[[1.0, 0.0], [0.0, 2.0]]])
    >>> top, bottom = lp.attention_maps(X, np.eye(2), np.array([1.0, 1.0]))
    >>> top.shape, bottom
    ((1, 2, 2), array([[1., 2.]]))
    >>> (top * bottom[..., None]).mean(1)
    array([[0.5, 2. ]])
    """
    check_choice(attention, "attention", ATTENTIONS)
    keep_spatial = check_flag(keep_spatial, "keep_spatial")
    xp, feats, fac = prepare(X, channel_axis, check_finite, A=A, B=B)
    a, bm = fac["A"], fac["B"]
    rank1 = getattr(a, "ndim", 0) == 2
    if rank1:
        _rank1_factors(feats, a, bm, channel_axis)
        a, bm = xp.reshape(a, (*shape_of(a), 1)), xp.reshape(bm, (feats.channels, 1))
    elif getattr(a, "ndim", 0) == 3:
        _rankp_factors(feats, a, bm, channel_axis)
    else:
        raise ShapeError(f"A: expected shape (f, K) (rank 1) or (f, K, P) (rank P), got {shape_of(a)}")
    top, bottom = _maps(xp, feats, a, bm, attention)  # (B, n, K, P), (B, n, [K,] P)
    grid = feats.spatial if keep_spatial else (feats.positions,)
    batch = feats.batch
    if rank1:
        top, bottom = top[:, :, :, 0], bottom[:, :, 0]
        if keep_spatial:
            top = xp.reshape(xp.permute_dims(top, (0, 2, 1)), (batch, shape_of(top)[2], *grid))
            bottom = xp.reshape(bottom, (batch, *grid))
        return AttentionMaps(top, bottom)
    if keep_spatial:
        top = xp.reshape(xp.permute_dims(top, (0, 2, 3, 1)), (batch, *shape_of(top)[2:], *grid))
        order = (0, *range(2, bottom.ndim), 1)
        bottom = xp.reshape(xp.permute_dims(bottom, order), (batch, *shape_of(bottom)[2:], *grid))
    return AttentionMaps(top, bottom)
